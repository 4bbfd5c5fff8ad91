"""Snapshot files: the whole state as of one LSN, so recovery and disk stay bounded.

Rules:
1. A snapshot is named ``{lsn:020d}.snap`` after the LSN just past the last record it
   holds; recovery loads the newest valid one and replays the log from that LSN on.
2. Its body is records in the WAL's own format (``[len|crc32c|type|payload]``) after a
   24-byte header (magic ``LGSNAP\\r\\n``, version, LSN, header CRC); the last record is
   ``SNAPSHOT_END`` carrying the LSN and the record count. A file without a valid end
   record is incomplete.
3. It is written under ``<name>.tmp`` and fsynced; it becomes a snapshot only by the
   rename to its final name followed by a directory fsync. The rename happens only
   after the log is durable up to the snapshot's LSN, so a snapshot never claims
   records the log could still lose.
4. After the rename, segments that end at or before the LSN and older snapshots are
   deleted (then the directory is fsynced): what they held is in the snapshot.
5. A snapshot is read back from the disk and checked whole after its fsync, before it
   may be published (so before the log it holds is deleted). A snapshot under its
   final name that fails a check is ``WalCorruption`` naming the file and offset: it
   was complete once, so damage is not a torn write; ``salvage_snapshot`` keeps its
   records that are still whole. A version
   this build cannot read is ``WalVersionError`` (a subclass): not damage.
   ``*.snap.tmp`` leftovers are incomplete by definition and are removed.
6. Only names matching ``^\\d{20}\\.snap$`` are snapshots: recovery's ``*.damaged``
   files (see ``broker/recovery.py``) are never listed.
"""
from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from crc32c import crc32c

from .fileio import OPEN_READ, FileIO, read_all, write_all
from .record import RECORD_HEADER, RECORD_HEADER_SIZE, TYPE_SEEDS, encode_record, record_problem
from .segment import WalCorruption, WalVersionError, list_segments

SNAPSHOT_MAGIC = b"LGSNAP\r\n"
SNAPSHOT_VERSION = 1
SNAPSHOT_SUFFIX = ".snap"
#: Record type of the closing record; payload is ``>QQ`` (lsn, records before it).
SNAPSHOT_END = 255

_HEAD = struct.Struct(">8sIQ")
_CRC = struct.Struct(">I")
_END = struct.Struct(">QQ")
SNAPSHOT_HEADER_SIZE = _HEAD.size + _CRC.size
_NAME = re.compile(r"^(\d{20})\.snap$")
#: Bytes gathered before one write while writing a snapshot.
_WRITE_CHUNK = 1 << 20


def snapshot_name(lsn: int) -> str:
    return f"{lsn:020d}{SNAPSHOT_SUFFIX}"


def list_snapshots(io: FileIO, directory: str) -> list[tuple[int, str]]:
    """``(lsn, file name)`` of every snapshot in ``directory``, oldest first."""
    try:
        names = io.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), n) for n in names if (m := _NAME.match(n))]
    found.sort()
    return found


def snapshot_tmp_path(directory: str, lsn: int) -> str:
    """Where the snapshot at ``lsn`` is written before it is published."""
    return os.path.join(directory, snapshot_name(lsn) + ".tmp")


def write_snapshot_tmp(io: FileIO, directory: str, lsn: int,
                       records: Iterable[tuple[int, bytes]]) -> str:
    """Write ``records`` and the end record to ``<name>.tmp``, fsync it, then read it back
    and check it whole (``read_snapshot``); returns its path.

    On failure (``WalCorruption`` if the bytes read back are not what was written) the
    temp file is removed.

    Does not publish it: call :func:`publish_snapshot` once the log is durable to ``lsn``.
    """
    path = snapshot_tmp_path(directory, lsn)
    fd = io.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0))
    try:
        head = _HEAD.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, lsn)
        parts = [head + _CRC.pack(crc32c(head))]
        size = 0
        count = 0
        for rtype, payload in records:
            rec = encode_record(rtype, payload)
            parts.append(rec)
            size += len(rec)
            count += 1
            if size >= _WRITE_CHUNK:
                write_all(io, fd, b"".join(parts))
                parts, size = [], 0
        parts.append(encode_record(SNAPSHOT_END, _END.pack(lsn, count)))
        write_all(io, fd, b"".join(parts))
        io.fsync(fd)
        # Read it back from the disk, not the page cache, and check every record: a
        # snapshot replaces the log it holds, so it must be whole before it does.
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError):
            pass
        read_snapshot(io, path)
    except BaseException:
        io.close(fd)
        try:  # e.g. no room left for it: leave nothing behind
            io.unlink(path)
        except OSError:
            pass
        raise
    io.close(fd)
    return path


def publish_snapshot(io: FileIO, directory: str, tmp_path: str) -> str:
    """Rename a finished ``.tmp`` snapshot to its final name and fsync the directory."""
    final = tmp_path[: -len(".tmp")]
    io.rename(tmp_path, final)
    io.fsync_dir(directory)
    return final


