"""The append side of the log: buffer records, write them, make them durable.

An LSN (log sequence number) is a byte position in the whole log counting record
bytes only (segment headers excluded): the first record ever written starts at LSN 0,
and a record's LSN plus its length is the LSN of the next one. ``append`` returns the
LSN just past the record, which is what ``wait_durable`` and ``synced_lsn`` compare.

Three positions only ever grow: ``appended_lsn >= written_lsn >= synced_lsn``.
``append`` buffers in memory, ``write`` hands the buffer to the OS, ``sync`` also
fdatasyncs it. Once a write or fsync fails the log is *failed*: the file's state is
unknown, ``synced_lsn`` never moves again and every later call raises StorageError.

Rolling: a record goes into the active segment if it has no record yet or the segment
stays within ``segment_bytes``; otherwise the active segment is fdatasynced and closed
and a new one is created (``create_segment``: temp file, fsync, rename, fsync dir).
So a sealed segment is always complete on disk before its successor exists, and only
the last segment can have a torn tail.
"""
from __future__ import annotations

import logging
import os

from .fileio import OPEN_APPEND, FileIO, read_all, write_all
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

__all__ = ["DEFAULT_SEGMENT_BYTES", "SegmentedLog", "StorageError"]

logger = logging.getLogger("lockgate.wal")

#: Default size at which a segment is rolled (64 MiB).
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


class StorageError(Exception):
    """A write or fsync failed, or the log is failed or closed: nothing more is durable.

    Raised by ``SegmentedLog.append/write/sync`` and ``GroupCommitter.wait_durable``.
    Records covered by an earlier successful sync stay durable; no later one is.
    """


class SegmentedLog:
    """A directory of segments, appended to by one owner (see the module docstring)."""

    __slots__ = (
        "_buf", "_appended", "_written", "_synced", "_stop", "_failure",
        "_io", "_dir", "_segment_bytes", "_fd", "_base", "_seg_size",
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
        self._failure: StorageError | None = None

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
            return cls(path, io, segment_bytes, fd, 0, SEGMENT_HEADER_SIZE)

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
        if header.version != WAL_VERSION:
            log._roll()
        return log

    # -- the hot path ------------------------------------------------------------

    def append(self, record: bytes) -> int:
        """Buffer one encoded record; return the LSN just past it. No I/O."""
        if self._stop is not None:
            raise StorageError(self._stop)
        self._buf.append(record)
        lsn = self._appended + len(record)
        self._appended = lsn
        return lsn

    def write(self) -> None:
        """Hand everything buffered to the OS, rolling segments at the size limit.

        No fsync, except the ones rolling a segment needs.
        """
        buf = self._buf
        if not buf:
            return
        if self._stop is not None:
            raise StorageError(self._stop)
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
            raise StorageError(self._stop)
        self.write()
        if self._synced < self._written:
            try:
                self._io.fdatasync(self._fd)
            except OSError as exc:
                raise self._fail("fdatasync", exc) from exc
            self._synced = self._written

    def sync_written(self) -> None:
        """fdatasync only what ``write()`` already handed to the OS.

        Touches no buffer, so it may run in a worker thread while the owning thread
        keeps appending, provided nothing calls ``write``/``sync``/``close`` meanwhile.
        """
        if self._stop is not None:
            raise StorageError(self._stop)
        target = self._written
        if target <= self._synced:
            return
        try:
            self._io.fdatasync(self._fd)
        except OSError as exc:
            raise self._fail("fdatasync", exc) from exc
        if target > self._synced:
            self._synced = target

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

    @property
    def failure(self) -> StorageError | None:
        """The error that failed the log, if any."""
        return self._failure

    # -- internals ---------------------------------------------------------------

    def _write_rolling(self, buf: list[bytes]) -> None:
        self._buf = []
        io = self._io
        limit = self._segment_bytes
        size = self._seg_size
        chunk: list[bytes] = []
        chunk_bytes = 0
        for rec in buf:
            n = len(rec)
            if size + n > limit and size > SEGMENT_HEADER_SIZE:
                if chunk:
                    write_all(io, self._fd, b"".join(chunk))
                    self._seg_size = size
                    self._written += chunk_bytes
                    chunk = []
                    chunk_bytes = 0
                self._roll()
                size = SEGMENT_HEADER_SIZE
            chunk.append(rec)
            chunk_bytes += n
            size += n
        if chunk:
            write_all(io, self._fd, b"".join(chunk))
            self._seg_size = size
            self._written += chunk_bytes

    def roll(self) -> None:
        """Write what is buffered and start a new segment at ``appended_lsn`` (sealing
        the active one durably), unless the active segment holds no record yet.

        A checkpoint rolls first, so that every segment before its LSN can be deleted.
        """
        if self._stop is not None:
            raise StorageError(self._stop)
        self.write()
        if self._seg_size > SEGMENT_HEADER_SIZE:
            try:
                self._roll()
            except OSError as exc:
                raise self._fail("roll", exc) from exc

    def _roll(self) -> None:
        """Seal the active segment durably, then start the next one at ``written_lsn``."""
        io = self._io
        io.fdatasync(self._fd)
        self._synced = self._written
        fd, self._fd = self._fd, -1
        io.close(fd)
        self._fd = create_segment(io, self._dir, self._written)
        self._base = self._written
        self._seg_size = SEGMENT_HEADER_SIZE
        logger.debug("rolled to segment %s", segment_name(self._base))

    def _fail(self, op: str, exc: OSError) -> StorageError:
        err = StorageError(
            f"{op} failed in {os.path.join(self._dir, self.active_segment)}: {exc}; "
            f"the log is failed, durable up to LSN {self._synced}")
        if self._failure is None:
            self._failure = err
            self._stop = str(err)
            logger.error("%s", err)
        return err

