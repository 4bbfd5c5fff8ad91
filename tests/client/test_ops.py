"""The client op table (client/ops.py) without a server.

Both clients' typed methods must come from the table, with the same signatures; each
op's args are built as declared (None and marked defaults left out); results parse into
the typed values; and the table's argument names match the broker's registry.
"""
from __future__ import annotations

import inspect
from typing import Annotated, Any

import pytest

from client import (
    AckResult,
    Client,
    DeadLetterInfo,
    Delivery,
    ExtendResult,
    MessageStatus,
    NackResult,
    PeekedMessage,
    PeekResult,
    PublishResult,
    PurgeResult,
    QueueStats,
    RedriveResult,
    RejectResult,
    SyncClient,
)
from client import types as t
from client.ops import OPS, QUEUE_SETTINGS, Arg, Field, OpSpec
from protocol import Op

#: Hand-written methods that are not ops: connection plumbing and explicit pipelining.
ASYNC_PLUMBING = {"connect", "aclose", "request", "info", "reconnects", "publishes_retried",
                  "publish_or_spill", "drain_spill", "spill_pending"}  # reconnect and the spill file
SYNC_PLUMBING = {"close", "submit", "result", "request", "request_many", "publish_many", "closed",
                 "connected", "reconnects", "publishes_retried"}  # reconnect
#: Hand-written methods built on ops declared with ``methods=False``.
HAND_WRITTEN = {"subscribe", "transaction"}
#: The ops both clients carry a generated method for.
METHOD_OPS = [name for name, spec in OPS.items() if spec.methods]

STATS_WIRE: dict[str, Any] = {
    "queue": "q", "kind": "fifo", "shards": 1, "visibility_ms": 30000, "max_attempts": 0,
    "dead_letter": None, "max_messages": 0, "ready": 1, "leased": 0, "delayed": 0,
    "messages": 1, "published": 1, "acked": 0, "nacked": 0, "expired": 0,
    "dead_lettered": 0, "dropped": 0,
}


