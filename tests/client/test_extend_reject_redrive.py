"""extend, reject, redrive, nack's error and the dead-letter records, end to end.

Each scenario runs twice: with the async :class:`Client` and with the blocking
:class:`SyncClient` (its calls made from worker threads), both against the in-process
broker of the ``broker_addr`` fixture. Restart scenarios use a broker child process.
The contract is SPEC.md §5.10 and §5.12-5.16 and §8.4.
"""
from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from client import (
    Client,
    DeadLetterInfo,
    ExtendResult,
    InvalidArgument,
    LimitExceeded,
    Message,
    MessageStatus,
    NackResult,
    QueueNotFound,
    RedriveResult,
    RejectResult,
    SyncClient,
)

from ..broker_process import BrokerProcess
from .test_purge_peek_status import HOUR_MS, api, ids_of, near, qname  # noqa: F401  (api: the fixture)


def dead_letter_of(info: DeadLetterInfo | None) -> tuple[Any, ...]:
    """A dead-letter record without its time."""
    assert info is not None
    return info.queue, info.id, info.attempts, info.reason, info.error


# --- queue_create: max_attempts defaults to 20 ---------------------------------------------------


async def test_max_attempts_defaults_to_20_and_0_stays_unlimited(api: Any) -> None:
    q, unlimited = qname(), qname()
    await api.create_queue(q)
    await api.create_queue(unlimited, max_attempts=0)
    assert (await api.queue_stats(q)).max_attempts == 20
    assert (await api.queue_stats(unlimited)).max_attempts == 0
    assert await api.create_queue(q, max_attempts=20) is False          # the same settings


async def test_the_twentieth_release_dead_letters_by_default(api: Any) -> None:
    dlq, q = qname("dlq"), qname()
    await api.create_queue(dlq)
    await api.create_queue(q, dead_letter=dlq)
    mid = await api.publish(q, b"flaky")
    for attempt in range(1, 21):
        (d,) = await api.consume(q)
        assert (d.id, d.attempt) == (mid, attempt)
        assert await api.nack(q, [mid], error=f"failure {attempt}") == NackResult(1, ())
    assert await api.consume(q) == []
    (dead,) = await api.peek(dlq)
    assert dead_letter_of(dead.dead_letter) == (q, mid, 20, "max_attempts", "failure 20")


# --- extend ---------------------------------------------------------------------------------------


async def test_extend_moves_the_deadline_and_counts_no_attempt(api: Any) -> None:
    q = qname()
    await api.create_queue(q, visibility_ms=60_000)
    await api.publish_batch(q, [b"a", b"b", b"c"])
    await api.publish(q, b"later", delay_ms=HOUR_MS)                   # id 4, delayed
    assert ids_of(await api.consume(q, 2)) == [1, 2]
    now = await api.ping()

    assert await api.extend(q, [1, 3, 4, 99, 1], visibility_ms=HOUR_MS) == ExtendResult(1, (3, 4, 99))
    leased = {m.id: m for m in await api.peek(q, state="leased")}
    assert near(leased[1].until_ms, now + HOUR_MS) and near(leased[2].until_ms, now + 60_000)
    assert leased[1].attempts == 1
    (status,) = await api.message_status(q, [1])
    assert (status.state, status.attempts, status.until_ms) == ("leased", 1, leased[1].until_ms)
    assert ids_of(await api.peek(q, state="leased")) == [2, 1]          # by deadline now

    # Without visibility_ms the queue's own applies, which shortens this lease again.
    assert await api.extend(q, [1]) == ExtendResult(1, ())
    (status,) = await api.message_status(q, [1])
    assert near(status.until_ms, now + 60_000)
    stats = await api.queue_stats(q)
    assert (stats.leased, stats.ready, stats.delayed, stats.expired) == (2, 1, 1, 0)


async def test_a_shortened_lease_expires(api: Any) -> None:
    q = qname()
    await api.create_queue(q, visibility_ms=HOUR_MS)
    mid = await api.publish(q, b"x")
    await api.consume(q)
    assert await api.extend(q, [mid], visibility_ms=1) == ExtendResult(1, ())
    (again,) = await api.consume(q, wait_ms=10_000)                     # released by expiry
    assert (again.id, again.attempt) == (mid, 2)
    assert (await api.queue_stats(q)).expired == 1


