"""Replies: a connection's rounds go out in order, each only once the log covers it;
flying rounds are sent by the reply task, so the connection can read on."""
from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.membudget import GIB, MemoryBudget
from broker.replies import Replies, Round
from broker.wal import SegmentedLog, LogFailedError, encode_record
from broker.wal.commit import FsyncPolicy, GroupCommitter
from broker.wal.synchelper import SyncHelper
from protocol import Connection, Encoder, Error, ErrorCode

SMALL = encode_record(3, b"s" * 40)
BIG = encode_record(3, b"b" * 9000)
HELPER_MIN = 8192


class RecordingStream(trio.abc.SendStream):
    """A send stream that notes, for each write, what the log had synced then and which
    task wrote it."""

    def __init__(self, log: SegmentedLog) -> None:
        self.log = log
        self.writes: list[tuple[bytes, int, trio.lowlevel.Task]] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append((bytes(data), self.log.synced_lsn, trio.lowlevel.current_task()))
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@pytest.fixture
def helper() -> Iterator[SyncHelper]:
    h = SyncHelper.start()
    yield h
    h.close()


def one_round(log: SegmentedLog, enc: Encoder, rid: int, record: bytes) -> Round:
    lsn = log.append(record)
    return Round([enc.reply(rid, {"n": rid})], [(0, rid)], lsn)


def reply_ids(data: bytes) -> list[int]:
    conn = Connection("client")
    conn.receive_data(data)
    return [f.id for f in conn.frames()]


async def test_rounds_go_out_in_order_each_once_durable(tmp_path: Path, helper: SyncHelper) -> None:
    log = SegmentedLog.open(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.ALWAYS, helper=helper, helper_min_bytes=HELPER_MIN)
    stream = RecordingStream(log)
    enc = Encoder()
    replies = Replies(stream, committer, enc, lambda: None, MemoryBudget(GIB).account())
    kinds = ["small", "big", "small", "small", "big", "big", "small", "big", "small"]
    lsns: dict[int, int] = {}
    flew: list[bool] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        nursery.start_soon(replies.run)
        me = trio.lowlevel.current_task()
        for rid, kind in enumerate(kinds, start=1):
            round_ = one_round(log, enc, rid, BIG if kind == "big" else SMALL)
            lsns[rid] = round_.lsn
            flew.append(committer.syncs_elsewhere(round_.lsn))
            await replies.send(round_)
        replies.close()
        with trio.fail_after(10):
            while len(stream.writes) < len(kinds):
                await trio.sleep(0.001)  # the helper is a real process
        await committer.aclose()
    assert flew[:2] == [False, True]  # a small round alone does not fly; a big one does
    sent = [rid for data, _, _ in stream.writes for rid in reply_ids(data)]
    assert sent == list(range(1, len(kinds) + 1))
    for (data, synced, task), rid in zip(stream.writes, sent):
        assert synced >= lsns[rid], f"round {rid} went out before the log covered it"
    by_caller = [rid for (_, _, task), rid in zip(stream.writes, sent) if task is me]
    assert by_caller == [1]  # the first small round; every round after a big one waits its turn
    log.close()


async def test_a_round_of_no_logged_request_waits_for_nothing(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.ALWAYS)
    stream = RecordingStream(log)
    enc = Encoder()
    replies = Replies(stream, committer, enc, lambda: None, MemoryBudget(GIB).account())
    log.append(SMALL)  # appended by someone else, not yet durable
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        await replies.send(Round([enc.reply(7, {})], [], log.appended_lsn))
        assert reply_ids(stream.writes[0][0]) == [7] and stream.writes[0][1] == 0
        await committer.aclose()
    log.close()


async def test_a_failed_log_turns_a_rounds_replies_into_storage_errors(
        tmp_path: Path, helper: SyncHelper) -> None:
    log = SegmentedLog.open(tmp_path)
    committer = GroupCommitter(log, FsyncPolicy.ALWAYS, helper=helper, helper_min_bytes=HELPER_MIN)
    stream = RecordingStream(log)
    enc = Encoder()
    failures: list[int] = []
    replies = Replies(stream, committer, enc, lambda: failures.append(1), MemoryBudget(GIB).account())
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        nursery.start_soon(replies.run)
        lsn = log.append(BIG)
        ticket = log.begin_sync()
        assert ticket is not None
        with pytest.raises(LogFailedError):
            log.end_sync(ticket, OSError(errno.EIO, "injected"))  # as a failed fdatasync does
        stateless = enc.reply(2, {"pong": True})
        await replies.send(Round([enc.reply(1, {"first_id": 1}), stateless], [(0, 1)], lsn))
        replies.close()
        await trio.testing.wait_all_tasks_blocked()  # the failed log answers at once
        await committer.aclose()
    (data, _, _), = stream.writes
    conn = Connection("client")
    conn.receive_data(data)
    first, second = conn.frames()
    assert isinstance(first, Error) and first.id == 1 and first.code is ErrorCode.STORAGE_ERROR
    assert not isinstance(second, Error) and second.id == 2  # not a logged request: as it was
    assert failures == [1]
    log.close()


class SlowStream(RecordingStream):
    """Each write takes a few scheduler passes; notes when writes start and end."""

    def __init__(self, log: SegmentedLog) -> None:
        super().__init__(log)
        self.events: list[tuple[str, bytes]] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.events.append(("start", bytes(data)))
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        self.events.append(("end", bytes(data)))


async def test_writes_never_interleave(tmp_path: Path) -> None:
    log = SegmentedLog.open(tmp_path)
    stream = SlowStream(log)
    replies = Replies(stream, GroupCommitter(log, FsyncPolicy.ALWAYS), Encoder(), lambda: None,
                      MemoryBudget(GIB).account())
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(replies.write, b"frame-%d" % i)
    kinds = [kind for kind, _ in stream.events]
    assert kinds == ["start", "end"] * 5
    starts = [data for kind, data in stream.events if kind == "start"]
    ends = [data for kind, data in stream.events if kind == "end"]
    assert starts == ends and sorted(starts) == [b"frame-%d" % i for i in range(5)]
    log.close()
