"""The four kinds of frame, as immutable values.

On the wire every frame body is a msgpack array whose first element is the kind:

    REQUEST  [0, id, op, args]                 client -> server
    REPLY    [1, id, result]                   server -> client, answers request ``id``
    ERROR    [2, id, code, message, details]   server -> client; ``id`` is nil when the
                                               failing request's id is unknown
    PUSH     [3, name, payload]                server -> client, unsolicited
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Union

from .errors import ErrorCode


class FrameKind(IntEnum):
    REQUEST = 0
    REPLY = 1
    ERROR = 2
    PUSH = 3


#: Largest request id: ids are unsigned 64-bit integers chosen by the client.
MAX_REQUEST_ID = 2**64 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A client's request; ``id`` is echoed by the matching REPLY or ERROR."""

    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A successful answer to request ``id``."""

    id: int
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """A failed request (``id`` set) or a connection-level failure (``id`` None)."""

    id: int | None
    #: An ``ErrorCode``, or the plain number of a code newer than this codebase.
    code: ErrorCode | int
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Push:
    """A frame the server sends on its own; ``name`` says what it is."""

    name: str
    payload: dict[str, Any] = field(default_factory=dict)


Frame = Union[Request, Reply, Error, Push]
