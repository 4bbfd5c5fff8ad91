"""SegmentedLog: LSNs, writing, syncing, rolling, reopening and failing, on real files."""
from __future__ import annotations

import errno
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from broker.wal import log as log_mod
from broker.wal import segment as segment_mod
from broker.wal.fileio import BytesLike, FileIO
from broker.wal.log import SegmentedLog, LogFailedError
from broker.wal.record import RECORD_HEADER_SIZE, encode_record
from broker.wal.replay import replay
from broker.wal.segment import (
    SEGMENT_HEADER_SIZE,
    WalCorruption,
    decode_header,
    encode_header,
    segment_name,
)


class CountingIO(FileIO):
    """Real calls, counted; ``fail`` names calls that raise instead."""

    def __init__(self, fail: set[str] | None = None, err: int = errno.EIO) -> None:
        self.calls: Counter[str] = Counter()
        self.fail = fail if fail is not None else set()
        self.err = err

    def _hit(self, name: str) -> None:
        self.calls[name] += 1
        if name in self.fail:
            raise OSError(self.err, f"injected {name} failure")

    def write(self, fd: int, data: BytesLike) -> int:
        self._hit("write")
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._hit("fsync")
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._hit("fdatasync")
        super().fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        self._hit("fsync_dir")
        super().fsync_dir(path)

    def rename(self, src: str, dst: str) -> None:
        self._hit("rename")
        super().rename(src, dst)


def rec(i: int, size: int = 20) -> bytes:
    return encode_record(1 + i % 200, (b"%d:" % i).ljust(size, b"."))


def read_back(path: Path) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    replay(path, lambda t, p: out.append((t, p)))
    return out


def seg_files(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".wal"))


def test_open_creates_directory_and_first_segment(tmp_path: Path) -> None:
    io = CountingIO()
    d = tmp_path / "a" / "wal"
    with SegmentedLog.open(d, io=io) as log:
        assert (log.appended_lsn, log.written_lsn, log.synced_lsn) == (0, 0, 0)
        assert log.active_segment == "00000000000000000000.wal"
    assert seg_files(d) == ["00000000000000000000.wal"]
    data = (d / "00000000000000000000.wal").read_bytes()
    assert data == encode_header(0) and len(data) == SEGMENT_HEADER_SIZE == 24
    assert decode_header(data, "x", 0).version == segment_mod.WAL_VERSION
    # the parent after mkdir, the wal directory after the rename
    assert io.calls["fsync_dir"] == 2
    assert not [n for n in os.listdir(d) if n.endswith(".tmp")]


def test_append_buffers_write_writes_sync_syncs(tmp_path: Path) -> None:
    io = CountingIO()
    log = SegmentedLog.open(tmp_path, io=io)
    io.calls.clear()
    r0, r1 = rec(0), rec(1, 50)
    assert log.append(r0) == len(r0)
    assert log.append(r1) == len(r0) + len(r1)
    assert io.calls["write"] == 0
    assert (log.appended_lsn, log.written_lsn, log.synced_lsn) == (len(r0) + len(r1), 0, 0)
    assert log.buffered_bytes == len(r0) + len(r1)

    log.write()
    assert io.calls["write"] == 1  # one write for the whole buffer
    assert log.written_lsn == log.appended_lsn and log.synced_lsn == 0
    assert io.calls["fdatasync"] == 0

    log.append(rec(2))
    log.sync()
    assert log.synced_lsn == log.written_lsn == log.appended_lsn
    assert io.calls["fdatasync"] == 1
    log.sync()  # nothing new: no fdatasync
    assert io.calls["fdatasync"] == 1
    log.close()
    assert read_back(tmp_path) == [(1, r0[9:]), (2, r1[9:]), (3, rec(2)[9:])]


