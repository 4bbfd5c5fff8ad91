"""Bounded queues through the SDK (async and blocking) and brokerctl, against a real
broker: ``max_bytes`` and the overflow policies (SPEC §8.12)."""
from __future__ import annotations

from typing import Any

import pytest

from client import QueueFull

from .test_brokerctl import Ctl, ctl  # noqa: F401  (ctl: the fixture)
from .test_purge_peek_status import api, qname  # noqa: F401  (api: the fixture)


async def test_reject_refuses_the_whole_batch_past_max_bytes(api: Any) -> None:
    q = qname()
    await api.create_queue(q, max_bytes=6)
    await api.publish_batch(q, [b"abc", b"de"])
    with pytest.raises(QueueFull) as info:
        await api.publish_batch(q, [b"f", b"gh"])
    assert info.value.details == {"queue": q, "limit": 6, "bound": "max_bytes"}
    stats = await api.queue_stats(q)
    assert (stats.messages, stats.bytes, stats.max_bytes, stats.overflow) == (2, 5, 6, "reject")


async def test_dead_letter_oldest_keeps_the_newest_and_dead_letters_the_rest(api: Any) -> None:
    dlq, q = qname("dlq"), qname()
    await api.create_queue(dlq)
    await api.create_queue(q, max_messages=3, overflow="dead_letter_oldest", dead_letter=dlq)
    for i in range(5):
        await api.publish(q, b"reading %d" % i)
    assert [d.body for d in await api.consume(q, 10)] == [b"reading 2", b"reading 3", b"reading 4"]
    dead = await api.peek(q, dead_letter=True)
    assert [(m.body, m.dead_letter.reason if m.dead_letter else None) for m in dead] == [
        (b"reading 0", "overflow"), (b"reading 1", "overflow")]
    stats = await api.queue_stats(q)
    assert (stats.overflowed, stats.dead_lettered, stats.dropped) == (2, 2, 0)


async def test_leased_messages_are_never_evicted(api: Any) -> None:
    q = qname()
    await api.create_queue(q, max_messages=2, overflow="drop_oldest")
    await api.publish_batch(q, [b"a", b"b"])
    leased = await api.consume(q, 2)
    with pytest.raises(QueueFull):
        await api.publish(q, b"c")
    await api.ack(q, [leased[0].id])
    await api.publish(q, b"c")
    assert (await api.queue_stats(q)).overflowed == 0


def test_brokerctl_creates_and_shows_the_settings(ctl: Ctl) -> None:  # noqa: F811
    q = qname()
    ctl.run("create-queue", q, "--max-bytes", "1000", "--overflow", "drop_oldest")
    stats = ctl.json("stats", q)
    assert (stats["max_bytes"], stats["overflow"], stats["bytes"], stats["overflowed"]) == (
        1000, "drop_oldest", 0, 0)
    row = next(line for line in ctl.run("queues").stdout.splitlines() if line.startswith(q))
    assert "max_bytes=1000" in row and "overflow=drop_oldest" in row
    result = ctl.run("create-queue", qname(), "--overflow", "drop_newest", expect=2)
    assert "drop_newest" in result.stderr
