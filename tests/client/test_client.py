"""The async client: argument shaping, connection behaviour, and every operation.

Three groups:
- shaping of request arguments and results (no I/O);
- the connection against a scripted peer over in-memory streams (out-of-order replies,
  transport loss, pushes, cancellation), which a real broker cannot be made to show;
- every operation against a real broker (the ``broker_addr`` fixture).
"""
from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from client import (
    AckResult,
    Client,
    Connection,
    ConnectionClosed,
    Delivery,
    FrameTooLarge,
    InvalidArgument,
    LimitExceeded,
    LockgateError,
    Message,
    MessageTooLarge,
    NackResult,
    PublishResult,
    QueueExists,
    QueueFull,
    QueueNotFound,
    QueueStats,
    UnknownOp,
    UnsupportedVersion,
)
from client import types as t
from protocol import NEED_DATA, Encoder, ErrorCode, Push, Request
from protocol import Connection as ProtocolConnection

_names = itertools.count()


def qname(prefix: str = "q") -> str:
    """A queue name no other test uses (brokers may be shared between tests)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_names)}"


# --- argument shaping (no server) -----------------------------------------------------


def test_message_entry_drops_trailing_nones() -> None:
    assert t.message_entry(b"x") == [b"x"]
    assert t.message_entry("hé") == ["hé".encode()]
    assert t.message_entry(b"x", key="k") == [b"x", b"k"]
    assert t.message_entry(b"x", priority=7) == [b"x", None, 7]
    assert t.message_entry(b"x", delay_ms=5) == [b"x", None, None, 5]
    assert t.message_entry(b"x", b"k", 0, 0) == [b"x", b"k", 0, 0]


def test_message_entries_take_bodies_and_messages() -> None:
    entries = t.message_entries([b"a", "b", bytearray(b"c"), Message("d", key=b"k", priority=2)])
    assert entries == [[b"a"], [b"b"], [bytearray(b"c")], [b"d", b"k", 2]]


def test_bodies_must_be_bytes_or_text() -> None:
    with pytest.raises(TypeError):
        t.message_entry(42)  # type: ignore[arg-type]


def test_optional_arguments_are_omitted() -> None:
    assert t.create_queue_args("q") == {"queue": "q", "kind": "fifo", "shards": 1}
    assert t.create_queue_args("q", "priority", 4, 100, 3, "dlq", 50) == {
        "queue": "q", "kind": "priority", "shards": 4, "visibility_ms": 100,
        "max_attempts": 3, "dead_letter": "dlq", "max_messages": 50,
    }
    assert t.consume_args("q") == {"queue": "q", "max": 1}
    assert t.consume_args("q", 5, 1000, 200) == {"queue": "q", "max": 5, "visibility_ms": 1000, "wait_ms": 200}
    assert t.ack_args("q", (i for i in (1, 2))) == {"queue": "q", "ids": [1, 2]}
    assert t.nack_args("q", [3]) == {"queue": "q", "ids": [3]}
    assert t.nack_args("q", [3], 10) == {"queue": "q", "ids": [3], "delay_ms": 10}
    assert t.hello_args(1 << 20, "me") == {"versions": [1], "client": "me", "max_frame": 1 << 20}
    assert t.hello_args(client_name="me") == {"versions": [1], "client": "me"}


def test_results_become_values() -> None:
    assert t.deliveries({"messages": [[5, b"b", 2, None, 0], [6, b"c", 1, b"k", 9]]}) == [
        Delivery(5, b"b", 2, None, 0), Delivery(6, b"c", 1, b"k", 9),
    ]
    assert t.ack_result({"acked": 1, "missing": [4]}) == AckResult(1, (4,))
    assert t.nack_result({"released": 0, "missing": []}) == NackResult(0, ())
    assert t.publish_result({"first_id": 10, "count": 3}).ids == range(10, 13)


def test_queue_stats_from_wire_ignores_unknown_fields() -> None:
    wire = {
        "queue": "q", "kind": "fifo", "shards": 1, "visibility_ms": 30000, "max_attempts": 0,
        "dead_letter": None, "max_messages": 0, "ready": 1, "leased": 2, "delayed": 3,
        "messages": 6, "published": 7, "acked": 1, "nacked": 0, "expired": 0,
        "dead_lettered": 0, "dropped": 0, "added_later": True,
    }
    stats = QueueStats.from_wire(wire)
    assert stats.name == "q" and stats.messages == 6 and stats.leased == 2


@pytest.mark.parametrize(
    ("addr", "port", "expected"),
    [
        ("10.1.2.3:99", None, ("10.1.2.3", 99)),
        ("[::1]:7878", None, ("::1", 7878)),
        ("example.org", 5, ("example.org", 5)),
        (("h", 1), None, ("h", 1)),
        (None, 4000, ("127.0.0.1", 4000)),
    ],
)
def test_parse_addr(addr: Any, port: int | None, expected: tuple[str, int]) -> None:
    assert t.parse_addr(addr, port) == expected


def test_parse_addr_defaults_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCKGATE_ADDR", raising=False)
    assert t.parse_addr() == ("127.0.0.1", 7878)
    monkeypatch.setenv("LOCKGATE_ADDR", "broker:1234")
    assert t.parse_addr() == ("broker", 1234)


@pytest.mark.parametrize("bad", ["nohost", "h:", ":1", "h:port", "h:70000"])
def test_parse_addr_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        t.parse_addr(bad)


# --- the connection against a scripted peer (no server) -------------------------------

HELLO_RESULT: dict[str, Any] = {
    "version": 1, "max_frame": 64 * 1024, "max_message": 1024, "max_batch": 100,
    "server": "lockgate/0.1.0", "node": "n1", "shards": [{"queue": "*", "node": "n1", "addr": "127.0.0.1:1"}],
}


class Peer:
    """The server end of an in-memory stream, driven step by step by a test."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.proto = ProtocolConnection("server")
        self.encoder = Encoder()
        self.hello: Request | None = None

    async def request(self) -> Request:
        while (frame := self.proto.next_frame()) is NEED_DATA:
            data = await self.stream.receive_some(65536)
            assert data, "client closed the stream"
            self.proto.receive_data(data)
        return frame

    async def reply(self, rid: int, result: dict[str, Any]) -> None:
        await self.stream.send_all(self.encoder.reply(rid, result))

    async def error(
        self, rid: int | None, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> None:
        await self.stream.send_all(self.encoder.error(rid, code, message, details))

    async def handshake(self, result: dict[str, Any] = HELLO_RESULT) -> None:
        self.hello = req = await self.request()
        assert req.op == "hello" and 1 in req.args["versions"]
        await self.reply(req.id, result)


@asynccontextmanager
async def scripted(**kwargs: Any) -> AsyncIterator[tuple[Connection, Peer]]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = Peer(server_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.handshake)
        async with Connection(client_stream, **kwargs) as conn:
            yield conn, peer


async def test_handshake_gives_server_info() -> None:
    async with scripted(client_name="tester") as (conn, peer):
        assert peer.hello is not None and peer.hello.args == {"versions": [1], "client": "tester"}
        info = conn.server_info
        assert info.version == 1 and info.max_batch == 100 and info.node == "n1"
        assert info.shards[0].queue == "*" and info.shards[0].addr == "127.0.0.1:1"


async def test_handshake_announces_a_chosen_max_frame() -> None:
    async with scripted(max_frame=2 << 20) as (_, peer):
        assert peer.hello is not None and peer.hello.args["max_frame"] == 2 << 20


async def test_replies_in_any_order_reach_their_callers() -> None:
    results: dict[int, dict[str, Any]] = {}

    async def call(i: int) -> None:
        results[i] = await conn.request("echo", {"i": i})

    async with scripted() as (conn, peer):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(call, i)
            requests = [await peer.request() for _ in range(20)]
            assert conn.in_flight == 20
            for req in reversed(requests):
                await peer.reply(req.id, {"echo": req.args["i"]})
        assert results == {i: {"echo": i} for i in range(20)}
        assert len({req.id for req in requests}) == 20


async def test_error_reply_raises_typed_error_and_connection_stays_usable() -> None:
    async with scripted() as (conn, peer):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                req = await peer.request()
                await peer.error(req.id, ErrorCode.INVALID_ARGUMENT, "max must be 1..100", {"field": "max"})
                req = await peer.request()
                await peer.reply(req.id, {"now_ms": 5})

            nursery.start_soon(serve)
            with pytest.raises(InvalidArgument) as info:
                await conn.request("consume", {"queue": "q", "max": 0})
            assert info.value.field == "max"
            assert await conn.request("ping", {}) == {"now_ms": 5}


async def test_transport_loss_fails_every_pending_request() -> None:
    outcomes: list[BaseException] = []

    async def call() -> None:
        try:
            await conn.request("consume", {"queue": "q", "wait_ms": 60_000})
        except ConnectionClosed as exc:
            outcomes.append(exc)

    async with scripted() as (conn, peer):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            nursery.start_soon(call)
            await peer.request()
            await peer.request()
            await peer.stream.aclose()
        assert len(outcomes) == 2
        assert conn.closed
        with pytest.raises(ConnectionClosed):
            await conn.request("ping", {})


async def test_fatal_error_without_id_is_named_in_the_close_reason() -> None:
    async with scripted() as (conn, peer):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                await peer.request()
                await peer.error(None, ErrorCode.MALFORMED_FRAME, "garbage")
                await peer.stream.aclose()

            nursery.start_soon(serve)
            with pytest.raises(ConnectionClosed) as info:
                await conn.request("ping", {})
        assert "MALFORMED_FRAME" in str(info.value)
        cause = info.value.__cause__
        assert isinstance(cause, LockgateError) and cause.code is ErrorCode.MALFORMED_FRAME


async def test_unreadable_data_closes_the_connection() -> None:
    async with scripted() as (conn, peer):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                await peer.request()
                await peer.stream.send_all(b"\x00\x00\x00\x01\xc1")  # 0xc1 is never valid msgpack

            nursery.start_soon(serve)
            with pytest.raises(ConnectionClosed, match="unreadable"):
                await conn.request("ping", {})


async def test_pushes_go_to_the_callback_or_are_counted() -> None:
    seen: list[Push] = []
    async with scripted(on_push=seen.append) as (conn, peer):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                req = await peer.request()
                await peer.stream.send_all(peer.encoder.push("notice", {"text": "hi"}))
                await peer.stream.send_all(peer.encoder.push("from-the-future", {}))
                await peer.reply(req.id, {"now_ms": 1})
                req = await peer.request()
                await peer.stream.send_all(peer.encoder.push("notice", {}))
                await peer.reply(req.id, {"now_ms": 2})

            nursery.start_soon(serve)
            await conn.request("ping", {})
            assert [p.name for p in seen] == ["notice", "from-the-future"]
            assert seen[0].payload == {"text": "hi"}
            conn.on_push = None
            await conn.request("ping", {})
            assert conn.unhandled_pushes == 1 and len(seen) == 2


async def test_cancelled_request_is_forgotten_and_late_reply_ignored() -> None:
    async with scripted() as (conn, peer):
        with trio.move_on_after(0) as scope:
            await conn.request("consume", {"queue": "q", "wait_ms": 1000})
        assert scope.cancelled_caught
        assert conn.in_flight == 0
        abandoned = await peer.request()
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                await peer.reply(abandoned.id, {"messages": []})
                req = await peer.request()
                await peer.reply(req.id, {"now_ms": 3})

            nursery.start_soon(serve)
            assert await conn.request("ping", {}) == {"now_ms": 3}


async def test_oversized_request_fails_locally_without_sending() -> None:
    async with scripted() as (conn, peer):
        with pytest.raises(FrameTooLarge):
            await conn.request("publish", {"queue": "q", "messages": [[b"x" * HELLO_RESULT["max_frame"]]]})
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                req = await peer.request()
                assert req.op == "ping"  # the oversized request never reached the wire
                await peer.reply(req.id, {"now_ms": 4})

            nursery.start_soon(serve)
            assert await conn.request("ping", {}) == {"now_ms": 4}


async def test_exceptions_from_the_block_propagate_unwrapped() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = Peer(server_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.handshake)
        with pytest.raises(KeyError):
            async with Connection(client_stream) as conn:
                raise KeyError("mine")
    assert conn.closed


async def test_hello_error_raises_from_connect() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = Peer(server_stream)
    async with trio.open_nursery() as nursery:

        async def refuse() -> None:
            req = await peer.request()
            await peer.error(req.id, ErrorCode.UNSUPPORTED_VERSION, "only v7")

        nursery.start_soon(refuse)
        with pytest.raises(UnsupportedVersion):
            async with Connection(client_stream):
                pytest.fail("connected despite the refused handshake")


# --- every operation against a real broker ---------------------------------------------


@pytest.fixture
async def client(broker_addr: tuple[str, int]) -> AsyncIterator[Client]:
    async with Client.connect(broker_addr) as c:
        yield c


async def test_connect_accepts_every_address_form(broker_addr: tuple[str, int]) -> None:
    host, port = broker_addr
    for args in [(broker_addr,), (f"{host}:{port}",), (host, port)]:
        async with Client.connect(*args) as c:
            assert c.info.version == 1
            assert c.info.server.startswith("lockgate/")
            assert c.info.max_batch >= 1 and c.info.max_message >= 1 and c.info.max_frame >= 1
            assert any(route.queue == "*" for route in c.info.shards)


async def test_too_small_max_frame_is_refused_at_connect(broker_addr: tuple[str, int]) -> None:
    with pytest.raises(InvalidArgument) as info:
        async with Client.connect(broker_addr, max_frame=1024):
            pytest.fail("connected with a max_frame below the minimum")
    assert info.value.field == "max_frame"


async def test_connect_refused_raises_oserror() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OSError):
        async with Client.connect("127.0.0.1", port):
            pass


