"""Idempotent publish across restarts (SPEC §8.9, §5.23): the dedup ids a queue or a
topic remembers, and the expiry times of messages with a time to live, survive a
SIGKILL (the log is replayed) and a graceful restart (a snapshot is loaded)."""
from __future__ import annotations

from pathlib import Path

import pytest

from client import Message, SyncClient, TopicMessage
from tools.procs import BrokerProcess


@pytest.mark.parametrize("restart", ["sigkill", "graceful"])
def test_dedup_ids_survive_a_restart(tmp_path: Path, restart: str) -> None:
    broker = BrokerProcess(tmp_path / "data")
    try:
        broker.start()
        with SyncClient(broker.addr, timeout=10) as client:
            client.create_queue("orders")
            client.create_queue("events", ttl_ms=3_600_000)
            first = client.publish("orders", b"order 17", dedup_id=b"order-17")
            batch = client.publish_batch("orders", [
                Message(b"order 18", dedup_id=b"order-18"), b"no id", Message(b"order 17 again", dedup_id=b"order-17"),
            ])
            assert (batch.first_id, batch.count, batch.duplicates) == (2, 2, ((2, first),))
            assert batch.message_ids() == [2, 3, first]
            client.ack("orders", [first])  # the id is remembered after the message is gone
            event = client.publish("events", b"e", ttl_ms=60_000)
            (before,) = client.message_status("events", [event])
            assert before.expires_at_ms > 0
        if restart == "sigkill":
            broker.kill()
        else:
            assert broker.stop() == 0
        broker.start()
        with SyncClient(broker.addr, timeout=10) as client:
            assert client.publish("orders", b"order 17, a retry", dedup_id=b"order-17") == first
            again = client.publish_batch("orders", [Message(b"x", dedup_id=b"order-18"),
                                                    Message(b"new", dedup_id=b"order-19")])
            assert (again.first_id, again.count, again.duplicates) == (4, 1, ((0, 2),))
            stats = client.queue_stats("orders")
            assert (stats.published, stats.messages, stats.dedup_window_ms) == (4, 3, 300_000)
            (after,) = client.message_status("events", [event])
            assert after.expires_at_ms == before.expires_at_ms and after.state == "ready"
            assert client.queue_stats("events").ttl_ms == 3_600_000
    finally:
        broker.kill()


@pytest.mark.parametrize("restart", ["sigkill", "graceful"])
def test_topic_dedup_ids_survive_a_restart(tmp_path: Path, restart: str) -> None:
    """A topic remembers its dedup ids across a SIGKILL (the log replayed) and a graceful
    restart (a snapshot loaded), after its group acked the message and the topic
    reclaimed it: a retry then gets ``duplicates`` with the first message's id."""
    broker = BrokerProcess(tmp_path / "data")
    try:
        broker.start()
        with SyncClient(broker.addr, timeout=10) as client:
            client.create_topic("orders", 2, dedup_window_ms=600_000)
            client.create_group("orders", "billing")
            first = client.publish_topic("orders", [TopicMessage(b"order 17", b"k", dedup_id=b"order-17")])
            batch = client.publish_topic("orders", [
                TopicMessage(b"order 18", dedup_id=b"order-18"), b"no id",
                TopicMessage(b"order 17 again", dedup_id=b"order-17")])
            assert (batch.first_id, batch.count, batch.duplicates) == (2, 2, ((2, first.first_id),))
            delivered = client.consume("orders/billing", 10)
            client.ack("orders/billing", [d.id for d in delivered])
            assert client.topic_stats("orders").messages == 0  # reclaimed: every group is done
        if restart == "sigkill":
            broker.kill()
        else:
            assert broker.stop() == 0
        broker.start()
        with SyncClient(broker.addr, timeout=10) as client:
            retry = client.publish_topic("orders", [TopicMessage(b"order 17, a retry", dedup_id=b"order-17")])
            assert (retry.first_id, retry.count, retry.duplicates) == (4, 0, ((0, 1),))
            again = client.publish_topic("orders", [TopicMessage(b"x", dedup_id=b"order-18"),
                                                    TopicMessage(b"new", dedup_id=b"order-19")])
            assert (again.first_id, again.count, again.duplicates) == (4, 1, ((0, 2),))
            assert again.message_ids() == [2, 4]
            stats = client.topic_stats("orders")
            assert (stats.published, stats.dedup_window_ms) == (4, 600_000)
            assert [d.body for d in client.consume("orders/billing", 10)] == [b"new"]
    finally:
        broker.kill()
