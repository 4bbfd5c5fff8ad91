"""``extend``, ``reject``, nack errors, dead letters with reasons, and ``redrive`` on the
state, through ``dispatch`` and the real appliers; replay and snapshots rebuild the same."""
from __future__ import annotations

from typing import Any

import pytest

from broker.mutations import Extend, Redrive, Reject
from protocol import ErrorCode

from .test_inspection_ops import T0, World

DEAD = ("dead_letter_id", "reason", "error", "dead_lettered_at_ms")


@pytest.fixture
def world() -> World:
    """"jobs" (2 attempts, dead letters to "dlq", 1 s leases) with 1..4 ready."""
    w = World()
    w.call("queue_create", queue="dlq")
    w.call("queue_create", queue="jobs", max_attempts=2, dead_letter="dlq", visibility_ms=1000)
    w.call("publish", queue="jobs", messages=[[b"a"], [b"b", b"k", 7], [b"c"], [b"d"]])
    return w


def status(w: World, queue: str, *ids: int) -> list[dict[str, Any]]:
    return w.call("message_status", queue=queue, ids=list(ids))["statuses"]  # type: ignore[no-any-return]


def same_after_restart(w: World) -> None:
    assert w.replayed().snapshot() == w.state.snapshot()
    assert w.restored().snapshot() == w.state.snapshot()


def test_default_max_attempts_is_20() -> None:
    w = World()
    w.call("queue_create", queue="q")
    assert w.call("queue_stats", queue="q")["max_attempts"] == 20
    w.call("queue_create", queue="forever", max_attempts=0)
    w.call("publish", queue="forever", messages=[[b"x"]])
    for attempt in range(1, 31):  # 0: redelivered without limit
        (delivery,) = w.call("consume", queue="forever")["messages"]
        assert delivery[2] == attempt
        w.call("nack", queue="forever", ids=[1])


# -- extend -------------------------------------------------------------------------------


def test_extend_renews_leases_and_reports_the_others_missing(world: World) -> None:
    world.call("consume", queue="jobs", max=2)  # 1 and 2, until T0 + 1000
    world.advance(900)
    result = world.call("extend", queue="jobs", ids=[2, 3, 9, 2], visibility_ms=5000)
    assert result == {"extended": 1, "missing": [3, 9]}
    assert world.log[-1] == Extend("jobs", T0 + 900 + 5000, [2])
    world.advance(100)  # 1's lease ends; 2's was extended
    assert [s["state"] for s in status(world, "jobs", 1, 2)] == ["ready", "leased"]
    assert status(world, "jobs", 2)[0]["until_ms"] == T0 + 5900
    assert status(world, "jobs", 2)[0]["attempts"] == 1  # an extension is not an attempt
    world.advance(4899)
    assert status(world, "jobs", 2)[0]["state"] == "leased"
    world.advance(1)
    assert status(world, "jobs", 2)[0]["state"] == "ready"
    same_after_restart(world)


def test_extend_defaults_to_the_queue_visibility_and_may_shorten(world: World) -> None:
    world.call("consume", queue="jobs", max=1, visibility_ms=60_000)
    world.call("extend", queue="jobs", ids=[1])
    assert status(world, "jobs", 1)[0]["until_ms"] == T0 + 1000


def test_extend_survives_a_checkpoint_in_lease_order(world: World) -> None:
    world.call("consume", queue="jobs", max=2)
    world.call("extend", queue="jobs", ids=[1], visibility_ms=3000)
    restored = world.restored()
    assert [m.id for m in restored.queues["jobs"].leased_in_order()] == [2, 1]
    assert restored.due(T0 + 1000)[0].ids == [2]  # type: ignore[attr-defined]


# -- nack errors, reject and the dead-letter record ------------------------------------------


