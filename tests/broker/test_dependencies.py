"""Task dependencies (SPEC §8.14) on the state: a message naming [queue, id] pairs it
depends on waits until all of them are acked; one dead-lettered (or otherwise gone
unacked) dead-letters it too, down the chain; replay and snapshots agree."""
from __future__ import annotations

from typing import Any

from protocol import ErrorCode

from .test_topics import World, same_after_restart


def after(body: bytes, *deps: tuple[str, int], delay: int | None = None) -> list[Any]:
    return [body, None, None, delay, None, None, None, [list(d) for d in deps]]


def world() -> World:
    w = World()
    w.call("queue_create", queue="dlq")
    w.call("queue_create", queue="build", max_attempts=1, dead_letter="dlq")
    w.call("queue_create", queue="deploy", dead_letter="dlq")
    return w


def bodies(w: World, queue: str) -> list[bytes]:
    return [d[1] for d in w.call("consume", queue=queue, max=50)["messages"]]


def test_a_message_waits_until_every_dependency_is_acked() -> None:
    w = world()
    w.call("publish", queue="build", messages=[[b"compile"], [b"test"]])  # ids 1, 2
    w.call("publish", queue="deploy", messages=[after(b"ship", ("build", 1), ("build", 2))])
    status = w.call("message_status", queue="deploy", ids=[1])["statuses"][0]
    assert status["state"] == "waiting" and status["waits_on"] == [["build", 1], ["build", 2]]
    assert w.call("queue_stats", queue="deploy")["waiting"] == 1
    assert bodies(w, "deploy") == []
    assert bodies(w, "build") == [b"compile", b"test"]
    w.call("ack", queue="build", ids=[1])
    assert w.call("message_status", queue="deploy", ids=[1])["statuses"][0]["waits_on"] == [["build", 2]]
    same_after_restart(w)
    w.call("ack", queue="build", ids=[2])
    assert w.state.take_woken().get("deploy") == 1
    assert bodies(w, "deploy") == [b"ship"]
    same_after_restart(w)


def test_a_dead_lettered_dependency_dead_letters_the_chain() -> None:
    w = world()
    w.call("publish", queue="build", messages=[[b"compile"]])
    w.call("publish", queue="deploy", messages=[after(b"ship", ("build", 1)), after(b"announce", ("deploy", 1))])
    (d,) = w.call("consume", queue="build")["messages"]
    w.call("nack", queue="build", ids=[d[0]], error="syntax error")  # max_attempts 1: dead-lettered
    dead = w.call("peek", queue="dlq")["messages"]
    assert [(m[1], m[7]["reason"], m[7]["error"]) for m in dead] == [
        (b"compile", "max_attempts", "syntax error"),
        (b"ship", "dependency", "dependency build#1 was not acked"),
        (b"announce", "dependency", "dependency deploy#1 was not acked"),
    ]
    assert w.call("queue_stats", queue="deploy")["messages"] == 0
    same_after_restart(w)


def test_known_gone_and_dead_lettered_dependencies_at_publish() -> None:
    w = world()
    w.call("publish", queue="build", messages=[[b"a"], [b"b"]])
    w.call("ack", queue="build", ids=[w.call("consume", queue="build")["messages"][0][0]])  # 1 acked
    (b,) = w.call("consume", queue="build")["messages"]
    w.call("reject", queue="build", ids=[b[0]])  # 2 dead-lettered
    w.call("publish", queue="deploy", messages=[after(b"on acked", ("build", 1)), after(b"on dead", ("build", 2))])
    assert bodies(w, "deploy") == [b"on acked"]  # a dependency gone by its ack is met
    reasons = [(m[1], m[7]["reason"]) for m in w.call("peek", queue="dlq")["messages"]]
    assert (b"on dead", "dependency") in reasons
    w.refused("publish", ErrorCode.INVALID_ARGUMENT, "messages[0].after", queue="deploy",
              messages=[after(b"x", ("build", 3))])  # never published
    w.refused("publish", ErrorCode.INVALID_ARGUMENT, "messages[0].after", queue="deploy",
              messages=[after(b"x", ("nope", 1))])


def test_dependencies_within_one_publish_and_a_delay_after_them() -> None:
    w = world()
    w.call("publish", queue="build", messages=[[b"first"], after(b"second", ("build", 1), delay=500)])
    assert bodies(w, "build") == [b"first"]
    w.call("ack", queue="build", ids=[1])
    assert w.call("message_status", queue="build", ids=[2])["statuses"][0]["state"] == "delayed"
    w.advance(500)
    assert bodies(w, "build") == [b"second"]
    same_after_restart(w)


def test_purging_or_deleting_a_dependency_dead_letters_the_waiting() -> None:
    w = world()
    w.call("queue_create", queue="tmp")
    w.call("publish", queue="tmp", messages=[[b"x"]])
    w.call("publish", queue="deploy", messages=[after(b"needs tmp", ("tmp", 1))])
    w.call("queue_delete", queue="tmp")
    (dead,) = w.call("peek", queue="dlq")["messages"]
    assert (dead[1], dead[7]["reason"], dead[7]["at_ms"]) == (b"needs tmp", "dependency", w.now)
    same_after_restart(w)


def test_a_long_chain_settles_without_recursion() -> None:
    w = world()
    w.call("queue_create", queue="tmp")
    w.call("publish", queue="tmp", messages=[[b"root"]])
    w.call("publish", queue="deploy", messages=[after(b"0", ("tmp", 1))]
           + [after(b"%d" % i, ("deploy", i)) for i in range(1, 3000)])
    w.call("queue_delete", queue="tmp")
    assert w.call("queue_stats", queue="dlq")["messages"] == 3000
    assert w.call("queue_stats", queue="deploy")["messages"] == 0
