"""The blocking client: pipelining by id, timeouts, batching, and every operation.

Most tests run against a real broker (``sync_broker_addr``); transport loss is shown
with a scripted peer on a thread, since a real broker cannot be made to misbehave.
"""
from __future__ import annotations

import itertools
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from client import (
    AckResult,
    ConnectionClosed,
    Delivery,
    FrameTooLarge,
    InvalidArgument,
    Message,
    NackResult,
    QueueExists,
    QueueFull,
    QueueNotFound,
    SyncClient,
    UnknownOp,
)
from protocol import NEED_DATA, Encoder, Request
from protocol import Connection as ProtocolConnection

_names = itertools.count()


def qname(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_names)}"


@pytest.fixture
def client(sync_broker_addr: tuple[str, int]) -> Iterator[SyncClient]:
    with SyncClient(sync_broker_addr, timeout=30) as c:
        yield c


@pytest.fixture
def queue(client: SyncClient) -> str:
    name = qname()
    client.create_queue(name)
    return name


# --- connecting ------------------------------------------------------------------------


def test_connect_forms_and_server_info(sync_broker_addr: tuple[str, int]) -> None:
    host, port = sync_broker_addr
    for args in [(sync_broker_addr,), (f"{host}:{port}",), (host, port)]:
        with SyncClient(*args) as c:
            assert c.server_info.version == 1
            assert c.server_info.server.startswith("lockgate/")
            assert c.ping() > 0
        assert c.closed


def test_connection_refused_raises_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        SyncClient("127.0.0.1", port)


def test_closed_client_raises_connection_closed(sync_broker_addr: tuple[str, int]) -> None:
    c = SyncClient(sync_broker_addr)
    c.close()
    with pytest.raises(ConnectionClosed):
        c.ping()


# --- operations --------------------------------------------------------------------------


def test_every_operation(client: SyncClient) -> None:
    dlq, name = qname("dlq"), qname()
    assert client.create_queue(dlq)
    assert client.create_queue(name, "fifo", 1, visibility_ms=60_000, max_attempts=2, dead_letter=dlq)
    assert not client.create_queue(name, "fifo", 1, visibility_ms=60_000, max_attempts=2, dead_letter=dlq)
    with pytest.raises(QueueExists):
        client.create_queue(name, "lifo")

    first = client.publish(name, "hello", key="k")
    batch = client.publish_batch(name, [b"a", Message(b"b", priority=9)])
    assert batch.first_id > first and batch.count == 2

    got = client.consume(name, max=3)
    assert got[0] == Delivery(first, b"hello", 1, b"k", 0, got[0].published_at)
    assert got[0].published_at == client.message_status(name, [first])[0].published_at > 0
    assert [d.id for d in got[1:]] == list(batch.ids)
    assert client.ack(name, [got[0].id, 10**12]) == AckResult(1, (10**12,))
    assert client.nack(name, [got[1].id]) == NackResult(1, ())

    stats = client.queue_stats(name)
    assert (stats.name, stats.dead_letter, stats.visibility_ms, stats.max_attempts) == (name, dlq, 60_000, 2)
    assert (stats.ready, stats.leased, stats.published, stats.acked) == (1, 1, 3, 1)
    assert {dlq, name} <= {s.name for s in client.list_queues()}

    assert client.delete_queue(name) == 2
    with pytest.raises(QueueNotFound):
        client.queue_stats(name)


def test_typed_errors_leave_the_connection_usable(client: SyncClient, queue: str) -> None:
    with pytest.raises(QueueNotFound):
        client.publish(qname("missing"), b"x")
    with pytest.raises(InvalidArgument) as info:
        client.create_queue(qname(), shards=0)
    assert info.value.field == "shards"
    with pytest.raises(UnknownOp):
        client.request("frobnicate", {})
    assert client.publish(queue, b"still fine") > 0


def test_oversized_request_fails_locally(client: SyncClient, queue: str) -> None:
    with pytest.raises(FrameTooLarge):
        client.publish(queue, b"x" * (client.server_info.max_frame + 1))
    assert client.queue_stats(queue).published == 0


# --- pipelining --------------------------------------------------------------------------


def test_results_can_be_taken_in_any_order(client: SyncClient, queue: str) -> None:
    rids = [client.submit("publish", {"queue": queue, "messages": [[f"{i}".encode()]]}) for i in range(200)]
    ping = client.submit("ping", {})
    assert "now_ms" in client.result(ping)
    ids = [client.result(rid)["first_id"] for rid in reversed(rids)]
    assert len(set(ids)) == 200
    with pytest.raises(KeyError):
        client.result(rids[0])  # already taken


def test_request_many_returns_errors_in_place(client: SyncClient, queue: str) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [
        ("publish", {"queue": queue, "messages": [[b"1"]]}),
        ("queue_stats", {"queue": qname("missing")}),
        ("publish", {"queue": queue, "messages": [[b"2"]]}),
    ]
    first, error, last = client.request_many(calls, window=2)
    assert isinstance(error, QueueNotFound)
    assert isinstance(first, dict) and isinstance(last, dict)
    assert client.queue_stats(queue).published == 2


