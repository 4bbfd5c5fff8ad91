"""Mutation records: the only way queue state changes.

Rules:
1. The live path validates a request, appends its mutations to the WAL, then applies
   them; recovery reads the same records and applies them. Both go through
   ``BrokerState.apply_fields(type, fields)``.
2. A mutation carries every value ``apply`` needs — ids, shards, deadlines, times — so
   applying it never reads a clock or a random source and replay equals the live path.
3. A record's payload is the msgpack array ``fields()``; its type byte is ``TYPE``.

Changing a record: never change the meaning of an existing type's fields. Add a new
type (and keep applying the old one), or append optional fields at the end that old
records lack; then bump ``broker.wal.segment.WAL_VERSION`` if old readers would
misread the new records.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Union


class MutationType(IntEnum):
    QUEUE_CREATE = 1
    QUEUE_DELETE = 2
    PUBLISH = 3
    LEASE = 4
    ACK = 5
    RELEASE = 6
    PROMOTE = 7
    RECOVER = 8


@dataclass(frozen=True, slots=True)
class QueueCreate:
    """A queue comes into being with its settings."""

    TYPE: ClassVar[int] = MutationType.QUEUE_CREATE
    queue: str
    kind: str
    shards: int
    visibility_ms: int
    max_attempts: int
    dead_letter: str | None
    max_messages: int

    def fields(self) -> list[Any]:
        return [self.queue, self.kind, self.shards, self.visibility_ms,
                self.max_attempts, self.dead_letter, self.max_messages]


@dataclass(frozen=True, slots=True)
class QueueDelete:
    """A queue and every message in it go away."""

    TYPE: ClassVar[int] = MutationType.QUEUE_DELETE
    queue: str

    def fields(self) -> list[Any]:
        return [self.queue]


@dataclass(frozen=True, slots=True)
class Publish:
    """Messages join a queue with consecutive ids ``first_id, first_id + 1, ...``.

    Columns run parallel to ``bodies``; a column is None when every message has the
    default (no key, priority 0, not delayed), which keeps the common record small.
    A ``ready_at_ms`` of 0 means ready at once; otherwise the message is delayed until
    that wall-clock time. The shard is not stored: it follows from the key or the id
    by the documented rule (``Queue.shard_of``).
    """

    TYPE: ClassVar[int] = MutationType.PUBLISH
    queue: str
    first_id: int
    now_ms: int
    bodies: list[bytes]
    keys: list[bytes | None] | None = None
    priorities: list[int] | None = None
    ready_at_ms: list[int] | None = None

    def fields(self) -> list[Any]:
        return [self.queue, self.first_id, self.now_ms, self.bodies,
                self.keys, self.priorities, self.ready_at_ms]


_new = object.__new__
_PUBLISH_SLOTS = tuple(
    getattr(Publish, name).__set__
    for name in ("queue", "first_id", "now_ms", "bodies", "keys", "priorities", "ready_at_ms"))


def plain_publish(queue: str, first_id: int, now_ms: int, bodies: list[bytes]) -> Publish:
    """``Publish(queue, first_id, now_ms, bodies)`` built through its slots: the same
    frozen value at half the cost of the generated ``__init__`` (one per publish request)."""
    obj = _new(Publish)
    set_queue, set_first, set_now, set_bodies, set_keys, set_prio, set_ready = _PUBLISH_SLOTS
    set_queue(obj, queue)
    set_first(obj, first_id)
    set_now(obj, now_ms)
    set_bodies(obj, bodies)
    set_keys(obj, None)
    set_prio(obj, None)
    set_ready(obj, None)
    return obj


@dataclass(frozen=True, slots=True)
class Lease:
    """Ready messages are delivered: leased until ``deadline_ms``, attempts raised by one."""

    TYPE: ClassVar[int] = MutationType.LEASE
    queue: str
    deadline_ms: int
    ids: list[int]

    def fields(self) -> list[Any]:
        return [self.queue, self.deadline_ms, self.ids]


@dataclass(frozen=True, slots=True)
class Ack:
    """Messages are deleted for good. Ids not present are ignored."""

    TYPE: ClassVar[int] = MutationType.ACK
    queue: str
    ids: list[int]

    def fields(self) -> list[Any]:
        return [self.queue, self.ids]


@dataclass(frozen=True, slots=True)
class Release:
    """Leased messages come back (nack or lease expiry).

    A message whose attempts reached the queue's ``max_attempts`` moves to the
    dead-letter queue (or is dropped when there is none); the others become ready, or
    delayed until ``ready_at_ms`` when that is non-zero. ``expired`` counts it as a
    lease expiry rather than a nack in the statistics.
    """

    TYPE: ClassVar[int] = MutationType.RELEASE
    queue: str
    ids: list[int]
    ready_at_ms: int
    expired: bool
    now_ms: int

    def fields(self) -> list[Any]:
        return [self.queue, self.ids, self.ready_at_ms, self.expired, self.now_ms]


@dataclass(frozen=True, slots=True)
class Promote:
    """Delayed messages whose time has come become ready, in this order."""

    TYPE: ClassVar[int] = MutationType.PROMOTE
    queue: str
    ids: list[int]

    def fields(self) -> list[Any]:
        return [self.queue, self.ids]


@dataclass(frozen=True, slots=True)
class Recover:
    """Written once at start-up: every leased message is released as if its lease expired."""

    TYPE: ClassVar[int] = MutationType.RECOVER
    now_ms: int

    def fields(self) -> list[Any]:
        return [self.now_ms]


Mutation = Union[QueueCreate, QueueDelete, Publish, Lease, Ack, Release, Promote, Recover]

MUTATION_CLASSES: dict[int, type] = {
    cls.TYPE: cls
    for cls in (QueueCreate, QueueDelete, Publish, Lease, Ack, Release, Promote, Recover)
}


def from_fields(rtype: int, fields: list[Any]) -> Mutation:
    """Rebuild a mutation object from a record (for tools and tests)."""
    return MUTATION_CLASSES[rtype](*fields)
