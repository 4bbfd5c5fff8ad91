"""Queue groups (SPEC §8.15): one consume or subscription reading several queues fairly.

Against a real in-process broker on trio's MockClock, through both SDKs: fair shares,
rotation, ``prefix`` groups that see queues created later, held consumes woken by any
member, subscriptions pushing from every member and naming the queue, acks per queue,
refusals, and permissions with auth on.
"""
from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from client import Client, SyncClient
from client.errors import InvalidArgument, LimitExceeded, QueueNotFound

_names = itertools.count()


def prefix() -> str:
    return f"qg-{uuid.uuid4().hex[:6]}-{next(_names)}."


@pytest.fixture
async def client(broker_addr: tuple[str, int]) -> AsyncIterator[Client]:
    async with Client.connect(broker_addr) as c:
        yield c


async def fill(client: Client, queues: dict[str, int]) -> None:
    for name, count in queues.items():
        await client.create_queue(name)
        if count:
            await client.publish_batch(name, [f"{name}:{i}".encode() for i in range(count)])


async def test_a_consume_takes_fair_shares_and_names_each_queue(client: Client) -> None:
    p = prefix()
    busy, quiet, empty = p + "busy", p + "quiet", p + "empty"
    await fill(client, {busy: 100, quiet: 3, empty: 0})
    got = await client.consume_group([busy, quiet, empty], max=10)
    by_queue = Counter(d.queue for d in got)
    assert by_queue == {busy: 7, quiet: 3}                  # quiet's spare share went to busy
    assert all(d.body.decode().startswith(f"{d.queue}:") for d in got)
    # Each delivery is leased in its own queue: acks go there.
    for name in (busy, quiet):
        ids = [d.id for d in got if d.queue == name]
        assert (await client.ack(name, ids)).acked == len(ids)
    assert (await client.queue_stats(quiet)).ready == 0
    assert (await client.queue_stats(busy)).ready == 93


async def test_reads_rotate_so_a_busy_queue_cannot_starve_the_others(client: Client) -> None:
    p = prefix()
    names = [p + n for n in ("a", "b", "c")]
    await fill(client, {names[0]: 50, names[1]: 50, names[2]: 50})
    firsts = []
    for _ in range(6):
        got = await client.consume_group(names, max=1)
        firsts.append(got[0].queue)
    assert sorted(firsts) == sorted(names * 2)              # one each per turn of three
    got = await client.consume_group(prefix=p, max=30)
    assert Counter(d.queue for d in got) == {n: 10 for n in names}


async def test_a_prefix_group_reads_the_queues_that_match_now(client: Client) -> None:
    p = prefix()
    await fill(client, {p + "one": 2, "other-" + p: 5})
    assert {d.queue for d in await client.consume_group(prefix=p, max=10)} == {p + "one"}
    await fill(client, {p + "two": 2})                      # created after the first read
    assert {d.queue for d in await client.consume_group(prefix=p, max=10)} == {p + "two"}
    assert await client.consume_group(prefix=p + "none", max=10) == []


async def test_a_held_consume_wakes_for_any_member(autojump_clock: trio.testing.MockClock,
                                                   client: Client) -> None:
    p, q = prefix(), prefix()
    await fill(client, {p + "a": 0, p + "b": 0, q + "x": 0})
    results: list[Any] = []

    async def held(**kw: Any) -> None:
        results.append(await client.consume_group(max=5, wait_ms=60_000, **kw))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(held, queues=[p + "a", p + "b"]))
        nursery.start_soon(partial(held, prefix=q))
        await trio.sleep(1)
        assert results == []
        await client.publish(p + "b", b"first")
        await trio.sleep(1)
        assert [[(d.queue, d.body) for d in r] for r in results] == [[(p + "b", b"first")]]
        await client.create_queue(q + "late")               # made while the prefix consume waits
        await client.publish(q + "late", b"second")
    assert [[(d.queue, d.body) for d in r] for r in results] == [[(p + "b", b"first")], [(q + "late", b"second")]]


