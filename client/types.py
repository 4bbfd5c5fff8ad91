"""Values the client API takes and returns, and how they map to wire maps.

The op table (:mod:`client.ops`), from which both the async :class:`client.api.Client`
and the blocking :class:`client.sync.SyncClient` are built, reads results and builds
message entries through the helpers here, so the shaping can be tested without a
server. Optional arguments left as ``None`` are omitted from the request, so the server
applies its documented default.

Bodies and keys are bytes on the wire. Wherever the API takes one, a ``str`` is accepted
too and sent as its UTF-8 encoding; ``bytearray`` and ``memoryview`` are sent as is.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from protocol import HEADER_SIZE, PROTOCOL_VERSIONS, Encoder

#: Address used when none is given and ``LOCKGATE_ADDR`` is unset.
DEFAULT_ADDR = "127.0.0.1:7878"
#: Environment variable that overrides :data:`DEFAULT_ADDR`.
ADDR_ENV = "LOCKGATE_ADDR"

#: What the API accepts as a body or key.
Bytes = bytes | bytearray | memoryview | str


@dataclass(frozen=True, slots=True)
class Message:
    """One message to publish; ``None`` fields take the server default.

    ``priority`` is 0..255 (higher first, only meaningful on priority queues);
    ``delay_ms`` keeps the message invisible for that long after it is published;
    ``ttl_ms`` (1..2,592,000,000) removes it that long after it is published if it is
    still there (default: the queue's ``ttl_ms``); ``dedup_id`` (1..128 bytes) makes the
    publish idempotent: within the queue's dedup window a message with a dedup id already
    published is not stored again (see :class:`PublishResult`); ``deliver_at`` (wall-clock
    ms since the epoch, at most 7 days ahead) keeps it invisible until then, instead of
    ``delay_ms``; ``after`` names ``(queue, id)`` messages it depends on (at most 64): it
    waits until all of them are acked, and is dead-lettered if one is not (SPEC §8.14).
    """

    body: Bytes
    key: Bytes | None = None
    priority: int | None = None
    delay_ms: int | None = None
    ttl_ms: int | None = None
    dedup_id: Bytes | None = None
    deliver_at: int | None = None
    after: tuple[tuple[str, int], ...] | list[tuple[str, int]] | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A leased message returned by ``consume``; ack or nack it by ``id``.

    ``published_at`` is when it was first published (server wall clock, ms since the
    epoch; kept through dead-lettering and redrive), 0 if the server does not know.
    """

    id: int
    body: bytes
    attempt: int
    key: bytes | None
    priority: int
    published_at: int = 0
    #: From a consumer group (SPEC §8.13): the topic shard, the offset there, the headers.
    shard: int | None = None
    offset: int | None = None
    headers: dict[str, str] | None = None
    #: The queue it came from: set by ``consume_group`` and subscriptions (SPEC §8.15).
    queue: str | None = None

    @classmethod
    def from_wire(cls, m: list[Any]) -> Delivery:
        """From the wire array (elements after those known here are ignored)."""
        if len(m) > 8:
            return cls(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8])
        return cls(m[0], m[1], m[2], m[3], m[4], m[5] if len(m) > 5 else 0)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The messages of one publish that were stored got the ids ``first_id .. first_id +
    count - 1``, in request order; ``duplicates`` holds ``(index, id)`` for each message
    (by its index in the request) that was not stored because its dedup id was already
    published within the queue's (or topic's) dedup window: ``id`` is the message
    published first (for a topic, its topic-wide id)."""

    first_id: int
    count: int
    duplicates: tuple[tuple[int, int], ...] = ()

    @property
    def ids(self) -> range:
        """The ids of the messages stored by this publish."""
        return range(self.first_id, self.first_id + self.count)

    def message_ids(self) -> list[int]:
        """One id per message of the request, in order: the id it got, or for a duplicate
        the id of the message published first with its dedup id."""
        dup = dict(self.duplicates)
        out: list[int] = []
        nxt = self.first_id
        for index in range(self.count + len(dup)):
            if index in dup:
                out.append(dup[index])
            else:
                out.append(nxt)
                nxt += 1
        return out


@dataclass(frozen=True, slots=True)
class AckResult:
    """``acked`` messages were deleted; ``missing`` ids were not found."""

    acked: int
    missing: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NackResult:
    """``released`` messages are ready again; ``missing`` ids were not found or not leased."""

    released: int
    missing: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ExtendResult:
    """``extended`` leases now run until the server's now + ``visibility_ms``; ``missing``
    ids were not found or not leased."""

    extended: int
    missing: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RejectResult:
    """``rejected`` leased messages went to the dead-letter queue (or were dropped);
    ``missing`` ids were not found or not leased."""

    rejected: int
    missing: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RedriveResult:
    """What ``redrive`` moved out of a dead-letter queue: ``redriven`` messages in all;
    ``queues`` maps each source queue to how many went back to it; ``skipped`` counts
    those left where they were (leased, without a source, or whose source queue is gone;
    with ``ids``, also ids the dead-letter queue does not hold)."""

    redriven: int
    queues: dict[str, int]
    skipped: int

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> RedriveResult:
        return cls(redriven=m["redriven"], queues=dict(m["queues"]), skipped=m["skipped"])


@dataclass(frozen=True, slots=True)
class ShardRoute:
    """Where the shards of ``queue`` (``"*"``: every queue) live."""

    queue: str
    node: str
    addr: str


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the server announced in its ``hello`` reply."""

    version: int
    #: Largest frame body the server accepts (requests are checked against it locally).
    max_frame: int
    max_message: int
    max_batch: int
    server: str
    node: str
    shards: tuple[ShardRoute, ...]

    @classmethod
    def from_wire(cls, result: dict[str, Any]) -> ServerInfo:
        return cls(
            version=result["version"],
            max_frame=result["max_frame"],
            max_message=result["max_message"],
            max_batch=result["max_batch"],
            server=result["server"],
            node=result["node"],
            shards=tuple(
                ShardRoute(queue=s["queue"], node=s["node"], addr=s["addr"])
                for s in result.get("shards", ())
            ),
        )


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """The broker's version, uptime, fsync policy, data directory, WAL size,
    connections and memory budget (``broker_info``, SPEC §5.30)."""

    server: str
    node: str
    #: The broker's clock now, and when it started serving (ms since the epoch).
    now_ms: int
    started_ms: int
    uptime_ms: int
    #: ``always``, ``interval`` or ``never``.
    fsync: str
    fsync_interval_ms: int
    #: The data directory, an absolute path on the broker's machine.
    data_dir: str
    wal_segments: int
    wal_bytes: int
    #: Client connections open now (this one included).
    connections: int
    #: Queues (as ``list_queues`` lists them), topics, and the consumer groups of all topics.
    queues: int
    topics: int
    groups: int
    #: ``off`` or ``required``.
    auth: str
    #: The broker's memory budget and the bytes its connections hold against it now
    #: (unread input, unsent replies); 0 from a broker that does not say.
    memory_budget: int = 0
    memory_used: int = 0

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> BrokerInfo:
        return cls(m["server"], m["node"], m["now_ms"], m["started_ms"], m["uptime_ms"], m["fsync"],
                   m["fsync_interval_ms"], m["data_dir"], m["wal_segments"], m["wal_bytes"], m["connections"],
                   m["queues"], m["topics"], m["groups"], m["auth"], m.get("memory_budget", 0),
                   m.get("memory_used", 0))


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue's settings and counters (``messages`` = ``ready + leased + delayed``)."""

    name: str
    kind: str
    shards: int
    visibility_ms: int
    max_attempts: int
    dead_letter: str | None
    max_messages: int
    ready: int
    leased: int
    delayed: int
    messages: int
    published: int
    acked: int
    nacked: int
    expired: int
    dead_lettered: int
    dropped: int
    #: Retry backoff: delay before a nacked or expired message is ready again (0: at
    #: once), ``"fixed"`` or ``"exponential"``, the exponential cap, jitter in percent.
    retry_delay_ms: int = 0
    retry_backoff: str = "exponential"
    retry_max_delay_ms: int = 900_000
    retry_jitter: int = 0
    #: Time to live of messages published without one (0: none); what happens when it
    #: passes (``"drop"`` or ``"dead_letter"``); how many messages have expired so far.
    ttl_ms: int = 0
    on_expire: str = "drop"
    ttl_expired: int = 0
    #: How long a dedup id is remembered (0: dedup off).
    dedup_window_ms: int = 300_000
    #: Messages with one key are processed one at a time, in publish order.
    ordered: bool = False
    #: Bound on the bytes of bodies held (0: none); what a publish past a bound does
    #: (``"reject"``, ``"drop_oldest"``, ``"dead_letter_oldest"``); the bytes of bodies
    #: held now; messages evicted so far to make room.
    max_bytes: int = 0
    overflow: str = "reject"
    bytes: int = 0
    overflowed: int = 0
    #: Messages waiting on dependencies (SPEC §8.14).
    waiting: int = 0
    #: Deliveries so far (every attempt counts; SPEC §5.6).
    delivered: int = 0
    #: ``published_at`` (server ms) of the oldest message at the head of the ready
    #: messages, 0 when none is ready (SPEC §5.6): the next message's wait.
    oldest_ready_at: int = 0

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> QueueStats:
        return cls(
            name=m["queue"], kind=m["kind"], shards=m["shards"],
            visibility_ms=m["visibility_ms"], max_attempts=m["max_attempts"],
            dead_letter=m["dead_letter"], max_messages=m["max_messages"],
            ready=m["ready"], leased=m["leased"], delayed=m["delayed"],
            messages=m["messages"], published=m["published"], acked=m["acked"],
            nacked=m["nacked"], expired=m["expired"],
            dead_lettered=m["dead_lettered"], dropped=m["dropped"],
            retry_delay_ms=m.get("retry_delay_ms", 0), retry_backoff=m.get("retry_backoff", "exponential"),
            retry_max_delay_ms=m.get("retry_max_delay_ms", 900_000), retry_jitter=m.get("retry_jitter", 0),
            ttl_ms=m.get("ttl_ms", 0), on_expire=m.get("on_expire", "drop"), ttl_expired=m.get("ttl_expired", 0),
            dedup_window_ms=m.get("dedup_window_ms", 300_000), ordered=m.get("ordered", False),
            max_bytes=m.get("max_bytes", 0), overflow=m.get("overflow", "reject"), bytes=m.get("bytes", 0),
            overflowed=m.get("overflowed", 0), waiting=m.get("waiting", 0),
            delivered=m.get("delivered", 0), oldest_ready_at=m.get("oldest_ready_at", 0),
        )


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """How many messages ``purge_queue`` deleted from ``queue``, by the state they were in.

    ``leased`` is 0 unless the purge was asked to take leased messages too.
    """

    queue: str
    ready: int
    delayed: int
    leased: int
    waiting: int = 0

    @property
    def total(self) -> int:
        return self.ready + self.delayed + self.leased + self.waiting

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> PurgeResult:
        return cls(queue=m["queue"], ready=m["ready"], delayed=m["delayed"], leased=m["leased"],
                   waiting=m.get("waiting", 0))


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """Where a dead-lettered message came from and why (``PeekedMessage.dead_letter``).

    ``queue`` and ``id`` name the message in its source queue; ``attempts`` is how many
    times it was delivered there; ``reason`` is ``"max_attempts"``, ``"rejected"``,
    ``"expired"`` (its time to live passed), ``"overflow"`` (evicted from a full queue) or
    ``"dependency"`` (a message it waited on was not acked); ``error`` is the last error text given with
    ``nack`` or ``reject``, or ``None``; ``at_ms`` is when it was dead-lettered (server
    wall clock, ms since the epoch).
    """

    queue: str
    id: int
    attempts: int
    reason: str
    error: str | None
    at_ms: int

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> DeadLetterInfo:
        return cls(
            queue=m["queue"], id=m["id"], attempts=m["attempts"], reason=m["reason"],
            error=m.get("error"), at_ms=m["at_ms"],
        )