def _public(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


# --- both clients come from the table ----------------------------------------------------


def test_every_op_is_in_both_clients_and_nothing_else_is_hand_written() -> None:
    assert _public(Client) - ASYNC_PLUMBING == set(METHOD_OPS) | HAND_WRITTEN
    assert _public(SyncClient) - SYNC_PLUMBING == set(METHOD_OPS) | HAND_WRITTEN
    assert {name for name, spec in OPS.items() if not spec.methods} == {"subscribe", "unsubscribe"}


def test_subscribe_takes_the_op_arguments_in_both_clients() -> None:
    def shape(params: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in params]

    declared = shape(OPS["subscribe"].signature.parameters.values())
    assert shape(list(inspect.signature(Client.subscribe).parameters.values())[1:]) == declared
    assert shape(list(inspect.signature(SyncClient.subscribe).parameters.values())[1:]) == [
        *declared, ("idle_timeout", inspect.Parameter.KEYWORD_ONLY, None)
    ]


@pytest.mark.parametrize("name", METHOD_OPS)
def test_both_clients_have_the_same_signature_and_doc(name: str) -> None:
    spec = OPS[name]
    async_method, sync_method = vars(Client)[name], vars(SyncClient)[name]
    assert inspect.iscoroutinefunction(async_method)
    assert not inspect.iscoroutinefunction(sync_method)
    for method in (async_method, sync_method):
        sig = inspect.signature(method)
        assert list(sig.parameters)[0] == "self"
        assert sig.replace(parameters=list(sig.parameters.values())[1:]) == spec.signature
        assert inspect.getdoc(method) == spec.doc and spec.doc
        # The generated code takes exactly the declared parameters (not *args/**kwargs).
        assert method.__code__.co_varnames[: method.__code__.co_argcount + method.__code__.co_kwonlyargcount] == (
            "self", *spec.signature.parameters
        )


def test_signatures_keep_the_public_shapes() -> None:
    assert str(inspect.signature(Client.consume)) == (
        "(self, queue: str, max: int = 1, *, visibility_ms: int | None = None, wait_ms: int = 0)"
        " -> list[client.types.Delivery]"
    )
    assert str(inspect.signature(SyncClient.create_queue)) == (
        "(self, name: str, kind: str = 'fifo', shards: int = 1, visibility_ms: int | None = None,"
        " max_attempts: int | None = None, dead_letter: str | None = None,"
        " max_messages: int | None = None, retry_delay_ms: int | None = None,"
        " retry_backoff: str | None = None, retry_max_delay_ms: int | None = None,"
        " retry_jitter: int | None = None, ttl_ms: int | None = None, on_expire: str | None = None,"
        " dedup_window_ms: int | None = None, ordered: bool | None = None, max_bytes: int | None = None,"
        " overflow: str | None = None) -> bool"
    )
    assert str(inspect.signature(SyncClient.purge_queue)) == (
        "(self, queue: str, *, leased: bool = False) -> client.types.PurgeResult"
    )
    assert str(inspect.signature(Client.peek)) == (
        "(self, queue: str, max: int = 10, *, state: str | None = None, dead_letter: bool = False)"
        " -> client.types.PeekResult"
    )
    assert inspect.signature(Client.message_status).return_annotation == list[MessageStatus]
    assert str(inspect.signature(SyncClient.nack)) == (
        "(self, queue: str, ids: collections.abc.Iterable[int], *, delay_ms: int = 0, error: str | None = None,"
        " returned: bool = False) -> client.types.NackResult"
    )
    assert str(inspect.signature(Client.extend)) == (
        "(self, queue: str, ids: collections.abc.Iterable[int], *, visibility_ms: int | None = None)"
        " -> client.types.ExtendResult"
    )
    assert str(inspect.signature(SyncClient.reject)) == (
        "(self, queue: str, ids: collections.abc.Iterable[int], *, error: str | None = None)"
        " -> client.types.RejectResult"
    )
    assert str(inspect.signature(Client.redrive)) == (
        "(self, queue: str, *, max: int | None = None, ids: collections.abc.Iterable[int] | None = None)"
        " -> client.types.RedriveResult"
    )


def test_queue_settings_are_the_create_queue_parameters() -> None:
    assert [s.name for s in QUEUE_SETTINGS] == [
        "kind", "shards", "visibility_ms", "max_attempts", "dead_letter", "max_messages",
        "retry_delay_ms", "retry_backoff", "retry_max_delay_ms", "retry_jitter", "ttl_ms", "on_expire",
        "dedup_window_ms", "ordered", "max_bytes", "overflow",
    ]
    assert all(s.doc for s in QUEUE_SETTINGS)
    for s in QUEUE_SETTINGS:
        assert f"``{s.name}``: {s.doc}" in OPS["create_queue"].doc


# --- args ----------------------------------------------------------------------------------

ARGS_CASES: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = [
    ("ping", (), {}, {}),
    ("create_queue", ("q",), {}, {"queue": "q", "kind": "fifo", "shards": 1}),
    ("create_queue", ("q", "priority", 4), {"visibility_ms": 100, "max_attempts": 3, "dead_letter": "d",
                                            "max_messages": 50},
     {"queue": "q", "kind": "priority", "shards": 4, "visibility_ms": 100, "max_attempts": 3,
      "dead_letter": "d", "max_messages": 50}),
    ("create_queue", ("q",), {"max_attempts": 0, "dead_letter": None},
     {"queue": "q", "kind": "fifo", "shards": 1, "max_attempts": 0}),
    ("delete_queue", ("q",), {}, {"queue": "q"}),
    ("list_queues", (), {}, {}),
    ("queue_stats", ("q",), {}, {"queue": "q"}),
    ("publish", ("q", b"x"), {}, {"queue": "q", "messages": [[b"x"]]}),
    ("publish", ("q", "hé"), {"key": "k", "delay_ms": 5},
     {"queue": "q", "messages": [["hé".encode(), b"k", None, 5]]}),
    ("publish_batch", ("q", [b"a", t.Message("b", priority=2)]), {},
     {"queue": "q", "messages": [[b"a"], [b"b", None, 2]]}),
    ("consume", ("q",), {}, {"queue": "q", "max": 1}),
    ("consume", ("q", 5), {"visibility_ms": 1000, "wait_ms": 200},
     {"queue": "q", "max": 5, "visibility_ms": 1000, "wait_ms": 200}),
    ("ack", ("q", (i for i in (1, 2))), {}, {"queue": "q", "ids": [1, 2]}),
    ("nack", ("q", [3]), {}, {"queue": "q", "ids": [3]}),
    ("nack", ("q", [3]), {"delay_ms": 10}, {"queue": "q", "ids": [3], "delay_ms": 10}),
    ("nack", ("q", [3]), {"error": "boom"}, {"queue": "q", "ids": [3], "error": "boom"}),
    ("nack", ("q", [3]), {"delay_ms": 0, "error": None}, {"queue": "q", "ids": [3]}),
    ("extend", ("q", (i for i in (4, 5))), {}, {"queue": "q", "ids": [4, 5]}),
    ("extend", ("q", [4]), {"visibility_ms": 60_000}, {"queue": "q", "ids": [4], "visibility_ms": 60_000}),
    ("reject", ("q", [6]), {}, {"queue": "q", "ids": [6]}),
    ("reject", ("q", [6]), {"error": "bad json"}, {"queue": "q", "ids": [6], "error": "bad json"}),
    ("redrive", ("q.dlq",), {}, {"queue": "q.dlq"}),
    ("redrive", ("q.dlq",), {"max": 100}, {"queue": "q.dlq", "max": 100}),
    ("redrive", ("q.dlq",), {"ids": range(1, 3)}, {"queue": "q.dlq", "ids": [1, 2]}),
    # The server refuses both at once (INVALID_ARGUMENT "ids"); the client sends what it is given.
    ("redrive", ("q.dlq",), {"max": 1, "ids": [1]}, {"queue": "q.dlq", "max": 1, "ids": [1]}),
    ("purge_queue", ("q",), {}, {"queue": "q"}),
    ("purge_queue", ("q",), {"leased": True}, {"queue": "q", "leased": True}),
    ("peek", ("q",), {}, {"queue": "q", "max": 10}),
    ("peek", ("q", 3), {"state": "leased", "dead_letter": True},
     {"queue": "q", "max": 3, "state": "leased", "dead_letter": True}),
    ("peek", ("q",), {"state": None, "dead_letter": False}, {"queue": "q", "max": 10}),
    ("message_status", ("q", range(1, 4)), {}, {"queue": "q", "ids": [1, 2, 3]}),
    ("subscribe", ("q",), {}, {"queue": "q"}),
    ("subscribe", ("q",), {"credit": 256, "visibility_ms": None, "auto_ack": False}, {"queue": "q"}),
    ("subscribe", ("q",), {"credit": 8, "visibility_ms": 5000, "auto_ack": True},
     {"queue": "q", "credit": 8, "visibility_ms": 5000, "auto_ack": True}),
    ("unsubscribe", (3,), {}, {"subscription": 3}),
]


@pytest.mark.parametrize(("name", "args", "kwargs", "wire"), ARGS_CASES)
def test_args_are_built_as_declared(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], wire: dict[str, Any]
) -> None:
    assert OPS[name].args(*args, **kwargs) == wire


