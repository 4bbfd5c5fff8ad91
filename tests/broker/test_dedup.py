"""Idempotent publish (SPEC §8.9) on the state, through ``dispatch`` and the real
appliers: a publish whose dedup id was seen within the queue's window stores nothing and
answers with the first message's id; the window survives replay and snapshots."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest

from broker.mutations import Publish
from broker.queues import Queue
from broker.records import encode, fold_records
from broker.state import SNAPSHOT_DEDUP, SNAPSHOT_DEDUP_COLUMNS, SNAPSHOT_QUEUE, BrokerState
from broker.wal.record import RECORD_HEADER_SIZE
from protocol import ErrorCode

from .test_inspection_ops import T0, World

WINDOW = 300_000


def entry(body: bytes, dedup_id: bytes | None, ttl: int | None = None) -> list[Any]:
    return [body, None, None, None, ttl, dedup_id]


def same_after_restart(w: World) -> None:
    assert w.replayed().snapshot() == w.state.snapshot()
    assert w.restored().snapshot() == w.state.snapshot()


@pytest.fixture
def world() -> World:
    w = World()
    w.call("queue_create", queue="q")
    return w


def test_a_duplicate_stores_nothing_and_names_the_first(world: World) -> None:
    assert world.call("queue_stats", queue="q")["dedup_window_ms"] == WINDOW
    first = world.call("publish", queue="q", messages=[entry(b"a", b"order-1")])
    assert first == {"first_id": 1, "count": 1}  # no duplicates key
    assert world.log[-1] == Publish("q", 1, T0, [b"a"], None, None, None, None, [b"order-1"])
    n = len(world.log)
    world.advance(1000)
    again = world.call("publish", queue="q", messages=[entry(b"a again", b"order-1")])
    assert again == {"first_id": 2, "count": 0, "duplicates": [[0, 1]]}
    assert len(world.log) == n  # nothing logged
    stats = world.call("queue_stats", queue="q")
    assert (stats["messages"], stats["published"]) == (1, 1)
    same_after_restart(world)


def test_a_batch_with_duplicates_gets_consecutive_ids_for_the_rest(world: World) -> None:
    world.call("publish", queue="q", messages=[entry(b"x", b"d0")])
    result = world.call("publish", queue="q", messages=[
        entry(b"a", b"d1"), [b"b"], entry(b"c", b"d1"), entry(b"d", b"d0"), entry(b"e", b"d2"), [b"f", b"k"]])
    assert result == {"first_id": 2, "count": 4, "duplicates": [[2, 2], [3, 1]]}
    assert world.log[-1] == Publish("q", 2, T0, [b"a", b"b", b"e", b"f"], [None, None, None, b"k"], None, None,
                                    None, [b"d1", None, b"d2", None])
    got = world.call("consume", queue="q", max=8)["messages"]
    assert [(m[0], m[1]) for m in got] == [(1, b"x"), (2, b"a"), (3, b"b"), (4, b"e"), (5, b"f")]
    same_after_restart(world)


def test_the_window_counts_from_the_first_publish(world: World) -> None:
    world.call("publish", queue="q", messages=[entry(b"a", b"d")])
    world.advance(WINDOW - 1)
    assert world.call("publish", queue="q", messages=[entry(b"b", b"d")])["count"] == 0  # does not renew it
    world.advance(1)
    assert world.call("publish", queue="q", messages=[entry(b"c", b"d")]) == {"first_id": 2, "count": 1}
    world.advance(WINDOW - 1)
    assert world.call("publish", queue="q", messages=[entry(b"d", b"d")])["duplicates"] == [[0, 2]]
    same_after_restart(world)


def test_remembered_after_the_message_is_gone(world: World) -> None:
    world.call("publish", queue="q", messages=[entry(b"a", b"d1", ttl=10), entry(b"b", b"d2")])
    world.call("consume", queue="q", max=2)
    world.call("ack", queue="q", ids=[2])
    world.advance(10)  # 1 expires
    assert world.call("queue_stats", queue="q")["messages"] == 0
    result = world.call("publish", queue="q", messages=[entry(b"a", b"d1"), entry(b"b", b"d2")])
    assert result == {"first_id": 3, "count": 0, "duplicates": [[0, 1], [1, 2]]}
    world.call("queue_purge", queue="q")
    world.call("queue_delete", queue="q")  # a new queue of the name starts with none
    world.call("queue_create", queue="q")
    assert world.call("publish", queue="q", messages=[entry(b"a", b"d1")]) == {"first_id": 1, "count": 1}


def test_forgotten_as_publishes_come_and_bounded(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.call("publish", queue="q", messages=[entry(b"a", b"d1"), entry(b"b", b"d2")])
    world.advance(WINDOW)
    world.call("publish", queue="q", messages=[entry(b"c", b"d3")])
    assert list(world.state.queues["q"].dedup) == [b"d3"]  # the window of d1 and d2 has passed
    monkeypatch.setattr("broker.queues.dedup.DEDUP_MAX_IDS", 2)
    world.call("publish", queue="q", messages=[entry(b"d", b"d4"), entry(b"e", b"d5")])
    assert list(world.state.queues["q"].dedup) == [b"d4", b"d5"]  # the oldest went first
    assert world.call("publish", queue="q", messages=[entry(b"c", b"d3")])["count"] == 1
    same_after_restart(world)


def test_a_window_of_zero_disables_dedup() -> None:
    w = World()
    w.call("queue_create", queue="q", dedup_window_ms=0)
    for _ in range(2):
        assert w.call("publish", queue="q", messages=[entry(b"a", b"d")])["count"] == 1
    assert w.log[-1] == Publish("q", 2, T0, [b"a"])  # the id is not even logged: a plain publish
    assert w.state.queues["q"].dedup == {}


def test_queue_full_counts_only_what_would_be_stored() -> None:
    w = World()
    w.call("queue_create", queue="q", max_messages=2)
    w.call("publish", queue="q", messages=[entry(b"a", b"d1"), entry(b"b", b"d2")])
    result = w.call("publish", queue="q", messages=[entry(b"a", b"d1"), entry(b"a", b"d1")])
    assert result == {"first_id": 3, "count": 0, "duplicates": [[0, 1], [1, 1]]}
    err = w.refused("publish", ErrorCode.QUEUE_FULL, None, queue="q",
                    messages=[entry(b"a", b"d1"), entry(b"c", b"d3")])
    assert err.details == {"queue": "q", "limit": 2, "bound": "max_messages"}
    w.refused("publish", ErrorCode.QUEUE_FULL, None, queue="q", messages=[entry(b"a", b"d1"), [b"c"]])


@pytest.mark.parametrize("dedup_id", ["text", b"", b"x" * 129, 5])
def test_dedup_ids_are_checked(world: World, dedup_id: Any) -> None:
    world.refused("publish", ErrorCode.INVALID_ARGUMENT, "messages[1].dedup_id", queue="q",
                  messages=[entry(b"ok", b"d"), entry(b"x", dedup_id)])
    world.refused("publish", ErrorCode.INVALID_ARGUMENT, "messages[0]", queue="q",
                  messages=[[b"x", None, None, None, None, b"d", None, None, None]])
    assert world.call("publish", queue="q", messages=[entry(b"x", b"y" * 128)])["count"] == 1


def test_a_too_large_duplicate_is_refused_like_any_entry() -> None:
    w = World()
    w.call("queue_create", queue="q")
    w.call("publish", queue="q", messages=[entry(b"a", b"d")])
    from .test_inspection_ops import CFG
    err = w.refused("publish", ErrorCode.MESSAGE_TOO_LARGE, None, queue="q",
                    messages=[entry(b"x" * (CFG.max_message + 1), b"d")])
    assert err.details["index"] == 0


def test_settings_are_compared_and_checked() -> None:
    w = World()
    w.call("queue_create", queue="q", dedup_window_ms=1000)
    assert w.call("queue_create", queue="q", dedup_window_ms=1000)["created"] is False
    w.refused("queue_create", ErrorCode.QUEUE_EXISTS, None, queue="q")
    for bad in (-1, 86_400_001, "5"):
        w.refused("queue_create", ErrorCode.INVALID_ARGUMENT, "dedup_window_ms", queue="r", dedup_window_ms=bad)


def test_records_snapshots_and_old_headers(world: World) -> None:
    world.call("publish", queue="q", messages=[entry(b"a", b"d1"), entry(b"b", b"d2")])
    world.call("publish", queue="q", messages=[entry(b"c", b"d3")])
    # a record with dedup ids is not folded with plain ones
    recs = [Publish("q", 9, 0, [b"a"]), Publish("q", 10, 0, [b"b"], dedup_ids=[b"d"]), Publish("q", 11, 0, [b"c"])]
    payloads = [encode(m)[RECORD_HEADER_SIZE:] for m in recs]
    assert len(fold_records(bytes(m.TYPE for m in recs), payloads)) == 3
    assert not recs[1].plain
    # snapshots keep the order (chunk=2 splits the rows over two records)
    restored = world.restored()
    assert list(restored.queues["q"].dedup.export_rows()) == [[b"d1", T0, 1], [b"d2", T0, 2], [b"d3", T0, 3]]
    header = world.state.queues["q"].export_header()
    assert Queue.from_header(header[:15]).settings.dedup_window_ms == WINDOW
    other = BrokerState.from_records([(SNAPSHOT_QUEUE, msgpack.packb(header))])
    assert other.queues["q"].settings.dedup_window_ms == WINDOW
    # after a restart the window goes on: still a duplicate
    state = world.replayed()
    world.state = state
    assert world.call("publish", queue="q", messages=[entry(b"a", b"d1")])["duplicates"] == [[0, 1]]


def test_forgetting_the_oldest_ids_stays_in_step_with_the_window() -> None:
    """Ids are forgotten from the oldest on as the window passes (the order index and the
    dict agree, and hold only the ids within the window), across many windows."""
    w = World()
    w.call("queue_create", queue="q", dedup_window_ms=1000)
    queue = w.state.queues["q"]
    for i in range(3000):
        w.call("publish", queue="q", messages=[entry(b"x", b"id-%d" % i)])
        w.advance(10)  # 100 publishes a window
        assert len(queue.dedup) <= 101
    assert list(queue.dedup.order) == list(queue.dedup)
    assert next(iter(queue.dedup)) == b"id-2900"
    # an id whose window passed is stored again, and remembered anew at the back
    w.call("publish", queue="q", messages=[entry(b"again", b"id-0")])
    assert list(queue.dedup)[-1] == b"id-0" and list(queue.dedup.order) == list(queue.dedup)
    same_after_restart(w)
    assert list(w.restored().queues["q"].dedup.order) == list(queue.dedup)


@pytest.mark.parametrize("batch", [
    [entry(b"a", b"1"), entry(b"b", b"2"), entry(b"c", b"3")],             # all new: checked by column
    [entry(b"a", b"1"), entry(b"b", b"1"), entry(b"c", b"3")],             # a duplicate within the batch
    [entry(b"a", b"old"), entry(b"b", b"2")],                              # a duplicate of the window
    [entry(b"a", b"1"), [b"b", b"k", None, None, None, b"2"]],             # one with a key
    [entry(b"a", b"1"), entry(b"b", None)],                                # one without an id
])
def test_a_batch_stores_what_one_by_one_publishes_store(batch: list[list[Any]]) -> None:
    together, alone = World(), World()
    for w in (together, alone):
        w.call("queue_create", queue="q")
        w.call("publish", queue="q", messages=[entry(b"first", b"old")])
    result = together.call("publish", queue="q", messages=batch)
    singles = [alone.call("publish", queue="q", messages=[e]) for e in batch]
    assert result["count"] == sum(r["count"] for r in singles)
    assert result.get("duplicates", []) == [
        [i, r["duplicates"][0][1]] for i, r in enumerate(singles) if r["count"] == 0]
    assert together.state.snapshot() == alone.state.snapshot()
    same_after_restart(together)


def test_a_bad_entry_among_deduplicated_ones_is_named() -> None:
    w = World()
    w.call("queue_create", queue="q")
    w.refused("publish", ErrorCode.INVALID_ARGUMENT, "messages[1].dedup_id", queue="q",
              messages=[entry(b"a", b"1"), entry(b"b", b"")])
    w.refused("publish", ErrorCode.INVALID_ARGUMENT, "messages[1].body", queue="q",
              messages=[entry(b"a", b"1"), entry("text", b"2")])


def test_a_snapshot_with_dedup_rows_of_the_older_kind_still_restores(world: World) -> None:
    """Snapshots written before record 111 carry the remembered ids as rows (record 106)."""
    world.call("publish", queue="q", messages=[entry(b"a", b"d1"), entry(b"b", b"d2")])
    records = []
    for rtype, payload in world.state.export_records():
        if rtype == SNAPSHOT_DEDUP_COLUMNS:
            name, ids, at_ms, mids = msgpack.unpackb(payload, raw=False)
            records.append((SNAPSHOT_DEDUP, msgpack.packb([name, [list(r) for r in zip(ids, at_ms, mids)]])))
        else:
            records.append((rtype, payload))
    assert any(rtype == SNAPSHOT_DEDUP for rtype, _ in records)
    restored = BrokerState.from_records(records)
    assert restored.snapshot() == world.state.snapshot()
    assert restored.queues["q"].dedup.duplicate_of(b"d2", T0) == 2
