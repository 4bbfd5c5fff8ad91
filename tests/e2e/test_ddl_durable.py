"""Queue, topic and group creation and deletion are fdatasynced before their reply under
every fsync policy: a power cut right after the reply never undoes them.

A real broker process writes its fsync journal (``--test-power-journal``); after a
SIGKILL, ``tools.powercut.apply_power_cut`` leaves the data directory as a disk that lost
power at that moment would (everything no fsync covered is gone), and the broker starts
again on it.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from client import SyncClient
from tools.powercut import apply_power_cut

from ..broker_process import BrokerProcess


@pytest.mark.parametrize("fsync", ["never", "interval"])
def test_a_power_cut_keeps_every_confirmed_create_and_delete(tmp_path: Path, fsync: str) -> None:
    data, journal = tmp_path / "data", tmp_path / "power.journal"
    # An interval far longer than the test: only the creations' own syncs can save them.
    broker = BrokerProcess(data, fsync=fsync, args=(
        "--fsync-interval-ms", "3600000", "--test-power-journal", str(journal)))
    broker.start()
    try:
        with SyncClient(broker.addr, timeout=30) as c:
            created = [f"q{i}" for i in range(6)]
            for name in created:
                assert c.create_queue(name, kind="lifo", shards=2) is True
            assert c.create_queue("gone") is True
            assert c.create_topic("t", shards=2) is True
            assert c.create_group("t", "g") is True
            assert c.create_topic("old") is True
            c.delete_queue("gone")
            c.delete_topic("old")
            for i in range(20):  # not synced under these policies: the cut takes them
                c.publish("q0", b"m%d" % i)
        broker.kill()
        cut = apply_power_cut(data, journal, random.Random(1), "drop")
        assert cut.bytes_dropped > 0, cut.describe()  # the cut took the unsynced publishes

        broker.start()
        with SyncClient(broker.addr, timeout=30) as c:
            queues = {q.name: q for q in c.list_queues()}
            assert {n for n in queues if "/" not in n} == set(created)
            assert all(queues[n].kind == "lifo" and queues[n].shards == 2 for n in created)
            assert [t.name for t in c.list_topics()] == ["t"]
            assert c.group_stats("t", "g").delivery.name == "t/g"
            assert queues["q0"].messages == 0  # the cut was real
            assert c.create_queue("q1", kind="lifo", shards=2) is False
    finally:
        broker.kill()