@dataclass(frozen=True, slots=True)
class PeekedMessage:
    """A message seen by ``peek``, which leaves it where it is.

    ``attempts`` counts the deliveries so far (0 if never delivered; a later ``consume``
    reports ``attempts + 1``). ``state`` is ``"ready"``, ``"leased"`` or ``"delayed"``;
    ``until_ms`` is the lease deadline of a leased message, the ready time of a delayed
    one and 0 for a ready one (server wall clock, ms since the epoch). ``dead_letter``
    says where a message that was dead-lettered into this queue came from and why;
    ``None`` for any other message. ``published_at`` is as in ``Delivery``.
    """

    id: int
    body: bytes
    attempts: int
    key: bytes | None
    priority: int
    state: str
    until_ms: int
    dead_letter: DeadLetterInfo | None = None
    published_at: int = 0

    @classmethod
    def from_wire(cls, p: list[Any]) -> PeekedMessage:
        """From the wire array; a missing or nil ``dead_letter`` (index 7) is ``None``, a
        missing ``published_at`` (index 8) 0, and elements after it are ignored."""
        dead = p[7] if len(p) > 7 else None
        return cls(p[0], p[1], p[2], p[3], p[4], p[5], p[6], None if dead is None else DeadLetterInfo.from_wire(dead),
                   p[8] if len(p) > 8 else 0)


