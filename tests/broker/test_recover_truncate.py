"""``--recover``: damage stops start-up (refuse) or is cut away and reported (truncate).

Real WAL directories built with ``SegmentedLog`` and the snapshot writers, damaged on
disk, then recovered with ``broker.recovery.recover``; the last tests run ``brokerd``.
"""
from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from broker.config import BrokerConfig
from broker.mutations import Ack, Mutation, Publish, QueueCreate
from broker.recovery import DAMAGED_SUFFIX, Recovered, recover
from broker.state import BrokerState
from broker.wal import SegmentedLog, WalCorruption, WalVersionError, encode_record
from broker.wal.checkpoint import (
    list_snapshots,
    publish_snapshot,
    snapshot_name,
    write_snapshot_tmp,
)
from broker.wal.fileio import FileIO
from broker.wal.record import RECORD_HEADER_SIZE
from broker.wal.segment import SEGMENT_HEADER_SIZE, encode_header, list_segments, segment_name
from broker.walctl import ERROR, locate, verify_wal

from ..broker_process import ROOT, BrokerProcess
from ..snapshots import middle_rows_record

_pack = msgpack.Packer(use_bin_type=True).pack
#: Small segments, so a few dozen records span several of them.
SEGMENT_BYTES = 400


def workload(n: int = 60, queues: tuple[str, ...] = ("q",)) -> list[Mutation]:
    """Queue creations, then one-message publishes round-robin, with an ack now and then."""
    muts: list[Mutation] = [QueueCreate(q, "fifo", 1, 30_000, 0, None, 10_000) for q in queues]
    next_id = dict.fromkeys(queues, 1)
    for i in range(n):
        q = queues[i % len(queues)]
        muts.append(Publish(q, next_id[q], 1_000 + i, [b"body-%s-%03d" % (q.encode(), i)]))
        next_id[q] += 1
        if i % 9 == 8:
            muts.append(Ack(q, [next_id[q] - 2]))
    return muts


def write_log(wal: Path, muts: list[Mutation]) -> list[int]:
    """Append every mutation as a record; the LSN just past each one."""
    ends = []
    with SegmentedLog.open(wal, segment_bytes=SEGMENT_BYTES) as log:
        for m in muts:
            ends.append(log.append(encode_record(m.TYPE, _pack(m.fields()))))
            log.write()
        log.sync()
    return ends


def layout(wal: Path) -> list[tuple[str, int]]:
    """``(segment name, offset)`` of every record, in log order."""
    spots = []
    for _, name in list_segments(FileIO(), str(wal)):
        data = (wal / name).read_bytes()
        off = SEGMENT_HEADER_SIZE
        while off < len(data):
            spots.append((name, off))
            (length,) = struct.unpack_from(">I", data, off)
            off += RECORD_HEADER_SIZE + length
    return spots


def state_of(muts: list[Mutation]) -> BrokerState:
    state = BrokerState()
    for m in muts:
        state.apply(m)
    return state


def snapshot_at(wal: Path, lsn: int, muts: list[Mutation]) -> Path:
    """Publish a snapshot at ``lsn`` holding the state of ``muts``."""
    io = FileIO()
    tmp = write_snapshot_tmp(io, str(wal), lsn, state_of(muts).export_records())
    return Path(publish_snapshot(io, str(wal), tmp))


