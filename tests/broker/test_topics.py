"""Topics and consumer groups (SPEC §8.13) on the state, through ``dispatch`` and the real
appliers: fan-out with one stored body, competing consumers within a group, interest
and limits retention, start positions, seek, filters, retries into a dead-letter
queue; replay and snapshots give the same state."""
from __future__ import annotations

import random
from typing import Any

import pytest

from broker.commands import Context, dispatch
from broker.config import BrokerConfig
from broker.state import BrokerState
from broker.topics import TopicCopy
from protocol import GROUP_WINDOW, ErrorCode

from . import test_inspection_ops
from .test_inspection_ops import T0

CFG = BrokerConfig()


class World(test_inspection_ops.World):
    """The inspection tests' world, with the default limits (max_batch 10,000)."""

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        outcome = dispatch(self.session, op, args, Context(self.state, CFG, self.now, "a:1"))
        for m in outcome.mutations:
            self.log.append(m)
            self.state.apply(m)
        assert outcome.result is not None
        return outcome.result


def same_after_restart(w: World) -> None:
    for rebuilt in (w.replayed(), w.restored()):
        assert rebuilt.snapshot() == w.state.snapshot()
        assert rebuilt.topics_snapshot() == w.state.topics_snapshot()


def consume(w: World, queue: str, most: int = 100) -> list[list[Any]]:
    return w.call("consume", queue=queue, max=most)["messages"]


def publish(w: World, topic: str, *entries: list[Any]) -> dict[str, Any]:
    return w.call("topic_publish", topic=topic, messages=list(entries))


@pytest.fixture
def world() -> World:
    w = World()
    w.call("topic_create", topic="orders", shards=2)
    w.call("group_create", topic="orders", group="billing", start="earliest")
    w.call("group_create", topic="orders", group="email", start="earliest")
    return w


def test_every_group_gets_every_message_in_shard_order_from_one_stored_body(world: World) -> None:
    result = publish(world, "orders", *[[b"order %d" % i, b"customer-%d" % (i % 3)] for i in range(6)])
    assert result == {"first_id": 1, "count": 6}
    got = {g: consume(world, f"orders/{g}") for g in ("billing", "email")}
    assert [d[0] for d in got["billing"]] == [d[0] for d in got["email"]]
    assert sorted(d[1] for d in got["billing"]) == [b"order %d" % i for i in range(6)]
    # per shard, in offset order; each delivery names its shard and offset
    for rows in got.values():
        for shard in (0, 1):
            offsets = [d[7] for d in rows if d[6] == shard]
            assert offsets == list(range(1, len(offsets) + 1))
    # one body object, shared by the topic and both groups' copies
    topic = world.state.topics["orders"]
    stored = {m.id: m.body for log in topic.logs for m in log}
    for g in ("billing", "email"):
        copies = world.state.queues[f"orders/{g}"].messages
        assert all(type(c) is TopicCopy and c.body is stored[c.id] for c in copies.values())
    assert topic.stats()["messages"] == 6 and topic.stats()["bytes"] == sum(len(b) for b in stored.values())
    same_after_restart(world)


def test_consumers_of_one_group_share_its_messages(world: World) -> None:
    publish(world, "orders", *[[b"%d" % i] for i in range(4)])
    first = consume(world, "orders/billing", 2)
    second = consume(world, "orders/billing", 10)
    assert len(first) == 2 and len(second) == 2
    assert {d[0] for d in first}.isdisjoint(d[0] for d in second)


def test_interest_keeps_a_message_until_every_group_acked_it(world: World) -> None:
    publish(world, "orders", [b"a"], [b"b"])
    topic = world.state.topics["orders"]
    billing = consume(world, "orders/billing")
    world.call("ack", queue="orders/billing", ids=[d[0] for d in billing])
    assert len(topic) == 2  # email has not acked them
    email = consume(world, "orders/email")
    world.call("ack", queue="orders/email", ids=[email[0][0]])
    assert len(topic) == 1 and topic.reclaimed == 1
    world.call("ack", queue="orders/email", ids=[email[1][0]])
    assert len(topic) == 0 and topic.reclaimed == 2 and topic.bytes == 0
    same_after_restart(world)


