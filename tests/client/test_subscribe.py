"""Push subscriptions through the SDK: ``Client.subscribe`` (trio, against the in-process
broker on trio's MockClock) and ``SyncClient.subscribe`` (blocking, against a broker
child process), plus the push router and error texts without a broker."""
from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
import trio.testing

from client import (
    Client,
    ConnectionClosed,
    IncomingMessage,
    InvalidArgument,
    QueueNotFound,
    SyncClient,
    SyncIncomingMessage,
)
from client.pushes import PushRouter, error_text, truncate_error
from protocol import MAX_ERROR_TEXT, Push

_names = itertools.count()
HOUR_MS = 3_600_000


def qname(prefix: str = "sub") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_names)}"


class Boom(Exception):
    pass


# --- without a broker ---------------------------------------------------------------------


class Target:
    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.queues: list[str | None] = []
        self.ended: list[str] = []
        self.lost: list[ConnectionClosed] = []

    def _on_deliver(self, rows: list[Any], queue: str | None) -> None:
        self.rows.extend(rows)
        self.queues.append(queue)

    def _on_end(self, reason: str) -> None:
        self.ended.append(reason)

    def _on_lost(self, error: ConnectionClosed) -> None:
        self.lost.append(error)


def test_the_router_sends_pushes_to_their_subscription_and_the_rest_to_the_fallback() -> None:
    other: list[Push] = []
    router = PushRouter(other.append)
    a, b = Target(), Target()
    router.targets.update({1: a, 2: b})
    row = [5, b"x", 1, None, 0]
    router.dispatch(Push(name="deliver", payload={"subscription": 2, "messages": [row, row], "queue": "q"}))
    router.dispatch(Push(name="deliver", payload={"subscription": 1, "messages": [row], "later": True}))
    strays = [
        Push(name="notice", payload={}),
        Push(name="deliver", payload={"subscription": 9, "messages": [row]}),       # not ours
        Push(name="deliver", payload={"subscription": "1", "messages": [row]}),     # not an id
        Push(name="deliver", payload={"subscription": 1}),                          # no messages
        Push(name="future-push", payload={"subscription": 1}),
    ]
    for push in strays:
        router.dispatch(push)
    assert (len(a.rows), len(b.rows)) == (1, 2) and other == strays
    assert (a.queues, b.queues) == ([None], ["q"])                    # the queue a push names
    router.dispatch(Push(name="subscription_end", payload={"subscription": 1, "reason": "queue_deleted"}))
    assert a.ended == ["queue_deleted"] and set(router.targets) == {2}
    router.dispatch(Push(name="subscription_end", payload={"subscription": 1, "reason": "queue_deleted"}))
    assert len(other) == len(strays) + 1                               # gone: a stray now
    router.lost(ConnectionClosed("gone"))
    assert [str(e) for e in b.lost] == ["gone"] and not router.targets and not a.lost


def test_error_texts_name_the_exception_and_fit_the_server_limit() -> None:
    assert error_text(ValueError("bad json")) == "ValueError: bad json"
    assert error_text(Boom()) == "tests.client.test_subscribe.Boom"
    long = "é" * 1000                                                  # 2000 bytes
    cut = error_text(KeyError(long))
    assert len(cut.encode()) <= MAX_ERROR_TEXT and cut.startswith("KeyError: '")
    assert truncate_error("x" * 1023 + "é") == "x" * 1023              # never half a character
    assert truncate_error("short") == "short"


# --- async, in-process broker, MockClock --------------------------------------------------


@pytest.fixture
async def client(broker_addr: tuple[str, int]) -> AsyncIterator[Client]:
    async with Client.connect(broker_addr) as c:
        yield c


async def nothing_more(sub: Any) -> None:
    """No message arrives while everything runs to a standstill (MockClock jumps)."""
    with trio.move_on_after(60):
        msg = await sub.__anext__()
        raise AssertionError(f"unexpected message {msg!r}")


