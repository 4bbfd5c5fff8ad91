"""The broker's queue state and the appliers that change it.

Rules:
1. Each mutation type has exactly one applier, a method marked ``@applies(Cls)``
   (import fails when a declared mutation has none). ``apply`` (mutation objects),
   ``apply_fields`` (type and fields), ``apply_record`` (WAL records) and
   ``apply_items`` (records folded by ``records.fold_records``) all end in it; nothing
   else writes queue state.
2. Appliers are deterministic: they read only the record's fields and the state.
   Applying the same records to an empty state always gives the same state.
3. Appliers are total: ids that are gone or in another state are skipped, so a record
   never fails to apply.
4. ``due(now)``, ``Queue.select`` and the lookups only read; they tell the live path
   which mutations to log next.
5. A ``StateObserver`` set as ``observer`` is told where messages come from as the
   appliers run (``brokerctl wal stats`` counts live bytes per segment with it).
"""
from __future__ import annotations

import heapq
from dataclasses import fields as dataclass_fields
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import msgpack

from protocol import Overflow

from .mutations import (
    MUTATIONS,
    Ack,
    Evict,
    Expire,
    Extend,
    Lease,
    Mutation,
    Promote,
    Publish,
    Purge,
    QueueCreate,
    QueueDelete,
    Recover,
    Redrive,
    Reject,
    Release,
    Take,
    Txn,
)
from .queues import DELAYED, LEASED, READY, WAITING, DeadLetter, Message, Queue, QueueSettings
from .records import ack_cost, decode_fields
from .topic_state import TOPIC_TIMER, TopicAppliers
from .topics import Group, Topic, copy_maker, group_queue_name

#: Snapshot record types (a snapshot file's records; never in the log).
#: ``snapshot_bound``: the snapshot's header and end record; per queue, topic or group
#: its header and record framing; per message a row beyond its body (ten fields, the
#: integers at their longest) and a typical key; per remembered dedup id, time to
#: live, error text, dead-letter source and dependency list their typical row.
SNAPSHOT_BOUND_BASE = 4096
SNAPSHOT_BOUND_QUEUE = 1024
SNAPSHOT_BOUND_ROW = 96
SNAPSHOT_BOUND_DEDUP = 64
SNAPSHOT_BOUND_EXPIRY = 20
SNAPSHOT_BOUND_ERROR = 128
SNAPSHOT_BOUND_SOURCE = 96
SNAPSHOT_BOUND_WAIT = 64

SNAPSHOT_QUEUE = 101
SNAPSHOT_MESSAGES = 102
#: ``[queue, [DeadLetter.row, ...]]``: where a queue's dead letters came from, and why.
SNAPSHOT_DEAD_LETTERS = 103
#: ``[queue, [[id, error text], ...]]``: the last errors consumers gave.
SNAPSHOT_ERRORS = 104
#: ``[queue, [[id, expires_at_ms], ...]]``: when messages with a time to live expire.
SNAPSHOT_EXPIRIES = 105
#: ``[queue, [[dedup id, first publish ms, message id], ...]]``: remembered dedup ids,
#: oldest first (a queue's rows may span several records, in order).
SNAPSHOT_DEDUP = 106
#: Up to 16,000 remembered dedup ids of a queue as three columns, oldest first: the ids,
#: their first publish times and their message ids (cheaper to write than 106's rows;
#: snapshots from before it carry 106 instead).
SNAPSHOT_DEDUP_COLUMNS = 111
#: A topic's header, up to 1000 of its messages, and a group's header (cursors, filter).
SNAPSHOT_TOPIC = 107
SNAPSHOT_TOPIC_MESSAGES = 108
SNAPSHOT_GROUP = 109
#: Up to 1000 waiting messages of a queue with what each waits on (SPEC §8.14).
SNAPSHOT_WAITS = 110
#: Up to 16,000 remembered dedup ids of a topic, as 111's columns:
#: ``[topic, ids, first publish times, message ids]``, oldest first.
SNAPSHOT_TOPIC_DEDUP = 112

#: ``take_woken``'s count for a queue that was deleted: every waiter looks again.
WAKE_ALL = 2**62

#: Why a message was dead-lettered.
REASON_MAX_ATTEMPTS = "max_attempts"
REASON_REJECTED = "rejected"
REASON_EXPIRED = "expired"
REASON_OVERFLOW = "overflow"
REASON_DEPENDENCY = "dependency"