async def test_extend_errors(api: Any) -> None:
    missing = qname()
    with pytest.raises(QueueNotFound) as not_found:
        await api.extend(missing, [1])
    assert not_found.value.details == {"field": "queue", "queue": missing}
    q = qname()
    await api.create_queue(q)
    for field, ids, kwargs in [
        ("ids", [], {}), ("ids", [-1], {}), ("ids", [True], {}),
        ("visibility_ms", [1], {"visibility_ms": 0}), ("visibility_ms", [1], {"visibility_ms": 43_200_001}),
        ("ids", [-1], {"visibility_ms": 0}),                            # ids are checked first
    ]:
        with pytest.raises(InvalidArgument) as invalid:
            await api.extend(q, ids, **kwargs)
        assert invalid.value.details["field"] == field, (ids, kwargs)
    max_batch = api.info.max_batch
    with pytest.raises(LimitExceeded) as limit:
        await api.extend(q, [1] * (max_batch + 1))
    assert limit.value.details == {"field": "ids", "limit": max_batch}
    assert await api.extend(q, [1], visibility_ms=43_200_000) == ExtendResult(0, (1,))
    assert await api.request("extend", {"queue": q, "ids": [1], "visibility_ms": None}) == {
        "extended": 0, "missing": [1],
    }


# --- reject and nack's error -----------------------------------------------------------------------


async def test_reject_dead_letters_at_once_with_its_record(api: Any) -> None:
    dlq, q = qname("dlq"), qname()
    await api.create_queue(dlq)
    await api.create_queue(q, max_attempts=5, dead_letter=dlq)
    await api.publish_batch(q, [Message(b"a", key=b"k", priority=3), b"b", b"c"])   # ids 1..3
    await api.consume(q, 3)
    assert await api.nack(q, [2], error="timeout") == NackResult(1, ())
    (d,) = await api.consume(q)
    assert (d.id, d.attempt) == (2, 2)
    assert await api.publish(q, b"d") == 4                               # ready

    assert await api.reject(q, [1, 4, 99, 1], error="bad json") == RejectResult(1, (4, 99))
    assert await api.reject(q, [2]) == RejectResult(1, ())              # keeps the nack's error
    assert await api.reject(q, [2]) == RejectResult(0, (2,))

    dead = await api.peek(q, dead_letter=True)
    assert dead.queue == dlq
    assert [(m.id, m.body, m.key, m.priority, m.attempts, m.state) for m in dead] == [
        (1, b"a", b"k", 3, 0, "ready"), (2, b"b", None, 0, 0, "ready"),
    ]
    assert [dead_letter_of(m.dead_letter) for m in dead] == [
        (q, 1, 1, "rejected", "bad json"), (q, 2, 2, "rejected", "timeout"),
    ]
    now = await api.ping()
    at = [m.dead_letter.at_ms for m in dead if m.dead_letter is not None]
    assert all(near(t, now) for t in at)

    statuses = await api.message_status(q, [1, 2, 3, 4])
    published = statuses[0].published_at
    assert published == statuses[1].published_at == dead.messages[0].published_at and near(published, now)
    assert statuses == [
        MessageStatus(1, "dead_lettered", dlq, 0, 0, 1, "rejected", "bad json", at[0], published_at=published),
        MessageStatus(2, "dead_lettered", dlq, 0, 0, 2, "rejected", "timeout", at[1], published_at=published),
        MessageStatus(3, "leased", q, 1, statuses[2].until_ms, published_at=published),
        MessageStatus(4, "ready", q, 0, 0, published_at=statuses[3].published_at),
    ]
    stats, dlq_stats = await api.queue_stats(q), await api.queue_stats(dlq)
    assert (stats.dead_lettered, stats.nacked, stats.dropped, stats.messages) == (2, 1, 0, 2)
    assert (dlq_stats.published, dlq_stats.ready) == (2, 2)
    # Ordinary messages carry no dead-letter record.
    assert all(m.dead_letter is None for m in await api.peek(q))


