"""``broker_info`` (SPEC §5.30) through the async client against an in-process broker on
trio's MockClock: the facts it reports against what the broker and its data directory
show."""
from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing

from broker.server import Broker
from client import BrokerInfo, Client


def wal_files(data_dir: Path) -> tuple[int, int]:
    """(segment files, their bytes) in ``data_dir/wal``."""
    sizes = [os.stat(data_dir / "wal" / n).st_size for n in os.listdir(data_dir / "wal") if n.endswith(".wal")]
    return len(sizes), sum(sizes)


async def test_broker_info_reports_the_running_broker(
        autojump_clock: trio.testing.MockClock, broker: Broker, broker_addr: tuple[str, int], tmp_path: Path) -> None:
    async with Client.connect(broker_addr) as c:
        first = await c.broker_info()
        assert isinstance(first, BrokerInfo)
        assert (first.server, first.node) == (c.info.server, c.info.node)
        assert (first.fsync, first.fsync_interval_ms) == (str(broker.config.fsync), broker.config.fsync_interval_ms)
        assert first.data_dir == str((tmp_path / "data").absolute())
        assert first.auth == "off"
        assert (first.queues, first.topics, first.groups, first.connections) == (0, 0, 0, 1)
        assert first.uptime_ms == first.now_ms - first.started_ms
        assert first.memory_budget == broker.memory.limit > 0
        assert 0 <= first.memory_used <= broker.memory.peak

        await c.create_queue("jobs.dlq")
        await c.create_queue("jobs", dead_letter="jobs.dlq")
        await c.create_topic("orders")
        await c.create_group("orders", "billing")
        await c.publish_batch("jobs", [b"x" * 1000] * 10)
        await trio.sleep(90)  # the broker's clock moves on with trio's
        async with Client.connect(broker_addr) as other:
            info = await other.broker_info()
        assert (info.queues, info.topics, info.groups, info.connections) == (2, 1, 1, 2)
        assert info.started_ms == first.started_ms
        assert info.uptime_ms - first.uptime_ms == info.now_ms - first.now_ms >= 90_000
        assert (info.wal_segments, info.wal_bytes) == wal_files(tmp_path / "data")
        assert info.wal_bytes > first.wal_bytes
        with trio.fail_after(60):  # the broker counts the other connection out once it reads its close
            while (await c.broker_info()).connections != 1:
                await trio.sleep(0.01)
