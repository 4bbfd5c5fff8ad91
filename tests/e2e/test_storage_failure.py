"""A failed fdatasync: nothing is confirmed, the client gets STORAGE_ERROR, the broker stays up."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import trio

from broker.config import BrokerConfig
from broker.server import Broker
from broker.wal import FileIO
from protocol import Error, ErrorCode, Reply

from .rawclient import RawClient


class FailingSync(FileIO):
    """Real files; fsync and fdatasync fail with EIO once ``broken`` is set (so the log
    cannot be recovered either)."""

    broken = False

    def fdatasync(self, fd: int) -> None:
        if self.broken:
            raise OSError(errno.EIO, "injected I/O error")
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        if self.broken:
            raise OSError(errno.EIO, "injected I/O error")
        super().fsync(fd)


async def test_failed_fsync_is_never_confirmed(nursery: trio.Nursery, tmp_path: Path) -> None:
    io = FailingSync()
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "d"), io=io)
    await nursery.start(broker.serve)
    host, port = broker.addr.rsplit(":", 1)
    c = await RawClient.open((host, int(port)))
    assert isinstance(await c.call("queue_create", {"queue": "q"}), Reply)
    assert isinstance(await c.call("publish", {"queue": "q", "messages": [[b"durable"]]}), Reply)

    io.broken = True
    err = await c.call("publish", {"queue": "q", "messages": [[b"lost"]]})
    assert isinstance(err, Error) and err.code == ErrorCode.STORAGE_ERROR
    err = await c.call("publish", {"queue": "q", "messages": [[b"after"]]})
    assert isinstance(err, Error) and err.code == ErrorCode.STORAGE_ERROR

    # The broker and the connection are still up; ops that reveal no queue state work,
    # and nothing reveals the in-memory state the log could not keep.
    assert isinstance(await c.call("ping", {}), Reply)
    other = await RawClient.open((host, int(port)))
    stats = await other.call("queue_stats", {"queue": "q"})
    assert isinstance(stats, Error) and stats.code == ErrorCode.STORAGE_ERROR


class FailingWrite(FileIO):
    """Real files; write fails with EIO once ``broken`` is set."""

    broken = False

    def write(self, fd: int, data: bytes) -> int:  # type: ignore[override]
        if self.broken:
            raise OSError(errno.EIO, "injected I/O error")
        return super().write(fd, data)


async def test_no_reply_reveals_state_the_log_lost(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Connection B must not be told "gone" about a delete that never became durable."""
    io = FailingWrite()
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "d"), io=io)
    await nursery.start(broker.serve)
    host, port = broker.addr.rsplit(":", 1)
    a = await RawClient.open((host, int(port)))
    b = await RawClient.open((host, int(port)))
    await a.call("queue_create", {"queue": "q"})
    await a.call("publish", {"queue": "q", "messages": [[b"m"]]})
    [m] = (await a.call("consume", {"queue": "q"})).result["messages"]

    io.broken = True
    err = await a.call("ack", {"queue": "q", "ids": [m[0]]})
    assert isinstance(err, Error) and err.code == ErrorCode.STORAGE_ERROR
    # B asks about the same message: the in-memory delete is not durable, so no answer
    # that depends on it may be given.
    for op, args in (("ack", {"queue": "q", "ids": [m[0]]}), ("queue_stats", {"queue": "q"})):
        err = await b.call(op, args)
        assert isinstance(err, Error) and err.code == ErrorCode.STORAGE_ERROR, (op, err)


class FlakySync(FileIO):
    """Real files; the next ``failures`` fdatasyncs fail with EIO."""

    failures = 0

    def fdatasync(self, fd: int) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise OSError(errno.EIO, "injected I/O error")
        super().fdatasync(fd)


async def serve(nursery: trio.Nursery, data: Path, io: FileIO | None = None) -> tuple[Broker, RawClient]:
    """A broker on ``data`` in ``nursery``, and a client connected to it."""
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=data), io=io)
    await nursery.start(broker.serve)
    host, port = broker.addr.rsplit(":", 1)
    return broker, await RawClient.open((host, int(port)))


