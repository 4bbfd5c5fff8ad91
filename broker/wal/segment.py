"""Segment files: names, the 24-byte header, creation, listing.

A segment is ``{base:020d}.wal``: a header, then whole records back to back. ``base``
is the LSN of the segment's first record (see ``broker.wal.log``), so ``ls`` lists the
segments in log order. A file still being created carries ``.tmp`` after that name.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from crc32c import crc32c

from .fileio import OPEN_CREATE, FileIO, write_all

__all__ = [
    "READABLE_VERSIONS",
    "SEGMENT_HEADER_SIZE",
    "SEGMENT_MAGIC",
    "SEGMENT_SUFFIX",
    "TEMP_SUFFIX",
    "WAL_VERSION",
    "SegmentHeader",
    "WalCorruption",
    "WalVersionError",
    "create_segment",
    "decode_header",
    "encode_header",
    "list_segments",
    "segment_base",
    "segment_name",
]

#: Version written into every new segment's header. It covers the segment and record
#: layout and the meaning of every record type's payload.
#:
#: Bumping it (when old readers would misread new segments):
#: 1. Raise ``WAL_VERSION`` and describe the change under "Versions" in docs/wal.md.
#: 2. Keep reading the old version: leave it in ``READABLE_VERSIONS`` and, where the
#:    payloads changed, convert old payloads in replay so ``apply`` only ever sees
#:    the current form (as beanstalkd keeps ``readrec5``).
#: 3. Never append to an old-version segment: ``SegmentedLog.open`` starts a new
#:    segment when the last one has another version, so each segment is one version.
#: 4. Commit a small segment written by the old version under tests/ and a test that
#:    replays it.
WAL_VERSION: int = 1
#: Versions this build can replay.
READABLE_VERSIONS: frozenset[int] = frozenset({1})

#: First 8 bytes of every segment (PNG-style: catches text-mode and 7-bit mangling).
SEGMENT_MAGIC = b"LGWAL\r\n\x1a"
SEGMENT_SUFFIX = ".wal"
TEMP_SUFFIX = ".tmp"

# magic, version, base, then crc32c of the 20 bytes before it
_HEAD = struct.Struct(">8sIQ")
_CRC = struct.Struct(">I")
#: Bytes before the first record (24).
SEGMENT_HEADER_SIZE: int = _HEAD.size + _CRC.size

_NAME = re.compile(r"^(\d{20})\.wal$")


class WalCorruption(Exception):
    """The log holds damage that is not a torn tail; nothing after it can be trusted.

    Raised by replay for a bad record in a sealed segment, a bad record followed by a
    valid one, a bad segment header or a gap between segments. ``path`` names the
    segment file and ``offset`` the byte offset in it where the damage starts.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class WalVersionError(WalCorruption):
    """A segment was written with a ``WAL_VERSION`` this build cannot read."""


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """The decoded header of one segment."""

    version: int
    base: int


def segment_name(base: int) -> str:
    """File name of the segment whose first record has LSN ``base``."""
    return f"{base:020d}{SEGMENT_SUFFIX}"


def segment_base(name: str) -> int | None:
    """The base LSN a segment file name carries, or ``None`` if it is not one."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def encode_header(base: int, version: int | None = None) -> bytes:
    """The header of a segment at ``base`` (``version`` defaults to ``WAL_VERSION``)."""
    head = _HEAD.pack(SEGMENT_MAGIC, WAL_VERSION if version is None else version, base)
    return head + _CRC.pack(crc32c(head))


def decode_header(data: bytes, path: str, expected_base: int) -> SegmentHeader:
    """Check the first ``SEGMENT_HEADER_SIZE`` bytes of ``data``; raise ``WalCorruption``."""
    if len(data) < SEGMENT_HEADER_SIZE:
        raise WalCorruption(path, 0, f"segment header cut short ({len(data)} bytes)")
    magic, version, base = _HEAD.unpack_from(data, 0)
    (crc,) = _CRC.unpack_from(data, _HEAD.size)
    if magic != SEGMENT_MAGIC:
        raise WalCorruption(path, 0, f"bad segment magic {magic!r}")
    if crc32c(data[:_HEAD.size]) != crc:
        raise WalCorruption(path, 0, "segment header CRC mismatch")
    if version not in READABLE_VERSIONS:
        raise WalVersionError(
            path, 0, f"segment version {version} is not readable by this build "
            f"(reads {sorted(READABLE_VERSIONS)})")
    if base != expected_base:
        raise WalCorruption(path, 0, f"header base {base} does not match the file name")
    return SegmentHeader(version, base)


def list_segments(io: FileIO, directory: str) -> list[tuple[int, str]]:
    """``(base, file name)`` of every segment in ``directory``, in log order."""
    found = []
    for name in io.listdir(directory):
        base = segment_base(name)
        if base is not None:
            found.append((base, name))
    found.sort()
    return found


def create_segment(io: FileIO, directory: str, base: int, prealloc: int = 0, *,
                   replace: bool = False) -> int:
    """Create an empty segment durably and return an fd open for appending to it.

    The header is written to ``<name>.tmp``, ``prealloc`` bytes after it are reserved
    (``FileIO.preallocate``; the file's size stays the header's), the file is fsynced,
    renamed to its final name and the directory fsynced, so a segment under its final
    name always has a whole header and its directory entry survives a power cut. On
    any failure the temp file is removed and nothing is left behind. An existing
    segment of that name is an error unless ``replace``.
    """
    name = segment_name(base)
    path = os.path.join(directory, name)
    if not replace and io.exists(path):
        raise FileExistsError(f"segment {path} already exists")
    tmp = path + TEMP_SUFFIX
    fd = io.open(tmp, OPEN_CREATE)
    try:
        write_all(io, fd, encode_header(base))
        if prealloc > 0:
            io.preallocate(fd, SEGMENT_HEADER_SIZE, prealloc)
        io.fsync(fd)
        io.rename(tmp, path)
    except BaseException:
        io.close(fd)
        try:
            io.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        io.fsync_dir(directory)
    except BaseException:
        io.close(fd)
        raise
    return fd
