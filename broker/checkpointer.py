"""Checkpoints: snapshot the state in a forked child, then reclaim WAL segments.

The child inherits a copy-on-write image of the state at one LSN and writes it to a
``.snap.tmp`` file while the broker keeps serving; the parent publishes the snapshot
only once the log is durable up to that LSN, then deletes what it made obsolete (see
``broker.wal.checkpoint``). A checkpoint is due once the log has grown past the last
snapshot by ``max(min_bytes, bytes of live message bodies)``, which keeps the WAL
directory near twice the live data plus a segment or two.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import time
import traceback

import trio

from .state import BrokerState
from .wal import FileIO, GroupCommitter, SegmentedLog
from .wal.checkpoint import publish_snapshot, remove_obsolete, write_snapshot_tmp

log = logging.getLogger("lockgate.checkpoint")

#: Scheduling niceness of the snapshot child: low enough to leave the live path its CPU,
#: high enough (unlike SCHED_IDLE) to finish under sustained full load.
CHILD_NICENESS = 10


class Checkpointer:
    """Decides when to checkpoint and takes checkpoints, one at a time."""

    def __init__(self, state: BrokerState, wal: SegmentedLog, committer: GroupCommitter,
                 directory: str, io: FileIO, *, min_bytes: int, snapshot_lsn: int) -> None:
        self._state = state
        self._wal = wal
        self._committer = committer
        self._dir = directory
        self._io = io
        self._min_bytes = min_bytes
        self.snapshot_lsn = snapshot_lsn
        #: ``poke`` looks at the live data only once the log passes this LSN.
        self.check_at = snapshot_lsn + min_bytes
        self._wanted = trio.Event()
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        self.checkpoints = 0

    def poke(self) -> None:
        """Called when the log passed ``check_at``: start a checkpoint if one is due."""
        live = sum(q.bytes for q in self._state.queues.values())
        self.check_at = self.snapshot_lsn + max(self._min_bytes, live)
        if self._wal.appended_lsn >= self.check_at:
            self.check_at = 2**63  # no more pokes until this checkpoint is done
            self._wanted.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take checkpoints as ``poke`` asks, until ``stop``."""
        task_status.started()
        try:
            with self._scope:
                while True:
                    await self._wanted.wait()
                    self._wanted = trio.Event()
                    try:
                        await self.checkpoint()
                    except Exception:
                        log.exception("checkpoint failed; the log is kept whole and it will be tried again")
                        self.check_at = self._wal.appended_lsn + self._min_bytes
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Stop taking checkpoints; a snapshot being written is abandoned and removed."""
        self._scope.cancel()
        await self._stopped.wait()

    async def checkpoint(self) -> None:
        """Snapshot the state as of now in a child process and publish it."""
        self._wal.roll()  # the snapshot's LSN starts a segment: all before it can go
        lsn = self._wal.appended_lsn
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: write the snapshot from its copy of memory, then leave
            status = 1
            try:
                # Yield the CPU to the broker's live path; still progress when it is busy.
                os.nice(CHILD_NICENESS)
                gc.disable()
                write_snapshot_tmp(self._io, self._dir, lsn, self._state.export_records())
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        try:
            status = await _wait_child(pid)
        except BaseException:  # cancelled (shutdown): the child must not outlive us
            _kill_child(pid)
            _remove(self._io, os.path.join(self._dir, f"{lsn:020d}.snap.tmp"))
            raise
        if status != 0:
            raise RuntimeError(f"snapshot child exited with status {status}")
        await self._committer.wait_durable(lsn)
        if self._wal.synced_lsn < lsn:
            # Under interval/never, "durable" above only meant written to the OS; the
            # snapshot must never be published ahead of what the log has fsynced.
            self._wal.sync()
        self._publish(lsn, started)

    def checkpoint_inline(self) -> None:
        """Snapshot in this process (at shutdown, when nothing else runs)."""
        lsn = self._wal.appended_lsn
        if lsn == self.snapshot_lsn:
            return
        started = time.perf_counter()
        self._wal.sync()
        write_snapshot_tmp(self._io, self._dir, lsn, self._state.export_records())
        self._publish(lsn, started)

    def _publish(self, lsn: int, started: float) -> None:
        tmp = os.path.join(self._dir, f"{lsn:020d}.snap.tmp")
        publish_snapshot(self._io, self._dir, tmp)
        removed = remove_obsolete(self._io, self._dir, lsn)
        self.snapshot_lsn = lsn
        self.check_at = lsn + self._min_bytes
        self.checkpoints += 1
        log.info("checkpoint at LSN %d in %.3f s; removed %d files", lsn,
                 time.perf_counter() - started, len(removed))


def _kill_child(pid: int) -> None:
    """SIGKILL our own snapshot child and reap it."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _remove(io: FileIO, path: str) -> None:
    try:
        io.unlink(path)
    except FileNotFoundError:
        pass


async def _wait_child(pid: int) -> int:
    """Wait for a child process without blocking the event loop; its exit status."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
    else:  # no pidfd: poll
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            await trio.sleep(0.01)
    return os.waitstatus_to_exitcode(status)
