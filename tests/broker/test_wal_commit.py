"""GroupCommitter: group commit under ALWAYS, timed syncs under INTERVAL, failures."""
from __future__ import annotations

import errno
from collections import Counter
from pathlib import Path

import pytest
import trio
import trio.testing

import os
import random
import signal
import time
from collections.abc import Iterator

from broker.wal.commit import FsyncPolicy, GroupCommitter, LogFailedError
from broker.wal.fileio import BytesLike, FileIO, JournalingFileIO
from broker.wal.log import SegmentedLog
from broker.wal.record import encode_record
from broker.wal.replay import replay
from broker.wal.segment import SEGMENT_HEADER_SIZE
from broker.wal.synchelper import SyncHelper
from tools.powercut import apply_power_cut, read_journal


class CountingIO(FileIO):
    """Real calls, counted; ``fail`` names calls that raise instead."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fail: set[str] = set()

    def _hit(self, name: str) -> None:
        self.calls[name] += 1
        if name in self.fail:
            raise OSError(errno.EIO, f"injected {name} failure")

    def write(self, fd: int, data: BytesLike) -> int:
        self._hit("write")
        return super().write(fd, data)

    def fdatasync(self, fd: int) -> None:
        self._hit("fdatasync")
        super().fdatasync(fd)


class FailableHelper(SyncHelper):
    """The real helper process; ``failing`` makes its answers an injected EIO instead."""

    failing = False

    async def receive(self) -> None:
        await super().receive()
        if self.failing:
            raise OSError(errno.EIO, "injected fdatasync failure in the helper")


class PatientHelper(SyncHelper):
    """The real helper process, whose answer is read only once every other task is
    blocked: whoever was runnable while the fdatasync flew has appended and joined the
    next round by then. (When the helper's answer arrives depends on the machine's
    load, and with it how the records split into rounds.)"""

    async def receive(self) -> None:
        await trio.testing.wait_all_tasks_blocked()
        await super().receive()


@pytest.fixture
def helper() -> Iterator[FailableHelper]:
    h = FailableHelper.start()
    yield h  # type: ignore[misc]
    h.close()


@pytest.fixture
def patient_helper() -> Iterator[PatientHelper]:
    h = PatientHelper.start()
    yield h  # type: ignore[misc]
    h.close()


def committer_for(log: SegmentedLog, where: str, helper: SyncHelper) -> GroupCommitter:
    """An ALWAYS committer syncing every round inline, or every round in ``helper``."""
    if where == "inline":
        return GroupCommitter(log, FsyncPolicy.ALWAYS)
    return GroupCommitter(log, FsyncPolicy.ALWAYS, helper=helper, helper_min_bytes=0)


REC = encode_record(3, b"x" * 40)


def open_log(tmp_path: Path) -> tuple[SegmentedLog, CountingIO]:
    io = CountingIO()
    log = SegmentedLog.open(tmp_path, io=io)
    io.calls.clear()
    return log, io


def count_records(path: Path) -> int:
    n = 0

    def apply(t: int, p: bytes) -> None:
        nonlocal n
        n += 1

    replay(path, apply)
    return n


@pytest.mark.parametrize("where", ["inline", "helper"])
async def test_many_waiters_share_few_fsyncs(tmp_path: Path, where: str,
                                             patient_helper: SyncHelper) -> None:
    """200 clients append and wait 5 times each: 5 generations of 200 records, and at
    most two rounds per generation (plus ``aclose``'s), where one per record would be
    1000.

    In the helper, a generation's first waiter launches a flight at once, covering only
    its own record; the other 199, all woken in the same scheduler batch, append while it
    flies and share the next one: two rounds. Inline, the first waiter leads a round and
    yields before syncing, so the other 199 join it: one round, or two when trio's
    randomized batch order runs the leader first (it then syncs its own record alone, and
    the others join its next round). No real time decides either count (see
    PatientHelper).
    """
    log, io = open_log(tmp_path)
    committer = committer_for(log, where, patient_helper)
    done: list[int] = []

    async def client(rounds: int) -> None:
        for _ in range(rounds):
            lsn = log.append(REC)
            await committer.wait_durable(lsn)
            assert log.synced_lsn >= lsn
            done.append(lsn)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        async with trio.open_nursery() as clients:
            for _ in range(200):
                clients.start_soon(client, 5)
        await committer.aclose()
    assert len(done) == 1000
    assert committer.syncs <= 2 * 5 + 1
    if where == "inline":
        assert 1 <= io.calls["fdatasync"] <= committer.syncs
    else:
        assert io.calls["fdatasync"] == 0  # every round went to the helper
    log.close()
    assert count_records(tmp_path) == 1000


async def test_records_appended_during_a_helper_sync_wait_for_the_next(
        tmp_path: Path, helper: SyncHelper) -> None:
    log, io = open_log(tmp_path)
    committer = committer_for(log, "helper", helper)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        first = log.append(REC)
        nursery.start_soon(committer.wait_durable, first)
        await trio.testing.wait_all_tasks_blocked()  # the round waits for the helper now
        assert committer.syncs == 0
        second = log.append(REC)  # not covered by that round: the next one must run
        with trio.fail_after(10):
            await committer.wait_durable(second)
        assert log.synced_lsn >= second and committer.syncs == 2
        assert io.calls["fdatasync"] == 0
        await committer.aclose()
    log.close()


async def test_only_big_rounds_go_to_the_helper(tmp_path: Path, helper: SyncHelper) -> None:
    log, io = open_log(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.ALWAYS, helper=helper, helper_min_bytes=4096)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        small = log.append(REC)
        assert not committer.syncs_elsewhere(small)
        await committer.wait_durable(small)
        assert io.calls["fdatasync"] == 1  # inline
        assert not committer.syncs_elsewhere(small)  # durable already
        for _ in range(4096 // len(REC) + 1):
            big = log.append(REC)
        assert committer.syncs_elsewhere(big)
        await committer.wait_durable(big)
        assert io.calls["fdatasync"] == 1 and log.synced_lsn == big  # in the helper
        await committer.aclose()
    log.close()


async def test_a_helper_that_is_gone_leaves_syncing_to_the_event_loop(
        tmp_path: Path, helper: SyncHelper, caplog: pytest.LogCaptureFixture) -> None:
    log, io = open_log(tmp_path)
    committer = committer_for(log, "helper", helper)
    os.kill(helper.pid, signal.SIGKILL)  # our own child, by its PID
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        lsn = log.append(REC)
        with trio.fail_after(10):
            await committer.wait_durable(lsn)
        assert log.synced_lsn == lsn and not log.failed
        assert io.calls["fdatasync"] == 1 and helper.gone
        assert "sync helper is gone" in caplog.text
        lsn = log.append(REC)
        assert not committer.syncs_elsewhere(lsn)
        await committer.wait_durable(lsn)
        assert io.calls["fdatasync"] == 2
        await committer.aclose()
    log.close()


async def test_durable_lsns_return_at_once(tmp_path: Path) -> None:
    log, io = open_log(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.ALWAYS)
    # no committer task running: an already-durable LSN must not wait for one
    await committer.wait_durable(0)
    log.append(REC)
    log.sync()
    await committer.wait_durable(log.appended_lsn)
    with pytest.raises(ValueError, match="past the end"):
        await committer.wait_durable(log.appended_lsn + 1)
    log.close()


async def test_interval_policy_syncs_on_the_clock(tmp_path: Path,
                                                   autojump_clock: trio.testing.MockClock
                                                   ) -> None:
    log, io = open_log(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.INTERVAL, interval_ms=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        start = trio.current_time()
        lsn = log.append(REC)
        await committer.wait_durable(lsn)
        assert log.written_lsn == lsn and log.synced_lsn == 0
        assert io.calls["fdatasync"] == 0
        await trio.sleep(0.099)
        assert io.calls["fdatasync"] == 0
        await trio.sleep(0.002)
        assert io.calls["fdatasync"] == 1 and log.synced_lsn == lsn
        await trio.sleep(1)  # nothing new: no more syncs
        assert io.calls["fdatasync"] == 1
        log.append(REC)  # appended, not yet written: the tick writes and syncs it
        await trio.sleep(0.1)
        assert io.calls["fdatasync"] == 2 and log.synced_lsn == log.appended_lsn
        assert trio.current_time() - start < 1.3
        await committer.aclose()
    log.close()


async def test_never_policy_writes_but_only_syncs_on_close(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    log, io = open_log(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.NEVER)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for _ in range(10):
            await committer.wait_durable(log.append(REC))
            await trio.sleep(1)
        assert log.written_lsn == log.appended_lsn and log.synced_lsn == 0
        assert io.calls["fdatasync"] == 0
        await committer.aclose()  # run() returns, so the nursery exits
    assert io.calls["fdatasync"] == 1 and log.synced_lsn == log.appended_lsn
    log.close()


@pytest.mark.parametrize("where", ["inline", "helper"])
async def test_failed_fsync_fails_every_waiter_of_the_round(
        tmp_path: Path, where: str, helper: FailableHelper) -> None:
    log, io = open_log(tmp_path)
    committer = committer_for(log, where, helper)
    outcomes: list[str] = []

    async def client() -> None:
        try:
            await committer.wait_durable(log.append(REC))
            outcomes.append("ok")
        except LogFailedError:
            outcomes.append("error")

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        await committer.wait_durable(log.append(REC))
        good = log.synced_lsn
        io.fail.add("fdatasync")
        helper.failing = True
        async with trio.open_nursery() as clients:
            for _ in range(50):
                clients.start_soon(client)
        assert outcomes == ["error"] * 50
        assert log.failed and log.synced_lsn == good
        io.fail.clear()
        with pytest.raises(LogFailedError):
            log.append(REC)
        with pytest.raises(LogFailedError):
            await committer.wait_durable(log.appended_lsn)
        await committer.aclose()  # already failed: nothing more to report
    assert log.synced_lsn == good
    log.close()


async def test_failed_write_fails_interval_waiters(tmp_path: Path,
                                                   autojump_clock: trio.testing.MockClock
                                                   ) -> None:
    log, io = open_log(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.INTERVAL)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        io.fail.add("write")
        with pytest.raises(LogFailedError):
            await committer.wait_durable(log.append(REC))
        await trio.sleep(1)
        assert io.calls["fdatasync"] == 0 and log.synced_lsn == 0
        await committer.aclose()
    log.close()


async def test_failed_interval_sync_fails_later_waiters(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    log, io = open_log(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.INTERVAL)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        lsn = log.append(REC)
        await committer.wait_durable(lsn)
        io.fail.add("fdatasync")
        await trio.sleep(0.2)
        assert log.failed and log.synced_lsn == 0
        # written but never synced, and the log failed: not confirmable any more
        with pytest.raises(LogFailedError):
            await committer.wait_durable(lsn)
        await committer.aclose()
    log.close()


async def test_aclose_syncs_and_reports_a_final_failure(tmp_path: Path) -> None:
    log, io = open_log(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.ALWAYS)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        log.append(REC)
        io.fail.add("fdatasync")
        with pytest.raises(LogFailedError):
            await committer.aclose()
        await committer.aclose()  # idempotent
    with pytest.raises(LogFailedError):
        await committer.wait_durable(log.appended_lsn)
    log.close()


async def test_waiters_after_close_are_refused(tmp_path: Path) -> None:
    log, io = open_log(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.ALWAYS)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        lsn = log.append(REC)
        await committer.aclose()
        await committer.wait_durable(lsn)  # covered by the final sync
        with pytest.raises(LogFailedError, match="closed"):
            await committer.wait_durable(log.append(REC))
    log.close()


def test_policy_values_and_arguments(tmp_path: Path) -> None:
    assert [p.value for p in FsyncPolicy] == ["always", "interval", "never"]
    assert FsyncPolicy("interval") is FsyncPolicy.INTERVAL
    log, _ = open_log(tmp_path)
    with pytest.raises(ValueError):
        GroupCommitter(log, FsyncPolicy.INTERVAL, interval_ms=0)
    assert GroupCommitter(log, "never").policy is FsyncPolicy.NEVER  # type: ignore[arg-type]
    log.close()


async def test_a_sole_appenders_round_syncs_at_once(tmp_path: Path) -> None:
    """No scheduler pass before the sync: a task made runnable just before the round
    starts cannot join it. (Without the mark, the leader yields first: see
    test_many_waiters_share_few_fsyncs.)"""
    log, io = open_log(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.ALWAYS)
    committer.sole_appender = True
    synced_with: list[int] = []

    async def another_appender() -> None:
        await committer.wait_durable(log.append(REC))

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        lsn = log.append(REC)
        nursery.start_soon(another_appender)  # runnable when the round's leader starts
        await committer.wait_durable(lsn)
        synced_with.append(log.synced_lsn)
        await trio.testing.wait_all_tasks_blocked()
        await committer.aclose()
    assert synced_with == [lsn]  # the other record was not there yet
    assert io.calls["fdatasync"] == 2 and log.synced_lsn == log.appended_lsn == 2 * lsn
    log.close()


async def test_a_sole_appenders_round_gathers_when_told(tmp_path: Path) -> None:
    """``gather=True`` (the timer loop, having woken consumers): the leader yields first
    even for a sole appender, so the task it made runnable joins its one fdatasync."""
    log, io = open_log(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.ALWAYS)
    committer.sole_appender = True
    synced_with: list[int] = []

    async def another_appender() -> None:
        await committer.wait_durable(log.append(REC))
        synced_with.append(log.synced_lsn)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        lsn = log.append(REC)
        nursery.start_soon(another_appender)  # runnable when the round's leader starts
        await committer.wait_durable(lsn, gather=True)
        synced_with.append(log.synced_lsn)
        await trio.testing.wait_all_tasks_blocked()
        await committer.aclose()
    assert synced_with == [2 * lsn, 2 * lsn]  # one round covered both records
    assert io.calls["fdatasync"] == 1  # and the close found nothing left to sync
    log.close()


# -- rounds the helper syncs, told to the FileIO (power-cut journal) ------------------------


def _outside_syncs(journal: Path) -> list[dict[str, object]]:
    return [ln for ln in read_journal(journal) if ln["op"] == "sync" and ln["call"] == "elsewhere"]


def test_only_a_fileio_that_hears_of_outside_syncs_may_share_the_helper() -> None:
    assert FileIO.reports_outside_syncs is False
    assert JournalingFileIO.reports_outside_syncs is True
    FileIO().synced_elsewhere(-1, 0, 0.0)  # nothing to do, not even to look at the fd


async def test_a_round_the_helper_synced_is_journaled_and_survives_a_power_cut(
        tmp_path: Path, helper: SyncHelper) -> None:
    journal = tmp_path / "journal"
    io = JournalingFileIO(journal)
    wal = tmp_path / "data" / "wal"
    log = SegmentedLog.open(wal, io=io)
    committer = committer_for(log, "helper", helper)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for _ in range(3):
            log.append(REC)
        before = time.monotonic()
        await committer.wait_durable(log.appended_lsn)
        assert log.synced_lsn == log.appended_lsn and committer.syncs == 1
        [line] = _outside_syncs(journal)  # and no fdatasync of ours: the helper made it
        segment = wal / log.active_segment
        assert line["path"] == str(segment) and line["ino"] == segment.stat().st_ino
        assert line["size"] == segment.stat().st_size == SEGMENT_HEADER_SIZE + 3 * len(REC)
        assert line["t0"] >= before and line["t0"] <= line["t"]

        cut = apply_power_cut(tmp_path / "data", journal, random.Random(0), "drop")
        assert cut.helper_log_syncs == 1 and cut.bytes_dropped == 0 and cut.last_log_sync == line["t0"]
        assert count_records(wal) == 3
        await committer.aclose()
    log.close()


async def test_a_round_whose_segment_rolled_meanwhile_is_not_reported(
        tmp_path: Path, helper: SyncHelper) -> None:
    """The roll fdatasyncs the segment it seals itself (journaled as ours); the helper's
    ticket names a descriptor the log has closed, which may be another file's by now."""
    journal = tmp_path / "journal"
    io = JournalingFileIO(journal)
    log = SegmentedLog.open(tmp_path, segment_bytes=SEGMENT_HEADER_SIZE + 2 * len(REC), io=io)
    log.append(REC)
    ticket = log.begin_sync()
    assert ticket is not None
    helper.send(ticket.fd)
    first = tmp_path / log.active_segment
    log.append(REC)
    log.append(REC)
    log.write()  # the third record does not fit: the segment is sealed, a new one opened
    assert log.active_segment != first.name
    with trio.fail_after(10):
        await helper.receive()
    log.end_sync(ticket, None)
    assert log.synced_lsn == 2 * len(REC)  # sealed and synced by the roll
    assert _outside_syncs(journal) == []
    syncs = [ln for ln in read_journal(journal) if ln["op"] == "sync" and ln["path"] == str(first)]
    assert max(ln["size"] for ln in syncs) == SEGMENT_HEADER_SIZE + 2 * len(REC)
    log.close()
