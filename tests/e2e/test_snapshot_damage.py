"""A byte flipped in the middle of the only snapshot of a broker killed with SIGKILL.

The log before the snapshot was deleted by the checkpoint that wrote it, so the
snapshot is the only copy of most messages. ``brokerd`` refuses to start;
``brokerd --recover truncate`` keeps every whole record of the snapshot (only the
damaged one, up to 1,000 messages, is lost) and replays every log record after it;
the next plain start serves the same.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


from client import SyncClient

from ..broker_process import ROOT, BrokerProcess
from ..snapshots import middle_rows_record

BODY = b"s" * 400


def _ids(c: SyncClient) -> set[int]:
    """Every message of ``q`` (leased for long, never acked)."""
    seen: set[int] = set()
    while batch := c.consume("q", max=500, visibility_ms=600_000):
        seen.update(m.id for m in batch)
    return seen


def test_a_damaged_only_snapshot_keeps_its_whole_records_and_the_log_after_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    wal = data / "wal"
    broker = BrokerProcess(data, args=("--segment-bytes", str(1 << 20),
                                       "--checkpoint-bytes", str(1 << 20)))
    broker.start()
    try:
        with SyncClient(broker.addr, timeout=30) as c:
            c.create_queue("q")
            before: list[int] = []
            for _ in range(40):
                before.extend(c.publish_batch("q", [BODY] * 100).ids)
            # Acks make the log longer than the live data: a checkpoint comes due, and
            # deletes the log it holds.
            acked: list[int] = []
            while len(acked) < 1000:
                leased = [m.id for m in c.consume("q", max=100, visibility_ms=600_000)]
                assert c.ack("q", leased).acked == len(leased)
                acked.extend(leased)
            deadline = time.monotonic() + 60
            while not (snaps := sorted(wal.glob("*.snap"))) or list(wal.glob("*.snap.tmp")):
                assert time.monotonic() < deadline, "no checkpoint"  # a real child process
                time.sleep(0.01)
            # After the snapshot, in the log only: publishes, and acks of messages it holds.
            after = c.publish_batch("q", [b"after"] * 300).ids
            leased = [m.id for m in c.consume("q", max=100, visibility_ms=600_000)]
            assert leased == before[1000:1100]
            assert c.ack("q", leased).acked == 100
            acked.extend(leased)
            assert sorted(wal.glob("*.snap")) == snaps  # no later checkpoint
        broker.kill()
    finally:
        broker.kill()
    (snap,) = snaps
    segments = sorted(wal.glob("*.wal"))
    assert int(segments[0].name[:20]) > 0  # the log before the snapshot is gone

    # Damage the record of message rows nearest the middle of the snapshot.
    pristine = snap.read_bytes()
    off, length, name, lost = middle_rows_record(pristine)
    assert name == "q" and 0 < len(lost) <= 1000
    damaged = bytearray(pristine)
    damaged[off + 9 + length // 2] ^= 0x10
    snap.write_bytes(bytes(damaged))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    refused = subprocess.run(
        [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", "0", "--data", str(data)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert refused.returncode == 2, refused.stderr.decode()
    assert snap.name in refused.stderr.decode()

    expected = (set(before) - set(acked) - lost) | set(after)
    truncating = BrokerProcess(data, args=("--recover", "truncate"), log_path=tmp_path / "t.log",
                               log_level="info")
    truncating.start()
    try:
        with SyncClient(truncating.addr, timeout=30) as c:
            assert _ids(c) == expected
        truncating.kill()  # SIGKILL again: what it recovered must already be on disk
    finally:
        truncating.kill()
    log = truncating.log_tail()
    assert "kept" in log and "damaged snapshot" in log, log
    assert (wal / (snap.name + ".damaged")).read_bytes() == bytes(damaged)

    again = BrokerProcess(data, log_path=tmp_path / "again.log")
    again.start()
    try:
        with SyncClient(again.addr, timeout=30) as c:
            assert _ids(c) == expected
    finally:
        again.kill()
