"""The typed async client.

    async with Client.connect("127.0.0.1:7878") as client:
        await client.create_queue("jobs")
        await client.publish("jobs", b"hello")
        for d in await client.consume("jobs", max=10, wait_ms=1000):
            ...
        await client.ack("jobs", [d.id])

``Client.connect`` is an async context manager (not awaitable): the connection's reader
task lives in a nursery that the ``async with`` block scopes. One ``Client`` may be used
by many tasks at once; their requests are pipelined on the single connection. Failed
requests raise the :mod:`client.errors` subclass for their error code; a lost connection
raises :class:`~client.errors.ConnectionClosed`. Bodies and keys accept ``bytes`` or
``str`` (sent as UTF-8). There are no built-in timeouts: use ``trio.move_on_after``.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from protocol import Op

from . import types as t
from .connection import DEFAULT_CLIENT_NAME, Connection, PushHandler, open_connection
from .types import (
    AckResult,
    Bytes,
    Delivery,
    Message,
    NackResult,
    PublishResult,
    QueueStats,
    ServerInfo,
)

_PUBLISH = Op.PUBLISH.value
_CONSUME = Op.CONSUME.value
_ACK = Op.ACK.value


class Client:
    """Typed operations over one pipelined :class:`~client.connection.Connection`."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._request = connection.request

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        addr: str | tuple[str, int] | None = None,
        port: int | None = None,
        *,
        max_frame: int | None = None,
        client_name: str = DEFAULT_CLIENT_NAME,
        on_push: PushHandler | None = None,
    ) -> AsyncIterator[Client]:
        """Connect and handshake: ``async with Client.connect(addr) as client``.

        ``addr`` is ``"host:port"``, ``(host, port)``, or a host with ``port``; when
        omitted, ``$LOCKGATE_ADDR`` or ``127.0.0.1:7878``. ``max_frame`` (largest frame
        this client accepts) defaults to the server's own limit. The connection closes
        when the block exits.
        """
        host, port_ = t.parse_addr(addr, port)
        async with open_connection(
            host, port_, max_frame=max_frame, client_name=client_name, on_push=on_push
        ) as conn:
            yield cls(conn)

    @property
    def info(self) -> ServerInfo:
        """What the server announced in ``hello`` (limits, version, shard map)."""
        return self.connection.server_info

    async def aclose(self) -> None:
        """Close the connection now (the ``async with`` block does this on exit)."""
        await self.connection.aclose()

    async def request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send any operation with raw ``args``; returns the raw result map or raises its typed error."""
        return await self._request(op, args)

    async def ping(self) -> int:
        """Round-trip to the server; returns its wall clock in ms since the epoch."""
        return (await self._request(Op.PING.value, {}))["now_ms"]

    async def create_queue(
        self,
        name: str,
        kind: str = "fifo",
        shards: int = 1,
        visibility_ms: int | None = None,
        max_attempts: int | None = None,
        dead_letter: str | None = None,
        max_messages: int | None = None,
    ) -> bool:
        """Declare a queue; ``True`` if created, ``False`` if it already existed with these settings.

        ``None`` settings take the server default. Raises ``QueueExists`` when the name
        is taken with different settings.
        """
        args = t.create_queue_args(name, kind, shards, visibility_ms, max_attempts, dead_letter, max_messages)
        return (await self._request(Op.QUEUE_CREATE.value, args))["created"]

    async def delete_queue(self, name: str) -> int:
        """Delete a queue; returns how many messages were dropped with it."""
        return (await self._request(Op.QUEUE_DELETE.value, {"queue": name}))["messages"]

    async def list_queues(self) -> list[QueueStats]:
        """Stats of every queue, sorted by name."""
        return t.queue_list(await self._request(Op.QUEUE_LIST.value, {}))

    async def queue_stats(self, name: str) -> QueueStats:
        """Settings and counters of one queue."""
        return QueueStats.from_wire(await self._request(Op.QUEUE_STATS.value, {"queue": name}))

    async def publish(
        self,
        queue: str,
        body: Bytes,
        *,
        key: Bytes | None = None,
        priority: int | None = None,
        delay_ms: int | None = None,
    ) -> int:
        """Publish one message; returns its id once the server has confirmed it."""
        entry = t.message_entry(body, key, priority, delay_ms)
        return (await self._request(_PUBLISH, {"queue": queue, "messages": [entry]}))["first_id"]

    async def publish_batch(self, queue: str, messages: Iterable[Bytes | Message]) -> PublishResult:
        """Publish many messages atomically in one request (at most ``info.max_batch``).

        Each item is a body or a :class:`~client.types.Message`; ids are consecutive in
        item order.
        """
        entries = t.message_entries(messages)
        return t.publish_result(await self._request(_PUBLISH, {"queue": queue, "messages": entries}))

    async def consume(
        self, queue: str, max: int = 1, *, visibility_ms: int | None = None, wait_ms: int = 0
    ) -> list[Delivery]:
        """Lease up to ``max`` messages; with ``wait_ms`` the server holds the reply until
        messages arrive or the time passes (the result may then be empty)."""
        return t.deliveries(await self._request(_CONSUME, t.consume_args(queue, max, visibility_ms, wait_ms)))

    async def ack(self, queue: str, ids: Iterable[int]) -> AckResult:
        """Delete delivered messages by id."""
        return t.ack_result(await self._request(_ACK, t.ack_args(queue, ids)))

    async def nack(self, queue: str, ids: Iterable[int], *, delay_ms: int = 0) -> NackResult:
        """Return leased messages to the queue (ready again after ``delay_ms``)."""
        return t.nack_result(await self._request(Op.NACK.value, t.nack_args(queue, ids, delay_ms)))
