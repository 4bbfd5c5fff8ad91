"""Disk admission: whether the log has room for a request's records, as one state machine.

The live path asks ``admit`` before it applies anything. The log always keeps room
reserved (``reserve``) for:

- one ack of every live message (``BrokerState.ack_reserve``) plus ``RESERVE_MARGIN``
  for what is logged even on a full disk (lease expiries, promotions of delayed
  messages, the start-up RECOVER record): ``log_reserve``;
- the next snapshot (``snapshot_room``: ``BrokerState.snapshot_bound`` scaled by what
  the last snapshot really took, plus ``SNAPSHOT_MARGIN``). A checkpoint hands this
  room over to the snapshot it writes (``Checkpointer.checkpoint``), so a checkpoint
  never needs room the disk may not have, and the log of acked messages can always be
  reclaimed: on a full disk, acks alone bring publishing back.

What a request needs depends on its command's admission class:

- ``NONE``: logs nothing (reads, hello, ping).
- ``RESERVED``: logs only what publishing reserved (ack): always admitted.
- ``LOG``: logs a control record (consume's lease, nack, queue changes, purge): it
  needs room for that record beyond the reserve.
- ``PUBLISH``: new messages: room for their records, future acks and snapshot rows
  beyond the reserve, plus ``PUBLISH_HEADROOM`` so consumers can still lease what was
  published.

The states and their transitions (``DiskState``):

    NORMAL          --a request finds no room-------------------------> FULL
    FULL            --a checkpoint that frees log is asked or running--> RECLAIMING
    RECLAIMING      --that checkpoint ends-----------------------------> FULL
    FULL, STARVED   --a publish finds room-----------------------------> NORMAL
    any             --a checkpoint fails for lack of room--------------> STARVED
    STARVED         --a checkpoint (retry) starts----------------------> RECLAIMING

Publishes are refused in RECLAIMING whatever the room: the checkpoint has been handed
the snapshot's room, which a publish must not take back before the snapshot is
written. In every other state a publish is admitted as soon as the file system has
room for it and the reserve: room freed by anyone is used at once. In FULL, every
request asks for a reclaiming checkpoint (acks may have made one worth it).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Protocol

from protocol import ErrorCode, ProtocolError

from .mutations import Mutation, Publish, Txn
from .records import publish_need, record_need, txn_need
from .state import SNAPSHOT_BOUND_ROW
from .wal import SegmentedLog

logger = logging.getLogger("lockgate.admission")

#: Log room kept beyond the acks of the live messages, for the records that are logged
#: even when the disk is full: lease expiries, promotions of delayed messages and the
#: start-up RECOVER record.
RESERVE_MARGIN = 256 * 1024
#: Further room a publish must leave, so that consumers can still lease (and nack)
#: what was published once publishes are refused.
PUBLISH_HEADROOM = 64 * 1024
#: Room kept for the next snapshot beyond its estimate (``snapshot_room``).
SNAPSHOT_MARGIN = 256 * 1024


class AdmissionClass(Enum):
    """What a command's records need from the log (see the module docs)."""

    NONE = "none"
    RESERVED = "reserved"
    LOG = "log"
    PUBLISH = "publish"


class DiskState(Enum):
    NORMAL = "normal"
    FULL = "full"
    RECLAIMING = "reclaiming"
    STARVED = "starved"


class Reclaimer(Protocol):
    """The checkpointer, as admission sees it."""

    @property
    def reclaiming(self) -> bool: ...
    def reclaim(self) -> None: ...