def test_keyword_only_parameters_may_be_positional_in_args() -> None:
    assert OPS["consume"].args("q", 5, 1000, 200) == {"queue": "q", "max": 5, "visibility_ms": 1000, "wait_ms": 200}
    assert OPS["peek"].args("q", 2, "ready", True) == {"queue": "q", "max": 2, "state": "ready", "dead_letter": True}
    # ... while the methods keep them keyword-only.
    assert inspect.signature(Client.peek).parameters["state"].kind is inspect.Parameter.KEYWORD_ONLY


def test_types_module_keeps_the_arg_helpers() -> None:
    assert t.create_queue_args is OPS["create_queue"].args
    assert t.consume_args("q", 5, 1000, 200) == OPS["consume"].args("q", 5, 1000, 200)
    with pytest.raises(AttributeError):
        t.no_such_helper  # noqa: B018


# --- both clients send the same request and parse the same result --------------------------

RESULT_CASES: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any], Any]] = [
    ("ping", (), {}, {"now_ms": 123}, 123),
    ("create_queue", ("q",), {}, {"queue": "q", "created": True}, True),
    ("delete_queue", ("q",), {}, {"queue": "q", "messages": 4}, 4),
    ("list_queues", (), {}, {"queues": [STATS_WIRE]}, [QueueStats.from_wire(STATS_WIRE)]),
    ("queue_stats", ("q",), {}, STATS_WIRE, QueueStats.from_wire(STATS_WIRE)),
    ("publish", ("q", b"x"), {}, {"first_id": 7, "count": 1}, 7),
    ("publish_batch", ("q", [b"a", b"b"]), {}, {"first_id": 7, "count": 2}, PublishResult(7, 2)),
    ("consume", ("q",), {"wait_ms": 0}, {"messages": [[5, b"b", 2, None, 0]]}, [Delivery(5, b"b", 2, None, 0)]),
    ("ack", ("q", [1, 9]), {}, {"acked": 1, "missing": [9]}, AckResult(1, (9,))),
    ("nack", ("q", [1]), {}, {"released": 1, "missing": []}, NackResult(1, ())),
    ("nack", ("q", [1, 2]), {"error": "e"}, {"released": 1, "missing": [2]}, NackResult(1, (2,))),
    ("extend", ("q", [1, 2]), {"visibility_ms": 5}, {"extended": 1, "missing": [2]}, ExtendResult(1, (2,))),
    ("reject", ("q", [3, 3, 4]), {}, {"rejected": 1, "missing": [4]}, RejectResult(1, (4,))),
    ("redrive", ("d",), {"max": 5}, {"redriven": 3, "queues": {"a": 2, "b": 1}, "skipped": 1},
     RedriveResult(3, {"a": 2, "b": 1}, 1)),
    ("redrive", ("d",), {}, {"redriven": 0, "queues": {}, "skipped": 0}, RedriveResult(0, {}, 0)),
    ("purge_queue", ("q",), {"leased": True}, {"queue": "q", "ready": 2, "delayed": 1, "leased": 3},
     PurgeResult("q", 2, 1, 3)),
    ("peek", ("q",), {"dead_letter": True},
     {"queue": "q.dlq", "messages": [[4, b"x", 0, None, 0, "ready", 0], [5, b"y", 2, b"k", 9, "leased", 1000]]},
     PeekResult("q.dlq", (PeekedMessage(4, b"x", 0, None, 0, "ready", 0),
                          PeekedMessage(5, b"y", 2, b"k", 9, "leased", 1000)))),
    ("peek", ("q",), {"dead_letter": True},
     {"queue": "q.dlq", "messages": [
         [4, b"x", 0, None, 0, "ready", 0, None],
         [5, b"y", 1, b"k", 9, "leased", 1000,
          {"queue": "q", "id": 17, "attempts": 3, "reason": "max_attempts", "error": "timeout", "at_ms": 900}],
         [6, b"z", 0, None, 0, "ready", 0,
          {"queue": "q", "id": 18, "attempts": 1, "reason": "rejected", "error": None, "at_ms": 950}],
     ]},
     PeekResult("q.dlq", (
         PeekedMessage(4, b"x", 0, None, 0, "ready", 0, None),
         PeekedMessage(5, b"y", 1, b"k", 9, "leased", 1000,
                       DeadLetterInfo("q", 17, 3, "max_attempts", "timeout", 900)),
         PeekedMessage(6, b"z", 0, None, 0, "ready", 0, DeadLetterInfo("q", 18, 1, "rejected", None, 950)),
     ))),
    ("message_status", ("q", [1, 2]), {},
     {"statuses": [{"id": 1, "state": "gone", "queue": "q", "attempts": 0, "until_ms": 0},
                   {"id": 2, "state": "dead_lettered", "queue": "d", "attempts": 1, "until_ms": 0,
                    "dead_letter_id": 8}]},
     [MessageStatus(1, "gone", "q", 0, 0), MessageStatus(2, "dead_lettered", "d", 1, 0, 8)]),
    ("message_status", ("q", [2, 3]), {},
     {"statuses": [{"id": 2, "state": "dead_lettered", "queue": "d", "attempts": 0, "until_ms": 0,
                    "dead_letter_id": 8, "reason": "rejected", "error": "bad json", "dead_lettered_at_ms": 1234},
                   {"id": 3, "state": "dead_lettered", "queue": "d", "attempts": 0, "until_ms": 0,
                    "dead_letter_id": 9, "reason": "max_attempts", "error": None, "dead_lettered_at_ms": 1240}]},
     [MessageStatus(2, "dead_lettered", "d", 0, 0, 8, "rejected", "bad json", 1234),
      MessageStatus(3, "dead_lettered", "d", 0, 0, 9, "max_attempts", None, 1240)]),
]


