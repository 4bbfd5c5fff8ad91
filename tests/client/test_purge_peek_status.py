"""queue_purge, peek and message_status through both clients against a real broker.

Each scenario runs twice: with the async :class:`Client` and with the blocking
:class:`SyncClient` (its calls made from worker threads), both against the in-process
broker of the ``broker_addr`` fixture. Restart scenarios use a broker child process.
"""
from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest
import trio
import trio.testing

from client import (
    AckResult,
    Client,
    InvalidArgument,
    LimitExceeded,
    Message,
    MessageStatus,
    PurgeResult,
    QueueNotFound,
    SyncClient,
)

from ..broker_process import BrokerProcess
from .apis import api  # noqa: F401  (the fixture)

_names = itertools.count()
HOUR_MS = 3_600_000


def qname(prefix: str = "ins") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}-{next(_names)}"


def ids_of(result: Any) -> list[int]:
    return [m.id for m in result]


def near(value: int, expected: int, slack_ms: int = 10_000) -> bool:
    return expected - slack_ms <= value <= expected + slack_ms


# --- queue_purge -----------------------------------------------------------------------------


async def test_purge_deletes_ready_and_delayed_and_keeps_leased(api: Any) -> None:
    q = qname()
    await api.create_queue(q)
    await api.publish_batch(q, [b"a", b"b", b"c"])            # ids 1..3
    await api.publish(q, b"later", delay_ms=HOUR_MS)          # id 4
    (leased,) = await api.consume(q)                          # id 1
    assert leased.id == 1

    result = await api.purge_queue(q)
    assert result == PurgeResult(q, ready=2, delayed=1, leased=0) and result.total == 3
    stats = await api.queue_stats(q)
    assert (stats.messages, stats.ready, stats.delayed, stats.leased) == (1, 0, 0, 1)
    assert (stats.acked, stats.dead_lettered, stats.dropped) == (0, 0, 0)   # not counted as acked
    assert await api.ack(q, [2, 3, 4]) == AckResult(0, (2, 3, 4))           # purged ids are missing

    assert await api.purge_queue(q, leased=True) == PurgeResult(q, ready=0, delayed=0, leased=1)
    assert (await api.queue_stats(q)).messages == 0
    assert await api.ack(q, [1]) == AckResult(0, (1,))
    assert await api.purge_queue(q, leased=True) == PurgeResult(q, 0, 0, 0)
    assert await api.publish(q, b"again") == 5                               # ids go on


async def test_purge_does_not_dead_letter(api: Any) -> None:
    dlq, q = qname("dlq"), qname()
    await api.create_queue(dlq)
    await api.create_queue(q, max_attempts=1, dead_letter=dlq)
    await api.publish_batch(q, [b"a", b"b"])
    await api.consume(q)
    assert await api.purge_queue(q, leased=True) == PurgeResult(q, 1, 0, 1)
    assert (await api.queue_stats(dlq)).messages == 0


async def test_purge_errors(api: Any) -> None:
    missing = qname()
    with pytest.raises(QueueNotFound) as exc:
        await api.purge_queue(missing)
    assert exc.value.details == {"field": "queue", "queue": missing}
    q = qname()
    await api.create_queue(q)
    for bad in (1, 0, "yes"):
        with pytest.raises(InvalidArgument) as invalid:
            await api.request("queue_purge", {"queue": q, "leased": bad})
        assert invalid.value.details["field"] == "leased"
    # nil is the default
    assert await api.request("queue_purge", {"queue": q, "leased": None}) == {
        "queue": q, "ready": 0, "delayed": 0, "leased": 0, "waiting": 0,
    }


async def test_purge_leaves_a_held_consume_waiting(broker_addr: tuple[str, int]) -> None:
    q = qname()
    async with Client.connect(broker_addr) as client:
        await client.create_queue(q)
        await client.publish(q, b"later", delay_ms=HOUR_MS)
        got: list[Any] = []

        async def wait() -> None:
            got.extend(await client.consume(q, wait_ms=60_000))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()        # the consume is held
            assert await client.purge_queue(q) == PurgeResult(q, 0, 1, 0)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []                                    # still held
            mid = await client.publish(q, b"now")
        assert [d.id for d in got] == [mid]


# --- peek --------------------------------------------------------------------------------------


