"""The typed async client.

    async with Client.connect("127.0.0.1:7878") as client:
        await client.create_queue("jobs")
        await client.publish("jobs", b"hello")
        for d in await client.consume("jobs", max=10, wait_ms=1000):
            ...
        await client.ack("jobs", [d.id])

        async with client.subscribe("jobs", credit=64) as sub:   # pushed, no polling
            async for msg in sub:
                async with msg:      # ack on success, nack (with the error) on an exception
                    ...

It runs on trio and on asyncio alike (it is written against anyio): the same code works
under ``trio.run(main)`` and ``asyncio.run(main())``.

``Client.connect`` is an async context manager (not awaitable): the connection's reader
task lives in a task group that the ``async with`` block scopes. One ``Client`` may be
used by many tasks at once; their requests are pipelined on the single connection. Failed
requests raise the :mod:`client.errors` subclass for their error code; a lost connection
raises :class:`~client.errors.ConnectionClosed`. Bodies and keys accept ``bytes`` or
``str`` (sent as UTF-8). There are no built-in timeouts: use ``anyio.fail_after`` (or
``trio.fail_after``, ``asyncio.timeout``). An idle connection pings the broker now and
then (``keepalive_s``, :mod:`client.connection`) so the broker's idle timeout does not
close it.

The client routes the PUSH frames of its subscriptions itself (:mod:`client.subscription`);
``on_push`` gets every other push.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from protocol import DEFAULT_CREDIT, Push

from . import ops
from . import types as t
from .connection import DEFAULT_CLIENT_NAME, DEFAULT_KEEPALIVE_S, Connection, PushHandler, open_connection
from .pushes import PushRouter
from .subscription import Subscription
from .types import ServerInfo, Transaction


class Client:
    """Typed operations over one pipelined :class:`~client.connection.Connection`."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._request = connection.request
        user_push = connection.on_push

        def unrouted(push: Push) -> None:
            if user_push is not None:
                user_push(push)
            else:
                connection.unhandled_pushes += 1

        self._pushes = PushRouter(unrouted)
        connection.on_push = self._pushes.dispatch
        connection.on_close = self._pushes.lost

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
        keepalive_s: float | None = DEFAULT_KEEPALIVE_S,
    ) -> AsyncIterator[Client]:
        """Connect and handshake: ``async with Client.connect(addr) as client``.

        ``addr`` is ``"host:port"``, ``(host, port)``, or a host with ``port``; when
        omitted, ``$LOCKGATE_ADDR`` or ``127.0.0.1:7878``. ``max_frame`` (largest frame
        this client accepts) defaults to the server's own limit. ``on_push`` gets the
        PUSH frames that are not for this client's subscriptions. ``keepalive_s``
        (``None``: off) is how often an idle connection checks in with a ``ping``. The
        connection closes when the block exits.
        """
        host, port_ = t.parse_addr(addr, port)
        if keepalive_s is not None and not keepalive_s > 0:
            raise ValueError(f"keepalive_s must be positive or None, not {keepalive_s!r}")
        async with open_connection(
            host, port_, max_frame=max_frame, client_name=client_name, on_push=on_push, keepalive_s=keepalive_s
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

    # The typed operations, one line each, all from the op table in client/ops.py.
    ping = ops.ping.async_method()
    create_queue = ops.create_queue.async_method()
    delete_queue = ops.delete_queue.async_method()
    list_queues = ops.list_queues.async_method()
    queue_stats = ops.queue_stats.async_method()
    publish = ops.publish.async_method()
    publish_batch = ops.publish_batch.async_method()
    consume = ops.consume.async_method()
    ack = ops.ack.async_method()
    nack = ops.nack.async_method()
    purge_queue = ops.purge_queue.async_method()
    peek = ops.peek.async_method()
    message_status = ops.message_status.async_method()
    extend = ops.extend.async_method()
    reject = ops.reject.async_method()
    redrive = ops.redrive.async_method()
    create_topic = ops.create_topic.async_method()
    delete_topic = ops.delete_topic.async_method()
    list_topics = ops.list_topics.async_method()
    topic_stats = ops.topic_stats.async_method()
    publish_topic = ops.publish_topic.async_method()
    create_group = ops.create_group.async_method()
    delete_group = ops.delete_group.async_method()
    group_stats = ops.group_stats.async_method()
    seek_group = ops.seek_group.async_method()
    txn = ops.txn.async_method()

    def transaction(self) -> Transaction:
        """Steps to commit as one ``txn``: ``.ack(...)``, ``.publish(...)``,
        ``.publish_topic(...)``, then ``commit()``."""
        return Transaction(self)

    def subscribe(
        self,
        queue: str,
        *,
        credit: int = DEFAULT_CREDIT,
        visibility_ms: int | None = None,
        auto_ack: bool = False,
    ) -> Subscription:
        """A push subscription to ``queue``: ``async with client.subscribe(queue) as sub:
        async for msg in sub: async with msg: ...`` (see :mod:`client.subscription`).

        At most ``credit`` (1..``max_batch``) pushed messages are unacked at once; each is
        leased for ``visibility_ms`` (default: the queue's). With ``auto_ack`` the broker
        deletes each message as it pushes it (at most once) and ``async with msg`` does
        nothing. Subscribing happens when the ``async with`` block is entered.
        """
        return Subscription(self, queue, credit, visibility_ms, auto_ack)
