"""Model-based tests of the in-memory queue core, one state machine per queue kind.

Each machine drives the real code the way the server does -- ``outcome =
commands.dispatch(...)`` then ``state.apply(m)`` for every mutation, and
``state.due(now)`` when time passes -- against a small, independent model written with
lists and dicts from the documented semantics (SPEC.md sections 5.7-5.10, 7 and 8):
per-shard order for fifo / lifo / priority / round_robin (the rotation of keys kept as a
list, each key's messages read off the shard's ready list), the shard rule (``crc32c(key) % shards``
when keyed, else ``id % shards``), leases that have expired once ``now >= deadline``,
delays, attempts, and dead-lettering (or dropping) once a released message has been
delivered ``max_attempts`` times, or at once when it is rejected; ``extend`` moves a
lease's deadline as a new lease batch (which orders expiries with equal deadlines).

What is asserted, and how exactly:

* Cross-shard interleaving is asserted exactly (SPEC 7.3): a consume of a multi-shard
  queue starts at the queue's cursor, moves the cursor on by one even when it finds
  nothing, and takes one message from each non-empty shard in turn.
* Messages that become ready together are ordered as SPEC 7.1 says: one publish in entry
  order, one nack in request order, expired leases by deadline and then in the order
  they were delivered (the delivery whose lease expired), elapsed delays by ready time
  and then id, a restart by id.
* Time is explicit. ``advance_time`` moves ``now`` like a punctual timer loop: it stops
  at every lease deadline and delay end on the way and applies ``state.due(t)`` there.
  ``advance_time_late`` jumps and applies ``state.due`` once, like a timer that fired
  late. Each ``due`` must return exactly the releases and promotions the model expects,
  in the documented order. SPEC 7.1 does not order expired leases against elapsed delays
  that come due in the same ``due``; the model settles that tie like the broker (expired
  leases first).
* ``restart`` rebuilds the state from the log of applied mutations, or from a checkpoint
  (``export_records`` / ``from_records``) taken at that moment, then applies a RECOVER
  mutation: every leased message is released as if its lease expired, by id. The
  consume cursor starts again at 0 (SPEC 7.3).

Invariants after every step: stats counters (ready / leased / delayed / messages and
the lifetime counters) match the model; each message's id, body, key, priority, shard,
attempts, state and deadline match; each shard's ready order matches; nothing is lost
or duplicated (published == present + acked + dead-lettered + dropped, and the dead-letter
queue got exactly the messages dead-lettered); ids are unique and handed out in
increasing order; the broker's next timer is never later than the model's next event.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import crc32c
import hypothesis.strategies as st
import msgpack
import pytest
from hypothesis import note, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from broker.commands import Context, Session, dispatch
from broker.config import BrokerConfig
from broker.mutations import Mutation, Promote, Recover, Release
from broker.queues import DELAYED, LEASED, READY
from broker.records import ack_cost
from broker.state import BrokerState

QUEUE = "orders"
DLQ = "orders.dead"
VISIBILITY_MS = 100
START_MS = 1_700_000_000_000
CONFIG = BrokerConfig()


# -- the model --------------------------------------------------------------------------


@dataclass
class MMsg:
    id: int
    body: bytes
    key: bytes | None
    priority: int
    shard: int
    published_at: int
    attempts: int = 0
    state: int = READY
    #: Lease deadline (LEASED) or ready time (DELAYED); else 0.
    deadline: int = 0
    #: (consume number, position in its reply) of the current lease.
    delivered: tuple[int, int] = (0, 0)


class ModelQueue:
    """One queue as plain lists and dicts."""

    def __init__(self, kind: str, shards: int, max_attempts: int, dead_letter: ModelQueue | None):
        self.kind = kind
        self.shards = shards
        self.max_attempts = max_attempts
        self.dead_letter = dead_letter
        self.msgs: dict[int, MMsg] = {}
        #: Per shard: ids of ready messages in the order they became ready.
        self.ready: list[list[int]] = [[] for _ in range(shards)]
        #: Per shard: the keys that have ready messages, in round-robin turn order (kept
        #: for every kind, read only by round_robin): a key joins at the back when it gets
        #: its first ready message, goes to the back when served, leaves when it has none.
        self.rotation: list[list[bytes | None]] = [[] for _ in range(shards)]
        self.consumes = 0
        self.next_id = 1
        self.cursor = 0
        self.issued: list[int] = []
        self.counters = dict(published=0, acked=0, nacked=0, expired=0, dead_lettered=0, dropped=0)

    def shard_of(self, mid: int, key: bytes | None) -> int:
        if self.shards == 1:
            return 0
        if key is not None:
            return crc32c.crc32c(key) % self.shards
        return mid % self.shards

    def add(self, body: bytes, key: bytes | None, priority: int, ready_at: int, published_at: int) -> int:
        mid = self.next_id
        self.next_id += 1
        msg = MMsg(mid, body, key, priority, self.shard_of(mid, key), published_at)
        self.msgs[mid] = msg
        self.issued.append(mid)
        self.counters["published"] += 1
        if ready_at:
            msg.state, msg.deadline = DELAYED, ready_at
        else:
            self._make_ready(msg)
        return mid

    def _make_ready(self, msg: MMsg) -> None:
        msg.state, msg.deadline = READY, 0
        self.ready[msg.shard].append(msg.id)
        if msg.key not in self.rotation[msg.shard]:
            self.rotation[msg.shard].append(msg.key)

    def _unready(self, msg: MMsg, served: bool) -> None:
        """``msg`` leaves the ready list: leased (``served``) or deleted."""
        ready, rotation = self.ready[msg.shard], self.rotation[msg.shard]
        ready.remove(msg.id)
        if served or not any(self.msgs[i].key == msg.key for i in ready):
            rotation.remove(msg.key)
            if any(self.msgs[i].key == msg.key for i in ready):
                rotation.append(msg.key)

    def order(self, shard: int) -> list[int]:
        ids = self.ready[shard]
        if self.kind == "fifo":
            return list(ids)
        if self.kind == "lifo":
            return ids[::-1]
        if self.kind == "round_robin":
            # Turn after turn, each key in rotation order gives its next message.
            groups = [[i for i in ids if self.msgs[i].key == key] for key in self.rotation[shard]]
            return [g[turn] for turn in range(max(map(len, groups), default=0)) for g in groups if turn < len(g)]
        return sorted(ids, key=lambda i: -self.msgs[i].priority)  # stable: fifo among equals

    def select(self, max_count: int) -> list[MMsg]:
        if self.shards == 1:
            return [self.msgs[i] for i in self.order(0)[:max_count]]
        start = self.cursor
        self.cursor = (start + 1) % self.shards
        lists = [self.order((start + k) % self.shards) for k in range(self.shards)]
        lists = [lst for lst in lists if lst]
        chosen: list[MMsg] = []
        depth = 0
        while len(chosen) < max_count and any(depth < len(lst) for lst in lists):
            for lst in lists:
                if depth < len(lst) and len(chosen) < max_count:
                    chosen.append(self.msgs[lst[depth]])
            depth += 1
        return chosen

    def lease(self, msgs: list[MMsg], deadline: int) -> None:
        self.consumes += 1
        for index, m in enumerate(msgs):
            self._unready(m, served=True)
            m.state, m.attempts, m.deadline = LEASED, m.attempts + 1, deadline
            m.delivered = (self.consumes, index)

    def ack(self, ids: list[int]) -> tuple[int, list[int]]:
        present = [i for i in ids if i in self.msgs]
        for i in present:
            self._remove(i)
        self.counters["acked"] += len(present)
        return len(present), [i for i in ids if i not in present]

    def _remove(self, mid: int) -> MMsg:
        msg = self.msgs.pop(mid)
        if msg.state == READY:
            self._unready(msg, served=False)
        return msg

    def release(self, ids: list[int], ready_at: int, expired: bool) -> None:
        dead: list[MMsg] = []
        for mid in ids:
            msg = self.msgs.get(mid)
            if msg is None or msg.state != LEASED:
                continue
            self.counters["expired" if expired else "nacked"] += 1
            if self.max_attempts and msg.attempts >= self.max_attempts:
                dead.append(msg)
            elif ready_at:
                msg.state, msg.deadline = DELAYED, ready_at
            else:
                self._make_ready(msg)
        self._dead_letter(dead)

    def _dead_letter(self, dead: list[MMsg]) -> None:
        """Leave the queue for the dead-letter queue, in this order, or be dropped."""
        for msg in dead:
            del self.msgs[msg.id]
        if self.dead_letter is None:
            self.counters["dropped"] += len(dead)
        else:
            for msg in dead:
                self.dead_letter.add(msg.body, msg.key, msg.priority, 0, msg.published_at)
            self.counters["dead_lettered"] += len(dead)

    def extend(self, ids: list[int], deadline: int) -> list[int]:
        """Leased ones among ``ids`` keep their lease until ``deadline``, as one new lease
        batch (it orders expiries with equal deadlines); returns them."""
        leased = [i for i in ids if i in self.msgs and self.msgs[i].state == LEASED]
        if leased:
            self.consumes += 1
            for index, mid in enumerate(leased):
                msg = self.msgs[mid]
                msg.deadline, msg.delivered = deadline, (self.consumes, index)
        return leased

    def reject(self, ids: list[int]) -> list[int]:
        """Leased ones among ``ids`` go to the dead-letter queue (or are dropped) at once."""
        dead = [self.msgs[i] for i in ids if i in self.msgs and self.msgs[i].state == LEASED]
        self._dead_letter(dead)
        return [m.id for m in dead]

    def fire(self, now: int) -> tuple[list[int], list[int]]:
        """Everything due by ``now``: expired leases (by deadline, then in the order
        they were delivered), then elapsed delays (by ready time, then id)."""
        expired = [mid for _, _, mid in sorted(
            (m.deadline, m.delivered, m.id) for m in self.msgs.values()
            if m.state == LEASED and m.deadline <= now
        )]
        self.release(expired, 0, True)
        promoted = [mid for _, mid in sorted(
            (m.deadline, m.id) for m in self.msgs.values() if m.state == DELAYED and m.deadline <= now
        )]
        for mid in promoted:
            self._make_ready(self.msgs[mid])
        return expired, promoted

    def next_event(self) -> int | None:
        times = [m.deadline for m in self.msgs.values() if m.state in (LEASED, DELAYED)]
        return min(times, default=None)

    def recover(self) -> None:
        self.release(sorted(m.id for m in self.msgs.values() if m.state == LEASED), 0, True)

    def count(self, state: int) -> int:
        return sum(1 for m in self.msgs.values() if m.state == state)


# -- strategies -------------------------------------------------------------------------

bodies = st.binary(max_size=6)
keys = st.one_of(st.none(), st.sampled_from([b"", b"a", b"b", b"order-17", b"\xff"]),
                 st.binary(min_size=1, max_size=4))
priorities = st.one_of(st.none(), st.sampled_from([0, 1, 7, 255]), st.integers(0, 255))
delays = st.one_of(st.none(), st.just(0), st.integers(1, 250))
id_picks = st.lists(st.integers(0, 30), min_size=1, max_size=5)
#: Lease lengths: the queue's default (nil or given explicitly, so that leases taken in
#: one millisecond share deadlines), or any other.
visibilities = st.one_of(st.sampled_from([None, VISIBILITY_MS]), st.integers(1, 300))


@st.composite
def entries(draw: Any) -> list[Any]:
    """A publish entry of 1-4 elements, trailing ones possibly nil."""
    entry = [draw(bodies), draw(keys), draw(priorities), draw(delays)]
    return entry[: draw(st.integers(1, 4))]


# -- the machine ------------------------------------------------------------------------


class QueueMachine(RuleBasedStateMachine):
    KIND = "fifo"
    SHARDS = 1

    def __init__(self) -> None:
        super().__init__()
        self.state = BrokerState()
        self.session = Session(ready=True, client_max_frame=16 * 2**20)
        self.now = START_MS
        self.model: ModelQueue
        self.dlq: ModelQueue | None = None
        #: Every mutation applied, as WAL records.
        self.log: list[tuple[int, bytes]] = []

    # helpers

    def apply(self, mutations: Iterable[Mutation]) -> None:
        for m in mutations:
            self.log.append((m.TYPE, msgpack.packb(m.fields(), use_bin_type=True)))
            self.state.apply(m)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        outcome = dispatch(self.session, op, args, Context(self.state, CONFIG, self.now, "127.0.0.1:7878"))
        self.apply(outcome.mutations)
        assert outcome.wait is None
        return outcome.result or {}

    def pick_ids(self, picks: list[int]) -> list[int]:
        """Ids by index into: leased ids, then every id issued, then ids never issued."""
        leased = [i for i, m in self.model.msgs.items() if m.state == LEASED]
        pool = leased + self.model.issued + [0, self.model.next_id, 2**40, 2**63 - 1]
        return [pool[p % len(pool)] for p in picks]

    def queues(self) -> list[tuple[str, ModelQueue]]:
        out = [(QUEUE, self.model)]
        if self.dlq is not None:
            out.append((DLQ, self.dlq))
        return out

    # rules

    @initialize(
        max_attempts=st.sampled_from([0, 1, 2, 3]),
        dlq=st.one_of(st.none(), st.tuples(st.sampled_from(["fifo", "lifo", "priority", "round_robin"]),
                                           st.integers(1, 3))),
    )
    def create(self, max_attempts: int, dlq: tuple[str, int] | None) -> None:
        if dlq is not None:
            kind, shards = dlq
            assert self.call("queue_create", queue=DLQ, kind=kind, shards=shards) == {
                "queue": DLQ, "created": True}
            self.dlq = ModelQueue(kind, shards, 0, None)
        args: dict[str, Any] = dict(queue=QUEUE, kind=self.KIND, shards=self.SHARDS,
                                    visibility_ms=VISIBILITY_MS, max_attempts=max_attempts)
        if dlq is not None:
            args["dead_letter"] = DLQ
        assert self.call("queue_create", **args) == {"queue": QUEUE, "created": True}
        self.model = ModelQueue(self.KIND, self.SHARDS, max_attempts, self.dlq)

    def _publish(self, batch: list[list[Any]]) -> None:
        first = self.model.next_id
        reply = self.call("publish", queue=QUEUE, messages=batch)
        assert reply == {"first_id": first, "count": len(batch)}
        for entry in batch:
            body, key, priority, delay = (entry + [None, None, None])[:4]
            ready_at = self.now + delay if delay else 0
            self.model.add(body, key, 0 if priority is None else priority, ready_at, self.now)

    @rule(entry=entries())
    def publish_one(self, entry: list[Any]) -> None:
        self._publish([entry])

    @rule(batch=st.lists(entries(), min_size=2, max_size=8))
    def publish_batch(self, batch: list[list[Any]]) -> None:
        self._publish(batch)

    @rule(max_count=st.integers(1, 6), visibility=visibilities)
    def consume(self, max_count: int, visibility: int | None) -> None:
        args: dict[str, Any] = {"queue": QUEUE, "max": max_count}
        if visibility is not None:
            args["visibility_ms"] = visibility
        reply = self.call("consume", **args)
        chosen = self.model.select(max_count)
        expected = [[m.id, m.body, m.attempts + 1, m.key, m.priority, m.published_at] for m in chosen]
        assert reply == {"messages": expected}
        delivered = [d[0] for d in reply["messages"]]
        assert len(set(delivered)) == len(delivered)
        if chosen:
            self.model.lease(chosen, self.now + (visibility or VISIBILITY_MS))

    @rule(picks=id_picks)
    def ack(self, picks: list[int]) -> None:
        ids = self.pick_ids(picks)
        reply = self.call("ack", queue=QUEUE, ids=ids)
        acked, missing = self.model.ack(list(dict.fromkeys(ids)))
        assert reply == {"acked": acked, "missing": missing}

    @rule(picks=id_picks, delay=st.one_of(st.none(), st.integers(0, 250)))
    def nack(self, picks: list[int], delay: int | None) -> None:
        ids = list(dict.fromkeys(self.pick_ids(picks)))
        args: dict[str, Any] = {"queue": QUEUE, "ids": ids}
        if delay is not None:
            args["delay_ms"] = delay
        reply = self.call("nack", **args)
        leased = [i for i in ids if i in self.model.msgs and self.model.msgs[i].state == LEASED]
        assert reply == {"released": len(leased), "missing": [i for i in ids if i not in leased]}
        self.model.release(leased, self.now + delay if delay else 0, False)

    @rule(picks=id_picks, visibility=visibilities)
    def extend(self, picks: list[int], visibility: int | None) -> None:
        ids = list(dict.fromkeys(self.pick_ids(picks)))
        args: dict[str, Any] = {"queue": QUEUE, "ids": ids}
        if visibility is not None:
            args["visibility_ms"] = visibility
        reply = self.call("extend", **args)
        extended = self.model.extend(ids, self.now + (visibility or VISIBILITY_MS))
        assert reply == {"extended": len(extended), "missing": [i for i in ids if i not in extended]}

    @rule(picks=id_picks)
    def reject(self, picks: list[int]) -> None:
        ids = list(dict.fromkeys(self.pick_ids(picks)))
        reply = self.call("reject", queue=QUEUE, ids=ids, error="poison")
        rejected = self.model.reject(ids)
        assert reply == {"rejected": len(rejected), "missing": [i for i in ids if i not in rejected]}

    @rule(dt=st.one_of(st.integers(1, 20), st.integers(1, 400)))
    def advance_time(self, dt: int) -> None:
        target = self.now + dt
        while True:
            events = [t for _, q in self.queues() if (t := q.next_event()) is not None and t <= target]
            if not events:
                break
            self.run_timers(min(events))
        self.run_timers(target)

    @rule(dt=st.integers(1, 400))
    def advance_time_late(self, dt: int) -> None:
        self.run_timers(self.now + dt)

    def run_timers(self, at: int) -> None:
        self.now = at
        due = self.state.due(at)
        note(f"due({at}) -> {due}")
        self.apply(due)
        expected: list[Mutation] = []
        for name, q in self.queues():
            expired, promoted = q.fire(at)
            if expired:
                expected.append(Release(name, expired, 0, True, at))
            if promoted:
                expected.append(Promote(name, promoted))
        # Exactly what fell due, in the documented order (only QUEUE has timers).
        assert due == expected

    @rule(from_checkpoint=st.booleans())
    def restart(self, from_checkpoint: bool) -> None:
        """Start again from the log, or from a checkpoint taken now (a clean shutdown),
        then apply the start-up RECOVER record. The cursor starts again at 0."""
        if from_checkpoint:
            state = BrokerState.from_records(list(self.state.export_records()))
        else:
            state = BrokerState()
            for rtype, payload in self.log:
                state.apply_record(rtype, payload)
        self.state = state
        self.apply([Recover(self.now)])
        self.model.recover()
        for _, q in self.queues():
            q.cursor = 0

    # invariants

    @invariant()
    def counts_match(self) -> None:
        for name, q in self.queues():
            stats = self.call("queue_stats", queue=name)
            expected = {
                "ready": q.count(READY), "leased": q.count(LEASED), "delayed": q.count(DELAYED),
                "messages": len(q.msgs), **q.counters,
            }
            assert {k: stats[k] for k in expected} == expected, name
            assert stats["messages"] == stats["ready"] + stats["leased"] + stats["delayed"]

    @invariant()
    def messages_match(self) -> None:
        snap = self.state.snapshot()
        for name, q in self.queues():
            expected = sorted(
                (m.id, m.body, m.key, m.priority, m.shard, m.attempts, m.state, m.deadline,
                 m.published_at)
                for m in q.msgs.values()
            )
            assert snap[name]["messages"] == expected, name
            assert snap[name]["ready"] == [q.order(s) for s in range(q.shards)], name
            assert snap[name]["next_id"] == q.next_id

    @invariant()
    def nothing_lost_or_duplicated(self) -> None:
        for name, q in self.queues():
            c = q.counters
            assert c["published"] == len(q.issued) == len(set(q.issued))
            assert q.issued == sorted(q.issued)
            assert c["published"] == len(q.msgs) + c["acked"] + c["dead_lettered"] + c["dropped"], name
        if self.dlq is not None:
            assert self.dlq.counters["published"] == self.model.counters["dead_lettered"]

    @invariant()
    def ack_reserve_is_kept_exactly(self) -> None:
        assert self.state.ack_reserve == self.state.count_ack_reserve()
        assert self.state.ack_reserve == sum(
            len(q.msgs) * ack_cost(name) for name, q in self.queues())

    @invariant()
    def timers_not_late(self) -> None:
        events = [t for _, q in self.queues() if (t := q.next_event()) is not None]
        if events:
            nxt = self.state.next_timer()
            assert nxt is not None and nxt <= min(events)


#: Shrink one failure at a time: shrinking several at once takes minutes.
_STEPS = settings(stateful_step_count=30, report_multiple_bugs=False)


def _machine(kind: str, shards: int) -> Any:
    cls = type(f"{kind.title()}{shards}Machine", (QueueMachine,), {"KIND": kind, "SHARDS": shards})
    case = cls.TestCase
    case.settings = _STEPS
    return case


TestFifoOneShard = _machine("fifo", 1)
TestFifoThreeShards = _machine("fifo", 3)
TestLifoOneShard = _machine("lifo", 1)
TestLifoThreeShards = _machine("lifo", 3)
TestPriorityOneShard = _machine("priority", 1)
TestPriorityThreeShards = _machine("priority", 3)
TestRoundRobinOneShard = _machine("round_robin", 1)
TestRoundRobinThreeShards = _machine("round_robin", 3)


# -- pinned examples ----------------------------------------------------------------------


def _run(state: BrokerState, now: int, op: str, **args: Any) -> dict[str, Any]:
    session = Session(ready=True, client_max_frame=16 * 2**20)
    outcome = dispatch(session, op, args, Context(state, CONFIG, now, "127.0.0.1:7878"))
    for m in outcome.mutations:
        state.apply(m)
    return outcome.result or {}


@pytest.mark.parametrize("kind", ["fifo", "lifo", "priority", "round_robin"])
@pytest.mark.parametrize("with_dlq", [True, False])
def test_relapse_at_same_deadline_dead_letters_once(kind: str, with_dlq: bool) -> None:
    """A message nacked and leased again within the same millisecond gets the same
    deadline twice; when that lease expires with its attempts used up, the message must
    be dead-lettered (or dropped) once and counted as one expiry."""
    state, now = BrokerState(), START_MS
    extra: dict[str, Any] = {}
    if with_dlq:
        _run(state, now, "queue_create", queue=DLQ, kind=kind)
        extra["dead_letter"] = DLQ
    _run(state, now, "queue_create", queue=QUEUE, kind=kind, visibility_ms=VISIBILITY_MS,
         max_attempts=2, **extra)
    _run(state, now, "publish", queue=QUEUE, messages=[[b"x"]])
    assert _run(state, now, "consume", queue=QUEUE)["messages"][0][:3] == [1, b"x", 1]
    assert _run(state, now, "nack", queue=QUEUE, ids=[1]) == {"released": 1, "missing": []}
    assert _run(state, now, "consume", queue=QUEUE)["messages"][0][:3] == [1, b"x", 2]
    for m in state.due(now + VISIBILITY_MS):
        state.apply(m)
    stats = _run(state, now, "queue_stats", queue=QUEUE)
    assert stats["messages"] == 0
    assert (stats["nacked"], stats["expired"]) == (1, 1)
    assert (stats["dead_lettered"], stats["dropped"]) == ((1, 0) if with_dlq else (0, 1))
    if with_dlq:
        dead = _run(state, now, "queue_stats", queue=DLQ)
        assert (dead["published"], dead["messages"]) == (1, 1)


@pytest.mark.parametrize("kind", ["fifo", "lifo", "priority", "round_robin"])
def test_expired_leases_return_in_the_order_they_were_delivered(kind: str) -> None:
    """SPEC 7.1: leases that expire together come back by deadline, then in the order the
    messages were delivered. Message 1 is delivered, nacked, and delivered again right
    after message 2 within the same millisecond (so with the same deadline); the lease
    that expires is that later delivery, so message 1 becomes ready after message 2."""
    state, now = BrokerState(), START_MS
    _run(state, now, "queue_create", queue=QUEUE, kind=kind, visibility_ms=VISIBILITY_MS)
    _run(state, now, "publish", queue=QUEUE, messages=[[b"one"]] if kind == "lifo" else [[b"one"], [b"two"]])
    assert [d[0] for d in _run(state, now, "consume", queue=QUEUE)["messages"]] == [1]
    assert _run(state, now, "nack", queue=QUEUE, ids=[1]) == {"released": 1, "missing": []}
    if kind == "lifo":
        _run(state, now, "publish", queue=QUEUE, messages=[[b"two"]])
    assert [d[0] for d in _run(state, now, "consume", queue=QUEUE, max=2)["messages"]] == [2, 1]
    for m in state.due(now + VISIBILITY_MS):
        state.apply(m)
    # They became ready as 2, then 1.
    expected = [1, 2] if kind == "lifo" else [2, 1]
    assert state.snapshot()[QUEUE]["ready"] == [expected]
    redelivered = _run(state, now + VISIBILITY_MS, "consume", queue=QUEUE, max=2)["messages"]
    assert [d[0] for d in redelivered] == expected
