"""A real broker process on a real small file system (an 8 MiB tmpfs, or ext4 on a loop
device) fills it up.

Mounting needs CAP_SYS_ADMIN; where the test cannot mount, it is skipped and
``test_disk_full.py`` covers the same behaviour through the ``FileIO`` seam.
"""
from __future__ import annotations

import errno
import os
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
#: Seconds within which publishes must resume once there is room.
RESUME_S = 15.0


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


@pytest.fixture(params=["tmpfs", "ext4"])
def any_small_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, or an ext4 file system on a loop device (an image file in
    ``tmp_path``): what an operator's small volume would be."""
    mount = tmp_path / "small"
    mount.mkdir()
    if request.param == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MIB}m", "tmpfs", str(mount)]
    else:
        if shutil.which("mkfs.ext4") is None:
            pytest.skip("no mkfs.ext4")
        image = tmp_path / "ext4.img"
        with open(image, "wb") as f:
            f.truncate((SIZE_MIB + 4) << 20)  # ext4's own metadata takes about 4 MiB
        made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"cannot make an ext4 image: {made.stderr.decode().strip()}")
        command = ["mount", "-o", "loop", str(image), str(mount)]
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(command, capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {request.param} here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def take_all_room(path: Path) -> None:
    """Another program writes ``path`` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def fill(c: SyncClient) -> list[int]:
    """Publish batches of 20 until DISK_FULL; the ids confirmed."""
    ids: list[int] = []
    try:
        for _ in range(SIZE_MIB * 2000):
            ids.extend(c.publish_batch("q", [BODY] * 20).ids)
    except DiskFull:
        return ids
    raise AssertionError("the disk never filled")


def resumed(c: SyncClient, timeout: float = RESUME_S) -> tuple[list[int], float]:
    """Publish until one is accepted, polling a real process (bounded): its ids and
    how long it took."""
    started = time.monotonic()
    while True:
        try:
            return c.publish_batch("q", [BODY] * 20).ids, time.monotonic() - started
        except DiskFull:
            assert time.monotonic() - started < timeout, f"publishes did not resume within {timeout} s"
            time.sleep(0.05)


def ack(c: SyncClient, ids: set[int], most: int) -> set[int]:
    """Consume and ack until ``most`` of ``ids`` are acked (the rest released); the acked."""
    acked: set[int] = set()
    while len(acked) < most:
        batch = [m.id for m in c.consume("q", max=min(200, most - len(acked)), visibility_ms=60_000)]
        assert batch and set(batch) <= ids
        assert c.ack("q", batch).acked == len(batch)
        acked.update(batch)
    return acked


def test_publishes_resume_when_room_is_freed_elsewhere_or_acks_shrink_the_live_data(
        any_small_fs: Path) -> None:
    """The issue's cycle: with live data and acks in the log, a file of another program
    fills the disk; deleting it lets publishes in again within seconds, without room for
    a snapshot of all live data first; filled again by publishes, acking half the
    messages does the same."""
    small_fs = any_small_fs
    filler = small_fs / "filler"
    with BrokerProcess(small_fs / "data", log_path=small_fs.parent / "broker.log", log_level="info",
                       args=("--segment-bytes", str(1 << 20), "--checkpoint-bytes", str(1 << 20))) as proc:
        with SyncClient(proc.addr, timeout=30) as c:
            c.create_queue("q")
            live = set(c.publish_batch("q", [BODY] * 1000).ids)
            live -= ack(c, live, 250)  # acks in the log
            # Another program takes all the room that is left.
            take_all_room(filler)
            with pytest.raises(DiskFull):
                for _ in range(100):
                    live.update(c.publish_batch("q", [BODY] * 20).ids)
            assert c.queue_stats("q").messages == len(live)

            # Room freed elsewhere (the filler was 4 MiB or so of the 8): publishes resume.
            assert filler.stat().st_size >= 1 << 20
            filler.unlink()
            ids, waited = resumed(c)
            live.update(ids)
            live.update(fill(c))  # and take the room again, up to a full disk
            assert c.queue_stats("q").messages == len(live)

            # Acks shrink the live data on the full disk: publishes resume.
            live -= ack(c, live, len(live) // 2)
            ids, waited = resumed(c)
            live.update(ids)
            assert c.queue_stats("q").messages == len(live)
        assert proc.stop() == 0

    with BrokerProcess(small_fs / "data", log_path=small_fs.parent / "broker.log") as proc:
        with SyncClient(proc.addr, timeout=30) as c:
            assert c.queue_stats("q").messages == len(live)
            seen: set[int] = set()
            while batch := c.consume("q", max=500, visibility_ms=60_000):
                seen.update(m.id for m in batch)
            assert seen == live


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
