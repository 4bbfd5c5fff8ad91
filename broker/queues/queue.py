"""A queue: its settings, its shards' ready sets, and its timers.

Pure state: no clock, no I/O. Every method that changes state is called from
``BrokerState``'s appliers with values taken from a mutation record; ``select`` and
``due`` only read (``due`` also drops stale timer entries, which are indexes, not state).
"""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from dataclasses import dataclass
from typing import Any

from protocol import Overflow, retry_delay, shard_for_key

from .dedup import DedupIds
from .message import DELAYED, DELETED, LEASED, READY, WAITING, Message, plain_messages
from .ready import READY_SETS, ReadySet

#: Bytes a delivery adds to a consume reply beyond its body and key, at least its
#: msgpack overhead (34 at most: array 1, id 9, body header 5, attempt 5, key header 3,
#: priority 2, published_at 9).
DELIVERY_OVERHEAD = 40
#: Bytes a peeked message adds beyond ``DELIVERY_OVERHEAD`` (a peeked row takes 52 at
#: most beyond its body and key: it adds the state 8, until_ms 9 and a nil 1).
PEEK_EXTRA = 24
#: Bytes a peeked dead letter's record adds beyond its source queue's name and error text.
DEAD_LETTER_OVERHEAD = 96


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Where a dead-lettered message came from and why (kept by the dead-letter queue)."""

    #: The queue it was dead-lettered from, and its id there.
    source: str
    source_id: int
    #: Deliveries it had in the source queue.
    attempts: int
    #: ``max_attempts`` or ``rejected``.
    reason: str
    #: The last error text a consumer gave (``nack``/``reject``), if any.
    error: str | None
    #: When it was dead-lettered (wall-clock ms).
    at_ms: int

    def row(self, mid: int) -> list[Any]:
        return [mid, self.source, self.source_id, self.attempts, self.reason, self.error, self.at_ms]

    def wire_size(self) -> int:
        """Most bytes this record adds to a ``peek`` reply."""
        return DEAD_LETTER_OVERHEAD + len(self.source) + (len(self.error.encode()) if self.error else 0)


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """What a queue was created with."""

    name: str
    kind: str
    shards: int
    visibility_ms: int
    max_attempts: int
    dead_letter: str | None
    max_messages: int
    #: Retry backoff (SPEC §8.7); queues from before it have these defaults.
    retry_delay_ms: int = 0
    retry_backoff: str = "exponential"
    retry_max_delay_ms: int = 900_000
    retry_jitter: int = 0
    #: Time to live of messages published without one (0: none), and what happens
    #: when it passes (SPEC §8.8).
    ttl_ms: int = 0
    on_expire: str = "drop"
    #: How long a dedup id is remembered (SPEC §8.9); 0: no dedup.
    dedup_window_ms: int = 300_000
    #: Messages with one key are processed one at a time, in publish order (fifo only).
    ordered: bool = False
    #: Bound on the bytes of message bodies held (0: none), and what a publish past
    #: ``max_messages`` or ``max_bytes`` does (``protocol.Overflow``, SPEC §8.12).
    max_bytes: int = 0
    overflow: str = "reject"


#: The header's fields after the counters (``export_header``): the settings and the
#: counter added since, with the defaults an older header that lacks them gets.
_HEADER_LATER = 15
_LATER_DEFAULTS = [0, "exponential", 900_000, 0, 0, "drop", 0, 300_000, False, 0, 0, "reject", 0]


class Queue:
    """Messages of one queue across its shards."""

    def __init__(self, settings: QueueSettings) -> None:
        self.settings = settings
        self.ready_sets: list[ReadySet] = [READY_SETS[settings.kind]() for _ in range(settings.shards)]
        self.messages: dict[int, Message] = {}
        self.next_id = 1
        self.leased = 0
        self.delayed = 0
        #: Messages waiting for their dependencies (SPEC §8.14), and what each still waits
        #: on: (queue, id) pairs.
        self.waiting = 0
        self.waits_on: dict[int, set[tuple[str, int]]] = {}
        #: Bytes of message bodies held.
        self.bytes = 0
        # Lifetime counters.
        self.published = 0
        self.acked = 0
        self.nacked = 0
        self.expired = 0
        self.dead_lettered = 0
        self.dropped = 0
        #: Messages that left because their time to live passed (dropped or dead-lettered).
        self.ttl_expired = 0
        #: Messages that left to make room for a publish (``overflow``, dropped or
        #: dead-lettered).
        self.overflowed = 0
        #: Deliveries: messages leased (each attempt counts), or taken at once (auto-ack).
        self.delivered = 0
        #: The queue's default time to live (``settings.ttl_ms``), for the publish paths.
        self.default_ttl = settings.ttl_ms
        #: ``max_messages`` for the batch fast path of plain publishes, or -1 when no
        #: publish to this queue is run there (one load there): a default time to live
        #: makes none plain, and a byte bound or an eviction policy needs the handler.
        self.plain_limit = -1 if settings.ttl_ms or settings.max_bytes or settings.overflow != Overflow.REJECT \
            else settings.max_messages
        #: Whether a publish must be checked against ``max_bytes`` or may evict
        #: (``commands.publish``); ``max_messages`` alone is checked up front.
        self.bounds_checked = bool(settings.max_bytes) or settings.overflow != Overflow.REJECT
        #: Queues that evict on overflow: ids in the order they arrived, oldest first
        #: (ids of messages gone are dropped lazily); None in other queues.
        self.arrivals: deque[int] | None = deque() if settings.overflow != Overflow.REJECT else None
        #: When each message that has a time to live expires (wall-clock ms), and the
        #: timer heap of (expires_at_ms, id) over them (stale entries skipped).
        self.expires: dict[int, int] = {}
        self._expiry_heap: list[tuple[int, int]] = []
        #: Dedup ids remembered (SPEC §8.9), kept after their messages are gone.
        self.dedup = DedupIds(settings.dedup_window_ms)
        # Timers: (deadline_ms, seq, ids) per lease batch; (ready_at_ms, id) per delayed message.
        self._lease_heap: list[tuple[int, int, list[int]]] = []
        self._delay_heap: list[tuple[int, int]] = []
        self._lease_seq = 0
        #: Shard the next consume starts from (a fairness hint, not logged state).
        self._cursor = 0
        #: Of messages dead-lettered into this queue: id here -> where from and why.
        self.sources: dict[int, DeadLetter] = {}
        #: (source queue, id there) -> id here, for ``sources``.
        self._by_source: dict[tuple[str, int], int] = {}
        #: The last error text consumers gave for messages still held (nack ``error``).
        self.errors: dict[int, str] = {}
        #: Ordered queues (``settings.ordered``): each key's messages in publish order
        #: (ids of messages gone are dropped lazily from the front), and the ready
        #: messages held back because an earlier one of their key is still held.
        self.groups: dict[bytes, deque[int]] = {}
        self.parked: set[int] = set()
        #: Told (queue name, count) when held-back messages become ready (``BrokerState``).
        self.on_ready: Callable[[str, int], None] | None = None
        #: Bytes a delivery of a message adds beyond ``DELIVERY_OVERHEAD`` (a consumer
        #: group's: shard, offset, headers), or None.
        self.row_extra: Callable[[Message], int] | None = None
        #: Ready rows of a snapshot being imported into an ordered queue (``finish_import``).
        self._importing: list[Message] | None = None

    # -- reading -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def ready(self) -> int:
        """Ready messages, those held back by their key's order included."""
        return sum(r.count for r in self.ready_sets) + len(self.parked)

    def __len__(self) -> int:
        return len(self.messages)

    def shard_of(self, msg_id: int, key: bytes | None) -> int:
        """Where a new message goes: by key hash when keyed, else by id (round robin)."""
        n = self.settings.shards
        if n == 1:
            return 0
        return shard_for_key(key, n) if key is not None else msg_id % n

    def select(self, max_count: int, byte_budget: int, now_ms: int | None = None) -> list[Message]:
        """Up to ``max_count`` ready messages to lease, taken round robin across shards,
        whose bodies and keys fit in ``byte_budget`` (at least one if any is ready).
        Given ``now_ms``, messages whose time to live has passed by then are never
        chosen (their ``Expire`` may not be logged yet). Reads only."""
        sets = self.ready_sets
        n = len(sets)
        if n == 1:
            ready = sets[0].iter_ready()
            if now_ms is not None and self.expires:
                ready = self._unexpired(ready, now_ms)
            return take_fitting(ready, max_count, byte_budget, self.row_extra)
        else:
            start = self._cursor
            self._cursor = (start + 1) % n
            order = [sets[(start + i) % n] for i in range(n)]
            sources = [r.iter_ready() for r in order if r.count]
            if now_ms is not None and self.expires:
                sources = [self._unexpired(r, now_ms) for r in sources]
        chosen: list[Message] = []
        budget = byte_budget
        while sources:
            for source in list(sources):
                msg = next(source, None)
                if msg is None:
                    sources.remove(source)
                    continue
                cost = len(msg.body) + (len(msg.key) if msg.key else 0) + DELIVERY_OVERHEAD
                if self.row_extra is not None:
                    cost += self.row_extra(msg)
                if cost > budget and chosen:
                    return chosen
                budget -= cost
                chosen.append(msg)
                if len(chosen) >= max_count:
                    return chosen
        return chosen

    def _unexpired(self, msgs: Iterator[Message], now_ms: int) -> Iterator[Message]:
        expires = self.expires
        for msg in msgs:
            at = expires.get(msg.id)
            if at is None or at > now_ms:
                yield msg

    def dead_letter_of(self, source: str, source_id: int) -> int | None:
        """The id here of message ``source_id`` dead-lettered from ``source``, if held."""
        return self._by_source.get((source, source_id))

    def peek(self, state: int | None) -> Iterator[Message]:
        """Messages (of one ``state``, or all) without leasing them: ready ones in the
        order shards list them from shard 0, then leased ones by deadline, then delayed
        ones by ready time, then waiting ones by id. Reads only."""
        if state is None or state == READY:
            for ready in self.ready_sets:
                yield from ready.iter_ready()
            yield from (self.messages[mid] for mid in sorted(self.parked))
        if state is None or state == LEASED:
            yield from self.leased_in_order()
        if state is None or state == DELAYED:
            yield from sorted((m for m in self.messages.values() if m.state == DELAYED),
                              key=lambda m: (m.deadline, m.id))
        if (state is None or state == WAITING) and self.waits_on:
            yield from (self.messages[mid] for mid in sorted(self.waits_on))

    def leased_in_order(self) -> list[Message]:
        """Leased messages in the order their leases expire: by deadline, then lease
        batch, then position in the batch (the order they were delivered)."""
        msgs = self.messages
        out: list[Message] = []
        for _, seq, ids in sorted(self._lease_heap):
            for mid in ids:
                msg = msgs.get(mid)
                if msg is not None and msg.state == LEASED and msg.lease == seq:
                    out.append(msg)
        return out

    def next_deadline(self) -> int | None:
        """The earliest pending lease, delay or expiry deadline (may be stale), or None."""
        found = [h[0][0] for h in (self._lease_heap, self._delay_heap, self._expiry_heap) if h]
        return min(found) if found else None

    def due(self, now_ms: int) -> tuple[list[int], list[int], list[int]]:
        """(ids whose lease expired, ids whose delay elapsed, ids whose time to live
        passed) by ``now_ms``; an id whose time to live passed is in the last list only.

        Drops the timer entries it returns or finds stale; the caller turns the ids
        into EXPIRE / RELEASE / PROMOTE mutations and applies them at once.
        """
        msgs = self.messages
        gone: list[int] = []
        eheap = self._expiry_heap
        if eheap and eheap[0][0] <= now_ms:
            expires = self.expires
            while eheap and eheap[0][0] <= now_ms:
                at, mid = heapq.heappop(eheap)
                if expires.get(mid) == at:
                    gone.append(mid)
        skip = set(gone)
        expired: list[int] = []
        heap = self._lease_heap
        while heap and heap[0][0] <= now_ms:
            _, seq, ids = heapq.heappop(heap)
            for mid in ids:
                msg = msgs.get(mid)
                if msg is not None and msg.state == LEASED and msg.lease == seq and mid not in skip:
                    expired.append(mid)
        promoted: list[int] = []
        dheap = self._delay_heap
        while dheap and dheap[0][0] <= now_ms:
            ready_at, mid = heapq.heappop(dheap)
            msg = msgs.get(mid)
            if msg is not None and msg.state == DELAYED and msg.deadline == ready_at and mid not in skip:
                promoted.append(mid)
        return expired, promoted, gone

    # -- changing (called only from BrokerState appliers) ------------------------------

    def add(
        self,
        first_id: int,
        published_at: int,
        bodies: list[bytes],
        keys: list[bytes | None] | None = None,
        priorities: list[int] | None = None,
        ready_at_ms: list[int] | None = None,
        expires_at_ms: list[int] | None = None,
        waits: dict[int, set[tuple[str, int]]] | None = None,
    ) -> None:
        """Messages ``first_id, first_id + 1, ...`` join: ready, delayed until their
        ``ready_at_ms``, or (ids in ``waits``) waiting on those dependencies first."""
        msgs = self.messages
        sets = self.ready_sets
        n = len(bodies)
        ordered = self.settings.ordered and keys is not None
        if keys is None and priorities is None and ready_at_ms is None and len(sets) == 1 and not waits:
            # The common cases: plain messages into a single shard.
            if n == 1:
                msg = msgs[first_id] = Message(first_id, bodies[0], None, 0, 0, published_at)
                sets[0].push(msg)
            else:
                new = plain_messages(first_id, bodies, published_at)
                msgs.update(zip(range(first_id, first_id + n), new))
                sets[0].push_many(new)
        else:
            for i, body in enumerate(bodies):
                mid = first_id + i
                key = keys[i] if keys is not None else None
                msg = msgs[mid] = Message(
                    mid, body, key, priorities[i] if priorities is not None else 0,
                    self.shard_of(mid, key), published_at)
                ready_at = ready_at_ms[i] if ready_at_ms is not None else 0
                if ordered and key is not None:
                    self.groups.setdefault(key, deque()).append(mid)
                if waits and mid in waits:
                    self.wait(msg, ready_at, waits[mid])
                elif ready_at:
                    self._delay(msg, ready_at)
                else:
                    self._make_ready(msg)
        self.next_id = first_id + n
        self.published += n
        self.bytes += sum(map(len, bodies))
        arrivals = self.arrivals
        if arrivals is not None:
            arrivals.extend(range(first_id, first_id + n))
            if len(arrivals) > 2 * len(msgs) + 1024:
                self.arrivals = deque(mid for mid in arrivals if mid in msgs)
        if expires_at_ms is not None:
            self.set_expiries(first_id, expires_at_ms)

    def add_messages(self, new: Sequence[Message]) -> None:
        """Messages built elsewhere (a consumer group's copies of its topic's messages,
        ``broker.topics``) join as ready, in order; ids grow but need not be consecutive."""
        msgs = self.messages
        ordered = self.settings.ordered
        for msg in new:
            msgs[msg.id] = msg
            if ordered and msg.key is not None:
                self.groups.setdefault(msg.key, deque()).append(msg.id)
            self._make_ready(msg)
        if new:
            self.next_id = max(self.next_id, new[-1].id + 1)
        self.published += len(new)
        self.bytes += sum(len(m.body) for m in new)

    def to_evict(self, count: int, nbytes: int) -> list[int] | None:
        """The ids to evict, oldest first, so that ``count`` new messages of ``nbytes``
        body bytes fit within ``max_messages`` and ``max_bytes`` (SPEC §8.12): ready and
        delayed messages only, leased ones are skipped. ``[]`` when they fit already;
        None when they cannot fit (too many leased, or more than the bounds alone).
        Reads only (it forgets ids of messages gone from ``arrivals``, an index)."""
        s = self.settings
        msgs = self.messages
        over_count = len(msgs) + count - s.max_messages
        over_bytes = self.bytes + nbytes - s.max_bytes if s.max_bytes else 0
        if over_count <= 0 and over_bytes <= 0:
            return []
        arrivals = self.arrivals
        if arrivals is None or count > s.max_messages or (s.max_bytes and nbytes > s.max_bytes):
            return None
        while arrivals and arrivals[0] not in msgs:
            arrivals.popleft()
        chosen: list[int] = []
        for mid in arrivals:
            msg = msgs.get(mid)
            if msg is None or msg.state == LEASED:
                continue
            chosen.append(mid)
            over_count -= 1
            over_bytes -= len(msg.body)
            if over_count <= 0 and over_bytes <= 0:
                return chosen
        return None

    def keep_published_at(self, first_id: int, originals: list[Message]) -> None:
        """Messages ``first_id, ...`` just added as moved copies of ``originals``
        (dead-lettered or redriven) keep the originals' publish times."""
        msgs = self.messages
        for mid, original in zip(range(first_id, first_id + len(originals)), originals):
            msgs[mid].published_at = original.published_at

    def set_expiries(self, first_id: int, expires_at_ms: list[int]) -> None:
        """Messages ``first_id, first_id + 1, ...`` expire at these times (0: never)."""
        expires, heap = self.expires, self._expiry_heap
        for mid, at in zip(range(first_id, first_id + len(expires_at_ms)), expires_at_ms):
            if at:
                expires[mid] = at
                heapq.heappush(heap, (at, mid))
        if len(heap) > 2 * len(expires) + 1024:
            self._expiry_heap = [e for e in heap if expires.get(e[1]) == e[0]]
            heapq.heapify(self._expiry_heap)

    def lease(self, deadline_ms: int, ids: list[int]) -> None:
        msgs = self.messages
        sets = self.ready_sets
        taken: list[int] = []
        self._lease_seq += 1
        seq = self._lease_seq
        for mid in ids:
            msg = msgs.get(mid)
            if msg is None or msg.state != READY:
                continue
            sets[msg.shard].take(msg)
            msg.state = LEASED
            msg.attempts += 1
            msg.deadline = deadline_ms
            msg.lease = seq
            taken.append(mid)
        self.leased += len(taken)
        self.delivered += len(taken)
        if taken:
            heapq.heappush(self._lease_heap, (deadline_ms, seq, taken))
            if len(self._lease_heap) > 2 * self.leased + 1024:
                self._compact_leases()

    def remove(self, ids: list[int]) -> int:
        """Delete messages in any state; returns how many existed."""
        msgs = self.messages
        n = 0
        for mid in ids:
            msg = msgs.pop(mid, None)
            if msg is not None:
                self._unlink(msg)
                n += 1
        if self.sources or self.errors or self.expires:
            self._forget(ids)
        return n

    def purge(self, leased: bool) -> int:
        """Delete every ready and delayed message, and every leased one if ``leased``;
        returns how many went."""
        gone = [m.id for m in self.messages.values() if leased or m.state != LEASED]
        return self.remove(gone)

    def extend(self, deadline_ms: int, ids: list[int]) -> None:
        """Leased messages among ``ids`` are leased until ``deadline_ms`` instead."""
        msgs = self.messages
        self._lease_seq += 1
        seq = self._lease_seq
        moved: list[int] = []
        for mid in ids:
            msg = msgs.get(mid)
            if msg is None or msg.state != LEASED:
                continue
            msg.deadline = deadline_ms
            msg.lease = seq
            moved.append(mid)
        if moved:
            heapq.heappush(self._lease_heap, (deadline_ms, seq, moved))
            if len(self._lease_heap) > 2 * self.leased + 1024:
                self._compact_leases()

    def note_dead_letters(self, first_id: int, records: list[DeadLetter]) -> None:
        """Messages ``first_id, first_id + 1, ...`` arrived as these dead letters."""
        for mid, record in zip(range(first_id, first_id + len(records)), records):
            self.sources[mid] = record
            self._by_source[(record.source, record.source_id)] = mid

    def forget_source(self, source: str) -> None:
        """Queue ``source`` was deleted: its ids no longer name these messages."""
        for mid, record in list(self.sources.items()):
            if record.source == source:
                del self.sources[mid]
                del self._by_source[(record.source, record.source_id)]

    def _forget(self, ids: list[int]) -> None:
        sources, by_source, errors, expires = self.sources, self._by_source, self.errors, self.expires
        for mid in ids:
            record = sources.pop(mid, None)
            if record is not None:
                by_source.pop((record.source, record.source_id), None)
            errors.pop(mid, None)
            expires.pop(mid, None)

    def export_sources(self) -> list[list[Any]]:
        """``sources`` as snapshot rows (``DeadLetter.row``), by id."""
        return [record.row(mid) for mid, record in sorted(self.sources.items())]

    def import_sources(self, rows: list[list[Any]]) -> None:
        """Rows of ``export_sources`` (rows of only ``[id, source, source id]`` too)."""
        for row in rows:
            mid, source, source_id = row[:3]
            attempts, reason, error, at_ms = row[3:] if len(row) > 3 else (0, "max_attempts", None, 0)
            self.sources[mid] = DeadLetter(source, source_id, attempts, reason, error, at_ms)
            self._by_source[(source, source_id)] = mid

    def backoff_until(self, msg: Message, now_ms: int) -> int:
        """When a message released at ``now_ms`` without a delay of its own is ready
        again by the queue's retry backoff: 0 for at once (SPEC §8.7)."""
        s = self.settings
        delay = retry_delay(s.retry_delay_ms, s.retry_backoff, s.retry_max_delay_ms,
                            s.retry_jitter, msg.id, msg.attempts)
        return now_ms + delay if delay else 0

    def release(self, msg: Message, ready_at_ms: int) -> None:
        """A leased message returns: ready now, or delayed until ``ready_at_ms``."""
        self.leased -= 1
        msg.deadline = 0
        if ready_at_ms:
            self._delay(msg, ready_at_ms)
        else:
            self._make_ready(msg)

    def wait(self, msg: Message, ready_at_ms: int, deps: set[tuple[str, int]]) -> None:
        """``msg`` (new, not in a ready set) waits on ``deps``; then it is ready, or
        delayed until ``ready_at_ms``."""
        msg.state = WAITING
        msg.deadline = ready_at_ms
        self.waiting += 1
        self.waits_on[msg.id] = deps

    def unwait(self, msg: Message) -> bool:
        """``msg``'s dependencies are all acked: ready now (True), or delayed (False)."""
        self.waiting -= 1
        del self.waits_on[msg.id]
        if msg.deadline:
            self._delay(msg, msg.deadline)
            return False
        self._make_ready(msg)
        return True

    def promote(self, ids: list[int]) -> None:
        msgs = self.messages
        for mid in ids:
            msg = msgs.get(mid)
            if msg is None or msg.state != DELAYED:
                continue
            self.delayed -= 1
            msg.deadline = 0
            self._make_ready(msg)

    def _make_ready(self, msg: Message) -> None:
        """``msg`` is ready: into its shard's ready set, unless an earlier message of its
        key is still held in an ordered queue (then it waits, parked, for its turn)."""
        msg.state = READY
        if self.groups and msg.key is not None and self._head(msg.key) != msg.id:
            self.parked.add(msg.id)
        else:
            self.ready_sets[msg.shard].push(msg)

    def _head(self, key: bytes) -> int | None:
        """The first message of ``key``'s group still held (ordered queues)."""
        group = self.groups.get(key)
        msgs = self.messages
        while group:
            if group[0] in msgs:
                return group[0]
            group.popleft()
        self.groups.pop(key, None)
        return None

    def _next_in_group(self, key: bytes) -> None:
        """The head of ``key``'s group left: the next one, if parked, becomes ready."""
        head = self._head(key)
        if head is not None and head in self.parked:
            self.parked.remove(head)
            msg = self.messages[head]
            self.ready_sets[msg.shard].push(msg)
            if self.on_ready is not None:
                self.on_ready(self.settings.name, 1)

    def _delay(self, msg: Message, ready_at_ms: int) -> None:
        msg.state = DELAYED
        msg.deadline = ready_at_ms
        self.delayed += 1
        heapq.heappush(self._delay_heap, (ready_at_ms, msg.id))
        if len(self._delay_heap) > 2 * self.delayed + 1024:
            self._delay_heap = [e for e in self._delay_heap if self._delay_entry_live(e)]
            heapq.heapify(self._delay_heap)

    def _unlink(self, msg: Message) -> None:
        self.bytes -= len(msg.body)
        state = msg.state
        msg.state = DELETED
        if self.groups and msg.key is not None:
            if msg.id in self.parked:
                self.parked.remove(msg.id)
                return
            group = self.groups.get(msg.key)
            if group and group[0] == msg.id:
                group.popleft()
                self._next_in_group(msg.key)
        if state == READY:
            self.ready_sets[msg.shard].forget()
        elif state == LEASED:
            self.leased -= 1
        elif state == DELAYED:
            self.delayed -= 1
        elif state == WAITING:
            self.waiting -= 1
            del self.waits_on[msg.id]

    def _delay_entry_live(self, entry: tuple[int, int]) -> bool:
        msg = self.messages.get(entry[1])
        return msg is not None and msg.state == DELAYED and msg.deadline == entry[0]

    def _compact_leases(self) -> None:
        msgs = self.messages
        kept = []
        for deadline, seq, ids in self._lease_heap:
            live = [m for m in ids if (x := msgs.get(m)) is not None and x.state == LEASED and x.lease == seq]
            if live:
                kept.append((deadline, seq, live))
        heapq.heapify(kept)
        self._lease_heap = kept

    # -- snapshots ---------------------------------------------------------------------

    def export_header(self) -> list[Any]:
        """Settings, id counter and lifetime counters, for a snapshot."""
        s = self.settings
        return [s.name, s.kind, s.shards, s.visibility_ms, s.max_attempts, s.dead_letter,
                s.max_messages, self.next_id, self._lease_seq, self.published, self.acked,
                self.nacked, self.expired, self.dead_lettered, self.dropped,
                s.retry_delay_ms, s.retry_backoff, s.retry_max_delay_ms, s.retry_jitter,
                s.ttl_ms, s.on_expire, self.ttl_expired, s.dedup_window_ms, s.ordered,
                self.delivered, s.max_bytes, s.overflow, self.overflowed]

    @classmethod
    def from_header(cls, fields: list[Any]) -> "Queue":
        """From ``export_header``; a header of an older build lacks the later fields."""
        later = fields[_HEADER_LATER:]
        later = later + _LATER_DEFAULTS[len(later):]
        (retry_delay, retry_backoff, retry_max_delay, retry_jitter, ttl_ms, on_expire,
         ttl_expired, dedup_window, ordered, delivered, max_bytes, overflow,
         overflowed) = later[:len(_LATER_DEFAULTS)]
        name, kind, shards, visibility_ms, max_attempts, dead_letter, max_messages = fields[:7]
        queue = cls(QueueSettings(name, kind, shards, visibility_ms, max_attempts, dead_letter, max_messages,
                                  retry_delay, retry_backoff, retry_max_delay, retry_jitter, ttl_ms, on_expire,
                                  dedup_window, ordered, max_bytes, overflow))
        queue.ttl_expired = ttl_expired
        queue.delivered = delivered
        queue.overflowed = overflowed
        (queue.next_id, queue._lease_seq, queue.published, queue.acked, queue.nacked,
         queue.expired, queue.dead_lettered, queue.dropped) = fields[7:15]
        return queue

    def export_messages(self) -> Iterator[list[Any]]:
        """Every message as a row, ready ones first in each shard's push order, then
        leased ones by lease batch, then delayed ones."""
        for ready in self.ready_sets:
            for m in ready.in_push_order():
                yield _snapshot_row(m)
        for mid in sorted(self.parked):  # ready, waiting for their key's turn
            m = self.messages[mid]
            yield _snapshot_row(m)
        delayed = sorted((m for m in self.messages.values() if m.state == DELAYED),
                         key=lambda m: (m.deadline, m.id))
        for m in self.leased_in_order() + delayed:
            yield _snapshot_row(m)
        for mid in sorted(self.waits_on):
            yield _snapshot_row(self.messages[mid])

    def import_messages(self, rows: list[list[Any]], make: Callable[..., Message] = Message) -> None:
        """Add exported rows back, in export order; call ``finish_import`` after the last.
        ``make(id, body, key, priority, shard, published_at)`` builds each message."""
        msgs = self.messages
        sets = self.ready_sets
        if self.settings.ordered and self._importing is None:
            self._importing = []
        importing = self._importing
        for mid, body, key, priority, shard, attempts, state, deadline, lease, *later in rows:
            # Rows from before ``published_at`` lack it: unknown (0).
            msg = msgs[mid] = make(mid, body, key, priority, shard, later[0] if later else 0)
            self.bytes += len(body)
            msg.attempts = attempts
            if state == READY:
                if importing is not None:
                    importing.append(msg)  # ``finish_import`` knows the groups
                else:
                    sets[shard].push(msg)
            elif state == DELAYED:
                self._delay(msg, deadline)
            elif state == WAITING:  # what it waits on comes in its own records
                msg.state = WAITING
                msg.deadline = deadline
                self.waiting += 1
            else:
                msg.state = LEASED
                msg.deadline = deadline
                msg.lease = lease
                self.leased += 1

    def export_expiries(self) -> list[list[int]]:
        """``expires`` as snapshot rows ``[id, expires_at_ms]``, by id."""
        return [[mid, at] for mid, at in sorted(self.expires.items())]

    def import_expiries(self, rows: list[list[int]]) -> None:
        """Rows of ``export_expiries``."""
        expires, heap = self.expires, self._expiry_heap
        for mid, at in rows:
            expires[mid] = at
            heap.append((at, mid))
        heapq.heapify(heap)

    def drop_dangling(self) -> None:
        """Forget what refers to messages this queue does not hold: after importing the
        whole records of a damaged snapshot, some rows may be missing."""
        msgs = self.messages
        for mid in [m for m in self.expires if m not in msgs]:
            del self.expires[mid]
        self._expiry_heap = [e for e in self._expiry_heap if e[1] in msgs]
        heapq.heapify(self._expiry_heap)
        for mid in [m for m in self.errors if m not in msgs]:
            del self.errors[mid]
        for mid in [m for m in self.sources if m not in msgs]:
            record = self.sources.pop(mid)
            self._by_source.pop((record.source, record.source_id), None)
        for mid in [m for m in self.waits_on if m not in msgs]:
            del self.waits_on[mid]

    def finish_import(self) -> None:
        """Rebuild the lease timers from the imported leased messages, and an ordered
        queue's key groups (ready messages join their ready set in the order imported,
        or wait for their key's turn), and the arrival order of a queue that evicts
        (ids only grow, so it is the id order)."""
        if self.arrivals is not None:
            self.arrivals = deque(sorted(self.messages))
        if self._importing is not None:
            for mid in sorted(self.messages):
                key = self.messages[mid].key
                if key is not None:
                    self.groups.setdefault(key, deque()).append(mid)
            for msg in self._importing:
                self._make_ready(msg)
            self._importing = None
        batches: dict[tuple[int, int], list[int]] = {}
        for m in self.messages.values():
            if m.state == LEASED:
                batches.setdefault((m.deadline, m.lease), []).append(m.id)
        self._lease_heap = [(deadline, seq, ids) for (deadline, seq), ids in batches.items()]
        heapq.heapify(self._lease_heap)

    def stats(self) -> dict[str, Any]:
        s = self.settings
        ready = self.ready
        return {
            "queue": s.name, "kind": s.kind, "shards": s.shards,
            "visibility_ms": s.visibility_ms, "max_attempts": s.max_attempts,
            "dead_letter": s.dead_letter, "max_messages": s.max_messages,
            "retry_delay_ms": s.retry_delay_ms, "retry_backoff": s.retry_backoff,
            "retry_max_delay_ms": s.retry_max_delay_ms, "retry_jitter": s.retry_jitter,
            "ttl_ms": s.ttl_ms, "on_expire": s.on_expire, "dedup_window_ms": s.dedup_window_ms,
            "ordered": s.ordered, "max_bytes": s.max_bytes, "overflow": s.overflow,
            "ready": ready, "leased": self.leased, "delayed": self.delayed, "waiting": self.waiting,
            "messages": len(self.messages),
            "published": self.published, "acked": self.acked, "nacked": self.nacked,
            "expired": self.expired, "dead_lettered": self.dead_lettered, "dropped": self.dropped,
            "ttl_expired": self.ttl_expired, "bytes": self.bytes, "overflowed": self.overflowed,
            "delivered": self.delivered, "oldest_ready_at": self.oldest_ready_at(),
        }

    def oldest_ready_at(self) -> int:
        """``published_at`` of the oldest message at the head of a ready set: in each shard
        (and each priority, or each key of a round-robin queue), the ready message made
        ready first; 0 when none is ready. A message made ready again (after a nack, an
        expired lease or a delay) is behind those already ready, and messages held back
        by their key's order, and messages restored without a publish time (0), are not
        looked at. Costs one step per shard, priority or key."""
        return min((m.published_at for ready in self.ready_sets for m in ready.heads() if m.published_at),
                   default=0)


def take_fitting(source: "Iterator[Message]", max_count: int, budget: int,
                 extra: "Callable[[Message], int] | None" = None) -> list[Message]:
    """The first messages of ``source``, up to ``max_count`` and ``budget`` bytes (at least
    one): each costs its body and key plus ``DELIVERY_OVERHEAD``, plus ``extra(msg)``."""
    chosen = list(islice(source, max_count))
    total = sum(len(m.body) for m in chosen) + DELIVERY_OVERHEAD * len(chosen)
    total += sum(len(m.key) for m in chosen if m.key)
    if extra is not None:
        total += sum(map(extra, chosen))
    if total <= budget:
        return chosen
    kept: list[Message] = []
    for msg in chosen:
        cost = len(msg.body) + (len(msg.key) if msg.key else 0) + DELIVERY_OVERHEAD
        if extra is not None:
            cost += extra(msg)
        if cost > budget and kept:
            break
        budget -= cost
        kept.append(msg)
    return kept


def _snapshot_row(m: Message) -> list[Any]:
    """A message as a snapshot row (docs/wal.md, snapshot rule 2)."""
    return [m.id, m.body, m.key, m.priority, m.shard, m.attempts, m.state, m.deadline, m.lease,
            m.published_at]
