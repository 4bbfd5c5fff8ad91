"""Transactions (SPEC §5.28) on the state: acks on queues and groups and publishes to
queues and topics as one record, all or nothing; replay and snapshots agree."""
from __future__ import annotations

from typing import Any

import pytest

from broker.mutations import Txn
from protocol import ErrorCode

from .test_topics import World, same_after_restart


@pytest.fixture
def world() -> World:
    w = World()
    w.call("queue_create", queue="in")
    w.call("queue_create", queue="out")
    w.call("topic_create", topic="events")
    w.call("group_create", topic="events", group="audit", start="earliest")
    w.call("publish", queue="in", messages=[[b"a"], [b"b"]])
    return w


def steps(*items: dict[str, Any]) -> list[dict[str, Any]]:
    return list(items)


def test_consume_transform_produce_in_one_record(world: World) -> None:
    (d,) = world.call("consume", queue="in")["messages"]
    before = len(world.log)
    result = world.call("txn", steps=steps(
        {"op": "ack", "queue": "in", "ids": [d[0]]},
        {"op": "publish", "queue": "out", "messages": [[d[1].upper()]]},
        {"op": "topic_publish", "topic": "events", "messages": [[b"done " + d[1]]]},
    ))
    assert result == {"results": [{"acked": 1, "missing": []}, {"first_id": 1, "count": 1},
                                  {"first_id": 1, "count": 1}]}
    assert [type(m) for m in world.log[before:]] == [Txn]  # one record
    assert [m[1] for m in world.call("consume", queue="out")["messages"]] == [b"A"]
    assert [m[1] for m in world.call("consume", queue="events/audit")["messages"]] == [b"done a"]
    assert world.call("queue_stats", queue="in")["acked"] == 1
    same_after_restart(world)


def test_a_failing_step_aborts_the_whole_and_is_named(world: World) -> None:
    (d,) = world.call("consume", queue="in")["messages"]
    err = world.refused("txn", ErrorCode.QUEUE_NOT_FOUND, "steps[1].queue", steps=steps(
        {"op": "ack", "queue": "in", "ids": [d[0]]},
        {"op": "publish", "queue": "nope", "messages": [[b"x"]]},
    ))
    assert err.details["step"] == 1 and "step 1 (publish)" in err.message
    assert world.call("queue_stats", queue="in")["leased"] == 1  # the ack did not happen


def test_an_ack_of_a_message_no_longer_leased_conflicts(world: World) -> None:
    (d,) = world.call("consume", queue="in", visibility_ms=100)["messages"]
    world.advance(100)  # the lease ran out: another consumer may take it
    err = world.refused("txn", ErrorCode.TXN_CONFLICT, None, steps=steps(
        {"op": "ack", "queue": "in", "ids": [d[0]]},
        {"op": "publish", "queue": "out", "messages": [[b"x"]]},
    ))
    assert err.details == {"queue": "in", "ids": [d[0]], "step": 0}
    assert world.call("queue_stats", queue="out")["messages"] == 0


def test_a_group_ack_in_a_transaction_releases_the_topic(world: World) -> None:
    world.call("topic_publish", topic="events", messages=[[b"e"]])
    (d,) = world.call("consume", queue="events/audit")["messages"]
    world.call("txn", steps=steps({"op": "ack", "queue": "events/audit", "ids": [d[0]]},
                                  {"op": "publish", "queue": "out", "messages": [[b"seen"]]}))
    assert world.call("topic_stats", topic="events")["messages"] == 0
    same_after_restart(world)


@pytest.mark.parametrize(("bad", "field"), [
    ([], "steps"),
    ([{"op": "consume", "queue": "in"}], "steps[0].op"),
    (["ack"], "steps[0]"),
    ([{"op": "ack", "queue": "in", "ids": [1], "nope": 1}], "steps[0].nope"),
    ([{"op": "publish", "queue": "out", "messages": [[b"x"]]}] * 2, "steps[1]"),
    ([{"op": "publish", "queue": "out", "messages": [[b"x"]]}] * 65, "steps"),
])
def test_malformed_transactions(world: World, bad: list[Any], field: str) -> None:
    err = world.refused("txn", ErrorCode.INVALID_ARGUMENT, field, steps=bad)
    if field != "steps":  # a step's refusal names the step
        assert err.details["step"] == int(field[len("steps["):].split("]")[0])
