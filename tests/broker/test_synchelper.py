"""The sync helper process: it fdatasyncs what it is handed, reports errors, and never
outlives the broker."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from broker.wal.synchelper import SyncHelper, SyncHelperGone
from tools.procs import BrokerProcess

#: How long a test waits, at most, for a real process to start or exit.
PROCESS_WAIT_S = 10.0


async def sync_in(helper: SyncHelper, fd: int) -> None:
    """One request to the helper: ``send``, then ``receive``."""
    helper.send(fd)
    await helper.receive()


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + PROCESS_WAIT_S
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)  # a real process is being waited for (bounded poll)
    return True


async def test_it_syncs_a_file_and_goes_on_syncing(tmp_path: Path) -> None:
    helper = SyncHelper.start()
    try:
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
        try:
            for i in range(3):
                os.write(fd, b"x" * 1000)
                with trio.fail_after(PROCESS_WAIT_S):
                    await sync_in(helper, fd)
        finally:
            os.close(fd)
        assert not helper.gone
    finally:
        helper.close()
    assert not alive(helper.pid)


async def test_a_failed_fdatasync_is_its_errno() -> None:
    helper = SyncHelper.start()
    r, w = os.pipe()  # fdatasync on a pipe fails with EINVAL
    try:
        with pytest.raises(OSError) as info:
            await sync_in(helper, w)
        assert info.value.errno == errno.EINVAL and not isinstance(info.value, SyncHelperGone)
        assert not helper.gone  # a failed sync is news about the file, not the helper
    finally:
        os.close(r)
        os.close(w)
        helper.close()


async def test_a_killed_helper_is_gone_for_good(tmp_path: Path) -> None:
    helper = SyncHelper.start()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.kill(helper.pid, signal.SIGKILL)  # our own child, by its PID
        with pytest.raises(SyncHelperGone):
            with trio.fail_after(PROCESS_WAIT_S):
                await sync_in(helper, fd)
        assert helper.gone
        with pytest.raises(SyncHelperGone):
            await sync_in(helper, fd)
    finally:
        os.close(fd)
        helper.close()


def test_the_helper_exits_when_its_broker_is_killed(tmp_path: Path) -> None:
    owner = textwrap.dedent("""
        import sys, time
        from broker.wal.synchelper import SyncHelper
        print(SyncHelper.start().pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None
        helper_pid = int(proc.stdout.readline())
        assert alive(helper_pid)
    finally:
        proc.kill()  # the process we started, by its handle
        proc.wait()
    assert wait_gone(helper_pid), "the sync helper outlived the process that started it"


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_a_sigkilled_broker_leaves_no_sync_helper(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", fsync="always") as broker:
        assert broker.pid is not None
        helpers = [p for p in children(broker.pid)
                   if "synchelper" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(helpers) == 1
        broker.kill()  # SIGKILL, the broker process this test started
    assert wait_gone(helpers[0]), "the sync helper outlived its SIGKILLed broker"