async def test_reject_without_a_dead_letter_queue_drops(api: Any) -> None:
    q = qname()
    await api.create_queue(q)
    mid = await api.publish(q, b"poison")
    await api.consume(q)
    assert await api.reject(q, [mid], error="cannot parse") == RejectResult(1, ())
    stats = await api.queue_stats(q)
    assert (stats.messages, stats.dropped, stats.dead_lettered, stats.nacked) == (0, 1, 0, 0)
    assert await api.message_status(q, [mid]) == [MessageStatus(mid, "gone", q, 0, 0)]


async def test_reject_wakes_a_consume_held_on_the_dead_letter_queue(broker_addr: tuple[str, int]) -> None:
    dlq, q = qname("dlq"), qname()
    async with Client.connect(broker_addr) as client:
        await client.create_queue(dlq)
        await client.create_queue(q, dead_letter=dlq)
        mid = await client.publish(q, b"poison")
        await client.consume(q)
        got: list[Any] = []

        async def wait() -> None:
            got.extend(await client.consume(dlq, wait_ms=60_000))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()                  # the consume is held
            assert await client.reject(q, [mid]) == RejectResult(1, ())
        assert [(d.body, d.attempt) for d in got] == [(b"poison", 1)]


async def test_the_last_error_survives_expiry_and_goes_with_max_attempts(api: Any) -> None:
    dlq, q = qname("dlq"), qname()
    await api.create_queue(dlq)
    await api.create_queue(q, max_attempts=3, dead_letter=dlq)
    mid = await api.publish(q, b"x")
    await api.consume(q)
    await api.nack(q, [mid], error="first")
    await api.consume(q)
    await api.nack(q, [mid], error="second")                             # replaces "first"
    await api.consume(q)
    await api.nack(q, [mid])                                             # no error: "second" stays
    assert await api.consume(q) == []
    (dead,) = await api.peek(dlq)
    assert dead_letter_of(dead.dead_letter) == (q, mid, 3, "max_attempts", "second")
    await api.ack(dlq, [dead.id])

    # Lease expiry keeps the error too, and the message is dead-lettered with it.
    other = await api.publish(q, b"y")
    await api.consume(q)
    await api.nack(q, [other], error="kept")
    await api.consume(q)
    await api.nack(q, [other])
    (last,) = await api.consume(q, visibility_ms=1)                      # the third lease expires
    assert (last.id, last.attempt) == (other, 3)
    (arrived,) = await api.consume(dlq, wait_ms=10_000)
    assert arrived.body == b"y"
    (status,) = await api.message_status(q, [other])
    assert (status.state, status.dead_letter_id, status.reason, status.error) == (
        "dead_lettered", arrived.id, "max_attempts", "kept",
    )
    assert (await api.queue_stats(q)).expired == 1


async def test_error_text_checks(api: Any) -> None:
    q = qname()
    await api.create_queue(q)
    longest = "é" * 512                                                  # 1024 bytes of UTF-8
    assert await api.nack(q, [1], error=longest) == NackResult(0, (1,))
    assert await api.reject(q, [1], error=longest) == RejectResult(0, (1,))
    for op, args in [
        ("nack", {"error": "é" * 513}), ("nack", {"error": "x" * 1025}), ("nack", {"error": 5}),
        ("nack", {"error": b"bytes"}), ("reject", {"error": "x" * 1025}), ("reject", {"error": ["x"]}),
    ]:
        with pytest.raises(InvalidArgument) as invalid:
            await api.request(op, {"queue": q, "ids": [1], **args})
        assert invalid.value.details["field"] == "error", (op, args)
    # nack checks delay_ms before error; both check ids before error.
    with pytest.raises(InvalidArgument) as invalid:
        await api.request("nack", {"queue": q, "ids": [1], "delay_ms": -1, "error": 5})
    assert invalid.value.details["field"] == "delay_ms"
    with pytest.raises(InvalidArgument) as invalid:
        await api.request("reject", {"queue": q, "ids": [], "error": 5})
    assert invalid.value.details["field"] == "ids"
    with pytest.raises(QueueNotFound):
        await api.reject(qname(), [1])
    max_batch = api.info.max_batch
    with pytest.raises(LimitExceeded):
        await api.reject(q, [1] * (max_batch + 1))