def test_segments_roll_at_the_size_limit(tmp_path: Path) -> None:
    io = CountingIO()
    limit = 200
    log = SegmentedLog.open(tmp_path, segment_bytes=limit, io=io)
    io.calls.clear()
    records = [rec(i, 10 + i % 23) for i in range(300)]
    for i, r in enumerate(records):
        log.append(r)
        if i % 17 == 0:
            log.write()
    log.sync()
    log.close()

    names = seg_files(tmp_path)
    assert len(names) > 20
    lsn = 0
    for name in names:
        size = (tmp_path / name).stat().st_size
        assert name == segment_name(lsn)
        assert SEGMENT_HEADER_SIZE < size <= limit
        lsn += size - SEGMENT_HEADER_SIZE
    assert lsn == sum(map(len, records)) == log.synced_lsn
    # A segment is rolled only when the next record would not fit in it.
    length_at: dict[int, int] = {}
    pos = 0
    for r in records:
        length_at[pos] = len(r)
        pos += len(r)
    for name, following in zip(names[:-1], names[1:], strict=True):
        size = (tmp_path / name).stat().st_size
        assert size + length_at[int(following[:20])] > limit
    # each roll: fdatasync of the sealed segment, fsync of the new one, fsync of the dir
    rolls = len(names) - 1
    assert io.calls["fsync"] == rolls and io.calls["fsync_dir"] == rolls
    assert io.calls["fdatasync"] >= rolls
    assert [r for _, r in read_back(tmp_path)] == [r[9:] for r in records]


def test_segment_filled_exactly_then_rolled(tmp_path: Path) -> None:
    r = rec(0, 31)  # 40 bytes
    log = SegmentedLog.open(tmp_path, segment_bytes=SEGMENT_HEADER_SIZE + 2 * len(r))
    for _ in range(5):
        log.append(r)
    log.close()
    sizes = [(tmp_path / n).stat().st_size for n in seg_files(tmp_path)]
    assert sizes == [64 + 40, 64 + 40, 24 + 40]


def test_oversized_record_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, segment_bytes=100)
    small, big = rec(0, 10), rec(1, 500)
    for r in (small, big, small):
        log.append(r)
        log.write()
    log.close()
    names = seg_files(tmp_path)
    assert names == [segment_name(0), segment_name(len(small)),
                     segment_name(len(small) + len(big))]
    assert (tmp_path / names[1]).stat().st_size == SEGMENT_HEADER_SIZE + len(big)
    assert len(read_back(tmp_path)) == 3


def test_reopen_continues_the_last_segment(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, segment_bytes=300)
    first = [rec(i) for i in range(20)]
    for r in first:
        log.append(r)
    log.close()
    names = seg_files(tmp_path)
    (tmp_path / (segment_name(10**6) + ".tmp")).write_bytes(b"junk")
    (tmp_path / "notes.txt").write_bytes(b"not ours")

    assert len(read_back(tmp_path)) == 20
    io = CountingIO()
    log = SegmentedLog.open(tmp_path, segment_bytes=300, io=io)
    end = sum(map(len, first))
    assert log.appended_lsn == log.synced_lsn == end
    assert log.active_segment == names[-1]
    # what the last process wrote, and the directory, are made durable
    assert io.calls["fdatasync"] == 1 and io.calls["fsync_dir"] == 1
    assert not (tmp_path / (segment_name(10**6) + ".tmp")).exists()
    assert (tmp_path / "notes.txt").exists()
    second = [rec(i) for i in range(20, 40)]
    lsn = 0
    for r in second:
        lsn = log.append(r)
    assert lsn == end + sum(map(len, second))
    log.close()
    assert [p for _, p in read_back(tmp_path)] == [r[9:] for r in first + second]


def test_reopen_starts_a_new_segment_after_a_version_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SegmentedLog.open(tmp_path)
    log.append(rec(0))
    log.close()
    monkeypatch.setattr(segment_mod, "WAL_VERSION", 2)
    monkeypatch.setattr(log_mod, "WAL_VERSION", 2)
    monkeypatch.setattr(segment_mod, "READABLE_VERSIONS", frozenset({1, 2}))
    log = SegmentedLog.open(tmp_path)
    log.append(rec(1))
    log.close()
    names = seg_files(tmp_path)
    assert names == [segment_name(0), segment_name(len(rec(0)))]
    versions = [decode_header((tmp_path / n).read_bytes(), n, int(n[:20])).version
                for n in names]
    assert versions == [1, 2]
    assert len(read_back(tmp_path)) == 2


def test_open_refuses_a_damaged_last_header(tmp_path: Path) -> None:
    SegmentedLog.open(tmp_path).close()
    p = tmp_path / segment_name(0)
    data = bytearray(p.read_bytes())
    data[3] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(WalCorruption) as info:
        SegmentedLog.open(tmp_path)
    assert info.value.path == str(p) and info.value.offset == 0


