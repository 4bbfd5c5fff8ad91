"""Reading snapshot files in tests: where to damage one so that a known record is lost."""
from __future__ import annotations

import struct
from typing import Any

import msgpack

#: The snapshot record type of a queue's message rows (docs/wal.md).
MESSAGE_ROWS = 102
#: Bytes before a snapshot's first record, and before each record's payload.
FILE_HEADER, RECORD_HEADER = 24, 9


def middle_rows_record(snapshot: bytes) -> tuple[int, int, str, set[int]]:
    """The message-rows record nearest the middle of ``snapshot``: its offset, its
    payload's length, its queue and the ids of the messages it holds."""
    spans = []
    off = FILE_HEADER
    while off < len(snapshot):
        length, _, rtype = struct.unpack_from(">IIB", snapshot, off)
        if rtype == MESSAGE_ROWS:
            spans.append((off, length))
        off += RECORD_HEADER + length
    off, length = min(spans, key=lambda span: abs(span[0] - len(snapshot) // 2))
    queue, rows = msgpack.unpackb(snapshot[off + RECORD_HEADER:off + RECORD_HEADER + length], raw=False)
    ids: set[Any] = {row[0] for row in rows}
    return off, length, queue, ids