@dataclass(frozen=True, slots=True)
class PeekResult:
    """What ``peek`` saw: ``queue`` is the queue looked at (the dead-letter queue's name
    when peeking there). Iterating it, or ``len()``, goes over ``messages``."""

    queue: str
    messages: tuple[PeekedMessage, ...]

    def __iter__(self) -> Iterator[PeekedMessage]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> PeekResult:
        return cls(m["queue"], tuple(PeekedMessage.from_wire(p) for p in m["messages"]))


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """Where message ``id`` of a queue is now, as ``message_status`` reports it.

    ``state`` is one of ``"ready"``, ``"leased"``, ``"delayed"``, ``"waiting"`` (on the
    ``waits_on`` dependencies, SPEC §8.14) (in ``queue``; ``until_ms``
    is the lease deadline or ready time, 0 when ready), ``"dead_lettered"`` (``queue`` is
    the dead-letter queue it moved to and ``dead_letter_id`` its id there; ``attempts``
    counts deliveries from there; ``reason`` as in :class:`DeadLetterInfo`, ``error`` the last error text given with ``nack`` or ``reject`` (or
    ``None``) and ``dead_lettered_at_ms`` when it moved, server wall clock), ``"gone"``
    (published, no longer held: acked, purged, expired or dropped) or ``"unknown"`` (never published to the
    queue). ``dead_letter_id``, ``reason``, ``error`` and ``dead_lettered_at_ms`` are
    ``None`` unless the state is ``"dead_lettered"``. ``expires_at_ms`` is when a held
    message's time to live ends (server wall clock), 0 when it has none.
    ``published_at`` is when it was first published (as in ``Delivery``), 0 for
    ``"gone"`` and ``"unknown"``.
    """

    id: int
    state: str
    queue: str
    attempts: int
    until_ms: int
    dead_letter_id: int | None = None
    reason: str | None = None
    error: str | None = None
    dead_lettered_at_ms: int | None = None
    expires_at_ms: int = 0
    published_at: int = 0
    #: ``"waiting"`` messages: the (queue, id) pairs still not acked (SPEC §8.14).
    waits_on: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> MessageStatus:
        return cls(
            id=m["id"], state=m["state"], queue=m["queue"], attempts=m["attempts"],
            until_ms=m["until_ms"], dead_letter_id=m.get("dead_letter_id"),
            reason=m.get("reason"), error=m.get("error"), dead_lettered_at_ms=m.get("dead_lettered_at_ms"),
            expires_at_ms=m.get("expires_at_ms", 0), published_at=m.get("published_at", 0),
            waits_on=tuple((q, i) for q, i in m.get("waits_on", ())),
        )


