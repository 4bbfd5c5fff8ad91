"""Permissions as the registry declares them, and the failed-attempt limit, without sockets."""
from __future__ import annotations

from pathlib import Path

import pytest

from broker.auth import (
    AUTH_DELAY_MAX_S,
    AUTH_FAILURE_BURST,
    AUTH_FAILURE_REFILL_S,
    Authenticator,
    FailureLimit,
    host_of,
)
from broker.commands import COMMANDS, Command, Session, denial
from protocol.users import Patterns, User, Users

#: Each op's needs (SPEC §4.3): (permission, argument) pairs; txn: its steps'.
EXPECTED = {
    "hello": [], "auth": [], "ping": [], "broker_info": [], "queue_list": [], "topic_list": [], "unsubscribe": [],
    "queue_create": [("admin", "queue"), ("publish", "dead_letter")],
    "queue_delete": [("admin", "queue")], "queue_purge": [("admin", "queue")], "redrive": [("admin", "queue")],
    "publish": [("publish", "queue")],
    **{op: [("consume", "queue")] for op in ("consume", "ack", "nack", "extend", "reject", "peek",
                                              "message_status", "subscribe", "queue_stats")},
    "topic_create": [("admin", "topic")], "topic_delete": [("admin", "topic")], "group_delete": [("admin", "topic")],
    "group_seek": [("admin", "topic")], "group_create": [("admin", "topic"), ("publish", "dead_letter")],
    "topic_publish": [("publish", "topic")], "topic_stats": [("consume", "topic")],
    "group_stats": [("consume", "topic")], "txn": "steps",
}


#: Args naming each resource argument by its own name, to read computed needs back.
NAMED = {"queue": "queue", "topic": "topic", "dead_letter": "dead_letter"}


def needs(command: Command) -> object:
    if command.op == "txn":
        return "steps"
    if callable(command.permission):
        return [(str(p), name) for p, name in command.permission(NAMED)]
    return [(str(n.permission), n.arg) for n in command.permission]


def test_needs_computed_from_the_arguments() -> None:
    """A queue group needs consume on each queue it names; a dependency, on its queue."""
    consume, publish = COMMANDS["consume"].permission, COMMANDS["publish"].permission
    assert callable(consume) and callable(publish)
    assert [(str(p), q) for p, q in consume({"queues": ["a", "b"]})] == [("consume", "a"), ("consume", "b")]
    assert consume({"prefix": "a."}) == [(consume({"queue": "x"})[0][0], None)]  # checked per queue when read
    entry = [b"x", None, None, None, None, None, None, [["deps", 1], ["deps", 2], ["more", 1], "junk", [7, 1]]]
    assert [(str(p), q) for p, q in publish({"queue": "q", "messages": [entry, [b"y"]]})] == [
        ("publish", "q"), ("consume", "deps"), ("consume", "more")]


def test_every_op_declares_what_it_needs() -> None:
    assert {op: needs(c) for op, c in COMMANDS.items()} == EXPECTED
    audited = {op for op, c in COMMANDS.items() if c.audited}
    assert audited == {op for op, want in EXPECTED.items() if isinstance(want, list) and any(p == "admin" for p, _ in want)}


def session_of(user: User) -> Session:
    auth = Authenticator(Path("users.toml"), lambda: 0.0)
    auth.users = Users({user.name: user})
    return Session(ready=True, version=1, auth=auth, user=user.name)


def test_denial_names_the_first_missing_permission_and_its_resource() -> None:
    s = session_of(User(name="u", publish=Patterns.of(["a.*"]), admin=Patterns.of(["a.x"])))
    create = COMMANDS["queue_create"]
    assert denial(s, create, {"queue": "a.x"}) is None
    assert denial(s, create, {"queue": "a.x", "dead_letter": "a.dlq"}) is None
    assert denial(s, create, {"queue": "a.x", "dead_letter": "b"}) == ("publish", "b")
    assert denial(s, create, {"queue": "a.y"}) == ("admin", "a.y")
    consume = COMMANDS["consume"]
    assert denial(s, consume, {"queue": "a.x/g"}) == ("consume", "a.x")  # a group is its topic's
    assert denial(s, consume, {}) is None and denial(s, consume, {"queue": 5}) is None  # the op refuses those
    txn = COMMANDS["txn"]
    step = {"op": "publish", "queue": "a.1", "messages": []}
    assert denial(s, txn, {"steps": [step, {**step, "queue": "a.2"}]}) is None
    assert denial(s, txn, {"steps": [step, {"op": "ack", "queue": "a.1", "ids": [1]}]}) == ("consume", "a.1")
    assert denial(s, txn, {"steps": [step, "junk", {"op": "nope"}]}) is None
    assert denial(s, txn, {"steps": "junk"}) is None
    # A user the file no longer has holds nothing.
    gone = Session(ready=True, version=1, auth=s.auth, user="deleted")
    assert denial(gone, COMMANDS["publish"], {"queue": "a.1"}) == ("publish", "a.1")


def test_failure_limit() -> None:
    limit = FailureLimit()
    assert limit.retry_after("10.0.0.1", 0.0) == 0
    delays = [limit.failed("10.0.0.1", 0.0)[1] for _ in range(AUTH_FAILURE_BURST)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, AUTH_DELAY_MAX_S, AUTH_DELAY_MAX_S, AUTH_DELAY_MAX_S,
                      AUTH_DELAY_MAX_S]
    assert limit.retry_after("10.0.0.1", 0.0) == pytest.approx(AUTH_FAILURE_REFILL_S)
    assert limit.retry_after("10.0.0.2", 0.0) == 0  # per address
    assert limit.retry_after("10.0.0.1", AUTH_FAILURE_REFILL_S) == 0  # one more leaked away
    assert limit.failed("10.0.0.1", AUTH_FAILURE_REFILL_S) == (AUTH_FAILURE_BURST, AUTH_DELAY_MAX_S)
    # Long quiet: back to the first delay.
    assert limit.failed("10.0.0.1", 1000.0) == (1, 0.1)


def test_host_of() -> None:
    assert host_of("10.0.0.7:51234") == "10.0.0.7"
    assert host_of("::1:51234") == "::1"
    assert host_of("") == ""
