"""Reconnect with backoff (client/reconnect.py), on asyncio and on trio.

- the policy and the dedup ids, without I/O;
- against a real broker behind a proxy that loses connections on purpose
  (tests/client/cutproxy.py): a publish whose reply is lost is sent again and stored
  once, other requests in flight raise, subscriptions resubscribe, a queue deleted
  meanwhile ends its subscription, and the client gives up after ``max_attempts``.

The broker restart (a SIGKILLed child and its spill file) is in test_spill.py.
"""
from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from client import Client, ConnectionClosed, SyncClient, TopicMessage
from client.reconnect import DedupIds, Reconnect

from .cutproxy import cut_proxy

BACKENDS = ["asyncio", "trio"]
FAST = Reconnect(initial_delay_s=0.01, max_delay_s=0.05)


def qname() -> str:
    return f"rc-{uuid.uuid4().hex[:10]}"


def run(backend: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return anyio.run(fn, *args, backend=backend)


# --- the policy -------------------------------------------------------------------------


def test_delays_grow_to_the_cap_and_jitter_only_shortens() -> None:
    policy = Reconnect(initial_delay_s=0.1, max_delay_s=1.0, multiplier=2.0, jitter=0.5)
    assert [policy.delay(n, 0.0) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.delay(2, 0.999) == pytest.approx(0.4 * (1 - 0.5 * 0.999))
    assert policy.delay(10_000, 0.0) == 1.0                          # no overflow
    assert Reconnect(jitter=0).delay(0, 0.9) == 0.1


@pytest.mark.parametrize("bad", [
    {"initial_delay_s": 0}, {"max_delay_s": 0.01}, {"multiplier": 0.5}, {"jitter": 1.5},
    {"max_attempts": 0}, {"publish_retry_s": -1}, {"initial_delay_s": True},
])
def test_bad_policies_are_refused_naming_the_field(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Reconnect(**bad)


def test_dedup_ids_fill_only_entries_without_one() -> None:
    ids = DedupIds()
    entries: list[list[Any]] = [[b"a"], [b"b", b"k", 3], [b"c", None, None, None, None, b"mine"],
                                [b"d", None, None, None, None, None, 1_700_000_000_000]]
    ids.fill(entries)
    made = [entries[0][5], entries[1][5], entries[3][5]]
    assert entries[0][:5] == [b"a", None, None, None, None] and entries[1][:3] == [b"b", b"k", 3]
    assert entries[2] == [b"c", None, None, None, None, b"mine"]
    assert entries[3][6] == 1_700_000_000_000
    assert len(set(made)) == 3 and all(len(x) == 16 and x[:8] == made[0][:8] for x in made)
    assert DedupIds()()[:8] != made[0][:8]                            # another client, another prefix


def test_topic_publishes_get_dedup_ids_at_their_own_index() -> None:
    """One rule for both publish ops: every message of a retried ``publish`` or
    ``topic_publish`` carries a dedup id (its op's element 5 or 3); other ops are not retried."""
    ids = DedupIds()
    entries: list[list[Any]] = [[b"a"], [b"b", b"k"], [b"c", None, {"h": "1"}, b"mine"], [b"d", None, None, None]]
    assert ids.prepare_retry("topic_publish", {"topic": "t", "messages": entries})
    assert [len(e) for e in entries] == [4, 4, 4, 4]
    assert entries[1][:3] == [b"b", b"k", None] and entries[2] == [b"c", None, {"h": "1"}, b"mine"]
    assert all(type(e[3]) is bytes and len(e[3]) == 16 for e in (entries[0], entries[1], entries[3]))
    queue: list[list[Any]] = [[b"a"]]
    assert ids.prepare_retry("publish", {"queue": "q", "messages": queue}) and len(queue[0]) == 6
    steps: list[Any] = [{"op": "topic_publish", "topic": "t", "messages": [[b"x"]]}]
    assert not ids.prepare_retry("txn", {"steps": steps}) and steps[0]["messages"] == [[b"x"]]


def test_spill_needs_reconnect(tmp_path: Any) -> None:
    from client.spill import Spill

    with pytest.raises(ValueError, match="reconnect"):
        Client.connect("127.0.0.1:1", spill=Spill(tmp_path / "s"))


# --- against a real broker, through the proxy ------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_publish_whose_reply_was_lost_is_stored_once(backend: str, sync_broker_addr: tuple[str, int]) -> None:
    q = qname()

    async def main() -> None:
        async with cut_proxy(sync_broker_addr) as proxy, Client.connect(proxy.addr, reconnect=FAST) as c:
            await c.create_queue(q)
            proxy.cut_reply_to("publish")
            with anyio.fail_after(30):
                first = await c.publish(q, b"exactly once")          # stored, reply lost, sent again
                batch = await c.publish_batch(q, [b"b1", b"b2"])     # after the reconnect
            assert (c.reconnects, c.publishes_retried) == (1, 1)
            assert proxy.accepted == 2
            assert list(batch.ids) == [first + 1, first + 2]

    run(backend, main)
    with SyncClient(sync_broker_addr) as lg:
        assert [m.body for m in lg.peek(q, 10)] == [b"exactly once", b"b1", b"b2"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_topic_publish_whose_reply_was_lost_is_stored_once(backend: str, sync_broker_addr: tuple[str, int]) -> None:
    """The rule of ``publish`` for ``publish_topic``: sent again with the same dedup ids,
    the retry's reply names every message as stored before the loss. The control: a
    topic that keeps no dedup ids stores the retried message twice."""
    t, u = qname(), qname()

    async def main() -> None:
        async with cut_proxy(sync_broker_addr) as proxy, Client.connect(proxy.addr, reconnect=FAST) as c:
            await c.create_topic(t)
            await c.create_topic(u, dedup_window_ms=0)
            proxy.cut_reply_to("topic_publish")
            with anyio.fail_after(30):
                lost = await c.publish_topic(t, [b"once", TopicMessage(b"mine", dedup_id=b"order-1")])
                after = await c.publish_topic(t, [b"next"])
            assert (c.reconnects, c.publishes_retried) == (1, 1)
            assert (lost.count, lost.duplicates, lost.message_ids()) == (0, ((0, 1), (1, 2)), [1, 2])
            assert (after.first_id, after.count) == (3, 1)
            assert (await c.topic_stats(t)).published == 3
            proxy.cut_reply_to("topic_publish")
            with anyio.fail_after(30):
                await c.publish_topic(u, [b"twice"])
            assert (await c.topic_stats(u)).published == 2

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_dedup_a_retry_could_duplicate(backend: str, sync_broker_addr: tuple[str, int]) -> None:
    """The control: the same lost reply on a queue that keeps no dedup ids stores the
    message twice, and without ``retry_publishes`` the publish raises."""
    q, r = qname(), qname()

    async def main() -> None:
        async with cut_proxy(sync_broker_addr) as proxy, Client.connect(proxy.addr, reconnect=FAST) as c:
            await c.create_queue(q, dedup_window_ms=0)
            proxy.cut_reply_to("publish")
            with anyio.fail_after(30):
                await c.publish(q, b"twice")
        no_retry = Reconnect(initial_delay_s=0.01, max_delay_s=0.05, retry_publishes=False)
        async with cut_proxy(sync_broker_addr) as proxy, Client.connect(proxy.addr, reconnect=no_retry) as c:
            await c.create_queue(r)
            proxy.cut_reply_to("publish")
            with anyio.fail_after(30), pytest.raises(ConnectionClosed):
                await c.publish(r, b"unknown outcome")
            with anyio.fail_after(30):
                assert (await c.queue_stats(r)).ready == 1            # it was stored; the client reconnected

    run(backend, main)
    with SyncClient(sync_broker_addr) as lg:
        assert lg.queue_stats(q).ready == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_requests_in_flight_raise_and_later_ones_wait(backend: str, sync_broker_addr: tuple[str, int]) -> None:
    async def main() -> None:
        q = qname()
        async with cut_proxy(sync_broker_addr) as proxy, Client.connect(proxy.addr, reconnect=FAST) as c:
            await c.create_queue(q)
            await c.publish(q, b"m")
            proxy.refusing = True                                     # no new connection gets through
            proxy.cut_reply_to("consume")
            with anyio.fail_after(30), pytest.raises(ConnectionClosed):
                await c.consume(q)                                    # leased, then the reply was lost
            results: list[int] = []

            async def later() -> None:
                results.append((await c.queue_stats(q)).leased)       # waits for the next connection

            async with anyio.create_task_group() as tg:
                tg.start_soon(later)
                await anyio.sleep(0.2)                                # a few refused attempts
                assert results == []
                proxy.refusing = False
            assert results == [1] and c.reconnects == 1

    run(backend, main)


async def _collect(sub: Any, into: list[bytes], n: int) -> None:
    async for msg in sub:
        async with msg:
            into.append(msg.body)
        if len(into) == n:
            return


@pytest.mark.parametrize("backend", BACKENDS)
def test_subscriptions_resubscribe_after_a_reconnect(backend: str, sync_broker_addr: tuple[str, int]) -> None:
    async def main() -> None:
        q = qname()
        async with cut_proxy(sync_broker_addr) as proxy, Client.connect(proxy.addr, reconnect=FAST) as c:
            await c.create_queue(q)
            got: list[bytes] = []
            with anyio.fail_after(30):
                async with c.subscribe(q, credit=4) as sub:
                    first_id = sub.id
                    await c.publish_batch(q, [b"a", b"b"])
                    await _collect(sub, got, 2)
                    proxy.cut_all()
                    await c.publish_batch(q, [b"c", b"d"])            # waits for the reconnect
                    await _collect(sub, got, 4)
                    assert sub.id is not None and c.reconnects == 1
            assert got == [b"a", b"b", b"c", b"d"]
            assert first_id is not None
            stats = await c.queue_stats(q)
            assert (stats.messages, stats.acked) == (0, 4)

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_ack_lost_with_its_connection_does_not_break_the_loop(
        backend: str, sync_broker_addr: tuple[str, int]) -> None:
    async def main() -> None:
        q = qname()
        async with cut_proxy(sync_broker_addr) as proxy, Client.connect(proxy.addr, reconnect=FAST) as c:
            await c.create_queue(q)
            await c.publish(q, b"m")
            seen: list[int] = []
            with anyio.fail_after(30):
                async with c.subscribe(q) as sub:
                    proxy.cut_reply_to("ack")
                    async for msg in sub:
                        async with msg:                               # the first ack's reply is lost
                            seen.append(msg.attempt)
                        if (await c.queue_stats(q)).messages == 0:
                            break
            assert seen[0] == 1 and c.reconnects == 1

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_queue_deleted_while_away_ends_its_subscription(backend: str, sync_broker_addr: tuple[str, int]) -> None:
    async def main() -> None:
        q = qname()
        async with cut_proxy(sync_broker_addr) as proxy, Client.connect(proxy.addr, reconnect=FAST) as c:
            await c.create_queue(q)
            async with c.subscribe(q) as sub:
                proxy.refusing = True
                proxy.cut_all()
                with SyncClient(sync_broker_addr) as admin:
                    admin.delete_queue(q)
                proxy.refusing = False
                with anyio.fail_after(30):
                    assert [m async for m in sub] == []
                assert sub.end_reason == "queue_deleted"

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
def test_it_gives_up_after_max_attempts(backend: str, sync_broker_addr: tuple[str, int]) -> None:
    async def main() -> None:
        policy = Reconnect(initial_delay_s=0.01, max_delay_s=0.02, max_attempts=3)
        async with cut_proxy(sync_broker_addr) as proxy, Client.connect(proxy.addr, reconnect=policy) as c:
            q = qname()
            await c.create_queue(q)
            async with c.subscribe(q) as sub:
                proxy.refusing = True
                proxy.cut_all()
                with anyio.fail_after(30), pytest.raises(ConnectionClosed, match="gave up reconnecting"):
                    await sub.__anext__()                              # ends only when the client gives up
                with pytest.raises(ConnectionClosed, match="gave up reconnecting after 3 attempts"):
                    await c.ping()                                     # closed for good
            assert proxy.accepted == 1

    run(backend, main)


def test_the_first_connection_is_not_retried() -> None:
    async def main() -> None:
        with pytest.raises(OSError):
            async with Client.connect("127.0.0.1", _free_port(), reconnect=True):
                pass

    run("trio", main)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
