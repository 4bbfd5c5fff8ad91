"""A real broker process on a real small file system (an 8 MiB tmpfs) fills it up.

Mounting needs CAP_SYS_ADMIN; where the test cannot mount, it is skipped and
``test_disk_full.py`` covers the same behaviour through the ``FileIO`` seam.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import DiskFull, SyncClient

from ..broker_process import BrokerProcess

BODY = b"x" * 1000
SIZE_MIB = 8


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MIB}m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_file_system_refuses_publishes_keeps_acks_and_recovers(small_fs: Path) -> None:
    with BrokerProcess(small_fs / "data", log_path=small_fs.parent / "broker.log", log_level="info",
                       args=("--segment-bytes", str(1 << 20), "--checkpoint-bytes", str(1 << 20))) as proc:
        with SyncClient(proc.addr, timeout=30) as c:
            c.create_queue("q")
            confirmed: list[int] = []
            with pytest.raises(DiskFull):
                for _ in range(SIZE_MIB * 2000):
                    confirmed.extend(c.publish_batch("q", [BODY] * 20).ids)
            assert confirmed, "nothing was published before the disk filled"
            assert c.queue_stats("q").ready == len(confirmed)

            # Every confirmed message is delivered and every ack is taken on the full disk.
            acked = 0
            while acked < len(confirmed):
                batch = c.consume("q", max=200)
                assert batch
                acked += c.ack("q", [m.id for m in batch]).acked
            assert acked == len(confirmed)

            # The acked messages' log is dead weight: checkpoints reclaim it and the disk
            # takes as much again, with no restart and no help.
            again: list[int] = []
            deadline = time.monotonic() + 60
            while len(again) < len(confirmed) // 2:
                try:
                    again.extend(c.publish_batch("q", [BODY] * 20).ids)
                except DiskFull:
                    assert time.monotonic() < deadline, f"publishes stalled after {len(again)}"
                    time.sleep(0.1)  # a real process is being waited for
        assert proc.stop() == 0

    # What was confirmed and not acked is all there after a restart.
    with BrokerProcess(small_fs / "data", log_path=small_fs.parent / "broker.log") as proc:
        with SyncClient(proc.addr, timeout=30) as c:
            assert c.queue_stats("q").ready == len(again)
            assert [m.id for m in c.consume("q", max=10)] == again[:10]


def test_start_up_on_a_full_file_system_fails_with_a_clear_error(small_fs: Path) -> None:
    with open(small_fs / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass
    done = subprocess.run([sys.executable, "-m", "broker", "--port", "0", "--data", str(small_fs / "data")],
                          capture_output=True, timeout=60)
    assert done.returncode == 3
    assert b"brokerd: cannot start with data in" in done.stderr
    assert b"No space left on device" in done.stderr
