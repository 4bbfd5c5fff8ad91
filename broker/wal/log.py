"""The append side of the log: buffer records, write them, make them durable.

An LSN (log sequence number) is a byte position in the whole log counting record
bytes only (segment headers excluded): the first record ever written starts at LSN 0,
and a record's LSN plus its length is the LSN of the next one. ``append`` returns the
LSN just past the record, which is what ``wait_durable`` and ``synced_lsn`` compare.

Three positions only ever grow: ``appended_lsn >= written_lsn >= synced_lsn``.
``append`` buffers in memory, ``write`` hands the buffer to the OS, ``sync`` also
fdatasyncs it. Once a write or fsync fails the log is *failed*: the file's state is
unknown, ``synced_lsn`` never moves again and every later call raises LogFailedError,
until the owner has made a snapshot durable and calls ``restart_at``, which abandons
the suspect segment for a new one.

Rolling: a record goes into the active segment if it has no record yet or the segment
stays within ``segment_bytes``; otherwise the active segment is fdatasynced and sealed
and a new one is created (``create_segment``: temp file, fsync, rename, fsync dir).
So a sealed segment is always complete on disk before its successor exists, and only
the last segment can have a torn tail.

Room: the active segment has disk blocks reserved ahead of its end
(``FileIO.preallocate``), up to ``reserved_lsn``. A record appended below that LSN
cannot meet a full disk when it is written. ``ensure_room`` extends the reservation and
answers False when the file system has no room left: the owner then refuses new work
instead of failing the log (the broker keeps room for every live message's ack this
way). A new segment is created with a reservation of ``reserve_hint`` bytes plus what
it must take at once. If it cannot be created (no room, or any other error) the log
stays in the active segment, past ``segment_bytes`` if need be, and tries to roll
again at most once per ``ROLL_RETRY_S``; the sealed segment gives its unused
reservation back first. On a file system without ``fallocate`` there is no
reservation: ``reserved_lsn`` is unlimited and a full disk fails the write instead.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .fileio import NO_SPACE_ERRNOS, OPEN_APPEND, FileIO, read_all, write_all
from .record import RECORD_HEADER_SIZE
from .segment import (
    SEGMENT_HEADER_SIZE,
    SEGMENT_SUFFIX,
    TEMP_SUFFIX,
    WAL_VERSION,
    create_segment,
    decode_header,
    list_segments,
    segment_name,
)

__all__ = ["DEFAULT_SEGMENT_BYTES", "PREALLOC_STEP", "SegmentedLog", "LogFailedError", "SyncTicket"]

logger = logging.getLogger("lockgate.wal")

#: Default size at which a segment is rolled (64 MiB).
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
#: Most the reservation of the active segment grows by at once, beyond what is asked
#: for (capped at the segment size).
PREALLOC_STEP = 1024 * 1024
#: After a failed roll, the log stays in its segment this long before trying again.
ROLL_RETRY_S = 1.0
#: A file system block, as far as reservations are concerned.
_BLOCK = 4096
#: ``reserved_lsn`` where the file system cannot reserve blocks.
UNLIMITED = 2**62


class LogFailedError(Exception):
    """A write or fsync failed, or the log is failed or closed: nothing more is durable.

    Raised by ``SegmentedLog.append/write/sync`` and ``GroupCommitter.wait_durable``.
    Records covered by an earlier successful sync stay durable; no later one is.
    """


@dataclass(frozen=True, slots=True)
class SyncTicket:
    """What one fdatasync outside ``SegmentedLog.sync`` covers (``begin_sync``). The
    descriptor is the log's: hand it on (or dup it) before anything can roll the log."""

    fd: int
    lsn: int
    restarts: int
    #: The segment's first LSN, its size in bytes (header included) and
    #: ``time.monotonic()`` when the ticket was made: what ``FileIO.synced_elsewhere``
    #: is told once the fdatasync returned.
    base: int = 0
    size: int = 0
    started: float = 0.0


