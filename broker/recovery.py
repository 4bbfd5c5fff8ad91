"""Start-up recovery: the newest snapshot, then the log after it, into a fresh state.

Rules:
1. The newest ``*.snap`` is loaded whole (every record checked first) or not at all;
   damage in it is ``WalCorruption`` naming the file and offset.
2. The log is replayed from the snapshot's LSN through ``fold_records`` and
   ``BrokerState.apply_items`` (the same appliers as the live path); a log of
   ``OFFLOAD_MIN_BYTES`` or more is read by a helper process while this one applies
   it (``wal/offload.py``). A torn tail of the last segment is truncated and
   reported; any other damage is ``WalCorruption``.
3. Nothing here changes a file except the torn-tail truncation of rule 2.

That is ``mode="refuse"`` (the default, ``brokerd --recover refuse``): damage stops
start-up. ``mode="truncate"`` (``--recover truncate``) keeps everything before the
damage instead, and never skips anything silently:

4. A damaged snapshot, or an intact one the log no longer reaches back to (its first
   segment starts after the snapshot's LSN), is moved aside to ``NAME.damaged`` and
   the next older snapshot is tried; with none left the state starts empty.
5. Damage in the log (a bad record in a sealed segment, a bad record that is not a
   torn tail in the last one, a bad header, a gap between segments) keeps every record
   before it: the damaged segment is copied whole to ``NAME.damaged`` (fsynced, then
   the directory) and then cut back to the record boundary where the damage starts
   (``ftruncate`` + ``fsync``); a bad header or a gap moves the whole file aside. Every
   later segment is moved aside too: its records follow the damage and cannot be
   applied. Then the log is replayed again from the start.
6. A log is only ever applied to a state it meets: a snapshot's LSN must lie in the
   log. If the kept log ends before the snapshot's LSN (the damage lies in bytes the
   snapshot already holds), a new empty segment starts at that LSN and the segments
   that end before it are deleted (what they held is in the snapshot). This rule holds
   in ``refuse`` mode too: after a failed write or fsync the broker writes a snapshot
   of its whole state and only then starts a new segment at its LSN, so a crash in
   between leaves a log that ends before the newest snapshot, and nothing is lost.
7. With no usable snapshot and a log whose first segment starts at LSN ``B > 0``:
   - if a damaged snapshot was moved aside (rule 4) and the log reaches back to its
     LSN, the newest such one is **salvaged**: every record of it that is still whole
     is loaded (``salvage_snapshot``: the damaged records are stepped over by their
     length fields; only a length field that leads nowhere gives up the rest of the
     file), leniently (``BrokerState.from_records(lenient=True)``: a record whose
     queue, topic or group header was in the damage is skipped, and references to
     missing messages are dropped), and the log is replayed from its LSN; records
     that refer to a queue the damage took, or that no longer apply, are skipped and
     counted. Only the messages of the damaged records are lost;
   - otherwise the log is replayed from ``B`` into an empty state: everything before
     ``B`` is lost (queues created and messages published before it are missing;
     records that refer to such a queue are skipped and counted).
   Either way the result is then written as a snapshot at the end of the log, so later
   start-ups never depend on the damaged snapshot or replay from ``B`` again. (With a
   log that starts at LSN 0, the whole log is replayed instead: nothing is lost.)
8. Every file moved aside is logged as an error (byte range, LSN range, records in it)
   and returned in ``Recovered.discarded``. ``*.damaged`` files match neither the
   segment nor the snapshot name pattern, so replay, checkpoints and
   ``brokerctl wal`` ignore them. A segment or snapshot of a version this build
   cannot read (``WalVersionError``) is not damage: it always stops start-up.
"""
from __future__ import annotations

import logging
import os
import struct
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


