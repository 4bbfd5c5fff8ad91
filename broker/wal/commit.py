"""Group commit: when a record may be confirmed, under the fsync policy in force.

One committer task (``run``) owns syncing. Under ``ALWAYS`` a waiter parks on the
Event of the next sync round and wakes the committer; the committer first yields so
every runnable task can append, then swaps in a fresh Event, writes and fdatasyncs
once and sets the old Event. Everything appended before the swap is covered by that
round; anything appended while it runs waits for the next. One Event per round, never
one per record.

A failed write or fsync fails the log (``SegmentedLog`` stops advancing
``synced_lsn``): the round's waiters, and every later one, get ``StorageError`` until
the log is restarted in a new segment (``SegmentedLog.restart_at``).
"""
from __future__ import annotations

from enum import StrEnum

import trio

from .log import SegmentedLog, StorageError

__all__ = ["FsyncPolicy", "GroupCommitter", "StorageError"]

#: Scheduler passes the committer yields for, at most, before syncing; it stops early
#: once a pass adds no record. Each pass lets tasks woken by new input append.
GATHER_PASSES = 4


class FsyncPolicy(StrEnum):
    """When ``wait_durable`` returns."""

    #: After an fdatasync covers the record (group commit). Survives a power cut.
    ALWAYS = "always"
    #: After the record is written to the OS; fdatasync every ``interval_ms``.
    #: Survives a process crash; a power cut loses up to one interval.
    INTERVAL = "interval"
    #: After the record is written to the OS; never fdatasync (except rolling a
    #: segment and closing). Survives a process crash only.
    NEVER = "never"


class GroupCommitter:
    """Confirms records of one ``SegmentedLog`` under ``policy``; start ``run`` first.

    ``sync_in_thread`` moves the ``ALWAYS`` fdatasync to a worker thread (the write
    stays in the trio thread). Inline is the default: here a thread hop costs more
    than it saves unless fsyncs are slow. ``INTERVAL`` always syncs inline.
    """

    def __init__(self, log: SegmentedLog, policy: FsyncPolicy, *, interval_ms: int = 100,
                 sync_in_thread: bool = False) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        self._log = log
        self._policy = FsyncPolicy(policy)
        self._always = self._policy is FsyncPolicy.ALWAYS
        self._interval = interval_ms / 1000
        self._in_thread = sync_in_thread
        self._round = trio.Event()  # set when the next sync round finishes
        self._wanted = trio.Event()  # set when a waiter needs a round
        self._lock = trio.Lock()  # one sync at a time (a round, or aclose)
        self._closed = False
        self._closed_event = trio.Event()
        self._syncs = 0
        #: A waiter is running a round itself (see ``_lead``).
        self._leading = False

    @property
    def policy(self) -> FsyncPolicy:
        return self._policy

    @property
    def syncs(self) -> int:
        """Sync rounds completed (each at most one fdatasync)."""
        return self._syncs

    async def wait_durable(self, lsn: int) -> None:
        """Return once the record ending at ``lsn`` is confirmed under the policy.

        Raises ``StorageError`` if the log failed or the committer closed before
        that, and ``ValueError`` if ``lsn`` was never appended.
        """
        log = self._log
        if lsn <= log.synced_lsn:
            return
        if self._always:
            while True:
                self._check(lsn)
                if self._in_thread:
                    event = self._round  # the committer task syncs in a worker thread
                    self._wanted.set()
                    await event.wait()
                elif not self._leading:
                    await self._lead()
                else:
                    await self._round.wait()  # the leader's round covers this record
                if lsn <= log.synced_lsn:
                    return
        if lsn > log.written_lsn:
            self._check(lsn)
            log.write()
        elif log.failed:
            raise StorageError(str(log.failure)) from log.failure

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The committer task; returns after ``aclose``."""
        task_status.started()
        if self._always:
            while not self._closed:
                await self._wanted.wait()
                if self._closed:
                    break
                self._wanted = trio.Event()
                await self._gather()
                async with self._lock:
                    if not self._closed:
                        await self._sync_round()
        elif self._policy is FsyncPolicy.INTERVAL:
            log = self._log
            while not self._closed:
                with trio.move_on_after(self._interval):
                    await self._closed_event.wait()
                if not self._closed and not log.failed and log.synced_lsn < log.appended_lsn:
                    async with self._lock:
                        await self._sync_round()
        else:
            await self._closed_event.wait()

    async def aclose(self) -> None:
        """Write and sync everything appended, then stop ``run``. Idempotent.

        Does not close the log. Raises ``StorageError`` if this final sync fails.
        """
        if self._closed:
            return
        self._closed = True
        self._closed_event.set()
        self._wanted.set()
        async with self._lock:
            event, self._round = self._round, trio.Event()
            try:
                if not self._log.failed:
                    self._log.sync()
                    self._syncs += 1
            finally:
                event.set()

    # -- internals ---------------------------------------------------------------

    def _check(self, lsn: int) -> None:
        log = self._log
        if log.failed:
            raise StorageError(str(log.failure)) from log.failure
        if self._closed:
            raise StorageError("the group committer is closed")
        if lsn > log.appended_lsn:
            raise ValueError(f"LSN {lsn} is past the end of the log ({log.appended_lsn})")

    async def _gather(self) -> None:
        log = self._log
        for _ in range(GATHER_PASSES):
            before = log.appended_lsn
            await trio.lowlevel.checkpoint()
            if log.appended_lsn == before:
                break

    async def _lead(self) -> None:
        """Run one sync round in this task for every waiter that joins it.

        The leader yields so that every runnable task can append and wait on this
        round, then syncs inline: one scheduler pass instead of handing the round to
        the committer task and back. If the leader is cancelled before it syncs, the
        committer task runs the round instead.
        """
        self._leading = True
        synced = False
        try:
            await self._gather()
            async with self._lock:
                await self._sync_round()
            synced = True
        finally:
            self._leading = False
            if not synced:
                self._wanted.set()

    async def _sync_round(self) -> None:
        log = self._log
        event, self._round = self._round, trio.Event()
        try:
            if self._in_thread and self._always:
                log.write()
                await trio.to_thread.run_sync(log.sync_written)
            else:
                log.sync()
            self._syncs += 1
        except StorageError:
            pass  # the log is failed; woken waiters see it and raise
        finally:
            event.set()
