"""A TCP proxy between a client and a real broker that loses connections on purpose.

It runs in the test's own event loop (anyio: trio or asyncio) and forwards bytes both
ways. ``cut_reply_to(op)`` makes it forward the next request with that op to the broker
and then close the connection instead of forwarding the reply: the request took effect,
the client never hears of it (a lost reply, the case dedup ids exist for). ``cut_all()``
closes every connection now; ``refusing`` closes new connections at once (a broker that
is unreachable).
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup

from protocol import NEED_DATA, Request
from protocol import Connection as ProtocolConnection


class CutProxy:
    def __init__(self, upstream: tuple[str, int], tasks: TaskGroup) -> None:
        self.upstream = upstream
        self.port = 0
        self.refusing = False
        #: Connections accepted and forwarded so far.
        self.accepted = 0
        self._tasks = tasks
        self._cut_op: str | None = None
        self._scopes: set[anyio.CancelScope] = set()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut_reply_to(self, op: str) -> None:
        """Drop the connection that carries the next ``op`` request, once the broker replies."""
        self._cut_op = op

    def cut_all(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            if self.refusing:
                return
            self.accepted += 1
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    async with await anyio.connect_tcp(*self.upstream) as broker:
                        await self._forward(client, broker, scope)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass
                finally:
                    self._scopes.discard(scope)

    async def _forward(self, client: SocketStream, broker: SocketStream, scope: anyio.CancelScope) -> None:
        armed = False

        async def to_broker() -> None:
            nonlocal armed
            proto = ProtocolConnection("server")
            async for data in client:
                proto.receive_data(data)
                while (frame := proto.next_frame()) is not NEED_DATA:
                    if isinstance(frame, Request) and frame.op == self._cut_op:
                        self._cut_op = None
                        armed = True
                await broker.send(data)
            scope.cancel()

        async def to_client() -> None:
            async for data in broker:
                if armed:
                    scope.cancel()  # the reply goes nowhere; both sides are closed
                    return
                await client.send(data)
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(to_broker)
            tg.start_soon(to_client)


@asynccontextmanager
async def cut_proxy(upstream: tuple[str, int]) -> AsyncIterator[CutProxy]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        proxy = CutProxy(upstream, tg)
        proxy.port = listener.extra(SocketAttribute.local_port)
        tg.start_soon(listener.serve, proxy._handle)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
