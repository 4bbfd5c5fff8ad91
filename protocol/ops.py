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
    AUTH = "auth"
    PING = "ping"
    BROKER_INFO = "broker_info"
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
    TOPIC_CREATE = "topic_create"
    TOPIC_DELETE = "topic_delete"
    TOPIC_LIST = "topic_list"
    TOPIC_STATS = "topic_stats"
    TOPIC_PUBLISH = "topic_publish"
    GROUP_CREATE = "group_create"
    GROUP_DELETE = "group_delete"
    GROUP_STATS = "group_stats"
    GROUP_SEEK = "group_seek"
    TXN = "txn"


class QueueKind(StrEnum):
    """How a queue orders the ready messages of one shard."""

    FIFO = "fifo"
    LIFO = "lifo"
    PRIORITY = "priority"
    ROUND_ROBIN = "round_robin"


class RetryBackoff(StrEnum):
    """How a queue's retry delay grows with the attempts (``retry_backoff``)."""

    FIXED = "fixed"
    EXPONENTIAL = "exponential"


class OnExpire(StrEnum):
    """What happens to a message whose time to live has passed (``on_expire``)."""

    DROP = "drop"
    DEAD_LETTER = "dead_letter"


class Overflow(StrEnum):
    """What a publish to a full queue does (``overflow``, SPEC §8.12)."""

    #: The publish is refused with QUEUE_FULL.
    REJECT = "reject"
    #: The oldest messages that are not leased are dropped to make room.
    DROP_OLDEST = "drop_oldest"
    #: The oldest messages that are not leased move to the dead-letter queue (reason
    #: ``overflow``) to make room.
    DEAD_LETTER_OLDEST = "dead_letter_oldest"


class Retention(StrEnum):
    """How long a topic keeps a message (``retention``, SPEC §8.13)."""

    #: Until every consumer group has acked it (or skipped it by its filter).
    INTEREST = "interest"
    #: Up to the topic's age, byte and message limits, acked or not.
    LIMITS = "limits"
    #: Until the first of the two lets it go.
    BOTH = "both"


class StartFrom(StrEnum):
    """Where a new consumer group starts reading its topic (or where ``group_seek`` moves it)."""

    EARLIEST = "earliest"
    LATEST = "latest"


#: A consumer group is addressed in the queue ops as ``TOPIC/GROUP`` ("/" is not a
#: queue name character, so the two never collide).
GROUP_SEPARATOR = "/"
#: Ready messages a consumer group holds taken from its topic, at most; it takes more
#: as they are delivered (SPEC §8.13).
GROUP_WINDOW = 1000
#: Headers of a topic message: at most this many, keys and values strings.
MAX_HEADERS = 32
MAX_HEADER_BYTES = 4096


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

#: Retry backoff settings of a queue (SPEC §8.7): delays up to 7 days; by default no
#: delay, growing exponentially up to 15 minutes once one is set; jitter in percent.
MAX_RETRY_DELAY_MS = MAX_DELAY_MS
DEFAULT_RETRY_BACKOFF = RetryBackoff.EXPONENTIAL
DEFAULT_RETRY_MAX_DELAY_MS = 15 * 60 * 1000
MAX_RETRY_JITTER = 100

#: Longest time to live of a message (per message and per queue): 30 days.
MAX_TTL_MS = 30 * 24 * 60 * 60 * 1000

#: Idempotent publish (SPEC §8.9): a dedup id is 1..128 bytes; a queue remembers each
#: one for its ``dedup_window_ms`` (5 minutes unless set, at most a day; 0 disables
#: dedup), and at most ``DEDUP_MAX_IDS`` of them (the oldest is forgotten first).
MAX_DEDUP_ID = 128
DEFAULT_DEDUP_WINDOW_MS = 5 * 60 * 1000
MAX_DEDUP_WINDOW_MS = 24 * 60 * 60 * 1000
DEDUP_MAX_IDS = 1_000_000


def shard_for_key(key: bytes, shards: int) -> int:
    """The shard a keyed message goes to: CRC-32C of the key bytes, modulo ``shards``."""
    return crc32c.crc32c(key) % shards


def retry_delay(delay_ms: int, backoff: str, max_delay_ms: int, jitter: int,
                msg_id: int, attempt: int) -> int:
    """The delay (ms) before a released message is ready again (SPEC §8.7).

    ``base`` is ``delay_ms`` (``fixed``) or ``min(max_delay_ms, delay_ms * 2**(attempt - 1))``
    (``exponential``); with ``jitter`` percent, ``h = crc32c(id as 8 bytes big-endian +
    attempt as 8 bytes big-endian)`` and the delay is ``base - base * jitter * h //
    (100 * 2**32)``: ``base`` scaled by ``1 - jitter/100 * u`` with ``u = h / 2**32`` in
    [0, 1), rounded up to a whole ms. Integers only, so every replay gets the same value.
    """
    if not delay_ms:
        return 0
    if backoff == RetryBackoff.FIXED:
        base = delay_ms
    else:
        shift = max(attempt, 1) - 1
        # delay_ms >= 1 and max_delay_ms < 2**40: a larger shift always reaches the cap.
        base = max_delay_ms if shift >= 40 else min(max_delay_ms, delay_ms << shift)
    if not jitter or not base:
        return base
    h = crc32c.crc32c(msg_id.to_bytes(8, "big") + attempt.to_bytes(8, "big"))
    return base - base * jitter * h // (100 << 32)


def valid_queue_name(name: object) -> bool:
    return (
        type(name) is str
        and 0 < len(name) <= QUEUE_NAME_MAX
        and QUEUE_NAME_CHARS.issuperset(name)
    )