async def test_peek_shows_every_state_in_order_and_changes_nothing(api: Any) -> None:
    q = qname()
    await api.create_queue(q, visibility_ms=60_000)
    await api.publish_batch(q, [Message(b"a", key=b"k", priority=3), b"b", b"c", b"d"])   # ids 1..4
    await api.consume(q)                                       # id 1, lease 60 s
    await api.consume(q, visibility_ms=10_000)                 # id 2, lease 10 s: expires first
    await api.publish(q, b"later", delay_ms=HOUR_MS)           # id 5
    now = await api.ping()

    result = await api.peek(q)
    assert result.queue == q and len(result) == 5
    assert [(m.id, m.state, m.attempts) for m in result] == [
        (3, "ready", 0), (4, "ready", 0), (2, "leased", 1), (1, "leased", 1), (5, "delayed", 0),
    ]
    by_id = {m.id: m for m in result}
    assert (by_id[1].body, by_id[1].key, by_id[1].priority) == (b"a", b"k", 3)
    assert (by_id[3].key, by_id[3].priority, by_id[3].until_ms) == (None, 0, 0)
    assert near(by_id[1].until_ms, now + 60_000) and near(by_id[2].until_ms, now + 10_000)
    assert near(by_id[5].until_ms, now + HOUR_MS)

    assert ids_of(await api.peek(q, state="ready")) == [3, 4]
    assert ids_of(await api.peek(q, state="leased")) == [2, 1]
    assert ids_of(await api.peek(q, state="delayed")) == [5]
    assert ids_of(await api.peek(q, 1)) == [3]
    assert ids_of(await api.peek(q, 2, state="leased")) == [2, 1]

    stats = await api.queue_stats(q)
    assert (stats.ready, stats.leased, stats.delayed) == (2, 2, 1)
    (d,) = await api.consume(q)
    assert (d.id, d.attempt) == (3, 1)                          # peeking counted no attempt


async def test_peek_takes_ready_messages_in_consume_order(api: Any) -> None:
    prio = qname()
    await api.create_queue(prio, kind="priority")
    await api.publish_batch(prio, [Message(b"x", priority=p) for p in (1, 5, 3, 5)])
    assert ids_of(await api.peek(prio)) == [2, 4, 3, 1]
    lifo = qname()
    await api.create_queue(lifo, kind="lifo")
    await api.publish_batch(lifo, [b"1", b"2", b"3"])
    assert ids_of(await api.peek(lifo)) == [3, 2, 1]
    sharded = qname()
    await api.create_queue(sharded, shards=2)
    await api.publish_batch(sharded, [b"1", b"2", b"3", b"4"])   # unkeyed: id mod 2 -> shards 1, 0, 1, 0
    assert ids_of(await api.peek(sharded)) == [2, 4, 1, 3]   # shard 0 first, then shard 1


async def test_peek_the_dead_letter_queue(api: Any) -> None:
    dlq, q = qname("dlq"), qname()
    await api.create_queue(dlq)
    await api.create_queue(q, max_attempts=1, dead_letter=dlq)
    await api.publish(q, b"poison", key=b"k")
    await api.consume(q)
    await api.nack(q, [1])
    assert len(await api.peek(q)) == 0
    dead = await api.peek(q, dead_letter=True)
    assert dead.queue == dlq
    assert [(m.id, m.body, m.key, m.attempts, m.state) for m in dead] == [(1, b"poison", b"k", 0, "ready")]

    with pytest.raises(InvalidArgument) as invalid:
        await api.peek(dlq, dead_letter=True)                   # dlq has no dead-letter queue
    assert invalid.value.details["field"] == "dead_letter"
    await api.delete_queue(dlq)
    with pytest.raises(QueueNotFound) as missing:
        await api.peek(q, dead_letter=True)
    assert missing.value.details == {"field": "dead_letter", "queue": dlq}


async def test_peek_errors(api: Any) -> None:
    missing = qname()
    with pytest.raises(QueueNotFound):
        await api.peek(missing)
    q = qname()
    await api.create_queue(q)
    max_batch = api.info.max_batch
    for field, kwargs in [
        ("max", {"max": 0}), ("max", {"max": max_batch + 1}), ("state", {"state": "gone"}),
        ("state", {"state": "READY"}),
    ]:
        with pytest.raises(InvalidArgument) as invalid:
            await api.peek(q, **kwargs)
        assert invalid.value.details["field"] == field, kwargs
    for bad in (1, "true"):
        with pytest.raises(InvalidArgument) as invalid:
            await api.request("peek", {"queue": q, "dead_letter": bad})
        assert invalid.value.details["field"] == "dead_letter"
    assert await api.request("peek", {"queue": q, "max": None, "state": None, "dead_letter": None}) == {
        "queue": q, "messages": [],
    }


# --- message_status ----------------------------------------------------------------------------


async def test_message_status_of_every_state(api: Any) -> None:
    q = qname()
    await api.create_queue(q, visibility_ms=60_000)
    await api.publish_batch(q, [b"1", b"2", b"3"])
    await api.consume(q, 2)                                     # ids 1, 2 leased
    await api.ack(q, [1])                                       # id 1 gone
    await api.publish(q, b"4", delay_ms=HOUR_MS)                # id 4 delayed
    now = await api.ping()

    statuses = await api.message_status(q, [1, 2, 3, 4, 0, 99, 3])
    assert [(s.id, s.state, s.queue, s.attempts) for s in statuses] == [
        (1, "gone", q, 0), (2, "leased", q, 1), (3, "ready", q, 0), (4, "delayed", q, 0),
        (0, "unknown", q, 0), (99, "unknown", q, 0), (3, "ready", q, 0),
    ]
    until = {s.id: s.until_ms for s in statuses}
    assert near(until[2], now + 60_000) and near(until[4], now + HOUR_MS)
    assert until[1] == until[3] == until[0] == until[99] == 0
    assert all(s.dead_letter_id is None for s in statuses)

    assert (await api.purge_queue(q, leased=True)).total == 3
    assert [s.state for s in await api.message_status(q, [2, 3, 4, 5])] == ["gone", "gone", "gone", "unknown"]