def remove_obsolete(io: FileIO, directory: str, lsn: int) -> list[str]:
    """Delete segments ending at or before ``lsn`` and snapshots older than ``lsn``.

    The segment holding ``lsn`` (or starting at it) is kept. Returns the names removed.
    """
    removed: list[str] = []
    segments = list_segments(io, directory)
    for (base, name), (next_base, _) in zip(segments, segments[1:]):
        if next_base <= lsn:
            io.unlink(os.path.join(directory, name))
            removed.append(name)
    for snap_lsn, name in list_snapshots(io, directory):
        if snap_lsn < lsn:
            io.unlink(os.path.join(directory, name))
            removed.append(name)
    for name in io.listdir(directory):
        if name.endswith(SNAPSHOT_SUFFIX + ".tmp") and not name.startswith(snapshot_name(lsn)):
            io.unlink(os.path.join(directory, name))
            removed.append(name)
    if removed:
        io.fsync_dir(directory)
    return removed


def read_snapshot(io: FileIO, path: str) -> tuple[int, Iterator[tuple[int, bytes]]]:
    """The snapshot's LSN and its records; raises ``WalCorruption`` on any damage.

    The whole file is checked before the first record is handed out, so a caller
    never applies part of a damaged snapshot.
    """
    fd = io.open(path, OPEN_READ)
    try:
        data = read_all(io, fd, io.size(fd))
    finally:
        io.close(fd)
    if len(data) < SNAPSHOT_HEADER_SIZE:
        raise WalCorruption(path, 0, "snapshot header cut short")
    magic, version, lsn = _HEAD.unpack_from(data, 0)
    (crc,) = _CRC.unpack_from(data, _HEAD.size)
    if magic != SNAPSHOT_MAGIC or crc32c(data[: _HEAD.size]) != crc:
        raise WalCorruption(path, 0, "bad snapshot header")
    if version != SNAPSHOT_VERSION:
        raise WalVersionError(path, 0, f"snapshot version {version} is not readable by this build")
    offsets: list[tuple[int, int, int]] = []  # (type, start, end)
    off = SNAPSHOT_HEADER_SIZE
    n = len(data)
    while True:
        if off + RECORD_HEADER_SIZE > n:
            raise WalCorruption(path, off, "snapshot ends without its end record")
        length, stored, rtype = RECORD_HEADER.unpack_from(data, off)
        start = off + RECORD_HEADER_SIZE
        end = start + length
        if end > n or not rtype or crc32c(data[start:end], TYPE_SEEDS[rtype]) != stored:
            raise WalCorruption(path, off, record_problem(data, off) or "bad record in snapshot")
        if rtype == SNAPSHOT_END:
            end_lsn, count = _END.unpack_from(data, start)
            if end_lsn != lsn or count != len(offsets) or end != n:
                raise WalCorruption(path, off, "snapshot end record does not match its contents")
            break
        offsets.append((rtype, start, end))
        off = end

    def records() -> Iterator[tuple[int, bytes]]:
        for rtype, start, end in offsets:
            yield rtype, data[start:end]

    return lsn, records()


@dataclass(frozen=True, slots=True)
class Salvage:
    """What ``salvage_snapshot`` kept of a damaged snapshot."""

    #: The snapshot's LSN (from its header, or its name if the header is damaged).
    lsn: int
    #: Every record that is whole, in order (the end record left out).
    records: list[tuple[int, bytes]]
    #: Damaged records stepped over (each may hold up to 1,000 messages, or a queue's
    #: header), and whether the damage hid the rest of the file (a length field that
    #: leads nowhere): then every record after it is lost too.
    bad: int
    cut_at: int | None


def salvage_snapshot(data: bytes, path: str) -> Salvage:
    """The whole records of a damaged snapshot's bytes ``data``.

    Steps from record to record by their length fields; a damaged record is skipped if
    its length leads to a record that is whole (or to the end record), else the rest of
    the file is given up (``cut_at``). A header that fails its check is taken on trust
    for the layout only: the LSN comes from the file name. Raises ``WalVersionError``
    for a version this build cannot read, ``WalCorruption`` if the name is not a
    snapshot's.
    """
    m = _NAME.match(os.path.basename(path))
    if m is None:
        raise WalCorruption(path, 0, "not a snapshot file name")
    lsn = int(m.group(1))
    if len(data) >= SNAPSHOT_HEADER_SIZE:
        magic, version, head_lsn = _HEAD.unpack_from(data, 0)
        (crc,) = _CRC.unpack_from(data, _HEAD.size)
        if magic == SNAPSHOT_MAGIC and crc32c(data[: _HEAD.size]) == crc:
            if version != SNAPSHOT_VERSION:
                raise WalVersionError(path, 0, f"snapshot version {version} is not readable by this build")
            lsn = head_lsn
    records: list[tuple[int, bytes]] = []
    bad = 0
    off = SNAPSHOT_HEADER_SIZE
    n = len(data)
    while off + RECORD_HEADER_SIZE <= n:
        problem = record_problem(data, off)
        length, _, rtype = RECORD_HEADER.unpack_from(data, off)
        end = off + RECORD_HEADER_SIZE + length
        if problem is None:
            if rtype == SNAPSHOT_END:
                return Salvage(lsn, records, bad, None)
            records.append((rtype, data[off + RECORD_HEADER_SIZE:end]))
            off = end
            continue
        bad += 1
        if end + RECORD_HEADER_SIZE > n or record_problem(data, end) is not None:
            return Salvage(lsn, records, bad, off)
        off = end
    return Salvage(lsn, records, bad, off if off < n else None)