class Admission:
    """Disk admission for one broker's log."""

    def __init__(self, wal: SegmentedLog, ack_reserve: Callable[[], int], where: str,
                 snapshot_bound: Callable[[], int] = lambda: 0) -> None:
        self._wal = wal
        self._ack_reserve = ack_reserve
        self._snapshot_bound = snapshot_bound
        self._where = where
        self.state = DiskState.NORMAL
        self.reclaimer: Reclaimer | None = None
        #: Log bytes admitted that may not be appended yet (a pending publish fold).
        self._unflushed = 0
        #: Bytes the last snapshot took per byte of its ``snapshot_bound`` (at least 1).
        self.calibration = 1.0
        #: The room kept for the next snapshot: counted when the log's room runs out
        #: (and after each checkpoint), grown by every publish meanwhile.
        self.snapshot_room = self._count_snapshot_room()
        #: Whether the log holds the snapshot's room now. A checkpoint hands it over to
        #: the snapshot it writes, and takes it back when it ends if the disk has it
        #: (``hold_snapshot_room``); else the next publish must. While the log does not
        #: hold it, requests other than publishes do not need it: consumers go on.
        self.snapshot_held = wal.ensure_room(self.reserve())

    def log_reserve(self) -> int:
        """Log room to keep for what must be logged even on a full disk."""
        return self._ack_reserve() + RESERVE_MARGIN

    def reserve(self) -> int:
        """Room to keep beyond what is appended: ``log_reserve`` and the next snapshot's."""
        return self._ack_reserve() + RESERVE_MARGIN + self.snapshot_room

    def _reserve_for(self, publish: bool) -> int:
        """``reserve``, less the snapshot's room while the log does not hold it (except
        for a publish: it needs the room back)."""
        if publish or self.snapshot_held:
            return self._ack_reserve() + RESERVE_MARGIN + self.snapshot_room
        return self._ack_reserve() + RESERVE_MARGIN

    def calibrate(self, bound: int, size: int) -> None:
        """A snapshot of a state whose ``snapshot_bound`` was ``bound`` took ``size``
        bytes: scale later estimates by that (never below the bound itself)."""
        if bound > 0:
            self.calibration = max(1.0, size / bound)
        self.snapshot_room = self._count_snapshot_room()

    def _count_snapshot_room(self) -> int:
        return int(self._snapshot_bound() * self.calibration) + SNAPSHOT_MARGIN

    def admit(self, kind: AdmissionClass, mutations: Sequence[Mutation], op: str) -> None:
        """Raise ``DISK_FULL`` unless the log has room for ``mutations`` (of a command
        of class ``kind``); nothing has been applied yet."""
        if self.state is DiskState.FULL:
            self._ask_reclaim()
        if kind is AdmissionClass.NONE or kind is AdmissionClass.RESERVED or not mutations:
            return
        publish = kind is AdmissionClass.PUBLISH
        rows = 0
        if publish:
            need = 0
            for m in mutations:
                if type(m) is Publish:
                    need += publish_need(m)
                    rows += len(m.bodies)
                elif type(m) is Txn:
                    txn, published = txn_need(m)
                    need += txn
                    rows += published
                else:
                    need += record_need(m)
        else:
            need = sum(record_need(m) for m in mutations)
        # What publishing these messages may add to the next snapshot (until it is
        # counted again), reserved with them.
        growth = need + rows * SNAPSHOT_BOUND_ROW if publish else 0
        wal = self._wal
        extra = self._unflushed + growth + (PUBLISH_HEADROOM if publish else 0)
        reserve = self._reserve_for(publish)
        total = need + reserve + extra
        held = publish and self.state is DiskState.RECLAIMING
        if not held and total > wal.room:
            # The reserved room ran out: count the snapshot's room again (acks may have
            # shrunk it since), then ask the file system for what is missing.
            self.snapshot_room = self._count_snapshot_room()
            reserve = self._reserve_for(publish)
            total = need + reserve + extra
        wal.reserve_hint = reserve
        if held or (total > wal.room and not wal.ensure_room(total)):
            if self.state is DiskState.NORMAL:
                self._to(DiskState.FULL)
                logger.warning("disk full: no room in %s for new work; refusing it with "
                               "DISK_FULL (the acks of live messages and the next snapshot keep "
                               "their reserved room)",
                               self._where, extra={"event": "disk_full", "needed": total, "room": wal.room})
                self._ask_reclaim()
            why = ("a checkpoint is reclaiming the log first"
                   if held else f"{need} bytes of log plus {reserve} reserved for acks and the next snapshot")
            raise ProtocolError(
                ErrorCode.DISK_FULL,
                f"no room on disk for this {op}: {why}; nothing was applied, retry once "
                "space is freed", details={"needed": need, "reserved": reserve})
        if publish:
            self.snapshot_room += growth
            self.snapshot_held = True
            if self.state is DiskState.FULL or self.state is DiskState.STARVED:
                self._to(DiskState.NORMAL)
                logger.info("the disk has room again in %s: accepting publishes", self._where,
                            extra={"event": "disk_room"})
        self._unflushed += need

    def flushed(self) -> None:
        """Everything admitted so far has been appended to the log."""
        self._unflushed = 0

    # -- checkpoint events ------------------------------------------------------------

    def take_snapshot_room(self) -> int:
        """A checkpoint gives the snapshot's room back to the file system to write its
        snapshot into: the log room to keep meanwhile (for acks, the broker's own
        records and consumers)."""
        self.snapshot_held = False
        return self.log_reserve() + PUBLISH_HEADROOM

    def hold_snapshot_room(self) -> bool:
        """After a checkpoint: reserve the next snapshot's room in the log again (from
        what the checkpoint freed), if the file system has it."""
        self.snapshot_room = self._count_snapshot_room()
        wal = self._wal
        need = self.reserve() + self._unflushed + PUBLISH_HEADROOM
        if wal.failed:
            return False
        if need <= wal.room or wal.ensure_room(need):
            self.snapshot_held = True
            return True
        # Not all of it: keep as much as the file system has (in halves), so that
        # another program cannot take what the next snapshot may need.
        chunk = need - wal.room
        while chunk >= PUBLISH_HEADROOM and wal.room < need:
            if not wal.ensure_room(wal.room + chunk):
                chunk //= 2
        return False

    def checkpoint_started(self) -> None:
        if self.state is DiskState.STARVED:
            self._to(DiskState.RECLAIMING)

    def checkpoint_ended(self, *, no_room: bool) -> None:
        """A checkpoint (or a recovery of the failed log) ended; ``no_room`` if it failed
        for lack of disk space."""
        if no_room:
            self._to(DiskState.STARVED)
        elif self.state is DiskState.RECLAIMING:
            self._to(DiskState.FULL)

    @property
    def starved(self) -> bool:
        """The last checkpoint failed for lack of room and none has run since."""
        return self.state is DiskState.STARVED

    def _ask_reclaim(self) -> None:
        reclaimer = self.reclaimer
        if reclaimer is None:
            return
        reclaimer.reclaim()
        if reclaimer.reclaiming and self.state is DiskState.FULL:
            self._to(DiskState.RECLAIMING)

    def _to(self, state: DiskState) -> None:
        if state is not self.state:
            logger.debug("disk admission: %s -> %s", self.state.value, state.value)
            self.state = state