def test_failed_fdatasync_fails_the_log(tmp_path: Path) -> None:
    io = CountingIO()
    log = SegmentedLog.open(tmp_path, io=io)
    log.append(rec(0))
    log.sync()
    good = log.synced_lsn
    io.fail.add("fdatasync")
    log.append(rec(1))
    with pytest.raises(LogFailedError, match="fdatasync"):
        log.sync()
    assert log.failed and log.synced_lsn == good
    assert log.written_lsn > good
    io.fail.clear()
    # an fsync that failed is never retried as if it could now succeed
    with pytest.raises(LogFailedError):
        log.sync()
    with pytest.raises(LogFailedError):
        log.begin_sync()
    with pytest.raises(LogFailedError):
        log.append(rec(2))
    assert log.synced_lsn == good
    log.close()  # closes the fd; the failure was already reported


def test_failed_write_fails_the_log(tmp_path: Path) -> None:
    io = CountingIO(err=errno.ENOSPC)
    log = SegmentedLog.open(tmp_path, io=io)
    io.fail.add("write")
    log.append(rec(0))
    with pytest.raises(LogFailedError, match="Errno 28"):
        log.write()
    assert log.failed and log.synced_lsn == 0 and isinstance(log.failure, LogFailedError)
    with pytest.raises(LogFailedError):
        log.append(rec(1))
    log.close()


def test_failed_roll_stays_in_the_active_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = CountingIO()
    log = SegmentedLog.open(tmp_path, segment_bytes=60, io=io)
    log.append(rec(0))
    log.sync()
    io.fail.add("rename")
    end = log.append(rec(1))
    log.sync()  # the new segment could not be created: the record goes to the old one
    assert not log.failed and log.synced_lsn == end
    assert seg_files(tmp_path) == [segment_name(0)]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    # within ROLL_RETRY_S the log does not try again
    renames = io.calls["rename"]
    log.append(rec(2))
    log.sync()
    assert io.calls["rename"] == renames and seg_files(tmp_path) == [segment_name(0)]
    # once it may, and the file system lets it, the log rolls again
    io.fail.clear()
    monkeypatch.setattr(log_mod, "ROLL_RETRY_S", 0.0)
    log._roll_retry_at = 0.0
    end = log.append(rec(3))
    log.sync()
    assert len(seg_files(tmp_path)) == 2 and log.synced_lsn == end
    log.close()
    assert [p for _, p in read_back(tmp_path)] == [rec(i)[9:] for i in range(4)]


def test_failed_fdatasync_while_rolling_fails_the_log(tmp_path: Path) -> None:
    io = CountingIO()
    log = SegmentedLog.open(tmp_path, segment_bytes=60, io=io)
    log.append(rec(0))
    log.sync()
    log.append(rec(1))
    log.write()
    io.fail.add("fdatasync")
    log.append(rec(2))
    with pytest.raises(LogFailedError, match="fdatasync"):
        log.sync()
    assert log.failed and log.synced_lsn == len(rec(0))
    log.close()


class NoRoomIO(FileIO):
    """Real files, but ``preallocate`` beyond ``room_bytes`` in all is ENOSPC."""

    def __init__(self, room_bytes: int) -> None:
        self.room_bytes = room_bytes
        self.given = 0

    def preallocate(self, fd: int, offset: int, length: int) -> None:
        if self.given + length > self.room_bytes:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.given += length
        super().preallocate(fd, offset, length)

    def release(self, fd: int, offset: int, length: int) -> None:
        super().release(fd, offset, length)
        self.given -= length


def test_ensure_room_reserves_ahead_and_reports_a_full_disk(tmp_path: Path) -> None:
    io = NoRoomIO(room_bytes=10_000)
    log = SegmentedLog.open(tmp_path, segment_bytes=1 << 20, io=io)
    # the first reservation asks for a step (capped by the segment size) and falls
    # back to exactly what is needed
    assert log.ensure_room(4000)
    assert log.room >= 4000
    before = log.room
    log.append(rec(0, size=100))
    assert log.room == before - len(rec(0, size=100))
    assert not log.ensure_room(20_000)  # more than the file system will give
    assert not log.failed
    log.append(rec(1))
    log.sync()  # the log itself goes on
    io.room_bytes = 10**9  # space came back
    assert log.ensure_room(20_000) and log.room >= 20_000
    log.close()