async def test_ping_returns_server_clock(client: Client) -> None:
    now_ms = await client.ping()
    assert abs(now_ms - time.time() * 1000) < 60_000


async def test_low_level_request(client: Client) -> None:
    assert "now_ms" in await client.request("ping", {})
    with pytest.raises(UnknownOp):
        await client.request("frobnicate", {})
    assert await client.ping() > 0  # still usable


async def test_create_queue_is_an_idempotent_declare(client: Client) -> None:
    name = qname()
    assert await client.create_queue(name, "lifo", 2, visibility_ms=5000, max_attempts=3, max_messages=100)
    assert not await client.create_queue(name, "lifo", 2, visibility_ms=5000, max_attempts=3, max_messages=100)
    with pytest.raises(QueueExists):
        await client.create_queue(name, "fifo")
    stats = await client.queue_stats(name)
    assert (stats.name, stats.kind, stats.shards, stats.visibility_ms, stats.max_attempts, stats.max_messages) == (
        name, "lifo", 2, 5000, 3, 100,
    )
    assert stats.dead_letter is None
    assert (stats.ready, stats.leased, stats.delayed, stats.messages, stats.published) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "has space"}, "queue"),
        ({"name": ""}, "queue"),
        ({"kind": "stack"}, "kind"),
        ({"shards": 0}, "shards"),
        ({"shards": 257}, "shards"),
        ({"visibility_ms": 0}, "visibility_ms"),
        ({"max_attempts": -1}, "max_attempts"),
    ],
)
async def test_create_queue_invalid_arguments_name_the_field(
    client: Client, kwargs: dict[str, Any], field: str
) -> None:
    kwargs.setdefault("name", qname())
    with pytest.raises(InvalidArgument) as info:
        await client.create_queue(**kwargs)
    assert info.value.field == field


