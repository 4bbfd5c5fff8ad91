"""Request validation in ``broker.commands.dispatch`` (SPEC.md section 5).

Every refusal is a ``ProtocolError`` with the documented code and details, is the first
failure in the documented order, and leaves the state untouched (no mutations).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.auth import Authenticator
from broker.commands import COMMANDS, REPLY_OVERHEAD, Context, Outcome, Session, Wait, dispatch
from broker.config import BrokerConfig
from broker.mutations import QueueCreate
from broker.queues import DELIVERY_OVERHEAD
from broker.state import BrokerState
from protocol import (
    DEFAULT_MAX_FRAME,
    MAX_DELAY_MS,
    MAX_VISIBILITY_MS,
    MAX_WAIT_MS,
    ErrorCode,
    ProtocolError,
)
from protocol.users import User, Users, new_token, token_hash

CFG = BrokerConfig(max_message=64, max_batch=4, max_queues=3)
NOW = 1_700_000_000_000
ADDR = "127.0.0.1:7878"
DROP: Any = object()  # marks an argument to leave out

INVALID = ErrorCode.INVALID_ARGUMENT


def ready_session() -> Session:
    return Session(ready=True, client_max_frame=16 * 2**20)


TOKEN = new_token()


def authenticating() -> Session:
    """A connection after hello to a broker with auth, which knows one user by ``TOKEN``."""
    auth = Authenticator(Path("users.toml"), lambda: 0.0)
    auth.users = Users({"svc": User(name="svc", tokens=(token_hash(TOKEN),))})
    return Session(version=1, auth=auth, client_max_frame=16 * 2**20)


def run(state: BrokerState, op: str, args: dict[str, Any], session: Session | None = None,
        config: BrokerConfig = CFG) -> Outcome:
    outcome = dispatch(session or ready_session(), op, args, Context(state, config, NOW, ADDR))
    for m in outcome.mutations:
        state.apply(m)
    return outcome


def refused(state: BrokerState, op: str, args: dict[str, Any], code: ErrorCode,
            field: str | None = None, session: Session | None = None,
            config: BrokerConfig = CFG) -> ProtocolError:
    before = state.snapshot()
    with pytest.raises(ProtocolError) as info:
        dispatch(session or ready_session(), op, args, Context(state, config, NOW, ADDR))
    err = info.value
    assert err.code == code, (err.code, err.message)
    if code == INVALID:
        assert err.details.get("field") == field, err.details
    assert state.snapshot() == before
    return err


@pytest.fixture
def state() -> BrokerState:
    """Queue "q" (fifo) with one message; "small" holds at most 3 messages and has 2."""
    s = BrokerState()
    run(s, "queue_create", {"queue": "q"})
    run(s, "publish", {"queue": "q", "messages": [[b"hello"]]})
    run(s, "queue_create", {"queue": "small", "max_messages": 3})
    run(s, "publish", {"queue": "small", "messages": [[b"a"], [b"b"]]})
    run(s, "topic_create", {"topic": "t"})
    run(s, "group_create", {"topic": "t", "group": "g"})
    return s


BASE: dict[str, dict[str, Any]] = {
    "hello": {"versions": [1]},
    "auth": {"mechanism": "TOKEN", "token": TOKEN},
    "ping": {},
    "broker_info": {},
    "queue_create": {"queue": "new"},
    "queue_delete": {"queue": "q"},
    "queue_list": {},
    "queue_stats": {"queue": "q"},
    "publish": {"queue": "q", "messages": [[b"x"]]},
    "consume": {"queue": "q"},
    "ack": {"queue": "q", "ids": [1]},
    "nack": {"queue": "q", "ids": [1]},
    "queue_purge": {"queue": "q"},
    "peek": {"queue": "q"},
    "message_status": {"queue": "q", "ids": [1]},
    "extend": {"queue": "q", "ids": [1]},
    "reject": {"queue": "q", "ids": [1]},
    "redrive": {"queue": "q"},
    "subscribe": {"queue": "q"},
    "unsubscribe": {"subscription": 1},
    "topic_create": {"topic": "new"},
    "topic_delete": {"topic": "t"},
    "topic_list": {},
    "topic_stats": {"topic": "t"},
    "topic_publish": {"topic": "t", "messages": [[b"x"]]},
    "group_create": {"topic": "t", "group": "new"},
    "group_delete": {"topic": "t", "group": "g"},
    "group_stats": {"topic": "t", "group": "g"},
    "group_seek": {"topic": "t", "group": "g", "to": "earliest"},
    "txn": {"steps": [{"op": "publish", "queue": "q", "messages": [[b"y"]]}]},
}


class StubSubscription:
    """A running subscription as ``unsubscribe`` sees it."""

    unacked = 0
    stopped = False

    def stop(self) -> None:
        self.stopped = True


def with_args(op: str, **changes: Any) -> dict[str, Any]:
    args = dict(BASE[op])
    for name, value in changes.items():
        if value is DROP:
            args.pop(name, None)
        else:
            args[name] = value
    return args


@pytest.mark.parametrize("op", sorted(COMMANDS))
def test_every_base_request_is_accepted(state: BrokerState, op: str) -> None:
    """The base requests the tables below alter are valid as they stand."""
    assert set(BASE) == set(COMMANDS)
    session = Session() if op == "hello" else authenticating() if op == "auth" else ready_session()
    running = session.subscriptions[1] = StubSubscription()
    assert run(state, op, dict(BASE[op]), session=session).result is not None
    assert running.stopped == (op == "unsubscribe")


# -- op name and handshake ----------------------------------------------------------------


@pytest.mark.parametrize("op", ["nope", "", "PUBLISH", "publish ", "Hello"])
@pytest.mark.parametrize("ready", [True, False])
def test_unknown_op(state: BrokerState, op: str, ready: bool) -> None:
    session = ready_session() if ready else Session()
    err = refused(state, op, {"queue": "q"}, ErrorCode.UNKNOWN_OP, session=session)
    assert err.details == {"op": op}


@pytest.mark.parametrize("op", sorted(set(COMMANDS) - {"hello"}))
def test_every_op_but_hello_needs_the_handshake(state: BrokerState, op: str) -> None:
    err = refused(state, op, dict(BASE[op]), ErrorCode.HANDSHAKE_REQUIRED, session=Session())
    assert err.details == {}
    # The handshake comes before argument checks.
    refused(state, op, {"bogus": 1}, ErrorCode.HANDSHAKE_REQUIRED, session=Session())


def test_hello_completes_the_handshake() -> None:
    state, session = BrokerState(), Session()
    result = run(state, "hello", {"versions": [1, 7], "client": "c" * 300}, session=session).result
    assert result == {
        "version": 1, "max_frame": CFG.max_frame, "max_message": 64, "max_batch": 4,
        "server": "lockgate/0.1.0", "node": CFG.node_id,
        "shards": [{"queue": "*", "node": CFG.node_id, "addr": ADDR}],
    }
    assert session.ready and session.version == 1
    assert session.client == "c" * 200
    assert session.client_max_frame == DEFAULT_MAX_FRAME
    assert run(state, "ping", {}, session=session).result == {"now_ms": NOW}
    # A second hello answers again.
    run(state, "hello", {"versions": [1], "max_frame": 65536}, session=session)
    assert session.client_max_frame == 65536


@pytest.mark.parametrize("versions", [[], [2], [0, 2, 3]])
def test_hello_without_a_common_version(versions: list[int]) -> None:
    session = Session()
    err = refused(BrokerState(), "hello", {"versions": versions, "max_frame": 1},
                  ErrorCode.UNSUPPORTED_VERSION, session=session)
    assert err.details == {"supported": [1]}
    assert not session.ready


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"versions": DROP}, "versions"),
        ({"versions": None}, "versions"),
        ({"versions": 1}, "versions"),
        ({"versions": "1"}, "versions"),
        ({"versions": [1, "2"]}, "versions"),
        ({"versions": [True]}, "versions"),
        ({"versions": [1.0]}, "versions"),
        ({"max_frame": 65535}, "max_frame"),
        ({"max_frame": 2**32}, "max_frame"),
        ({"max_frame": True}, "max_frame"),
        ({"max_frame": "16M"}, "max_frame"),
        ({"max_frame": 1048576.0}, "max_frame"),
        ({"client": 5}, "client"),
        ({"client": None}, "client"),
        ({"client": b"bytes"}, "client"),
        ({"max_frame": 1, "client": 5}, "max_frame"),
        ({"versions": [1, "x"], "max_frame": 1}, "versions"),
    ],
)
def test_hello_arguments(changes: dict[str, Any], field: str) -> None:
    session = Session()
    refused(BrokerState(), "hello", with_args("hello", **changes), INVALID, field, session=session)
    assert not session.ready


def test_hello_max_frame_floor_follows_max_message() -> None:
    big = BrokerConfig(max_message=100_000, max_frame=1_000_000)
    refused(BrokerState(), "hello", {"versions": [1], "max_frame": 104_095}, INVALID, "max_frame",
            session=Session(), config=big)
    run(BrokerState(), "hello", {"versions": [1], "max_frame": 104_096}, session=Session(), config=big)
    run(BrokerState(), "hello", {"versions": [1], "max_frame": 2**32 - 1}, session=Session())


# -- unknown argument names -----------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(COMMANDS))
def test_unknown_argument_names_are_rejected(state: BrokerState, op: str) -> None:
    session = Session() if op == "hello" else None
    refused(state, op, {**BASE[op], "bogus": 1}, INVALID, "bogus", session=session)
    # The first unknown name in map order, before any other check.
    refused(state, op, {"zzz": 1, "queue": "no such queue", "aaa": 2}, INVALID, "zzz",
            session=Session() if op == "hello" else None)


@pytest.mark.parametrize("op", sorted(COMMANDS))
def test_argument_names_that_are_not_str(state: BrokerState, op: str) -> None:
    """A bin key (the only non-str key that decodes) is never an argument name."""
    session = Session() if op == "hello" else None
    refused(state, op, {**BASE[op], b"queue": "q"}, INVALID, "args", session=session)
    refused(state, op, {b"zzz": 1, "aaa": 2}, INVALID, "args", session=Session() if op == "hello" else None)


def test_unknown_argument_names_are_not_only_typos(state: BrokerState) -> None:
    refused(state, "consume", {"queue": "q", "ids": [1]}, INVALID, "ids")
    refused(state, "ack", {"queue": "q", "ids": [1], "delay_ms": 5}, INVALID, "delay_ms")
    refused(state, "publish", {"queue": "q", "messages": [[b"x"]], "max": 1}, INVALID, "max")


# -- queues -----------------------------------------------------------------------------------

BAD_NAMES = [DROP, None, "", "a" * 201, "has space", "slash/", "ü", 5, b"q", ["q"]]


@pytest.mark.parametrize("op", ["queue_create", "queue_delete", "queue_stats", "publish", "consume",
                                "ack", "nack"])
@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_queue_names(state: BrokerState, op: str, name: Any) -> None:
    refused(state, op, with_args(op, queue=name), INVALID, "queue")


@pytest.mark.parametrize("op", ["queue_delete", "queue_stats", "publish", "consume", "ack", "nack"])
def test_queue_not_found(state: BrokerState, op: str) -> None:
    err = refused(state, op, with_args(op, queue="no.such:queue-1"), ErrorCode.QUEUE_NOT_FOUND)
    assert err.details == {"field": "queue", "queue": "no.such:queue-1"}


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"kind": "FIFO"}, "kind"),
        ({"kind": "stack"}, "kind"),
        ({"kind": 1}, "kind"),
        ({"kind": b"fifo"}, "kind"),
        ({"kind": ["fifo"]}, "kind"),
        ({"shards": 0}, "shards"),
        ({"shards": 257}, "shards"),
        ({"shards": -1}, "shards"),
        ({"shards": True}, "shards"),
        ({"shards": "2"}, "shards"),
        ({"shards": 2.0}, "shards"),
        ({"visibility_ms": 0}, "visibility_ms"),
        ({"visibility_ms": MAX_VISIBILITY_MS + 1}, "visibility_ms"),
        ({"visibility_ms": True}, "visibility_ms"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 2**31}, "max_attempts"),
        ({"max_attempts": False}, "max_attempts"),
        ({"max_messages": -1}, "max_messages"),
        ({"max_messages": 2**63}, "max_messages"),
        ({"max_messages": True}, "max_messages"),
        ({"dead_letter": ""}, "dead_letter"),
        ({"dead_letter": "bad name"}, "dead_letter"),
        ({"dead_letter": 7}, "dead_letter"),
        ({"dead_letter": "new"}, "dead_letter"),  # itself
        # Checks run in the documented order.
        ({"queue": "", "kind": "x"}, "queue"),
        ({"kind": "x", "shards": 0}, "kind"),
        ({"shards": 0, "visibility_ms": 0}, "shards"),
        ({"visibility_ms": 0, "max_attempts": -1}, "visibility_ms"),
        ({"max_attempts": -1, "max_messages": -1}, "max_attempts"),
        ({"max_messages": -1, "dead_letter": "new"}, "max_messages"),
        ({"max_messages": -1, "dead_letter": "missing"}, "max_messages"),
    ],
)
def test_queue_create_arguments(state: BrokerState, changes: dict[str, Any], field: str) -> None:
    refused(state, "queue_create", with_args("queue_create", **changes), INVALID, field)


def test_queue_create_limits_are_inclusive(state: BrokerState) -> None:
    name = "Az09_-.:" + "x" * 192
    outcome = run(state, "queue_create", {
        "queue": name, "kind": "priority", "shards": 256, "visibility_ms": MAX_VISIBILITY_MS,
        "max_attempts": 2**31 - 1, "max_messages": 2**63 - 1, "dead_letter": "q"})
    assert outcome.result == {"queue": name, "created": True}
    assert outcome.mutations == (QueueCreate(name, "priority", 256, MAX_VISIBILITY_MS, 2**31 - 1, "q", 2**63 - 1),)


def test_queue_create_defaults(state: BrokerState) -> None:
    outcome = run(state, "queue_create", {"queue": "d", "kind": None, "shards": None,
                                          "visibility_ms": None, "dead_letter": None})
    assert outcome.mutations == (QueueCreate("d", "fifo", 1, 30_000, 20, None, CFG.max_queue_messages),)


def test_queue_create_with_a_missing_dead_letter_queue(state: BrokerState) -> None:
    err = refused(state, "queue_create", {"queue": "new", "dead_letter": "gone"}, ErrorCode.QUEUE_NOT_FOUND)
    assert err.details == {"field": "dead_letter", "queue": "gone"}


@pytest.mark.parametrize("same", [
    {},
    {"kind": "fifo", "shards": 1, "visibility_ms": 30_000, "max_attempts": 20, "max_messages": 0},
    {"max_messages": 10_000_000, "dead_letter": None, "kind": None},
])
def test_queue_create_again_with_the_same_settings(state: BrokerState, same: dict[str, Any]) -> None:
    before = state.snapshot()
    outcome = run(state, "queue_create", {"queue": "q", **same})
    assert outcome.result == {"queue": "q", "created": False}
    assert outcome.mutations == ()
    assert state.snapshot() == before


@pytest.mark.parametrize("different", [
    {"kind": "lifo"}, {"shards": 2}, {"visibility_ms": 29_999}, {"max_attempts": 3},
    {"max_messages": 5}, {"dead_letter": "small"},
])
def test_queue_create_again_with_other_settings(state: BrokerState, different: dict[str, Any]) -> None:
    err = refused(state, "queue_create", {"queue": "q", **different}, ErrorCode.QUEUE_EXISTS)
    assert err.details == {"queue": "q"}


def test_queue_count_limit(state: BrokerState) -> None:
    run(state, "queue_create", {"queue": "third"})
    err = refused(state, "queue_create", {"queue": "fourth"}, ErrorCode.LIMIT_EXCEEDED)
    assert err.details == {"limit": 3}
    # Re-declaring an existing queue is still fine at the limit.
    assert run(state, "queue_create", {"queue": "third"}).result == {"queue": "third", "created": False}
    run(state, "queue_delete", {"queue": "third"})
    assert run(state, "queue_create", {"queue": "fourth"}).result == {"queue": "fourth", "created": True}


# -- publish ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages, field",
    [
        (DROP, "messages"),
        (None, "messages"),
        ([], "messages"),
        ("x", "messages"),
        (b"x", "messages"),
        ({"body": b"x"}, "messages"),
        ([b"x"], "messages[0]"),
        ([[]], "messages[0]"),
        ([[b"x", None, None, None, None, None, None, None, None]], "messages[0]"),
        ([[b"x", None, None, None, None, None, None, [["q", 99]]]], "messages[0].after"),
        ([[b"x", None, None, None, None, None, None, [["q"]]]], "messages[0].after"),
        ([[b"x", None, None, None, None, None, None, [["nope", 1]]]], "messages[0].after"),
        ([[b"x", None, None, None, None, None, None, "q"]], "messages[0].after"),
        ([[b"ok"], 5], "messages[1]"),
        ([[b"ok"], (b"tuple",)], "messages[1]"),
        ([["text"]], "messages[0].body"),
        ([[None]], "messages[0].body"),
        ([[b"ok"], [bytearray(b"x")]], "messages[1].body"),
        ([[b"a", None], [1, None]], "messages[1].body"),
        ([[b"x", "k"]], "messages[0].key"),
        ([[b"x", 5]], "messages[0].key"),
        ([[b"x", None, -1]], "messages[0].priority"),
        ([[b"x", None, 256]], "messages[0].priority"),
        ([[b"x", None, True]], "messages[0].priority"),
        ([[b"x", None, "1"]], "messages[0].priority"),
        ([[b"x", None, 1.0]], "messages[0].priority"),
        ([[b"x", None, None, -1]], "messages[0].delay_ms"),
        ([[b"x", None, None, MAX_DELAY_MS + 1]], "messages[0].delay_ms"),
        ([[b"x", None, None, True]], "messages[0].delay_ms"),
        ([[b"x", None, None, "5"]], "messages[0].delay_ms"),
        ([[b"x", None, None, None, 0]], "messages[0].ttl_ms"),
        ([[b"x", None, None, None, 2_592_000_001]], "messages[0].ttl_ms"),
        ([[b"x", None, None, None, True]], "messages[0].ttl_ms"),
        ([[b"x", None, None, None, -5]], "messages[0].ttl_ms"),
        # The first failure wins, entry by entry and field by field.
        ([[b"x", 1, -1, -1]], "messages[0].key"),
        ([[b"x", None, -1, -1]], "messages[0].priority"),
        ([[b"ok"], [b"x", None, 300], [5]], "messages[1].priority"),
        # Malformed entries are reported before oversized bodies.
        ([[b"x" * 65], [b"x", None, 999]], "messages[1].priority"),
        ([[b"x" * 65], ["text"]], "messages[1].body"),
    ],
)
def test_publish_arguments(state: BrokerState, messages: Any, field: str) -> None:
    refused(state, "publish", with_args("publish", messages=messages), INVALID, field)


def test_publish_nil_means_default(state: BrokerState) -> None:
    outcome = run(state, "publish", {"queue": "q", "messages": [[b"x", None, None, None], [b"y", None]]})
    assert outcome.result == {"first_id": 2, "count": 2}
    snap = state.snapshot()["q"]
    assert snap["stats"]["ready"] == 3 and snap["stats"]["delayed"] == 0
    assert [m[1:4] for m in snap["messages"]] == [(b"hello", None, 0), (b"x", None, 0), (b"y", None, 0)]


def test_publish_batch_limit(state: BrokerState) -> None:
    err = refused(state, "publish", {"queue": "q", "messages": [[b"x"]] * 5}, ErrorCode.LIMIT_EXCEEDED)
    assert err.details == {"field": "messages", "limit": 4}
    # Counted before the entries are looked at.
    refused(state, "publish", {"queue": "q", "messages": [5] * 5}, ErrorCode.LIMIT_EXCEEDED)
    assert run(state, "publish", {"queue": "q", "messages": [[b"x"]] * 4}).result == {"first_id": 2, "count": 4}


def test_publish_queue_full(state: BrokerState) -> None:
    err = refused(state, "publish", {"queue": "small", "messages": [[b"c"], [b"d"]]}, ErrorCode.QUEUE_FULL)
    assert err.details == {"queue": "small", "limit": 3, "bound": "max_messages"}
    # Room is checked before the entries.
    refused(state, "publish", {"queue": "small", "messages": [[5], [6]]}, ErrorCode.QUEUE_FULL)
    # The batch limit comes first.
    refused(state, "publish", {"queue": "small", "messages": [[b"c"]] * 5}, ErrorCode.LIMIT_EXCEEDED)
    assert run(state, "publish", {"queue": "small", "messages": [[b"c"]]}).result == {"first_id": 3, "count": 1}
    refused(state, "publish", {"queue": "small", "messages": [[b"d"]]}, ErrorCode.QUEUE_FULL)
    # Leased and delayed messages count too; acked ones make room.
    run(state, "consume", {"queue": "small"})
    refused(state, "publish", {"queue": "small", "messages": [[b"d"]]}, ErrorCode.QUEUE_FULL)
    run(state, "ack", {"queue": "small", "ids": [1]})
    run(state, "publish", {"queue": "small", "messages": [[b"d", None, None, 1000]]})
    refused(state, "publish", {"queue": "small", "messages": [[b"e"]]}, ErrorCode.QUEUE_FULL)


@pytest.mark.parametrize("entries, index", [
    ([[b"x" * 65]], 0),
    ([[b"ok"], [b"x" * 65], [b"y" * 100]], 1),
    ([[b"ok", b"key"], [b"x" * 64], [b"y" * 65, None, 3]], 2),
])
def test_publish_message_too_large(state: BrokerState, entries: list[Any], index: int) -> None:
    err = refused(state, "publish", {"queue": "q", "messages": entries}, ErrorCode.MESSAGE_TOO_LARGE)
    assert err.details == {"index": index, "limit": 64}


def test_publish_body_of_exactly_max_message(state: BrokerState) -> None:
    assert run(state, "publish", {"queue": "q", "messages": [[b"x" * 64], [b"", b"k" * 100]]}).result == {
        "first_id": 2, "count": 2}


# -- consume ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"max": 0}, "max"),
        ({"max": 5}, "max"),  # max_batch is 4
        ({"max": True}, "max"),
        ({"max": "1"}, "max"),
        ({"max": 1.0}, "max"),
        ({"visibility_ms": 0}, "visibility_ms"),
        ({"visibility_ms": MAX_VISIBILITY_MS + 1}, "visibility_ms"),
        ({"visibility_ms": False}, "visibility_ms"),
        ({"wait_ms": -1}, "wait_ms"),
        ({"wait_ms": MAX_WAIT_MS + 1}, "wait_ms"),
        ({"wait_ms": True}, "wait_ms"),
        ({"max": 0, "visibility_ms": 0, "wait_ms": -1}, "max"),
        ({"visibility_ms": 0, "wait_ms": -1}, "visibility_ms"),
    ],
)
def test_consume_arguments(state: BrokerState, changes: dict[str, Any], field: str) -> None:
    refused(state, "consume", with_args("consume", **changes), INVALID, field)


def test_consume_limits_are_inclusive(state: BrokerState) -> None:
    outcome = run(state, "consume", {"queue": "q", "max": 4, "visibility_ms": MAX_VISIBILITY_MS,
                                     "wait_ms": MAX_WAIT_MS})
    assert outcome.result == {"messages": [[1, b"hello", 1, None, 0, NOW]]}
    assert state.queues["q"].messages[1].deadline == NOW + MAX_VISIBILITY_MS
    outcome = run(state, "consume", {"queue": "q", "max": None, "visibility_ms": None, "wait_ms": None})
    assert outcome.result == {"messages": []}


def test_consume_with_nothing_ready(state: BrokerState) -> None:
    run(state, "consume", {"queue": "q"})
    held = run(state, "consume", {"queue": "q", "wait_ms": 500})
    assert held == Outcome(wait=Wait("q", 500))
    assert run(state, "consume", {"queue": "q", "wait_ms": 0}) == Outcome({"messages": []})


def test_consume_reply_fits_the_client_frame(state: BrokerState) -> None:
    """SPEC 5.8: stop before sum(body + key + 32) exceeds max_frame - 1024; at least one."""
    run(state, "queue_create", {"queue": "big"})
    run(state, "publish", {"queue": "big", "messages": [[b"x" * 60, b"k" * 8]] * 4})
    cost = 60 + 8 + DELIVERY_OVERHEAD
    session = Session(ready=True, client_max_frame=REPLY_OVERHEAD + 2 * cost + cost - 1)
    got = run(state, "consume", {"queue": "big", "max": 4}, session=session).result
    assert [d[0] for d in got["messages"]] == [1, 2]
    session.client_max_frame = REPLY_OVERHEAD + 2 * cost
    got = run(state, "consume", {"queue": "big", "max": 4}, session=session).result
    assert [d[0] for d in got["messages"]] == [3, 4]
    run(state, "nack", {"queue": "big", "ids": [1, 2, 3, 4]})
    session.client_max_frame = REPLY_OVERHEAD + 1
    got = run(state, "consume", {"queue": "big", "max": 4}, session=session).result
    assert [d[0] for d in got["messages"]] == [1]


# -- ack and nack -----------------------------------------------------------------------------

BAD_IDS = [DROP, None, [], 5, "1", {"1": 1}, [1, "2"], [1, True], [False], [1.0], [None], [-1],
           [1, 2**63], [2**64 - 1]]


@pytest.mark.parametrize("op", ["ack", "nack"])
@pytest.mark.parametrize("ids", BAD_IDS, ids=repr)
def test_id_lists(state: BrokerState, op: str, ids: Any) -> None:
    refused(state, op, with_args(op, ids=ids), INVALID, "ids")


@pytest.mark.parametrize("op", ["ack", "nack"])
def test_id_list_limit(state: BrokerState, op: str) -> None:
    err = refused(state, op, with_args(op, ids=[1, 2, 3, 4, 5]), ErrorCode.LIMIT_EXCEEDED)
    assert err.details == {"field": "ids", "limit": 4}
    # The count is checked before the elements.
    refused(state, op, with_args(op, ids=["a"] * 5), ErrorCode.LIMIT_EXCEEDED)
    run(state, op, with_args(op, ids=[1, 2, 3, 4]))


@pytest.mark.parametrize("delay, field", [
    (-1, "delay_ms"), (MAX_DELAY_MS + 1, "delay_ms"), (True, "delay_ms"), ("5", "delay_ms"),
])
def test_nack_delay(state: BrokerState, delay: Any, field: str) -> None:
    run(state, "consume", {"queue": "q"})
    refused(state, "nack", {"queue": "q", "ids": [1], "delay_ms": delay}, INVALID, field)
    # ids are checked before delay_ms
    refused(state, "nack", {"queue": "q", "ids": [], "delay_ms": delay}, INVALID, "ids")


@pytest.mark.parametrize("op", ["ack", "nack"])
def test_id_range_is_inclusive(state: BrokerState, op: str) -> None:
    result = run(state, op, with_args(op, ids=[0, 2**63 - 1])).result
    assert result is not None and result["missing"] == [0, 2**63 - 1]


def test_ack_and_nack_report_missing_ids_in_request_order_once(state: BrokerState) -> None:
    run(state, "publish", {"queue": "q", "messages": [[b"2"], [b"3"]]})
    run(state, "consume", {"queue": "q"})
    assert run(state, "nack", {"queue": "q", "ids": [9, 1, 9, 2]}).result == {
        "released": 1, "missing": [9, 2]}
    assert run(state, "ack", {"queue": "q", "ids": [7, 3, 7, 1]}).result == {
        "acked": 2, "missing": [7]}
    assert run(state, "ack", {"queue": "q", "ids": [1]}).result == {"acked": 0, "missing": [1]}


# -- ints are ints --------------------------------------------------------------------------------

INT_FIELDS = [
    ("hello", "max_frame"), ("queue_create", "shards"), ("queue_create", "visibility_ms"),
    ("queue_create", "max_attempts"), ("queue_create", "max_messages"), ("consume", "max"),
    ("consume", "visibility_ms"), ("consume", "wait_ms"), ("nack", "delay_ms"),
]


@pytest.mark.parametrize("op, field", INT_FIELDS)
@pytest.mark.parametrize("value", [True, False, 1.0, "1", [1]], ids=repr)
def test_bool_and_other_types_are_not_ints(state: BrokerState, op: str, field: str, value: Any) -> None:
    session = Session() if op == "hello" else None
    refused(state, op, with_args(op, **{field: value}), INVALID, field, session=session)