def test_a_nack_error_goes_with_the_dead_letter(world: World) -> None:
    world.call("consume", queue="jobs")
    world.call("nack", queue="jobs", ids=[1], error="smtp 451: try later")
    assert world.state.queues["jobs"].errors == {1: "smtp 451: try later"}
    world.advance(1)
    for _ in range(3):  # 2, 3, 4 are ahead of 1 now
        world.call("consume", queue="jobs")
    (delivery,) = world.call("consume", queue="jobs")["messages"]
    assert delivery[0] == 1 and delivery[2] == 2
    world.call("nack", queue="jobs", ids=[1])  # no new text: the last one stays
    (st,) = status(world, "jobs", 1)
    assert {k: st[k] for k in ("state", "queue", *DEAD)} == {
        "state": "dead_lettered", "queue": "dlq", "dead_letter_id": 1, "reason": "max_attempts",
        "error": "smtp 451: try later", "dead_lettered_at_ms": T0 + 1}
    peeked = world.call("peek", queue="jobs", dead_letter=True)["messages"]
    assert peeked[0][7] == {"queue": "jobs", "id": 1, "attempts": 2, "reason": "max_attempts",
                            "error": "smtp 451: try later", "at_ms": T0 + 1}
    assert world.state.queues["jobs"].errors == {}
    same_after_restart(world)


def test_an_expired_lease_that_runs_out_of_attempts_is_a_max_attempts_dead_letter(world: World) -> None:
    for _ in range(2):
        world.call("consume", queue="jobs", max=4)
        world.advance(1000)
    assert [s["reason"] for s in status(world, "jobs", 1, 2, 3, 4)] == ["max_attempts"] * 4
    assert world.call("queue_stats", queue="jobs")["expired"] == 8


def test_reject_dead_letters_at_once(world: World) -> None:
    world.call("consume", queue="jobs", max=2)
    result = world.call("reject", queue="jobs", ids=[2, 3, 2], error="bad payload")
    assert result == {"rejected": 1, "missing": [3]}
    assert world.log[-1] == Reject("jobs", [2], "bad payload", T0)
    (st,) = status(world, "jobs", 2)
    assert (st["state"], st["reason"], st["error"]) == ("dead_lettered", "rejected", "bad payload")
    stats = world.call("queue_stats", queue="jobs")
    assert (stats["dead_lettered"], stats["nacked"], stats["messages"]) == (1, 0, 3)
    # key and priority go with it; it is ready in the dead-letter queue
    (row,) = world.call("peek", queue="dlq")["messages"]
    assert row[:6] == [1, b"b", 0, b"k", 7, "ready"]
    same_after_restart(world)


def test_reject_without_a_dead_letter_queue_drops(world: World) -> None:
    world.call("queue_create", queue="plain")
    world.call("publish", queue="plain", messages=[[b"x"]])
    world.call("consume", queue="plain")
    assert world.call("reject", queue="plain", ids=[1]) == {"rejected": 1, "missing": []}
    assert world.call("queue_stats", queue="plain")["dropped"] == 1


@pytest.mark.parametrize("error", [1, b"x", ["x"], "é" * 513])
def test_error_texts_are_checked(world: World, error: Any) -> None:
    world.call("consume", queue="jobs")
    world.refused("nack", ErrorCode.INVALID_ARGUMENT, "error", queue="jobs", ids=[1], error=error)
    world.refused("reject", ErrorCode.INVALID_ARGUMENT, "error", queue="jobs", ids=[1], error=error)


def test_an_error_of_1024_bytes_is_accepted(world: World) -> None:
    world.call("consume", queue="jobs")
    assert world.call("nack", queue="jobs", ids=[1], error="é" * 512)["released"] == 1


# -- redrive ---------------------------------------------------------------------------------


def dead_letter_all(w: World) -> None:
    w.call("consume", queue="jobs", max=4)
    w.call("reject", queue="jobs", ids=[4, 2, 3, 1], error="poison")


