"""Error codes carried on the wire, and the exception that carries one.

Codes are stable: a code's number and meaning never change once released. New codes
may be added; a client that meets an unknown code treats it as a generic error.
"""
from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    """Every error an ERROR frame can carry (see SPEC.md, "Error codes")."""

    #: The frame body is not one valid msgpack value. The connection is closed.
    MALFORMED_FRAME = 1
    #: The length prefix exceeds the receiver's maximum frame size. The connection is closed.
    FRAME_TOO_LARGE = 2
    #: The body is msgpack but not a request array ``[0, id, op, args]``.
    MALFORMED_REQUEST = 3
    #: An operation other than ``hello`` was sent before the handshake.
    HANDSHAKE_REQUIRED = 4
    #: ``hello`` offered no protocol version the server speaks.
    UNSUPPORTED_VERSION = 5
    #: The operation name is not known to the server.
    UNKNOWN_OP = 6
    #: An argument is missing, of the wrong type or out of range; ``details.field`` names it.
    INVALID_ARGUMENT = 7
    #: The named queue does not exist.
    QUEUE_NOT_FOUND = 8
    #: A queue of that name exists with different settings.
    QUEUE_EXISTS = 9
    #: A message body exceeds the server's ``max_message`` bytes.
    MESSAGE_TOO_LARGE = 10
    #: A request exceeds a documented count limit (batch size, queue count, waiters).
    LIMIT_EXCEEDED = 11
    #: Accepting the messages would take the queue past its ``max_messages``.
    QUEUE_FULL = 12
    #: The shard lives on another node; ``details.addr`` says where.
    WRONG_NODE = 13
    #: The write-ahead log could not make the change durable; nothing was confirmed.
    STORAGE_ERROR = 14
    #: The server is shutting down and accepts no new work.
    SHUTTING_DOWN = 15
    #: An unexpected server fault; the request had no effect.
    INTERNAL_ERROR = 16
    #: The disk has no room for the change (and the acks live messages may still
    #: need); it was refused and had no effect. Retry later.
    DISK_FULL = 17
    #: The broker serves its limit of connections; this one is closed. Id nil;
    #: ``details.limit``. Try again later.
    TOO_MANY_CONNECTIONS = 18
    #: The connection did not handshake, send a request or finish a frame in time and is
    #: closed. Id nil; ``details.timeout`` says which, ``details.limit_ms`` the limit.
    CONNECTION_TIMEOUT = 19
    #: A ``txn`` acks a message that is not leased any more (its lease ran out, or it
    #: was acked): nothing of the transaction was applied.
    TXN_CONFLICT = 20
    #: ``auth = "required"`` and the connection has not authenticated: only ``hello`` and
    #: ``auth`` are accepted.
    UNAUTHENTICATED = 21
    #: Authentication failed (unknown user or token, wrong password, too many failures
    #: from this address: ``details.retry_after_ms``). Sent late; the connection is closed.
    AUTH_FAILED = 22
    #: The user lacks the permission the request needs; ``details.permission``
    #: (``publish``, ``consume`` or ``admin``), ``details.resource`` (queue or topic) and
    #: ``details.user``.
    PERMISSION_DENIED = 23
    #: The broker is near its memory budget and the frame under way would take this
    #: connection past its share: the connection is closed. Id nil; ``details.limit`` (the
    #: share), ``details.length`` (what the connection would hold), ``details.held`` and
    #: ``details.budget``. Try again later.
    MEMORY_LIMIT = 24


#: Codes after which the sender closes the connection: framing is lost, a connection
#: or memory limit was reached, or authentication failed.
FATAL_CODES = frozenset({ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE,
                         ErrorCode.TOO_MANY_CONNECTIONS, ErrorCode.CONNECTION_TIMEOUT,
                         ErrorCode.AUTH_FAILED, ErrorCode.MEMORY_LIMIT})


class ProtocolError(Exception):
    """A protocol-level failure that maps onto one ERROR frame.

    ``fatal`` is true when framing is lost and the connection must close after the
    error frame is sent.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.request_id = request_id
        self.details: dict[str, Any] = details if details is not None else {}

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_CODES

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.name}, {self.message!r})"
