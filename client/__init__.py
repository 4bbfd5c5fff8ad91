"""Lockgate client SDK.

- :class:`Client` (async, on trio or asyncio): ``async with Client.connect("host:port") as client``.
- :class:`SyncClient` (blocking socket): ``with SyncClient("host:port") as client``.
- :mod:`client.errors`: one exception class per wire error code, plus ``ConnectionClosed``.
- :mod:`client.types`: the values passed in and out (``Message``, ``Delivery``, ...).
- :mod:`client.ops`: the op table both clients' typed methods are made from.
- :class:`Reconnect` (``client.backoff``): how either client reconnects after a lost
  connection (``reconnect=``); :class:`Spill` (``client.spill``): the async client's local
  spill file for publishes while the broker is away.
- Push subscriptions: ``Client.subscribe`` gives a :class:`Subscription` of
  :class:`IncomingMessage` (:mod:`client.subscription`), ``SyncClient.subscribe`` a
  :class:`SyncSubscription` of :class:`SyncIncomingMessage` (:mod:`client.sync_subscription`).
- TLS: ``tls=True`` (or a context from :func:`tls_context`, with a CA or a client
  certificate) on either client (:mod:`client.tls`).

The async names are imported lazily, so blocking users do not pay for importing anyio.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    AuthFailed,
    ConnectionClosed,
    ConnectionTimeout,
    DiskFull,
    FrameTooLarge,
    HandshakeRequired,
    InternalError,
    InvalidArgument,
    LimitExceeded,
    LockgateError,
    MalformedFrame,
    MalformedRequest,
    MessageTooLarge,
    MemoryLimit,
    PermissionDenied,
    QueueExists,
    QueueFull,
    QueueNotFound,
    ShuttingDown,
    StorageError,
    TooManyConnections,
    TxnConflict,
    Unauthenticated,
    UnknownOp,
    UnsupportedVersion,
    WrongNode,
    error_from_frame,
)
from .spill import Spill, SpillFull
from .sync import SyncClient
from .sync_subscription import SyncIncomingMessage, SyncSubscription
from .tls import tls_context
from .types import (
    AckResult,
    BrokerInfo,
    DeadLetterInfo,
    Delivery,
    GroupStats,
    ExtendResult,
    Message,
    MessageStatus,
    NackResult,
    PeekedMessage,
    PeekResult,
    PublishResult,
    PurgeResult,
    QueueStats,
    RedriveResult,
    RejectResult,
    ServerInfo,
    ShardRoute,
    TopicMessage,
    TopicStats,
    Transaction,
    group_queue,
    parse_addr,
)

if TYPE_CHECKING:
    from .api import Client
    from .connection import Connection, open_connection
    from .backoff import Reconnect
    from .subscription import IncomingMessage, Subscription

_LAZY = {
    "Client": ".api", "Connection": ".connection", "open_connection": ".connection",
    "IncomingMessage": ".subscription", "Subscription": ".subscription", "Reconnect": ".backoff",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AckResult", "AuthFailed", "BrokerInfo", "Client", "GroupStats", "TopicMessage", "TopicStats", "Transaction", "group_queue", "Connection", "ConnectionClosed", "ConnectionTimeout", "DeadLetterInfo", "Delivery",
    "DiskFull", "ExtendResult", "FrameTooLarge", "HandshakeRequired", "IncomingMessage", "InternalError",
    "InvalidArgument", "LimitExceeded", "LockgateError", "MalformedFrame", "MalformedRequest",
    "Message", "MessageStatus", "MessageTooLarge", "NackResult", "PeekResult", "PeekedMessage",
    "MemoryLimit", "PermissionDenied", "PublishResult", "PurgeResult", "QueueExists", "QueueFull", "QueueNotFound", "QueueStats",
    "Reconnect", "RedriveResult", "RejectResult", "ServerInfo", "ShardRoute", "ShuttingDown", "Spill", "SpillFull", "StorageError",
    "Subscription", "SyncClient", "SyncIncomingMessage", "SyncSubscription", "TooManyConnections", "TxnConflict", "Unauthenticated",
    "UnknownOp", "UnsupportedVersion", "WrongNode", "error_from_frame", "open_connection", "parse_addr", "tls_context",
]
