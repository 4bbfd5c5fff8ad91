"""Retry backoff, time to live and idempotent publish through both clients and brokerctl,
against a real broker process: the settings, the message fields and the results."""
from __future__ import annotations

from client import Client, Message, SyncClient

from .test_brokerctl import Ctl, qname


def test_settings_and_results_through_the_blocking_client(sync_broker_addr: tuple[str, int]) -> None:
    name = qname()
    with SyncClient(sync_broker_addr, timeout=10) as lg:
        assert lg.create_queue(name, retry_delay_ms=60_000, retry_backoff="fixed", retry_jitter=10,
                               ttl_ms=120_000, on_expire="dead_letter", dedup_window_ms=1000)
        stats = lg.queue_stats(name)
        assert (stats.retry_delay_ms, stats.retry_backoff, stats.retry_max_delay_ms, stats.retry_jitter) == (
            60_000, "fixed", 900_000, 10)
        assert (stats.ttl_ms, stats.on_expire, stats.ttl_expired, stats.dedup_window_ms) == (
            120_000, "dead_letter", 0, 1000)
        first = lg.publish(name, b"a", dedup_id="key-1", ttl_ms=5000)
        assert lg.publish(name, b"a", dedup_id=b"key-1") == first
        result = lg.publish_batch(name, [Message(b"b", dedup_id="key-1"), Message(b"c", ttl_ms=7000), b"d"])
        assert (result.first_id, result.count, result.duplicates) == (first + 1, 2, ((0, first),))
        assert list(result.ids) == [first + 1, first + 2]
        assert result.message_ids() == [first, first + 1, first + 2]
        statuses = lg.message_status(name, [first, first + 1, first + 2])
        now = lg.ping()
        assert now < statuses[0].expires_at_ms <= now + 5000
        assert statuses[1].expires_at_ms - statuses[0].expires_at_ms <= 2000 + 1000
        assert statuses[2].expires_at_ms > 0  # the queue's ttl
        (delivery,) = lg.consume(name)
        lg.nack(name, [delivery.id])
        (st,) = lg.message_status(name, [delivery.id])
        assert st.state == "delayed" and st.until_ms > now + 50_000  # fixed 60 s less at most 10 %


async def test_the_async_client_too(sync_broker_addr: tuple[str, int]) -> None:
    name = qname()
    async with Client.connect(sync_broker_addr) as lg:
        await lg.create_queue(name, ttl_ms=60_000)
        first = await lg.publish(name, b"x", dedup_id=b"d")
        assert await lg.publish(name, b"y", dedup_id=b"d") == first
        result = await lg.publish_batch(name, [Message(b"z", dedup_id=b"d")])
        assert (result.count, result.duplicates) == (0, ((0, first),))
        assert (await lg.queue_stats(name)).messages == 1


def test_brokerctl(sync_broker_addr: tuple[str, int]) -> None:
    ctl = Ctl(sync_broker_addr)
    name = qname()
    ctl.run("create-queue", name, "--retry-delay-ms", "1000", "--retry-backoff", "fixed", "--ttl-ms", "60000",
            "--on-expire", "dead_letter", "--dedup-window-ms", "120000")
    stats = ctl.json("stats", name)
    assert (stats["retry_delay_ms"], stats["retry_backoff"], stats["ttl_ms"], stats["on_expire"],
            stats["dedup_window_ms"]) == (1000, "fixed", 60_000, "dead_letter", 120_000)
    assert ctl.run("publish", name, "hi", "--dedup-id", "k1", "--ttl-ms", "5000").stdout == (
        f"published 1 message to {name}: id 1\n")
    assert ctl.run("publish", name, "hi", "--dedup-id", "k1").stdout == (
        f"duplicate in {name}: nothing stored; the message published first is id 1\n")
    doc = ctl.json("publish", name, "more", "--dedup-id", "k2", "--count", "3")
    assert doc["batches"] == [{"first_id": 2, "count": 1, "duplicates": [[1, 2], [2, 2]]}]
    assert ctl.run("publish", name, "more", "--dedup-id", "k2", "--count", "2").stdout == (
        f"published 0 messages to {name}; 2 duplicates of id 2\n")
    line = ctl.run("status", name, "1").stdout
    assert "expires=" in line
    ctl.run("create-queue", qname(), "--on-expire", "keep", expect=2)
    ctl.run("create-queue", qname(), "--retry-jitter", "101", expect=2)
