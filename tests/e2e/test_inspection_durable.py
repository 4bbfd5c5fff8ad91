"""What ``queue_purge`` changed, and where ``message_status`` finds a dead letter, survive a
SIGKILL (the log is replayed) and a graceful restart (a snapshot is loaded)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client import SyncClient
from tools.procs import BrokerProcess


def statuses(client: SyncClient, ids: list[int]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = client.request("message_status", {"queue": "jobs", "ids": ids})["statuses"]
    return result


@pytest.mark.parametrize("restart", ["sigkill", "graceful"])
def test_purge_and_dead_letter_sources_survive_a_restart(tmp_path: Path, restart: str) -> None:
    broker = BrokerProcess(tmp_path / "data")
    try:
        broker.start()
        with SyncClient(broker.addr, timeout=10) as client:
            client.create_queue("dlq")
            client.create_queue("jobs", max_attempts=2, dead_letter="dlq")
            client.publish("jobs", b"a")
            for _ in range(2):  # 1 runs out of attempts and is dead-lettered
                (delivery,) = client.consume("jobs", max=1, visibility_ms=600_000)
                assert delivery.id == 1
                client.nack("jobs", [1])
            client.publish_batch("jobs", [b"b", b"c", b"d", b"e"])
            (leased,) = client.consume("jobs", max=1, visibility_ms=600_000)
            assert leased.id == 2
            purged = client.request("queue_purge", {"queue": "jobs"})
            assert purged == {"queue": "jobs", "ready": 3, "delayed": 0, "leased": 0, "waiting": 0}
            before = statuses(client, [1, 2, 3, 6])
            assert [s["state"] for s in before] == ["dead_lettered", "leased", "gone", "unknown"]
            assert before[0]["queue"] == "dlq" and before[0]["dead_letter_id"] == 1
        if restart == "sigkill":
            broker.kill()
        else:
            assert broker.stop() == 0
        broker.start()
        with SyncClient(broker.addr, timeout=10) as client:
            after = statuses(client, [1, 2, 3, 6])
            # The lease did not survive the restart (SPEC §8.6): 2 is ready again.
            assert [s["state"] for s in after] == ["dead_lettered", "ready", "gone", "unknown"]
            assert after[0] == before[0]
            stats = client.queue_stats("jobs")
            assert (stats.messages, stats.ready) == (1, 1)
            peeked = client.request("peek", {"queue": "jobs", "dead_letter": True})
            assert peeked["queue"] == "dlq"
            assert [(m[0], m[1]) for m in peeked["messages"]] == [(1, b"a")]
    finally:
        broker.kill()
