"""Disk admission: whether the log has room for a request's records, as one state machine.

The live path asks ``admit`` before it applies anything. The log always keeps room
for one ack of every live message (``BrokerState.ack_reserve``) plus
``RESERVE_MARGIN`` for what is logged even on a full disk (lease expiries, promotions
of delayed messages, the start-up RECOVER record). What a request needs depends on its
command's admission class:

- ``NONE``: logs nothing (reads, hello, ping).
- ``RESERVED``: logs only what publishing reserved (ack): always admitted.
- ``LOG``: logs a control record (consume's lease, nack, queue changes, purge): it
  needs room for that record beyond the reserve.
- ``PUBLISH``: new messages: room for their records and future acks beyond the
  reserve, plus ``PUBLISH_HEADROOM`` so consumers can still lease what was published.

The states and their transitions (``DiskState``):

    NORMAL      --a request finds no room--------------------------> FULL
    FULL        --a checkpoint that frees log is asked or running---> RECLAIMING
    RECLAIMING  --that checkpoint ends------------------------------> FULL
    FULL        --a publish finds room------------------------------> NORMAL
    any         --a checkpoint fails for lack of room---------------> STARVED
    STARVED     --a checkpoint (retry) starts-----------------------> RECLAIMING

Publishes are refused in RECLAIMING and STARVED whatever the room: the room a
reclaiming checkpoint writes its snapshot into must stay its own, or the log could
never be reclaimed. In FULL, every request asks for a reclaiming checkpoint (acks may
have made one worth it). Other requests are admitted in any state if the room is there.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Protocol

from protocol import ErrorCode, ProtocolError

from .mutations import Mutation, Publish, Txn
from .records import publish_need, record_need
from .wal import SegmentedLog

logger = logging.getLogger("lockgate.admission")

#: Log room kept beyond the acks of the live messages, for the records that are logged
#: even when the disk is full: lease expiries, promotions of delayed messages and the
#: start-up RECOVER record.
RESERVE_MARGIN = 256 * 1024
#: Further room a publish must leave, so that consumers can still lease (and nack)
#: what was published once publishes are refused.
PUBLISH_HEADROOM = 64 * 1024


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

    def __init__(self, wal: SegmentedLog, ack_reserve: Callable[[], int], where: str) -> None:
        self._wal = wal
        self._ack_reserve = ack_reserve
        self._where = where
        self.state = DiskState.NORMAL
        self.reclaimer: Reclaimer | None = None
        #: Log bytes admitted that may not be appended yet (a pending publish fold).
        self._unflushed = 0

    def reserve(self) -> int:
        """Log room to keep for what must be logged even on a full disk."""
        return self._ack_reserve() + RESERVE_MARGIN

    def admit(self, kind: AdmissionClass, mutations: Sequence[Mutation], op: str) -> None:
        """Raise ``DISK_FULL`` unless the log has room for ``mutations`` (of a command
        of class ``kind``); nothing has been applied yet."""
        if self.state is DiskState.FULL:
            self._ask_reclaim()
        if kind is AdmissionClass.NONE or kind is AdmissionClass.RESERVED or not mutations:
            return
        publish = kind is AdmissionClass.PUBLISH
        if publish:
            need = sum(publish_need(m) if type(m) is Publish else record_need(m) for m in mutations)
            need += sum(publish_need(part) for m in mutations if type(m) is Txn  # its messages' acks
                        for part in m.mutations() if type(part) is Publish)
        else:
            need = sum(record_need(m) for m in mutations)
        reserve = self.reserve()
        wal = self._wal
        wal.reserve_hint = reserve
        total = need + reserve + self._unflushed + (PUBLISH_HEADROOM if publish else 0)
        held = publish and self.state in (DiskState.RECLAIMING, DiskState.STARVED)
        if held or (total > wal.room and not wal.ensure_room(total)):
            if self.state is DiskState.NORMAL:
                self._to(DiskState.FULL)
                logger.warning("disk full: no room in %s for new work; refusing it with "
                               "DISK_FULL (the acks of live messages keep their reserved room)",
                               self._where, extra={"event": "disk_full", "needed": total, "room": wal.room})
                self._ask_reclaim()
            why = ("a checkpoint must reclaim the log first"
                   if held else f"{need} bytes of log plus {reserve} reserved for acks")
            raise ProtocolError(
                ErrorCode.DISK_FULL,
                f"no room on disk for this {op}: {why}; nothing was applied, retry once "
                "space is freed", details={"needed": need, "reserved": reserve})
        if publish and self.state is DiskState.FULL:
            self._to(DiskState.NORMAL)
            logger.info("the disk has room again in %s: accepting publishes", self._where,
                        extra={"event": "disk_room"})
        self._unflushed += need

    def flushed(self) -> None:
        """Everything admitted so far has been appended to the log."""
        self._unflushed = 0

    # -- checkpoint events ------------------------------------------------------------

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