async def test_a_held_consume_ends_empty_when_its_wait_passes(autojump_clock: trio.testing.MockClock,
                                                             client: Client) -> None:
    p = prefix()
    await fill(client, {p + "a": 0})
    start = trio.current_time()
    assert await client.consume_group(prefix=p, max=5, wait_ms=2_000) == []
    assert trio.current_time() - start == pytest.approx(2.0, abs=0.1)


async def test_a_subscription_pushes_from_every_member_and_acks_per_queue(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    p = prefix()
    await fill(client, {p + "a": 5, p + "b": 5})
    seen: Counter[str] = Counter()
    async with client.subscribe(prefix=p, credit=4) as sub:
        async for msg in sub:
            async with msg:
                seen[msg.queue] += 1
                assert msg.body.decode().startswith(f"{msg.queue}:")
            if sum(seen.values()) == 10:
                break
        await client.create_queue(p + "c")                  # joins the prefix group
        await client.publish(p + "c", b"later")
        with trio.fail_after(60):
            msg = await sub.__anext__()
        assert (msg.queue, msg.body) == (p + "c", b"later")
        await msg.ack()
    assert seen == {p + "a": 5, p + "b": 5}
    for name in (p + "a", p + "b", p + "c"):
        stats = await client.queue_stats(name)
        assert (stats.ready, stats.leased) == (0, 0)


async def test_leaving_a_group_subscription_gives_back_its_buffer_to_each_queue(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    p = prefix()
    await fill(client, {p + "a": 3, p + "b": 3})
    async with client.subscribe(queues=[p + "a", p + "b"], credit=6) as sub:
        with trio.fail_after(60):
            while sub.buffered < 6:
                await trio.sleep(0.01)
    for name in (p + "a", p + "b"):
        stats = await client.queue_stats(name)
        assert (stats.ready, stats.leased) == (3, 0)


async def test_a_queues_group_subscription_ends_when_one_of_its_queues_is_deleted(
        autojump_clock: trio.testing.MockClock, client: Client) -> None:
    p = prefix()
    await fill(client, {p + "a": 0, p + "b": 0})
    async with client.subscribe(queues=[p + "a", p + "b"]) as sub:
        await trio.sleep(1)
        await client.delete_queue(p + "b")
        with trio.fail_after(60):
            async for msg in sub:
                raise AssertionError(f"unexpected {msg!r}")
        assert sub.end_reason == "queue_deleted"


async def test_bad_groups_are_refused_with_typed_errors(client: Client) -> None:
    p = prefix()
    await fill(client, {p + "a": 1})
    with pytest.raises(QueueNotFound):
        await client.consume_group([p + "a", p + "missing"])
    with pytest.raises(InvalidArgument):
        await client._request("consume", {"queue": p + "a", "prefix": p})
    with pytest.raises(InvalidArgument):
        await client._request("consume", {"queues": []})
    with pytest.raises(InvalidArgument):
        await client._request("consume", {"queues": ["bad name!"]})
    with pytest.raises(LimitExceeded):
        await client._request("consume", {"queues": [f"q{i}" for i in range(1001)]})
    with pytest.raises(QueueNotFound):
        async with client.subscribe(queues=[p + "missing"]):
            pass
    with pytest.raises(ValueError):
        client.subscribe(p + "a", prefix=p)


def test_the_blocking_client_reads_a_group(sync_broker_addr: tuple[str, int]) -> None:
    p = prefix()
    with SyncClient(sync_broker_addr) as client:
        for name in (p + "a", p + "b"):
            client.create_queue(name)
            client.publish_batch(name, [b"1", b"2"])
        got = client.consume_group(prefix=p, max=4)
        assert Counter(d.queue for d in got) == {p + "a": 2, p + "b": 2}
        for d in got:
            assert d.queue is not None
            client.ack(d.queue, [d.id])
        client.publish(p + "b", b"pushed")
        with client.subscribe(queues=[p + "a", p + "b"], idle_timeout=30) as sub:
            for msg in sub:
                with msg:
                    assert (msg.queue, msg.body) == (p + "b", b"pushed")
                break
        assert client.queue_stats(p + "b").leased == 0
