"""Bounded queues (SPEC §8.12): ``max_messages`` and ``max_bytes`` with the overflow
policies ``reject``, ``drop_oldest`` and ``dead_letter_oldest``; replay and snapshots
give the same state."""
from __future__ import annotations

from typing import Any

import pytest

from broker.mutations import Evict, Publish
from protocol import ErrorCode

from .test_inspection_ops import World


def ids(w: World, queue: str) -> list[int]:
    return sorted(w.state.queues[queue].messages)


def bodies(w: World, queue: str) -> list[bytes]:
    msgs = w.state.queues[queue].messages
    return [msgs[i].body for i in sorted(msgs)]


def same_after_restart(w: World) -> None:
    assert w.replayed().snapshot() == w.state.snapshot()
    assert w.restored().snapshot() == w.state.snapshot()


# -- reject ---------------------------------------------------------------------------------


def test_reject_refuses_a_batch_past_max_bytes_whole() -> None:
    w = World()
    w.call("queue_create", queue="q", max_bytes=10)
    w.call("publish", queue="q", messages=[[b"aaaa"], [b"bbbb"]])  # 8 of 10 bytes
    err = w.refused("publish", ErrorCode.QUEUE_FULL, queue="q", messages=[[b"c"], [b"dd"]])
    assert err.details == {"queue": "q", "limit": 10, "bound": "max_bytes"}
    assert bodies(w, "q") == [b"aaaa", b"bbbb"]  # all or nothing: not even "c"
    w.call("publish", queue="q", messages=[[b"cc"]])  # exactly at the bound
    stats = w.call("queue_stats", queue="q")
    assert (stats["bytes"], stats["max_bytes"], stats["overflow"], stats["overflowed"]) == (10, 10, "reject", 0)
    w.call("ack", queue="q", ids=[1])  # acks free room
    w.call("publish", queue="q", messages=[[b"dddd"]])
    assert w.state.queues["q"].bytes == 10


def test_reject_counts_keys_of_nothing_and_duplicates_as_nothing() -> None:
    """Only bodies count toward max_bytes; a duplicate stores nothing, so costs nothing."""
    w = World()
    w.call("queue_create", queue="q", max_bytes=4)
    w.call("publish", queue="q", messages=[[b"abcd", b"a-long-key", None, None, None, b"d1"]])
    result = w.call("publish", queue="q", messages=[[b"abcd", None, None, None, None, b"d1"]])
    assert result["duplicates"] == [[0, 1]] and result["count"] == 0


# -- drop_oldest ----------------------------------------------------------------------------


def test_drop_oldest_makes_room_by_count_skipping_leased_messages() -> None:
    w = World()
    w.call("queue_create", queue="q", max_messages=3, overflow="drop_oldest")
    w.call("publish", queue="q", messages=[[b"1"], [b"2"], [b"3"]])
    w.call("consume", queue="q", max=1)  # 1 is leased: never dropped for room
    w.call("publish", queue="q", messages=[[b"4"], [b"5"]])
    assert bodies(w, "q") == [b"1", b"4", b"5"]
    assert any(type(m) is Evict and m.ids == [2, 3] for m in w.log)
    stats = w.call("queue_stats", queue="q")
    assert (stats["overflowed"], stats["dropped"], stats["dead_lettered"]) == (2, 0, 0)
    assert w.state.count_ack_reserve() == w.state.ack_reserve
    same_after_restart(w)


def test_drop_oldest_takes_delayed_ones_too_in_id_order() -> None:
    w = World()
    w.call("queue_create", queue="q", max_messages=2, overflow="drop_oldest")
    w.call("publish", queue="q", messages=[[b"later", None, None, 60_000], [b"now"]])
    w.call("publish", queue="q", messages=[[b"new"]])
    assert bodies(w, "q") == [b"now", b"new"]
    assert w.call("queue_stats", queue="q")["delayed"] == 0
    same_after_restart(w)


def test_drop_oldest_by_bytes_drops_as_many_as_the_new_bodies_need() -> None:
    w = World()
    w.call("queue_create", queue="q", max_bytes=10, overflow="drop_oldest")
    w.call("publish", queue="q", messages=[[b"aaa"], [b"bbb"], [b"cccc"]])  # 10 bytes
    w.call("publish", queue="q", messages=[[b"dddddd"]])  # needs 6: aaa and bbb go
    assert bodies(w, "q") == [b"cccc", b"dddddd"]
    assert w.state.queues["q"].bytes == 10
    same_after_restart(w)


@pytest.mark.parametrize(("max_messages", "max_bytes", "batch", "bound"), [
    (2, 0, [[b"a"], [b"b"], [b"c"]], "max_messages"),   # more than the bound alone
    (10, 4, [[b"abcde"]], "max_bytes"),                    # larger than the bound alone
])
def test_a_batch_that_cannot_fit_even_alone_is_refused(
        max_messages: int, max_bytes: int, batch: list[list[Any]], bound: str) -> None:
    w = World()
    w.call("queue_create", queue="q", max_messages=max_messages, max_bytes=max_bytes, overflow="drop_oldest")
    w.call("publish", queue="q", messages=[[b"x"]])
    err = w.refused("publish", ErrorCode.QUEUE_FULL, queue="q", messages=batch)
    assert err.details["bound"] == bound
    assert bodies(w, "q") == [b"x"]


