"""The SIGKILL crash harness (tools.crashtest): a short run must find nothing, and its
checker must be able to find something.

The short run SIGKILLs a real broker child under load a few times with ``--fsync
always``. The other tests feed the verifier a tracker that disagrees with the broker,
and the tracker deliveries that break the rules, and check each is reported.
"""
from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import SyncClient
from client.types import Delivery
from tools.crashtest import (
    LOST,
    OTHER,
    REGRESSION,
    RESURRECTED,
    QueueSpec,
    Tracker,
    create_queues,
    make_specs,
    run,
    verify,
)
from tools.procs import BrokerProcess


def test_short_crash_run_under_fsync_always_loses_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    summary = run(iterations=5, seconds_per_iteration=1.0, producers=2, consumers=2,
                  fsync="always", seed=20240611, data_dir=tmp_path / "data")
    detail = "\n".join([summary.line(), *summary.violations[:20]])
    assert summary.lost == 0, detail
    assert summary.resurrected == 0, detail
    assert summary.attempt_regressions == 0, detail
    assert summary.other == 0, detail
    assert summary.ok
    assert summary.iterations == 5 and summary.kills >= 4, detail
    assert summary.confirmed > 500, detail
    assert summary.acked > 100 and summary.delivered > summary.acked, detail
    assert time.monotonic() - started < 60


# --- the checker can fail -----------------------------------------------------------------


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[SyncClient, tuple[QueueSpec, ...], Tracker]]:
    """A broker child with the harness's queues declared, and a fresh tracker."""
    with BrokerProcess(tmp_path / "data") as broker, SyncClient(broker.addr, timeout=10) as client:
        specs = make_specs(random.Random(0))
        tracker = Tracker()
        create_queues(client, specs, tracker)
        yield client, specs, tracker


def _publish(client: SyncClient, tracker: Tracker, queue: str, body: bytes) -> int:
    tracker.publish_sent(queue, [body])
    mid = client.publish(queue, body)
    tracker.publish_confirmed(queue, [body], mid)
    return mid


def test_verifier_reports_a_confirmed_message_the_broker_never_had(
    setup: tuple[SyncClient, tuple[QueueSpec, ...], Tracker],
) -> None:
    client, specs, tracker = setup
    queue = specs[0].name
    real = _publish(client, tracker, queue, b"real.")
    # The tracker claims a confirmed publish the broker never saw.
    tracker.publish_sent(queue, [b"ghost."])
    tracker.publish_confirmed(queue, [b"ghost."], real + 1000)

    verify(client, specs, tracker)

    assert tracker.counts == {LOST: 1, RESURRECTED: 0, REGRESSION: 0, OTHER: 0}, tracker.violations
    assert "'ghost'" in tracker.violations[0] and "missing after the restart" in tracker.violations[0]
    # The real message was drained, checked and released again; a second pass agrees.
    assert client.queue_stats(queue).ready == 1
    verify(client, specs, tracker)
    assert tracker.counts[LOST] == 1, tracker.violations


def test_verifier_reports_a_message_whose_ack_was_confirmed_but_comes_back(
    setup: tuple[SyncClient, tuple[QueueSpec, ...], Tracker],
) -> None:
    client, specs, tracker = setup
    queue = specs[0].name
    mid = _publish(client, tracker, queue, b"zombie.")
    sent = time.monotonic()
    got = client.consume(queue)
    tracker.delivered(queue, got, sent, time.monotonic())
    assert [d.id for d in got] == [mid]
    # The tracker believes an ack was confirmed; the broker only had a nack.
    tracker.ack_sent(queue, [mid])
    client.nack(queue, [mid])
    tracker.ack_confirmed(queue, [mid], (), time.monotonic())

    verify(client, specs, tracker)

    assert tracker.counts == {LOST: 0, RESURRECTED: 1, REGRESSION: 0, OTHER: 0}, tracker.violations
    assert "'zombie'" in tracker.violations[0]


def test_verifier_reports_a_message_never_published(
    setup: tuple[SyncClient, tuple[QueueSpec, ...], Tracker],
) -> None:
    client, specs, tracker = setup
    client.publish(specs[1].name, b"stranger.")  # behind the tracker's back

    verify(client, specs, tracker)

    assert tracker.counts[OTHER] == 1 and "never published" in tracker.violations[0], tracker.violations


def test_verifier_reports_changed_queue_settings(
    setup: tuple[SyncClient, tuple[QueueSpec, ...], Tracker],
) -> None:
    client, specs, tracker = setup
    spec = specs[2]
    client.delete_queue(spec.name)
    client.create_queue(spec.name, spec.kind, spec.shards + 1, visibility_ms=spec.visibility_ms)

    verify(client, specs, tracker)

    assert tracker.counts[OTHER] >= 1
    assert any(spec.name in v and "settings" in v for v in tracker.violations), tracker.violations