async def test_message_status_follows_one_hop_to_the_dead_letter_queue(api: Any) -> None:
    dlq, q = qname("dlq"), qname()
    await api.create_queue(dlq)
    await api.create_queue(q, max_attempts=1, dead_letter=dlq)
    await api.publish(dlq, b"already there")                    # so the moved message gets id 2 there
    await api.publish_batch(q, [b"a", b"b"])
    await api.consume(q, 2)
    await api.nack(q, [1, 2])                                   # both out of attempts: to the DLQ as 2, 3

    statuses = await api.message_status(q, [1, 2])
    at = statuses[0].dead_lettered_at_ms
    assert at is not None and statuses[1].dead_lettered_at_ms == at      # one nack
    published = statuses[0].published_at
    assert 0 < published <= at                                  # kept from the first publish
    assert statuses == [
        MessageStatus(1, "dead_lettered", dlq, 0, 0, dead_letter_id=2, reason="max_attempts", dead_lettered_at_ms=at,
                      published_at=published),
        MessageStatus(2, "dead_lettered", dlq, 0, 0, dead_letter_id=3, reason="max_attempts", dead_lettered_at_ms=at,
                      published_at=published),
    ]
    await api.consume(dlq, 2)                                   # dlq ids 1 and 2 leased there
    (first, second) = await api.message_status(q, [1, 2])
    assert (first.state, first.attempts, first.until_ms, first.dead_letter_id) == ("dead_lettered", 1, 0, 2)
    assert (second.attempts, second.queue) == (0, dlq)
    await api.ack(dlq, [2])                                     # acked in the DLQ: gone
    assert await api.message_status(q, [1]) == [MessageStatus(1, "gone", q, 0, 0)]


async def test_message_status_of_a_dropped_message_is_gone(api: Any) -> None:
    q = qname()
    await api.create_queue(q, max_attempts=1)
    mid = await api.publish(q, b"x")
    await api.consume(q)
    await api.nack(q, [mid])
    assert (await api.queue_stats(q)).dropped == 1
    assert await api.message_status(q, [mid]) == [MessageStatus(mid, "gone", q, 0, 0)]


async def test_message_status_errors(api: Any) -> None:
    missing = qname()
    with pytest.raises(QueueNotFound):
        await api.message_status(missing, [1])
    q = qname()
    await api.create_queue(q)
    for ids in ([], [-1], [2**63], [1.0], [True]):
        with pytest.raises(InvalidArgument) as invalid:
            await api.message_status(q, ids)
        assert invalid.value.details["field"] == "ids", ids
    max_batch = api.info.max_batch
    with pytest.raises(LimitExceeded) as limit:
        await api.message_status(q, [1] * (max_batch + 1))
    assert limit.value.details == {"field": "ids", "limit": max_batch}
    assert len(await api.message_status(q, [1] * max_batch)) == max_batch   # duplicates kept


# --- across a restart --------------------------------------------------------------------------


def test_purge_and_statuses_survive_a_kill(broker_process: BrokerProcess) -> None:
    proc = broker_process
    dlq, q = qname("dlq"), qname()
    with SyncClient(proc.addr) as client:
        client.create_queue(dlq)
        client.create_queue(q, max_attempts=1, dead_letter=dlq)
        client.publish_batch(q, [b"1", b"2", b"3", b"4"])
        client.consume(q, 2)                                    # ids 1, 2
        client.nack(q, [1])                                     # 1 -> dlq id 1
        client.ack(q, [2])                                      # 2 gone
        assert client.purge_queue(q) == PurgeResult(q, 2, 0, 0)  # 3, 4 gone
        client.publish(q, b"5")
    proc.kill()
    proc.start()
    with SyncClient(proc.addr) as client:
        assert [(s.state, s.queue, s.dead_letter_id) for s in client.message_status(q, [1, 2, 3, 4, 5, 6])] == [
            ("dead_lettered", dlq, 1), ("gone", q, None), ("gone", q, None), ("gone", q, None),
            ("ready", q, None), ("unknown", q, None),
        ]
        assert [(m.id, m.state) for m in client.peek(q)] == [(5, "ready")]
        assert client.peek(q, dead_letter=True).queue == dlq
        assert (client.queue_stats(q).messages, client.queue_stats(q).acked) == (1, 1)