def test_a_topic_without_groups_keeps_nothing_under_interest() -> None:
    w = World()
    w.call("topic_create", topic="t")
    publish(w, "t", [b"x"])
    assert w.call("topic_stats", topic="t")["messages"] == 0
    w.call("group_create", topic="t", group="late", start="earliest")
    assert consume(w, "t/late") == []


def test_limits_keep_the_newest_and_groups_count_what_they_missed() -> None:
    w = World()
    w.call("topic_create", topic="t", retention="limits", max_messages=3)
    w.call("group_create", topic="t", group="slow", start="earliest")
    publish(w, "t", *[[b"%d" % i] for i in range(5)])
    stats = w.call("topic_stats", topic="t")
    assert (stats["messages"], stats["expired"], stats["first_offsets"]) == (3, 2, [3])
    assert w.call("group_stats", topic="t", group="slow")["missed"] == 2
    assert [d[1] for d in consume(w, "t/slow")] == [b"2", b"3", b"4"]
    # a group created now still reads what the limits keep, acked or not
    w.call("group_create", topic="t", group="late", start="earliest")
    assert [d[1] for d in consume(w, "t/late")] == [b"2", b"3", b"4"]
    same_after_restart(w)


def test_the_age_limit_drops_messages_on_the_clock() -> None:
    w = World()
    w.call("topic_create", topic="t", retention="limits", max_age_ms=1000)
    publish(w, "t", [b"old"])
    w.advance(600)
    publish(w, "t", [b"new"])
    w.advance(399)
    assert w.call("topic_stats", topic="t")["messages"] == 2
    w.advance(1)
    assert w.call("topic_stats", topic="t")["messages"] == 1
    w.advance(600)
    assert w.call("topic_stats", topic="t")["messages"] == 0
    same_after_restart(w)


def test_start_positions_and_seek() -> None:
    w = World()
    w.call("topic_create", topic="t", retention="limits")
    publish(w, "t", [b"a"], [b"b"])
    w.advance(100)
    publish(w, "t", [b"c"])
    w.call("group_create", topic="t", group="latest")            # the default: only what comes next
    w.call("group_create", topic="t", group="earliest", start="earliest")
    w.call("group_create", topic="t", group="since", start=T0 + 50)
    w.call("group_create", topic="t", group="offset", start=[2])
    publish(w, "t", [b"d"])
    bodies = {g: [d[1] for d in consume(w, f"t/{g}")] for g in ("latest", "earliest", "since", "offset")}
    assert bodies == {"latest": [b"d"], "earliest": [b"a", b"b", b"c", b"d"], "since": [b"c", b"d"],
                      "offset": [b"b", b"c", b"d"]}
    result = w.call("group_seek", topic="t", group="latest", to="earliest")
    assert result["cursors"] == [1]
    assert [d[1] for d in consume(w, "t/latest")] == [b"a", b"b", b"c"]  # d is still leased
    same_after_restart(w)


def test_a_filter_delivers_only_matching_headers(world: World) -> None:
    w = World()
    w.call("topic_create", topic="t")
    w.call("group_create", topic="t", group="eu", start="earliest", filter={"region": "eu"})
    publish(w, "t", [b"1", None, {"region": "eu"}], [b"2", None, {"region": "us"}], [b"3"],
            [b"4", None, {"region": "eu", "vip": "yes"}])
    got = consume(w, "t/eu")
    assert [(d[1], d[8]) for d in got] == [(b"1", {"region": "eu"}), (b"4", {"region": "eu", "vip": "yes"})]
    stats = w.call("group_stats", topic="t", group="eu")
    assert (stats["filtered"], stats["lag"]) == (2, 0)
    w.call("ack", queue="t/eu", ids=[d[0] for d in got])
    assert w.call("topic_stats", topic="t")["messages"] == 0  # the others were skipped: done