# --- addresses ---------------------------------------------------------------------


def parse_addr(addr: str | tuple[str, int] | None = None, port: int | None = None) -> tuple[str, int]:
    """Normalise ``"host:port"``, ``"[v6]:port"``, ``(host, port)`` or ``host`` + ``port``.

    With neither, the address comes from ``$LOCKGATE_ADDR``, else :data:`DEFAULT_ADDR`.
    Raises ``ValueError`` for anything else.
    """
    if isinstance(addr, tuple):
        host, port = addr
        return str(host), int(port)
    if addr is None:
        if port is not None:
            return "127.0.0.1", int(port)
        addr = os.environ.get(ADDR_ENV) or DEFAULT_ADDR
    if port is not None:
        return addr, int(port)
    host, sep, port_text = addr.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"address must look like host:port, got {addr!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


# --- request arguments ---------------------------------------------------------------


def as_bytes(value: Bytes) -> bytes | bytearray | memoryview:
    """A body or key as bytes (``str`` is UTF-8 encoded)."""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return value
    raise TypeError(f"expected bytes or str, got {type(value).__name__}")


def message_entry(
    body: Bytes, key: Bytes | None = None, priority: int | None = None, delay_ms: int | None = None,
    ttl_ms: int | None = None, dedup_id: Bytes | None = None, deliver_at: int | None = None,
    after: Iterable[tuple[str, int]] | None = None,
) -> list[Any]:
    """The wire entry ``[body, key?, priority?, delay_ms?, ttl_ms?, dedup_id?, deliver_at?,
    after?]`` with trailing ``None`` dropped."""
    if after is not None:
        return [as_bytes(body), None if key is None else as_bytes(key), priority, delay_ms, ttl_ms,
                None if dedup_id is None else as_bytes(dedup_id), deliver_at, [[q, i] for q, i in after]]
    if deliver_at is not None:
        return [as_bytes(body), None if key is None else as_bytes(key), priority, delay_ms, ttl_ms,
                None if dedup_id is None else as_bytes(dedup_id), deliver_at]
    if dedup_id is not None:
        return [as_bytes(body), None if key is None else as_bytes(key), priority, delay_ms, ttl_ms,
                as_bytes(dedup_id)]
    if ttl_ms is not None:
        return [as_bytes(body), None if key is None else as_bytes(key), priority, delay_ms, ttl_ms]
    if delay_ms is not None:
        return [as_bytes(body), None if key is None else as_bytes(key), priority, delay_ms]
    if priority is not None:
        return [as_bytes(body), None if key is None else as_bytes(key), priority]
    if key is not None:
        return [as_bytes(body), as_bytes(key)]
    return [as_bytes(body)]