from . import gcpolicy
from .mutations import QueueCreate, Recover, TopicCreate
from .records import decode_fields, fold_records
from .state import BrokerState
from .wal import FileIO, ReplayReport, replay
from .wal.offload import OFFLOAD_MIN_BYTES, Offload
from .wal.checkpoint import (
    SNAPSHOT_HEADER_SIZE,
    Salvage,
    list_snapshots,
    publish_snapshot,
    read_snapshot,
    salvage_snapshot,
    write_snapshot_tmp,
)
from .wal.fileio import OPEN_READ, OPEN_WRITE, read_all, write_all
from .wal.record import RECORD_HEADER_SIZE, record_problem
from .wal.segment import (
    SEGMENT_HEADER_SIZE,
    WalCorruption,
    WalVersionError,
    create_segment,
    list_segments,
    segment_base,
)

logger = logging.getLogger("lockgate.recovery")

class RecoverMode(StrEnum):
    """``brokerd --recover``: what start-up does about damage (see the module rules)."""

    REFUSE = "refuse"
    TRUNCATE = "truncate"


RECOVER_MODES = tuple(RecoverMode)
#: What a file moved aside by ``mode="truncate"`` is renamed to end with.
DAMAGED_SUFFIX = ".damaged"

_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Discarded:
    """A file ``mode="truncate"`` moved aside, and what of it was not applied."""

    #: The file as it was named (a segment or a snapshot).
    path: str
    #: Where its original bytes are now (``path`` + ``.damaged``, or ``.N.damaged``).
    moved_to: str
    #: Offset in the file of the first byte not applied (0: none of it).
    from_offset: int
    #: Bytes from ``from_offset`` to the end of the file.
    bytes: int
    #: Why: the damage and its offset, or the damage this file follows.
    reason: str
    #: ``"segment"`` or ``"snapshot"``.
    kind: str = "segment"
    #: LSN range of the records not applied: ``[first_lsn, end_lsn)`` for a segment
    #: (by the file name and size); a snapshot's LSN (from its name) for both.
    first_lsn: int = 0
    end_lsn: int = 0
    #: Valid records found in the bytes not applied, walking on by the length fields
    #: (a damaged length field can hide the ones behind it).
    records: int = 0


@dataclass(frozen=True, slots=True)
class Recovered:
    """What start-up recovery produced."""

    state: BrokerState
    #: LSN of the snapshot loaded (0 when there was none).
    snapshot_lsn: int
    replay: ReplayReport
    #: Wall time of the whole recovery: snapshot load, replay and the final fold.
    seconds: float
    #: Files ``mode="truncate"`` moved aside: snapshots newest first, then segments in
    #: log order.
    discarded: tuple[Discarded, ...] = ()
    #: With no usable snapshot, the LSN the log started at: the state before it is lost
    #: (rule 7). 0 when nothing was lost that way.
    lost_before_lsn: int = 0
    #: Records skipped in that case because they refer to a queue from before it (or,
    #: after a salvage, to a queue the damage took).
    skipped_records: int = 0
    #: With a damaged snapshot salvaged (rule 5): its whole records loaded, and its
    #: damaged records plus those that referred to what they held (not loaded).
    salvaged: int = 0
    salvage_lost: int = 0