async def test_dead_letter_must_exist_and_differ(client: Client) -> None:
    name, missing = qname(), qname("missing")
    with pytest.raises(QueueNotFound) as not_found:
        await client.create_queue(name, dead_letter=missing)
    assert (not_found.value.field, not_found.value.queue) == ("dead_letter", missing)
    with pytest.raises(InvalidArgument) as invalid:
        await client.create_queue(name, dead_letter=name)
    assert invalid.value.field == "dead_letter"


async def test_list_queues_is_sorted_and_complete(client: Client) -> None:
    names = sorted(qname() for _ in range(3))
    for name in reversed(names):
        await client.create_queue(name)
    listed = await client.list_queues()
    assert all(isinstance(s, QueueStats) for s in listed)
    listed_names = [s.name for s in listed]
    assert listed_names == sorted(listed_names)
    assert set(names) <= set(listed_names)


async def test_delete_queue_reports_dropped_messages(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    await client.publish_batch(name, [b"a", b"b", b"c"])
    assert await client.delete_queue(name) == 3
    with pytest.raises(QueueNotFound):
        await client.queue_stats(name)
    with pytest.raises(QueueNotFound):
        await client.delete_queue(name)


async def test_publish_consume_ack_round_trip(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    before = int(time.time() * 1000)
    first = await client.publish(name, b"\x00binary\xff", key=b"k1")
    second = await client.publish(name, "text é", key="k2")
    after = int(time.time() * 1000)
    assert second > first
    got = await client.consume(name, max=10)
    published = [d.published_at for d in got]
    assert got == [
        Delivery(first, b"\x00binary\xff", 1, b"k1", 0, published[0]),
        Delivery(second, "text é".encode(), 1, b"k2", 0, published[1]),
    ]
    # the broker's wall clock when each was published (the broker runs beside us)
    assert before - 1000 <= published[0] <= published[1] <= after + 1000
    stats = await client.queue_stats(name)
    assert (stats.ready, stats.leased, stats.published) == (0, 2, 2)
    assert await client.ack(name, [first, second, second + 1000]) == AckResult(2, (second + 1000,))
    stats = await client.queue_stats(name)
    assert (stats.messages, stats.acked) == (0, 2)


async def test_publish_batch_ids_are_consecutive_in_order(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    result = await client.publish_batch(name, [f"m{i}" for i in range(50)])
    assert isinstance(result, PublishResult) and result.count == 50
    got = await client.consume(name, max=50)
    assert [d.id for d in got] == list(result.ids)
    assert [d.body for d in got] == [f"m{i}".encode() for i in range(50)]


async def test_priority_queue_orders_by_priority_then_fifo(client: Client) -> None:
    name = qname()
    await client.create_queue(name, "priority")
    await client.publish_batch(name, [Message("a", priority=1), Message("b", priority=5),
                                      Message("c", priority=3), Message("d", priority=5), b"e"])
    got = await client.consume(name, max=5)
    assert [(d.body, d.priority) for d in got] == [(b"b", 5), (b"d", 5), (b"c", 3), (b"a", 1), (b"e", 0)]


async def test_lifo_queue_delivers_newest_first(client: Client) -> None:
    name = qname()
    await client.create_queue(name, "lifo")
    for body in (b"1", b"2", b"3"):
        await client.publish(name, body)
    assert [d.body for d in await client.consume(name, max=3)] == [b"3", b"2", b"1"]


async def test_sharded_queue_with_keys(client: Client) -> None:
    name = qname()
    await client.create_queue(name, shards=4)
    ids = [await client.publish(name, f"{i}", key=f"user-{i % 3}") for i in range(12)]
    got: list[Delivery] = []
    while len(got) < 12:
        batch = await client.consume(name, max=12)
        assert batch
        got += batch
    assert sorted(d.id for d in got) == ids
    for key in (b"user-0", b"user-1", b"user-2"):  # one key lives on one shard: order holds
        same_key = [d.id for d in got if d.key == key]
        assert same_key == sorted(same_key)


async def test_nack_redelivers_with_next_attempt(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    mid = await client.publish(name, b"retry me")
    (first,) = await client.consume(name)
    assert first.attempt == 1
    assert await client.nack(name, [mid, mid + 1000]) == NackResult(1, (mid + 1000,))
    (second,) = await client.consume(name)
    assert (second.id, second.attempt, second.body) == (mid, 2, b"retry me")
    assert (await client.nack(name, [mid])).released == 1
    assert (await client.nack(name, [mid])).missing == (mid,)  # ready, not leased


async def test_delays_keep_messages_invisible(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    await client.publish(name, b"later", delay_ms=3_600_000)
    assert await client.consume(name) == []
    mid = await client.publish(name, b"now")
    (d,) = await client.consume(name)
    assert d.id == mid
    await client.nack(name, [mid], delay_ms=3_600_000)
    assert await client.consume(name) == []
    stats = await client.queue_stats(name)
    assert (stats.delayed, stats.ready, stats.leased) == (2, 0, 0)


async def test_dead_letter_after_max_attempts(client: Client) -> None:
    dlq, name = qname("dlq"), qname()
    await client.create_queue(dlq)
    await client.create_queue(name, max_attempts=1, dead_letter=dlq)
    mid = await client.publish(name, b"poison")
    await client.consume(name)
    await client.nack(name, [mid])
    assert await client.consume(name) == []
    (dead,) = await client.consume(dlq)
    assert dead.body == b"poison"


async def test_consume_wait_is_answered_when_a_message_arrives(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    events: list[str] = []
    got: list[Delivery] = []

    async def waiter() -> None:
        got.extend(await client.consume(name, wait_ms=60_000))
        events.append("consumed")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        # The held consume does not block the connection: other requests are answered.
        assert await client.ping() > 0
        assert events == [] and client.connection.in_flight == 1
        mid = await client.publish(name, b"wake up")
    assert events == ["consumed"]
    assert [d.id for d in got] == [mid]


async def test_consume_wait_times_out_empty(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    assert await client.consume(name, wait_ms=20) == []


async def test_500_concurrent_requests_on_one_connection(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    ids: dict[int, int] = {}
    pings: list[int] = []

    async def publish(i: int) -> None:
        ids[i] = await client.publish(name, f"body-{i}")

    async def ping() -> None:
        pings.append(await client.ping())

    async with trio.open_nursery() as nursery:
        for i in range(500):
            nursery.start_soon(publish, i)
            if i % 10 == 0:
                nursery.start_soon(ping)
    assert len(set(ids.values())) == 500 and len(pings) == 50
    assert client.connection.in_flight == 0
    got: list[Delivery] = []
    while len(got) < 500:
        batch = await client.consume(name, max=min(500, client.info.max_batch))
        assert batch
        got += batch
    assert {d.id: d.body for d in got} == {ids[i]: f"body-{i}".encode() for i in range(500)}


async def test_missing_queue_errors(client: Client) -> None:
    name = qname("missing")
    with pytest.raises(QueueNotFound) as info:
        await client.queue_stats(name)
    assert (info.value.field, info.value.queue) == ("queue", name)
    for call in (
        client.queue_stats(name), client.publish(name, b"x"), client.publish_batch(name, [b"x"]),
        client.consume(name), client.ack(name, [1]), client.nack(name, [1]),
    ):
        with pytest.raises(QueueNotFound):
            await call


async def test_argument_errors(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    with pytest.raises(InvalidArgument) as info:
        await client.consume(name, max=0)
    assert info.value.field == "max"
    with pytest.raises(InvalidArgument) as info:
        await client.publish_batch(name, [b"ok", Message(b"x", priority=256)])
    assert info.value.field == "messages[1].priority"
    with pytest.raises(InvalidArgument) as info:
        await client.publish_batch(name, [])
    assert info.value.field == "messages"
    with pytest.raises(InvalidArgument) as info:
        await client.nack(name, [1], delay_ms=-1)
    assert info.value.field == "delay_ms"
    assert (await client.queue_stats(name)).published == 0


async def test_message_too_large_names_the_entry_and_publishes_nothing(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    too_big = b"x" * (client.info.max_message + 1)
    with pytest.raises(MessageTooLarge) as info:
        await client.publish_batch(name, [b"ok", too_big])
    assert info.value.index == 1
    assert (await client.queue_stats(name)).published == 0


async def test_batch_over_max_batch_is_refused(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    with pytest.raises(LimitExceeded):
        await client.publish_batch(name, [b""] * (client.info.max_batch + 1))


async def test_queue_full_is_atomic(client: Client) -> None:
    name = qname()
    await client.create_queue(name, max_messages=2)
    await client.publish(name, b"1")
    with pytest.raises(QueueFull):
        await client.publish_batch(name, [b"2", b"3"])
    assert (await client.queue_stats(name)).messages == 1


async def test_frame_over_server_limit_fails_locally(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    with pytest.raises(FrameTooLarge):
        await client.publish(name, b"x" * (client.info.max_frame + 1))
    assert await client.ping() > 0
    assert (await client.queue_stats(name)).published == 0


async def test_close_fails_pending_requests(client: Client) -> None:
    name = qname()
    await client.create_queue(name)
    outcome: list[BaseException] = []

    async def waiter() -> None:
        with pytest.raises(ConnectionClosed) as info:
            await client.consume(name, wait_ms=60_000)
        outcome.append(info.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await client.aclose()
    assert len(outcome) == 1
    with pytest.raises(ConnectionClosed):
        await client.ping()