def flip(path: Path, offset: int, bit: int = 3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def names(wal: Path) -> list[str]:
    return sorted(os.listdir(wal))


def records_in(wal: Path, name: str, start: int = SEGMENT_HEADER_SIZE) -> int:
    return sum(1 for seg, off in layout(wal) if seg == name and off >= start)


def assert_clean_restart(wal: Path, expected: BrokerState) -> Recovered:
    """A second start-up with ``refuse``: no damage left in place, the same state."""
    again = recover(wal, mode="refuse")
    assert again.state.snapshot() == expected.snapshot()
    assert again.discarded == () and again.replay.truncated_at is None
    report = verify_wal(locate(str(wal)))
    assert [p for p in report.problems if p.severity == ERROR] == []
    return again


# -- a bad record in a sealed segment ----------------------------------------------------


def sealed_damage(tmp_path: Path) -> tuple[Path, list[Mutation], list[tuple[str, int]], int]:
    """A log over several segments with one payload bit flipped in a sealed one."""
    wal = tmp_path / "wal"
    muts = workload()
    write_log(wal, muts)
    spots = layout(wal)
    segs = [name for _, name in list_segments(FileIO(), str(wal))]
    assert len(segs) >= 5
    # The second record of the second segment: records before and after it in the file.
    k = next(i for i, (seg, _) in enumerate(spots) if seg == segs[1]) + 1
    assert spots[k][0] == segs[1] and spots[k + 1][0] == segs[1]
    flip(wal / spots[k][0], spots[k][1] + RECORD_HEADER_SIZE + 2)
    return wal, muts, spots, k


def test_refuse_names_the_damaged_segment_and_offset(tmp_path: Path) -> None:
    wal, _, spots, k = sealed_damage(tmp_path)
    before = {n: (wal / n).read_bytes() for n in names(wal)}
    with pytest.raises(WalCorruption) as info:
        recover(wal)  # refuse is the default
    assert info.value.path == str(wal / spots[k][0]) and info.value.offset == spots[k][1]
    assert "sealed segment" in info.value.reason
    with pytest.raises(WalCorruption):
        recover(wal, mode="refuse")
    assert {n: (wal / n).read_bytes() for n in names(wal)} == before  # nothing changed


def test_truncate_keeps_exactly_what_precedes_a_bad_record(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wal, muts, spots, k = sealed_damage(tmp_path)
    damaged_name, offset = spots[k]
    original = (wal / damaged_name).read_bytes()
    segs = [name for _, name in list_segments(FileIO(), str(wal))]
    later = segs[segs.index(damaged_name) + 1:]
    later_records = {name: records_in(wal, name) for name in later}
    after_in_damaged = records_in(wal, damaged_name, offset + 1)

    with caplog.at_level(logging.WARNING, logger="lockgate.recovery"):
        got = recover(wal, mode="truncate")

    expected = state_of(muts[:k])
    assert got.state.snapshot() == expected.snapshot()
    assert got.replay.records == k and got.snapshot_lsn == 0
    # The damaged segment is cut at the bad record; the original is kept beside it.
    assert (wal / damaged_name).read_bytes() == original[:offset]
    assert (wal / (damaged_name + DAMAGED_SUFFIX)).read_bytes() == original
    # Every later segment is moved aside whole.
    for name in later:
        assert not (wal / name).exists() and (wal / (name + DAMAGED_SUFFIX)).exists()
    assert [n for _, n in list_segments(FileIO(), str(wal))] == segs[:segs.index(damaged_name) + 1]

    by_path = {Path(d.path).name: d for d in got.discarded}
    assert set(by_path) == {damaged_name, *later}
    cut = by_path[damaged_name]
    assert cut.kind == "segment" and cut.from_offset == offset
    assert cut.bytes == len(original) - offset
    assert cut.moved_to == str(wal / (damaged_name + DAMAGED_SUFFIX))
    assert cut.records == after_in_damaged  # the valid ones behind the bad record
    assert f"offset {offset}" in cut.reason
    base = int(damaged_name[:20])
    assert cut.first_lsn == base + offset - SEGMENT_HEADER_SIZE
    assert cut.end_lsn == base + len(original) - SEGMENT_HEADER_SIZE
    for name in later:
        d = by_path[name]
        assert d.from_offset == 0 and d.records == later_records[name]
        assert f"{damaged_name}:{offset}" in d.reason
    assert sum(d.records for d in got.discarded) == len(muts) - k - 1
    # One error line per file moved aside, naming it.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    for name in (damaged_name, *later):
        assert name in logged

    # The .damaged files are ignored: by listing, by replay and by brokerctl wal verify.
    assert all(not n.endswith(DAMAGED_SUFFIX) for _, n in list_segments(FileIO(), str(wal)))
    assert_clean_restart(wal, expected)
    # And the log continues where the kept part ends.
    with SegmentedLog.open(wal, segment_bytes=SEGMENT_BYTES) as log:
        assert log.appended_lsn == got.replay.end_lsn
        extra = Publish("q", 999, 5, [b"after"])
        log.append(encode_record(extra.TYPE, _pack(extra.fields())))
        log.sync()
    assert_clean_restart(wal, state_of([*muts[:k], extra]))


def test_truncate_cuts_mid_log_damage_in_the_last_segment(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    muts = workload(20)
    with SegmentedLog.open(wal) as log:  # one big segment
        for m in muts:
            log.append(encode_record(m.TYPE, _pack(m.fields())))
        log.sync()
    spots = layout(wal)
    k = 7
    flip(wal / spots[k][0], spots[k][1] + 5)  # the CRC field: provably not a torn write
    with pytest.raises(WalCorruption) as info:
        recover(wal)
    assert info.value.offset == spots[k][1]
    got = recover(wal, mode="truncate")
    assert got.state.snapshot() == state_of(muts[:k]).snapshot()
    (only,) = got.discarded
    assert only.from_offset == spots[k][1] and only.records == len(muts) - k - 1
    assert_clean_restart(wal, state_of(muts[:k]))


def test_truncate_moves_aside_a_bad_header_and_what_follows(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    muts = workload()
    write_log(wal, muts)
    spots = layout(wal)
    segs = [n for _, n in list_segments(FileIO(), str(wal))]
    victim = segs[2]
    flip(wal / victim, 1)  # the magic
    with pytest.raises(WalCorruption) as info:
        recover(wal)
    assert (Path(info.value.path).name, info.value.offset) == (victim, 0)
    got = recover(wal, mode="truncate")
    kept = sum(1 for seg, _ in spots if seg in segs[:2])
    assert got.state.snapshot() == state_of(muts[:kept]).snapshot()
    assert [Path(d.path).name for d in got.discarded] == segs[2:]  # in log order
    assert all(d.from_offset == 0 for d in got.discarded)
    assert sum(d.records for d in got.discarded) == len(muts) - kept
    assert [n for _, n in list_segments(FileIO(), str(wal))] == segs[:2]
    assert_clean_restart(wal, state_of(muts[:kept]))


def test_truncate_stops_at_a_gap_between_segments(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    muts = workload()
    write_log(wal, muts)
    spots = layout(wal)
    segs = [n for _, n in list_segments(FileIO(), str(wal))]
    (wal / segs[3]).unlink()
    with pytest.raises(WalCorruption) as info:
        recover(wal)
    assert (Path(info.value.path).name, info.value.offset) == (segs[4], 0)
    got = recover(wal, mode="truncate")
    kept = sum(1 for seg, _ in spots if seg in segs[:3])
    assert got.state.snapshot() == state_of(muts[:kept]).snapshot()
    assert {Path(d.path).name for d in got.discarded} == set(segs[4:])
    assert_clean_restart(wal, state_of(muts[:kept]))


def test_a_name_taken_by_an_earlier_recovery_is_not_overwritten(tmp_path: Path) -> None:
    wal, _, spots, _ = sealed_damage(tmp_path)
    last = [n for _, n in list_segments(FileIO(), str(wal))][-1]
    (wal / (last + DAMAGED_SUFFIX)).write_bytes(b"from an earlier recovery")
    got = recover(wal, mode="truncate")
    moved = {Path(d.path).name: d.moved_to for d in got.discarded}
    assert moved[last] == str(wal / f"{last}.2{DAMAGED_SUFFIX}")
    assert (wal / (last + DAMAGED_SUFFIX)).read_bytes() == b"from an earlier recovery"


def test_a_version_this_build_cannot_read_is_never_moved_aside(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    write_log(wal, workload())
    segs = [n for _, n in list_segments(FileIO(), str(wal))]
    data = bytearray((wal / segs[-1]).read_bytes())
    data[:SEGMENT_HEADER_SIZE] = encode_header(int(segs[-1][:20]), version=99)
    (wal / segs[-1]).write_bytes(bytes(data))
    before = names(wal)
    with pytest.raises(WalVersionError):
        recover(wal, mode="truncate")
    assert names(wal) == before


def test_mode_is_checked() -> None:
    with pytest.raises(ValueError):
        recover(Path("/nonexistent"), mode="skip")
    with pytest.raises(ValueError):
        BrokerConfig(recover="skip")
    assert BrokerConfig().recover == "refuse"


# -- snapshots -------------------------------------------------------------------------


def test_damaged_newest_snapshot_falls_back_to_the_older_one(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    muts = workload()
    ends = write_log(wal, muts)
    old = snapshot_at(wal, ends[19], muts[:20])
    new = snapshot_at(wal, ends[39], muts[:40])
    flip(new, new.stat().st_size // 2)
    with pytest.raises(WalCorruption) as info:
        recover(wal)
    assert info.value.path == str(new) and info.value.offset > 0

    got = recover(wal, mode="truncate")
    assert got.snapshot_lsn == ends[19]
    assert got.state.snapshot() == state_of(muts).snapshot()  # nothing lost: the log reaches back
    assert got.replay.records == len(muts) - 20
    (gone,) = got.discarded
    assert gone.kind == "snapshot" and gone.path == str(new)
    assert gone.moved_to == str(new) + DAMAGED_SUFFIX and gone.bytes == len(
        Path(gone.moved_to).read_bytes())
    assert f"offset {info.value.offset}" in gone.reason
    assert not new.exists() and old.exists()
    assert list_snapshots(FileIO(), str(wal)) == [(ends[19], old.name)]
    assert_clean_restart(wal, state_of(muts)).snapshot_lsn == ends[19]


def test_damaged_only_snapshot_falls_back_to_the_whole_log(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    muts = workload()
    ends = write_log(wal, muts)
    snap = snapshot_at(wal, ends[29], muts[:30])
    flip(snap, 5)  # the header
    got = recover(wal, mode="truncate")
    assert got.snapshot_lsn == 0 and got.lost_before_lsn == 0
    assert got.state.snapshot() == state_of(muts).snapshot()
    assert [d.path for d in got.discarded] == [str(snap)]
    assert_clean_restart(wal, state_of(muts))


def test_no_usable_snapshot_and_a_log_that_starts_late(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The snapshot the deleted segments relied on is gone: what precedes the oldest
    segment is lost, and said so; an older intact snapshot the log does not meet is
    moved aside rather than applied to."""
    wal = tmp_path / "wal"
    muts = workload(50, ("a",))
    newest_at = len(muts)  # the newest snapshot: just before queue "b" is created
    muts += [QueueCreate("b", "fifo", 1, 30_000, 0, None, 10_000)]
    muts += [Publish(q, 100 + i, 9, [b"late-%d" % i]) for i in range(20) for q in ("a", "b")]
    ends = write_log(wal, muts)
    older = snapshot_at(wal, ends[5], muts[:6])
    newest = snapshot_at(wal, ends[newest_at - 1], muts[:newest_at])
    # What a checkpoint deletes after publishing ``newest`` (the older snapshot survives,
    # as after a crash between the two deletions).
    segs = list_segments(FileIO(), str(wal))
    for (_, name), (next_base, _) in zip(segs, segs[1:]):
        if next_base <= ends[newest_at - 1]:
            (wal / name).unlink()
    first_base = list_segments(FileIO(), str(wal))[0][0]
    assert ends[5] < first_base < ends[newest_at - 1]
    newest.unlink()  # gone (a damaged one would be salvaged, rule 5)

    with pytest.raises(WalCorruption):
        recover(wal)
    with caplog.at_level(logging.WARNING, logger="lockgate.recovery"):
        got = recover(wal, mode="truncate")

    # Replayed from the oldest segment into an empty state: queue "a" predates it.
    starts = [0, *ends]
    first = starts.index(first_base)
    from_log = [m for m in muts[first:] if m.queue == "b"]
    assert got.lost_before_lsn == first_base
    assert got.skipped_records == sum(1 for m in muts[first:] if m.queue == "a")
    assert got.state.snapshot() == state_of(from_log).snapshot()
    assert {d.path: "intact" in d.reason for d in got.discarded} == {str(older): True}
    assert f"LSN {first_base}" in caplog.text and "lost" in caplog.text
    # The recovered state was written as a snapshot at the end of the log.
    assert got.snapshot_lsn == ends[-1]
    assert list_snapshots(FileIO(), str(wal)) == [(ends[-1], snapshot_name(ends[-1]))]
    assert assert_clean_restart(wal, got.state).replay.records == 0


def test_damaged_only_snapshot_keeps_its_whole_records_and_the_log_after_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The issue's case: a byte flipped in the middle of the only snapshot, whose log
    before it was deleted. Every record of the snapshot but the damaged one is kept,
    and every log record after the snapshot is replayed: only the messages of the
    damaged record (here 5) are lost."""
    wal = tmp_path / "wal"
    muts = workload(120, ("a", "b"))
    at = 90  # the snapshot holds muts[:at]; the log after it is replayed
    muts.append(QueueCreate("c", "fifo", 1, 30_000, 0, None, 10_000))
    muts += [Publish("c", 1 + i, 9, [b"after-%d" % i]) for i in range(5)]
    ends = write_log(wal, muts)
    io = FileIO()
    tmp = write_snapshot_tmp(io, str(wal), ends[at - 1], state_of(muts[:at]).export_records(chunk=5))
    snap = Path(publish_snapshot(io, str(wal), tmp))
    segs = list_segments(io, str(wal))
    for (_, name), (next_base, _) in zip(segs, segs[1:]):  # what the checkpoint deleted
        if next_base <= ends[at - 1]:
            (wal / name).unlink()
    assert list_segments(io, str(wal))[0][0] > 0
    # The record of message rows nearest the middle of the file is damaged.
    pristine = snap.read_bytes()
    off, length, queue, lost = middle_rows_record(pristine)
    flip(snap, off + 9 + length // 2)

    with pytest.raises(WalCorruption):
        recover(wal)
    with caplog.at_level(logging.ERROR, logger="lockgate.recovery"):
        got = recover(wal, mode="truncate")

    expected = state_of(muts)
    assert got.salvaged > 0 and got.salvage_lost == 1 and got.lost_before_lsn == 0
    for name in ("a", "b", "c"):
        want = set(expected.queues[name].messages) - (lost if name == queue else set())
        assert set(got.state.queues[name].messages) == want, name
    assert 0 < len(lost) <= 5
    assert got.replay.records == len(muts) - at  # every log record after the snapshot
    assert "kept" in caplog.text and "damaged snapshot" in caplog.text
    assert [d.path for d in got.discarded] == [str(snap)]
    assert Path(str(snap) + DAMAGED_SUFFIX).read_bytes() != pristine  # the damaged original
    assert got.snapshot_lsn == ends[-1]
    assert assert_clean_restart(wal, got.state).replay.records == 0


def test_header_damage_where_the_snapshot_lsn_lies(tmp_path: Path) -> None:
    """The kept log ends before the snapshot's LSN: the snapshot holds all of it, and the
    log continues at that LSN in a new segment."""
    wal = tmp_path / "wal"
    muts = workload()
    ends = write_log(wal, muts)
    spots = layout(wal)
    segs = [n for _, n in list_segments(FileIO(), str(wal))]
    # A snapshot in the middle of segs[2], after the record at index k.
    k = next(i for i, (seg, _) in enumerate(spots) if seg == segs[2])
    snap_lsn = ends[k]
    assert spots[k + 1][0] == segs[2]
    snapshot_at(wal, snap_lsn, muts[:k + 1])
    flip(wal / segs[2], 10)
    with pytest.raises(WalCorruption) as info:
        recover(wal)
    assert (Path(info.value.path).name, info.value.offset) == (segs[2], 0)

    got = recover(wal, mode="truncate")
    expected = state_of(muts[:k + 1])
    assert got.snapshot_lsn == snap_lsn
    assert got.state.snapshot() == expected.snapshot()
    assert {Path(d.path).name for d in got.discarded} == set(segs[2:])
    assert [n for _, n in list_segments(FileIO(), str(wal))] == [segment_name(snap_lsn)]
    assert_clean_restart(wal, expected)
    with SegmentedLog.open(wal) as log:
        assert log.appended_lsn == snap_lsn


# -- brokerd ---------------------------------------------------------------------------


def damaged_data_dir(tmp_path: Path) -> tuple[Path, str, int]:
    """A data directory whose log has a bad record in a sealed segment after
    ``kept`` publishes of one message each; returns (data dir, segment name, kept)."""
    data = tmp_path / "data"
    wal = data / "wal"
    muts: list[Mutation] = [QueueCreate("q", "fifo", 1, 30_000, 0, None, 10_000)]
    muts += [Publish("q", i + 1, 1_000, [b"m%03d" % i]) for i in range(40)]
    write_log(wal, muts)
    spots = layout(wal)
    segs = [n for _, n in list_segments(FileIO(), str(wal))]
    k = next(i for i, (seg, _) in enumerate(spots) if seg == segs[2]) + 1
    flip(wal / spots[k][0], spots[k][1] + RECORD_HEADER_SIZE + 1)
    return data, spots[k][0], k - 1  # records 1..k-1 are publishes


def test_brokerd_refuses_damage_with_a_one_line_error(tmp_path: Path) -> None:
    data, segment, _ = damaged_data_dir(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", "0", "--data", str(data)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert b"listening" not in done.stdout
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("brokerd:")]
    assert segment in line and "offset" in line and "--recover=truncate" in line


def test_brokerd_recover_truncate_serves_what_was_kept(tmp_path: Path) -> None:
    from client import SyncClient

    data, segment, kept = damaged_data_dir(tmp_path)
    proc = BrokerProcess(data, args=("--recover", "truncate"))
    try:
        proc.start()
    except RuntimeError:
        pytest.fail(f"brokerd --recover truncate did not start: {proc.log_tail()}")
    try:
        with SyncClient(proc.addr, timeout=30) as c:
            assert c.queue_stats("q").messages == kept
            got = c.consume("q", max=100)
            assert [d.body for d in got] == [b"m%03d" % i for i in range(kept)]
    finally:
        proc.kill()
    assert segment in proc.log_tail() and "moved aside" in proc.log_tail()
    assert (data / "wal" / (segment + DAMAGED_SUFFIX)).exists()
    # No damage left in place: a plain start works, and the leases were recovered.
    again = BrokerProcess(data, log_path=tmp_path / "again.log")
    try:
        again.start()
    except RuntimeError:
        pytest.fail(f"brokerd did not start again: {again.log_tail()}")
    try:
        with SyncClient(again.addr, timeout=30) as c:
            assert c.queue_stats("q").messages == kept
    finally:
        again.stop()


def test_refuse_mode_refuses_a_log_that_starts_after_lsn_0_without_a_snapshot(tmp_path: Path) -> None:
    """Deleting the snapshot must not silently lose the state it held."""
    import pytest

    from broker.recovery import recover
    from broker.wal import WalCorruption
    from broker.wal.segment import create_segment
    from broker.wal.fileio import FileIO

    wal = tmp_path / "wal"
    wal.mkdir()
    io = FileIO()
    io.close(create_segment(io, str(wal), 4096))
    with pytest.raises(WalCorruption) as info:
        recover(wal)
    assert "no snapshot" in info.value.reason and info.value.path.endswith("00000000000000004096.wal")


class RottingDisk(FileIO):
    """Snapshot temp files come back from the disk with one byte changed."""

    def __init__(self) -> None:
        self.snapshots: set[int] = set()

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        self.snapshots.discard(fd)
        if path.endswith(".snap.tmp"):
            self.snapshots.add(fd)
        return fd

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        data = super().pread(fd, size, offset)
        if fd in self.snapshots and len(data) > 100:
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return data


def test_a_snapshot_that_reads_back_wrong_is_never_published(tmp_path: Path) -> None:
    """A snapshot is read back and checked whole after its fsync: one that does not read
    back as written fails, and leaves nothing behind (the log it would replace stays)."""
    wal = tmp_path / "wal"
    muts = workload(30)
    ends = write_log(wal, muts)
    with pytest.raises(WalCorruption):
        write_snapshot_tmp(RottingDisk(), str(wal), ends[-1], state_of(muts).export_records())
    assert not [n for n in names(wal) if ".snap" in n]
    assert recover(wal).state.snapshot() == state_of(muts).snapshot()