def test_ensure_room_is_unlimited_without_fallocate(tmp_path: Path) -> None:
    class NoFallocate(FileIO):
        def preallocate(self, fd: int, offset: int, length: int) -> None:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    log = SegmentedLog.open(tmp_path, io=NoFallocate())
    assert log.ensure_room(10**12) and log.room > 10**15
    log.close()


def test_a_new_segment_is_created_with_the_reserve_hint(tmp_path: Path) -> None:
    io = NoRoomIO(room_bytes=10**9)
    log = SegmentedLog.open(tmp_path, segment_bytes=4096, io=io)
    log.reserve_hint = 50_000
    while len(seg_files(tmp_path)) < 2:
        log.append(rec(0, size=200))
        log.write()
    assert log.room >= 50_000
    log.close()


def test_a_roll_without_room_keeps_the_old_reservation(tmp_path: Path) -> None:
    io = NoRoomIO(room_bytes=8192)
    log = SegmentedLog.open(tmp_path, segment_bytes=4096, io=io)
    assert log.ensure_room(6500)
    log.reserve_hint = 1 << 20  # a new segment could never get this much
    written = 0
    while written < 6000:  # past the segment size, all inside the reservation
        assert log.room >= 300
        log.append(rec(0, size=200))
        written += len(rec(0, size=200))
        log.sync()
    assert seg_files(tmp_path) == [segment_name(0)] and not log.failed
    log.close()
    assert len(read_back(tmp_path)) == 29


def test_short_writes_are_completed(tmp_path: Path) -> None:
    class Dribble(FileIO):
        def write(self, fd: int, data: BytesLike) -> int:
            return super().write(fd, memoryview(data)[:7])

    log = SegmentedLog.open(tmp_path, io=Dribble())
    records = [rec(i) for i in range(10)]
    for r in records:
        log.append(r)
    log.close()
    assert [p for _, p in read_back(tmp_path)] == [r[9:] for r in records]


def test_a_sync_ticket_covers_what_was_written_when_it_was_taken(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path)
    log.append(rec(0))
    ticket = log.begin_sync()
    assert ticket is not None and ticket.lsn == log.written_lsn == len(rec(0))
    log.append(rec(1))  # appended (and even written) meanwhile: not covered
    log.write()
    os.fdatasync(ticket.fd)
    log.end_sync(ticket, None)
    assert log.synced_lsn == len(rec(0)) < log.written_lsn
    assert log.begin_sync() is not None
    log.sync()
    assert log.begin_sync() is None  # nothing left to cover
    log.close()
    assert len(read_back(tmp_path)) == 2


def test_a_failed_sync_ticket_fails_the_log_unless_it_moved_on(tmp_path: Path) -> None:
    io = CountingIO()
    log = SegmentedLog.open(tmp_path, io=io)
    log.append(rec(0))
    ticket = log.begin_sync()
    assert ticket is not None
    with pytest.raises(LogFailedError, match="fdatasync"):
        log.end_sync(ticket, OSError(errno.EIO, "I/O error"))
    assert log.failed and log.synced_lsn == 0
    log.restart_at(log.appended_lsn)  # (the owner made a snapshot durable first)
    log.append(rec(1))
    late = log.begin_sync()
    log.end_sync(ticket, OSError(errno.EIO, "late news of the old segment"))
    assert not log.failed  # the old segment was abandoned: its news changes nothing
    assert late is not None
    log.end_sync(late, None)
    assert log.synced_lsn == log.appended_lsn
    log.close()


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path)
    log.append(rec(0))
    log.close()
    log.close()
    assert log.synced_lsn == len(rec(0)) and not log.failed
    with pytest.raises(LogFailedError, match="closed"):
        log.append(rec(1))


def test_record_header_size_matches_lsn_arithmetic(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path)
    assert log.append(encode_record(1, b"")) == RECORD_HEADER_SIZE
    log.close()


