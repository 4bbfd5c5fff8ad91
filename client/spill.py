"""A bounded local spill file: publishes kept on disk while the broker is unreachable.

    spill = Spill("/var/lib/orders/lockgate.spill", max_bytes=64 << 20)
    async with Client.connect(addr, reconnect=True, spill=spill) as client:
        msg_id = await client.publish_or_spill("orders", Message(b"...", key=b"c-42"))
        # msg_id is None: the message is in the spill file and goes out when the broker is back

How it works:

- ``publish_or_spill`` publishes at once when the connection is up and the spill file is
  empty. Otherwise (the broker is unreachable, or the connection is lost before the
  reply) it appends the message to the spill file and returns ``None``. While the file
  holds messages, new ones are appended behind them, so the spilled messages and the
  later ones reach each queue in the order they were given.
- Every spilled message carries a dedup id (its own, or one made for it). A task of the
  client sends the file's messages, in order, in batches (consecutive messages to one
  queue, at most the broker's ``max_batch``), one batch at a time, whenever a connection
  is up; after the broker confirms a batch the file records that it was sent. A batch
  whose confirmation was lost (the connection went, or the client crashed before it
  recorded it) is sent again, and the broker stores none of it twice within the queue's
  dedup window (SPEC.md §8.9).
- A batch refused for a reason that may pass (``DISK_FULL``, ``QUEUE_FULL``,
  ``STORAGE_ERROR``, ``SHUTTING_DOWN``) is sent again after a backoff. One refused for
  good (the queue does not exist, a message is too large or malformed) is sent message
  by message, and each message the broker refuses is dropped from the file and logged
  (logger ``lockgate.client``, event ``spill_dropped``) and counted in
  ``client.spill_dropped``.

The file: a 16-byte header (``LGSPILL1``, then the offset up to which messages were
sent, u64 little-endian), then records ``[u32 length][u32 CRC-32][msgpack [queue,
entry]]``. It is created with mode 0600 (it holds message bodies), locked (``flock``)
by the one client that uses it, and emptied (truncated) once everything was sent. When
the file would grow past ``max_bytes`` the part already sent is cut off (the rest is
copied to a new file, fsynced and renamed over it).

What can be lost, and when:

- **The spill file is full:** ``publish_or_spill`` raises :class:`SpillFull`; that
  message was not kept (nothing else is lost). Messages count by their encoded size plus
  8 bytes; the header 16.
- **With ``fsync=True``** (the default) a message is fdatasynced before
  ``publish_or_spill`` returns, one fdatasync per message (spilling is the slow path,
  taken while the broker is away). A crash of the client or of the machine loses
  nothing it returned for.
- **With ``fsync=False``** the write goes to the OS only: a crash of the client process
  loses nothing, a power cut or OS crash may lose the messages spilled since the OS last
  wrote the file, and the record of what was sent (those are then sent again; the dedup
  ids keep the broker from storing them twice within the dedup window).
- **A damaged file:** at open, records after the first one that is cut short or fails
  its CRC are dropped (a torn last write), with a warning naming how many bytes went.
- **Duplicates** are possible only past the dedup window: a batch the broker stored,
  whose confirmation the client did not record before it crashed, sent again by a
  client started after the queue's ``dedup_window_ms`` (5 minutes unless set) has
  passed, or to a queue with ``dedup_window_ms=0``.
- **Leaving the client** does not wait for the file to drain (``await
  client.drain_spill()`` does); what is left is sent by the next client that opens the
  same file.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from .errors import LockgateError

logger = logging.getLogger("lockgate.client")

MAGIC = b"LGSPILL1"
#: Bytes of the header: magic, then the offset up to which messages were sent.
HEADER = 16
_RECORD = struct.Struct("<II")
#: Smallest ``max_bytes``: room for the header and a few small messages.
MIN_BYTES = 4096


class SpillFull(LockgateError):
    """``publish_or_spill`` had to spill and the spill file had no room: the message was
    not kept."""

    @property
    def code_name(self) -> str:
        return "SPILL_FULL"

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Spill:
    """Where and how a client spills publishes (see the module docstring)."""

    #: The spill file (created if missing; its directory must exist).
    path: str | os.PathLike[str]
    #: Largest size of the file, header included (at least 4096).
    max_bytes: int = 64 * 1024 * 1024
    #: fdatasync each spilled message before ``publish_or_spill`` returns.
    fsync: bool = True

    def __post_init__(self) -> None:
        if type(self.max_bytes) is not int or self.max_bytes < MIN_BYTES:
            raise ValueError(f"max_bytes must be an int >= {MIN_BYTES}, not {self.max_bytes!r}")


@dataclass(frozen=True, slots=True)
class Pending:
    """A spilled message not yet confirmed: its queue, publish entry and where its record ends."""

    queue: str
    entry: list[Any]
    end: int


class SpillFile:
    """The spill file itself: synchronous file I/O (the client runs it in a worker thread)."""

    def __init__(self, spill: Spill) -> None:
        self.path = Path(spill.path)
        self.max_bytes = spill.max_bytes
        self.fsync = spill.fsync
        #: Messages in the file not yet confirmed, in order.
        self.pending: deque[Pending] = deque()
        #: Bytes dropped at open because the file's tail was damaged.
        self.damaged_bytes = 0
        self._fd = self._open_locked(self.path)
        try:
            self._load()
        except BaseException:
            os.close(self._fd)
            raise

    # --- opening -------------------------------------------------------------------

    @staticmethod
    def _open_locked(path: Path) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RuntimeError(f"spill file {path} is in use by another client") from None
            raise
        return fd

    def _load(self) -> None:
        data = _read_all(self._fd)
        if not data:
            self._write_header(HEADER, new=True)
            self.size = self.done = HEADER
            return
        if len(data) < HEADER or data[:8] != MAGIC:
            raise ValueError(f"{self.path} is not a lockgate spill file")
        done = int.from_bytes(data[8:16], "little")
        pos = HEADER
        good = HEADER
        while pos + _RECORD.size <= len(data):
            length, crc = _RECORD.unpack_from(data, pos)
            body = data[pos + _RECORD.size:pos + _RECORD.size + length]
            if len(body) < length or zlib.crc32(body) != crc:
                break
            pos += _RECORD.size + length
            if pos > done:
                queue, entry = msgpack.unpackb(body, raw=False)
                self.pending.append(Pending(queue, entry, pos))
            good = pos
        if good < len(data):
            self.damaged_bytes = len(data) - good
            logger.warning("lockgate: spill file %s: dropped %d damaged bytes at its end", self.path,
                           self.damaged_bytes, extra={"event": "spill_damaged", "bytes": self.damaged_bytes})
            os.ftruncate(self._fd, good)
        self.size = good
        self.done = min(max(done, HEADER), good)
        if not self.pending and self.size > HEADER:
            self._empty()

    # --- writing -------------------------------------------------------------------

    def append(self, queue: str, entry: list[Any]) -> None:
        """Add one message at the end (fdatasynced if the spill says so); raises
        :class:`SpillFull` when it does not fit."""
        body = msgpack.packb([queue, entry], use_bin_type=True)
        record = _RECORD.pack(len(body), zlib.crc32(body)) + body
        if self.size + len(record) > self.max_bytes and self.done > HEADER:
            self._compact()
        if self.size + len(record) > self.max_bytes:
            raise SpillFull(f"spill file {self.path} is full ({self.size} of {self.max_bytes} bytes); "
                            f"the message to {queue} was not kept")
        _write_at(self._fd, record, self.size)
        if self.fsync:
            os.fdatasync(self._fd)
        self.size += len(record)
        self.pending.append(Pending(queue, entry, self.size))

    def batch(self, max_count: int, max_bytes: int) -> list[Pending]:
        """The next messages to send as one publish: the first pending message and those
        after it to the same queue, at most ``max_count`` and about ``max_bytes``."""
        out: list[Pending] = []
        size = 0
        queue = self.pending[0].queue if self.pending else None
        for p in self.pending:
            n = _entry_size(p.entry)
            if p.queue != queue or len(out) >= max_count or (out and size + n > max_bytes):
                break
            out.append(p)
            size += n
        return out

    def confirm(self, count: int) -> None:
        """The first ``count`` pending messages are done (the broker confirmed them, or
        refused them for good): record it."""
        if not 0 < count <= len(self.pending):
            raise ValueError(f"cannot confirm {count} of {len(self.pending)} pending messages")
        for _ in range(count):
            last = self.pending.popleft()
        self.done = last.end
        if not self.pending:
            self._empty()
        else:
            self._write_header(self.done)

    def _empty(self) -> None:
        """Everything was sent: cut the file back to its header."""
        self._write_header(HEADER)
        os.ftruncate(self._fd, HEADER)
        if self.fsync:
            os.fdatasync(self._fd)
        self.size = self.done = HEADER

    def _write_header(self, done: int, *, new: bool = False) -> None:
        _write_at(self._fd, MAGIC + done.to_bytes(8, "little"), 0)
        if self.fsync or new:
            os.fdatasync(self._fd)

    def _compact(self) -> None:
        """Drop the part already sent: copy the rest to a new file and rename it over."""
        shift = self.done - HEADER
        tail = os.pread(self._fd, self.size - self.done, self.done)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_at(fd, MAGIC + HEADER.to_bytes(8, "little") + tail, 0)
            os.fsync(fd)
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd
        self.size -= shift
        self.done = HEADER
        self.pending = deque(Pending(p.queue, p.entry, p.end - shift) for p in self.pending)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _entry_size(entry: list[Any]) -> int:
    return sum(len(x) for x in entry if isinstance(x, (bytes, bytearray))) + 24


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["HEADER", "MAGIC", "Pending", "Spill", "SpillFile", "SpillFull"]