def recover(wal_dir: Path, io: FileIO | None = None, *, mode: str = RecoverMode.REFUSE) -> Recovered:
    """Rebuild the state from ``wal_dir`` (see the rules above)."""
    if mode not in RECOVER_MODES:
        raise ValueError(f"recover mode must be one of {', '.join(RECOVER_MODES)}, not {mode!r}")
    fio = io if io is not None else FileIO()
    directory = str(wal_dir)
    started = time.perf_counter()
    with gcpolicy.bulk_load():
        if mode == "truncate":
            result = _Truncating(fio, directory).run()
        else:
            snapshot_lsn = 0
            state = BrokerState()
            snapshots = list_snapshots(fio, directory)
            if snapshots:
                snapshot_lsn, records = read_snapshot(fio, os.path.join(directory, snapshots[-1][1]))
                state = BrokerState.from_records(records)
                segments = list_segments(fio, directory)
                if _log_ends_before(fio, directory, segments, snapshot_lsn):
                    _start_log_at(fio, directory, segments, snapshot_lsn)
            else:
                segments = list_segments(fio, directory) if os.path.isdir(directory) else []
                if segments and segments[0][0] > 0:
                    raise WalCorruption(
                        os.path.join(directory, segments[0][1]), 0,
                        f"the log starts at LSN {segments[0][0]} but no snapshot holds the "
                        "state before it")
            report = replay(wal_dir, io=io, from_lsn=snapshot_lsn, offload=_offload(state))
            result = Recovered(state, snapshot_lsn, report, 0.0)
    seconds = time.perf_counter() - started
    state, report = result.state, result.replay
    rate = report.records / seconds if seconds > 0 else 0.0
    messages = sum(len(q) for q in state.queues.values())
    logger.info("recovered: %d records, %d bytes, %d segments in %.3f s (%.0f records/s) "
             "after a snapshot at LSN %d; %d queues, %d messages",
             report.records, report.bytes, report.segments, seconds, rate, result.snapshot_lsn,
             len(state.queues), messages,
             extra={"event": "recovered", "records": report.records, "bytes": report.bytes,
                    "segments": report.segments, "seconds": round(seconds, 6),
                    "snapshot_lsn": result.snapshot_lsn, "queues": len(state.queues), "messages": messages})
    if result.discarded or result.lost_before_lsn:
        skipped = sum(d.records for d in result.discarded if d.kind == "segment")
        logger.error("recovered with --recover=truncate: %d file(s) moved aside, %d valid log "
                  "records in them not applied%s; see the errors above", len(result.discarded), skipped,
                  f", the state before LSN {result.lost_before_lsn} lost"
                  if result.lost_before_lsn else "",
                  extra={"event": "recovered_with_loss", "moved_aside": len(result.discarded),
                         "records_not_applied": skipped, "lost_before_lsn": result.lost_before_lsn})
    return Recovered(state, result.snapshot_lsn, report, seconds, result.discarded,
                     result.lost_before_lsn, result.skipped_records, result.salvaged,
                     result.salvage_lost)


def _offload(state: BrokerState) -> Offload:
    """How recovery replays into ``state``: records folded, then applied (rule 2)."""
    return Offload(fold_records, state.apply_items, OFFLOAD_MIN_BYTES)


def _log_ends_before(io: FileIO, directory: str, segments: list[tuple[int, str]], lsn: int) -> bool:
    """Whether the log stops short of ``lsn`` (and nothing after it could reach it)."""
    if not lsn:
        return False
    if not segments:
        return True
    if segments[-1][0] > lsn:
        return False  # a later segment: replay checks how it connects
    return _log_end(directory, segments) < lsn


def _log_end(directory: str, segments: list[tuple[int, str]]) -> int:
    """LSN just past the last segment's bytes, by its size (0 for no segment)."""
    if not segments:
        return 0
    last_base, last_name = segments[-1]
    size = os.path.getsize(os.path.join(directory, last_name))
    return last_base + max(size - SEGMENT_HEADER_SIZE, 0)

def _start_log_at(io: FileIO, directory: str, segments: list[tuple[int, str]], lsn: int) -> None:
    """Rule 6: continue the log at the snapshot's LSN with a new empty segment."""
    end = _log_end(directory, segments)
    logger.warning("the log ends at LSN %d, before the newest snapshot's LSN %d (the broker "
                "was recovering from a failed write, or damage lies in what the snapshot "
                "holds): the snapshot holds everything up to it; starting a new segment at "
                "LSN %d", end, lsn, lsn)
    io.close(create_segment(io, directory, lsn))
    removed = []
    for base, name in segments:  # all end at or before lsn: the snapshot holds them
        io.unlink(os.path.join(directory, name))
        removed.append(name)
    if removed:
        io.fsync_dir(directory)
        logger.warning("removed segments %s: they end before the snapshot's LSN %d, which "
                    "holds what they held", ", ".join(removed), lsn)


