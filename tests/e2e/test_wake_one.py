"""Held consumes wait in line: a change that makes k messages ready wakes at most k of
them, first come first, over real sockets on trio's MockClock."""
from __future__ import annotations

from typing import Any

import pytest
import trio

from broker.live import Live
from broker.server import Broker
from protocol import Reply

from .rawclient import RawClient

WAITERS = 1000


async def hold(c: RawClient, n: int, wait_ms: int = 600_000) -> list[int]:
    """Send ``n`` long-poll consumes of one message each; returns their request ids."""
    return [await c.request("consume", {"queue": "q", "max": 1, "wait_ms": wait_ms}) for _ in range(n)]


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
def retries(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts how often a held consume looks at its queue again (the real method runs)."""
    calls: list[int] = []
    real = Live.retry

    def counted(self: Live, *args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Live, "retry", counted)
    return calls


async def test_one_publish_wakes_one_of_a_thousand(
        autojump_clock: trio.testing.MockClock, broker: Broker, broker_addr: tuple[str, int],
        retries: list[int]) -> None:
    waiting = await RawClient.open(broker_addr)
    producer = await RawClient.open(broker_addr)
    assert isinstance(await producer.call("queue_create", {"queue": "q"}), Reply)
    rids = await hold(waiting, WAITERS)
    await settle()
    line = broker._holds.line("q")
    assert line is not None and len(line) == WAITERS
    before = len(retries)
    await producer.call("publish", {"queue": "q", "messages": [[b"one"]]})
    frame = await waiting.frame()
    await settle()
    assert len(retries) - before == 1  # one looked again, not a thousand
    assert frame.id == rids[0] and [m[1] for m in frame.result["messages"]] == [b"one"]


async def test_waiters_are_served_in_arrival_order(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    waiting = await RawClient.open(broker_addr)
    producer = await RawClient.open(broker_addr)
    await producer.call("queue_create", {"queue": "q"})
    rids = await hold(waiting, 20)
    await settle()
    await producer.call("publish", {"queue": "q", "messages": [[b"%d" % i] for i in range(5)]})
    got = [await waiting.frame() for _ in range(5)]
    # The first five are woken at once (which of them runs first is the scheduler's).
    assert sorted(f.id for f in got) == rids[:5]
    for i in range(5, 8):  # one at a time, still in order
        await producer.call("publish", {"queue": "q", "messages": [[b"x"]]})
        assert (await waiting.frame()).id == rids[i]


async def test_a_consumer_that_takes_less_passes_the_rest_on(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    """Each held consume takes one message; a publish of three wakes three (and a nack
    that makes two ready wakes two)."""
    waiting = await RawClient.open(broker_addr)
    producer = await RawClient.open(broker_addr)
    await producer.call("queue_create", {"queue": "q"})
    rids = await hold(waiting, 6)
    await settle()
    await producer.call("publish", {"queue": "q", "messages": [[b"a"], [b"b"], [b"c"]]})
    got = [await waiting.frame() for _ in range(3)]
    assert sorted(m[1] for f in got for m in f.result["messages"]) == [b"a", b"b", b"c"]
    ids = [f.result["messages"][0][0] for f in got[:2]]
    await producer.call("nack", {"queue": "q", "ids": ids})
    more = [await waiting.frame() for _ in range(2)]
    assert sorted(f.id for f in more) == rids[3:5]
    stats = (await producer.call("queue_stats", {"queue": "q"})).result
    assert stats["ready"] == 0 and stats["leased"] == 3


async def test_a_waiter_that_found_nothing_keeps_its_place(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    """A waiter woken for a message another consumer took first goes back to the front."""
    waiting = await RawClient.open(broker_addr)
    producer = await RawClient.open(broker_addr)
    await producer.call("queue_create", {"queue": "q"})
    rids = await hold(waiting, 3)
    await settle()
    # The publish and a plain consume in one read: the consume takes the message before
    # the woken waiter looks again.
    await producer.send_raw(producer.enc.request(90, "publish", {"queue": "q", "messages": [[b"a"]]})
                            + producer.enc.request(91, "consume", {"queue": "q"}))
    replies = {}
    for _ in range(2):
        f = await producer.frame()
        replies[f.id] = f
    assert [m[1] for m in replies[91].result["messages"]] == [b"a"]
    await settle()
    await producer.call("publish", {"queue": "q", "messages": [[b"b"]]})
    frame = await waiting.frame()
    assert frame.id == rids[0] and frame.result["messages"][0][1] == b"b"


async def test_timed_out_waiters_leave_no_trace(
        autojump_clock: trio.testing.MockClock, broker: Broker, broker_addr: tuple[str, int]) -> None:
    waiting = await RawClient.open(broker_addr)
    producer = await RawClient.open(broker_addr)
    await producer.call("queue_create", {"queue": "q"})
    for _ in range(5):  # rounds of long polls that all time out
        await hold(waiting, 200, wait_ms=1000)
        for _ in range(200):
            assert (await waiting.frame()).result == {"messages": []}
    await settle()
    assert len(broker._holds.line("q") or ()) <= 64  # the line was cleaned as they left
    rids = await hold(waiting, 2)
    await settle()
    await producer.call("publish", {"queue": "q", "messages": [[b"x"]]})
    assert (await waiting.frame()).id == rids[0]


async def test_deleting_the_queue_answers_every_waiter(
        autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    waiting = await RawClient.open(broker_addr)
    producer = await RawClient.open(broker_addr)
    await producer.call("queue_create", {"queue": "q"})
    await hold(waiting, 50)
    await settle()
    await producer.call("queue_delete", {"queue": "q"})
    frames = [await waiting.frame() for _ in range(50)]
    assert {getattr(f, "code", None) for f in frames} == {8}  # QUEUE_NOT_FOUND