def test_retries_and_dead_letters_of_a_group_leave_the_others_alone(world: World) -> None:
    world.call("queue_create", queue="dlq")
    world.call("group_create", topic="orders", group="flaky", start="earliest", max_attempts=2,
               dead_letter="dlq", retry_delay_ms=100)
    publish(world, "orders", [b"x"])
    (d,) = consume(world, "orders/flaky")
    world.call("nack", queue="orders/flaky", ids=[d[0]], error="gateway down")
    assert consume(world, "orders/flaky") == []  # retry backoff
    world.advance(100)
    (again,) = consume(world, "orders/flaky")
    assert again[2] == 2
    world.call("nack", queue="orders/flaky", ids=[d[0]])
    (dead,) = world.call("peek", queue="dlq")["messages"]
    assert dead[7]["queue"] == "orders/flaky" and dead[7]["reason"] == "max_attempts"
    assert [m[1] for m in consume(world, "orders/billing")] == [b"x"]  # unaffected
    redrive = world.call("redrive", queue="dlq")
    assert redrive["redriven"] == 0  # a group takes only its topic's messages
    same_after_restart(world)


def test_a_group_holds_at_most_a_window_of_unread_messages() -> None:
    w = World()
    w.call("topic_create", topic="t", retention="limits")
    w.call("group_create", topic="t", group="g")
    publish(w, "t", *[[b"m"]] * (GROUP_WINDOW + 2000))
    queue = w.state.queues["t/g"]
    assert len(queue) == GROUP_WINDOW
    assert w.call("group_stats", topic="t", group="g")["lag"] == 2000
    assert len(consume(w, "t/g", GROUP_WINDOW // 2 - 1)) == GROUP_WINDOW // 2 - 1
    assert len(queue) == GROUP_WINDOW  # more than half the window ready: not topped up
    consume(w, "t/g", 1)
    assert (queue.ready, queue.leased) == (GROUP_WINDOW, GROUP_WINDOW // 2)  # topped up
    assert w.call("group_stats", topic="t", group="g")["lag"] == 2000 - GROUP_WINDOW // 2


def test_groups_are_queues_only_for_reading(world: World) -> None:
    for op, args in (("publish", {"messages": [[b"x"]]}), ("queue_delete", {}), ("queue_purge", {})):
        err = world.refused(op, ErrorCode.INVALID_ARGUMENT, "queue", queue="orders/billing", **args)
        assert "consumer group" in err.message
    assert [q["queue"] for q in world.call("queue_list")["queues"]] == []
    assert world.call("queue_stats", queue="orders/billing")["shards"] == 2


def test_declaring_is_idempotent_and_checked(world: World) -> None:
    assert not world.call("topic_create", topic="orders", shards=2)["created"]
    world.refused("topic_create", ErrorCode.QUEUE_EXISTS, "topic", topic="orders", shards=3)
    assert not world.call("group_create", topic="orders", group="billing", start="latest")["created"]
    world.refused("group_create", ErrorCode.QUEUE_EXISTS, "group", topic="orders", group="billing",
                  max_attempts=3)
    world.refused("group_create", ErrorCode.QUEUE_NOT_FOUND, "topic", topic="nope", group="g")
    world.refused("group_create", ErrorCode.INVALID_ARGUMENT, "start", topic="orders", group="g", start=[1])
    world.refused("group_create", ErrorCode.INVALID_ARGUMENT, "filter", topic="orders", group="g",
                  filter={"a": 1})
    world.refused("group_stats", ErrorCode.QUEUE_NOT_FOUND, "group", topic="orders", group="nope")
    world.refused("topic_publish", ErrorCode.INVALID_ARGUMENT, "messages[0].headers", topic="orders",
                  messages=[[b"x", None, ["not", "a", "map"]]])


def test_deleting_a_group_or_the_topic(world: World) -> None:
    publish(world, "orders", [b"a"])
    consume(world, "orders/email")
    assert world.call("group_delete", topic="orders", group="email")["messages"] == 1
    assert "orders/email" not in world.state.queues
    world.call("ack", queue="orders/billing", ids=[d[0] for d in consume(world, "orders/billing")])
    assert world.call("topic_stats", topic="orders")["messages"] == 0  # only billing had interest
    assert world.call("topic_delete", topic="orders") == {"topic": "orders", "messages": 0}
    assert "orders/billing" not in world.state.queues and world.state.ack_reserve == 0
    same_after_restart(world)


def test_a_group_that_does_not_exist_is_not_found(world: World) -> None:
    err = world.refused("consume", ErrorCode.QUEUE_NOT_FOUND, "queue", queue="orders/nope")
    assert err.details == {"field": "queue", "queue": "orders/nope", "topic": "orders", "group": "nope"}
    assert "has no group" in err.message
    err = world.refused("queue_stats", ErrorCode.QUEUE_NOT_FOUND, "queue", queue="nope/g")
    assert "topic 'nope' does not exist" in err.message
    world.refused("consume", ErrorCode.INVALID_ARGUMENT, "queue", queue="orders/bad name")


class EveryGroupToppedUp(BrokerState):
    """Rule 2 without the publish shortcut: a publish tops up every group, not only the
    ones that had read everything."""

    def _topic_publish(self, topic: str, first_id: int, now_ms: int, bodies: list[bytes],
                       keys: list[bytes | None] | None = None,
                       headers: list[dict[str, str] | None] | None = None,
                       dedup_ids: list[bytes | None] | None = None) -> None:
        held = self.topics[topic]
        held.add(first_id, now_ms, bodies, keys, headers)
        if dedup_ids is not None:
            held.dedup.remember(first_id, dedup_ids, now_ms)
        self._enforce_limits(held, None)
        for group in held.groups.values():
            self._top_up(held, group)
        self._reclaim(held)
        self._schedule_age(held)


@pytest.mark.parametrize("idle", [True, False])
def test_a_publish_tops_up_only_the_groups_that_had_read_everything(idle: bool) -> None:
    """A group with unread messages holds more than half a window after every change,
    so a publish, which cannot lower that, need not top it up, and when it tops up none
    nothing more can be reclaimed: the state is the one a top-up of every group and a
    reclaim give, through windows filling and draining, nacks, seeks, a filter, ordered
    keys and a message limit (with a group that never reads, nothing is reclaimed)."""
    rng = random.Random(12)
    w = World()
    reference = EveryGroupToppedUp()
    w.call("topic_create", topic="t", shards=2, retention="both", max_messages=1_500)
    if idle:
        w.call("group_create", topic="t", group="idle")
    w.call("group_create", topic="t", group="busy")
    w.call("group_create", topic="t", group="picky", filter={"k": "1"})
    w.call("group_create", topic="t", group="keyed", ordered=True)
    groups = ["busy", "picky", "keyed"]
    for m in w.log:
        reference.apply(m)
    for step in range(2_500):
        done = len(w.log)
        roll = rng.random()
        if roll < 0.7:
            entries = [[b"m", b"%d" % rng.randrange(5), {"k": str(rng.randrange(2))}]
                       for _ in range(1 if rng.random() < 0.9 else rng.randrange(2, 60))]
            publish(w, "t", *entries)
        elif roll < 0.9:
            queue = f"t/{rng.choice(groups)}"
            got = [d[0] for d in consume(w, queue, rng.randrange(1, 700))]
            if got:
                w.call("ack" if rng.random() < 0.8 else "nack", queue=queue, ids=got)
        elif roll < 0.99:
            queue = f"t/{rng.choice(groups)}"
            leased = [d[0] for d in consume(w, queue, rng.randrange(1, 30))]
            if leased:
                w.call("nack", queue=queue, ids=leased)
        else:
            w.call("group_seek", topic="t", group=rng.choice(groups), to=rng.choice(["earliest", "latest"]))
        for m in w.log[done:]:
            reference.apply(m)
        topic = w.state.topics["t"]
        for name, group in topic.groups.items():
            assert topic.lag(group) == 0 or group.queue.ready > GROUP_WINDOW // 2, (step, name)
        if step % 250 == 0:
            assert w.state.topics_snapshot() == reference.topics_snapshot()
            assert w.state.snapshot() == reference.snapshot()
    stats = w.call("topic_stats", topic="t")
    assert stats["expired"] > 0  # the limit took messages, copies too
    assert (stats["reclaimed"] > 0) is not idle
    assert w.state.topics_snapshot() == reference.topics_snapshot()
    assert w.state.snapshot() == reference.snapshot()


def test_topic_stats_name_at_most_the_first_thousand_groups(world: World) -> None:
    world.call("topic_create", topic="wide")
    for g in range(1005):
        world.call("group_create", topic="wide", group=f"g{g:04d}")
    stats = world.call("topic_stats", topic="wide")
    assert stats["group_count"] == 1005
    assert stats["groups"] == [f"g{g:04d}" for g in range(1000)]
