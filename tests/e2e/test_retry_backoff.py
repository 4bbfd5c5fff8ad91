"""Retry backoff over real sockets on trio's MockClock: after a nack without a delay, or a
lease expiry, a message is ready again only after the queue's backoff delay (SPEC §8.7)."""
from __future__ import annotations

import trio
import trio.testing

from protocol import Reply, retry_delay

from .rawclient import RawClient


async def _held_consume(c: RawClient, queue: str) -> tuple[list[object], float]:
    """A consume held until a message is ready: the delivery and how long it waited."""
    start = trio.current_time()
    [m] = (await c.call("consume", {"queue": queue, "wait_ms": 600_000})).result["messages"]
    return m, round(trio.current_time() - start, 3)


async def test_exponential_schedule_after_nacks_and_an_expiry(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await RawClient.open(broker_addr)
    reply = await c.call("queue_create", {"queue": "q", "retry_delay_ms": 1000, "retry_max_delay_ms": 5000,
                                          "visibility_ms": 10_000})
    assert isinstance(reply, Reply), reply
    await c.call("publish", {"queue": "q", "messages": [[b"m"]]})
    m, waited = await _held_consume(c, "q")
    assert waited == 0
    waits = []
    for attempt in range(1, 5):
        assert m[2] == attempt
        await c.call("nack", {"queue": "q", "ids": [m[0]]})
        assert (await c.call("consume", {"queue": "q"})).result["messages"] == []
        m, waited = await _held_consume(c, "q")
        waits.append(waited)
    assert waits == [1.0, 2.0, 4.0, 5.0]  # doubling from 1 s, capped at 5 s
    # Attempt 5 is not acked: its lease ends after 10 s, then it waits the capped 5 s.
    m, waited = await _held_consume(c, "q")
    assert (m[2], waited) == (6, 15.0)
    stats = (await c.call("queue_stats", {"queue": "q"})).result
    assert (stats["retry_delay_ms"], stats["retry_backoff"], stats["retry_max_delay_ms"]) == (1000, "exponential", 5000)
    assert (stats["nacked"], stats["expired"]) == (4, 1)


async def test_a_lease_expiry_waits_for_the_backoff_and_wakes_a_held_consume(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await RawClient.open(broker_addr)
    await c.call("queue_create", {"queue": "q", "retry_delay_ms": 3000, "retry_backoff": "fixed",
                                  "retry_jitter": 50, "visibility_ms": 2000})
    await c.call("publish", {"queue": "q", "messages": [[b"m"]]})
    start = trio.current_time()
    [m] = (await c.call("consume", {"queue": "q"})).result["messages"]
    # The lease ends at 2 s; then the jittered fixed delay of attempt 1.
    delay = retry_delay(3000, "fixed", 900_000, 50, m[0], 1)
    assert 1500 <= delay <= 3000
    reply = await c.call("consume", {"queue": "q", "wait_ms": 60_000})
    [again] = reply.result["messages"]
    assert again[0] == m[0] and again[2] == 2
    assert abs((trio.current_time() - start) - (2 + delay / 1000)) < 0.01
    stats = (await c.call("queue_stats", {"queue": "q"})).result
    assert (stats["expired"], stats["delayed"], stats["leased"]) == (1, 0, 1)


async def test_the_delayed_message_shows_its_ready_time(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await RawClient.open(broker_addr)
    await c.call("queue_create", {"queue": "q", "retry_delay_ms": 250})
    await c.call("publish", {"queue": "q", "messages": [[b"m"]]})
    [m] = (await c.call("consume", {"queue": "q"})).result["messages"]
    now = (await c.call("ping", {})).result["now_ms"]
    await c.call("nack", {"queue": "q", "ids": [m[0]]})
    [st] = (await c.call("message_status", {"queue": "q", "ids": [m[0]]})).result["statuses"]
    assert (st["state"], st["until_ms"]) == ("delayed", now + 250)