def message_entries(messages: Iterable[Bytes | Message]) -> list[list[Any]]:
    """Wire entries for ``publish``: each item is a body or a :class:`Message`."""
    return [
        message_entry(m.body, m.key, m.priority, m.delay_ms, m.ttl_ms, m.dedup_id, m.deliver_at, m.after)
        if isinstance(m, Message)
        else [as_bytes(m)]
        for m in messages
    ]


def hello_args(max_frame: int | None = None, client_name: str = "") -> dict[str, Any]:
    """``hello`` arguments; without ``max_frame`` the server's own limit applies to us too."""
    args: dict[str, Any] = {"versions": list(PROTOCOL_VERSIONS), "client": client_name}
    if max_frame is not None:
        args["max_frame"] = max_frame
    return args


# ``create_queue_args``, ``consume_args``, ``ack_args`` and ``nack_args`` (the request
# args of those ops) are the op table's builders, ``client.ops.OPS[name].args``; they are
# looked up on first use, since client.ops itself imports this module.
_OP_ARGS = {"create_queue_args": "create_queue", "consume_args": "consume", "ack_args": "ack", "nack_args": "nack"}


def __getattr__(name: str) -> Any:
    if name in _OP_ARGS:
        from .ops import OPS

        return OPS[_OP_ARGS[name]].args
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- results -------------------------------------------------------------------------


