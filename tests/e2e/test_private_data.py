"""Private data: the data directory and everything the broker makes in it are 0700
(directories) and 0600 (files), whatever the umask; a looser directory is tightened at
start-up and the change logged.

Brokers here are real: in this process on real sockets (small segments and checkpoints,
so the log spans several segments and snapshots), and ``brokerd`` as a child process.
"""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import pytest
import trio

from broker.config import BrokerConfig
from broker.mutations import Publish, QueueCreate
from broker.recovery import DAMAGED_SUFFIX, recover
from broker.server import Broker
from broker.wal import FileIO, SegmentedLog, encode_record
from broker.wal.checkpoint import snapshot_tmp_path, write_snapshot_tmp
from client import SyncClient

from ..broker_process import BrokerProcess
from .rawclient import RawClient

#: Umasks a broker may be started under: the usual one and none at all.
UMASKS = [0o022, 0o000]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """This process's umask (inherited by the children it starts) set to ``mask``."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """The permission bits of ``root`` and of every path under it, by relative path."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_private(root: Path) -> dict[str, int]:
    found = modes(root)
    wrong = {p: oct(m) for p, m in found.items()
             if m != (0o700 if (root / p).is_dir() else 0o600)}
    assert wrong == {}, f"not private under {root}: {wrong}"
    return found


async def _checkpoint_done(broker: Broker) -> None:
    """Wait until no checkpoint runs; its snapshot is written by a forked child, a real
    process: poll, bounded."""
    checkpointer = broker._checkpointer
    assert checkpointer is not None
    with trio.fail_after(60):
        while checkpointer.reclaiming:
            await trio.sleep(0.005)


async def _run_broker(data: Path) -> None:
    """Publish across several segments, checkpoint twice, shut down gracefully."""
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=data,
                                 segment_bytes=64 * 1024, checkpoint_bytes=128 * 1024))
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)
        host, port = broker.addr.rsplit(":", 1)
        c = await RawClient.open((host, int(port)))
        await c.call("queue_create", {"queue": "q"})
        await c.call("publish", {"queue": "q", "messages": [[b"kept"]]})
        for _ in range(30):  # ~400 KB of log, a checkpoint due every 128 KiB of it
            await c.call("publish", {"queue": "q", "messages": [[os.urandom(128)]] * 100})
            got = (await c.call("consume", {"queue": "q", "max": 100})).result["messages"]
            await c.call("ack", {"queue": "q", "ids": [m[0] for m in got if m[1] != b"kept"]})
            await _checkpoint_done(broker)
        assert broker._checkpointer is not None and broker._checkpointer.checkpoints >= 2
        await c.aclose()
        broker.shutdown()  # the final checkpoint; serve returns


@pytest.mark.parametrize("mask", UMASKS, ids=lambda m: f"umask-{m:03o}")
async def test_everything_a_broker_creates_is_private(tmp_path: Path, mask: int) -> None:
    data = tmp_path / "made" / "data"  # a parent the broker creates too
    with umask(mask):
        await _run_broker(data)
        await _run_broker(data)  # a restart: recovery, the log continued, more snapshots
    found = assert_private(tmp_path / "made")
    names = [p for p in found if p.startswith("data/wal/")]
    assert any(p.endswith(".wal") for p in names) and any(p.endswith(".snap") for p in names)


@pytest.mark.parametrize("mask", UMASKS, ids=lambda m: f"umask-{m:03o}")
def test_brokerd_creates_everything_private(tmp_path: Path, mask: int) -> None:
    data = tmp_path / "data"
    with umask(mask):
        proc = BrokerProcess(data).start()  # the child inherits the umask
    try:
        with SyncClient(proc.addr) as lg:
            lg.create_queue("q")
            lg.publish_batch("q", [b"secret %d" % i for i in range(1000)])
        assert proc.stop() == 0  # SIGTERM: a final checkpoint
    finally:
        proc.kill()
    found = assert_private(data)
    assert any(p.endswith(".snap") for p in found)


def test_a_leftover_temp_file_is_made_private_when_reused(tmp_path: Path) -> None:
    """A snapshot temp file a crash left behind (here 0644) is truncated and reused at 0600."""
    wal = tmp_path / "wal"
    wal.mkdir(mode=0o700)
    leftover = Path(snapshot_tmp_path(str(wal), 42))
    leftover.write_bytes(b"old")
    leftover.chmod(0o644)
    with umask(0):
        path = write_snapshot_tmp(FileIO(), str(wal), 42, [])
    assert Path(path) == leftover
    assert stat.S_IMODE(leftover.stat().st_mode) == 0o600


def test_copies_recovery_sets_aside_are_private(tmp_path: Path) -> None:
    """``--recover truncate`` copies a damaged segment aside before cutting it: 0600."""
    wal = tmp_path / "wal"
    pack = msgpack.Packer(use_bin_type=True).pack
    muts = [QueueCreate("q", "fifo", 1, 30_000, 0, None, 10_000)]
    muts += [Publish("q", i, 1_000 + i, [b"body %d" % i]) for i in range(1, 20)]
    with umask(0):
        with SegmentedLog.open(wal) as log:
            for m in muts:
                log.append(encode_record(m.TYPE, pack(m.fields())))
            log.sync()
        (segment,) = wal.glob("*.wal")
        data = bytearray(segment.read_bytes())
        data[len(data) // 2] ^= 0xFF  # damage in the middle of the only segment
        segment.write_bytes(bytes(data))
        got = recover(wal, mode="truncate")
    (gone,) = got.discarded
    assert gone.moved_to.endswith(DAMAGED_SUFFIX)
    assert_private(wal)


async def test_a_looser_data_directory_is_tightened_at_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    await _run_broker(data)
    # As an older version left it: world-readable directories and files.
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (data / "notes.txt").write_text("not the broker's")  # other files in DATA stay as they are
    (data / "notes.txt").chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="lockgate.datadir"):
        await _run_broker(data)
    found = modes(data)
    assert found.pop("notes.txt") == 0o640
    assert {p: oct(m) for p, m in found.items() if m != (0o700 if (data / p).is_dir() else 0o600)} == {}
    text = caplog.text
    assert f"directory {data} was mode 0755" in text and f"directory {data / 'wal'} was mode 0755" in text
    assert "readable by other users; made them private" in text


async def test_a_private_data_directory_is_left_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    await _run_broker(data)
    data.chmod(0o500 | 0o200)  # owner-only, as tight as it gets for a writable directory
    with caplog.at_level(logging.WARNING, logger="lockgate.datadir"):
        await _run_broker(data)
    assert caplog.records == []
    assert_private(data)
