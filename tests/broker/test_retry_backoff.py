"""Retry backoff (SPEC §8.7) on the state, through ``dispatch`` and the real appliers: a
nack without a delay, a lease expiry and the start-up release make a message ready only
after the queue's backoff delay; replay and snapshots rebuild the same."""
from __future__ import annotations

from typing import Any

import crc32c
import msgpack
import pytest

from broker.mutations import Recover, Release
from broker.queues import Queue
from broker.state import SNAPSHOT_QUEUE, BrokerState
from protocol import ErrorCode, retry_delay

from .test_inspection_ops import T0, World


def status(w: World, queue: str, mid: int) -> dict[str, Any]:
    result: dict[str, Any] = w.call("message_status", queue=queue, ids=[mid])["statuses"][0]
    return result


def same_after_restart(w: World) -> None:
    assert w.replayed().snapshot() == w.state.snapshot()
    assert w.restored().snapshot() == w.state.snapshot()


def nack_cycle(w: World, queue: str, **nack: Any) -> int:
    """Deliver message 1 and nack it; the ready time it then has (0: ready)."""
    (delivery,) = w.call("consume", queue=queue)["messages"]
    assert delivery[0] == 1
    w.call("nack", queue=queue, ids=[1], **nack)
    st = status(w, queue, 1)
    return 0 if st["state"] == "ready" else int(st["until_ms"])


# -- the formula ---------------------------------------------------------------------------


def test_the_delay_formula() -> None:
    # fixed: the same every attempt; exponential: doubling up to the cap
    assert [retry_delay(100, "fixed", 900_000, 0, 1, a) for a in (1, 2, 5)] == [100, 100, 100]
    assert [retry_delay(100, "exponential", 1000, 0, 1, a) for a in range(1, 7)] == [
        100, 200, 400, 800, 1000, 1000]
    assert retry_delay(0, "exponential", 1000, 50, 1, 3) == 0
    assert retry_delay(5, "exponential", 604_800_000, 0, 1, 10**6) == 604_800_000  # no huge ints
    # jitter: base - floor(base * jitter * h / (100 * 2**32)), h = crc32c(id, attempt as u64 BE)
    h = crc32c.crc32c((7).to_bytes(8, "big") + (3).to_bytes(8, "big"))
    assert retry_delay(1000, "exponential", 900_000, 40, 7, 3) == 4000 - 4000 * 40 * h // (100 << 32)
    for mid in range(1, 200):
        d = retry_delay(1000, "fixed", 900_000, 100, mid, 1)
        assert 1 <= d <= 1000  # 100 % jitter never reaches 0
        assert 600 <= retry_delay(1000, "fixed", 900_000, 40, mid, 1) <= 1000


# -- on the state ----------------------------------------------------------------------------


def test_no_delay_by_default_ready_at_once() -> None:
    w = World()
    w.call("queue_create", queue="q")
    stats = w.call("queue_stats", queue="q")
    assert {k: stats[k] for k in ("retry_delay_ms", "retry_backoff", "retry_max_delay_ms", "retry_jitter")} == {
        "retry_delay_ms": 0, "retry_backoff": "exponential", "retry_max_delay_ms": 900_000, "retry_jitter": 0}
    w.call("publish", queue="q", messages=[[b"x"]])
    assert nack_cycle(w, "q") == 0
    assert w.log[-1] == Release("q", [1], 0, False, T0, None)


def test_exponential_backoff_after_nacks_and_expiries() -> None:
    w = World()
    w.call("queue_create", queue="q", retry_delay_ms=100, retry_max_delay_ms=350, visibility_ms=1000)
    w.call("publish", queue="q", messages=[[b"x"]])
    assert nack_cycle(w, "q") == T0 + 100  # attempt 1: 100
    assert w.call("consume", queue="q")["messages"] == []  # delayed, not deliverable
    assert w.call("queue_stats", queue="q")["delayed"] == 1
    w.advance(99)
    assert status(w, "q", 1)["state"] == "delayed"
    w.advance(1)
    assert status(w, "q", 1)["state"] == "ready"
    assert nack_cycle(w, "q") == w.now + 200  # attempt 2: 200
    w.advance(200)
    # attempt 3: the lease expires at now + 1000, then 400 capped to 350
    w.call("consume", queue="q")
    w.advance(1000)
    assert status(w, "q", 1) == {"id": 1, "state": "delayed", "queue": "q", "attempts": 3,
                                 "until_ms": w.now + 350, "expires_at_ms": 0, "published_at": T0}
    assert w.call("queue_stats", queue="q")["expired"] == 1
    same_after_restart(w)
    w.advance(350)
    assert status(w, "q", 1)["state"] == "ready"