class PowerCutIO(FileIO):
    """Remembers what fsyncs made durable; ``crash`` leaves only that on disk.

    Unsynced bytes are dropped (``zero_fill=False``) or read back as zeros, and files
    whose directory entry was never fsynced disappear.
    """

    def __init__(self) -> None:
        self.paths: dict[int, str] = {}
        self.durable_size: dict[str, int] = {}
        self.durable_names: set[str] = set()

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        return fd

    def close(self, fd: int) -> None:
        del self.paths[fd]
        super().close(fd)

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self.durable_size[self.paths[fd]] = os.fstat(fd).st_size

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        self.durable_size[self.paths[fd]] = os.fstat(fd).st_size

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        self.paths = {fd: dst if p == src else p for fd, p in self.paths.items()}
        self.durable_size[dst] = self.durable_size.pop(src, 0)

    def fsync_dir(self, path: str) -> None:
        super().fsync_dir(path)
        self.durable_names |= {os.path.join(path, n) for n in os.listdir(path)}

    def crash(self, directory: Path, zero_fill: bool) -> None:
        for fd in list(self.paths):
            os.close(fd)
        self.paths.clear()
        for name in os.listdir(directory):
            p = str(directory / name)
            if p not in self.durable_names:
                os.unlink(p)
                continue
            keep = self.durable_size.get(p, 0)
            data = Path(p).read_bytes()
            lost = len(data) - keep
            Path(p).write_bytes(data[:keep] + (bytes(lost) if zero_fill else b""))


@pytest.mark.parametrize("zero_fill", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_a_power_cut_keeps_every_synced_record(tmp_path: Path, seed: int,
                                               zero_fill: bool) -> None:
    rng = random.Random(seed)
    io = PowerCutIO()
    log = SegmentedLog.open(tmp_path, segment_bytes=rng.choice([200, 600]), io=io)
    records: list[bytes] = []
    confirmed = 0
    for _ in range(rng.randint(1, 40)):
        for _ in range(rng.randint(1, 6)):
            records.append(rec(len(records), rng.randint(0, 90)))
            log.append(records[-1])
        action = rng.random()
        if action < 0.4:
            log.sync()
            confirmed = len(records)
        elif action < 0.8:
            log.write()
    io.crash(tmp_path, zero_fill)

    got = [p for _, p in read_back(tmp_path)]
    assert len(got) >= confirmed
    assert got == [r[9:] for r in records[:len(got)]]
    with SegmentedLog.open(tmp_path) as log:  # and the log goes on from there
        log.append(rec(999))
    assert len(read_back(tmp_path)) == len(got) + 1


def test_on_sync_is_told_each_fdatasync_with_its_time_and_bytes(tmp_path: Path) -> None:
    seen: list[tuple[float, int]] = []
    log = SegmentedLog.open(tmp_path, segment_bytes=200)
    log.on_sync = lambda seconds, nbytes: seen.append((seconds, nbytes))
    r = rec(0, 40)
    log.append(r)
    log.append(r)
    log.sync()
    log.sync()  # nothing new: no fdatasync, nothing told
    assert [n for _, n in seen] == [2 * len(r)]
    for _ in range(4):  # 4 more records: the segment (200 bytes) rolls once, sealed by an fdatasync
        log.append(r)
    log.sync()
    assert sum(n for _, n in seen) == 6 * len(r) and len(seen) == 3
    log.append(r)
    ticket = log.begin_sync()  # a sync made elsewhere: told at end_sync
    assert ticket is not None
    os.fdatasync(ticket.fd)
    log.end_sync(ticket, None)
    assert seen[-1][1] == len(r) and len(seen) == 4
    assert all(seconds >= 0 for seconds, _ in seen)
    log.close()


def test_disk_usage_counts_segment_files_and_their_bytes(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path, segment_bytes=200)
    assert log.disk_usage()[:2] == (1, SEGMENT_HEADER_SIZE)
    for i in range(10):
        log.append(rec(i, 40))
    log.sync()
    segments, size, allocated = log.disk_usage()
    files = seg_files(tmp_path)
    assert segments == len(files) > 1
    assert size == sum((tmp_path / f).stat().st_size for f in files)
    assert size == 10 * len(rec(0, 40)) + segments * SEGMENT_HEADER_SIZE
    assert allocated >= 0
    (tmp_path / "not-a-segment.txt").write_bytes(b"x" * 1000)
    assert log.disk_usage()[:2] == (segments, size)
    log.close()
