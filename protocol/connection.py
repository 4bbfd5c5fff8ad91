"""A sans-IO connection: feed received bytes in, take frames out, turn frames into bytes.

Either side can use it: ``role="server"`` parses requests, ``role="client"`` parses
replies, errors and pushes. Decoding errors surface as :class:`ProtocolError`; a fatal
one (framing lost) leaves the connection broken and every later call raises it again
(a copy of it).
"""
from __future__ import annotations

from typing import Any, Literal

from msgpack import unpackb

from .codec import Encoder, parse_request, parse_server_frame, unpack_body
from .errors import ProtocolError
from .frames import Error, Frame, Push, Reply, Request
from .framing import DEFAULT_MAX_FRAME, FrameDecoder


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`Connection.next_frame` when no whole frame is buffered.
NEED_DATA: Any = _NeedData()


def _copy(exc: ProtocolError) -> ProtocolError:
    """The same error, without a traceback or context."""
    return ProtocolError(exc.code, exc.message, request_id=exc.request_id, details=exc.details)


class Connection:
    """Buffers bytes and yields frames for one side of a connection."""

    def __init__(self, role: Literal["client", "server"], max_frame: int = DEFAULT_MAX_FRAME,
                 encoder: Encoder | None = None) -> None:
        self.role = role
        self._decoder = FrameDecoder(max_frame)
        self._next_body = self._decoder.next_body
        self._parse = parse_request if role == "server" else parse_server_frame
        # An encoder holds a packer buffer (256 KiB reserved, more after a big frame): a
        # server with many connections in one thread shares one.
        self._encoder = encoder if encoder is not None else Encoder()
        self._broken: ProtocolError | None = None

    @property
    def max_frame(self) -> int:
        """Largest frame body this side accepts."""
        return self._decoder.max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._decoder.max_frame = value

    def receive_data(self, data: bytes | bytearray) -> None:
        self._decoder.feed(data)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame (part of the next frame, or
        whole frames not yet taken)."""
        return self._decoder.buffered

    @property
    def missing(self) -> int:
        """Bytes still to come of the frame at the head of the buffer (0: none known)."""
        return self._decoder.missing

    @property
    def waiting(self) -> bool:
        """Whether ``next_frame`` would return ``NEED_DATA``: no whole frame (and no error)
        is buffered."""
        return self._broken is None and self._decoder.waiting

    def next_frame(self) -> Request | Reply | Error | Push | Any:
        """The next whole frame, or ``NEED_DATA``."""
        broken = self._broken
        if broken is not None:
            raise _copy(broken)
        try:
            body = self._next_body()
            if body is None:
                return NEED_DATA
            try:
                obj = unpackb(body, raw=False)
            except Exception:  # msgpack raises several unrelated types
                obj = unpack_body(body)  # raises MALFORMED_FRAME with the reason
            return self._parse(obj)
        except ProtocolError as exc:
            if exc.fatal:
                # A copy: the raised error's traceback holds this frame and so this
                # connection, a cycle that would keep the connection (and whatever its
                # caller's frames hold) alive until the cyclic collector runs.
                self._broken = _copy(exc)
            raise

    def frames(self) -> list[Frame]:
        """All whole frames buffered now (stops at, and raises, the first error)."""
        out: list[Frame] = []
        while True:
            frame = self.next_frame()
            if frame is NEED_DATA:
                return out
            out.append(frame)

    def send(self, frame: Frame) -> bytes:
        """The wire bytes for ``frame``."""
        return self._encoder.encode(frame)

    @property
    def encoder(self) -> Encoder:
        return self._encoder