def test_redrive_all_returns_them_as_new_messages(world: World) -> None:
    dead_letter_all(world)
    world.call("publish", queue="dlq", messages=[[b"straight in"]])  # no source: skipped
    result = world.call("redrive", queue="dlq")
    assert result == {"redriven": 4, "queues": {"jobs": 4}, "skipped": 1}
    assert world.log[-1] == Redrive("dlq", [1, 2, 3, 4], world.now)
    rows = world.call("peek", queue="jobs")["messages"]
    # new ids, in the dead-letter queue's order (4, 2, 3, 1 were dead-lettered in that order)
    assert [(r[0], r[1], r[2], r[3], r[4], r[7]) for r in rows] == [
        (5, b"d", 0, None, 0, None), (6, b"b", 0, b"k", 7, None),
        (7, b"c", 0, None, 0, None), (8, b"a", 0, None, 0, None)]
    assert [s["state"] for s in status(world, "jobs", 1, 2)] == ["gone", "gone"]
    assert world.call("queue_stats", queue="dlq")["messages"] == 1
    assert world.state.queues["dlq"].sources == {}
    assert world.state.ack_reserve == world.state.count_ack_reserve()
    same_after_restart(world)


def test_redrive_max_and_ids(world: World) -> None:
    dead_letter_all(world)
    assert world.call("redrive", queue="dlq", max=3) == {"redriven": 3, "queues": {"jobs": 3}, "skipped": 0}
    assert world.call("redrive", queue="dlq", ids=[1, 4, 99]) == {"redriven": 1, "queues": {"jobs": 1}, "skipped": 2}
    world.refused("redrive", ErrorCode.INVALID_ARGUMENT, "ids", queue="dlq", ids=[1], max=1)
    world.refused("redrive", ErrorCode.INVALID_ARGUMENT, "max", queue="dlq", max=0)


def test_redrive_skips_leased_dead_letters_and_deleted_sources(world: World) -> None:
    dead_letter_all(world)
    world.call("consume", queue="dlq")  # dlq 1 is leased: not moved
    world.call("queue_create", queue="other", dead_letter="dlq")
    world.call("publish", queue="other", messages=[[b"o"]])
    world.call("consume", queue="other")
    world.call("reject", queue="other", ids=[1])
    world.call("queue_delete", queue="other")
    result = world.call("redrive", queue="dlq")
    assert result == {"redriven": 3, "queues": {"jobs": 3}, "skipped": 2}
    assert world.call("queue_stats", queue="dlq")["messages"] == 2  # the leased one, other's
    assert world.call("redrive", queue="dlq") == {"redriven": 0, "queues": {}, "skipped": 2}
    n = len(world.log)
    assert world.call("redrive", queue="dlq", ids=[1, 5]) == {"redriven": 0, "queues": {}, "skipped": 2}
    assert len(world.log) == n  # nothing to move: nothing logged


def test_redrive_wakes_the_source_queue(world: World) -> None:
    dead_letter_all(world)
    world.state.take_woken()
    world.call("redrive", queue="dlq", max=2)
    assert world.state.take_woken() == {"jobs": 2}


# -- nack returned: given back unhandled ------------------------------------------------------


def test_a_returned_message_is_ready_at_once_without_an_attempt(world: World) -> None:
    world.call("queue_create", queue="slow", max_attempts=1, retry_delay_ms=60_000)
    world.call("publish", queue="slow", messages=[[b"x"]])
    for _ in range(3):  # returned again and again: never dead-lettered, never delayed
        (delivery,) = world.call("consume", queue="slow")["messages"]
        assert delivery[2] == 1
        assert world.call("nack", queue="slow", ids=[1], returned=True) == {"released": 1, "missing": []}
        (st,) = status(world, "slow", 1)
        assert (st["state"], st["attempts"]) == ("ready", 0)
    same_after_restart(world)
    world.call("consume", queue="slow")
    world.call("nack", queue="slow", ids=[1])  # a real failure on the last attempt
    assert world.call("queue_stats", queue="slow")["dropped"] == 1


def test_returned_takes_no_delay(world: World) -> None:
    world.call("consume", queue="jobs")
    world.refused("nack", ErrorCode.INVALID_ARGUMENT, "returned", queue="jobs", ids=[1],
                  returned=True, delay_ms=10)
    world.refused("nack", ErrorCode.INVALID_ARGUMENT, "returned", queue="jobs", ids=[1], returned=1)
