"""Time to live over real sockets on trio's MockClock (SPEC §8.8): a message in the middle
of a queue is never delivered once its time has come, and leaves at that time (dropped,
or dead-lettered), whether ready, delayed or leased."""
from __future__ import annotations

import trio
import trio.testing

from protocol import Reply

from .rawclient import RawClient


async def _stats(c: RawClient, queue: str) -> dict[str, int]:
    result: dict[str, int] = (await c.call("queue_stats", {"queue": queue})).result
    return result


async def test_a_message_in_the_middle_is_dropped_at_its_time_and_never_delivered(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await RawClient.open(broker_addr)
    assert isinstance(await c.call("queue_create", {"queue": "q"}), Reply)
    now = (await c.call("ping", {})).result["now_ms"]
    reply = await c.call("publish", {"queue": "q", "messages": [[b"a"], [b"b", None, None, None, 5000], [b"c"]]})
    assert reply.result == {"first_id": 1, "count": 3}
    [st] = (await c.call("message_status", {"queue": "q", "ids": [2]})).result["statuses"]
    assert st["expires_at_ms"] == now + 5000
    await trio.sleep(4.999)
    assert (await _stats(c, "q"))["messages"] == 3
    await trio.sleep(0.001)
    stats = await _stats(c, "q")
    assert (stats["messages"], stats["ttl_expired"], stats["dropped"]) == (2, 1, 0)
    got = (await c.call("consume", {"queue": "q", "max": 10})).result["messages"]
    assert [m[1] for m in got] == [b"a", b"c"]
    [st] = (await c.call("message_status", {"queue": "q", "ids": [2]})).result["statuses"]
    assert st["state"] == "gone"


async def test_expired_messages_are_dead_lettered_at_their_time(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await RawClient.open(broker_addr)
    waiter = await RawClient.open(broker_addr)
    await c.call("queue_create", {"queue": "dlq"})
    await c.call("queue_create", {"queue": "q", "dead_letter": "dlq", "on_expire": "dead_letter",
                                  "ttl_ms": 3000, "visibility_ms": 60_000})
    start = trio.current_time()
    await c.call("publish", {"queue": "q", "messages": [[b"ready"], [b"leased"], [b"delayed", None, None, 10_000]]})
    [leased] = (await c.call("consume", {"queue": "q", "max": 1})).result["messages"]
    assert leased[1] == b"ready"
    await c.call("publish", {"queue": "q", "messages": [[b"later", None, None, None, 60_000]]})
    # A consume held on the dead-letter queue is answered when they arrive, at 3 s.
    reply = await waiter.call("consume", {"queue": "dlq", "max": 10, "wait_ms": 600_000})
    assert abs((trio.current_time() - start) - 3.0) < 0.002
    assert sorted(m[1] for m in reply.result["messages"]) == [b"delayed", b"leased", b"ready"]
    stats = await _stats(c, "q")
    assert (stats["messages"], stats["ttl_expired"], stats["dead_lettered"], stats["leased"]) == (1, 3, 3, 0)
    [st] = (await c.call("message_status", {"queue": "q", "ids": [leased[0]]})).result["statuses"]
    assert (st["state"], st["reason"]) == ("dead_lettered", "expired")
    # the lease of the expired message is over: an ack finds nothing
    assert (await c.call("ack", {"queue": "q", "ids": [leased[0]]})).result["missing"] == [leased[0]]


async def test_a_held_consume_never_gets_an_expired_message(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await RawClient.open(broker_addr)
    await c.call("queue_create", {"queue": "q"})
    # delayed 2 s but expiring after 1 s: it never becomes deliverable
    await c.call("publish", {"queue": "q", "messages": [[b"x", None, None, 2000, 1000]]})
    start = trio.current_time()
    reply = await c.call("consume", {"queue": "q", "wait_ms": 5000})
    assert reply.result["messages"] == []
    assert abs((trio.current_time() - start) - 5.0) < 0.002
    assert (await _stats(c, "q"))["ttl_expired"] == 1
