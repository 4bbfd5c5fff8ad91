"""Read the log back: every valid record, in LSN order, into ``apply``.

Rules:
1. Segments are read in file-name order; each must start at the LSN where the one
   before it ends, and its header must be intact and of a readable version.
   Otherwise: ``WalCorruption``.
2. Only the last segment may have a torn tail (``SegmentedLog`` fdatasyncs a segment
   before creating its successor). Any bad record in a sealed segment is
   ``WalCorruption``.
3. In the last segment, the first bad record is a torn tail when it
   a. is cut short: fewer than 9 header bytes left, or its payload runs past the end
      of the file (or its length exceeds ``MAX_PAYLOAD``);
   b. has a zero-filled header (preallocated or never-written space);
   c. has a 512-byte-aligned piece of its payload that is all zeros (a sector that
      never reached the disk, as a power cut leaves it); or
   d. has a bad CRC and no valid record follows it: walking on by the length fields
      from its end reaches no record whose CRC matches.
4. It is ``WalCorruption`` instead when the damage is provably not a torn write: a
   single flipped bit in its length, type or CRC field explains the mismatch, or a
   valid record follows it (and 3a-3c do not hold).
5. A torn tail is truncated away (``ftruncate`` + ``fsync``), logged as a warning on
   ``lockgate.wal`` with the segment, offset and bytes dropped, and reported. Records
   before it are kept; nothing after it is ever applied.
6. A last segment shorter than its 24-byte header holds no record (a crash between
   create and rename cannot leave one; a file system that lost the header might): it
   is replaced by an empty segment with the same base and reported as truncated at
   offset 0.
7. ``*.tmp`` and other non-segment files are ignored (``SegmentedLog.open`` removes
   leftover ``*.wal.tmp``). A missing or empty directory is an empty log.
8. ``apply(type, payload)`` is called once per valid record; an exception from it
   propagates with a note naming the segment and offset. Records are found and
   checked in batches of about ``BATCH_BYTES`` of log, then applied in order.
9. With ``from_lsn`` (the LSN of a snapshot) replay starts at that record boundary:
   segments that end at or before it are not read, and the segment holding it is read
   from there. A log that starts after ``from_lsn`` or ends before it is
   ``WalCorruption``: the snapshot and the log do not meet.
10. With ``offload`` instead of ``apply``, each batch goes through
    ``offload.apply(offload.fold(types, payloads))``, in log order. With at least
    ``offload.min_bytes`` to replay, a helper process finds and checks the records
    and runs ``fold`` for some of the batches (``offload.py``). Rules 1-9 are decided
    here exactly as without it, and the same records are applied.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from crc32c import crc32c

from .fileio import OPEN_READ, OPEN_WRITE, FileIO, read_all
from .offload import Helper, Offload, ReplayHelperError
from .record import (
    MAX_PAYLOAD,
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    TYPE_SEEDS,
    record_problem,
)
from .segment import (
    SEGMENT_HEADER_SIZE,
    WalCorruption,
    create_segment,
    decode_header,
    list_segments,
)

__all__ = ["BATCH_BYTES", "Offload", "ReplayHelperError", "ReplayReport", "WalCorruption",
           "not_torn_proof", "replay"]

logger = logging.getLogger("lockgate.wal")

#: Granularity of the zero-piece torn-write check (rule 3c).
SECTOR = 512
#: Log bytes found and checked before they are applied (at least one record a batch).
BATCH_BYTES = 128 << 10

_unpack_from = RECORD_HEADER.unpack_from


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay read and what it dropped."""

    #: Segment files read.
    segments: int
    #: Valid records passed to ``apply``.
    records: int
    #: Bytes of those records (the LSN span replayed).
    bytes: int
    #: Bytes removed from the end of the last segment (0 when the tail was clean).
    truncated_bytes: int
    #: ``(segment file name, byte offset in it)`` where the torn tail began.
    truncated_at: tuple[str, int] | None
    seconds: float
    #: LSN just past the last valid record; where appending continues.
    end_lsn: int


