"""Group commit: when a record may be confirmed, under the fsync policy in force.

Under ``ALWAYS`` a round covers everything written when it starts, with one fdatasync,
and sets one Event for all of its waiters: never one fsync or Event per record.
A round runs in one of two ways; an inline round never awaits, and at most one flight
is in the air (an inline round may run meanwhile: each covers what was written when it
began):

1. Inline, for rounds smaller than ``helper_min_bytes`` (and always without a
   helper): the first waiter leads the round. It yields for a few scheduler passes so
   that every runnable task can append and join (unless the owner marked it the
   ``sole_appender`` and the caller did not ask it to ``gather``), then writes and
   fdatasyncs in the event loop. Whoever arrives once it syncs waits for the next
   round. A leader cancelled before it syncs hands the round to the committer task
   (``run``).
2. In flight, for bigger rounds: ``take_off`` writes, hands the fdatasync to the sync
   helper process (``synchelper``) and returns at once, so the event loop goes on
   serving (the connection that appended the round, too: it calls ``take_off`` before
   it reads on). The first waiter to need the round lands it: it waits for the
   helper's answer and wakes the others. A waiter whose record the flight does not
   cover waits for it to land first, then starts the next round.

A failed write or fsync fails the log (``SegmentedLog`` stops advancing
``synced_lsn``): the round's waiters, and every later one, get ``LogFailedError`` until
the log is restarted in a new segment (``SegmentedLog.restart_at``). A helper that is
gone leaves rounds inline from then on.
"""
from __future__ import annotations

import logging
from enum import StrEnum

import trio

from .log import SegmentedLog, LogFailedError, SyncTicket
from .synchelper import SyncHelper, SyncHelperGone

__all__ = ["HELPER_MIN_BYTES", "FsyncPolicy", "GroupCommitter", "LogFailedError"]

logger = logging.getLogger("lockgate.wal")

#: Scheduler passes an inline round's leader yields for, at most, before syncing; it
#: stops early once a pass adds no record. Each pass lets tasks woken by new input append.
GATHER_PASSES = 4
#: Rounds covering at least this many bytes (appended since the last sync) fly: they
#: are fdatasynced by the sync helper, if there is one.
HELPER_MIN_BYTES = 64 * 1024


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


class _Flight:
    """A round whose fdatasync the helper is running."""

    __slots__ = ("ticket", "landed", "landing")

    def __init__(self, ticket: SyncTicket) -> None:
        self.ticket = ticket
        self.landed = trio.Event()
        self.landing = False


