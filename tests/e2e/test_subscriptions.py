"""Push subscriptions over real sockets on trio's MockClock: credit, sharing, auto-ack,
ends, and what happens to unacked messages when a connection goes away."""
from __future__ import annotations

from typing import Any

import trio

from broker.server import Broker
from protocol import Error, ErrorCode, Push, Reply

from .rawclient import RawClient


async def setup(addr: tuple[str, int], **queue: Any) -> RawClient:
    c = await RawClient.open(addr)
    assert isinstance(await c.call("queue_create", {"queue": "q", **queue}), Reply)
    return c


async def subscribe(c: RawClient, **args: Any) -> int:
    reply = await c.call("subscribe", {"queue": "q", **args})
    assert isinstance(reply, Reply), reply
    sid: int = reply.result["subscription"]
    return sid


async def pushes(c: RawClient, want: int) -> list[list[Any]]:
    """Deliveries from ``deliver`` pushes until ``want`` have arrived."""
    got: list[list[Any]] = []
    while len(got) < want:
        frame = await c.frame()
        assert type(frame) is Push and frame.name == "deliver", frame
        got.extend(frame.payload["messages"])
    return got


async def nothing_more(c: RawClient) -> None:
    """No frame arrives while everything runs to a standstill (MockClock)."""
    with trio.move_on_after(5):
        frame = await c.frame()
        raise AssertionError(f"unexpected frame {frame}")


async def publish(c: RawClient, n: int, start: int = 0) -> None:
    reply = await c.call("publish", {"queue": "q", "messages": [[b"m%d" % i] for i in range(start, start + n)]})
    assert isinstance(reply, Reply), reply


async def test_pushes_never_exceed_credit_and_acks_return_it(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr)
    consumer = await RawClient.open(broker_addr)
    sid = await subscribe(consumer, credit=3)
    assert sid == 1
    await publish(producer, 10)
    first = await pushes(consumer, 3)
    assert [m[1] for m in first] == [b"m0", b"m1", b"m2"] and {m[2] for m in first} == {1}
    await nothing_more(consumer)
    stats = (await producer.call("queue_stats", {"queue": "q"})).result
    assert (stats["leased"], stats["ready"]) == (3, 7)
    # Acks from any connection return credit; a nack returns it too (and the message comes back).
    await producer.call("ack", {"queue": "q", "ids": [first[0][0]]})
    more = await pushes(consumer, 1)
    assert [m[1] for m in more] == [b"m3"]
    await consumer.call("nack", {"queue": "q", "ids": [first[1][0]]})
    again = await pushes(consumer, 1)
    assert again[0][1] == b"m4"
    await nothing_more(consumer)


async def test_an_expired_lease_returns_credit(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr, visibility_ms=1000)
    consumer = await RawClient.open(broker_addr)
    await subscribe(consumer, credit=1)
    await publish(producer, 1)
    (first,) = await pushes(consumer, 1)
    (second,) = await pushes(consumer, 1)  # the lease ran out: pushed again
    assert first[0] == second[0] and second[2] == 2


async def test_extend_keeps_a_message_counted(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr, visibility_ms=1000)
    consumer = await RawClient.open(broker_addr)
    await subscribe(consumer, credit=1)
    await publish(producer, 2)
    (first,) = await pushes(consumer, 1)
    for _ in range(5):
        await trio.sleep(0.9)
        reply = await consumer.call("extend", {"queue": "q", "ids": [first[0]]})
        assert reply.result == {"extended": 1, "missing": []}
    await trio.testing.wait_all_tasks_blocked()
    stats = (await producer.call("queue_stats", {"queue": "q"})).result
    assert (stats["leased"], stats["ready"]) == (1, 1)  # 4.5 s on, still one in flight


async def test_subscribers_share_a_queue_in_turn(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr, visibility_ms=600_000)
    a = await RawClient.open(broker_addr)
    b = await RawClient.open(broker_addr)
    await subscribe(a, credit=100)
    await subscribe(b, credit=100)
    await trio.testing.wait_all_tasks_blocked()
    for i in range(10):  # one message at a time: they take turns
        await publish(producer, 1, start=i)
        await trio.testing.wait_all_tasks_blocked()
    got_a = await pushes(a, 5)
    got_b = await pushes(b, 5)
    assert len(got_a) == len(got_b) == 5
    assert sorted(m[1] for m in got_a + got_b) == sorted(b"m%d" % i for i in range(10))
    assert {m[2] for m in got_a + got_b} == {1}
    # A burst is split between them, not all to the first.
    await publish(producer, 40, start=10)
    counts = {"a": 0, "b": 0}
    with trio.move_on_after(5):
        async with trio.open_nursery() as n:
            async def drain(c: RawClient, key: str) -> None:
                while True:
                    counts[key] += len(await pushes(c, 1))
            n.start_soon(drain, a, "a")
            n.start_soon(drain, b, "b")
    assert counts["a"] + counts["b"] == 40 and min(counts.values()) >= 10


async def test_long_poll_and_subscribers_coexist_in_arrival_order(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr)
    poller = await RawClient.open(broker_addr)
    sub = await RawClient.open(broker_addr)
    rid = await poller.request("consume", {"queue": "q", "wait_ms": 60_000})
    await trio.testing.wait_all_tasks_blocked()
    await subscribe(sub, credit=10)
    await trio.testing.wait_all_tasks_blocked()
    await publish(producer, 1)
    frame = await poller.frame()
    assert frame.id == rid and frame.result["messages"][0][1] == b"m0"  # it came first
    await publish(producer, 1, start=1)
    assert [m[1] for m in await pushes(sub, 1)] == [b"m1"]


