"""The async client on asyncio and on trio, against a real broker (a child process).

Each test is a plain function that runs its body with ``anyio.run(..., backend=...)``,
once per backend, so the very same client code runs under ``asyncio.run`` and
``trio.run``. The keepalive test runs on trio with a MockClock and an in-process broker.
"""
from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import trio
import trio.testing

from client import Client, ConnectionClosed, ConnectionTimeout, Message, QueueNotFound
from tests.broker_process import BrokerProcess

BACKENDS = ["asyncio", "trio"]


def qname() -> str:
    return f"be-{uuid.uuid4().hex[:10]}"


def run(backend: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return anyio.run(fn, *args, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_kind_of_call_on_both_backends(backend: str, sync_broker_addr: tuple[str, int]) -> None:
    async def main() -> None:
        q = qname()
        async with Client.connect(sync_broker_addr) as c:
            assert await c.create_queue(q, max_attempts=3)
            first = await c.publish(q, b"one", key=b"k")
            batch = await c.publish_batch(q, [b"two", Message(b"three", priority=1)])
            assert list(batch.ids) == [first + 1, first + 2]
            got = await c.consume(q, max=10)
            assert [d.body for d in got] == [b"one", b"two", b"three"]
            assert (await c.ack(q, [d.id for d in got])).acked == 3
            with pytest.raises(QueueNotFound):
                await c.publish(qname(), b"x")

            async def publisher(i: int) -> None:  # many tasks share the one connection
                for j in range(25):
                    await c.publish(q, b"%d-%d" % (i, j))

            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(publisher, i)
            assert (await c.queue_stats(q)).ready == 200
            await c.purge_queue(q)

            with anyio.move_on_after(0.05) as scope:  # cancelling a held consume
                await c.consume(q, wait_ms=60_000)
            assert scope.cancelled_caught
            assert await c.ping() > 0

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_subscription_acks_and_nacks_by_context_manager(backend: str, sync_broker_addr: tuple[str, int]) -> None:
    async def main() -> None:
        q = qname()
        async with Client.connect(sync_broker_addr) as c:
            await c.create_queue(q, retry_delay_ms=0)
            await c.publish_batch(q, [b"ok", b"fails once", b"ok too"])
            seen: list[tuple[bytes, int]] = []
            failed = False
            with anyio.fail_after(30):
                async with c.subscribe(q, credit=2) as sub:
                    async for msg in sub:
                        seen.append((msg.body, msg.attempt))
                        async with msg.process(reraise=False):
                            if msg.body == b"fails once" and not failed:
                                failed = True
                                raise ValueError("boom")
                        if len(seen) == 4:
                            break
            assert sorted(seen) == [(b"fails once", 1), (b"fails once", 2), (b"ok", 1), (b"ok too", 1)]
            stats = await c.queue_stats(q)
            assert (stats.messages, stats.acked, stats.nacked) == (0, 3, 1)

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lost_connection_raises_connection_closed(backend: str, tmp_path: Any) -> None:
    async def main(proc: BrokerProcess) -> None:
        q = qname()
        async with Client.connect(proc.addr) as c:
            await c.create_queue(q)
            async with c.subscribe(q) as sub:
                await anyio.to_thread.run_sync(proc.kill)
                with anyio.fail_after(30), pytest.raises(ConnectionClosed):
                    await sub.__anext__()
            with pytest.raises(ConnectionClosed):
                await c.ping()

    with BrokerProcess(tmp_path / "data") as proc:
        run(backend, main, proc)


def test_asyncio_run_directly(sync_broker_addr: tuple[str, int]) -> None:
    """What an asyncio service writes: no anyio in sight."""
    async def main() -> list[bytes]:
        q = qname()
        async with Client.connect(sync_broker_addr) as c:
            await c.create_queue(q)
            await c.publish(q, "hello")
            async with asyncio.timeout(30), c.subscribe(q) as sub:
                async for msg in sub:
                    async with msg:
                        return [msg.body]
        return []

    assert asyncio.run(main()) == [b"hello"]


def test_tcp_keepalive_is_on(sync_broker_addr: tuple[str, int]) -> None:
    async def main() -> None:
        async with Client.connect(sync_broker_addr, keepalive_s=20) as c:
            sock = c.connection._stream.extra(anyio.abc.SocketAttribute.raw_socket)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 20

    run("asyncio", main)


# --- keepalive against the broker's idle timeout (trio, in-process broker, MockClock) ---------


async def test_an_idle_client_pings_and_is_not_cut_off(
        autojump_clock: trio.testing.MockClock, broker: Any, broker_addr: tuple[str, int]) -> None:
    async with Client.connect(broker_addr) as c:                   # keepalive_s: 60
        await trio.sleep(3 * 3600)                                  # three idle hours (idle timeout: 5 min)
        assert await c.ping() > 0
        assert broker.connections == 1 and broker.connections_accepted == 1


async def test_without_keepalive_the_idle_timeout_closes_it(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    async with Client.connect(broker_addr, keepalive_s=None) as c:
        await trio.sleep(301)
        with pytest.raises(ConnectionClosed) as info:
            await c.ping()
    assert isinstance(info.value.__cause__, ConnectionTimeout)


def test_keepalive_must_be_positive() -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            async with Client.connect("127.0.0.1:1", keepalive_s=0):
                pass

    run("asyncio", main)