def test_when_leased_messages_fill_the_queue_a_publish_is_refused() -> None:
    w = World()
    w.call("queue_create", queue="q", max_messages=2, overflow="drop_oldest")
    w.call("publish", queue="q", messages=[[b"a"], [b"b"]])
    w.call("consume", queue="q", max=2)
    err = w.refused("publish", ErrorCode.QUEUE_FULL, queue="q", messages=[[b"c"]])
    assert err.details == {"queue": "q", "limit": 2, "bound": "max_messages"}
    w.call("nack", queue="q", ids=[1])  # ready again: the oldest that may go
    w.call("publish", queue="q", messages=[[b"c"]])
    assert bodies(w, "q") == [b"b", b"c"]


def test_an_ordered_queue_moves_on_to_the_next_of_a_key_whose_head_was_dropped() -> None:
    w = World()
    w.call("queue_create", queue="q", max_messages=3, overflow="drop_oldest", ordered=True)
    w.call("publish", queue="q", messages=[[b"k1", b"k"], [b"k2", b"k"], [b"other"]])
    w.call("publish", queue="q", messages=[[b"new"]])  # k1, the head of k, goes
    got = [m[1] for m in w.call("consume", queue="q", max=5)["messages"]]
    assert sorted(got) == [b"k2", b"new", b"other"]
    same_after_restart(w)


# -- dead_letter_oldest ---------------------------------------------------------------------


def test_dead_letter_oldest_moves_them_with_reason_overflow() -> None:
    w = World()
    w.call("queue_create", queue="dlq")
    w.call("queue_create", queue="q", max_messages=2, overflow="dead_letter_oldest", dead_letter="dlq")
    w.call("publish", queue="q", messages=[[b"a"], [b"b"]])
    w.advance(5)
    w.call("publish", queue="q", messages=[[b"c"]])
    assert bodies(w, "q") == [b"b", b"c"] and bodies(w, "dlq") == [b"a"]
    (row,) = w.call("peek", queue="q", dead_letter=True)["messages"]
    assert row[7] == {"queue": "q", "id": 1, "attempts": 0, "reason": "overflow", "error": None, "at_ms": w.now}
    assert row[8] == w.now - 5  # it keeps its publish time
    stats = w.call("queue_stats", queue="q")
    assert (stats["overflowed"], stats["dead_lettered"], stats["dropped"]) == (1, 1, 0)
    status = w.call("message_status", queue="q", ids=[1])["statuses"][0]
    assert (status["state"], status["reason"]) == ("dead_lettered", "overflow")
    same_after_restart(w)


def test_dead_letter_oldest_without_a_dead_letter_queue_drops() -> None:
    w = World()
    w.call("queue_create", queue="q", max_messages=1, overflow="dead_letter_oldest")
    w.call("publish", queue="q", messages=[[b"a"]])
    w.call("publish", queue="q", messages=[[b"b"]])
    stats = w.call("queue_stats", queue="q")
    assert bodies(w, "q") == [b"b"] and (stats["overflowed"], stats["dropped"]) == (1, 0)


# -- settings ---------------------------------------------------------------------------------


def test_settings_are_checked_and_part_of_the_declaration() -> None:
    w = World()
    w.refused("queue_create", ErrorCode.INVALID_ARGUMENT, "max_bytes", queue="q", max_bytes=-1)
    w.refused("queue_create", ErrorCode.INVALID_ARGUMENT, "overflow", queue="q", overflow="drop_newest")
    assert w.call("queue_create", queue="q", max_bytes=100, overflow="drop_oldest")["created"]
    assert not w.call("queue_create", queue="q", max_bytes=100, overflow="drop_oldest")["created"]
    w.refused("queue_create", ErrorCode.QUEUE_EXISTS, None, queue="q", max_bytes=100)
    w.refused("queue_create", ErrorCode.QUEUE_EXISTS, None, queue="q", overflow="drop_oldest")


def test_a_queue_that_evicts_is_never_on_the_plain_fast_path() -> None:
    """Publishes to it go through the handler, which evicts; others keep the fast path."""
    w = World()
    w.call("queue_create", queue="evicts", max_messages=1, overflow="drop_oldest")
    w.call("queue_create", queue="bytes", max_bytes=5)
    w.call("queue_create", queue="plain", max_messages=5)
    assert [w.state.queues[q].plain_limit for q in ("evicts", "bytes", "plain")] == [-1, -1, 5]
    for body in (b"a", b"b", b"c"):
        w.call("publish", queue="evicts", messages=[[body]])
    assert bodies(w, "evicts") == [b"c"]
    assert [type(m) for m in w.log[-2:]] == [Evict, Publish]


def test_arrival_order_survives_a_snapshot_and_many_evictions() -> None:
    """After a restart from a snapshot (which lists ready messages by shard, not by id)
    eviction still takes the oldest first."""
    w = World()
    w.call("queue_create", queue="q", shards=3, max_messages=6, overflow="drop_oldest")
    w.call("publish", queue="q", messages=[[b"%d" % i] for i in range(6)])
    restored = w.restored()
    w.state = restored
    for i in range(6, 30):
        w.call("publish", queue="q", messages=[[b"%d" % i]])
        assert bodies(w, "q") == [b"%d" % j for j in range(i - 5, i + 1)]
    assert w.call("queue_stats", queue="q")["overflowed"] == 24
