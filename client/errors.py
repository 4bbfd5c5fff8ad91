"""Exceptions raised by the client.

A failed request raises the :class:`LockgateError` subclass for its wire
:class:`~protocol.ErrorCode` (exactly one class per code), built by the single factory
:meth:`LockgateError.from_code` / :func:`error_from_frame`. ``str(exc)`` is
``"CODE_NAME: message"``. A code this client does not know yields a plain
:class:`LockgateError` carrying the number.

:class:`ConnectionClosed` is different: no request failed on the server, the transport
went away (or was closed), so the outcome of requests in flight is unknown.
"""
from __future__ import annotations

from typing import Any, ClassVar

from protocol import Error as ErrorFrame
from protocol import ErrorCode


class LockgateError(Exception):
    """A request failed: ``code`` says why, ``details`` holds extra fields from the server."""

    #: The wire code; ``None`` only for :class:`ConnectionClosed`.
    code: ErrorCode | int | None = None
    _by_code: ClassVar[dict[int, type[LockgateError]]] = {}

    def __init__(self, message: str = "", details: dict[str, Any] | None = None, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details if details is not None else {}
        if code is not None:
            self.code = code

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code is not None:
            if code in LockgateError._by_code:
                raise TypeError(f"{code!r} already maps to {LockgateError._by_code[code].__name__}")
            LockgateError._by_code[code] = cls

    @classmethod
    def from_code(cls, code: int, message: str, details: dict[str, Any] | None = None) -> LockgateError:
        """The exception for wire ``code`` (a plain ``LockgateError`` when the code is unknown)."""
        sub = LockgateError._by_code.get(code)
        if sub is None:
            return LockgateError(message, details, code=code)
        return sub(message, details)

    @property
    def code_name(self) -> str:
        """The code's name, e.g. ``"QUEUE_NOT_FOUND"``."""
        code = self.code
        if isinstance(code, ErrorCode):
            return code.name
        return "CONNECTION_CLOSED" if code is None else f"ERROR_{code}"

    def __str__(self) -> str:
        return f"{self.code_name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.details!r})"


def error_from_frame(frame: ErrorFrame) -> LockgateError:
    """The exception for an ERROR frame."""
    return LockgateError.from_code(frame.code, frame.message, frame.details)


class ConnectionClosed(LockgateError):
    """The connection is gone (closed by either side, or lost); requests in flight have unknown outcome."""

    def __str__(self) -> str:
        return self.message


class MalformedFrame(LockgateError):
    """The server could not decode a frame; it closes the connection."""

    code = ErrorCode.MALFORMED_FRAME


class FrameTooLarge(LockgateError):
    """A frame exceeds the receiver's ``max_frame``.

    Raised locally, without sending, when a request would exceed the server's limit.
    """

    code = ErrorCode.FRAME_TOO_LARGE


class MalformedRequest(LockgateError):
    """The frame is msgpack but not a request array."""

    code = ErrorCode.MALFORMED_REQUEST


class HandshakeRequired(LockgateError):
    """A request other than ``hello`` came before the handshake."""

    code = ErrorCode.HANDSHAKE_REQUIRED


class UnsupportedVersion(LockgateError):
    """The server speaks none of the offered protocol versions."""

    code = ErrorCode.UNSUPPORTED_VERSION


class UnknownOp(LockgateError):
    """The server does not know the operation."""

    code = ErrorCode.UNKNOWN_OP


class InvalidArgument(LockgateError):
    """An argument is missing, of the wrong type or out of range; ``field`` names it."""

    code = ErrorCode.INVALID_ARGUMENT

    @property
    def field(self) -> str | None:
        return self.details.get("field")


class QueueNotFound(LockgateError):
    """The named queue does not exist; ``field`` is ``"queue"`` or ``"dead_letter"``."""

    code = ErrorCode.QUEUE_NOT_FOUND

    @property
    def field(self) -> str | None:
        return self.details.get("field")

    @property
    def queue(self) -> str | None:
        return self.details.get("queue")


class QueueExists(LockgateError):
    """A queue of that name exists with different settings."""

    code = ErrorCode.QUEUE_EXISTS


class MessageTooLarge(LockgateError):
    """A body exceeds the server's ``max_message``; ``index`` is its position in the batch."""

    code = ErrorCode.MESSAGE_TOO_LARGE

    @property
    def index(self) -> int | None:
        return self.details.get("index")


class LimitExceeded(LockgateError):
    """A count limit was hit (batch size, number of queues, waiters)."""

    code = ErrorCode.LIMIT_EXCEEDED


class QueueFull(LockgateError):
    """Publishing would take the queue past its ``max_messages``; nothing was published."""

    code = ErrorCode.QUEUE_FULL


class WrongNode(LockgateError):
    """The shard lives on another node; ``addr`` says where."""

    code = ErrorCode.WRONG_NODE

    @property
    def addr(self) -> str | None:
        return self.details.get("addr")


class StorageError(LockgateError):
    """The server could not make the change durable; nothing was confirmed."""

    code = ErrorCode.STORAGE_ERROR


class DiskFull(LockgateError):
    """The server's disk has no room for the change; it had no effect. Retry later."""

    code = ErrorCode.DISK_FULL


class TooManyConnections(LockgateError):
    """The broker serves its limit of connections (``limit``), or the user (``user``) has
    its limit open, and closed this one; try again later. Arrives as the cause of the
    :class:`ConnectionClosed` that follows (or, at authentication, from ``connect``)."""

    code = ErrorCode.TOO_MANY_CONNECTIONS

    @property
    def limit(self) -> int | None:
        return self.details.get("limit")

    @property
    def user(self) -> str | None:
        """The user over its ``max_connections_per_user``; None for the broker's limit."""
        return self.details.get("user")


class ConnectionTimeout(LockgateError):
    """The broker closed the connection: no ``hello``, no request or an unfinished frame for
    too long (``timeout``: ``"handshake"``, ``"idle"`` or ``"frame"``; ``limit_ms``).
    Arrives as the cause of the :class:`ConnectionClosed` that follows."""

    code = ErrorCode.CONNECTION_TIMEOUT

    @property
    def timeout(self) -> str | None:
        return self.details.get("timeout")


class TxnConflict(LockgateError):
    """A ``txn`` acked messages that are no longer leased (``queue``, ``ids``; ``step``):
    nothing of the transaction was applied. Their leases ran out and another consumer may
    have them: drop the work rather than retry it."""

    code = ErrorCode.TXN_CONFLICT


class Unauthenticated(LockgateError):
    """The broker requires authentication and this connection has not authenticated:
    connect with ``user=``/``password=`` or ``token=``."""

    code = ErrorCode.UNAUTHENTICATED


class AuthFailed(LockgateError):
    """Authentication failed: unknown user or token, wrong password, or too many failures
    from this address (``retry_after_ms``). The broker closes the connection. Also raised
    by the client itself when the broker's SCRAM signature does not match, or a broker
    that does not authenticate is given credentials."""

    code = ErrorCode.AUTH_FAILED

    @property
    def retry_after_ms(self) -> int | None:
        return self.details.get("retry_after_ms")


class PermissionDenied(LockgateError):
    """The user may not do this: ``permission`` (``publish``, ``consume`` or ``admin``)
    on ``resource`` (a queue or topic name) is not granted to ``user``."""

    code = ErrorCode.PERMISSION_DENIED

    @property
    def permission(self) -> str | None:
        return self.details.get("permission")

    @property
    def resource(self) -> str | None:
        return self.details.get("resource")


class MemoryLimit(LockgateError):
    """The broker is near its memory budget and closed this connection, whose frame under
    way would have taken it past its share (``limit`` bytes). Retry later, with smaller
    frames if you can. Arrives as the cause of the :class:`ConnectionClosed` that follows."""

    code = ErrorCode.MEMORY_LIMIT

    @property
    def limit(self) -> int | None:
        return self.details.get("limit")


class ShuttingDown(LockgateError):
    """The server is shutting down and accepts no new work."""

    code = ErrorCode.SHUTTING_DOWN


class InternalError(LockgateError):
    """An unexpected server fault; the request had no effect."""

    code = ErrorCode.INTERNAL_ERROR


__all__ = [
    "AuthFailed", "ConnectionClosed", "ConnectionTimeout", "DiskFull", "FrameTooLarge", "HandshakeRequired", "InternalError",
    "InvalidArgument", "LimitExceeded", "LockgateError", "MalformedFrame", "MemoryLimit", "MalformedRequest", "MessageTooLarge",
    "PermissionDenied", "QueueExists", "QueueFull", "QueueNotFound", "ShuttingDown", "StorageError", "TooManyConnections", "TxnConflict",
    "Unauthenticated", "UnknownOp", "UnsupportedVersion", "WrongNode", "error_from_frame",
]