class FakeSync(SyncClient):
    """A SyncClient whose ``request`` answers from a script instead of a socket."""

    def __init__(self, reply: dict[str, Any], timeout: float | None = 30.0) -> None:  # no super(): no socket
        self.reply = reply
        self.timeout = timeout
        self.sent: list[tuple[str, dict[str, Any], Any]] = []

    def request(self, op: str, args: dict[str, Any], timeout: Any = ...) -> dict[str, Any]:
        self.sent.append((op, args, timeout))
        return self.reply


class FakeAsync(Client):
    def __init__(self, reply: dict[str, Any]) -> None:  # no super(): no connection
        self.reply = reply
        self.sent: list[tuple[str, dict[str, Any]]] = []

        async def request(op: str, args: dict[str, Any]) -> dict[str, Any]:
            self.sent.append((op, args))
            return self.reply

        self._request = request


@pytest.mark.parametrize(("name", "args", "kwargs", "reply", "expected"), RESULT_CASES)
async def test_both_clients_send_the_op_and_parse_its_result(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], reply: dict[str, Any], expected: Any
) -> None:
    spec = OPS[name]
    wire = spec.args(*args, **kwargs)
    fake_sync, fake_async = FakeSync(reply), FakeAsync(reply)
    assert getattr(fake_sync, name)(*args, **kwargs) == expected
    assert await getattr(fake_async, name)(*args, **kwargs) == expected
    ((sync_op, sync_args, _),) = fake_sync.sent
    assert (sync_op, sync_args) == (spec.op, wire)
    assert fake_async.sent == [(spec.op, wire)]