def replay(directory: str | os.PathLike[str], apply: Callable[[int, bytes], object] | None = None,
           *, io: FileIO | None = None, truncate: bool = True, from_lsn: int = 0,
           offload: Offload | None = None) -> ReplayReport:
    """Call ``apply(type, payload)`` for every valid record in LSN order, or hand the
    records to ``offload`` in batches (rule 10); give one of the two.

    Raises ``WalCorruption`` (see the rules above). With ``truncate=False`` a torn
    tail is reported but left on disk (for offline tools). ``from_lsn`` skips the
    records a snapshot already holds (rule 9).
    """
    if (apply is None) == (offload is None):
        raise TypeError("replay takes either apply or offload")
    started = time.perf_counter()
    io = io if io is not None else FileIO()
    path = os.fspath(directory)
    try:
        segments = list_segments(io, path)
    except FileNotFoundError:
        segments = []
    if from_lsn:
        # Rule 9: drop segments that end at or before from_lsn (the next one starts there).
        while len(segments) > 1 and segments[1][0] <= from_lsn:
            segments.pop(0)
        if not segments or segments[0][0] > from_lsn:
            where = os.path.join(path, segments[0][1]) if segments else path
            raise WalCorruption(where, 0, f"the log does not reach back to LSN {from_lsn}, "
                                "where the snapshot ends")
    records = 0
    first = segments[0][0] if segments else 0
    end_lsn = first
    truncated_bytes = 0
    truncated_at: tuple[str, int] | None = None
    helper = None
    span = _span(path, segments, from_lsn) if offload is not None else 0
    if offload is not None and span >= offload.min_bytes:
        helper = Helper.start(len(segments), _reader(io, path, segments, from_lsn), _batches,
                              offload)
        logger.info("replaying %.1f MiB of log with a helper process (pid %d) reading it",
                    span / (1 << 20), helper.pid)
    try:
        for i, (base, name) in enumerate(segments):
            seg_path = os.path.join(path, name)
            last = i == len(segments) - 1
            if base != end_lsn:
                raise WalCorruption(
                    seg_path, 0, f"segment starts at LSN {base} but the log before it ends "
                    f"at LSN {end_lsn}")
            # With a helper reading the records, this process needs only the header,
            # and the bytes from the record where a scan stops short.
            head_only = SEGMENT_HEADER_SIZE if helper is not None else None
            data, size = _read_segment(io, seg_path, head_only)
            if size < SEGMENT_HEADER_SIZE and last:
                truncated_bytes, truncated_at = size, (name, 0)
                _warn(seg_path, 0, size, "segment header cut short")
                if truncate:
                    io.unlink(seg_path)
                    io.fsync_dir(path)
                    io.close(create_segment(io, path, base))
                break
            start = _records_start(data, size, seg_path, base, i, from_lsn)

            try:
                if helper is not None:
                    off, count = helper.scan(_batch_note)
                elif offload is not None:
                    off, count = _fold_and_apply(data, start, offload)
                else:
                    off, count = _apply_each(data, start, apply)  # type: ignore[arg-type]
            except BaseException as exc:
                exc.add_note(f"while replaying {seg_path}")
                raise
            records += count
            end_lsn = base + off - SEGMENT_HEADER_SIZE
            if i == 0 and from_lsn:
                first = from_lsn
            if off == size:
                continue
            if len(data) < size:
                data, size = _read_segment(io, seg_path)

            problem = record_problem(data, off)
            if not last:
                raise WalCorruption(seg_path, off, f"{problem} in a sealed segment")
            proof = not_torn_proof(data, off)
            if proof is not None:
                raise WalCorruption(seg_path, off, f"{problem}; {proof}")
            dropped = size - off
            truncated_bytes, truncated_at = dropped, (name, off)
            _warn(seg_path, off, dropped, problem or "bad record")
            if truncate:
                _truncate(io, seg_path, off)
    finally:
        if helper is not None:
            helper.close()

    return ReplayReport(
        segments=len(segments),
        records=records,
        bytes=end_lsn - first,
        truncated_bytes=truncated_bytes,
        truncated_at=truncated_at,
        seconds=time.perf_counter() - started,
        end_lsn=end_lsn,
    )