def deliveries(result: dict[str, Any]) -> list[Delivery]:
    """The messages of a ``consume`` reply."""
    return [Delivery.from_wire(m) for m in result["messages"]]


def group_deliveries(result: dict[str, Any]) -> list[Delivery]:
    """The messages of a queue group's ``consume`` reply, each with its queue."""
    return [replace(Delivery.from_wire(m), queue=q) for m, q in zip(result["messages"], result["queues"])]


def ack_result(result: dict[str, Any]) -> AckResult:
    return AckResult(result["acked"], tuple(result["missing"]))


def nack_result(result: dict[str, Any]) -> NackResult:
    return NackResult(result["released"], tuple(result["missing"]))


def extend_result(result: dict[str, Any]) -> ExtendResult:
    return ExtendResult(result["extended"], tuple(result["missing"]))


def reject_result(result: dict[str, Any]) -> RejectResult:
    return RejectResult(result["rejected"], tuple(result["missing"]))


def publish_result(result: dict[str, Any]) -> PublishResult:
    duplicates = result.get("duplicates")
    if duplicates is None:
        return PublishResult(result["first_id"], result["count"])
    return PublishResult(result["first_id"], result["count"], tuple((i, mid) for i, mid in duplicates))


def published_id(result: dict[str, Any]) -> int:
    """The id of the one message of a ``publish``: the one it got, or for a duplicate the
    id of the message published first with its dedup id."""
    duplicates = result.get("duplicates")
    return int(result["first_id"] if not duplicates else duplicates[0][1])


def queue_list(result: dict[str, Any]) -> list[QueueStats]:
    return [QueueStats.from_wire(m) for m in result["queues"]]


def message_statuses(result: dict[str, Any]) -> list[MessageStatus]:
    """The statuses of a ``message_status`` reply, one per id asked, in request order."""
    return [MessageStatus.from_wire(m) for m in result["statuses"]]


def checked_request(encoder: Encoder, rid: int, op: str, args: dict[str, Any],
                    server_max_frame: int) -> bytes:
    """The request frame, or ``FrameTooLarge`` if the server would refuse its size.

    Checked before sending, so an oversized request fails locally and the connection
    stays open (SPEC.md: a client must not send frames over the server's max_frame).
    """
    data = encoder.request(rid, op, args)
    length = len(data) - HEADER_SIZE
    if length > server_max_frame:
        from .errors import FrameTooLarge

        raise FrameTooLarge(
            f"request of {length} bytes exceeds the server's max_frame of {server_max_frame} bytes",
            {"limit": server_max_frame, "length": length},
        )
    return data


# --- topics and consumer groups (SPEC §8.13) -------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicMessage:
    """A message for ``publish_topic``: body, optional key (picks the shard), headers
    (str to str; groups may filter on them) and dedup id (1..128 bytes: within the
    topic's dedup window a message with a dedup id already published to it is not
    stored again, see :class:`PublishResult`)."""

    body: Bytes
    key: Bytes | None = None
    headers: dict[str, str] | None = None
    dedup_id: Bytes | None = None


