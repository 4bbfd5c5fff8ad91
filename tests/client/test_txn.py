"""Transactions through both SDKs against a real broker (SPEC §5.28)."""
from __future__ import annotations

from typing import Any

import pytest

from client import Client, QueueNotFound, TopicMessage, Transaction, TxnConflict, group_queue

from .test_purge_peek_status import api, qname  # noqa: F401  (api: the fixture)


async def test_ack_and_publish_to_a_queue_and_a_topic_at_once(api: Any) -> None:
    src, dst, topic = qname("in"), qname("out"), qname("topic")
    await api.create_queue(src)
    await api.create_queue(dst)
    await api.create_topic(topic)
    await api.create_group(topic, "audit")
    await api.publish(src, b"order 7")
    (d,) = await api.consume(src)
    steps = (Transaction(None).ack(src, [d.id]).publish(dst, [b"invoice 7"])
             .publish_topic(topic, [TopicMessage(b"billed 7", headers={"order": "7"})]).steps)
    results = await api.txn(steps)
    assert results == [{"acked": 1, "missing": []}, {"first_id": 1, "count": 1}, {"first_id": 1, "count": 1}]
    assert [m.body for m in await api.consume(dst)] == [b"invoice 7"]
    (event,) = await api.consume(group_queue(topic, "audit"))
    assert (event.body, event.headers) == (b"billed 7", {"order": "7"})
    # the same ack again: not leased any more, and nothing else of it happens either
    with pytest.raises(TxnConflict) as info:
        await api.txn(Transaction(None).ack(src, [d.id]).publish(dst, [b"invoice 7 again"]).steps)
    assert info.value.details == {"queue": src, "ids": [d.id], "step": 0}
    assert (await api.queue_stats(dst)).published == 1


async def test_a_failing_step_names_itself(api: Any) -> None:
    dst = qname("out")
    await api.create_queue(dst)
    with pytest.raises(QueueNotFound) as info:
        await api.txn(Transaction(None).publish(dst, [b"x"]).publish(qname("missing"), [b"y"]).steps)
    assert info.value.details["step"] == 1
    assert (await api.queue_stats(dst)).messages == 0


async def test_the_builder_commits_on_the_client(broker_addr: tuple[str, int]) -> None:
    async with Client.connect(broker_addr) as client:
        await _builder(client)


async def _builder(client: Client) -> None:
    src, dst = qname("in"), qname("out")
    await client.create_queue(src)
    await client.create_queue(dst)
    await client.publish(src, b"x")
    (d,) = await client.consume(src)
    assert len(await client.transaction().ack(src, [d.id]).publish(dst, [b"y"]).commit()) == 2
    assert (await client.queue_stats(src)).acked == 1
