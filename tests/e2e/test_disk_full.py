"""A full disk: publishes are refused with DISK_FULL and nothing is applied; consumers
and acks go on; the broker takes new work again by itself once there is room.

The file system is the real one, under a ``FileIO`` that fails allocations past a
capacity, counted from the blocks the data directory's files really hold.
"""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.checkpointer import Checkpointer
from broker.config import BrokerConfig
from broker.server import Broker
from broker.wal import FileIO
from protocol import Error, ErrorCode, Reply

from .rawclient import RawClient

BLOCK = 4096
BODY = b"m" * 1000


#: Extended attribute in which ``SmallDisk`` keeps the end of a file's reservation.
RESERVED_XATTR = "user.lockgate_test_reserved"


class SmallDisk(FileIO):
    """Real files, as if ``root`` were a file system of ``capacity`` bytes: a write or a
    reservation that needs blocks past it fails with ENOSPC and changes nothing.

    A file holds its size, or the end of what was reserved in it if that is further
    (until a release or truncation), in whole blocks. The reservation's end is kept
    on the file itself (an extended attribute), so the forked snapshot writer and the
    broker see each other's reservations; the real block counts would not do, as they
    also hold the real file system's own metadata (extent blocks) and drift."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self.refusals = 0

    @staticmethod
    def _held(path_or_fd: str | int) -> int:
        size = os.stat(path_or_fd).st_size
        try:
            reserved = int(os.getxattr(path_or_fd, RESERVED_XATTR))
        except OSError:
            reserved = 0
        return -(-max(size, reserved) // BLOCK) * BLOCK

    @staticmethod
    def _reserved_to(fd: int, end: int) -> None:
        os.setxattr(fd, RESERVED_XATTR, str(end).encode())

    def used(self) -> int:
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += self._held(os.path.join(dirpath, name))
                except FileNotFoundError:
                    pass
        return total

    def _allocate(self, fd: int, end: int) -> None:
        need = max(0, -(-end // BLOCK) * BLOCK - self._held(fd))
        if need and self.used() + need > self.capacity:
            self.refusals += 1
            raise OSError(errno.ENOSPC, "No space left on device")

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        if flags & os.O_TRUNC:
            self._reserved_to(fd, 0)
        return fd

    def write(self, fd: int, data: bytes) -> int:  # type: ignore[override]
        self._allocate(fd, os.fstat(fd).st_size + len(data))
        return super().write(fd, data)

    def preallocate(self, fd: int, offset: int, length: int) -> None:
        self._allocate(fd, offset + length)
        super().preallocate(fd, offset, length)
        try:
            reserved = int(os.getxattr(fd, RESERVED_XATTR))
        except OSError:
            reserved = 0
        self._reserved_to(fd, max(reserved, offset + length))

    def release(self, fd: int, offset: int, length: int) -> None:
        super().release(fd, offset, length)
        self._reserved_to(fd, offset)

    def ftruncate(self, fd: int, length: int) -> None:
        super().ftruncate(fd, length)
        self._reserved_to(fd, length)


def config(data: Path) -> BrokerConfig:
    # No idle timeout: trio's clock jumps while a snapshot child works (see reclaimed).
    return BrokerConfig(host="127.0.0.1", port=0, data_dir=data, segment_bytes=256 * 1024,
                        checkpoint_bytes=256 * 1024, idle_timeout_ms=0)


async def start(nursery: trio.Nursery, data: Path, io: FileIO | None) -> tuple[Broker, RawClient]:
    broker = Broker(config(data), io=io)
    await nursery.start(broker.serve)
    host, port = broker.addr.rsplit(":", 1)
    return broker, await RawClient.open((host, int(port)))


async def reclaimed(broker: Broker, timeout: float = 60.0) -> None:
    """Wait until the checkpoint that reclaims the log has run, and one that failed for
    lack of room has run again and succeeded.

    Its snapshot is written by a forked child, a real process: under MockClock, trio
    seconds pass in no time while the child works. So this polls in real time (in a
    thread, bounded); the trio clock meanwhile jumps to the broker's next deadline by
    itself, e.g. a failed checkpoint's retry."""
    checkpointer = broker._checkpointer
    assert checkpointer is not None
    deadline = time.monotonic() + timeout
    while checkpointer.reclaiming or checkpointer.starved:
        assert time.monotonic() < deadline, f"no checkpoint reclaimed the log within {timeout} s"
        await trio.to_thread.run_sync(time.sleep, 0.01)