def topic_entries(messages: Iterable[Bytes | TopicMessage]) -> list[list[Any]]:
    """The wire entries ``[body, key?, headers?, dedup_id?]`` of ``publish_topic``."""
    out: list[list[Any]] = []
    for m in messages:
        if isinstance(m, TopicMessage):
            key = None if m.key is None else as_bytes(m.key)
            if m.dedup_id is not None:
                out.append([as_bytes(m.body), key, m.headers or None, as_bytes(m.dedup_id)])
            else:
                out.append([as_bytes(m.body), key, m.headers] if m.headers else [as_bytes(m.body), key])
        else:
            out.append([as_bytes(m)])
    return out


def group_queue(topic: str, group: str) -> str:
    """The name under which the queue methods read a consumer group: ``"TOPIC/GROUP"``."""
    return f"{topic}/{group}"


@dataclass(frozen=True, slots=True)
class TopicStats:
    """A topic's settings and counters (``topic_stats``)."""

    name: str
    shards: int
    retention: str
    max_age_ms: int
    max_bytes: int
    max_messages: int
    #: How long a dedup id published to it is remembered (0: no dedup, and from a
    #: broker without topic dedup).
    dedup_window_ms: int
    messages: int
    bytes: int
    first_offsets: tuple[int, ...]
    next_offsets: tuple[int, ...]
    published: int
    reclaimed: int
    expired: int
    groups: tuple[str, ...]
    #: How many groups it has (``groups`` names at most the first 1,000).
    group_count: int = 0

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> TopicStats:
        return cls(m["topic"], m["shards"], m["retention"], m["max_age_ms"], m["max_bytes"], m["max_messages"],
                   m.get("dedup_window_ms", 0), m["messages"], m["bytes"], tuple(m["first_offsets"]),
                   tuple(m["next_offsets"]), m["published"], m["reclaimed"], m["expired"], tuple(m["groups"]),
                   m.get("group_count", len(m["groups"])))


def topic_list(result: dict[str, Any]) -> list[TopicStats]:
    return [TopicStats.from_wire(m) for m in result["topics"]]


@dataclass(frozen=True, slots=True)
class GroupStats:
    """A consumer group's place in its topic and its delivery statistics (``group_stats``):
    ``cursors`` per shard, ``lag`` (retained messages not yet taken), ``missed`` (dropped
    by the topic's limits first), ``filtered``; ``delivery`` is its delivery queue's
    :class:`QueueStats` (ready, leased, acked, dead_lettered, ...)."""

    topic: str
    group: str
    cursors: tuple[int, ...]
    lag: int
    missed: int
    filtered: int
    filter: dict[str, str] | None
    delivery: QueueStats

    @classmethod
    def from_wire(cls, m: dict[str, Any]) -> GroupStats:
        return cls(m["topic"], m["group"], tuple(m["cursors"]), m["lag"], m["missed"], m["filtered"],
                   m["filter"], QueueStats.from_wire({**m, "queue": m["queue"]}))


class Transaction:
    """Steps of a ``txn`` (SPEC §5.28), built one call at a time and sent by ``commit``::

        await client.transaction().ack("in", [d.id]).publish("out", [b"result"]).commit()

    (without ``await`` on the blocking client). All of its steps take effect or none; an
    ``ack`` step commits only while its messages are still leased (else
    :class:`~client.errors.TxnConflict`, and nothing is applied)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.steps: list[dict[str, Any]] = []

    def ack(self, queue: str, ids: Iterable[int]) -> Transaction:
        self.steps.append({"op": "ack", "queue": queue, "ids": list(ids)})
        return self

    def publish(self, queue: str, messages: Iterable[Bytes | Message]) -> Transaction:
        self.steps.append({"op": "publish", "queue": queue, "messages": message_entries(messages)})
        return self

    def publish_topic(self, topic: str, messages: Iterable[Bytes | TopicMessage]) -> Transaction:
        self.steps.append({"op": "topic_publish", "topic": topic, "messages": topic_entries(messages)})
        return self

    def commit(self) -> Any:
        """Send the steps; the client's ``txn`` result (awaitable on the async client)."""
        return self._client.txn(self.steps)