class _Truncating:
    """``mode="truncate"``: rules 4-8."""

    def __init__(self, io: FileIO, directory: str) -> None:
        self.io = io
        self.dir = directory
        self.discarded: list[Discarded] = []
        #: The newest snapshot that was damaged (moved aside): its path and bytes.
        self.damaged: tuple[str, bytes] | None = None

    def run(self) -> Recovered:
        snap_path, snapshot_lsn, records = self._choose_snapshot()
        salvage = self._salvage() if snap_path is None else None
        if salvage is not None:
            snapshot_lsn = salvage.lsn
        # Every pass either moves a file aside or cuts one shorter, or raises: it ends.
        while True:
            segments = self._segments()
            lost_before = 0
            if salvage is not None:
                if _log_ends_before(self.io, self.dir, segments, snapshot_lsn):
                    _start_log_at(self.io, self.dir, segments, snapshot_lsn)
            elif snap_path is None:
                lost_before = segments[0][0] if segments else 0
            elif _log_ends_before(self.io, self.dir, segments, snapshot_lsn):
                _start_log_at(self.io, self.dir, segments, snapshot_lsn)
            if salvage is not None:
                state = BrokerState.from_records(salvage.records, lenient=True)
            elif snap_path is None:
                state = BrokerState()
            else:
                if records is None:
                    _, records = read_snapshot(self.io, snap_path)
                state = BrokerState.from_records(records)
            records = None
            skipper = _SkipUnknownQueues(state)
            try:
                if lost_before or salvage is not None:
                    report = replay(self.dir, skipper.apply_record, io=self.io,
                                    from_lsn=snapshot_lsn)
                else:
                    report = replay(self.dir, io=self.io, from_lsn=snapshot_lsn,
                                    offload=_offload(state))
            except WalVersionError:
                raise
            except WalCorruption as exc:
                self._cut_log(exc)
                continue
            break
        skipped = skipper.skipped
        if salvage is not None:
            logger.error("kept %d whole records of the damaged snapshot at LSN %d (%d damaged "
                         "record(s) not loaded%s, %d that referred to what they held skipped), "
                         "then replayed the log after it: %d records, %d of them skipped "
                         "because they refer to a queue the damage took",
                         len(salvage.records), salvage.lsn, salvage.bad,
                         f", everything from offset {salvage.cut_at} on lost"
                         if salvage.cut_at is not None else "",
                         state.import_skipped, report.records, skipped,
                         extra={"event": "snapshot_salvaged", "lsn": salvage.lsn,
                                "records": len(salvage.records), "damaged": salvage.bad,
                                "skipped": state.import_skipped + skipped})
            snapshot_lsn = self._checkpoint(state, segments, report.end_lsn)
            return Recovered(state, snapshot_lsn, report, 0.0, tuple(self.discarded), 0,
                             skipped, salvaged=len(salvage.records),
                             salvage_lost=salvage.bad + state.import_skipped)
        if lost_before:
            logger.error("no usable snapshot and the log starts at LSN %d: the state before it is "
                      "lost (queues created and messages published before LSN %d are missing); "
                      "%d records that refer to such queues were skipped", lost_before,
                      lost_before, skipped)
            snapshot_lsn = self._checkpoint(state, segments, report.end_lsn)
        return Recovered(state, snapshot_lsn, report, 0.0, tuple(self.discarded),
                         lost_before, skipped)

    # -- snapshots (rule 4) -------------------------------------------------------------

    def _choose_snapshot(self) -> tuple[str | None, int, Any]:
        """The newest snapshot that is intact and that the log meets, with its records;
        the newest damaged one is remembered for salvage (rule 5)."""
        segments = self._segments()
        first_base = segments[0][0] if segments else None
        for name_lsn, name in reversed(list_snapshots(self.io, self.dir)):
            path = os.path.join(self.dir, name)
            try:
                lsn, records = read_snapshot(self.io, path)
            except WalVersionError:
                raise
            except WalCorruption as exc:
                data = self._snapshot_aside(path, name_lsn, f"damage at offset {exc.offset}: {exc.reason}")
                if self.damaged is None:
                    self.damaged = (path, data)
                continue
            if first_base is not None and first_base > lsn:
                self._snapshot_aside(
                    path, name_lsn, f"intact, but the log starts at LSN {first_base}, after the "
                    f"snapshot's LSN {lsn}: the records between are gone, so the log cannot be "
                    "applied to it")
                continue
            return path, lsn, records
        return None, 0, None

    def _salvage(self) -> Salvage | None:
        """Rule 5: the whole records of the newest damaged snapshot, when no intact one
        is usable, the log does not start at LSN 0 (else the whole log is replayed) and
        reaches back to that snapshot's LSN."""
        if self.damaged is None:
            return None
        segments = self._segments()
        if segments and segments[0][0] == 0:
            return None
        path, data = self.damaged
        salvage = salvage_snapshot(data, path)
        if segments and segments[0][0] > salvage.lsn:
            return None
        return salvage

    def _snapshot_aside(self, path: str, lsn: int, reason: str) -> bytes:
        data = self._read(path)
        moved_to = self._move_aside(path)
        gone = Discarded(path, moved_to, 0, len(data), reason, "snapshot", lsn, lsn,
                         _count_records(data, SNAPSHOT_HEADER_SIZE))
        self.discarded.append(gone)
        logger.error("snapshot %s not loaded (%s); moved aside to %s (%d bytes, %d records); "
                  "falling back to an older snapshot or the log", path, reason, moved_to,
                  gone.bytes, gone.records)
        return data

    # -- the log (rules 5 and 6) --------------------------------------------------------

    def _cut_log(self, exc: WalCorruption) -> None:
        """Keep what precedes the damage ``exc`` names; move it and what follows aside."""
        name = os.path.basename(exc.path)
        base = segment_base(name)
        segments = self._segments()
        if (base is None or os.path.dirname(os.path.abspath(exc.path)) != os.path.abspath(self.dir)
                or (base, name) not in segments):
            raise exc  # not a segment of this log: nothing here can repair it
        index = segments.index((base, name))
        where = f"{name}:{exc.offset}"
        gone: list[Discarded] = []
        # Last first: after a crash at any step the log is still contiguous, and the next
        # recovery finds the same damage again.
        for later_base, later in reversed(segments[index + 1:]):
            gone.append(self._segment_aside(
                os.path.join(self.dir, later), later_base, 0,
                f"follows the damage at {where}; its records cannot be applied"))
        size = os.path.getsize(exc.path)
        reason = f"damage at offset {exc.offset}: {exc.reason}"
        if exc.offset < SEGMENT_HEADER_SIZE:
            gone.append(self._segment_aside(exc.path, base, 0, reason))
        elif exc.offset < size:
            gone.append(self._segment_aside(exc.path, base, exc.offset, reason, cut=True))
        if not gone:
            raise exc
        for d in reversed(gone):  # reported in log order
            self.discarded.append(d)
            if d.from_offset:
                logger.error("segment %s cut back to %d bytes, its original copied to %s (%s): "
                          "bytes %d-%d, LSN %d-%d, %d valid records behind the damage not "
                          "applied", d.path, d.from_offset, d.moved_to, d.reason, d.from_offset,
                          d.from_offset + d.bytes, d.first_lsn, d.end_lsn, d.records)
            else:
                logger.error("segment %s moved aside to %s (%s): bytes 0-%d, LSN %d-%d, %d valid "
                          "records not applied", d.path, d.moved_to, d.reason, d.bytes,
                          d.first_lsn, d.end_lsn, d.records)

    def _segment_aside(self, path: str, base: int, offset: int, reason: str, *,
                       cut: bool = False) -> Discarded:
        """Move a segment aside whole, or (``cut``) copy it aside and cut it at ``offset``."""
        data = self._read(path)
        if not cut:
            moved_to = self._move_aside(path)
        else:
            moved_to = self._copy_aside(path, data)
            fd = self.io.open(path, OPEN_WRITE)
            try:
                self.io.ftruncate(fd, offset)
                self.io.fsync(fd)
            finally:
                self.io.close(fd)
        header = SEGMENT_HEADER_SIZE
        return Discarded(path, moved_to, offset, len(data) - offset, reason, "segment",
                         base + max(offset, header) - header, base + max(len(data) - header, 0),
                         _count_records(data, max(offset, header)))

    # -- rule 7 ---------------------------------------------------------------------------

    def _checkpoint(self, state: BrokerState, segments: list[tuple[int, str]], lsn: int) -> int:
        """Write ``state`` as the snapshot at ``lsn``, the end of the log; returns ``lsn``."""
        if segments:
            # The log must be durable up to lsn first (a crashed process may have left
            # its last writes in the page cache only).
            fd = self.io.open(os.path.join(self.dir, segments[-1][1]), OPEN_READ)
            try:
                self.io.fsync(fd)
            finally:
                self.io.close(fd)
        tmp = write_snapshot_tmp(self.io, self.dir, lsn, state.export_records())
        final = publish_snapshot(self.io, self.dir, tmp)
        logger.warning("wrote the recovered state as snapshot %s", final)
        return lsn

    # -- files ----------------------------------------------------------------------------

    def _segments(self) -> list[tuple[int, str]]:
        try:
            return list_segments(self.io, self.dir)
        except FileNotFoundError:
            return []

    def _read(self, path: str) -> bytes:
        fd = self.io.open(path, OPEN_READ)
        try:
            return read_all(self.io, fd, self.io.size(fd))
        finally:
            self.io.close(fd)

    def _aside_name(self, path: str) -> str:
        """``path.damaged``, or ``path.N.damaged`` if an earlier recovery took that name."""
        candidate = path + DAMAGED_SUFFIX
        n = 2
        while self.io.exists(candidate):
            candidate = f"{path}.{n}{DAMAGED_SUFFIX}"
            n += 1
        return candidate

    def _move_aside(self, path: str) -> str:
        moved_to = self._aside_name(path)
        self.io.rename(path, moved_to)
        self.io.fsync_dir(self.dir)
        return moved_to

    def _copy_aside(self, path: str, data: bytes) -> str:
        """A durable copy of ``data`` under the aside name, before ``path`` is cut."""
        moved_to = self._aside_name(path)
        fd = self.io.open(moved_to, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0))
        try:
            write_all(self.io, fd, data)
            self.io.fsync(fd)
        finally:
            self.io.close(fd)
        self.io.fsync_dir(self.dir)
        return moved_to