_F = TypeVar("_F", bound=Callable[..., None])


def applies(mutation_class: type[Mutation]) -> Callable[[_F], _F]:
    """Mark a ``BrokerState`` method as the applier of ``mutation_class`` (rule 1)."""
    def mark(method: _F) -> _F:
        method.applies = mutation_class  # type: ignore[attr-defined]
        return method
    return mark


class StateObserver(Protocol):
    """Told by the appliers where messages come from (rule 5)."""

    def queue_created(self, queue: str) -> None: ...
    def queue_deleted(self, queue: str) -> None: ...
    def published(self, queue: str, first_id: int, count: int) -> None: ...
    def moved(self, queue: str, ids: list[int], target: str, first_id: int) -> None:
        """Messages ``ids`` of ``queue`` are now ``target``'s ``first_id, first_id + 1, ...``
        (dead-lettered, or redriven back)."""


class BrokerState(TopicAppliers):
    """All queues and topics, and timers across them."""

    def __init__(self) -> None:
        self.queues: dict[str, Queue] = {}
        self._init_topics()
        #: (queue, id) -> the (queue, id) of each message waiting on it (SPEC §8.14).
        self.dependents: dict[tuple[str, int], list[tuple[str, int]]] = {}
        #: (deadline_ms, queue name): when some queue next needs ``due``.
        self._timers: list[tuple[int, str]] = []
        self._timer_at: dict[str, int] = {}
        #: Queues that may have new ready messages since the last ``take_woken``: how many
        #: (``WAKE_ALL`` when the queue vanished).
        self._woken: dict[str, int] = {}
        #: Log bytes the acks of every live message can take: the sum of ``ack_cost``
        #: over them. The live path keeps this much room reserved in the log.
        self.ack_reserve = 0
        #: Snapshot records ``from_records(lenient=True)`` could not apply.
        self.import_skipped = 0
        self.observer: StateObserver | None = None
        self._appliers: dict[int, Callable[..., None]] = {
            rtype: getattr(self, name) for rtype, name in _APPLIERS.items()}

    # -- the one way in -------------------------------------------------------------

    def apply(self, mutation: Mutation) -> None:
        self.apply_fields(mutation.TYPE, mutation.fields())

    def apply_fields(self, rtype: int, fields: list[Any]) -> None:
        """Apply a mutation given as its record type and ``fields()``."""
        self._appliers[rtype](*fields)
        if self.group_queues and rtype in _QUEUE_CHANGES:
            self.group_changed(fields[0])

    def apply_record(self, rtype: int, payload: bytes) -> None:
        """Apply a WAL record (type byte and msgpack payload)."""
        self.apply_fields(rtype, decode_fields(payload))

    def apply_items(self, items: list[list[Any]]) -> None:
        """Apply ``[type, fields]`` items, in order (``fold_records`` makes them)."""
        appliers = self._appliers
        for rtype, fields in items:
            appliers[rtype](*fields)
            if self.group_queues and rtype in _QUEUE_CHANGES:
                self.group_changed(fields[0])

    def take_woken(self) -> dict[str, int]:
        """Queues that gained ready messages since the last call, with how many (an upper
        bound), or ``WAKE_ALL`` for queues that were deleted."""
        woken = self._woken
        if woken:
            self._woken = {}
        return woken

    def _wake(self, name: str, count: int) -> None:
        woken = self._woken
        woken[name] = woken.get(name, 0) + count

    # -- timers ---------------------------------------------------------------------

    def next_timer(self) -> int | None:
        """Earliest time (ms) at which ``due`` may have work; None when no timers."""
        return self._timers[0][0] if self._timers else None

    def due(self, now_ms: int) -> list[Mutation]:
        """The EXPIRE / RELEASE / PROMOTE mutations that passed times to live, lease
        expiries and elapsed delays call for (in that order, per queue)."""
        out: list[Mutation] = []
        timers = self._timers
        while timers and timers[0][0] <= now_ms:
            at, name = heapq.heappop(timers)
            if self._timer_at.get(name) != at:
                continue
            del self._timer_at[name]
            if name.startswith(TOPIC_TIMER):
                out.extend(self.topic_due(name, now_ms))
                continue
            queue = self.queues[name]
            expired, promoted, gone = queue.due(now_ms)
            if gone:
                out.append(Expire(name, gone, now_ms))
            if expired:
                out.append(Release(name, expired, 0, True, now_ms))
            if promoted:
                out.append(Promote(name, promoted))
            nxt = queue.next_deadline()
            if nxt is not None:
                # Never at or before now: this loop must end even if a stale entry remains.
                self._schedule(name, max(nxt, now_ms + 1))
        return out

    def _schedule(self, name: str, at_ms: int) -> None:
        current = self._timer_at.get(name)
        if current is None or at_ms < current:
            self._timer_at[name] = at_ms
            heapq.heappush(self._timers, (at_ms, name))

    # -- appliers -------------------------------------------------------------------

    @applies(QueueCreate)
    def _queue_create(self, name: str, *settings: Any) -> None:
        # QueueCreate's fields are QueueSettings' fields, in order (checked at import).
        if name not in self.queues:
            queue = self.queues[name] = Queue(QueueSettings(name, *settings))
            queue.on_ready = self._wake
            if self.observer is not None:
                self.observer.queue_created(name)

    @applies(QueueDelete)
    def _queue_delete(self, name: str, now_ms: int = 0) -> None:
        queue = self.queues.pop(name, None)
        self._timer_at.pop(name, None)
        self._woken[name] = WAKE_ALL
        if queue is not None:
            self.ack_reserve -= len(queue) * ack_cost(name)
            gone = list(queue.messages)
            queue.remove(gone)
            self._settle(name, gone, False, now_ms)
            target = self.queues.get(queue.settings.dead_letter or "")
            if target is not None:
                target.forget_source(name)  # a new queue of this name starts at id 1
            if self.observer is not None:
                self.observer.queue_deleted(name)

    @applies(Publish)
    def _publish(
        self, name: str, first_id: int, now_ms: int, bodies: list[bytes],
        keys: list[bytes | None] | None, priorities: list[int] | None,
        ready_at_ms: list[int] | None, expires_at_ms: list[int] | None = None,
        dedup_ids: list[bytes | None] | None = None,
        depends_on: list[list[list[Any]] | None] | None = None,
    ) -> None:
        queue = self.queues[name]
        parked = len(queue.parked)
        waiting = queue.waiting
        waits, failed = self._dependencies(name, first_id, depends_on) if depends_on is not None else (None, [])
        queue.add(first_id, now_ms, bodies, keys, priorities, ready_at_ms, expires_at_ms, waits)
        if dedup_ids is not None:
            queue.dedup.remember(first_id, dedup_ids, now_ms)
        self.ack_reserve += len(bodies) * ack_cost(name)
        # Wake as many as became deliverable: not the delayed, nor those an ordered
        # queue holds back for their key's turn, nor those waiting on dependencies.
        ready = len(bodies) if ready_at_ms is None else ready_at_ms.count(0)
        ready -= len(queue.parked) - parked
        if waits:
            ready -= sum(1 for mid in waits if not queue.messages[mid].deadline)
            for mid, deps in waits.items():
                for dep in deps:
                    self.dependents.setdefault(dep, []).append((name, mid))
        if failed:  # a dependency was dead-lettered already: so is this one (SPEC §8.14)
            self._dead_letter(queue, [queue.messages[mid] for mid, _ in failed], now_ms, REASON_DEPENDENCY,
                              [f"dependency {q}#{i} was dead-lettered" for _, (q, i) in failed])
        del waiting
        if ready:
            self._wake(name, ready)
        if queue.delayed or expires_at_ms is not None:
            nxt = queue.next_deadline()
            if nxt is not None:
                self._schedule(name, nxt)
        if self.observer is not None:
            self.observer.published(name, first_id, len(bodies))

    @applies(Lease)
    def _lease(self, name: str, deadline_ms: int, ids: list[int]) -> None:
        self.queues[name].lease(deadline_ms, ids)
        self._schedule(name, deadline_ms)

    @applies(Ack)
    def _ack(self, name: str, ids: list[int]) -> None:
        queue = self.queues[name]
        removed = queue.remove(ids)
        queue.acked += removed
        self.ack_reserve -= removed * ack_cost(name)
        if self.dependents:
            self._settle(name, ids, True, 0)

    @applies(Release)
    def _release(
        self, name: str, ids: list[int], ready_at_ms: int, expired: bool, now_ms: int,
        error: str | None = None, at_once: bool = False, returned: bool = False,
    ) -> None:
        queue = self.queues[name]
        # A message given back unhandled is never dead-lettered for that delivery.
        max_attempts = 0 if returned else queue.settings.max_attempts
        # Without a delay of its own a release follows the queue's retry backoff.
        backoff = not ready_at_ms and not (at_once or returned) and queue.settings.retry_delay_ms
        dead: list[Message] = []
        msgs = queue.messages
        released = 0
        for mid in dict.fromkeys(ids):
            msg = msgs.get(mid)
            if msg is None or msg.state != LEASED:
                continue
            if expired:
                queue.expired += 1
            else:
                queue.nacked += 1
            if error is not None:
                queue.errors[mid] = error
            if returned:
                msg.attempts -= 1
            if max_attempts and msg.attempts >= max_attempts:
                dead.append(msg)
            elif backoff:
                until = queue.backoff_until(msg, now_ms)
                queue.release(msg, until)
                if until:
                    self._schedule(name, until)
                else:
                    released += 1
            else:
                queue.release(msg, ready_at_ms)
                released += 1
        if dead:
            self._dead_letter(queue, dead, now_ms, REASON_MAX_ATTEMPTS)
        if ready_at_ms:
            self._schedule(name, ready_at_ms)
        elif released:
            self._wake(name, released)

    @applies(Reject)
    def _reject(self, name: str, ids: list[int], error: str | None, now_ms: int) -> None:
        queue = self.queues[name]
        msgs = queue.messages
        dead = [msg for mid in dict.fromkeys(ids)
                if (msg := msgs.get(mid)) is not None and msg.state == LEASED]
        if error is not None:
            for msg in dead:
                queue.errors[msg.id] = error
        if dead:
            self._dead_letter(queue, dead, now_ms, REASON_REJECTED)

    @applies(Expire)
    def _expire(self, name: str, ids: list[int], now_ms: int) -> None:
        queue = self.queues[name]
        msgs, expires = queue.messages, queue.expires
        gone = [msg for mid in dict.fromkeys(ids)
                if (msg := msgs.get(mid)) is not None and expires.get(mid, now_ms + 1) <= now_ms]
        if not gone:
            return
        queue.ttl_expired += len(gone)
        if queue.settings.on_expire == "dead_letter":
            self._dead_letter(queue, gone, now_ms, REASON_EXPIRED)
        else:
            queue.remove([m.id for m in gone])
            self.ack_reserve -= len(gone) * ack_cost(name)
            self._settle(name, [m.id for m in gone], False, now_ms)

    @applies(Evict)
    def _evict(self, name: str, ids: list[int], now_ms: int) -> None:
        queue = self.queues[name]
        msgs = queue.messages
        gone = [msg for mid in dict.fromkeys(ids)
                if (msg := msgs.get(mid)) is not None and msg.state != LEASED]
        if not gone:
            return
        queue.overflowed += len(gone)
        if queue.settings.overflow == Overflow.DEAD_LETTER_OLDEST:
            self._dead_letter(queue, gone, now_ms, REASON_OVERFLOW)
        else:
            queue.remove([m.id for m in gone])
            self.ack_reserve -= len(gone) * ack_cost(name)
            self._settle(name, [m.id for m in gone], False, now_ms)

    def _dead_letter(self, queue: Queue, msgs: list[Message], now_ms: int, reason: str,
                     why: list[str] | None = None, settle: bool = True) -> None:
        """Move messages to the dead-letter queue, or drop them (rules in SPEC §8.4;
        expired and evicted ones count only in ``ttl_expired`` or ``overflowed`` when
        dropped, SPEC §8.8 and §8.12); ``why`` replaces their error texts. Messages
        waiting on them are dead-lettered too (SPEC §8.14)."""
        ids = [m.id for m in msgs]
        errors = queue.errors
        records = [DeadLetter(queue.name, m.id, m.attempts, reason,
                              why[i] if why is not None else errors.get(m.id), now_ms)
                   for i, m in enumerate(msgs)]
        queue.remove(ids)
        self.ack_reserve -= len(msgs) * ack_cost(queue.name)
        target = self.queues.get(queue.settings.dead_letter) if queue.settings.dead_letter else None
        if target is None:
            if reason != REASON_EXPIRED and reason != REASON_OVERFLOW:
                queue.dropped += len(msgs)
            if settle:
                self._settle(queue.name, ids, False, now_ms)
            return
        first_id = target.next_id
        target.add(first_id, 0, [m.body for m in msgs], [m.key for m in msgs],
                   [m.priority for m in msgs])
        target.keep_published_at(first_id, msgs)
        target.note_dead_letters(first_id, records)
        self._wake(target.name, len(msgs))
        self.ack_reserve += len(msgs) * ack_cost(target.name)
        queue.dead_lettered += len(msgs)
        if self.observer is not None:
            self.observer.moved(queue.name, ids, target.name, first_id)
        if settle:
            self._settle(queue.name, ids, False, now_ms)

    @applies(Take)
    def _take(self, name: str, ids: list[int]) -> None:
        queue = self.queues[name]
        msgs = queue.messages
        taken = [mid for mid in ids if (m := msgs.get(mid)) is not None and m.state == READY]
        removed = queue.remove(taken)
        queue.acked += removed
        queue.delivered += removed
        self.ack_reserve -= removed * ack_cost(name)
        if self.dependents:
            self._settle(name, taken, True, 0)

    @applies(Extend)
    def _extend(self, name: str, deadline_ms: int, ids: list[int]) -> None:
        self.queues[name].extend(deadline_ms, ids)
        self._schedule(name, deadline_ms)

    @applies(Redrive)
    def _redrive(self, name: str, ids: list[int], now_ms: int = 0) -> None:
        dlq = self.queues[name]
        moves: dict[str, list[Message]] = {}
        for mid in dict.fromkeys(ids):
            target = self.redrive_target(dlq, mid)
            if target is not None:
                moves.setdefault(target.name, []).append(dlq.messages[mid])
        for target_name, msgs in moves.items():
            moved = [m.id for m in msgs]
            dlq.remove(moved)
            self.ack_reserve -= len(msgs) * ack_cost(name)
            self._settle(name, moved, False, now_ms)
            target = self.queues[target_name]
            first_id = target.next_id
            target.add(first_id, 0, [m.body for m in msgs], [m.key for m in msgs],
                       [m.priority for m in msgs])
            target.keep_published_at(first_id, msgs)
            self.ack_reserve += len(msgs) * ack_cost(target_name)
            self._wake(target_name, len(msgs))
            if self.observer is not None:
                self.observer.moved(name, moved, target_name, first_id)

    # -- dependencies (SPEC §8.14) ---------------------------------------------------------

    def dead_lettered(self, queue: str, mid: int) -> bool:
        """Whether message ``mid`` of ``queue`` is in its dead-letter queue now. Reads only."""
        source = self.queues.get(queue)
        dlq = self.queues.get(source.settings.dead_letter or "") if source is not None else None
        return dlq is not None and dlq.dead_letter_of(queue, mid) is not None

    def _dependencies(self, name: str, first_id: int, depends_on: list[list[list[Any]] | None]
                      ) -> tuple[dict[int, set[tuple[str, int]]] | None, list[tuple[int, tuple[str, int]]]]:
        """For messages ``first_id, ...`` of ``name`` and the ``[queue, id]`` pairs each
        depends on: what each still waits on (pairs still held, or earlier in this
        publish), and which depend on a dead letter (with the first such pair). Pairs
        gone otherwise count as acked. Reads only."""
        waits: dict[int, set[tuple[str, int]]] = {}
        failed: list[tuple[int, tuple[str, int]]] = []
        for i, deps in enumerate(depends_on):
            if not deps:
                continue
            mid = first_id + i
            pending: set[tuple[str, int]] = set()
            for queue, dep_id in deps:
                pair = (queue, dep_id)
                held = self.queues.get(queue)
                if (queue == name and first_id <= dep_id < mid) or (held is not None and dep_id in held.messages):
                    pending.add(pair)
                elif self.dead_lettered(queue, dep_id):
                    failed.append((mid, pair))
                    break
            else:
                if pending:
                    waits[mid] = pending
        return waits or None, failed

    def _settle(self, name: str, ids: Iterable[int], acked: bool, now_ms: int) -> None:
        """Messages ``ids`` left queue ``name``: acked, or not (dead-lettered, dropped,
        purged, deleted, redriven). Messages waiting on them lose that dependency: once
        none is left they are ready (or delayed); one that left unacked dead-letters them,
        and so on down the chain (a work list, not recursion: chains may be long)."""
        dependents = self.dependents
        if not dependents:
            return
        work: list[tuple[str, list[int], bool]] = [(name, list(ids), acked)]
        while work:
            source, gone, ok = work.pop()
            for mid in gone:
                waiting = dependents.pop((source, mid), None)
                if not waiting:
                    continue
                for queue_name, dep_id in sorted(waiting):  # one order, restored or replayed
                    queue = self.queues.get(queue_name)
                    msg = queue.messages.get(dep_id) if queue is not None else None
                    if queue is None or msg is None or msg.state != WAITING:
                        continue
                    if ok:
                        pending = queue.waits_on[dep_id]
                        pending.discard((source, mid))
                        if not pending:
                            if queue.unwait(msg):
                                self._wake(queue_name, 1)
                            else:
                                self._schedule(queue_name, msg.deadline)
                    else:
                        self._dead_letter(queue, [msg], now_ms, REASON_DEPENDENCY,
                                          [f"dependency {source}#{mid} was not acked"], settle=False)
                        work.append((queue_name, [dep_id], False))

    def redrive_target(self, dlq: Queue, mid: int) -> Queue | None:
        """The queue ``redrive`` sends message ``mid`` of ``dlq`` back to: its source, if it
        is a dead letter, ready or delayed, and its source queue exists. Reads only."""
        msg = dlq.messages.get(mid)
        record = dlq.sources.get(mid)
        if msg is None or record is None or msg.state not in (READY, DELAYED) \
                or record.source in self.group_queues:  # a group takes only its topic's messages
            return None
        return self.queues.get(record.source)

    @applies(Promote)
    def _promote(self, name: str, ids: list[int]) -> None:
        self.queues[name].promote(ids)
        self._wake(name, len(ids))

    @applies(Txn)
    def _txn(self, steps: list[list[Any]]) -> None:
        apply = self.apply_fields
        for rtype, fields in steps:
            apply(rtype, fields)

    @applies(Recover)
    def _recover(self, now_ms: int) -> None:
        # All leases end at the same moment: queues by name, messages by id, an order
        # that does not depend on whether the state was replayed or restored.
        for name in sorted(self.queues):
            queue = self.queues[name]
            if queue.leased:
                leased = sorted(m.id for m in queue.messages.values() if m.state == LEASED)
                self._release(name, leased, 0, True, now_ms)
        if self.group_queues:
            self.groups_changed()

    @applies(Purge)
    def _purge(self, name: str, leased: bool, now_ms: int = 0) -> None:
        queue = self.queues[name]
        gone = [m.id for m in queue.messages.values() if leased or m.state != LEASED] if self.dependents else []
        removed = queue.purge(leased)
        self.ack_reserve -= removed * ack_cost(name)
        self._settle(name, gone, False, now_ms)

    # -- snapshots ----------------------------------------------------------------------

    def export_records(self, chunk: int = 1000) -> Iterator[tuple[int, bytes]]:
        """The whole state as snapshot records ``(type, payload)``."""
        pack = msgpack.Packer(use_bin_type=True).pack
        for topic_name in sorted(self.topics):
            held = self.topics[topic_name]
            yield SNAPSHOT_TOPIC, pack(held.export_header())
            retained: list[list[Any]] = []
            for row in held.export_messages():
                retained.append(row)
                if len(retained) >= chunk:
                    yield SNAPSHOT_TOPIC_MESSAGES, pack([topic_name, retained])
                    retained = []
            if retained:
                yield SNAPSHOT_TOPIC_MESSAGES, pack([topic_name, retained])
            for ids, at_ms, mids in held.dedup.export_columns(chunk * 16):
                yield SNAPSHOT_TOPIC_DEDUP, pack([topic_name, ids, at_ms, mids])
            for group_name in sorted(held.groups):
                yield SNAPSHOT_GROUP, pack(held.groups[group_name].export_header())
        for name in sorted(self.queues):
            queue = self.queues[name]
            yield SNAPSHOT_QUEUE, pack(queue.export_header())
            rows: list[list[Any]] = []
            for row in queue.export_messages():
                rows.append(row)
                if len(rows) >= chunk:
                    yield SNAPSHOT_MESSAGES, pack([name, rows])
                    rows = []
            if rows:
                yield SNAPSHOT_MESSAGES, pack([name, rows])
            sources = queue.export_sources()
            if sources:
                yield SNAPSHOT_DEAD_LETTERS, pack([name, sources])
            if queue.errors:
                yield SNAPSHOT_ERRORS, pack([name, sorted(map(list, queue.errors.items()))])
            if queue.expires:
                yield SNAPSHOT_EXPIRIES, pack([name, queue.export_expiries()])
            waits = sorted(queue.waits_on.items())
            for start in range(0, len(waits), chunk):
                yield SNAPSHOT_WAITS, pack([name, [[mid, sorted(map(list, deps))]
                                                   for mid, deps in waits[start:start + chunk]]])
            for ids, at_ms, mids in queue.dedup.export_columns(chunk * 16):
                yield SNAPSHOT_DEDUP_COLUMNS, pack([name, ids, at_ms, mids])

    @classmethod
    def from_records(cls, records: Iterable[tuple[int, bytes]], *, lenient: bool = False) -> "BrokerState":
        """Rebuild a state from ``export_records`` output.

        ``lenient`` (the whole records of a damaged snapshot, ``--recover truncate``):
        a record that cannot be applied (its queue, topic or group's header was in the
        damage) is skipped and counted in ``import_skipped``, and what refers to
        messages that are missing (times to live, error texts, dead-letter sources,
        dependencies) is dropped."""
        state = cls()
        #: Group headers by their delivery queue's name, until that queue's header comes.
        groups: dict[str, list[Any]] = {}
        for rtype, payload in records:
            try:
                state._import_record(groups, rtype, msgpack.unpackb(payload, raw=False))
            except Exception:
                if not lenient:
                    raise
                state.import_skipped += 1
        if lenient:
            for queue in state.queues.values():
                queue.drop_dangling()
        state.ack_reserve = state.count_ack_reserve()
        for name, queue in state.queues.items():
            queue.finish_import()
            nxt = queue.next_deadline()
            if nxt is not None:
                state._schedule(name, nxt)
        for held in state.topics.values():
            state._schedule_age(held)
        for name in sorted(state.queues):
            for mid, deps in sorted(state.queues[name].waits_on.items()):
                for dep in sorted(deps):
                    state.dependents.setdefault(dep, []).append((name, mid))
        return state

    def _import_record(self, groups: dict[str, list[Any]], rtype: int, fields: Any) -> None:
        """One snapshot record into this state (``from_records``)."""
        state = self
        if rtype == SNAPSHOT_QUEUE:
            queue = Queue.from_header(fields)
            group = groups.pop(queue.name, None)
            if group is not None:
                topic_name, group_name, cursors, filter, missed, filtered = group
                restored = Group(topic_name, group_name, queue, cursors, filter)
                restored.missed, restored.filtered = missed, filtered
                state._attach(state.topics[topic_name], restored)
            else:
                queue.on_ready = state._wake
                state.queues[queue.name] = queue
        elif rtype == SNAPSHOT_MESSAGES:
            of_group = state.group_queues.get(fields[0])
            if of_group is not None:
                state.queues[fields[0]].import_messages(fields[1], copy_maker(state.topics[of_group.topic]))
            else:
                state.queues[fields[0]].import_messages(fields[1])
        elif rtype == SNAPSHOT_WAITS:
            waits_on = state.queues[fields[0]].waits_on
            for mid, deps in fields[1]:
                waits_on[mid] = {(q, i) for q, i in deps}
        elif rtype == SNAPSHOT_TOPIC:
            held = Topic.from_header(fields)
            state.topics[held.name] = held
        elif rtype == SNAPSHOT_TOPIC_MESSAGES:
            state.topics[fields[0]].import_messages(fields[1])
        elif rtype == SNAPSHOT_TOPIC_DEDUP:
            state.topics[fields[0]].dedup.import_columns(fields[1], fields[2], fields[3])
        elif rtype == SNAPSHOT_GROUP:
            groups[group_queue_name(fields[0], fields[1])] = fields
        elif rtype == SNAPSHOT_DEAD_LETTERS:
            state.queues[fields[0]].import_sources(fields[1])
        elif rtype == SNAPSHOT_ERRORS:
            state.queues[fields[0]].errors.update(map(tuple, fields[1]))
        elif rtype == SNAPSHOT_EXPIRIES:
            state.queues[fields[0]].import_expiries(fields[1])
        elif rtype == SNAPSHOT_DEDUP_COLUMNS:
            state.queues[fields[0]].dedup.import_columns(fields[1], fields[2], fields[3])
        elif rtype == SNAPSHOT_DEDUP:
            state.queues[fields[0]].dedup.import_rows(fields[1])
        else:
            raise ValueError(f"unknown snapshot record type {rtype}")

    # -- reading --------------------------------------------------------------------

    def snapshot_bound(self) -> int:
        """About the most bytes a snapshot of this state takes (``export_records``), from
        counts: bodies plus a row's worst case per message (its integers at 9 bytes),
        and typical sizes for keys, dedup ids, error texts and dead-letter sources (the
        broker scales it by what its snapshots really took, ``Admission``). One pass
        over the queues and topics, not over messages."""
        total = SNAPSHOT_BOUND_BASE
        for q in self.queues.values():
            total += (SNAPSHOT_BOUND_QUEUE + q.bytes + len(q.messages) * SNAPSHOT_BOUND_ROW
                      + len(q.dedup) * SNAPSHOT_BOUND_DEDUP + len(q.expires) * SNAPSHOT_BOUND_EXPIRY
                      + len(q.errors) * SNAPSHOT_BOUND_ERROR + len(q.sources) * SNAPSHOT_BOUND_SOURCE
                      + len(q.waits_on) * SNAPSHOT_BOUND_WAIT)
        for t in self.topics.values():
            total += (SNAPSHOT_BOUND_QUEUE * (1 + len(t.groups)) + t.bytes
                      + len(t) * SNAPSHOT_BOUND_ROW + len(t.dedup) * SNAPSHOT_BOUND_DEDUP)
        return total

    def count_ack_reserve(self) -> int:
        """``ack_reserve`` counted from scratch (it is kept up to date incrementally)."""
        return sum(len(q) * ack_cost(name) for name, q in self.queues.items())

    def topics_snapshot(self) -> dict[str, Any]:
        """A plain, comparable picture of every topic and its groups (tests and tools)."""
        return {
            name: {
                "stats": t.stats(),
                "messages": list(t.export_messages()),
                "groups": {g: [*grp.export_header(), t.lag(grp)] for g, grp in sorted(t.groups.items())},
                "dedup": list(t.dedup.items()),
            }
            for name, t in sorted(self.topics.items())
        }

    def snapshot(self) -> dict[str, Any]:
        """A plain, comparable picture of all queue contents (for tests and tools)."""
        out: dict[str, Any] = {}
        for name, q in sorted(self.queues.items()):
            out[name] = {
                "settings": q.settings,
                "next_id": q.next_id,
                "stats": q.stats(),
                "delivered": q.delivered,
                "ready": [[m.id for m in r.iter_ready()] for r in q.ready_sets],
                "messages": sorted(
                    (m.id, m.body, m.key, m.priority, m.shard, m.attempts, m.state, m.deadline,
                     m.published_at)
                    for m in q.messages.values()
                ),
                "sources": sorted(q.sources.items()),
                "parked": sorted(q.parked),
                "errors": sorted(q.errors.items()),
                "expires": sorted(q.expires.items()),
                "dedup": list(q.dedup.items()),
                "waits_on": sorted((mid, sorted(deps)) for mid, deps in q.waits_on.items()),
            }
        return out



