"""Idempotent publish across restarts (SPEC §8.9): the dedup ids a queue remembers, and
the expiry times of messages with a time to live, survive a SIGKILL (the log is
replayed) and a graceful restart (a snapshot is loaded)."""
from __future__ import annotations

from pathlib import Path

import pytest

from client import Message, SyncClient
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