async def take(sub: Any, n: int) -> list[IncomingMessage]:
    with trio.fail_after(60):
        return [await sub.__anext__() for _ in range(n)]


async def test_ack_on_success(autojump_clock: trio.testing.MockClock, client: Client) -> None:
    q = qname()
    await client.create_queue(q)
    await client.publish_batch(q, [b"a", b"b", b"c"])
    seen = []
    async with client.subscribe(q, credit=2) as sub:
        assert sub.id == 1
        async for msg in sub:
            async with msg:
                seen.append((msg.id, msg.body, msg.attempt, msg.key, msg.priority, msg.queue))
            assert msg.settled == "acked"
            if len(seen) == 3:
                break
    assert seen == [(1, b"a", 1, None, 0, q), (2, b"b", 1, None, 0, q), (3, b"c", 1, None, 0, q)]
    stats = await client.queue_stats(q)
    assert (stats.messages, stats.acked) == (0, 3)


async def test_pushes_right_behind_the_subscribe_reply_are_not_lost(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    # Messages ready before subscribing are pushed at once: the first push follows the
    # reply in the same read, before the subscribing task runs again.
    q = qname()
    await client.create_queue(q)
    await client.publish_batch(q, [b"%d" % i for i in range(20)])
    async with client.subscribe(q, credit=20) as sub:
        got = await take(sub, 20)
        assert [m.body for m in got] == [b"%d" % i for i in range(20)]
        assert client.connection.unhandled_pushes == 0


async def test_an_exception_nacks_with_its_text_and_propagates(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    dlq, q = qname("dlq"), qname()
    await client.create_queue(dlq)
    await client.create_queue(q, max_attempts=1, dead_letter=dlq)
    first = await client.publish(q, b"{not json")
    with pytest.raises(Boom, match="bad json"):
        async with client.subscribe(q) as sub:
            async for msg in sub:
                async with msg:
                    raise Boom("bad json: " + "é" * 600)
    assert msg.settled == "nacked"
    (status,) = await client.message_status(q, [first])
    assert status.state == "dead_lettered" and status.reason == "max_attempts"
    assert status.error is not None and status.error.startswith("tests.client.test_subscribe.Boom: bad json: é")
    assert len(status.error.encode()) <= MAX_ERROR_TEXT
    assert (await client.queue_stats(q)).nacked == 1


async def test_process_without_reraise_keeps_the_loop_going(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    q = qname()
    await client.create_queue(q)
    await client.publish_batch(q, [b"fails once", b"fine"])
    attempts: list[tuple[bytes, int]] = []
    async with client.subscribe(q, credit=1) as sub:
        async for msg in sub:
            attempts.append((msg.body, msg.attempt))
            async with msg.process(reraise=False):
                if msg.attempt == 1 and msg.body == b"fails once":
                    raise ValueError("transient")
            if len(attempts) == 3:
                break
    assert attempts == [(b"fails once", 1), (b"fine", 1), (b"fails once", 2)]
    assert (await client.queue_stats(q)).messages == 0


async def test_a_cancellation_nacks_without_an_error_text(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    q = qname()
    await client.create_queue(q, visibility_ms=HOUR_MS)
    (mid,) = (await client.publish_batch(q, [b"slow"])).ids
    with trio.move_on_after(5):                     # cancels the block and the subscription's exit
        async with client.subscribe(q) as sub:
            async for msg in sub:
                async with msg:
                    await trio.sleep_forever()
    assert msg.settled == "nacked" and sub.ended and client._pushes.targets == {}
    (status,) = await client.message_status(q, [mid])
    assert status.state == "ready"                                       # now, not in an hour
    # The nack made it ready while the subscription was still open, so it may have been
    # pushed again (attempt 2) before the unsubscribe, and then nacked from the buffer.
    assert status.attempts in (1, 2)


async def test_explicit_settling(autojump_clock: trio.testing.MockClock, client: Client) -> None:
    dlq, q = qname("dlq"), qname()
    await client.create_queue(dlq)
    await client.create_queue(q, dead_letter=dlq, visibility_ms=1000)
    await client.publish_batch(q, [b"ack", b"nack", b"reject", b"extend"])
    async with client.subscribe(q, credit=4) as sub:
        a, n, r, e = await take(sub, 4)
        assert (await a.ack()).acked == 1
        with pytest.raises(RuntimeError, match="was acked"):
            await a.nack()
        assert (await n.nack(delay_ms=HOUR_MS, error="later")).released == 1
        assert (await r.reject(error="poison")).rejected == 1
        for _ in range(3):                                               # 3 s: the lease holds
            await trio.sleep(0.8)
            assert (await e.extend()).extended == 1
        async with e:                                                    # settled inside: left alone
            await e.ack()
        assert e.settled == "acked"
    stats = await client.queue_stats(q)
    assert (stats.acked, stats.delayed, stats.dead_lettered, stats.expired, stats.messages) == (2, 1, 1, 0, 1)
    (dead,) = await client.peek(dlq, dead_letter=False)
    assert dead.body == b"reject" and dead.dead_letter is not None and dead.dead_letter.error == "poison"


async def test_credit_bounds_what_is_pushed_and_unacked(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    q = qname()
    await client.create_queue(q, visibility_ms=HOUR_MS)
    await client.publish_batch(q, [b"m%d" % i for i in range(10)])
    async with client.subscribe(q, credit=3) as sub:
        held = await take(sub, 3)
        await nothing_more(sub)
        assert sub.buffered == 0
        stats = await client.queue_stats(q)
        assert (stats.leased, stats.ready) == (3, 7)
        await held[0].ack()                                              # credit comes back: one more
        (fourth,) = await take(sub, 1)
        assert fourth.body == b"m3"
        await nothing_more(sub)
        for m in held[1:] + [fourth]:
            await m.ack()
        # A worker pool: what was pushed and is not acked yet (handed out, or still in the
        # buffer) never exceeds the credit.
        in_hand = 0
        most = 0

        async def worker() -> None:
            nonlocal in_hand, most
            async for msg in sub:
                in_hand += 1
                most = max(most, in_hand + sub.buffered)
                await trio.sleep(0.01)
                in_hand -= 1
                await msg.ack()

        with trio.move_on_after(30):
            async with trio.open_nursery() as n:
                for _ in range(5):
                    n.start_soon(worker)
        assert most == 3
        assert (await client.queue_stats(q)).messages == 0


async def test_leaving_unsubscribes_and_nacks_what_was_not_handed_out(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    q = qname()
    await client.create_queue(q, visibility_ms=HOUR_MS)
    await client.publish_batch(q, [b"m%d" % i for i in range(8)])
    async with client.subscribe(q, credit=5) as sub:
        kept = await sub.__anext__()                                     # handed out, not settled
        await trio.testing.wait_all_tasks_blocked()
        assert sub.buffered == 4
        sid = sub.id
    assert sub.ended and sub.buffered == 0 and sub.end_reason is None
    assert client._pushes.targets == {}
    stats = await client.queue_stats(q)
    assert (stats.leased, stats.ready, stats.nacked) == (1, 7, 4)        # the handed-out one stays leased
    (status,) = await client.message_status(q, [kept.id])
    assert status.state == "leased"
    with pytest.raises(InvalidArgument):                                 # the server forgot it
        await client.request("unsubscribe", {"subscription": sid})
    await client.publish(q, b"after")
    await trio.testing.wait_all_tasks_blocked()
    assert client.connection.unhandled_pushes == 0                       # nothing pushed any more
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()
    with pytest.raises(RuntimeError, match="only once"):
        async with sub:
            pass


async def test_deleting_the_queue_ends_the_iteration(
        autojump_clock: trio.testing.MockClock, client: Client, broker_addr: tuple[str, int]) -> None:
    q = qname()
    await client.create_queue(q)
    await client.publish(q, b"one")
    got = []
    async with Client.connect(broker_addr) as admin, client.subscribe(q, credit=10) as sub:
        async for msg in sub:
            got.append(msg.body)
            await admin.delete_queue(q)
    assert got == [b"one"] and sub.end_reason == "queue_deleted" and sub.ended


async def test_subscribing_to_a_missing_queue_raises(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    sub = client.subscribe(qname())
    with pytest.raises(QueueNotFound):
        async with sub:
            raise AssertionError("not reached")
    q = qname()
    await client.create_queue(q)
    with pytest.raises(InvalidArgument) as exc:
        async with client.subscribe(q, credit=0):
            pass
    assert exc.value.field == "credit"
    assert client._pushes.targets == {}


async def test_auto_ack_deletes_as_it_pushes_and_the_block_does_nothing(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    q = qname()
    await client.create_queue(q)
    await client.publish_batch(q, [b"m%d" % i for i in range(6)])
    got = []
    with pytest.raises(Boom):
        async with client.subscribe(q, credit=2, auto_ack=True) as sub:
            async for msg in sub:
                assert msg.settled == "auto_acked"
                with pytest.raises(RuntimeError, match="auto_ack"):
                    await msg.ack()
                async with msg:
                    got.append(msg.body)
                    if len(got) == 6:
                        raise Boom()
    stats = await client.queue_stats(q)
    assert (stats.messages, stats.acked, stats.nacked) == (0, 6, 0)
    assert got == [b"m%d" % i for i in range(6)]


async def test_auto_ack_buffer_stops_reading_but_never_starves_requests(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    q = qname()
    body = b"x" * 100_000
    await client.create_queue(q)
    await client.publish_batch(q, [body] * 40)                           # 4 MB
    async with client.subscribe(q, credit=2, auto_ack=True) as sub:
        await trio.testing.wait_all_tasks_blocked()
        # The reader stopped once 2 were buffered; one read adds at most 256 KiB more.
        assert 2 <= sub.buffered <= 2 + 3
        count = 0
        with trio.fail_after(60):
            async for msg in sub:
                await client.ping()        # its reply is read, and the pushes before it with it
                count += 1
                if count == 40:
                    break
    assert (await client.queue_stats(q)).messages == 0


async def test_two_subscriptions_on_one_connection(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    q1, q2 = qname(), qname()
    await client.create_queue(q1)
    await client.create_queue(q2)
    await client.publish_batch(q1, [b"one-a", b"one-b"])
    await client.publish_batch(q2, [b"two-a"])
    async with client.subscribe(q1) as s1, client.subscribe(q2) as s2:
        assert (s1.id, s2.id) == (1, 2)
        assert [m.body for m in await take(s1, 2)] == [b"one-a", b"one-b"]
        assert [(m.body, m.queue) for m in await take(s2, 1)] == [(b"two-a", q2)]


async def test_a_lost_connection_raises_from_the_iteration(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    q = qname()
    async with Client.connect(broker_addr) as c:
        await c.create_queue(q)
        async with c.subscribe(q) as sub:
            async with trio.open_nursery() as n:
                n.start_soon(c.aclose)
                with pytest.raises(ConnectionClosed, match="closed by the client"):
                    await sub.__anext__()
        assert sub.ended


async def test_other_pushes_still_reach_on_push(autojump_clock: trio.testing.MockClock,
                                                broker_addr: tuple[str, int]) -> None:
    seen: list[Push] = []
    async with Client.connect(broker_addr, on_push=seen.append) as c:
        c.connection.on_push(Push(name="notice", payload={"text": "hi"}))             # as the reader would
        assert [p.name for p in seen] == ["notice"]


# --- blocking, broker child process -------------------------------------------------------


@pytest.fixture
def sync_client(sync_broker_addr: tuple[str, int]) -> Iterator[SyncClient]:
    with SyncClient(sync_broker_addr, timeout=30) as c:
        yield c


def sync_take(sub: Any, n: int) -> list[SyncIncomingMessage]:
    out = []
    for _ in range(n):
        msg = sub.get(timeout=30)
        assert msg is not None
        out.append(msg)
    return out


def test_sync_ack_on_success_and_nack_on_error(sync_client: SyncClient) -> None:
    dlq, q = qname("dlq"), qname()
    sync_client.create_queue(dlq)
    sync_client.create_queue(q, max_attempts=1, dead_letter=dlq)
    sync_client.publish_batch(q, [b"good", b"bad"])
    bodies = []
    with pytest.raises(ValueError, match="bad input"):
        with sync_client.subscribe(q, credit=5) as sub:
            assert sub.id == 1
            for msg in sub:
                with msg:
                    bodies.append(msg.body)
                    if msg.body == b"bad":
                        raise ValueError("bad input")
    assert bodies == [b"good", b"bad"]
    good, bad = sync_client.message_status(q, [1, 2])
    assert good.state == "gone"
    assert bad.state == "dead_lettered" and bad.error == "ValueError: bad input"


def test_sync_credit_and_leaving(sync_client: SyncClient) -> None:
    q = qname()
    sync_client.create_queue(q, visibility_ms=HOUR_MS)
    sync_client.publish_batch(q, [b"m%d" % i for i in range(6)])
    with sync_client.subscribe(q, credit=2) as sub:
        first, second = sync_take(sub, 2)
        assert sub.get(timeout=0) is None
        stats = sync_client.queue_stats(q)                               # only 2 were taken
        assert (stats.leased, stats.ready) == (2, 4)
        first.ack()
        (third,) = sync_take(sub, 1)
        assert third.body == b"m2"
        with third:                                                      # acked on leaving
            pass
        # One more may be pushed for the acked third: leaving nacks it unless it is handed out.
        sid = sub.id
    assert sub.ended and sub.buffered == 0 and third.settled == "acked"
    stats = sync_client.queue_stats(q)
    assert (stats.acked, stats.leased, stats.ready) == (2, 1, 3)         # second stays leased
    with pytest.raises(InvalidArgument):
        sync_client.request("unsubscribe", {"subscription": sid})
    assert sync_client.unhandled_pushes == 0


def test_sync_idle_timeout(sync_client: SyncClient) -> None:
    q = qname()
    sync_client.create_queue(q)
    with sync_client.subscribe(q, idle_timeout=0.05) as sub:
        with pytest.raises(TimeoutError):
            next(sub)
        sync_client.publish(q, b"late")
        (msg,) = sync_take(sub, 1)
        with msg:
            assert msg.body == b"late"
    assert sync_client.queue_stats(q).acked == 1


def test_sync_queue_deleted_ends_the_iteration(sync_client: SyncClient,
                                               sync_broker_addr: tuple[str, int]) -> None:
    q = qname()
    sync_client.create_queue(q)
    sync_client.publish(q, b"one")
    got = []
    with SyncClient(sync_broker_addr) as admin, sync_client.subscribe(q) as sub:
        for msg in sub:
            got.append(msg.body)
            admin.delete_queue(q)
    assert got == [b"one"] and sub.end_reason == "queue_deleted"
    assert sub.get(timeout=0) is None


def test_sync_auto_ack(sync_client: SyncClient) -> None:
    q = qname()
    sync_client.create_queue(q)
    sync_client.publish_batch(q, [b"a", b"b", b"c"])
    with sync_client.subscribe(q, credit=1, auto_ack=True) as sub:
        got = [m.body for m in sync_take(sub, 3)]
    assert got == [b"a", b"b", b"c"]
    stats = sync_client.queue_stats(q)
    assert (stats.messages, stats.acked) == (0, 3)


def test_sync_must_be_entered(sync_client: SyncClient) -> None:
    sub = sync_client.subscribe(qname())
    with pytest.raises(RuntimeError, match="enter"):
        next(sub)
    with pytest.raises(QueueNotFound), sub:
        pass