def _find_appliers() -> dict[int, str]:
    """Rule 1: the ``@applies`` methods by record type; every mutation must have one."""
    found: dict[int, str] = {}
    members = {name: member for klass in reversed(BrokerState.__mro__) for name, member in vars(klass).items()}
    for name, member in members.items():
        cls = getattr(member, "applies", None)
        if cls is not None:
            if cls.TYPE in found:
                raise TypeError(f"{cls.__name__} has two appliers: {found[cls.TYPE]} and {name}")
            found[cls.TYPE] = name
    missing = [cls.__name__ for rtype, cls in MUTATIONS.items() if rtype not in found]
    if missing:
        raise TypeError(f"mutations without an applier in BrokerState: {', '.join(missing)}")
    return found


_APPLIERS = _find_appliers()
#: Mutations of a queue's messages (their first field the queue's name): one to a
#: consumer group's delivery queue calls for its upkeep (``TopicAppliers.group_changed``).
_QUEUE_CHANGES = frozenset(cls.TYPE for cls in (Lease, Ack, Release, Reject, Expire, Take, Promote, Purge))
# A queue's settings are declared once (QueueSettings); its creation record mirrors them.
assert QueueCreate.FIELDS[1:] == tuple(f.name for f in dataclass_fields(QueueSettings))[1:], \
    "QueueCreate's fields must be QueueSettings' fields, in order"
