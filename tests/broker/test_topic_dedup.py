"""Idempotent topic publishing (SPEC §5.23, §8.9) on the state, through ``dispatch`` and
the real appliers: an entry whose dedup id the topic remembers within its window stores
nothing and names the first message's topic-wide id; the window outlives retention and
survives replay, snapshots, older records and older snapshot headers."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest

from broker.mutations import TopicCreate, TopicPublish, Txn
from broker.records import decode, encode
from broker.state import SNAPSHOT_TOPIC, SNAPSHOT_TOPIC_DEDUP, BrokerState
from broker.topics import Topic
from broker.wal.record import RECORD_HEADER_SIZE
from protocol import ErrorCode

from .test_inspection_ops import T0
from .test_topics import World, same_after_restart

WINDOW = 300_000


def entry(body: bytes, dedup_id: bytes | None, key: bytes | None = None,
          headers: dict[str, str] | None = None) -> list[Any]:
    return [body, key, headers, dedup_id]


@pytest.fixture
def world() -> World:
    w = World()
    w.call("topic_create", topic="t", shards=2)
    w.call("group_create", topic="t", group="g")
    return w


def test_a_duplicate_stores_nothing_and_names_the_first(world: World) -> None:
    assert world.call("topic_stats", topic="t")["dedup_window_ms"] == WINDOW
    first = world.call("topic_publish", topic="t", messages=[entry(b"a", b"order-1")])
    assert first == {"first_id": 1, "count": 1}  # no duplicates key
    assert world.log[-1] == TopicPublish("t", 1, T0, [b"a"], None, None, [b"order-1"])
    n = len(world.log)
    world.advance(1000)
    again = world.call("topic_publish", topic="t", messages=[entry(b"a again", b"order-1", b"k")])
    assert again == {"first_id": 2, "count": 0, "duplicates": [[0, 1]]}
    assert len(world.log) == n  # nothing logged
    stats = world.call("topic_stats", topic="t")
    assert (stats["messages"], stats["published"], stats["next_offsets"]) == (1, 1, [1, 2])
    same_after_restart(world)


def test_a_batch_with_duplicates_gets_consecutive_ids_for_the_rest(world: World) -> None:
    world.call("topic_publish", topic="t", messages=[entry(b"x", b"d0")])
    result = world.call("topic_publish", topic="t", messages=[
        entry(b"a", b"d1"), [b"b"], entry(b"c", b"d1"), entry(b"d", b"d0"), entry(b"e", b"d2", b"k", {"h": "1"}),
        [b"f", b"k"]])
    assert result == {"first_id": 2, "count": 4, "duplicates": [[2, 2], [3, 1]]}
    assert world.log[-1] == TopicPublish("t", 2, T0, [b"a", b"b", b"e", b"f"], [None, None, b"k", b"k"],
                                         [None, None, {"h": "1"}, None], [b"d1", None, b"d2", None])
    got = world.call("consume", queue="t/g", max=10)["messages"]
    assert sorted(m[1] for m in got) == [b"a", b"b", b"e", b"f", b"x"]
    same_after_restart(world)


def test_the_window_counts_from_the_first_publish_and_outlives_retention() -> None:
    w = World()
    w.call("topic_create", topic="t", retention="limits", max_messages=1, dedup_window_ms=10_000)
    w.call("topic_publish", topic="t", messages=[entry(b"a", b"d")])
    w.call("topic_publish", topic="t", messages=[[b"b"]])  # the limit drops message 1
    assert w.call("topic_stats", topic="t")["first_offsets"] == [2]
    w.advance(9_999)
    assert w.call("topic_publish", topic="t", messages=[entry(b"a", b"d")])["duplicates"] == [[0, 1]]
    w.advance(1)  # the window ends 10,000 ms after the first publish, not renewed by the duplicate
    assert w.call("topic_publish", topic="t", messages=[entry(b"a", b"d")]) == {"first_id": 3, "count": 1}
    assert w.call("topic_publish", topic="t", messages=[entry(b"a", b"d")])["duplicates"] == [[0, 3]]
    same_after_restart(w)


def test_interest_reclaimed_messages_are_still_remembered(world: World) -> None:
    world.call("topic_publish", topic="t", messages=[entry(b"a", b"d")])
    [msg] = world.call("consume", queue="t/g")["messages"]
    world.call("ack", queue="t/g", ids=[msg[0]])
    assert world.call("topic_stats", topic="t")["reclaimed"] == 1
    assert world.call("topic_publish", topic="t", messages=[entry(b"a", b"d")])["duplicates"] == [[0, 1]]
    same_after_restart(world)


def test_a_window_of_zero_checks_the_form_and_ignores_the_ids() -> None:
    w = World()
    w.call("topic_create", topic="t", dedup_window_ms=0)
    assert w.call("topic_publish", topic="t", messages=[entry(b"a", b"d"), entry(b"b", b"d")]) == {
        "first_id": 1, "count": 2}
    assert w.log[-1].dedup_ids is None
    assert len(w.state.topics["t"].dedup) == 0
    w.refused("topic_publish", ErrorCode.INVALID_ARGUMENT, "messages[0].dedup_id", topic="t",
              messages=[entry(b"a", b"")])


def test_topics_and_queues_remember_apart(world: World) -> None:
    world.call("topic_create", topic="u")
    world.call("queue_create", queue="t")
    world.call("topic_publish", topic="t", messages=[entry(b"a", b"d")])
    assert world.call("topic_publish", topic="u", messages=[entry(b"a", b"d")]) == {"first_id": 1, "count": 1}
    assert world.call("publish", queue="t", messages=[[b"a", None, None, None, None, b"d"]]) == {
        "first_id": 1, "count": 1}


@pytest.mark.parametrize(("messages", "code", "field"), [
    ([[b"a", None, None, None, None]], ErrorCode.INVALID_ARGUMENT, "messages[0]"),
    ([entry(b"a", b"")], ErrorCode.INVALID_ARGUMENT, "messages[0].dedup_id"),
    ([entry(b"a", b"x" * 129)], ErrorCode.INVALID_ARGUMENT, "messages[0].dedup_id"),
    ([entry(b"a", "text")], ErrorCode.INVALID_ARGUMENT, "messages[0].dedup_id"),
    ([entry(b"a", b"1"), entry("text", b"2")], ErrorCode.INVALID_ARGUMENT, "messages[1].body"),
    ([entry(b"a", b"1"), entry(b"b", b"2", headers={"k": 1})], ErrorCode.INVALID_ARGUMENT, "messages[1].headers"),
    # a duplicate's body is checked too, and its form first
    ([entry(b"b", b"old"), entry(b"c", b"")], ErrorCode.INVALID_ARGUMENT, "messages[1].dedup_id"),
])
def test_checks_in_order(world: World, messages: list[Any], code: ErrorCode, field: str) -> None:
    world.call("topic_publish", topic="t", messages=[entry(b"a", b"old")])
    world.refused("topic_publish", code, field, topic="t", messages=messages)


def test_a_duplicate_too_large_is_refused(world: World) -> None:
    world.call("topic_publish", topic="t", messages=[entry(b"a", b"old")])
    big = b"x" * (2**20 + 1)
    error = world.refused("topic_publish", ErrorCode.MESSAGE_TOO_LARGE, topic="t",
                          messages=[[b"ok"], entry(big, b"old")])
    assert error.details == {"index": 1, "limit": 2**20}


def test_create_compares_the_window(world: World) -> None:
    assert world.call("topic_create", topic="t", shards=2, dedup_window_ms=WINDOW)["created"] is False
    world.refused("topic_create", ErrorCode.QUEUE_EXISTS, "topic", topic="t", shards=2, dedup_window_ms=0)
    world.refused("topic_create", ErrorCode.INVALID_ARGUMENT, "dedup_window_ms", topic="u",
                  dedup_window_ms=86_400_001)
    world.refused("topic_create", ErrorCode.INVALID_ARGUMENT, "dedup_window_ms", topic="u", dedup_window_ms=-1)
    assert world.call("topic_create", topic="u", dedup_window_ms=86_400_000)["created"] is True
    stats = world.call("topic_stats", topic="u")
    keys = list(stats)
    assert keys[keys.index("max_messages") + 1] == "dedup_window_ms"
    assert stats["dedup_window_ms"] == 86_400_000


def test_records_leave_the_new_fields_out_at_their_defaults_and_old_ones_still_load(world: World) -> None:
    assert TopicCreate("t", 1, "interest", 0, 0, 0).record_fields() == ["t", 1, "interest", 0, 0, 0]
    assert TopicCreate("t", 1, "interest", 0, 0, 0, 0).record_fields()[-1] == 0
    plain = TopicPublish("t", 1, T0, [b"a"])
    assert plain.record_fields() == ["t", 1, T0, [b"a"], None, None]
    for m in (plain, TopicPublish("t", 1, T0, [b"a"], None, None, [b"d"]),
              TopicCreate("t", 1, "interest", 0, 0, 0, 5)):
        assert decode(m.TYPE, encode(m)[RECORD_HEADER_SIZE:]) == m
    # a record from before the window existed: the default window
    state = BrokerState()
    state.apply_record(TopicCreate.TYPE, msgpack.packb(["old", 1, "interest", 0, 0, 0]))
    assert state.topics["old"].settings.dedup_window_ms == WINDOW
    # a snapshot header from before it: the default window
    header = world.state.topics["t"].export_header()
    assert Topic.from_header(header[:11]).settings.dedup_window_ms == WINDOW
    other = BrokerState.from_records([(SNAPSHOT_TOPIC, msgpack.packb(header[:11]))])
    assert other.topics["t"].dedup.window == WINDOW


def test_snapshots_keep_the_ids_in_order_and_the_window_goes_on(world: World) -> None:
    world.call("topic_publish", topic="t", messages=[entry(b"a", b"d1"), entry(b"b", b"d2")])
    world.advance(5)
    world.call("topic_publish", topic="t", messages=[entry(b"c", b"d3")])
    rows = [msgpack.unpackb(p) for rtype, p in world.state.export_records(chunk=1) if rtype == SNAPSHOT_TOPIC_DEDUP]
    assert rows == [["t", [b"d1", b"d2", b"d3"], [T0, T0, T0 + 5], [1, 2, 3]]]
    restored = world.restored()
    assert list(restored.topics["t"].dedup.export_rows()) == [[b"d1", T0, 1], [b"d2", T0, 2], [b"d3", T0 + 5, 3]]
    assert list(restored.topics["t"].dedup.order) == [b"d1", b"d2", b"d3"]
    assert restored.snapshot_bound() > BrokerState.from_records(
        [(r, p) for r, p in world.state.export_records() if r != SNAPSHOT_TOPIC_DEDUP]).snapshot_bound()
    for state in (restored, world.replayed()):
        world.state = state
        assert world.call("topic_publish", topic="t", messages=[entry(b"x", b"d3")])["duplicates"] == [[0, 3]]


def test_bounded_like_a_queue(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("broker.queues.dedup.DEDUP_MAX_IDS", 2)
    world.call("topic_publish", topic="t", messages=[entry(b"a", b"d1"), entry(b"b", b"d2"), entry(b"c", b"d3")])
    assert list(world.state.topics["t"].dedup) == [b"d2", b"d3"]  # the oldest went first
    assert world.call("topic_publish", topic="t", messages=[entry(b"a", b"d1")]) == {"first_id": 4, "count": 1}


def test_txn_steps_take_dedup_ids(world: World) -> None:
    world.call("queue_create", queue="q")
    world.call("topic_publish", topic="t", messages=[entry(b"a", b"d1")])
    result = world.call("txn", steps=[
        {"op": "topic_publish", "topic": "t", "messages": [entry(b"a", b"d1"), entry(b"b", b"d2")]},
        {"op": "publish", "queue": "q", "messages": [[b"out"]]}])
    assert result["results"][0] == {"first_id": 2, "count": 1, "duplicates": [[0, 1]]}
    [txn] = world.log[-1:]
    assert isinstance(txn, Txn)
    assert txn.mutations()[0] == TopicPublish("t", 2, T0, [b"b"], None, None, [b"d2"])
    # a step whose entries are all duplicates logs nothing of its own
    n = len(world.log)
    again = world.call("txn", steps=[{"op": "topic_publish", "topic": "t", "messages": [entry(b"x", b"d2")]}])
    assert again == {"results": [{"first_id": 3, "count": 0, "duplicates": [[0, 2]]}]}
    assert len(world.log) == n
    error = world.refused("txn", ErrorCode.INVALID_ARGUMENT, "steps[0].messages[0].dedup_id", steps=[
        {"op": "topic_publish", "topic": "t", "messages": [entry(b"x", b"")]}])
    assert error.details["step"] == 0
    same_after_restart(world)


def test_deleting_the_topic_forgets_its_ids(world: World) -> None:
    world.call("topic_publish", topic="t", messages=[entry(b"a", b"d")])
    world.call("topic_delete", topic="t")
    world.call("topic_create", topic="t", shards=2)
    assert world.call("topic_publish", topic="t", messages=[entry(b"a", b"d")]) == {"first_id": 1, "count": 1}
    same_after_restart(world)