# --- redrive ---------------------------------------------------------------------------------------


async def test_redrive_moves_movable_dead_letters_back(api: Any) -> None:
    dlq, q1, q2 = qname("dlq"), qname(), qname()
    await api.create_queue(dlq)
    await api.create_queue(q1, dead_letter=dlq)
    await api.create_queue(q2, dead_letter=dlq, shards=2)
    await api.publish_batch(q1, [Message(b"a", key=b"k1", priority=4), b"b"])
    await api.consume(q1, 2)
    await api.reject(q1, [1, 2])                                         # dlq 1, 2
    await api.publish(q2, b"c")
    await api.consume(q2)
    await api.reject(q2, [1], error="x")                                 # dlq 3
    await api.publish(dlq, b"direct")                                    # dlq 4: no source
    await api.consume(dlq)                                               # dlq 1 leased ...
    await api.nack(dlq, [1], delay_ms=HOUR_MS)                           # ... then delayed: movable
    (leased,) = await api.consume(dlq)                                   # dlq 2 leased: skipped
    assert leased.id == 2
    before = await api.queue_stats(dlq)

    assert await api.redrive(dlq) == RedriveResult(2, {q1: 1, q2: 1}, 2)
    assert [(m.id, m.state, m.dead_letter is None) for m in await api.peek(dlq)] == [
        (4, "ready", True), (2, "leased", False),
    ]
    back = await api.peek(q1)
    assert [(m.id, m.body, m.key, m.priority, m.attempts, m.state, m.dead_letter) for m in back] == [
        (3, b"a", b"k1", 4, 0, "ready", None),
    ]
    assert [(m.id, m.body, m.dead_letter) for m in await api.peek(q2)] == [(2, b"c", None)]
    after = await api.queue_stats(dlq)
    assert (after.messages, after.delayed, after.leased, after.ready) == (2, 0, 1, 1)
    assert (after.published, after.acked, after.nacked, after.dead_lettered, after.dropped) == (
        before.published, before.acked, before.nacked, before.dead_lettered, before.dropped,
    )
    assert ((await api.queue_stats(q1)).published, (await api.queue_stats(q2)).published) == (3, 2)
    # The old ids are gone; the messages live on under their new ids.
    assert [s.state for s in await api.message_status(q1, [1, 2, 3])] == ["gone", "dead_lettered", "ready"]
    assert (await api.message_status(q2, [1]))[0].state == "gone"
    (d,) = await api.consume(q1)
    assert (d.id, d.attempt, d.body) == (3, 1, b"a")

    await api.nack(dlq, [2])
    assert await api.redrive(dlq, ids=[2, 4, 99, 2]) == RedriveResult(1, {q1: 1}, 2)
    assert await api.redrive(dlq) == RedriveResult(0, {}, 1)
    assert ids_of(await api.peek(dlq)) == [4]


async def test_redrive_max_takes_lowest_ids_and_ids_keep_request_order(api: Any) -> None:
    dlq, q = qname("dlq"), qname()
    await api.create_queue(dlq)
    await api.create_queue(q, dead_letter=dlq)
    await api.publish_batch(q, [b"1", b"2", b"3", b"4", b"5"])
    await api.consume(q, 5)
    await api.reject(q, [5, 4, 3, 2, 1])                                 # request order: dlq ids 1..5
    assert [m.body for m in await api.peek(dlq)] == [b"5", b"4", b"3", b"2", b"1"]

    assert await api.redrive(dlq, max=2) == RedriveResult(2, {q: 2}, 0)
    assert [(m.id, m.body) for m in await api.peek(q)] == [(6, b"5"), (7, b"4")]
    assert await api.redrive(dlq, ids=[5, 3]) == RedriveResult(2, {q: 2}, 0)
    assert [(m.id, m.body) for m in await api.peek(q)] == [(6, b"5"), (7, b"4"), (8, b"1"), (9, b"3")]
    assert await api.redrive(dlq, max=10) == RedriveResult(1, {q: 1}, 0)
    assert await api.redrive(dlq, max=10) == RedriveResult(0, {}, 0)


