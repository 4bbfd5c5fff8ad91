"""Operation names, protocol constants, queue kinds and the shard hash.

Everything here is part of the wire contract in SPEC.md.
"""
from __future__ import annotations

from enum import StrEnum

import crc32c

#: The protocol versions this codebase speaks; ``hello`` negotiates the highest common one.
PROTOCOL_VERSIONS = (1,)
PROTOCOL_VERSION = 1


class Op(StrEnum):
    """Request operation names."""

    HELLO = "hello"
    PING = "ping"
    QUEUE_CREATE = "queue_create"
    QUEUE_DELETE = "queue_delete"
    QUEUE_LIST = "queue_list"
    QUEUE_STATS = "queue_stats"
    PUBLISH = "publish"
    CONSUME = "consume"
    ACK = "ack"
    NACK = "nack"
    QUEUE_PURGE = "queue_purge"
    PEEK = "peek"
    MESSAGE_STATUS = "message_status"
    EXTEND = "extend"
    REJECT = "reject"
    REDRIVE = "redrive"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"


class QueueKind(StrEnum):
    """How a queue orders the ready messages of one shard."""

    FIFO = "fifo"
    LIFO = "lifo"
    PRIORITY = "priority"


class PushName(StrEnum):
    """Names of PUSH frames; clients ignore names they do not know."""

    NOTICE = "notice"
    #: Messages pushed to a subscription: ``{"subscription": id, "messages": [delivery, ...]}``.
    DELIVER = "deliver"
    #: A subscription stopped by the server: ``{"subscription": id, "reason": str}``.
    SUBSCRIPTION_END = "subscription_end"


#: Message priorities: higher is delivered first; FIFO among equal priorities.
MIN_PRIORITY = 0
MAX_PRIORITY = 255
DEFAULT_PRIORITY = 0

#: Largest message key in bytes.
MAX_KEY = 1024

#: Queue name rules: 1..200 characters from this set.
QUEUE_NAME_MAX = 200
QUEUE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")

#: Longest error text a consumer may give with ``nack`` or ``reject``, in UTF-8 bytes.
MAX_ERROR_TEXT = 1024
#: A subscription's credit (most pushed messages unacked at once) when none is asked for.
DEFAULT_CREDIT = 256
#: Subscriptions one connection may hold at once.
MAX_SUBSCRIPTIONS = 64
#: ``max_attempts`` of a queue created without one (0 means unlimited, on request).
DEFAULT_MAX_ATTEMPTS = 20

#: Shards per queue.
MIN_SHARDS = 1
MAX_SHARDS = 256

#: Defaults a server applies when a request leaves a field out.
DEFAULT_VISIBILITY_MS = 30_000
DEFAULT_MAX_MESSAGE = 1024 * 1024
DEFAULT_MAX_BATCH = 10_000
#: The longest a consume may wait for messages, and the longest lease/delay.
MAX_WAIT_MS = 20 * 60 * 1000
MAX_VISIBILITY_MS = 12 * 60 * 60 * 1000
MAX_DELAY_MS = 7 * 24 * 60 * 60 * 1000


def shard_for_key(key: bytes, shards: int) -> int:
    """The shard a keyed message goes to: CRC-32C of the key bytes, modulo ``shards``."""
    return crc32c.crc32c(key) % shards


def valid_queue_name(name: object) -> bool:
    return (
        type(name) is str
        and 0 < len(name) <= QUEUE_NAME_MAX
        and QUEUE_NAME_CHARS.issuperset(name)
    )