async def publish_until_confirmed(c: RawClient, body: bytes) -> Reply:
    """The broker recovers its log in a child process: poll for it, bounded."""
    with trio.fail_after(20):
        while True:
            r = await c.call("publish", {"queue": "q", "messages": [[body]]})
            if isinstance(r, Reply):
                return r
            assert r.code == ErrorCode.STORAGE_ERROR, r
            await trio.sleep(0.01)


async def test_a_failed_fsync_is_survived_without_a_restart(nursery: trio.Nursery, tmp_path: Path) -> None:
    data = tmp_path / "d"
    io = FlakySync()
    async with trio.open_nursery() as first:
        broker, c = await serve(first, data, io)
        await c.call("queue_create", {"queue": "q"})
        assert isinstance(await c.call("publish", {"queue": "q", "messages": [[b"before"]]}), Reply)
        suspect = broker._log.active_segment  # type: ignore[union-attr]

        io.failures = 1
        err = await c.call("publish", {"queue": "q", "messages": [[b"unknown"]]})
        assert isinstance(err, Error) and err.code == ErrorCode.STORAGE_ERROR
        # The broker leaves the suspect segment for a new one, by itself.
        r = await publish_until_confirmed(c, b"after")
        assert broker._log.active_segment != suspect  # type: ignore[union-attr]
        assert suspect not in os.listdir(data / "wal")
        consumed = await c.call("consume", {"queue": "q", "max": 10})
        bodies = [m[1] for m in consumed.result["messages"]]
        # The publish answered STORAGE_ERROR was applied in memory: its outcome was
        # unknown, and the recovery made it durable. Nothing confirmed is missing.
        assert bodies == [b"before", b"unknown", b"after"]
        await c.call("ack", {"queue": "q", "ids": [consumed.result["messages"][0][0]]})
        broker.shutdown()

    _, c2 = await serve(nursery, data)
    r = await c2.call("consume", {"queue": "q", "max": 10})
    assert [m[1] for m in r.result["messages"]] == [b"unknown", b"after"]


class NoNewSegment(FileIO):
    """Real files; once ``broken``, the next write fails with EIO (so the record never
    reaches the file) and no new segment can be renamed into place."""

    broken = False
    write_failures = 0

    def write(self, fd: int, data: bytes) -> int:  # type: ignore[override]
        if self.write_failures > 0:
            self.write_failures -= 1
            raise OSError(errno.EIO, "injected I/O error")
        return super().write(fd, data)

    def rename(self, src: str, dst: str) -> None:
        if self.broken and dst.endswith(".wal"):
            raise OSError(errno.EIO, "injected I/O error")
        super().rename(src, dst)


async def test_a_crash_between_the_recovery_snapshot_and_the_new_segment_loses_nothing(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    data = tmp_path / "d"
    io = NoNewSegment()
    with trio.CancelScope() as crash:
        async with trio.open_nursery() as first:
            broker, c = await serve(first, data, io)
            await c.call("queue_create", {"queue": "q"})
            assert isinstance(await c.call("publish", {"queue": "q", "messages": [[b"a"]]}), Reply)
            io.write_failures = 1
            io.broken = True
            err = await c.call("publish", {"queue": "q", "messages": [[b"b"]]})
            assert isinstance(err, Error) and err.code == ErrorCode.STORAGE_ERROR
            # The recovery snapshot is published; the new segment never comes.
            with trio.fail_after(20):
                while not [n for n in os.listdir(data / "wal") if n.endswith(".snap")]:
                    await trio.sleep(0.01)  # a real child process writes it
            assert broker._log.failed  # type: ignore[union-attr]
            crash.cancel()  # no shutdown, no final checkpoint: as if killed

    # The log ends before the newest snapshot: start-up continues at the snapshot.
    _, c2 = await serve(nursery, data)
    r = await c2.call("consume", {"queue": "q", "max": 10})
    assert [m[1] for m in r.result["messages"]] == [b"a", b"b"]
    assert isinstance(await c2.call("publish", {"queue": "q", "messages": [[b"c"]]}), Reply)