async def test_redrive_skips_dead_letters_whose_source_queue_is_gone(api: Any) -> None:
    dlq, q = qname("dlq"), qname()
    await api.create_queue(dlq)
    await api.create_queue(q, dead_letter=dlq)
    await api.publish(q, b"orphan")
    await api.consume(q)
    await api.reject(q, [1])
    await api.delete_queue(q)
    assert await api.redrive(dlq) == RedriveResult(0, {}, 1)
    await api.create_queue(q, dead_letter=dlq)                           # a new queue of that name
    assert await api.redrive(dlq) == RedriveResult(0, {}, 1)
    assert await api.redrive(dlq, ids=[1]) == RedriveResult(0, {}, 1)
    assert (await api.queue_stats(q)).messages == 0
    assert (await api.queue_stats(dlq)).messages == 1


async def test_redrive_ignores_the_source_queues_capacity(api: Any) -> None:
    dlq, q = qname("dlq"), qname()
    await api.create_queue(dlq)
    await api.create_queue(q, dead_letter=dlq, max_messages=1)
    await api.publish(q, b"a")
    await api.consume(q)
    await api.reject(q, [1])
    await api.publish(q, b"b")                                           # q is full again
    assert await api.redrive(dlq) == RedriveResult(1, {q: 1}, 0)
    assert (await api.queue_stats(q)).messages == 2


async def test_redrive_wakes_a_consume_held_on_the_source_queue(broker_addr: tuple[str, int]) -> None:
    dlq, q = qname("dlq"), qname()
    async with Client.connect(broker_addr) as client:
        await client.create_queue(dlq)
        await client.create_queue(q, dead_letter=dlq)
        await client.publish(q, b"again")
        await client.consume(q)
        await client.reject(q, [1])
        got: list[Any] = []

        async def wait() -> None:
            got.extend(await client.consume(q, wait_ms=60_000))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert await client.redrive(dlq) == RedriveResult(1, {q: 1}, 0)
        assert [(d.id, d.body, d.attempt) for d in got] == [(2, b"again", 1)]


async def test_redrive_errors(api: Any) -> None:
    missing = qname()
    with pytest.raises(QueueNotFound) as not_found:
        await api.redrive(missing)
    assert not_found.value.details == {"field": "queue", "queue": missing}
    dlq = qname("dlq")
    await api.create_queue(dlq)
    for field, kwargs in [
        ("max", {"max": 0}), ("max", {"max": 2**31}), ("ids", {"ids": []}), ("ids", {"ids": [-1]}),
        ("ids", {"max": 1, "ids": [1]}), ("max", {"max": 0, "ids": [-1]}),
    ]:
        with pytest.raises(InvalidArgument) as invalid:
            await api.redrive(dlq, **kwargs)
        assert invalid.value.details["field"] == field, kwargs
    max_batch = api.info.max_batch
    with pytest.raises(LimitExceeded) as limit:
        await api.redrive(dlq, ids=[1] * (max_batch + 1))
    assert limit.value.details == {"field": "ids", "limit": max_batch}
    assert await api.redrive(dlq, max=2**31 - 1) == RedriveResult(0, {}, 0)
    assert await api.request("redrive", {"queue": dlq, "max": None, "ids": None}) == {
        "redriven": 0, "queues": {}, "skipped": 0,
    }


# --- across restarts --------------------------------------------------------------------------------


def _dead_letter_scenario(client: SyncClient, dlq: str, q: str) -> None:
    client.create_queue(dlq)
    client.create_queue(q, max_attempts=2, dead_letter=dlq, visibility_ms=HOUR_MS)
    client.publish_batch(q, [b"1", b"2", b"3", b"4"])
    client.consume(q, 4)
    assert client.reject(q, [1], error="rejected before the restart") == RejectResult(1, ())
    client.nack(q, [2, 3], error="nacked before the restart")
    client.consume(q, 2)                                                 # 2 and 3, attempt 2
    client.nack(q, [2])                                                  # out of attempts: dlq 2
    assert client.extend(q, [4], visibility_ms=HOUR_MS) == ExtendResult(1, ())