class GroupCommitter:
    """Confirms records of one ``SegmentedLog`` under ``policy``; start ``run`` first.

    With a ``helper`` (``ALWAYS`` only), rounds of at least ``helper_min_bytes`` fly
    (see the module docstring); its owner starts and closes it.
    """

    def __init__(self, log: SegmentedLog, policy: FsyncPolicy, *, interval_ms: int = 100,
                 helper: SyncHelper | None = None,
                 helper_min_bytes: int = HELPER_MIN_BYTES) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        self._log = log
        self._policy = FsyncPolicy(policy)
        self._always = self._policy is FsyncPolicy.ALWAYS
        self._interval = interval_ms / 1000
        self._helper = helper if self._always else None
        self._helper_min_bytes = helper_min_bytes
        self._round = trio.Event()  # set when the next inline round finishes
        self._wanted = trio.Event()  # set when a cancelled leader left its round undone
        self._closed = False
        self._closed_event = trio.Event()
        self._syncs = 0
        #: A waiter is running an inline round itself (see ``_lead``).
        self._leading = False
        #: The round the helper is syncing, if any.
        self._flight: _Flight | None = None
        #: Set by the owner while one task alone appends (the broker: while it has one
        #: connection). An inline round's leader then syncs without yielding first.
        self.sole_appender = False
        #: The end of the last record that must be fdatasynced before a reply covers it
        #: under every policy (``sync_through``).
        self._sync_mark = 0

    @property
    def policy(self) -> FsyncPolicy:
        return self._policy

    @property
    def syncs(self) -> int:
        """Sync rounds completed (each at most one fdatasync)."""
        return self._syncs

    def syncs_elsewhere(self, lsn: int) -> bool:
        """True if the round that covers ``lsn`` would fly: the event loop stays free
        while it syncs."""
        log = self._log
        return lsn > log.synced_lsn and self._flies()

    def take_off(self) -> None:
        """Start a flying round now, if one is due and none is in flight: call it right
        after appending a big round, before working on. No wait."""
        if self._flight is None and self._flies() and not self._closed and not self._log.failed:
            try:
                self._launch()
            except LogFailedError:
                pass  # the write failed the log; the round's waiters see it and raise

    def sync_through(self, lsn: int) -> None:
        """The record ending at ``lsn`` must be fdatasynced before ``wait_durable`` of
        it (or of any later LSN) returns, whatever the policy: under ``interval`` and
        ``never`` such a wait syncs the log in the event loop. For rare records whose
        loss a client could not tell from a bug (the broker's queue creation and
        deletion); under ``always`` every record is synced anyway."""
        if lsn > self._sync_mark:
            self._sync_mark = lsn

    async def wait_durable(self, lsn: int, *, gather: bool = False) -> None:
        """Return once the record ending at ``lsn`` is confirmed under the policy
        (fdatasynced if it is at or past a ``sync_through`` mark).

        ``gather``: should this call lead an inline round, it yields for the gather
        passes even while one task alone appends (``sole_appender``): for a caller that
        has just woken tasks that will append (the timer loop), so that one fdatasync
        covers their records too.

        Raises ``LogFailedError`` if the log failed or the committer closed before
        that, and ``ValueError`` if ``lsn`` was never appended.
        """
        log = self._log
        if self._always:
            while lsn > log.synced_lsn:
                self._check(lsn)
                flight = self._flight
                if flight is not None:
                    await self._land(flight)  # first, even if it does not cover lsn
                elif self._flies():
                    self._launch()
                elif not self._leading:
                    await self._lead(gather)
                else:
                    await self._round.wait()  # the leader's round covers this record
            return
        if lsn <= log.synced_lsn:
            return
        if log.synced_lsn < self._sync_mark <= lsn:
            self._check(lsn)
            self._sync_round()
            if log.failed:
                raise LogFailedError(str(log.failure)) from log.failure
            return
        if lsn > log.written_lsn:
            self._check(lsn)
            log.write()
        elif log.failed:
            raise LogFailedError(str(log.failure)) from log.failure

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
                if not self._closed:
                    self._sync_round()
        elif self._policy is FsyncPolicy.INTERVAL:
            log = self._log
            while not self._closed:
                with trio.move_on_after(self._interval):
                    await self._closed_event.wait()
                if not self._closed and not log.failed and log.synced_lsn < log.appended_lsn:
                    self._sync_round()
        else:
            await self._closed_event.wait()

    async def aclose(self) -> None:
        """Write and sync everything appended, then stop ``run``. Idempotent.

        Does not close the log. Raises ``LogFailedError`` if this final sync fails.
        """
        if self._closed:
            return
        self._closed = True
        self._closed_event.set()
        self._wanted.set()
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
            raise LogFailedError(str(log.failure)) from log.failure
        if self._closed:
            raise LogFailedError("the group committer is closed")
        if lsn > log.appended_lsn:
            raise ValueError(f"LSN {lsn} is past the end of the log ({log.appended_lsn})")

    def _flies(self) -> bool:
        """Whether the next round is big enough for the helper, and there is one."""
        helper = self._helper
        log = self._log
        return (helper is not None and not helper.gone
                and log.appended_lsn - log.synced_lsn >= self._helper_min_bytes)

    def _launch(self) -> None:
        """Write and hand the fdatasync to the helper (``_flight``); no wait. Inline
        instead if the helper turns out gone. LogFailedError if the write fails."""
        helper = self._helper
        assert helper is not None and self._flight is None
        ticket = self._log.begin_sync()
        if ticket is None:
            return
        try:
            helper.send(ticket.fd)
        except SyncHelperGone as exc:
            self._helper_gone(exc)
            return
        self._flight = _Flight(ticket)

    async def _land(self, flight: _Flight) -> None:
        """Wait until ``flight`` has landed; the first caller waits for the helper."""
        if flight.landing:
            await flight.landed.wait()
            return
        flight.landing = True
        helper = self._helper
        assert helper is not None
        try:
            await helper.receive()
        except SyncHelperGone as exc:
            self._helper_gone(exc)  # the data was written: sync it here instead
        except OSError as exc:
            try:
                self._log.end_sync(flight.ticket, exc)
            except LogFailedError:
                pass  # the log is failed; the waiters see it and raise
        else:
            self._log.end_sync(flight.ticket, None)
            self._syncs += 1
        finally:
            self._flight = None
            flight.landed.set()

    def _helper_gone(self, exc: OSError) -> None:
        logger.warning("%s; the log is synced in the event loop from now on", exc,
                       extra={"event": "sync_helper_gone", "error": str(exc)})
        try:
            self._log.sync()
            self._syncs += 1
        except LogFailedError:
            pass  # the log is failed; the waiters see it and raise

    async def _gather(self, always: bool = False) -> None:
        """Yield until a scheduler pass adds no record (at most ``GATHER_PASSES``).
        ``always``: even for a sole appender, and for at least two passes: a task woken
        just before runs in the same pass as the leader, maybe after it."""
        log = self._log
        if self.sole_appender and not always:
            return  # nobody could join: sync at once
        for passes in range(GATHER_PASSES):
            before = log.appended_lsn
            await trio.lowlevel.checkpoint()
            if log.appended_lsn == before and (passes or not always):
                break

    async def _lead(self, gather: bool = False) -> None:
        """Run one inline round in this task for every waiter that joins it.

        The leader yields so that every runnable task can append and wait on this
        round (with a sole appender, only when told to ``gather``), then syncs: one
        scheduler pass instead of handing the round to the committer task and back. If
        the leader is cancelled before it syncs, the committer task runs the round instead.
        """
        self._leading = True
        synced = False
        try:
            await self._gather(gather)
            self._sync_round()
            synced = True
        finally:
            self._leading = False
            if not synced:
                self._wanted.set()

    def _sync_round(self) -> None:
        """Write and fdatasync in the event loop; wake the round's waiters."""
        event, self._round = self._round, trio.Event()
        try:
            self._log.sync()
            self._syncs += 1
        except LogFailedError:
            pass  # the log is failed; woken waiters see it and raise
        finally:
            event.set()
