"""msgpack <-> frames. Pure functions plus a reusable encoder; no I/O."""
from __future__ import annotations

import struct
from typing import Any, Callable

import msgpack

from .errors import ErrorCode, ProtocolError
from .frames import MAX_REQUEST_ID, Error, Frame, Push, Reply, Request
from .framing import frame_bytes

_REQUEST, _REPLY, _ERROR, _PUSH = 0, 1, 2, 3
_LENGTH = struct.Struct(">I").pack
_KNOWN_CODES = frozenset(int(c) for c in ErrorCode)


def unpack_body(body: bytes | bytearray | memoryview) -> Any:
    """Decode one msgpack value that must fill ``body`` exactly.

    Raises a fatal ``MALFORMED_FRAME`` error when the bytes are not one valid value.
    """
    try:
        return msgpack.unpackb(body, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(
            ErrorCode.MALFORMED_FRAME, f"frame body is not valid msgpack: {exc}"
        ) from None


def _request_id(value: Any) -> int | None:
    if type(value) is int and 0 <= value <= MAX_REQUEST_ID:
        return value
    return None


_new = object.__new__


def _slot_setter(cls: type, name: str) -> Callable[[object, Any], None]:
    """The ``__set__`` of slot ``name``'s descriptor on ``cls``: it stores straight into the
    slot, past a frozen dataclass's ``__setattr__``. Looked up once, at import."""
    setter: Callable[[object, Any], None] = vars(cls)[name].__set__
    return setter


_set_id, _set_op, _set_args = (_slot_setter(Request, name) for name in ("id", "op", "args"))


def _request(rid: int, op: str, args: dict[str, Any]) -> Request:
    """``Request(id=rid, op=op, args=args)``, built through its slots: the same frozen
    value at half the cost of the generated ``__init__`` (one is built per request)."""
    obj = _new(Request)
    _set_id(obj, rid)
    _set_op(obj, op)
    _set_args(obj, args)
    return obj


def parse_request(obj: Any) -> Request:
    """Turn a decoded body into a :class:`Request`, or raise ``MALFORMED_REQUEST``."""
    if type(obj) is not list or len(obj) != 4 or type(obj[0]) is not int or obj[0] != _REQUEST:
        rid = _request_id(obj[1]) if type(obj) is list and len(obj) > 1 else None
        raise ProtocolError(
            ErrorCode.MALFORMED_REQUEST,
            "a request is an array [0, id, op, args]",
            request_id=rid,
        )
    _, rid, op, args = obj
    if _request_id(rid) is None:
        raise ProtocolError(
            ErrorCode.MALFORMED_REQUEST,
            "request id must be an unsigned 64-bit integer",
            details={"field": "id"},
        )
    if type(op) is not str:
        raise ProtocolError(
            ErrorCode.MALFORMED_REQUEST, "op must be a string",
            request_id=rid, details={"field": "op"},
        )
    if type(args) is not dict:
        raise ProtocolError(
            ErrorCode.MALFORMED_REQUEST, "args must be a map",
            request_id=rid, details={"field": "args"},
        )
    return _request(rid, op, args)


_set_reply_id, _set_result = (_slot_setter(Reply, name) for name in ("id", "result"))


def _reply(rid: Any, result: dict[str, Any]) -> Reply:
    """``Reply(id=rid, result=result)`` built through its slots (as ``_request``)."""
    obj = _new(Reply)
    _set_reply_id(obj, rid)
    _set_result(obj, result)
    return obj


def parse_server_frame(obj: Any) -> Reply | Error | Push:
    """Turn a decoded body from the server into a frame (client side)."""
    if type(obj) is list and obj:
        kind = obj[0]
        n = len(obj)
        if kind == _REPLY and n == 3 and type(obj[2]) is dict:
            return _reply(obj[1], obj[2])
        if kind == _ERROR and n == 5 and type(obj[2]) is int and type(obj[4]) is dict:
            # A code this codebase does not know keeps its number (SPEC.md, "Error codes").
            code = ErrorCode(obj[2]) if obj[2] in _KNOWN_CODES else obj[2]
            return Error(id=obj[1], code=code, message=str(obj[3]), details=obj[4])
        if kind == _PUSH and n == 3 and type(obj[1]) is str and type(obj[2]) is dict:
            return Push(name=obj[1], payload=obj[2])
    raise ProtocolError(ErrorCode.MALFORMED_FRAME, "not a reply, error or push frame")


def frame_to_obj(frame: Frame) -> list[Any]:
    """The msgpack array for ``frame``."""
    if isinstance(frame, Request):
        return [_REQUEST, frame.id, frame.op, frame.args]
    if isinstance(frame, Reply):
        return [_REPLY, frame.id, frame.result]
    if isinstance(frame, Error):
        return [_ERROR, frame.id, int(frame.code), frame.message, frame.details]
    if isinstance(frame, Push):
        return [_PUSH, frame.name, frame.payload]
    raise TypeError(f"not a frame: {frame!r}")


class Encoder:
    """Encodes frames to wire bytes (length prefix included) with a reused packer.

    Not thread-safe: give each connection its own.
    """

    __slots__ = ("_pack",)

    def __init__(self) -> None:
        self._pack: Callable[[object], bytes] = msgpack.Packer(use_bin_type=True).pack

    def encode(self, frame: Frame) -> bytes:
        return frame_bytes(self._pack(frame_to_obj(frame)))

    def request(self, rid: int, op: str, args: dict[str, Any]) -> bytes:
        return frame_bytes(self._pack([_REQUEST, rid, op, args]))

    def reply(self, rid: int, result: dict[str, Any]) -> bytes:
        body = self._pack([_REPLY, rid, result])
        return _LENGTH(len(body)) + body

    def error(
        self, rid: int | None, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> bytes:
        return frame_bytes(self._pack([_ERROR, rid, int(code), message, details or {}]))

    def push(self, name: str, payload: dict[str, Any]) -> bytes:
        return frame_bytes(self._pack([_PUSH, name, payload]))


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame (length prefix included)."""
    return Encoder().encode(frame)


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one whole frame, length prefix included (for tests and tools)."""
    from .framing import HEADER_SIZE

    if len(data) < HEADER_SIZE or int.from_bytes(data[:HEADER_SIZE], "big") != len(data) - HEADER_SIZE:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "length prefix does not match the data")
    obj = unpack_body(data[HEADER_SIZE:])
    if type(obj) is list and obj and obj[0] == _REQUEST:
        return parse_request(obj)
    return parse_server_frame(obj)
