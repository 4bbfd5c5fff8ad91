"""Mutations: the only way queue state changes. Each type is declared once, here.

Rules:
1. The live path validates a request, appends its mutations to the WAL, then applies
   them; recovery reads the same records and applies them. Both end in the applier that
   ``broker.state`` registers for the type (``@applies(Cls)``); ``broker.records`` holds
   the one codec between a mutation and its WAL record.
2. A mutation carries every value its applier needs — ids, deadlines, times — so
   applying it never reads a clock or a random source and replay equals the live path.
3. A record's payload is the msgpack array ``record_fields()``: the declared fields,
   in order, except that fields after the first ``RECORD_BASE`` are left out at the end
   while they hold their defaults; its type byte is ``TYPE``.

Declaring one: ``@mutation(N)`` on a class with annotated fields makes it a frozen,
slotted dataclass, gives it ``TYPE = N`` and ``FIELDS``, and adds it to ``MUTATIONS``
and to the ``MutationType`` enum. ``broker.state`` must then register its applier
(import fails otherwise); ``docs/architecture.md`` lists the rest of the checklist.

Changing a record: never change the meaning of an existing type's fields. Add a new
type (and keep applying the old one), or append optional fields at the end that old
records lack (set ``RECORD_BASE`` to the count of fields before them, so records that
leave them at their defaults stay as they were); then bump
``broker.wal.segment.WAL_VERSION`` if old readers would misread the new records.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from enum import IntEnum
from operator import attrgetter
from typing import Any, ClassVar, TypeVar, dataclass_transform

_M = TypeVar("_M", bound="Mutation")

#: Every declared mutation class by its record type, in declaration order.
MUTATIONS: dict[int, type[Mutation]] = {}


class Mutation:
    """Base of every mutation type (the union of them all is this class)."""

    __slots__ = ()
    TYPE: ClassVar[int]
    #: The declared field names, in record order.
    FIELDS: ClassVar[tuple[str, ...]]
    #: Fields every record carries; later ones are left out at their defaults (rule 3).
    RECORD_BASE: ClassVar[int]
    #: The defaults of the fields after ``RECORD_BASE``.
    _LATER_DEFAULTS: ClassVar[tuple[Any, ...]]
    _row: ClassVar[Callable[[Any], tuple[Any, ...]]]

    def fields(self) -> list[Any]:
        """The values of every declared field, in ``FIELDS`` order."""
        return list(self._row(self))  # type: ignore[call-arg]

    def record_fields(self) -> list[Any]:
        """The record payload's values (rule 3): ``fields()`` without the trailing later
        fields that hold their defaults."""
        row = list(self._row(self))  # type: ignore[call-arg]
        base = self.RECORD_BASE
        n = len(row)
        if n > base:
            defaults = self._LATER_DEFAULTS
            while n > base and row[n - 1] == defaults[n - 1 - base]:
                n -= 1
            del row[n:]
        return row


@dataclass_transform(frozen_default=True)
def mutation(rtype: int) -> Callable[[type[_M]], type[_M]]:
    """Declare a mutation type with record type ``rtype`` (1-100; see module docs)."""
    if not 1 <= rtype <= 100:
        raise ValueError("mutation record types are 1-100 (101-255 are snapshot records)")

    def declare(cls: type[_M]) -> type[_M]:
        if rtype in MUTATIONS:
            raise ValueError(f"record type {rtype} is taken by {MUTATIONS[rtype].__name__}")
        made = dataclass(frozen=True, slots=True)(cls)
        declared = dataclass_fields(made)  # type: ignore[arg-type]
        names = tuple(f.name for f in declared)
        made.TYPE = rtype
        made.FIELDS = names
        base = cls.__dict__.get("RECORD_BASE", len(names))
        made.RECORD_BASE = base
        made._LATER_DEFAULTS = tuple(f.default for f in declared[base:])
        getter = attrgetter(*names)
        made._row = staticmethod(
            getter if len(names) > 1 else (lambda obj: (getter(obj),)))
        MUTATIONS[rtype] = made
        return made

    return declare


@mutation(1)
class QueueCreate(Mutation):
    """A queue comes into being with its settings."""

    RECORD_BASE = 7
    queue: str
    kind: str
    shards: int
    visibility_ms: int
    max_attempts: int
    dead_letter: str | None
    max_messages: int
    #: Retry backoff (records from before it lack these: no delay, today's behaviour).
    retry_delay_ms: int = 0
    retry_backoff: str = "exponential"
    retry_max_delay_ms: int = 900_000
    retry_jitter: int = 0
    #: Time to live of messages published without one (0: none), and what happens
    #: when it passes (``drop`` or ``dead_letter``); older records lack them.
    ttl_ms: int = 0
    on_expire: str = "drop"
    #: How long a dedup id is remembered (0: no dedup); older records lack it.
    dedup_window_ms: int = 300_000
    #: Key groups processed one at a time (records from before it lack it: not ordered).
    ordered: bool = False
    #: Bound on the bytes of message bodies held (0: none), and what a publish past a
    #: bound does (``protocol.Overflow``); older records lack them.
    max_bytes: int = 0
    overflow: str = "reject"


@mutation(2)
class QueueDelete(Mutation):
    """A queue and every message in it go away (at ``now_ms``: messages waiting on them
    are dead-lettered then, SPEC §8.14; older records lack it)."""

    RECORD_BASE = 1
    queue: str
    now_ms: int = 0


@mutation(3)
class Publish(Mutation):
    """Messages join a queue with consecutive ids ``first_id, first_id + 1, ...``.

    Columns run parallel to ``bodies``; a column is None when every message has the
    default (no key, priority 0, not delayed, no time to live), which keeps the common
    record small. A ``ready_at_ms`` of 0 means ready at once; otherwise the message is
    delayed until that wall-clock time. An ``expires_at_ms`` of 0 means the message
    does not expire; otherwise it is removed at that wall-clock time (the handler
    writes it for every message that has a time to live, its own or its queue's, so
    the applier never reads ``now_ms`` for it). The shard is not stored: it follows
    from the key or the id by the documented rule (``Queue.shard_of``). A ``dedup_ids``
    entry (bytes, or None) is remembered with its message's id and ``now_ms`` for the
    queue's dedup window; the handler leaves duplicates out of the record. Columns after
    ``ready_at_ms`` are optional: older records lack them, and records leave them out
    when they are None (``RECORD_BASE``).
    """

    RECORD_BASE = 7
    queue: str
    first_id: int
    now_ms: int
    bodies: list[bytes]
    keys: list[bytes | None] | None = None
    priorities: list[int] | None = None
    ready_at_ms: list[int] | None = None
    expires_at_ms: list[int] | None = None
    dedup_ids: list[bytes | None] | None = None
    #: Per message, the ``[queue, id]`` pairs it depends on (None: none); older records
    #: lack the column (SPEC §8.14).
    depends_on: list[list[list[Any]] | None] | None = None

    @property
    def plain(self) -> bool:
        """No key, priority, delay, expiry, dedup id or dependency on any message: runs
        of these fold together."""
        return self.keys is None and self.priorities is None and self.ready_at_ms is None \
            and self.expires_at_ms is None and self.dedup_ids is None and self.depends_on is None


@mutation(4)
class Lease(Mutation):
    """Ready messages are delivered: leased until ``deadline_ms``, attempts raised by one."""

    queue: str
    deadline_ms: int
    ids: list[int]


@mutation(5)
class Ack(Mutation):
    """Messages are deleted for good. Ids not present are ignored."""

    queue: str
    ids: list[int]


@mutation(6)
class Release(Mutation):
    """Leased messages come back (nack or lease expiry).

    A message whose attempts reached the queue's ``max_attempts`` moves to the
    dead-letter queue (or is dropped when there is none); the others are delayed until
    ``ready_at_ms`` when that is non-zero, and otherwise follow the queue's retry
    backoff: delayed until ``now_ms`` + the backoff delay of their attempt
    (``protocol.retry_delay``), or ready at once when that is 0. ``expired`` counts it as
    a lease expiry rather than a nack in the statistics.
    """

    RECORD_BASE = 5
    queue: str
    ids: list[int]
    ready_at_ms: int
    expired: bool
    now_ms: int
    #: The consumer's error text (nack), kept as each message's last error; records
    #: from before it have none.
    error: str | None = None
    #: Ready again at once, whatever the queue's retry backoff (the broker releasing what
    #: a closed connection held).
    at_once: bool = False
    #: The consumer gives the messages back unhandled (nack ``returned``): at once, their
    #: delivery does not count as an attempt, and they are never dead-lettered for it.
    returned: bool = False


@mutation(7)
class Promote(Mutation):
    """Delayed messages whose time has come become ready, in this order."""

    queue: str
    ids: list[int]


@mutation(8)
class Recover(Mutation):
    """Written once at start-up: every leased message is released as if its lease expired."""

    now_ms: int


@mutation(9)
class Purge(Mutation):
    """Every ready and delayed message of a queue is deleted (and, with ``leased``, every
    leased one): not acked, not dead-lettered (at ``now_ms``, as for ``QueueDelete``)."""

    RECORD_BASE = 2
    queue: str
    leased: bool
    now_ms: int = 0


@mutation(10)
class Extend(Mutation):
    """Leased messages keep their lease until ``deadline_ms`` instead (attempts unchanged)."""

    queue: str
    deadline_ms: int
    ids: list[int]


@mutation(11)
class Reject(Mutation):
    """Leased messages go straight to the dead-letter queue (reason ``rejected``), or are
    dropped when there is none."""

    queue: str
    ids: list[int]
    error: str | None
    now_ms: int


@mutation(12)
class Redrive(Mutation):
    """Messages of a dead-letter queue go back to the queues they were dead-lettered
    from, as new messages there (in this order), attempts reset (at ``now_ms``, as for
    ``QueueDelete``)."""

    RECORD_BASE = 2
    queue: str
    ids: list[int]
    now_ms: int = 0


@mutation(13)
class Expire(Mutation):
    """Messages whose time to live has passed by ``now_ms`` leave the queue, in whatever
    state: dropped, or dead-lettered (reason ``expired``) when the queue's ``on_expire``
    is ``dead_letter`` and its dead-letter queue exists. Ids that are gone, or whose
    expiry is later than ``now_ms``, are skipped."""

    queue: str
    ids: list[int]
    now_ms: int


@mutation(14)
class Evict(Mutation):
    """A publish to a full queue makes room (``overflow`` ``drop_oldest`` or
    ``dead_letter_oldest``): these messages leave the queue before it is logged, dropped
    or dead-lettered (reason ``overflow``) by the queue's policy, dead-lettered only when
    its dead-letter queue exists. Ids that are gone or leased are skipped."""

    queue: str
    ids: list[int]
    now_ms: int


@mutation(15)
class TopicCreate(Mutation):
    """A topic comes into being (``broker.topics.TopicSettings``)."""

    RECORD_BASE = 6
    topic: str
    shards: int
    retention: str
    max_age_ms: int
    max_bytes: int
    max_messages: int
    #: How long a dedup id is remembered (0: no dedup); older records lack it.
    dedup_window_ms: int = 300_000


@mutation(16)
class TopicDelete(Mutation):
    """A topic, its messages, its groups and their delivery queues go away."""

    topic: str


@mutation(17)
class TopicPublish(Mutation):
    """Messages join a topic with consecutive ids ``first_id, ...``, each in the shard its
    key (or else its id) picks, at the next offset there, published at ``now_ms``. The
    groups that run low take them (``broker.topics`` rule 2); the limits then apply.
    ``keys`` and ``headers`` are None when no message has one. A ``dedup_ids`` entry
    (bytes, or None) is remembered with its message's id and ``now_ms`` for the topic's
    dedup window, as ``Publish``'s; the handler leaves duplicates out of the record, and
    records leave the column out when it is None (older records lack it)."""

    RECORD_BASE = 6
    topic: str
    first_id: int
    now_ms: int
    bodies: list[bytes]
    keys: list[bytes | None] | None = None
    headers: list[dict[str, str] | None] | None = None
    dedup_ids: list[bytes | None] | None = None


@mutation(18)
class GroupCreate(Mutation):
    """A consumer group attaches to a topic at these per-shard cursors, with a filter
    and its delivery settings (those of a queue: SPEC §5.3)."""

    topic: str
    group: str
    cursors: list[int]
    filter: dict[str, str] | None
    visibility_ms: int
    max_attempts: int
    dead_letter: str | None
    retry_delay_ms: int
    retry_backoff: str
    retry_max_delay_ms: int
    retry_jitter: int
    ordered: bool


@mutation(19)
class GroupDelete(Mutation):
    """A group and its delivery queue go away (what only it held may then be reclaimed)."""

    topic: str
    group: str


@mutation(21)
class GroupSeek(Mutation):
    """A group's cursors move; the messages it had taken and not delivered (ready or
    delayed) are put back, leased ones stay until acked or released."""

    topic: str
    group: str
    cursors: list[int]


@mutation(22)
class TopicTrim(Mutation):
    """Messages older than the topic's ``max_age_ms`` at ``now_ms`` are dropped."""

    topic: str
    now_ms: int