class SegmentedLog:
    """A directory of segments, appended to by one owner (see the module docstring)."""

    __slots__ = (
        "_buf", "_appended", "_written", "_synced", "_stop", "_failure",
        "_io", "_dir", "_segment_bytes", "_fd", "_base", "_seg_size",
        "_alloc_end", "_prealloc", "_roll_retry_at", "_restarts", "reserved_lsn",
        "reserve_hint", "on_sync",
    )

    def __init__(self, directory: str, io: FileIO, segment_bytes: int,
                 fd: int, base: int, seg_size: int) -> None:
        # Use SegmentedLog.open().
        self._io = io
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._fd = fd
        self._base = base
        self._seg_size = seg_size
        end = base + seg_size - SEGMENT_HEADER_SIZE
        self._buf: list[bytes] = []
        self._appended = end
        self._written = end
        self._synced = end
        self._stop: str | None = None
        self._failure: LogFailedError | None = None
        #: File offset up to which the active segment's blocks are reserved.
        self._alloc_end = seg_size
        #: Whether the file system reserves blocks (None: not tried yet).
        self._prealloc: bool | None = None
        self._roll_retry_at = 0.0
        #: How often ``restart_at`` has left a failed segment.
        self._restarts = 0
        #: LSN below which appended records have reserved room (see the module docstring).
        self.reserved_lsn = end
        #: Bytes the owner wants reserved beyond the appended records; a new segment is
        #: created with at least this much.
        self.reserve_hint = 0
        #: Told (seconds, bytes) after each fdatasync of the log that advanced
        #: ``synced_lsn``: how long it took and how many record bytes it made durable.
        #: For a sync made elsewhere (``end_sync``) the time runs from ``begin_sync``.
        self.on_sync: Callable[[float, int], None] | None = None

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *,
             segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             io: FileIO | None = None) -> SegmentedLog:
        """Open the log for appending; run ``replay`` first (it truncates a torn tail).

        Creates the directory (fsyncing its parent) if missing, removes leftover
        ``*.wal.tmp`` files, and continues the last segment, or creates the first
        one at LSN 0. A last segment of another ``WAL_VERSION`` is sealed and a new
        one started; a bad header on it raises ``WalCorruption``. The active segment
        and the directory are fsynced once, so ``synced_lsn`` starts out true even if
        the previous process died before syncing.
        """
        if segment_bytes < SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE:
            raise ValueError(f"segment_bytes too small: {segment_bytes}")
        io = io if io is not None else FileIO()
        path = os.fspath(directory)
        if io.makedirs(path):
            io.fsync_dir(os.path.dirname(os.path.abspath(path)))
        # Unfinished creations; either branch below fsyncs the directory afterwards.
        for name in io.listdir(path):
            if name.endswith(SEGMENT_SUFFIX + TEMP_SUFFIX):
                logger.info("removing unfinished segment %s", os.path.join(path, name))
                io.unlink(os.path.join(path, name))

        segments = list_segments(io, path)
        if not segments:
            fd = create_segment(io, path, 0)
            log = cls(path, io, segment_bytes, fd, 0, SEGMENT_HEADER_SIZE)
            log.ensure_room(0)
            return log

        base, name = segments[-1]
        seg_path = os.path.join(path, name)
        fd = io.open(seg_path, OPEN_APPEND)
        try:
            size = io.size(fd)
            header = decode_header(read_all(io, fd, SEGMENT_HEADER_SIZE), seg_path, base)
            io.fdatasync(fd)
            io.fsync_dir(path)
        except BaseException:
            io.close(fd)
            raise
        log = cls(path, io, segment_bytes, fd, base, size)
        log.ensure_room(0)
        if header.version != WAL_VERSION and not log._roll(0):
            log.close()
            raise LogFailedError(f"could not start a segment of version {WAL_VERSION} in {path}")
        return log

    # -- the hot path ------------------------------------------------------------

    def append(self, record: bytes) -> int:
        """Buffer one encoded record; return the LSN just past it. No I/O."""
        if self._stop is not None:
            raise LogFailedError(self._stop)
        self._buf.append(record)
        lsn = self._appended + len(record)
        self._appended = lsn
        return lsn

    def ensure_room(self, nbytes: int) -> bool:
        """Make sure ``nbytes`` more bytes can be appended below ``reserved_lsn``.

        Extends the active segment's reservation (by at least ``PREALLOC_STEP``, capped
        at the segment size) when needed. False when the file system is out of room
        (``ENOSPC``, ``EDQUOT``); the log itself stays usable. Always True where blocks
        cannot be reserved. Raises LogFailedError once the log is failed.
        """
        if self._stop is not None:
            raise LogFailedError(self._stop)
        short = self._appended + nbytes - self.reserved_lsn
        if short <= 0 and self._prealloc is not None:
            return True
        short = max(short, 0)
        step = max(short, min(PREALLOC_STEP, self._segment_bytes))
        for size in (step, short) if step > short else (step,):
            if size <= 0:
                break
            try:
                self._io.preallocate(self._fd, self._alloc_end, size)
            except OSError as exc:
                if exc.errno in NO_SPACE_ERRNOS:
                    continue
                self._no_prealloc(exc)
                return True
            self._prealloc = True
            self._set_alloc_end(self._alloc_end + size)
            return True
        if self._prealloc is None:
            self._prealloc = True
        return short <= 0

    def trim_room(self, keep: int) -> None:
        """Write what is buffered, then give back the active segment's reservation
        beyond ``keep`` bytes: on a full disk, the room a snapshot needs. (The blocks
        past the end of the file are released and ``keep`` reserved again, as ext4
        cannot release part of them.)"""
        self.write()
        unused = self._alloc_end - self._seg_size
        if not self._prealloc or unused <= keep:
            return
        try:
            self._io.release(self._fd, self._seg_size, unused)
        except OSError:
            return
        if not self._reserve_tail(keep):
            logger.warning("could not reserve %d bytes in %s again", keep, self.active_segment)

    @property
    def room(self) -> int:
        """Bytes that can still be appended below ``reserved_lsn``."""
        return self.reserved_lsn - self._appended

    def write(self) -> None:
        """Hand everything buffered to the OS, rolling segments at the size limit.

        No fsync, except the ones rolling a segment needs.
        """
        buf = self._buf
        if not buf:
            return
        if self._stop is not None:
            raise LogFailedError(self._stop)
        pending = self._appended - self._written
        try:
            if self._seg_size + pending <= self._segment_bytes:
                self._buf = []
                write_all(self._io, self._fd, buf[0] if len(buf) == 1 else b"".join(buf))
                self._seg_size += pending
                self._written += pending
            else:
                self._write_rolling(buf)
        except OSError as exc:
            raise self._fail("write", exc) from exc

    def sync(self) -> None:
        """``write()``, then fdatasync: everything appended before the call is durable."""
        if self._stop is not None:
            raise LogFailedError(self._stop)
        self.write()
        if self._synced < self._written:
            observe = self.on_sync
            started = time.monotonic() if observe is not None else 0.0
            try:
                self._io.fdatasync(self._fd)
            except OSError as exc:
                raise self._fail("fdatasync", exc) from exc
            if observe is not None:
                observe(time.monotonic() - started, self._written - self._synced)
            self._synced = self._written

    def begin_sync(self) -> SyncTicket | None:
        """``write()``, then name what an fdatasync made elsewhere (another thread or
        process) must cover: the active segment's descriptor and the LSN written. None
        if that is durable already. Hand the result to ``end_sync``; meanwhile the log
        may append, write and roll as usual."""
        if self._stop is not None:
            raise LogFailedError(self._stop)
        self.write()
        if self._written <= self._synced:
            return None
        return SyncTicket(self._fd, self._written, self._restarts, self._base, self._seg_size,
                          time.monotonic())

    def end_sync(self, ticket: SyncTicket, error: OSError | None) -> None:
        """Record how the fdatasync of ``ticket`` ended: ``synced_lsn`` advances to its
        LSN and the FileIO is told (``FileIO.synced_elsewhere``) while its segment is
        still the active one (a roll fdatasyncs the segment it seals itself), or
        ``error`` fails the log (LogFailedError), unless the log has since left
        that segment for a new one by ``restart_at``."""
        if error is not None:
            if ticket.restarts == self._restarts:
                raise self._fail("fdatasync", error) from error
            return
        if self._failure is not None:
            return
        if ticket.lsn > self._synced:
            if self.on_sync is not None:
                self.on_sync(time.monotonic() - ticket.started, ticket.lsn - self._synced)
            self._synced = ticket.lsn
        if ticket.base == self._base and ticket.restarts == self._restarts and self._fd >= 0:
            self._io.synced_elsewhere(ticket.fd, ticket.size, ticket.started)

    def close(self) -> None:
        """``sync()`` (unless failed) and close the active segment. Idempotent."""
        if self._fd < 0:
            return
        try:
            if self._failure is None:
                self.sync()
        finally:
            if self._stop is None:
                self._stop = f"the log in {self._dir} is closed"
            fd, self._fd = self._fd, -1
            self._io.close(fd)

    def __enter__(self) -> SegmentedLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- positions and state -----------------------------------------------------

    @property
    def appended_lsn(self) -> int:
        """LSN just past the last appended record."""
        return self._appended

    @property
    def written_lsn(self) -> int:
        """LSN up to which records were handed to the OS."""
        return self._written

    @property
    def synced_lsn(self) -> int:
        """LSN up to which records are known durable."""
        return self._synced

    @property
    def buffered_bytes(self) -> int:
        return self._appended - self._written

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def segment_bytes(self) -> int:
        return self._segment_bytes

    @property
    def active_segment(self) -> str:
        """File name of the segment being appended to."""
        return segment_name(self._base)

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def disk_usage(self) -> tuple[int, int, int]:
        """(segment files, their bytes, bytes the file system allocated to them: the
        reserved room too) in the log's directory now; a listing and a ``stat`` each."""
        segments = size = allocated = 0
        for _, name in list_segments(self._io, self._dir):
            try:
                st = os.stat(os.path.join(self._dir, name))
            except FileNotFoundError:
                continue  # deleted meanwhile by a checkpoint
            segments += 1
            size += st.st_size
            allocated += st.st_blocks * 512
        return segments, size, allocated

    @property
    def failure(self) -> LogFailedError | None:
        """The error that failed the log, if any."""
        return self._failure

    # -- internals ---------------------------------------------------------------

    def _write_rolling(self, buf: list[bytes]) -> None:
        self._buf = []
        io = self._io
        limit = self._segment_bytes
        size = self._seg_size
        carry = self._appended - self._written  # bytes of buf not yet written
        chunk: list[bytes] = []
        chunk_bytes = 0
        for rec in buf:
            n = len(rec)
            if size + n > limit and size > SEGMENT_HEADER_SIZE and self._may_roll():
                if chunk:
                    write_all(io, self._fd, b"".join(chunk))
                    self._seg_size = size
                    self._written += chunk_bytes
                    carry -= chunk_bytes
                    chunk = []
                    chunk_bytes = 0
                if self._roll(carry):
                    size = SEGMENT_HEADER_SIZE
            chunk.append(rec)
            chunk_bytes += n
            size += n
        if chunk:
            write_all(io, self._fd, b"".join(chunk))
            self._seg_size = size
            self._written += chunk_bytes

    def roll(self) -> bool:
        """Write what is buffered and start a new segment at ``appended_lsn`` (sealing
        the active one durably), unless the active segment holds no record yet.

        A checkpoint rolls first, so that every segment before its LSN can be deleted.
        False if the new segment could not be created (the log goes on in the active
        one); LogFailedError if the log is failed.
        """
        if self._stop is not None:
            raise LogFailedError(self._stop)
        self.write()
        if self._seg_size > SEGMENT_HEADER_SIZE:
            return self._roll(0)
        return True

    def restart_at(self, lsn: int) -> None:
        """Leave a failed log for a new segment at ``lsn``, the ``appended_lsn``.

        Call it only once a snapshot holding everything appended (written or not) is
        durable at ``lsn``: the records still buffered are dropped and the active
        segment is abandoned, never written or fsynced again (after a failed fsync its
        contents cannot be trusted). The new segment gets ``reserve_hint`` bytes of
        room; the log is no longer failed. Raises OSError (still failed) if the
        segment cannot be created.
        """
        if self._failure is None:
            raise RuntimeError("restart_at is for a failed log")
        if lsn != self._appended:
            raise ValueError(f"LSN {lsn} is not the end of the log ({self._appended})")
        want = 0 if self._prealloc is False else self.reserve_hint
        fd = create_segment(self._io, self._dir, lsn, want, replace=self._base == lsn)
        try:
            self._io.close(self._fd)
        except OSError:
            pass
        self._buf = []
        self._written = self._synced = lsn
        self._switch_to(fd, want)
        logger.warning("the log goes on in a new segment %s after the failure: %s",
                       segment_name(lsn), self._failure,
                       extra={"event": "log_restarted", "segment": segment_name(lsn), "lsn": lsn})
        self._failure = None
        self._stop = None
        self._restarts += 1

    def _may_roll(self) -> bool:
        return time.monotonic() >= self._roll_retry_at

    def _roll(self, carry: int) -> bool:
        """Seal the active segment durably, then start the next one at ``written_lsn``
        with room for ``carry + reserve_hint`` bytes, and no less than the sealed one
        had. False (still in the active segment, its reservation restored) if the new
        one could not be created."""
        io = self._io
        observe = self.on_sync
        started = time.monotonic() if observe is not None else 0.0
        try:
            io.fdatasync(self._fd)
        except OSError as exc:
            raise self._fail("fdatasync", exc) from exc
        if observe is not None and self._written > self._synced:
            observe(time.monotonic() - started, self._written - self._synced)
        self._synced = self._written
        unused = self._alloc_end - self._seg_size
        if unused > 0:  # give it back first: on a full disk the new segment needs it
            try:
                io.release(self._fd, self._seg_size, unused)
            except OSError:
                pass
        # Room for what is still to be written plus the owner's reserve, at least; as
        # much as the sealed segment had left if it can (less the new header's block),
        # and a step more if it can.
        floor = carry + self.reserve_hint
        kept = max(floor, unused - _BLOCK)
        wants = [0] if self._prealloc is False else sorted(
            {max(kept, min(PREALLOC_STEP, self._segment_bytes)), kept, floor}, reverse=True)
        for want in wants:
            try:
                fd = create_segment(io, self._dir, self._written, want)
            except OSError as exc:
                if exc.errno in NO_SPACE_ERRNOS and want != wants[-1]:
                    continue  # try with less room
                self._roll_retry_at = time.monotonic() + ROLL_RETRY_S
                logger.warning("could not start segment %s (%s); going on in %s",
                               segment_name(self._written), exc, self.active_segment)
                if unused > 0 and self._prealloc:
                    self._reserve_tail(unused)
                return False
            break
        io.close(self._fd)
        self._switch_to(fd, want)
        logger.debug("rolled to segment %s", segment_name(self._base))
        return True

    def _switch_to(self, fd: int, room: int) -> None:
        """Append from now on to the new, empty segment ``fd`` at ``written_lsn``, which
        has ``room`` bytes reserved after its header."""
        self._fd = fd
        self._base = self._written
        self._seg_size = SEGMENT_HEADER_SIZE
        self._set_alloc_end(SEGMENT_HEADER_SIZE + room)

    def _reserve_tail(self, size: int) -> bool:
        """Reserve ``size`` bytes after the end of the active segment (none if it fails)."""
        try:
            if size > 0:
                self._io.preallocate(self._fd, self._seg_size, size)
        except OSError:
            self._set_alloc_end(self._seg_size)
            return False
        self._set_alloc_end(self._seg_size + size)
        return True

    def _set_alloc_end(self, end: int) -> None:
        self._alloc_end = end
        if self._prealloc is not False:
            self.reserved_lsn = self._base + end - SEGMENT_HEADER_SIZE

    def _no_prealloc(self, exc: OSError) -> None:
        if self._prealloc is not False:
            logger.info("the file system under %s cannot reserve blocks (%s): a full disk "
                        "will fail the log instead of refusing new work", self._dir, exc)
        self._prealloc = False
        self.reserved_lsn = UNLIMITED

    def _fail(self, op: str, exc: OSError) -> LogFailedError:
        err = LogFailedError(
            f"{op} failed in {os.path.join(self._dir, self.active_segment)}: {exc}; "
            f"the log is failed, durable up to LSN {self._synced}")
        if self._failure is None:
            self._failure = err
            self._stop = str(err)
            logger.error("%s", err, extra={"event": "storage_error", "op": op, "error": str(exc),
                                           "durable_lsn": self._synced})
        return err