async def test_auto_ack_deletes_as_it_pushes(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr)
    consumer = await RawClient.open(broker_addr)
    await subscribe(consumer, credit=4, auto_ack=True)
    await publish(producer, 10)
    got = await pushes(consumer, 10)
    assert [m[1] for m in got] == [b"m%d" % i for i in range(10)]
    stats = (await producer.call("queue_stats", {"queue": "q"})).result
    assert (stats["messages"], stats["acked"]) == (0, 10)


async def test_a_closed_connection_releases_its_unacked_messages_at_once(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr, visibility_ms=600_000)
    consumer = await RawClient.open(broker_addr)
    await subscribe(consumer, credit=5)
    await publish(producer, 3)
    got = await pushes(consumer, 3)
    await consumer.aclose()
    await trio.testing.wait_all_tasks_blocked()
    stats = (await producer.call("queue_stats", {"queue": "q"})).result
    assert (stats["ready"], stats["leased"]) == (3, 0)  # not after ten minutes: now
    again = (await producer.call("consume", {"queue": "q", "max": 5})).result["messages"]
    assert sorted((m[0], m[2]) for m in again) == sorted((m[0], 2) for m in got)


async def test_a_closed_connection_releases_at_once_despite_a_retry_backoff(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr, visibility_ms=600_000, retry_delay_ms=60_000)
    consumer = await RawClient.open(broker_addr)
    await subscribe(consumer, credit=5)
    await publish(producer, 2)
    await pushes(consumer, 2)
    await consumer.aclose()
    await trio.testing.wait_all_tasks_blocked()
    stats = (await producer.call("queue_stats", {"queue": "q"})).result
    assert (stats["ready"], stats["delayed"], stats["nacked"]) == (2, 0, 2)


async def test_a_held_consume_whose_reply_cannot_be_sent_releases_its_messages(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr, visibility_ms=600_000)
    poller = await RawClient.open(broker_addr)
    await poller.request("consume", {"queue": "q", "wait_ms": 60_000})
    await trio.testing.wait_all_tasks_blocked()
    await poller.aclose()
    await trio.testing.wait_all_tasks_blocked()
    await publish(producer, 1)
    await trio.testing.wait_all_tasks_blocked()
    stats = (await producer.call("queue_stats", {"queue": "q"})).result
    assert (stats["ready"], stats["leased"]) == (1, 0)
    (again,) = (await producer.call("consume", {"queue": "q"})).result["messages"]
    assert again[2] == 1  # never reached anyone: not an attempt


async def test_unsubscribe_stops_pushing_and_leaves_leases(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr)
    consumer = await RawClient.open(broker_addr)
    sid = await subscribe(consumer, credit=2)
    await publish(producer, 5)
    got = await pushes(consumer, 2)
    reply = await consumer.call("unsubscribe", {"subscription": sid})
    assert reply.result == {"subscription": sid, "unacked": 2}
    await producer.call("ack", {"queue": "q", "ids": [got[0][0]]})
    await nothing_more(consumer)
    stats = (await producer.call("queue_stats", {"queue": "q"})).result
    assert (stats["leased"], stats["ready"]) == (1, 3)
    again = await consumer.call("unsubscribe", {"subscription": sid})
    assert isinstance(again, Error) and again.code == ErrorCode.INVALID_ARGUMENT
    assert again.details == {"field": "subscription"}


async def test_deleting_the_queue_ends_the_subscription(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr)
    consumer = await RawClient.open(broker_addr)
    sid = await subscribe(consumer)
    await trio.testing.wait_all_tasks_blocked()
    await producer.call("queue_delete", {"queue": "q"})
    frame = await consumer.frame()
    assert type(frame) is Push and frame.name == "subscription_end"
    assert frame.payload == {"subscription": sid, "reason": "queue_deleted"}


async def test_the_subscribe_reply_comes_before_its_pushes(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr)
    await publish(producer, 5)
    consumer = await RawClient.open(broker_addr)
    rid = await consumer.request("subscribe", {"queue": "q", "credit": 5})
    first = await consumer.frame()
    assert type(first) is Reply and first.id == rid
    assert len(await pushes(consumer, 5)) == 5


async def test_subscription_limits(autojump_clock: trio.testing.MockClock,
                                   broker_addr: tuple[str, int]) -> None:
    c = await setup(broker_addr)
    for _ in range(64):
        await subscribe(c)
    reply = await c.call("subscribe", {"queue": "q"})
    assert isinstance(reply, Error) and reply.code == ErrorCode.LIMIT_EXCEEDED
    for credit in (0, 10_001, True):
        reply = await c.call("subscribe", {"queue": "q", "credit": credit})
        assert isinstance(reply, Error) and reply.details == {"field": "credit"}


async def test_shutdown_releases_pushed_messages(
        autojump_clock: trio.testing.MockClock, broker: Broker, broker_addr: tuple[str, int]) -> None:
    producer = await setup(broker_addr, visibility_ms=600_000)
    consumer = await RawClient.open(broker_addr)
    await subscribe(consumer, credit=2)
    await publish(producer, 2)
    await pushes(consumer, 2)
    broker.shutdown()
    with trio.fail_after(30):
        while await consumer.frame() is not None:
            pass
    assert broker.state.queues["q"].leased == 0 and broker.state.queues["q"].ready == 2