# --- the tracker's delivery rules ----------------------------------------------------------


def _tracker_with(body: bytes = b"m.", mid: int = 7, queue: str = "q") -> Tracker:
    tracker = Tracker()
    tracker.declare_queue(queue, ())
    tracker.publish_sent(queue, [body])
    tracker.publish_confirmed(queue, [body], mid)
    return tracker


def test_attempt_not_above_one_already_received_is_a_regression() -> None:
    tracker = _tracker_with()
    tracker.delivered("q", [Delivery(7, b"m.", 2, None, 0)], sent=0.0, received=1.0)
    # A consume sent after attempt 2 was received must see attempt 3 or more.
    tracker.delivered("q", [Delivery(7, b"m.", 2, None, 0)], sent=2.0, received=3.0)
    assert tracker.counts[REGRESSION] == 1, tracker.violations
    tracker.delivered("q", [Delivery(7, b"m.", 3, None, 0)], sent=4.0, received=5.0)
    assert tracker.counts[REGRESSION] == 1, tracker.violations


def test_overlapping_consumes_are_not_ordered() -> None:
    tracker = _tracker_with()
    tracker.delivered("q", [Delivery(7, b"m.", 2, None, 0)], sent=0.0, received=3.0)
    # Sent before the first reply arrived: no order between the two.
    tracker.delivered("q", [Delivery(7, b"m.", 1, None, 0)], sent=1.0, received=2.0)
    tracker.full_check()
    assert tracker.counts == {LOST: 0, RESURRECTED: 0, REGRESSION: 0, OTHER: 0}, tracker.violations


def test_full_check_catches_a_delivery_recorded_late() -> None:
    tracker = _tracker_with()
    # Recorded first, but its consume was sent after the next one's reply arrived.
    tracker.delivered("q", [Delivery(7, b"m.", 1, None, 0)], sent=5.0, received=6.0)
    tracker.delivered("q", [Delivery(7, b"m.", 1, None, 0)], sent=1.0, received=2.0)
    assert tracker.counts[REGRESSION] == 0
    tracker.full_check()
    assert tracker.counts[REGRESSION] == 1, tracker.violations


def test_delivery_by_a_consume_sent_after_the_ack_confirmed_is_a_resurrection() -> None:
    tracker = _tracker_with()
    tracker.delivered("q", [Delivery(7, b"m.", 1, None, 0)], sent=0.0, received=1.0)
    tracker.ack_sent("q", [7])
    tracker.ack_confirmed("q", [7], (), at=2.0)
    # Sent before the ack was confirmed: the broker may have served it first.
    tracker.delivered("q", [Delivery(7, b"m.", 2, None, 0)], sent=1.5, received=2.5)
    assert tracker.counts[RESURRECTED] == 0
    tracker.delivered("q", [Delivery(7, b"m.", 3, None, 0)], sent=3.0, received=3.5)
    assert tracker.counts[RESURRECTED] == 1, tracker.violations


def test_unconfirmed_publishes_and_acks_are_resolved_by_the_drain() -> None:
    tracker = Tracker()
    tracker.declare_queue("q", ())
    tracker.publish_sent("q", [b"kept.", b"gone."])  # in flight at a kill
    tracker.publish_sent("q", [b"acked."])
    tracker.publish_confirmed("q", [b"acked."], 3)
    tracker.delivered("q", [Delivery(3, b"acked.", 1, None, 0)], sent=0.0, received=1.0)
    tracker.ack_sent("q", [3])  # in flight at a kill, and it did happen

    tracker.reconcile("q", {1: b"kept."}, at=2.0)

    assert tracker.counts == {LOST: 0, RESURRECTED: 0, REGRESSION: 0, OTHER: 0}, tracker.violations
    assert tracker.adopted == 1
    # The acked message must stay gone; the dropped publish must not turn up.
    tracker.delivered("q", [Delivery(3, b"acked.", 2, None, 0)], sent=3.0, received=4.0)
    tracker.delivered("q", [Delivery(2, b"gone.", 1, None, 0)], sent=3.0, received=4.0)
    assert tracker.counts[RESURRECTED] == 1 and tracker.counts[OTHER] == 1, tracker.violations
    # The adopted message is now expected after every restart.
    tracker.reconcile("q", {}, at=5.0)
    assert tracker.counts[LOST] == 1, tracker.violations
