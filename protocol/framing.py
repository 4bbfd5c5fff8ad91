"""Length-prefixed framing: a 4-byte big-endian unsigned length, then that many bytes.

The decoder checks the length against its limit *before* buffering the body, so a
peer cannot make it hold more than ``max_frame`` bytes plus one read.
"""
from __future__ import annotations

import struct

from .errors import ErrorCode, ProtocolError

#: Size of the length prefix in bytes.
HEADER_SIZE = 4
#: Default largest frame body a peer accepts (16 MiB).
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: The smallest ``max_frame`` a peer may announce (64 KiB).
MIN_MAX_FRAME = 64 * 1024
#: The largest body the 4-byte prefix can express.
ABSOLUTE_MAX_FRAME = 2**32 - 1

_HEADER = struct.Struct(">I")


def frame_bytes(body: bytes) -> bytes:
    """Prefix ``body`` with its length."""
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies.

    ``feed(data)`` buffers bytes (``b""`` is ignored); ``next_body()`` returns the next
    complete body or ``None`` when more bytes are needed. A length over ``max_frame``
    raises a fatal :class:`ProtocolError` (``FRAME_TOO_LARGE``) without buffering it.
    """

    __slots__ = ("max_frame", "_buf", "_pos")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a body."""
        return len(self._buf) - self._pos

    @property
    def missing(self) -> int:
        """Bytes still to come of the frame at the head of the buffer, by its length
        prefix: 0 when a whole frame is buffered or no length prefix is (nor checked
        against ``max_frame``)."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_SIZE:
            return 0
        length: int = _HEADER.unpack_from(buf, pos)[0]
        return max(0, pos + HEADER_SIZE + length - len(buf))

    @property
    def waiting(self) -> bool:
        """Whether ``next_body`` needs more bytes before it can return a body (or raise):
        less than a header is buffered, or part of a frame within the limit."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return True
        length: int = _HEADER.unpack_from(buf, pos)[0]
        return length <= self.max_frame and len(buf) - pos < HEADER_SIZE + length

    def next_body(self) -> bytearray | None:
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(buf, pos)
        if length > self.max_frame:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame of {length} bytes exceeds the limit of {self.max_frame} bytes",
                details={"limit": self.max_frame, "length": length},
            )
        end = pos + HEADER_SIZE + length
        if len(buf) < end:
            return None
        self._pos = end
        return buf[pos + HEADER_SIZE : end]  # a copy (bytearray); the buffer moves on
