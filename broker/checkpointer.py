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
import sys
import time
import traceback
from collections.abc import Callable

import trio

from .admission import Admission
from .state import BrokerState
from .wal import FileIO, GroupCommitter, SegmentedLog, LogFailedError
from .wal.checkpoint import (
    publish_snapshot,
    remove_obsolete,
    snapshot_tmp_path,
    write_snapshot_tmp,
)
from .wal.fileio import NO_SPACE_ERRNOS

logger = logging.getLogger("lockgate.checkpoint")

#: After a failed checkpoint (e.g. no room for the snapshot), the next try comes this
#: long after it at the latest, doubling up to ``RETRY_MAX_S`` while they keep failing:
#: on a full disk a checkpoint is what frees the space of dead segments.
RETRY_MIN_S = 1.0
RETRY_MAX_S = 4.0
#: ``reclaim`` takes a checkpoint once it would free at least this much log.
RECLAIM_MIN_BYTES = 64 * 1024

#: Scheduling niceness of the snapshot child: low enough to leave the live path its CPU,
#: high enough (unlike SCHED_IDLE) to finish under sustained full load.
CHILD_NICENESS = 10


#: Exit status of a snapshot child that found no room for the snapshot.
NO_ROOM_STATUS = 3


class CheckpointError(Exception):
    """A checkpoint could not be taken; nothing was published or removed.

    ``no_room``: for lack of disk space (the new segment or the snapshot)."""

    def __init__(self, message: str, *, no_room: bool = False) -> None:
        super().__init__(message)
        self.no_room = no_room


