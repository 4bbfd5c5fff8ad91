"""Time to live (SPEC §8.8) on the state, through ``dispatch`` and the real appliers: a
message whose time has come is never delivered, wherever it sits, and leaves its queue
by an ``Expire`` record that the timer produces; replay and snapshots rebuild the same."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest

from broker.commands import PlainPublishes
from broker.mutations import Expire, Publish, QueueCreate
from broker.queues import Queue
from broker.records import decode_fields, encode, fold_records
from broker.state import SNAPSHOT_QUEUE, BrokerState
from broker.wal.record import RECORD_HEADER_SIZE
from protocol import MAX_TTL_MS, ErrorCode

from .test_inspection_ops import CFG, T0, World


def status(w: World, queue: str, *ids: int) -> list[dict[str, Any]]:
    return w.call("message_status", queue=queue, ids=list(ids))["statuses"]  # type: ignore[no-any-return]


def states(w: World, queue: str, *ids: int) -> list[str]:
    return [s["state"] for s in status(w, queue, *ids)]


def same_after_restart(w: World) -> None:
    assert w.replayed().snapshot() == w.state.snapshot()
    assert w.restored().snapshot() == w.state.snapshot()


def test_a_message_in_the_middle_expires_at_its_time() -> None:
    w = World()
    w.call("queue_create", queue="q")
    w.call("publish", queue="q", messages=[[b"a"], [b"b", None, None, None, 100], [b"c"]])
    assert w.log[-1] == Publish("q", 1, T0, [b"a", b"b", b"c"], None, None, None, [0, T0 + 100, 0])
    assert status(w, "q", 2)[0]["expires_at_ms"] == T0 + 100
    assert w.state.next_timer() == T0 + 100
    same_after_restart(w)
    w.advance(99)
    assert states(w, "q", 1, 2, 3) == ["ready"] * 3
    w.advance(1)
    assert w.log[-1] == Expire("q", [2], T0 + 100)
    assert states(w, "q", 1, 2, 3) == ["ready", "gone", "ready"]
    stats = w.call("queue_stats", queue="q")
    assert (stats["messages"], stats["ttl_expired"], stats["dropped"], stats["published"]) == (2, 1, 0, 3)
    got = w.call("consume", queue="q", max=8)["messages"]
    assert [m[1] for m in got] == [b"a", b"c"]
    assert w.state.queues["q"].expires == {}
    assert w.state.ack_reserve == w.state.count_ack_reserve()
    same_after_restart(w)


def test_never_delivered_even_before_the_timer_has_run() -> None:
    w = World()
    w.call("queue_create", queue="q")
    w.call("publish", queue="q", messages=[[b"old", None, None, None, 10], [b"new"]])
    w.now += 10  # time passed; the timer has not fired yet
    got = w.call("consume", queue="q", max=8)["messages"]
    assert [m[1] for m in got] == [b"new"]
    assert w.call("consume", queue="q", max=8)["messages"] == []
    # sharded too
    w.call("queue_create", queue="s", shards=3)
    w.call("publish", queue="s", messages=[[b"x", None, None, None, 1] for _ in range(6)] + [[b"y"]])
    w.now += 1
    assert [m[1] for m in w.call("consume", queue="s", max=8)["messages"]] == [b"y"]


def test_the_queue_default_and_a_message_of_its_own() -> None:
    w = World()
    w.call("queue_create", queue="q", ttl_ms=1000)
    stats = w.call("queue_stats", queue="q")
    assert (stats["ttl_ms"], stats["on_expire"]) == (1000, "drop")
    w.call("publish", queue="q", messages=[[b"a"]])
    w.call("publish", queue="q", messages=[[b"b"], [b"c", None, None, None, 5000]])
    # a plain publish to a queue with a default ttl carries the column: never plain
    first = w.log[-2]
    assert isinstance(first, Publish) and not first.plain and first.expires_at_ms == [T0 + 1000]
    assert [s["expires_at_ms"] for s in status(w, "q", 1, 2, 3)] == [T0 + 1000, T0 + 1000, T0 + 5000]
    w.advance(1000)
    assert states(w, "q", 1, 2, 3) == ["gone", "gone", "ready"]
    w.advance(4000)
    assert w.call("queue_stats", queue="q")["ttl_expired"] == 3


def test_the_batch_fast_path_refuses_a_queue_with_a_default_ttl() -> None:
    w = World()
    w.call("queue_create", queue="plain")
    w.call("queue_create", queue="ttl", ttl_ms=5)
    from broker.commands import Context
    ctx = Context(w.state, CFG, w.now, "a:1")
    take = PlainPublishes().take
    assert take(w.session, {"queue": "plain", "messages": [[b"x"]]}, ctx, 0) is not None
    assert take(w.session, {"queue": "ttl", "messages": [[b"x"]]}, ctx, 0) is None
    assert take(w.session, {"queue": "plain", "messages": [[b"x", None, None, None, 5]]}, ctx, 0) is None


def test_a_leased_message_expires_its_lease_ends() -> None:
    w = World()
    w.call("queue_create", queue="q", visibility_ms=60_000)
    w.call("publish", queue="q", messages=[[b"a", None, None, None, 500]])
    w.call("consume", queue="q")
    assert states(w, "q", 1) == ["leased"]
    w.advance(500)
    assert states(w, "q", 1) == ["gone"]
    stats = w.call("queue_stats", queue="q")
    assert (stats["leased"], stats["ttl_expired"], stats["expired"]) == (0, 1, 0)
    assert w.call("ack", queue="q", ids=[1]) == {"acked": 0, "missing": [1]}
    w.advance(60_000)  # the old lease timer finds nothing
    assert w.call("queue_stats", queue="q")["expired"] == 0
    same_after_restart(w)


def test_an_expiry_at_the_lease_deadline_wins() -> None:
    w = World()
    w.call("queue_create", queue="q", visibility_ms=500)
    w.call("publish", queue="q", messages=[[b"a", None, None, None, 500]])
    w.call("consume", queue="q")
    w.advance(500)
    assert [type(m).__name__ for m in w.log[-1:]] == ["Expire"]
    assert w.call("queue_stats", queue="q")["expired"] == 0


def test_a_delayed_message_can_expire_before_it_is_ready() -> None:
    w = World()
    w.call("queue_create", queue="q")
    w.call("publish", queue="q", messages=[[b"a", None, None, 1000, 400], [b"b", None, None, 100, 400]])
    w.advance(100)
    assert states(w, "q", 1, 2) == ["delayed", "ready"]
    w.advance(300)
    assert states(w, "q", 1, 2) == ["gone", "gone"]
    w.advance(600)
    assert w.call("queue_stats", queue="q")["delayed"] == 0


def test_on_expire_dead_letter() -> None:
    w = World()
    w.call("queue_create", queue="dlq", ttl_ms=10)  # arrivals get no ttl here
    w.call("queue_create", queue="q", dead_letter="dlq", on_expire="dead_letter", visibility_ms=1000)
    w.call("publish", queue="q", messages=[[b"a", b"k", 7, None, 100], [b"b"]])
    w.call("consume", queue="q", max=1)
    w.call("nack", queue="q", ids=[1], error="busy")
    w.advance(100)
    (st,) = status(w, "q", 1)
    assert (st["state"], st["queue"], st["reason"], st["error"], st["dead_lettered_at_ms"], st["attempts"]) == (
        "dead_lettered", "dlq", "expired", "busy", T0 + 100, 0)
    (row,) = w.call("peek", queue="dlq")["messages"]
    assert row[:6] == [1, b"a", 0, b"k", 7, "ready"]
    assert row[7]["reason"] == "expired" and row[7]["attempts"] == 1
    assert w.state.queues["dlq"].expires == {}
    stats = w.call("queue_stats", queue="q")
    assert (stats["ttl_expired"], stats["dead_lettered"], stats["dropped"]) == (1, 1, 0)
    same_after_restart(w)
    # the dead-letter queue is gone: dropped, counted in ttl_expired only
    w.call("queue_delete", queue="dlq")
    w.call("publish", queue="q", messages=[[b"c", None, None, None, 1]])
    w.advance(1)
    stats = w.call("queue_stats", queue="q")
    assert (stats["ttl_expired"], stats["dead_lettered"], stats["dropped"]) == (2, 1, 0)


def test_redriven_and_dead_lettered_messages_carry_no_ttl() -> None:
    w = World()
    w.call("queue_create", queue="dlq")
    w.call("queue_create", queue="q", dead_letter="dlq", ttl_ms=1000)
    w.call("publish", queue="q", messages=[[b"a"]])
    w.call("consume", queue="q")
    w.call("reject", queue="q", ids=[1])
    w.call("redrive", queue="dlq")
    assert status(w, "q", 2)[0]["expires_at_ms"] == 0
    w.advance(10_000)
    assert states(w, "q", 2) == ["ready"]


def test_the_expire_applier_skips_what_is_not_due() -> None:
    w = World()
    w.call("queue_create", queue="q")
    w.call("publish", queue="q", messages=[[b"a", None, None, None, 100], [b"b"]])
    before = w.state.snapshot()
    for m in (Expire("q", [1], T0 + 99), Expire("q", [2, 7], T0 + 100)):
        w.state.apply(m)
    assert w.state.snapshot() == before


def test_ttl_and_settings_are_checked() -> None:
    w = World()
    w.call("queue_create", queue="q", ttl_ms=MAX_TTL_MS, on_expire="dead_letter")
    assert w.call("queue_create", queue="q", ttl_ms=MAX_TTL_MS, on_expire="dead_letter")["created"] is False
    w.refused("queue_create", ErrorCode.QUEUE_EXISTS, None, queue="q", ttl_ms=1, on_expire="dead_letter")
    w.refused("queue_create", ErrorCode.QUEUE_EXISTS, None, queue="q", ttl_ms=MAX_TTL_MS)
    for bad in ({"ttl_ms": -1}, {"ttl_ms": MAX_TTL_MS + 1}, {"ttl_ms": "1"}):
        w.refused("queue_create", ErrorCode.INVALID_ARGUMENT, "ttl_ms", queue="r", **bad)
    w.refused("queue_create", ErrorCode.INVALID_ARGUMENT, "on_expire", queue="r", on_expire="keep")
    w.refused("publish", ErrorCode.INVALID_ARGUMENT, "messages[1].ttl_ms",
              queue="q", messages=[[b"ok", None, None, None, 1], [b"x", None, None, None, 0]])
    assert w.call("publish", queue="q", messages=[[b"x", None, None, None, MAX_TTL_MS]])["count"] == 1


def test_records_and_snapshots() -> None:
    w = World()
    w.call("queue_create", queue="q", ttl_ms=50, on_expire="dead_letter")
    w.call("publish", queue="q", messages=[[b"a"]])
    # the record leaves out optional columns that are None, and settings at their defaults
    plain = Publish("q", 5, T0, [b"x"])
    assert decode_fields(encode(plain)[RECORD_HEADER_SIZE:]) == ["q", 5, T0, [b"x"], None, None, None]
    create = QueueCreate("r", "fifo", 1, 1000, 20, None, 10)
    assert len(decode_fields(encode(create)[RECORD_HEADER_SIZE:])) == 7
    # a publish with an expiry column does not fold with plain ones around it
    recs = [Publish("q", 1, 0, [b"a"]), Publish("q", 2, 0, [b"b"], expires_at_ms=[9]), Publish("q", 3, 0, [b"c"])]
    payloads = [encode(m)[RECORD_HEADER_SIZE:] for m in recs]
    assert len(fold_records(bytes(m.TYPE for m in recs), payloads)) == 3
    # an old header: no ttl, no counter
    header = w.state.queues["q"].export_header()
    old = Queue.from_header(header[:15])
    assert (old.settings.ttl_ms, old.settings.on_expire, old.ttl_expired) == (0, "drop", 0)
    restored = BrokerState.from_records([(SNAPSHOT_QUEUE, msgpack.packb(header))])
    assert restored.queues["q"].settings.on_expire == "dead_letter"
    same_after_restart(w)


@pytest.mark.parametrize("restart", ["replayed", "restored"])
def test_timers_after_a_restart(restart: str) -> None:
    w = World()
    w.call("queue_create", queue="q")
    w.call("publish", queue="q", messages=[[b"a", None, None, None, 300], [b"b", None, None, None, 200]])
    state = w.replayed() if restart == "replayed" else w.restored()
    assert state.next_timer() == T0 + 200
    (m,) = state.due(T0 + 300)
    assert m == Expire("q", [2, 1], T0 + 300)
