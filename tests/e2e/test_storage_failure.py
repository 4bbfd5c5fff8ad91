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

    # The broker and the connection are still up for requests that need no WAL.
    assert isinstance(await c.call("ping", {}), Reply)
    other = await RawClient.open((host, int(port)))
    stats = await other.call("queue_stats", {"queue": "q"})
    assert isinstance(stats, Reply)