class Checkpointer:
    """Decides when to checkpoint and takes checkpoints, one at a time."""

    def __init__(self, state: BrokerState, wal: SegmentedLog, committer: GroupCommitter,
                 directory: str, io: FileIO, *, min_bytes: int, snapshot_lsn: int,
                 admission: Admission) -> None:
        self._state = state
        self._admission = admission
        self._reserve = admission.reserve
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
        #: The last checkpoint failed for lack of disk space (``DiskState.STARVED``);
        #: it is tried again within ``RETRY_MAX_S``.
        self.starved = False
        #: Bytes of live message bodies when the newest snapshot was taken: acked since,
        #: they are dead weight in it that the next checkpoint reclaims.
        self._live_at_snapshot = self._live_bytes()
        self._running = False
        admission.reclaimer = self

    @property
    def reclaiming(self) -> bool:
        """A checkpoint is running or asked for. On a full disk the broker refuses
        publishes meanwhile: they would take the room its snapshot is being written
        into, and the log could then never be reclaimed without acks."""
        return self._running or self._wanted.is_set()

    def poke(self) -> None:
        """Called when the log passed ``check_at``: start a checkpoint if one is due."""
        live = self._live_bytes()
        self.check_at = self.snapshot_lsn + max(self._min_bytes, live)
        if self._wal.appended_lsn >= self.check_at:
            self.check_at = 2**63  # no more pokes until this checkpoint is done
            self._wanted.set()

    def reclaim(self) -> None:
        """Called when the disk is full: checkpoint now if that would free disk space
        (the log since the last snapshot and the messages the snapshot holds come to
        more than the live data: acked messages, records of leases and nacks)."""
        dead = self._wal.appended_lsn - self.snapshot_lsn + self._live_at_snapshot - self._live_bytes()
        if dead >= RECLAIM_MIN_BYTES:
            self._wanted.set()

    def _live_bytes(self) -> int:
        return sum(q.bytes for q in self._state.queues.values())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take checkpoints as ``poke`` asks, until ``stop``."""
        task_status.started()
        retry_s = 0.0
        try:
            with self._scope:
                while True:
                    if retry_s:  # after a failure: no sooner, whoever asks
                        await trio.sleep(retry_s)
                    else:
                        await self._wanted.wait()
                    self._wanted = trio.Event()
                    healing = self._wal.failed
                    self._running = True
                    self._admission.checkpoint_started()
                    try:
                        await (self.heal() if healing else self.checkpoint())
                        retry_s = 0.0
                        self.starved = False
                    except Exception as exc:
                        self.starved = (isinstance(exc, CheckpointError) and exc.no_room) or (
                            isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS)
                        retry_s = min(max(2 * retry_s, RETRY_MIN_S), RETRY_MAX_S)
                        logger.error("%s failed (%s); trying again within %.0f s",
                                  "recovery of the failed log" if healing else "checkpoint",
                                  exc, retry_s,
                                  exc_info=not isinstance(exc, (OSError, CheckpointError, LogFailedError)),
                                  extra={"event": "log_recovery_failed" if healing else "checkpoint_failed",
                                         "error": str(exc), "retry_s": retry_s})
                        if not healing:
                            self.check_at = self._wal.appended_lsn + self._min_bytes
                    finally:
                        self._running = False
                        if not healing:
                            self._admission.hold_snapshot_room()
                        self._admission.checkpoint_ended(no_room=self.starved)
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Stop taking checkpoints; a snapshot being written is abandoned and removed."""
        self._scope.cancel()
        await self._stopped.wait()

    async def checkpoint(self) -> None:
        """Snapshot the state as of now in a child process and publish it.

        The log is rolled first (the reserved room moves to the new segment), so the
        snapshot's LSN starts a segment and every segment before it can go; if the new
        segment cannot be created the log goes on in the active one, which the
        snapshot then keeps. Then the room the log kept for the next snapshot
        (``Admission.snapshot_room``) is given back to the file system for the
        snapshot to be written into: on a full disk that is the room it needs."""
        wal = self._wal
        wal.reserve_hint = self._reserve()
        wal.roll()
        wal.trim_room(self._admission.take_snapshot_room())
        lsn = wal.appended_lsn
        bound = self._state.snapshot_bound()
        live = self._live_bytes()
        started = time.perf_counter()
        await self._write_snapshot(lsn)
        await self._committer.wait_durable(lsn)
        if wal.synced_lsn < lsn:
            # Under interval/never, "durable" above only meant written to the OS; the
            # snapshot must never be published ahead of what the log has fsynced.
            wal.sync()
        try:
            size = os.stat(snapshot_tmp_path(self._dir, lsn)).st_size
        except OSError:
            size = 0
        self._publish(lsn, started)
        self._live_at_snapshot = live
        self._admission.calibrate(bound, size)

    def heal_soon(self) -> None:
        """The log has failed: start recovering it (``heal``) now."""
        self._wanted.set()

    async def heal(self) -> None:
        """Recover from a failed write or fsync without a restart.

        The state in memory holds every change applied, confirmed or not; what the
        failed segment holds cannot be trusted. So: snapshot the whole state at the
        end of the log (``appended_lsn``) and publish it, then go on in a new segment
        at that LSN and delete the older ones. Changes whose replies were
        STORAGE_ERROR become durable this way (their outcome was unknown, not
        refused). A crash between the two steps leaves a log ending before the newest
        snapshot, which recovery continues at the snapshot's LSN. Raises if a step
        fails; the log stays failed and ``run`` tries again later.
        """
        wal = self._wal
        lsn = wal.appended_lsn
        live = self._live_bytes()
        started = time.perf_counter()
        await self._write_snapshot(lsn)
        self._live_at_snapshot = live
        tmp = snapshot_tmp_path(self._dir, lsn)
        publish_snapshot(self._io, self._dir, tmp)
        wal.reserve_hint = self._admission.log_reserve()
        wal.restart_at(lsn)
        self._publish_done(lsn, started, "the log recovered: snapshot", logging.WARNING)

    async def _write_snapshot(self, lsn: int) -> None:
        """Write the state as the ``.snap.tmp`` at ``lsn`` in a child process."""
        pid = os.fork()
        if pid == 0:  # the child: write the snapshot from its copy of memory, then leave
            status = 1
            try:
                # Yield the CPU to the broker's live path; still progress when it is busy.
                os.nice(CHILD_NICENESS)
                gc.disable()
                write_snapshot_tmp(self._io, self._dir, lsn, self._state.export_records())
                status = 0
            except OSError as exc:  # e.g. no room: the parent logs the failure
                print(f"snapshot writer: {exc}", file=sys.stderr, flush=True)
                if exc.errno in NO_SPACE_ERRNOS:
                    status = NO_ROOM_STATUS
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        try:
            status = await _wait_child(pid)
        except BaseException:  # cancelled (shutdown): the child must not outlive us
            _kill_child(pid)
            _remove(self._io, snapshot_tmp_path(self._dir, lsn))
            raise
        if status != 0:
            _remove(self._io, snapshot_tmp_path(self._dir, lsn))
            if status == NO_ROOM_STATUS:
                raise CheckpointError(f"no room for the snapshot in {self._dir}", no_room=True)
            raise CheckpointError(f"the snapshot writer exited with status {status}")

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
        tmp = snapshot_tmp_path(self._dir, lsn)
        publish_snapshot(self._io, self._dir, tmp)
        self._publish_done(lsn, started, "checkpoint")

    def _publish_done(self, lsn: int, started: float, what: str, level: int = logging.INFO) -> None:
        """The snapshot at ``lsn`` is published: delete what it made obsolete."""
        removed = remove_obsolete(self._io, self._dir, lsn)
        self.snapshot_lsn = lsn
        self.check_at = lsn + self._min_bytes
        self.checkpoints += 1
        seconds = time.perf_counter() - started
        logger.log(level, "%s at LSN %d in %.3f s; removed %d files", what, lsn, seconds, len(removed),
                   extra={"event": "checkpoint" if what == "checkpoint" else "log_recovered", "lsn": lsn,
                          "seconds": round(seconds, 6), "removed": len(removed)})


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
