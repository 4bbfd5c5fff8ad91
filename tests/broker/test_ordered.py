"""Ordered key groups (``queue_create`` ``ordered``): messages with one key are processed
one at a time, in publish order; different keys (and unkeyed messages) go in parallel."""
from __future__ import annotations

from typing import Any

import pytest

from protocol import ErrorCode

from .test_inspection_ops import World


@pytest.fixture
def world() -> World:
    """"q": ordered fifo, 2 attempts into "dlq"; a1 b1 a2 - a3 b2 published (key a/b, - unkeyed)."""
    w = World()
    w.call("queue_create", queue="dlq")
    w.call("queue_create", queue="q", ordered=True, max_attempts=2, dead_letter="dlq", visibility_ms=1000)
    w.call("publish", queue="q", messages=[[b"a1", b"a"], [b"b1", b"b"], [b"a2", b"a"], [b"-"],
                                           [b"a3", b"a"], [b"b2", b"b"]])
    return w


def take(w: World, n: int = 8) -> list[bytes]:
    return [m[1] for m in w.call("consume", queue="q", max=n)["messages"]]


def ids_of(w: World, *bodies: bytes) -> list[int]:
    rows = w.call("peek", queue="q", max=8)["messages"]
    return [r[0] for b in bodies for r in rows if r[1] == b]


def test_one_in_flight_per_key(world: World) -> None:
    assert take(world) == [b"a1", b"b1", b"-"]  # a2, a3 and b2 wait for their turn
    assert take(world) == []
    stats = world.call("queue_stats", queue="q")
    assert (stats["ready"], stats["leased"], stats["ordered"]) == (3, 3, True)
    world.call("ack", queue="q", ids=ids_of(world, b"a1"))
    assert take(world) == [b"a2"]
    world.call("ack", queue="q", ids=ids_of(world, b"b1", b"a2"))
    assert sorted(take(world)) == [b"a3", b"b2"]
    assert world.replayed().snapshot() == world.state.snapshot()


def test_a_failed_message_keeps_its_key_waiting(world: World) -> None:
    take(world)
    (a1,) = ids_of(world, b"a1")
    world.call("nack", queue="q", ids=[a1])
    assert take(world) == [b"a1"]  # before a2, although it went to the back
    world.advance(1000)  # its lease expires: attempts run out, it is dead-lettered
    assert b"a2" in take(world)
    (status,) = world.call("message_status", queue="q", ids=[a1])["statuses"]
    assert status["state"] == "dead_lettered"


def test_woken_consumers_are_told_of_the_next_in_line(world: World) -> None:
    take(world)
    world.state.take_woken()
    world.call("ack", queue="q", ids=ids_of(world, b"a1"))
    assert world.state.take_woken() == {"q": 1}


def test_delayed_and_expired_messages_keep_the_order(world: World) -> None:
    world.call("publish", queue="q", messages=[[b"c1", b"c", None, 500], [b"c2", b"c"]])
    assert take(world) == [b"a1", b"b1", b"-"]  # c2 waits for c1, which is delayed
    world.advance(500)
    assert take(world) == [b"c1"]


def test_purge_and_snapshots_keep_the_groups(world: World) -> None:
    take(world)
    restored = world.restored()
    assert restored.snapshot() == world.state.snapshot()
    assert restored.queues["q"].parked == world.state.queues["q"].parked
    world.call("queue_purge", queue="q")  # drops a2, a3, b2 (parked): the leased stay
    assert world.call("queue_stats", queue="q")["ready"] == 0
    world.call("publish", queue="q", messages=[[b"a4", b"a"]])
    assert take(world) == []  # a1 is still being processed
    world.call("ack", queue="q", ids=ids_of(world, b"a1"))
    assert take(world) == [b"a4"]


def test_peek_shows_the_waiting_ones_as_ready(world: World) -> None:
    take(world)
    ready = world.call("peek", queue="q", state="ready")["messages"]
    assert [r[1] for r in ready] == [b"a2", b"a3", b"b2"]


def test_only_fifo_queues_can_be_ordered(world: World) -> None:
    world.refused("queue_create", ErrorCode.INVALID_ARGUMENT, "ordered", queue="p", kind="priority",
                  ordered=True)
    world.refused("queue_create", ErrorCode.INVALID_ARGUMENT, "ordered", queue="p", ordered="yes")
    err = world.refused("queue_create", ErrorCode.QUEUE_EXISTS, None, queue="q", max_attempts=2,
                        dead_letter="dlq", visibility_ms=1000)  # the same but not ordered
    assert err.details == {"queue": "q"}


@pytest.mark.parametrize("shards", [1, 3])
def test_many_keys_never_two_in_flight(shards: int) -> None:
    """A sweep: consume, ack and nack at random; no key ever has two leased at once, and
    each key's messages are first delivered in publish order."""
    import random

    rng = random.Random(shards)
    w = World()
    w.call("queue_create", queue="q", ordered=True, shards=shards, max_attempts=0)
    keys = [b"k%d" % i for i in range(5)]
    sent: dict[bytes, list[int]] = {k: [] for k in keys}
    first_delivered: dict[bytes, list[int]] = {k: [] for k in keys}
    for step in range(300):
        if rng.random() < 0.4:
            key = rng.choice(keys)
            first = w.call("publish", queue="q", messages=[[b"x", key]])["first_id"]
            sent[key].append(first)
        leased = w.call("consume", queue="q", max=rng.randint(1, 4))["messages"]
        for m in leased:
            if m[2] == 1:
                first_delivered[m[3]].append(m[0])
        in_flight: dict[Any, int] = {}
        for row in w.call("peek", queue="q", state="leased", max=8)["messages"]:
            in_flight[row[3]] = in_flight.get(row[3], 0) + 1
        assert all(n == 1 for n in in_flight.values()), in_flight
        for m in leased:
            if rng.random() < 0.7:
                w.call("ack", queue="q", ids=[m[0]])
            else:
                w.call("nack", queue="q", ids=[m[0]])
    for key in keys:
        assert first_delivered[key] == sent[key][:len(first_delivered[key])]
    assert w.replayed().snapshot() == w.state.snapshot()
    assert w.restored().snapshot() == w.state.snapshot()


def test_a_publish_wakes_only_for_what_can_be_delivered(world: World) -> None:
    world.state.take_woken()
    world.call("publish", queue="q", messages=[[b"a4", b"a"], [b"c1", b"c"], [b"c2", b"c"]])
    assert world.state.take_woken() == {"q": 1}  # c1; a4 and c2 wait for their turn