def test_blocking_consume_waits_wait_ms_longer() -> None:
    reply = {"messages": []}
    client = FakeSync(reply, timeout=2.0)
    client.consume("q", wait_ms=1500)
    client.consume("q")
    unbounded = FakeSync(reply, timeout=None)
    unbounded.consume("q", wait_ms=1500)
    assert [timeout for _, _, timeout in client.sent + unbounded.sent] == [3.5, 2.0, None]
    # Other ops use the client's own timeout.
    other = FakeSync({"queue": "q", "messages": []}, timeout=2.0)
    other.peek("q")
    assert other.sent[0][2] is ...


def test_op_names_are_the_protocol_ops() -> None:
    assert {spec.op for spec in OPS.values()} <= {str(op) for op in Op}
    assert OPS["purge_queue"].op == "queue_purge" and OPS["message_status"].op == "message_status"
    assert OPS["peek"].op == "peek"
    assert [OPS[name].op for name in ("extend", "reject", "redrive")] == ["extend", "reject", "redrive"]


# --- result values -------------------------------------------------------------------------


def test_new_results_ignore_unknown_fields_and_extra_elements() -> None:
    assert PurgeResult.from_wire({"queue": "q", "ready": 1, "delayed": 2, "leased": 0, "new": 1}).total == 3
    peeked = PeekResult.from_wire({"queue": "q", "messages": [[1, b"b", 0, None, 0, "delayed", 99, None, 5, "later"]],
                                   "more": True})
    assert peeked == PeekResult("q", (PeekedMessage(1, b"b", 0, None, 0, "delayed", 99, None, 5),))
    # a server from before published_at sends 8 elements; a later one may send more
    assert PeekedMessage.from_wire([1, b"b", 0, None, 0, "ready", 0, None]).published_at == 0
    assert Delivery.from_wire([1, b"b", 2, None, 0]) == Delivery(1, b"b", 2, None, 0, 0)
    assert Delivery.from_wire([1, b"b", 2, None, 0, 77, "later"]) == Delivery(1, b"b", 2, None, 0, 77)
    assert len(peeked) == 1 and list(peeked) == list(peeked.messages)
    assert not PeekResult("q", ())
    # A 7-element peeked message (a server before dead-letter info) has no dead_letter.
    (old,) = PeekResult.from_wire({"queue": "q", "messages": [[1, b"b", 0, None, 0, "ready", 0]]})
    assert old.dead_letter is None
    dead_letter = {"queue": "src", "id": 2, "attempts": 20, "reason": "max_attempts", "error": None, "at_ms": 5,
                   "later": True}
    (dead,) = PeekResult.from_wire({"queue": "q", "messages": [[1, b"b", 0, None, 0, "ready", 0, dead_letter]]})
    assert dead.dead_letter == DeadLetterInfo("src", 2, 20, "max_attempts", None, 5)
    status = MessageStatus.from_wire({"id": 3, "state": "ready", "queue": "q", "attempts": 0, "until_ms": 0,
                                      "added_later": 1})
    assert status == MessageStatus(3, "ready", "q", 0, 0) and status.dead_letter_id is None
    assert (status.reason, status.error, status.dead_lettered_at_ms) == (None, None, None)
    assert RedriveResult.from_wire({"redriven": 1, "queues": {"a": 1}, "skipped": 0, "new": 2}) == RedriveResult(
        1, {"a": 1}, 0
    )