def _records_start(data: bytes, size: int, seg_path: str, base: int, index: int,
                   from_lsn: int) -> int:
    """Offset of the first record to read in segment ``index`` (``size`` bytes long,
    ``data`` at least its header); ``WalCorruption`` when its header is bad or it ends
    before ``from_lsn`` (rule 9)."""
    decode_header(data, seg_path, base)
    start = SEGMENT_HEADER_SIZE
    if index == 0 and from_lsn > base:
        start += from_lsn - base
        if start > size:
            raise WalCorruption(seg_path, size, f"the log ends before LSN {from_lsn}, "
                                "where the snapshot ends")
    return start


def _span(path: str, segments: list[tuple[int, str]], from_lsn: int) -> int:
    """Bytes a replay from ``from_lsn`` reads (by the files' sizes)."""
    total = 0
    for base, name in segments:
        try:
            total += os.path.getsize(os.path.join(path, name))
        except OSError:
            pass
    return total - max(0, from_lsn - segments[0][0]) if segments else 0


def _reader(io: FileIO, path: str, segments: list[tuple[int, str]],
            from_lsn: int) -> Callable[[int], tuple[bytes, int] | None]:
    """The helper's view of segment ``i``: its bytes and where its records start, or
    None where the parent stops before scanning it (rule 1 of ``offload``)."""
    def read(i: int) -> tuple[bytes, int] | None:
        base, name = segments[i]
        seg_path = os.path.join(path, name)
        data, size = _read_segment(io, seg_path)
        if size < SEGMENT_HEADER_SIZE:
            return None
        try:
            return data, _records_start(data, size, seg_path, base, i, from_lsn)
        except WalCorruption:
            return None
    return read


def _scan(data: bytes, off: int, until: int, add_type: Callable[[int], object],
          add_payload: Callable[[bytes], object]) -> int:
    """Collect the valid records from offset ``off`` on (``add_type(type)``,
    ``add_payload(payload)``); return the offset where the scan stopped.

    Stops at the first bad record (the stop offset equals ``len(data)`` if none) or at
    the first record boundary at or past ``until``. This loop is the replay hot path:
    keep it flat.
    """
    unpack = _unpack_from
    seeds = TYPE_SEEDS
    crc = crc32c
    n = len(data)
    limit = min(n - RECORD_HEADER_SIZE, until - 1)
    while off <= limit:
        length, stored, rtype = unpack(data, off)
        start = off + RECORD_HEADER_SIZE
        end = start + length
        payload = data[start:end]
        if end > n or not rtype or crc(payload, seeds[rtype]) != stored:
            break
        add_type(rtype)
        add_payload(payload)
        off = end
    return off


Batch = tuple[int, int, bytes, list[bytes]]


def _batches(data: bytes, off: int) -> Iterator[Batch]:
    """The valid records from ``off`` on in batches of about ``BATCH_BYTES``:
    ``(start, stop, types, payloads)``, ``types[i]`` the type of ``payloads[i]``.

    The last batch's ``stop`` is where the scan stopped (``off`` when no record is
    valid); only a batch that ends at ``BATCH_BYTES`` is followed by another.
    """
    while True:
        types = bytearray()
        payloads: list[bytes] = []
        start, until = off, off + BATCH_BYTES
        off = _scan(data, off, until, types.append, payloads.append)
        if payloads:
            yield start, off, bytes(types), payloads
        if off < until:  # a bad record or the end, not the batch's limit
            return