class _SkipUnknownQueues:
    """The applier of rules 5 and 7, after a loss: a record naming a queue or topic the
    state lacks, or one that cannot be applied to what is left (it refers to what the
    loss took), is skipped and counted."""

    def __init__(self, state: BrokerState) -> None:
        self._state = state
        self.skipped = 0

    def apply_record(self, rtype: int, payload: bytes) -> None:
        fields = decode_fields(payload)
        state = self._state
        # Every other mutation names its queue or topic first (a transaction: its steps).
        name = fields[0] if fields and isinstance(fields[0], str) else None
        if (rtype not in _CREATES and name is not None and name not in state.queues
                and name not in state.topics):
            self.skipped += 1
            return
        try:
            state.apply_fields(rtype, fields)
        except Exception as exc:
            self.skipped += 1
            logger.warning("skipped a log record of type %d that does not apply after the loss: %r",
                           rtype, exc)


#: Records that need nothing before them.
_CREATES = frozenset({QueueCreate.TYPE, TopicCreate.TYPE, Recover.TYPE})


def _count_records(data: bytes, off: int) -> int:
    """Valid records from ``off`` on, stepping over bad ones by their length fields."""
    n = len(data)
    count = 0
    while n - off >= RECORD_HEADER_SIZE:
        (length,) = _LENGTH.unpack_from(data, off)
        end = off + RECORD_HEADER_SIZE + length
        if end > n or not any(data[off:off + RECORD_HEADER_SIZE]):
            break
        if record_problem(data, off) is None:
            count += 1
        off = end
    return count