# --- declarations -------------------------------------------------------------------------


def test_a_declaration_is_checked() -> None:
    def stub(queue: str) -> None:
        """Doc."""

    def build(queue: str) -> dict[str, Any]:
        return {"queue": queue}

    with pytest.raises(TypeError, match="needs sends"):
        OpSpec(stub, Op.PING, Field("x", int), build=build)
    with pytest.raises(TypeError, match="goes with build"):
        OpSpec(stub, Op.PING, Field("x", int), sends=("queue",))
    with pytest.raises(TypeError, match="holds_for"):
        OpSpec(stub, Op.PING, Field("x", int), holds_for="wait_ms")
    spec = OpSpec(stub, Op.PING, Field("x", int), build=build, sends=("queue",))
    assert spec.args("q") == {"queue": "q"} and spec.returns is int


def test_arg_markers() -> None:
    def stub(
        name: Annotated[str, Arg(wire="queue")],
        ids: Annotated[list[int], Arg(convert=tuple)],
        *,
        flag: Annotated[bool, Arg(omit_default=True, doc="A flag.")] = False,
        limit: int | None = None,
        always: int = 3,
    ) -> None:
        """Doc."""

    spec = OpSpec(stub, Op.PING, Field("x", int))
    assert spec.sends == ("queue", "ids", "flag", "limit", "always")
    assert spec.args("n", [1]) == {"queue": "n", "ids": (1,), "always": 3}
    assert spec.args("n", [1], flag=True, limit=0, always=None) == {
        "queue": "n", "ids": (1,), "flag": True, "limit": 0, "always": None,
    }
    assert spec.doc == "Doc.\n\n- ``flag``: A flag."


# --- the broker's registry ----------------------------------------------------------------


def _accepted_args(command: Any) -> frozenset[str]:
    """The argument names a broker registry entry accepts."""
    fields = getattr(command, "fields", None)
    if fields is None and hasattr(command, "args"):
        fields = [arg.name for arg in command.args]
    assert fields is not None, f"registry entry {command!r} lists no argument names; update this test"
    return frozenset(fields)


@pytest.mark.parametrize("name", list(OPS))
def test_op_table_matches_the_broker_registry(name: str) -> None:
    from broker.commands import COMMANDS

    spec = OPS[name]
    assert spec.op in COMMANDS, f"the broker has no op {spec.op!r}"
    accepted = _accepted_args(COMMANDS[spec.op])
    assert set(spec.sends) <= accepted
    # The methods of one op (consume and consume_group) send every argument it takes.
    assert {arg for s in OPS.values() if s.op == spec.op for arg in s.sends} == accepted
