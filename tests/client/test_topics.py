"""Topics and consumer groups through both SDKs against a real broker (SPEC §8.13):
fan-out to groups read with the queue methods, push to a group, headers and filters,
retention, seek, and a SIGKILL restart in the middle."""
from __future__ import annotations

from typing import Any

import pytest
import trio

from client import GroupStats, QueueNotFound, SyncClient, TopicMessage, TopicStats, group_queue

from protocol import shard_for_key

from ..broker_process import BrokerProcess
from .test_purge_peek_status import api, qname  # noqa: F401  (api: the fixture)


async def test_fan_out_to_groups_each_at_its_own_pace(api: Any) -> None:
    topic = qname("topic")
    assert await api.create_topic(topic, 2)
    for group in ("billing", "email"):
        assert await api.create_group(topic, group, start="earliest")
    result = await api.publish_topic(topic, [b"o1", TopicMessage(b"o2", key=b"c-7", headers={"kind": "refund"})])
    assert (result.first_id, result.count) == (1, 2)
    billing = await api.consume(group_queue(topic, "billing"), 10)
    assert sorted(d.body for d in billing) == [b"o1", b"o2"]
    refund = next(d for d in billing if d.body == b"o2")
    shard = shard_for_key(b"c-7", 2)  # o1 (id 1, no key) went to shard 1 % 2
    assert (refund.key, refund.headers, refund.shard) == (b"c-7", {"kind": "refund"}, shard)
    assert refund.offset == (2 if shard == 1 else 1) and refund.published_at > 0
    await api.ack(group_queue(topic, "billing"), [d.id for d in billing])
    stats = await api.topic_stats(topic)
    assert isinstance(stats, TopicStats) and (stats.messages, stats.groups) == (2, ("billing", "email"))
    email = await api.consume(group_queue(topic, "email"), 10)
    await api.ack(group_queue(topic, "email"), [d.id for d in email])
    stats = await api.topic_stats(topic)
    assert (stats.messages, stats.reclaimed, stats.published) == (0, 2, 2)
    group = await api.group_stats(topic, "email")
    assert isinstance(group, GroupStats) and (group.lag, group.delivery.acked) == (0, 2)


async def test_dedup_ids_make_a_topic_publish_idempotent(api: Any) -> None:
    """SPEC §5.23: an entry whose dedup id the topic remembers stores nothing and is named
    in ``duplicates`` with the topic-wide id of the message published first."""
    topic = qname("topic")
    assert await api.create_topic(topic, 2, dedup_window_ms=60_000)
    assert not await api.create_topic(topic, 2, dedup_window_ms=60_000)
    assert (await api.topic_stats(topic)).dedup_window_ms == 60_000
    await api.create_group(topic, "g", start="earliest")
    first = await api.publish_topic(topic, [TopicMessage(b"a", b"k", {"h": "1"}, dedup_id=b"order-1"), b"plain"])
    assert (first.first_id, first.count, first.duplicates) == (1, 2, ())
    again = await api.publish_topic(topic, [b"new", TopicMessage(b"a again", dedup_id="order-1")])
    assert (again.first_id, again.count, again.duplicates) == (3, 1, ((1, 1),))
    assert again.message_ids() == [3, 1]
    delivered = await api.consume(group_queue(topic, "g"), 10)
    assert sorted(d.body for d in delivered) == [b"a", b"new", b"plain"]
    assert (await api.topic_stats(topic)).published == 3


async def test_a_filter_seek_and_limits(api: Any) -> None:
    topic = qname("topic")
    await api.create_topic(topic, retention="limits", max_messages=3)
    await api.create_group(topic, "eu", start="earliest", filter={"region": "eu"})
    await api.publish_topic(topic, [TopicMessage(b"%d" % i, headers={"region": "eu" if i % 2 else "us"})
                                    for i in range(5)])
    assert [d.body for d in await api.consume(group_queue(topic, "eu"), 10)] == [b"3"]  # 0-1 dropped, 2, 4 not eu
    group = await api.group_stats(topic, "eu")
    assert (group.missed, group.filtered) == (1, 2)
    assert await api.seek_group(topic, "eu", "latest") == [6]
    assert (await api.list_topics())[0].name == topic or topic in [t.name for t in await api.list_topics()]
    with pytest.raises(QueueNotFound):
        await api.group_stats(topic, "nope")
    assert await api.delete_group(topic, "eu") == 1  # the leased one went with it
    assert await api.delete_topic(topic) == 3


async def test_push_to_a_group(api: Any, broker_addr: tuple[str, int]) -> None:
    from client import Client

    topic = qname("topic")
    await api.create_topic(topic)
    await api.create_group(topic, "workers")
    async with Client.connect(broker_addr) as client:
        async with client.subscribe(group_queue(topic, "workers"), credit=4) as sub:
            await api.publish_topic(topic, [b"a", b"b", b"c"])
            got = []
            with trio.fail_after(10):
                async for msg in sub:
                    async with msg:
                        got.append((msg.body, msg.offset))
                    if len(got) == 3:
                        break
    assert got == [(b"a", 1), (b"b", 2), (b"c", 3)]
    assert (await api.topic_stats(topic)).messages == 0  # the only group acked them all


def test_topics_survive_a_kill(broker_process: BrokerProcess) -> None:
    proc = broker_process
    topic = qname("topic")
    with SyncClient(proc.addr) as client:
        client.create_topic(topic, 2)
        client.create_group(topic, "a", start="earliest")
        client.create_group(topic, "b", start="earliest", max_attempts=1)
        client.publish_topic(topic, [b"m%d" % i for i in range(6)])
        taken = client.consume(group_queue(topic, "a"), 4)
        client.ack(group_queue(topic, "a"), [d.id for d in taken])
        leased = client.consume(group_queue(topic, "b"), 2)  # leased at the kill
    proc.kill()
    proc.start()
    with SyncClient(proc.addr) as client:
        a = client.group_stats(topic, "a")
        b = client.group_stats(topic, "b")
        assert (a.delivery.acked, a.delivery.messages) == (4, 2)
        # b's two leases were released by the restart: out of attempts (max 1), dropped
        assert (b.delivery.dropped, b.delivery.messages) == (2, 4)
        rest = client.consume(group_queue(topic, "b"), 10)
        assert {d.id for d in rest}.isdisjoint(d.id for d in leased) and len(rest) == 4
        client.ack(group_queue(topic, "b"), [d.id for d in rest])
        assert client.topic_stats(topic).messages == 2  # a has not taken the last two
        more = client.consume(group_queue(topic, "a"), 10)
        client.ack(group_queue(topic, "a"), [d.id for d in more])
        assert client.topic_stats(topic).messages == 0