async def fill(c: RawClient) -> list[int]:
    """Publish batches of 10, then single messages, until DISK_FULL; the ids confirmed."""
    ids: list[int] = []
    for batch in (10, 1):
        while True:
            r = await c.call("publish", {"queue": "q", "messages": [[BODY]] * batch})
            if isinstance(r, Error):
                assert r.code == ErrorCode.DISK_FULL, r
                assert r.details["needed"] > 0 and r.details["reserved"] > 0
                break
            ids.extend(range(r.result["first_id"], r.result["first_id"] + r.result["count"]))
            assert len(ids) < 100_000, "the disk never filled"
    return ids


async def count(c: RawClient) -> int:
    r = await c.call("queue_stats", {"queue": "q"})
    assert isinstance(r, Reply), r
    s = r.result
    return s["ready"] + s["leased"] + s["delayed"]


async def test_full_disk_refuses_publishes_and_keeps_every_ack(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    data = tmp_path / "d"
    disk = SmallDisk(data, capacity=2 * 1024 * 1024)
    broker, c = await start(nursery, data, disk)
    assert isinstance(await c.call("queue_create", {"queue": "q"}), Reply)
    confirmed = await fill(c)
    assert len(confirmed) > 200
    assert disk.used() <= disk.capacity
    # A refused publish changed nothing, and it stays refused while the disk is full.
    assert await count(c) == len(confirmed)
    for _ in range(3):
        r = await c.call("publish", {"queue": "q", "messages": [[BODY]]})
        assert isinstance(r, Error) and r.code == ErrorCode.DISK_FULL
    assert await count(c) == len(confirmed)
    assert not broker._log.failed  # type: ignore[union-attr]

    # Consumers keep going, and every message can be acked, even one at a time.
    delivered: list[int] = []
    while len(delivered) < len(confirmed):
        r = await c.call("consume", {"queue": "q", "max": 100})
        assert isinstance(r, Reply), r
        batch = [m[0] for m in r.result["messages"]]
        assert batch
        delivered.extend(batch)
        for mid in batch:
            r = await c.call("ack", {"queue": "q", "ids": [mid]})
            assert isinstance(r, Reply) and r.result["acked"] == 1, r
    assert sorted(delivered) == confirmed
    assert await count(c) == 0

    # The acked messages' log is dead weight: checkpoints reclaim it and the disk takes
    # as much again, with no restart and no help. Each refusal asks for a checkpoint,
    # and the next publish comes once it has run.
    again = refused = 0
    while again < len(confirmed) // 2:
        r = await c.call("publish", {"queue": "q", "messages": [[BODY]] * 10})
        if isinstance(r, Reply):
            again += r.result["count"]
        else:
            assert r.code == ErrorCode.DISK_FULL
            refused += 1
            assert refused <= 20, f"publishes stalled after {again}: {r}"
            await reclaimed(broker)
    assert disk.refusals > 0 and disk.used() <= disk.capacity


async def test_publishes_resume_when_space_is_freed_elsewhere(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    data = tmp_path / "d"
    disk = SmallDisk(data, capacity=1024 * 1024)
    broker, c = await start(nursery, data, disk)
    await c.call("queue_create", {"queue": "q"})
    confirmed = await fill(c)
    disk.capacity = 4 * 1024 * 1024  # e.g. another program's file was deleted
    # A checkpoint running on the full disk, or retrying for lack of room, is waited
    # for (the last test says why); once it is done the room is used.
    await reclaimed(broker)  # a retry comes within 4 s of the trio clock
    r = await c.call("publish", {"queue": "q", "messages": [[b"after"]]})
    assert isinstance(r, Reply), r
    assert await count(c) == len(confirmed) + 1


async def test_what_was_confirmed_on_a_full_disk_survives_a_restart(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    data = tmp_path / "d"
    disk = SmallDisk(data, capacity=1024 * 1024)
    async with trio.open_nursery() as first:
        broker, c = await start(first, data, disk)
        await c.call("queue_create", {"queue": "q"})
        confirmed = await fill(c)
        r = await c.call("consume", {"queue": "q", "max": 10})
        acked = [m[0] for m in r.result["messages"]]
        assert isinstance(await c.call("ack", {"queue": "q", "ids": acked}), Reply)
        broker.shutdown()  # serve returns once it has stopped; the nursery waits for it

    _, c2 = await start(nursery, data, None)
    r = await c2.call("consume", {"queue": "q", "max": 10_000})
    assert sorted(m[0] for m in r.result["messages"]) == sorted(set(confirmed) - set(acked))


async def test_publishes_wait_for_the_checkpoint_that_reclaims_a_full_disk(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Room that appears while the reclaiming checkpoint runs (here: freed elsewhere; in
    life also the temp file of a snapshot that just failed) is the snapshot's: a publish
    taking it could leave the snapshot no room, and the log unreclaimable."""
    gate = trio.Event()
    real = Checkpointer.checkpoint

    async def held(self: Checkpointer) -> None:  # every checkpoint waits for the gate
        await gate.wait()
        await real(self)

    monkeypatch.setattr(Checkpointer, "checkpoint", held)
    data = tmp_path / "d"
    disk = SmallDisk(data, capacity=1024 * 1024)
    broker, c = await start(nursery, data, disk)
    await c.call("queue_create", {"queue": "q"})
    confirmed = await fill(c)
    for i in range(0, len(confirmed), 100):  # acks delete in any state, and always fit
        r = await c.call("ack", {"queue": "q", "ids": confirmed[i:i + 100]})
        assert isinstance(r, Reply), r
    assert await count(c) == 0
    checkpointer = broker._checkpointer
    assert checkpointer is not None
    disk.capacity = 4 * 1024 * 1024
    # The acks made a checkpoint worth it: this publish asks for it, and must wait.
    r = await c.call("publish", {"queue": "q", "messages": [[b"early"]]})
    assert isinstance(r, Error) and r.code == ErrorCode.DISK_FULL, r
    assert "reclaim" in r.message and await count(c) == 0
    assert checkpointer.reclaiming and not checkpointer.starved
    gate.set()
    await reclaimed(broker)
    r = await c.call("publish", {"queue": "q", "messages": [[b"after"]]})
    assert isinstance(r, Reply), r
    assert await count(c) == 1


async def test_acks_bring_publishes_back_when_another_program_filled_the_disk(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    """The disk is full and another program holds every free block: acking half the
    messages is enough. The room the log kept for the next snapshot takes it; that
    snapshot frees the acked messages' log, and publishes resume within seconds."""
    data = tmp_path / "d"
    disk = SmallDisk(data, capacity=3 * 1024 * 1024)
    broker, c = await start(nursery, data, disk)
    await c.call("queue_create", {"queue": "q"})
    confirmed = await fill(c)
    await reclaimed(broker)
    disk.capacity = disk.used()  # another program takes whatever is left
    r = await c.call("publish", {"queue": "q", "messages": [[BODY]]})
    assert isinstance(r, Error) and r.code == ErrorCode.DISK_FULL, r
    half = len(confirmed) // 2
    for i in range(0, half, 100):
        r = await c.call("consume", {"queue": "q", "max": min(100, half - i)})
        assert isinstance(r, Reply), r
        r = await c.call("ack", {"queue": "q", "ids": [m[0] for m in r.result["messages"]]})
        assert isinstance(r, Reply), r
    checkpointer = broker._checkpointer
    assert checkpointer is not None
    before = checkpointer.checkpoints
    # The first request after the acks asks for the checkpoint; once it has run (the
    # first try: it needs no room but what the log kept), the next publish is taken.
    for _ in range(3):
        r = await c.call("publish", {"queue": "q", "messages": [[BODY]]})
        if isinstance(r, Reply):
            break
        assert r.code == ErrorCode.DISK_FULL, r
        await reclaimed(broker)
    assert isinstance(r, Reply), f"publishes did not resume: {r}"
    assert checkpointer.checkpoints > before and not checkpointer.starved
    assert await count(c) == len(confirmed) - half + 1
    assert disk.used() <= disk.capacity and not broker._log.failed  # type: ignore[union-attr]