def test_fixed_backoff_with_jitter_is_the_documented_value() -> None:
    w = World()
    w.call("queue_create", queue="q", retry_delay_ms=10_000, retry_backoff="fixed", retry_jitter=50)
    w.call("publish", queue="q", messages=[[b"x"]])
    for attempt in (1, 2, 3):
        expected = retry_delay(10_000, "fixed", 900_000, 50, 1, attempt)
        assert 5000 <= expected <= 10_000
        assert nack_cycle(w, "q") == w.now + expected
        w.advance(expected)


def test_a_nack_with_a_delay_overrides_the_backoff() -> None:
    w = World()
    w.call("queue_create", queue="q", retry_delay_ms=100)
    w.call("publish", queue="q", messages=[[b"x"]])
    assert nack_cycle(w, "q", delay_ms=5000) == T0 + 5000
    assert w.log[-1] == Release("q", [1], T0 + 5000, False, T0, None)


def test_out_of_attempts_dead_letters_before_any_backoff() -> None:
    w = World()
    w.call("queue_create", queue="dlq")
    w.call("queue_create", queue="q", retry_delay_ms=60_000, max_attempts=1, dead_letter="dlq")
    w.call("publish", queue="q", messages=[[b"x"]])
    w.call("consume", queue="q")
    w.call("nack", queue="q", ids=[1])
    assert status(w, "q", 1)["state"] == "dead_lettered"
    assert w.call("queue_stats", queue="dlq")["ready"] == 1


def test_backoff_delayed_messages_do_not_wake_held_consumes() -> None:
    w = World()
    w.call("queue_create", queue="q", retry_delay_ms=100)
    w.call("publish", queue="q", messages=[[b"x"], [b"y"]])
    w.call("consume", queue="q", max=2)
    w.state.take_woken()
    w.call("nack", queue="q", ids=[1, 2])
    assert w.state.take_woken() == {}
    assert w.state.next_timer() == T0 + 100
    w.advance(100)
    assert w.state.take_woken() == {"q": 2}


def test_the_start_up_release_follows_the_backoff() -> None:
    w = World()
    w.call("queue_create", queue="q", retry_delay_ms=1000, retry_backoff="fixed")
    w.call("publish", queue="q", messages=[[b"x"], [b"y"]])
    w.call("consume", queue="q", max=2)
    w.advance(10)
    rec = Recover(w.now)
    w.log.append(rec)
    w.state.apply(rec)
    assert [status(w, "q", i)["until_ms"] for i in (1, 2)] == [w.now + 1000] * 2
    assert w.call("queue_stats", queue="q")["expired"] == 2
    same_after_restart(w)


def test_settings_are_compared_on_create() -> None:
    w = World()
    w.call("queue_create", queue="q", retry_delay_ms=100, retry_jitter=10)
    assert w.call("queue_create", queue="q", retry_delay_ms=100, retry_jitter=10)["created"] is False
    for changed in ({"retry_delay_ms": 101}, {"retry_backoff": "fixed"}, {"retry_max_delay_ms": 1},
                    {"retry_jitter": 11}):
        w.refused("queue_create", ErrorCode.QUEUE_EXISTS, None,
                  **{"queue": "q", "retry_delay_ms": 100, "retry_jitter": 10, **changed})


@pytest.mark.parametrize("field,value", [
    ("retry_delay_ms", -1), ("retry_delay_ms", 604_800_001), ("retry_delay_ms", 1.5),
    ("retry_backoff", "linear"), ("retry_backoff", 1),
    ("retry_max_delay_ms", 604_800_001), ("retry_jitter", 101), ("retry_jitter", True),
])
def test_settings_are_checked(field: str, value: Any) -> None:
    World().refused("queue_create", ErrorCode.INVALID_ARGUMENT, field, queue="q", **{field: value})


def test_the_settings_are_checked_before_the_dead_letter_name() -> None:
    World().refused("queue_create", ErrorCode.INVALID_ARGUMENT, "retry_jitter",
                    queue="q", retry_jitter=101, dead_letter="bad name")


def test_an_old_snapshot_header_gets_the_default_settings() -> None:
    w = World()
    w.call("queue_create", queue="q", retry_delay_ms=5)
    header = w.state.queues["q"].export_header()
    old = Queue.from_header(header[:15])
    assert (old.settings.retry_delay_ms, old.settings.retry_backoff,
            old.settings.retry_max_delay_ms, old.settings.retry_jitter) == (0, "exponential", 900_000, 0)
    restored = BrokerState.from_records([(SNAPSHOT_QUEUE, msgpack.packb(header[:15]))])
    assert restored.queues["q"].stats()["retry_delay_ms"] == 0


def test_an_old_queue_create_record_gets_the_default_settings() -> None:
    state = BrokerState()
    state.apply_record(1, msgpack.packb(["q", "fifo", 1, 1000, 20, None, 10]))
    assert state.queues["q"].settings.retry_delay_ms == 0