@mutation(23)
class Txn(Mutation):
    """The changes of one ``txn`` request, applied in order as one record, so that a
    crash keeps all of them or none: each step is ``[record type, record_fields()]`` of
    a mutation of another type (never a ``Txn``)."""

    steps: list[list[Any]]

    def mutations(self) -> list[Mutation]:
        """The steps as mutation objects."""
        return [MUTATIONS[rtype](*fields) for rtype, fields in self.steps]

    @classmethod
    def of(cls, mutations: list[Mutation]) -> Txn:
        return cls([[m.TYPE, m.record_fields()] for m in mutations])


@mutation(20)
class Take(Mutation):
    """Ready messages are delivered at most once (a subscription with ``auto_ack``): they
    are deleted as they are pushed, counted as acked."""

    queue: str
    ids: list[int]


def _enum_name(cls: type) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper()


#: Record type numbers by name (``MutationType.PUBLISH == 3``), made from ``MUTATIONS``.
MutationType = IntEnum(  # type: ignore[misc]
    "MutationType", [(_enum_name(cls), rtype) for rtype, cls in MUTATIONS.items()])

_new = object.__new__
_PUBLISH_SLOTS = tuple(getattr(Publish, name).__set__ for name in Publish.FIELDS)


def plain_publish(queue: str, first_id: int, now_ms: int, bodies: list[bytes]) -> Publish:
    """``Publish(queue, first_id, now_ms, bodies)`` built through its slots: the same
    frozen value at half the cost of the generated ``__init__`` (one per publish request)."""
    obj = _new(Publish)
    (set_queue, set_first, set_now, set_bodies, set_keys, set_prio, set_ready, set_expires,
     set_dedup, set_depends) = _PUBLISH_SLOTS
    set_queue(obj, queue)
    set_first(obj, first_id)
    set_now(obj, now_ms)
    set_bodies(obj, bodies)
    set_keys(obj, None)
    set_prio(obj, None)
    set_ready(obj, None)
    set_expires(obj, None)
    set_dedup(obj, None)
    set_depends(obj, None)
    return obj