def test_request_many_with_a_small_window(client: SyncClient, queue: str) -> None:
    calls = [("publish", {"queue": queue, "messages": [[b"x"]]}) for _ in range(1000)]
    results = client.request_many(calls, window=16)
    assert len({r["first_id"] for r in results if isinstance(r, dict)}) == 1000


def test_big_pipelined_traffic_does_not_deadlock(client: SyncClient, queue: str) -> None:
    body = b"z" * (256 * 1024)
    rids = []
    for _ in range(64):  # ~16 MiB each way, submitted before any reply is read
        rids.append(client.submit("publish", {"queue": queue, "messages": [[body]]}))
        rids.append(client.submit("consume", {"queue": queue, "max": 1}))
    results = [client.result(rid) for rid in rids]
    consumed = [m for r in results if "messages" in r for m in r["messages"]]
    published = client.queue_stats(queue).published
    assert published == 64
    assert all(m[1] == body for m in consumed)


def test_publish_many_splits_into_batches(client: SyncClient, queue: str) -> None:
    results = client.publish_many(queue, (f"m{i}" for i in range(20)), batch_size=7)
    assert [r.count for r in results] == [7, 7, 6]
    got = client.consume(queue, max=20)
    assert [d.body for d in got] == [f"m{i}".encode() for i in range(20)]
    assert [d.id for d in got] == [i for r in results for i in r.ids]


def test_publish_many_stops_at_the_first_error(client: SyncClient) -> None:
    name = qname()
    client.create_queue(name, max_messages=10)
    with pytest.raises(QueueFull):
        client.publish_many(name, [b"x"] * 25, batch_size=10)
    assert client.queue_stats(name).messages == 10


# --- timeouts ----------------------------------------------------------------------------


def test_timed_out_result_can_be_taken_later(client: SyncClient, queue: str) -> None:
    rid = client.submit("consume", {"queue": queue, "wait_ms": 60_000})
    client.ping()  # answered after the consume is held
    with pytest.raises(TimeoutError):
        client.result(rid, timeout=0.05)
    mid = client.publish(queue, b"arrived")  # the connection is still usable
    assert client.result(rid)["messages"][0][0] == mid


def test_consume_wait_returns_a_message_published_elsewhere(
    client: SyncClient, queue: str, sync_broker_addr: tuple[str, int]
) -> None:
    rid = client.submit("consume", {"queue": queue, "wait_ms": 60_000})
    client.ping()  # answered in order after the consume, so the consume is now held
    with SyncClient(sync_broker_addr) as other:
        mid = other.publish(queue, b"for the waiter")
    assert client.result(rid)["messages"][0][:2] == [mid, b"for the waiter"]


def test_consume_wait_empty(client: SyncClient, queue: str) -> None:
    assert client.consume(queue, wait_ms=20) == []


# --- a scripted peer -----------------------------------------------------------------------

HELLO = {
    "version": 1, "max_frame": 1 << 20, "max_message": 1024, "max_batch": 10,
    "server": "lockgate/0.1.0", "node": "n", "shards": [],
}


def scripted_peer(script: Callable[[socket.socket, Callable[[], Request]], None]) -> tuple[str, int]:
    """Listen once; after the handshake hand the socket to ``script`` on a thread."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = listener.accept()
        listener.close()
        proto = ProtocolConnection("server")

        def next_request() -> Request:
            while (frame := proto.next_frame()) is NEED_DATA:
                data = conn.recv(65536)
                if not data:
                    raise EOFError
                proto.receive_data(data)
            return frame

        with conn:
            hello = next_request()
            conn.sendall(Encoder().reply(hello.id, HELLO))
            script(conn, next_request)

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[:2]


def test_transport_loss_raises_connection_closed() -> None:
    def script(conn: socket.socket, next_request: Callable[[], Request]) -> None:
        next_request()
        next_request()  # then the socket closes with both unanswered

    with SyncClient(scripted_peer(script)) as c:
        first = c.submit("consume", {"queue": "q", "wait_ms": 60_000})
        second = c.submit("ping", {})
        with pytest.raises(ConnectionClosed, match="closed by the server"):
            c.result(second)
        with pytest.raises(ConnectionClosed):
            c.result(first)
        assert c.closed


def test_replies_buffered_before_a_close_are_still_returned() -> None:
    def script(conn: socket.socket, next_request: Callable[[], Request]) -> None:
        enc = Encoder()
        first, second = next_request(), next_request()
        conn.sendall(enc.push("notice", {}) + enc.reply(first.id, {"n": 1}) + enc.reply(second.id, {"n": 2}))

    with SyncClient(scripted_peer(script)) as c:
        first = c.submit("ping", {})
        second = c.submit("ping", {})
        assert c.result(second) == {"n": 2}
        with pytest.raises(ConnectionClosed):
            c.ping()
        assert c.result(first) == {"n": 1}
        assert c.unhandled_pushes == 1
