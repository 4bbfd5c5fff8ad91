"""A failed fdatasync: nothing is confirmed, the client gets STORAGE_ERROR, the broker stays up."""
from __future__ import annotations

import errno
from pathlib import Path

import trio

from broker.config import BrokerConfig
from broker.server import Broker
from broker.wal import FileIO
from protocol import Error, ErrorCode, Reply

from .rawclient import RawClient


class FailingSync(FileIO):
    """Real files; fdatasync fails with EIO once ``broken`` is set."""

    broken = False

    def fdatasync(self, fd: int) -> None:
        if self.broken:
            raise OSError(errno.EIO, "injected I/O error")
        super().fdatasync(fd)


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
