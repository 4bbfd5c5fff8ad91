"""Bad input over real sockets gets typed errors; the broker and other connections go on."""
from __future__ import annotations

import gc
import struct

import pytest

import trio
import trio.testing

from broker.commands import Session
from broker.server import Broker
from protocol import Error, ErrorCode, Reply

from .rawclient import RawClient


async def test_unknown_op_and_wrong_types_keep_the_connection(broker_addr: tuple[str, int]) -> None:
    c = await RawClient.open(broker_addr)
    err = await c.call("frobnicate", {})
    assert isinstance(err, Error) and err.code == ErrorCode.UNKNOWN_OP
    err = await c.call("queue_create", {"queue": 5})
    assert isinstance(err, Error) and err.code == ErrorCode.INVALID_ARGUMENT
    assert err.details["field"] == "queue"
    err = await c.call("queue_create", {"queue": "q", "shards": "two"})
    assert isinstance(err, Error) and err.details["field"] == "shards"
    err = await c.call("queue_create", {"queue": "q", "shards": True})
    assert isinstance(err, Error) and err.details["field"] == "shards"
    err = await c.call("publish", {"queue": "missing", "messages": [[b"x"]]})
    assert isinstance(err, Error) and err.code == ErrorCode.QUEUE_NOT_FOUND
    assert isinstance(await c.call("ping", {}), Reply)


async def test_handshake_comes_first(broker_addr: tuple[str, int]) -> None:
    c = await RawClient.open(broker_addr, hello=False)
    err = await c.call("ping", {})
    assert isinstance(err, Error) and err.code == ErrorCode.HANDSHAKE_REQUIRED
    err = await c.call("hello", {"versions": [99]})
    assert isinstance(err, Error) and err.code == ErrorCode.UNSUPPORTED_VERSION
    assert isinstance(await c.call("hello", {"versions": [1, 99]}), Reply)
    assert isinstance(await c.call("ping", {}), Reply)


async def test_malformed_request_shape_is_answered_and_survivable(broker_addr: tuple[str, int]) -> None:
    c = await RawClient.open(broker_addr)
    await c.send_body([0, 42, "ping"])  # three elements
    err = await c.frame()
    assert isinstance(err, Error) and err.code == ErrorCode.MALFORMED_REQUEST and err.id == 42
    await c.send_body({"not": "an array"})
    err = await c.frame()
    assert isinstance(err, Error) and err.code == ErrorCode.MALFORMED_REQUEST and err.id is None
    assert isinstance(await c.call("ping", {}), Reply)


def _framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


#: ``[0, 1, "queue_create", {"queue": "e", "shards": `` - the value follows.
_SHARDS_ARG = b"\x94\x00\x01\xacqueue_create\x82\xa5queue\xa1e\xa6shards"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (struct.pack(">I", 1) + b"\xc1", ErrorCode.MALFORMED_FRAME),
        (struct.pack(">I", 0xFFFFFFFF), ErrorCode.FRAME_TOO_LARGE),
        (struct.pack(">I", 16 * 1024 * 1024 + 1), ErrorCode.FRAME_TOO_LARGE),
        # SPEC 1.1: an ext of type -128..-2, or a timestamp with nanoseconds past
        # 999,999,999, anywhere in the body (here: the value of "shards").
        (_framed(_SHARDS_ARG + b"\xd4\xfe\x00"), ErrorCode.MALFORMED_FRAME),
        (_framed(_SHARDS_ARG + b"\xd7\xff\xee\x6b\x28\x00\x00\x00\x00\x04"), ErrorCode.MALFORMED_FRAME),
    ],
)
async def test_lost_framing_gets_an_error_then_close(
    broker_addr: tuple[str, int], payload: bytes, code: ErrorCode
) -> None:
    bystander = await RawClient.open(broker_addr)
    assert isinstance(await bystander.call("queue_create", {"queue": "keep"}), Reply)
    assert isinstance(await bystander.call("publish", {"queue": "keep", "messages": [[b"safe"]]}), Reply)

    c = await RawClient.open(broker_addr)
    await c.send_raw(payload)
    err = await c.frame()
    assert isinstance(err, Error) and err.code == code and err.id is None
    assert await c.frame() is None  # closed by the server

    # The broker is up, the other connection is untouched, and nothing was lost.
    got = await bystander.call("consume", {"queue": "keep", "max": 10})
    assert isinstance(got, Reply)
    assert [m[1] for m in got.result["messages"]] == [b"safe"]
    fresh = await RawClient.open(broker_addr)
    assert isinstance(await fresh.call("ping", {}), Reply)


