"""One WAL record: ``[u32 BE length][u32 BE crc32c][u8 type][payload]``.

Rules:
1. ``length`` counts the payload only; the record occupies
   ``RECORD_HEADER_SIZE + length`` bytes.
2. ``crc32c`` is CRC-32C (Castagnoli) over the type byte followed by the payload,
   i.e. over the record's bytes from offset 8 to its end.
3. Type 0 is never written, so zero-filled space (preallocated or torn) is never a
   valid record. Types 1-255 belong to the caller (``broker.mutations.MutationType``);
   the WAL does not interpret them.
4. ``length`` never exceeds ``MAX_PAYLOAD``; a larger value is garbage, not a record.
5. A record is valid only if its whole header and payload are present and the CRC
   matches. Nothing is ever read from a record that is not valid.
6. The record layout itself carries no version; the segment header's ``WAL_VERSION``
   (``broker.wal.segment``) covers the layout and the meaning of every payload in it.
"""
from __future__ import annotations

import struct

from crc32c import crc32c

__all__ = [
    "MAX_PAYLOAD",
    "RECORD_HEADER",
    "RECORD_HEADER_SIZE",
    "TYPE_SEEDS",
    "decode_record",
    "encode_record",
    "record_problem",
]

#: ``length``, ``crc32c``, ``type``.
RECORD_HEADER = struct.Struct(">IIB")
#: Bytes before the payload (9).
RECORD_HEADER_SIZE: int = RECORD_HEADER.size
#: Largest payload a record may carry (64 MiB).
MAX_PAYLOAD: int = 64 * 1024 * 1024

#: ``TYPE_SEEDS[t]`` is the CRC-32C of the single byte ``t``: continuing from it over
#: the payload gives the record's checksum without concatenating.
TYPE_SEEDS: tuple[int, ...] = tuple(crc32c(bytes((t,))) for t in range(256))

_pack = RECORD_HEADER.pack
_unpack_from = RECORD_HEADER.unpack_from


def encode_record(rtype: int, payload: bytes) -> bytes:
    """Frame ``payload`` as one record of type ``rtype`` (1-255)."""
    if not 0 < rtype < 256:
        raise ValueError(f"record type must be 1-255, got {rtype}")
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise ValueError(f"record payload of {n} bytes exceeds MAX_PAYLOAD ({MAX_PAYLOAD})")
    return _pack(n, crc32c(payload, TYPE_SEEDS[rtype]), rtype) + payload


def record_problem(buf: bytes, offset: int) -> str | None:
    """Why the bytes at ``offset`` are not a valid record, or ``None`` if they are."""
    left = len(buf) - offset
    if left < RECORD_HEADER_SIZE:
        return f"record header cut short ({left} of {RECORD_HEADER_SIZE} bytes)"
    length, crc, rtype = _unpack_from(buf, offset)
    if length == 0 and crc == 0 and rtype == 0:
        return "zero-filled record header"
    if rtype == 0:
        return "record type 0"
    if length > MAX_PAYLOAD:
        return f"record length {length} exceeds MAX_PAYLOAD"
    if length > left - RECORD_HEADER_SIZE:
        return (f"record cut short (payload of {length} bytes, "
                f"{left - RECORD_HEADER_SIZE} present)")
    start = offset + RECORD_HEADER_SIZE
    actual = crc32c(buf[start:start + length], TYPE_SEEDS[rtype])
    if actual != crc:
        return f"record CRC mismatch (stored {crc:#010x}, computed {actual:#010x})"
    return None


def decode_record(data: bytes) -> tuple[int, bytes]:
    """Return ``(type, payload)`` of the one record that fills ``data`` exactly."""
    problem = record_problem(data, 0)
    if problem is not None:
        raise ValueError(problem)
    length, _, rtype = _unpack_from(data, 0)
    if RECORD_HEADER_SIZE + length != len(data):
        raise ValueError(f"{len(data) - RECORD_HEADER_SIZE - length} bytes after the record")
    return rtype, data[RECORD_HEADER_SIZE:]