def _apply_each(data: bytes, off: int, apply: Callable[[int, bytes], object]) -> tuple[int, int]:
    """Rule 8: ``apply`` every valid record from ``off``; (stop offset, records)."""
    stop, count = off, 0
    for start, stop, types, payloads in _batches(data, off):
        for i, (rtype, payload) in enumerate(zip(types, payloads)):
            try:
                apply(rtype, payload)
            except BaseException as exc:
                at = start + sum(RECORD_HEADER_SIZE + len(p) for p in payloads[:i])
                exc.add_note(f"applying the record at offset {at}")
                raise
        count += len(payloads)
    return stop, count


def _fold_and_apply(data: bytes, off: int, offload: Offload) -> tuple[int, int]:
    """Rule 10 in this process: fold and apply each batch; (stop offset, records)."""
    stop, count = off, 0
    fold, apply = offload.fold, offload.apply
    for start, stop, types, payloads in _batches(data, off):
        try:
            apply(fold(types, payloads))
        except BaseException as exc:
            exc.add_note(_batch_note(start, stop))
            raise
        count += len(payloads)
    return stop, count


def _batch_note(start: int, stop: int) -> str:
    return f"applying the records at offsets {start} to {stop}"


def not_torn_proof(data: bytes, off: int) -> str | None:
    """Why the bad record at ``off`` cannot be a torn tail (rule 4), or ``None``."""
    n = len(data)
    if n - off < RECORD_HEADER_SIZE:
        return None
    length, stored, rtype = _unpack_from(data, off)
    if length == 0 and stored == 0 and rtype == 0:
        return None
    start = off + RECORD_HEADER_SIZE
    seed = TYPE_SEEDS[rtype]
    # A single flipped bit in the header, proven by the CRC.
    for bit in range(32):
        alt = length ^ (1 << bit)
        if (alt <= MAX_PAYLOAD and start + alt <= n
                and crc32c(data[start:start + alt], seed) == stored):
            return f"bit {bit} of the length field is flipped (true length {alt})"
    end = start + length
    if length > MAX_PAYLOAD or end > n:
        return None
    payload = data[start:end]
    actual = crc32c(payload, seed)
    diff = actual ^ stored
    if diff and not diff & (diff - 1):
        return "one bit of the CRC field is flipped"
    for alt_type in range(1, 256):
        if alt_type != rtype and crc32c(payload, TYPE_SEEDS[alt_type]) == stored:
            return f"the type byte is damaged (true type {alt_type})"
    if _has_zero_sector(data, start, end):
        return None
    # Walk on by the length fields, over plausible-but-bad records, to a valid one.
    pos = end
    while n - pos >= RECORD_HEADER_SIZE:
        if record_problem(data, pos) is None:
            return f"a valid record follows at offset {pos}"
        nlen, ncrc, ntype = _unpack_from(data, pos)
        if nlen == 0 and ncrc == 0 and ntype == 0:
            break
        pos += RECORD_HEADER_SIZE + nlen
    return None


def _has_zero_sector(data: bytes, start: int, end: int) -> bool:
    """Whether ``data[start:end]``, cut at ``SECTOR`` boundaries, has an all-zero piece."""
    pos = start
    while pos < end:
        stop = min(end, (pos // SECTOR + 1) * SECTOR)
        if not data[pos:stop].strip(b"\0"):
            return True
        pos = stop
    return False


def _read_segment(io: FileIO, path: str, limit: int | None = None) -> tuple[bytes, int]:
    """The segment's bytes (only the first ``limit`` when given) and its size."""
    fd = io.open(path, OPEN_READ)
    try:
        size = io.size(fd)
        return read_all(io, fd, size if limit is None else min(limit, size)), size
    finally:
        io.close(fd)


def _truncate(io: FileIO, path: str, length: int) -> None:
    fd = io.open(path, OPEN_WRITE)
    try:
        io.ftruncate(fd, length)
        io.fsync(fd)
    finally:
        io.close(fd)


def _warn(path: str, offset: int, dropped: int, why: str) -> None:
    logger.warning("torn tail in %s at offset %d: %s; dropping %d bytes",
                   path, offset, why, dropped)