async def test_errors_in_a_batch_do_not_disturb_the_rest(broker_addr: tuple[str, int]) -> None:
    c = await RawClient.open(broker_addr)
    await c.call("queue_create", {"queue": "q"})
    ids = [
        await c.request("publish", {"queue": "q", "messages": [[b"a"]]}),
        await c.request("publish", {"queue": "q", "messages": [["not bytes"]]}),
        await c.request("publish", {"queue": "q", "messages": [[b"b"]]}),
    ]
    frames = [await c.frame() for _ in ids]
    assert [f.id for f in frames] == ids
    assert isinstance(frames[0], Reply) and isinstance(frames[2], Reply)
    assert isinstance(frames[1], Error) and frames[1].details["field"] == "messages[0].body"
    stats = await c.call("queue_stats", {"queue": "q"})
    assert stats.result["ready"] == 2  # the bad one published nothing


async def test_oversized_message_is_refused_whole(broker_addr: tuple[str, int]) -> None:
    c = await RawClient.open(broker_addr)
    await c.call("queue_create", {"queue": "q"})
    big = b"x" * (1024 * 1024 + 1)
    err = await c.call("publish", {"queue": "q", "messages": [[b"ok"], [big]]})
    assert isinstance(err, Error) and err.code == ErrorCode.MESSAGE_TOO_LARGE
    assert err.details["index"] == 1
    stats = await c.call("queue_stats", {"queue": "q"})
    assert stats.result["messages"] == 0


async def test_key_longer_than_the_limit_is_refused_whole(broker_addr: tuple[str, int]) -> None:
    from protocol import MAX_KEY

    c = await RawClient.open(broker_addr)
    await c.call("queue_create", {"queue": "q", "shards": 2})
    ok = await c.call("publish", {"queue": "q", "messages": [[b"a", b"k" * MAX_KEY]]})
    assert isinstance(ok, Reply)
    err = await c.call("publish", {"queue": "q", "messages": [[b"b"], [b"c", b"k" * (MAX_KEY + 1)]]})
    assert isinstance(err, Error) and err.code == ErrorCode.INVALID_ARGUMENT
    assert err.details["field"] == "messages[1].key"
    assert (await c.call("queue_stats", {"queue": "q"})).result["messages"] == 1


async def test_connections_closed_by_lost_framing_are_freed_at_once(broker: Broker, broker_addr: tuple[str, int]) -> None:
    """Nothing of a connection closed by a fatal frame waits for the cyclic collector
    (here switched off): its session, buffers and frames go when it ends."""
    gc.collect()
    gc.disable()
    try:
        for payload in (struct.pack(">I", 1) + b"\xc1", _framed(b"\x94\x00\x01\xa4ping\x81\xa1a" + b"\x91" * 2000),
                        struct.pack(">I", 0xFFFFFFFF)) * 5:
            c = await RawClient.open(broker_addr)
            await c.send_raw(payload)
            err = await c.frame()
            assert isinstance(err, Error) and err.code in (ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE)
            assert await c.frame() is None
            await c.aclose()
        with trio.fail_after(10):  # the broker's side ends in this process: a bounded wait
            while broker.connections:
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        assert [o for o in gc.get_objects() if type(o) is Session] == []
    finally:
        gc.enable()