def _check_after_restart(client: SyncClient, dlq: str, q: str) -> None:
    # The restart released the leases of 3 (its second delivery: out of attempts, so
    # dead-lettered with its last error) and 4 (ready again).
    dead = client.peek(dlq)
    assert [(m.id, m.body) for m in dead] == [(1, b"1"), (2, b"2"), (3, b"3")]
    assert [dead_letter_of(m.dead_letter) for m in dead] == [
        (q, 1, 1, "rejected", "rejected before the restart"),
        (q, 2, 2, "max_attempts", "nacked before the restart"),
        (q, 3, 2, "max_attempts", "nacked before the restart"),
    ]
    statuses = client.message_status(q, [1, 2, 3, 4])
    assert [(s.state, s.dead_letter_id, s.reason, s.error) for s in statuses] == [
        ("dead_lettered", 1, "rejected", "rejected before the restart"),
        ("dead_lettered", 2, "max_attempts", "nacked before the restart"),
        ("dead_lettered", 3, "max_attempts", "nacked before the restart"),
        ("ready", None, None, None),
    ]
    assert [s.dead_lettered_at_ms for s in statuses[:3]] == [m.dead_letter.at_ms for m in dead if m.dead_letter]
    assert client.redrive(dlq, ids=[1]) == RedriveResult(1, {q: 1}, 0)
    assert client.message_status(q, [1])[0].state == "gone"


def test_dead_letter_records_and_errors_survive_a_kill(broker_process: BrokerProcess) -> None:
    proc = broker_process
    dlq, q = qname("dlq"), qname()
    with SyncClient(proc.addr) as client:
        _dead_letter_scenario(client, dlq, q)
    proc.kill()
    proc.start()
    with SyncClient(proc.addr) as client:
        _check_after_restart(client, dlq, q)


def test_dead_letter_records_and_errors_survive_a_graceful_restart(broker_process: BrokerProcess) -> None:
    proc = broker_process
    dlq, q = qname("dlq"), qname()
    with SyncClient(proc.addr) as client:
        _dead_letter_scenario(client, dlq, q)
    assert proc.stop() == 0
    proc.start()
    with SyncClient(proc.addr) as client:
        _check_after_restart(client, dlq, q)
    # Redriven messages and a second restart: the moved message stays moved, once.
    assert proc.stop() == 0
    proc.start()
    with SyncClient(proc.addr) as client:
        assert [(m.id, m.body, m.dead_letter) for m in client.peek(q)] == [(4, b"4", None), (5, b"1", None)]
        assert [m.id for m in client.peek(dlq)] == [2, 3]


# --- reply size ------------------------------------------------------------------------------------


async def test_a_peek_of_dead_letters_with_long_errors_fits_the_clients_max_frame(
    broker_addr: tuple[str, int],
) -> None:
    dlq, q = qname("dlq"), qname()
    async with Client.connect(broker_addr) as setup:
        smallest = max(65_536, setup.info.max_message + 4096)           # SPEC §4
        await setup.create_queue(dlq)
        await setup.create_queue(q, dead_letter=dlq, visibility_ms=HOUR_MS)
        count = smallest // 1024 + 100                                  # their error texts alone exceed it
        await setup.publish_batch(q, [b""] * count)
        leased = await setup.consume(q, count)
        assert len(leased) == count
        assert await setup.reject(q, [d.id for d in leased], error="e" * 1024) == RejectResult(count, ())
    async with Client.connect(broker_addr, max_frame=smallest) as client:
        seen = await client.peek(dlq, count)                            # SPEC 5.12: within max_frame
        assert 0 < len(seen) < count
        assert all(m.dead_letter is not None and m.dead_letter.error == "e" * 1024 for m in seen)
