"""Live apply versus replay apply.

A hypothesis state machine runs random requests over a few queues through
``commands.dispatch`` and applies every resulting mutation to a live ``BrokerState``, as
the server does, recording each one as the WAL would: ``(TYPE, msgpack.packb(fields))``.
Invalid requests (missing queues, bad dead-letter names, full queues, ...) are part of the
mix; they must leave no record. Time passes explicitly and ``state.due(now)`` is applied
once per step, like a timer that may fire late. The ``checkpoint`` rule takes a snapshot
(``export_records``) at the current log position, as the checkpointer does.

After every step two rebuilt states must have the same ``snapshot()`` as the live one:
``apply_record`` of every record into a fresh ``BrokerState``, and what start-up recovery
builds (``broker/recovery.py``): the newest checkpoint through ``from_records``, then the
records after it through ``fold_records`` and ``apply_items``.

The ``restart`` rule (after a crash, or after a clean shutdown, which writes a checkpoint
first) does what start-up does: rebuild, append a RECOVER record and apply
it to the live and the rebuilt state, and check that they agree; that every message leased
before is ready again with its attempt count kept (or, out of attempts, moved to its
dead-letter queue with attempt 0, or dropped, and counted); that returned messages take
their places in id order, queue by queue in name order (SPEC 7.1, 8.6), and the ready
order is otherwise unchanged; and that the rebuilt timers call for the same releases and
promotions as the live ones. The run then continues on the rebuilt state, as a restarted
broker would.

A topic (``TOPIC``, retention by limits, without groups: the topic model test covers
groups) takes publishes with dedup ids, so that its remembered ids are held to the same
checks (``topics_snapshot()`` with the rest).
"""
from __future__ import annotations

import copy
from typing import Any

import hypothesis.strategies as st
import msgpack
from hypothesis import currently_in_test_context, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from broker.commands import Context, Session, dispatch
from broker.config import BrokerConfig
from broker.mutations import Evict, Mutation, Recover
from broker.records import decode
from broker.queues import DELAYED, LEASED, READY
from broker.records import fold_records
from broker.state import BrokerState
from protocol import ProtocolError, retry_delay

START_MS = 1_700_000_000_000
CONFIG = BrokerConfig()
ADDR = "127.0.0.1:7878"
NAMES = ["alpha", "beta", "gamma"]
TOPIC = "events"

Record = tuple[int, bytes]

names = st.sampled_from(NAMES)
bodies = st.binary(max_size=5)
keys = st.one_of(st.none(), st.sampled_from([b"", b"k1", b"k2"]), st.binary(min_size=1, max_size=3))
priorities = st.one_of(st.none(), st.integers(0, 3), st.just(255))
delays = st.one_of(st.none(), st.just(0), st.integers(1, 300))
#: Retry backoff settings: (retry_delay_ms, retry_backoff, retry_max_delay_ms, retry_jitter).
retries = st.one_of(st.none(), st.tuples(
    st.integers(0, 200), st.sampled_from(["fixed", "exponential"]), st.integers(0, 500), st.integers(0, 100)))
ttls = st.one_of(st.none(), st.integers(1, 400))
#: A queue's time to live settings: (ttl_ms, on_expire).
queue_ttls = st.one_of(st.none(), st.tuples(st.integers(0, 400), st.sampled_from(["drop", "dead_letter"])))
#: Dedup ids from a small pool, so that duplicates (in one batch and across) are common.
dedup_ids = st.one_of(st.none(), st.sampled_from([b"d1", b"d2", b"d3", b"d4"]))
#: A queue's dedup window: mostly shorter than the time a run spans.
dedup_windows = st.one_of(st.none(), st.sampled_from([0, 1, 150, 600]))
id_picks = st.lists(st.integers(0, 20), min_size=1, max_size=4)


@st.composite
def entries(draw: Any) -> list[Any]:
    entry = [draw(bodies), draw(keys), draw(priorities), draw(delays), draw(ttls), draw(dedup_ids)]
    return entry[: draw(st.integers(1, 6))]


def later_settings(retry: tuple[int, str, int, int] | None, ttl: tuple[int, str] | None,
                   dedup_window: int | None = None) -> dict[str, Any]:
    """queue_create arguments for the retry backoff, time to live and dedup settings drawn."""
    settings: dict[str, Any] = {}
    if retry is not None:
        settings.update(zip(("retry_delay_ms", "retry_backoff", "retry_max_delay_ms", "retry_jitter"), retry))
    if ttl is not None:
        settings.update(zip(("ttl_ms", "on_expire"), ttl))
    if dedup_window is not None:
        settings["dedup_window_ms"] = dedup_window
    return settings


def tally(label: str) -> None:
    if currently_in_test_context():
        event(label)


def record(m: Mutation) -> Record:
    return (m.TYPE, msgpack.packb(m.record_fields(), use_bin_type=True))


def replay(log: list[Record]) -> BrokerState:
    state = BrokerState()
    for rtype, payload in log:
        state.apply_record(rtype, payload)
    return state


def startup(log: list[Record], checkpoints: list[tuple[int, list[Record]]]) -> BrokerState:
    """What ``broker.recovery.recover`` builds: newest snapshot, then the log after it."""
    lsn, records = checkpoints[-1] if checkpoints else (0, [])
    state = BrokerState.from_records(records)
    tail = log[lsn:]
    state.apply_items(fold_records(bytes(t for t, _ in tail), [p for _, p in tail]))
    return state


def by_queue(mutations: list[Mutation]) -> dict[str, list[tuple[int, list[Any]]]]:
    """Mutations grouped by queue (the order across queues follows timer bookkeeping)."""
    out: dict[str, list[tuple[int, list[Any]]]] = {}
    for m in mutations:
        out.setdefault(m.fields()[0], []).append((m.TYPE, m.fields()))
    return out


class ReplayMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = BrokerState()
        self.log: list[Record] = []
        #: (records logged before it, snapshot records)
        self.checkpoints: list[tuple[int, list[Record]]] = []
        self.now = START_MS
        self.session = Session(ready=True, client_max_frame=16 * 2**20)

    # helpers

    def commit(self, mutations: list[Mutation] | tuple[Mutation, ...]) -> None:
        for m in mutations:
            rec = record(m)
            assert decode(rec[0], rec[1]) == m
            self.log.append(rec)
            self.state.apply(m)

    def call(self, op: str, **args: Any) -> dict[str, Any] | None:
        before = len(self.log)
        try:
            outcome = dispatch(self.session, op, args, Context(self.state, CONFIG, self.now, ADDR))
        except ProtocolError as exc:
            tally(f"refused: {exc.code.name}")
            assert len(self.log) == before
            return None
        self.commit(outcome.mutations)
        return outcome.result

    def pick_ids(self, name: str, picks: list[int]) -> list[int]:
        queue = self.state.queues.get(name)
        msgs = queue.messages if queue is not None else {}
        pool = [i for i, m in msgs.items() if m.state == LEASED] + sorted(msgs) + [0, 99]
        return [pool[p % len(pool)] for p in picks]

    # rules

    @initialize(
        kinds=st.lists(st.sampled_from(["fifo", "lifo", "priority", "round_robin"]), min_size=3, max_size=3),
        shards=st.lists(st.integers(1, 4), min_size=3, max_size=3),
        max_attempts=st.lists(st.integers(0, 3), min_size=3, max_size=3),
        dead_letters=st.tuples(st.sampled_from([None, "beta", "gamma"]), st.sampled_from([None, "gamma"])),
        retry=st.lists(retries, min_size=3, max_size=3),
        ttl=st.lists(queue_ttls, min_size=3, max_size=3),
        dedup_window=st.lists(dedup_windows, min_size=3, max_size=3),
        bounds=st.lists(st.sampled_from([(0, 0, "reject"), (0, 0, "reject"), (4, 0, "reject"), (0, 12, "reject"),
                                         (4, 0, "drop_oldest"), (6, 20, "drop_oldest"),
                                         (4, 12, "dead_letter_oldest")]), min_size=3, max_size=3),
        topic_window=dedup_windows,
    )
    def create_all(self, kinds: list[str], shards: list[int], max_attempts: list[int],
                   dead_letters: tuple[str | None, str | None],
                   retry: list[tuple[int, str, int, int] | None], ttl: list[tuple[int, str] | None],
                   dedup_window: list[int | None], bounds: list[tuple[int, int, str]],
                   topic_window: int | None = None) -> None:
        """gamma, then beta (dead-letter gamma or none), then alpha (beta, gamma or none);
        and the topic."""
        window = {} if topic_window is None else {"dedup_window_ms": topic_window}
        assert self.call("topic_create", topic=TOPIC, shards=2, retention="limits", max_messages=5,
                         **window) == {"topic": TOPIC, "created": True}
        for name, kind, n, attempts, dlq, backoff, lifetime, window, (most, most_bytes, overflow) in zip(
            ["gamma", "beta", "alpha"], kinds, shards, max_attempts, (None, dead_letters[1], dead_letters[0]),
            retry, ttl, dedup_window, bounds,
        ):
            # fifo queues are ordered (key groups one at a time), the others cannot be
            assert self.call("queue_create", queue=name, kind=kind, shards=n, visibility_ms=100,
                             max_attempts=attempts, dead_letter=dlq, ordered=kind == "fifo",
                             max_messages=most, max_bytes=most_bytes, overflow=overflow,
                             **later_settings(backoff, lifetime, window)) == {"queue": name, "created": True}

    @rule(
        name=names, kind=st.sampled_from(["fifo", "lifo", "priority", "round_robin"]), shards=st.integers(1, 4),
        visibility=st.integers(1, 300), max_attempts=st.integers(0, 3),
        dead_letter=st.one_of(st.none(), names), max_messages=st.sampled_from([0, 4, 12]),
        retry=retries, ttl=queue_ttls, dedup_window=dedup_windows,
        max_bytes=st.sampled_from([0, 0, 6, 20]),
        overflow=st.sampled_from(["reject", "drop_oldest", "dead_letter_oldest"]),
    )
    def create(self, name: str, kind: str, shards: int, visibility: int, max_attempts: int,
               dead_letter: str | None, max_messages: int,
               retry: tuple[int, str, int, int] | None = None, ttl: tuple[int, str] | None = None,
               dedup_window: int | None = None, max_bytes: int = 0, overflow: str = "reject") -> None:
        result = self.call("queue_create", queue=name, kind=kind, shards=shards, visibility_ms=visibility,
                           max_attempts=max_attempts, dead_letter=dead_letter, max_messages=max_messages,
                           max_bytes=max_bytes, overflow=overflow, **later_settings(retry, ttl, dedup_window))
        if result is not None and result["created"]:
            tally(f"create: overflow {overflow}, byte bound {'yes' if max_bytes else 'no'}")

    @rule(name=names)
    def delete(self, name: str) -> None:
        self.call("queue_delete", queue=name)

    @rule(name=names, batch=st.lists(entries(), min_size=1, max_size=6))
    def publish(self, name: str, batch: list[list[Any]]) -> None:
        before = len(self.log)
        result = self.call("publish", queue=name, messages=batch)
        if result is not None and "duplicates" in result:
            tally(f"publish: duplicates, all of them {result['count'] == 0}")
        if any(rtype == Evict.TYPE for rtype, _ in self.log[before:]):
            tally("publish: evicted the oldest")

    @rule(name=names, batch=st.lists(st.tuples(bodies, ttls, dedup_ids), min_size=1, max_size=4))
    def publish_with_dedup_ids(self, name: str, batch: list[tuple[bytes, int | None, bytes | None]]) -> None:
        self.publish(name, [[body, None, None, None, ttl, dedup_id] for body, ttl, dedup_id in batch])

    @rule(batch=st.lists(st.tuples(bodies, keys, dedup_ids), min_size=1, max_size=4))
    def publish_to_the_topic(self, batch: list[tuple[bytes, bytes | None, bytes | None]]) -> None:
        result = self.call("topic_publish", topic=TOPIC, messages=[[b, k, None, d] for b, k, d in batch])
        assert result is not None
        if "duplicates" in result:
            tally(f"topic publish: duplicates, all of them {result['count'] == 0}")

    @rule(name=names, deps=st.lists(st.tuples(names, st.integers(1, 12)), min_size=1, max_size=3),
          delay=st.one_of(st.none(), st.integers(1, 300)))
    def publish_after(self, name: str, deps: list[tuple[str, int]], delay: int | None) -> None:
        """A message that waits on others (SPEC 8.14); pairs never published are refused."""
        result = self.call("publish", queue=name, messages=[[b"dep", None, None, delay, None, None, None,
                                                             [list(d) for d in deps]]])
        if result is not None:
            status = self.state.queues[name].messages.get(result["first_id"])
            tally(f"publish after: {'waiting' if status is not None and status.state == 4 else 'not waiting'}")

    @rule(name=names, max_count=st.integers(1, 5),
          visibility=st.one_of(st.none(), st.integers(1, 300)))
    def consume(self, name: str, max_count: int, visibility: int | None) -> None:
        self.call("consume", queue=name, max=max_count, visibility_ms=visibility)

    @rule(name=names, picks=id_picks)
    def ack(self, name: str, picks: list[int]) -> None:
        self.call("ack", queue=name, ids=self.pick_ids(name, picks))

    @rule(name=names, picks=id_picks, delay=delays, error=st.one_of(st.none(), st.text(max_size=5)))
    def nack(self, name: str, picks: list[int], delay: int | None, error: str | None = None) -> None:
        self.call("nack", queue=name, ids=self.pick_ids(name, picks), delay_ms=delay, error=error)

    @rule(name=names, picks=id_picks, error=st.one_of(st.none(), st.text(max_size=5)))
    def reject(self, name: str, picks: list[int], error: str | None) -> None:
        self.call("reject", queue=name, ids=self.pick_ids(name, picks), error=error)

    @rule(name=names, picks=id_picks, visibility=st.one_of(st.none(), st.integers(1, 300)))
    def extend(self, name: str, picks: list[int], visibility: int | None) -> None:
        self.call("extend", queue=name, ids=self.pick_ids(name, picks), visibility_ms=visibility)

    @rule(name=names, limit=st.one_of(st.none(), st.integers(1, 3)))
    def redrive(self, name: str, limit: int | None) -> None:
        self.call("redrive", queue=name, max=limit)

    @rule(name=names, leased=st.booleans())
    def purge(self, name: str, leased: bool) -> None:
        self.call("queue_purge", queue=name, leased=leased)

    @rule(dt=st.integers(1, 400))
    def advance_time(self, dt: int) -> None:
        self.now += dt
        due = self.state.due(self.now)
        for m in due:
            tally(f"due: {type(m).__name__}")
        self.commit(due)

    @rule(chunk=st.integers(1, 4))
    def checkpoint(self, chunk: int) -> None:
        records = list(self.state.export_records(chunk=chunk))
        restored = BrokerState.from_records(records)
        assert restored.snapshot() == self.state.snapshot()
        assert restored.topics_snapshot() == self.state.topics_snapshot()
        self.checkpoints.append((len(self.log), records))

    @rule(clean=st.booleans())
    def restart(self, clean: bool = False) -> None:
        """A crash (recover from the last checkpoint and the log), or a clean shutdown,
        which writes a checkpoint first, so start-up replays nothing."""
        if clean:
            self.checkpoint(1000)
        before = self.state.snapshot()
        assert replay(self.log).snapshot() == before
        rebuilt = startup(self.log, self.checkpoints)
        tally(f"restart: clean {clean}, from a checkpoint {bool(self.checkpoints)}")
        assert rebuilt.snapshot() == before

        # The rebuilt timers call for what the live ones call for. ``due`` consumes the
        # timer entries it reports, so ask a copy.
        far = self.now + 10**9
        expected = by_queue(copy.deepcopy(self.state).due(far))
        assert by_queue(replay(self.log).due(far)) == expected
        assert by_queue(startup(self.log, self.checkpoints).due(far)) == expected

        self.commit([Recover(self.now)])
        rebuilt.apply_record(*self.log[-1])
        after = self.state.snapshot()
        assert rebuilt.snapshot() == after
        self.check_recovered(before, after)

        self.state = rebuilt  # carry on as the restarted broker

    def check_recovered(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        #: Per dead-letter queue, what it should receive: source queues in name order,
        #: each one's messages by id (SPEC 8.6).
        arrivals: dict[str, list[tuple[Any, ...]]] = {}
        assert set(before) == set(after)
        for name, q in before.items():
            s, stats, new = q["settings"], q["stats"], after[name]
            leased = [m for m in q["messages"] if m[6] == LEASED]
            now_present = {m[0]: m for m in new["messages"]}
            dead = [m for m in leased if s.max_attempts and m[5] >= s.max_attempts]
            tally(f"restart: leased messages {'yes' if leased else 'no'}, dead {'yes' if dead else 'no'}")
            back = [m for m in leased if m not in dead]
            now = self.now
            for mid, body, key, prio, shard, attempts, _, _, published_at in back:
                # Ready at once, or after the queue's retry backoff (SPEC 8.5).
                delay = retry_delay(s.retry_delay_ms, s.retry_backoff, s.retry_max_delay_ms, s.retry_jitter,
                                    mid, attempts)
                expected = (READY, 0) if not delay else (DELAYED, now + delay)
                tally(f"restart: released after a backoff {'yes' if delay else 'no'}")
                assert now_present[mid] == (mid, body, key, prio, shard, attempts, *expected, published_at)
            back = [m for m in back if now_present[m[0]][6] == READY]
            for m in dead:
                assert m[0] not in now_present
            if dead:
                target = s.dead_letter if s.dead_letter in before else None
                if target is not None:
                    arrivals.setdefault(target, []).extend((m[1], m[2], m[3], m[8]) for m in dead)
            nstats = new["stats"]
            assert nstats["leased"] == 0
            assert nstats["expired"] == stats["expired"] + len(leased)
            assert nstats["dead_lettered"] + nstats["dropped"] == (
                stats["dead_lettered"] + stats["dropped"] + len(dead))
            if s.dead_letter not in before:
                assert nstats["dead_lettered"] == stats["dead_lettered"]
            # Messages that were ready keep their order; returned ones come back by id.
            returned = {m[0] for m in back}
            prio = {m[0]: m[3] for m in back}
            key_of = {m[0]: m[2] for m in new["messages"]}
            # In an ordered queue a message whose key's earlier one was dead-lettered
            # takes its turn: it leaves the parked ones for the end of its ready set.
            unparked = set(q["parked"]) - set(new["parked"])
            for shard, (old, cur) in enumerate(zip(q["ready"], new["ready"])):
                # leave out dead-letter arrivals and the ones that took their turn
                cur = [i for i in cur if i < q["next_id"] and i not in unparked]
                assert [i for i in cur if i not in returned] == old
                mine = sorted(m[0] for m in back if m[4] == shard)
                got = [i for i in cur if i in returned]
                if s.kind == "fifo":
                    assert cur[len(old):] == mine, (name, shard)
                elif s.kind == "lifo":
                    assert cur[: len(mine)] == mine[::-1], (name, shard)
                elif s.kind == "round_robin":
                    # each key's messages, in delivery order, end with its returned ones by id
                    for key in {key_of[i] for i in mine}:
                        of_key = [i for i in cur if key_of[i] == key]
                        back_of_key = [i for i in mine if key_of[i] == key]
                        assert of_key[len(of_key) - len(back_of_key):] == back_of_key, (name, shard, key)
                else:
                    assert got == sorted(mine, key=lambda i: -prio[i]), (name, shard)
        for name, q in before.items():
            new_rows = [m for m in after[name]["messages"] if m[0] >= q["next_id"]]
            assert all(m[5] == 0 and m[6] == READY for m in new_rows)
            assert [(m[1], m[2], m[3], m[8]) for m in new_rows] == arrivals.get(name, []), name

    # invariants

    @invariant()
    def replay_gives_the_same_state(self) -> None:
        live, topics = self.state.snapshot(), self.state.topics_snapshot()
        for rebuilt in (replay(self.log), startup(self.log, self.checkpoints)):
            assert rebuilt.snapshot() == live
            assert rebuilt.topics_snapshot() == topics


TestReplayEquivalence = ReplayMachine.TestCase
TestReplayEquivalence.settings = settings(stateful_step_count=40, report_multiple_bugs=False)


def test_replay_matches_a_known_sequence() -> None:
    """A fixed sequence touching every mutation type, dead-lettering included."""
    m = ReplayMachine()
    m.create("beta", "fifo", 1, 50, 0, None, 0)
    m.create("alpha", "priority", 2, 50, 1, "beta", 0)
    m.publish("alpha", [[b"a", b"k1", 3], [b"b"], [b"c", None, None, 10]])
    m.consume("alpha", 5, None)
    m.nack("alpha", [0], 0, "boom")  # out of attempts: to beta
    m.ack("alpha", [0])
    m.advance_time(20)  # the delayed one becomes ready
    m.consume("alpha", 5, None)
    m.restart()  # its lease is released at restart: to beta
    stats = m.state.queues["alpha"].stats()
    assert (stats["dead_lettered"], stats["acked"], stats["messages"]) == (2, 1, 0)
    assert m.state.queues["beta"].stats()["ready"] == 2
    m.delete("alpha")
    assert {t for t, _ in m.log} == set(range(1, 9))
    m.replay_gives_the_same_state()


def _restart_both(m: ReplayMachine) -> tuple[BrokerState, BrokerState]:
    """The live state, and the state start-up rebuilds from the last checkpoint and the
    log after it; both after the start-up RECOVER record."""
    rebuilt = startup(m.log, m.checkpoints)
    assert rebuilt.snapshot() == m.state.snapshot()
    rec = Recover(m.now)
    m.state.apply(rec)
    rebuilt.apply(rec)
    return m.state, rebuilt


def test_restart_from_a_checkpoint_returns_leases_by_id() -> None:
    """SPEC 7.1/8.6: at a restart leased messages become ready by id, whatever the broker
    was rebuilt from. Message 2 is leased before message 1 (lifo), so a checkpoint lists
    them in lease order."""
    m = ReplayMachine()
    m.create("q", "lifo", 1, 100, 0, None, 0)
    m.publish("q", [[b"one"]])
    m.publish("q", [[b"two"]])
    m.consume("q", 1, None)  # message 2
    m.consume("q", 1, None)  # message 1
    m.checkpoint(1000)
    live, rebuilt = _restart_both(m)
    # Returned as 1, then 2: on a lifo stack 2 is delivered next.
    assert live.snapshot()["q"]["ready"] == [[2, 1]]
    assert rebuilt.snapshot()["q"]["ready"] == [[2, 1]]


def test_restart_from_a_checkpoint_dead_letters_by_id() -> None:
    """Out of attempts at a restart, messages move to the dead-letter queue by id, so
    they get its ids in that order, whatever the broker was rebuilt from. In a two-shard
    queue a checkpoint lists ready message 2 (shard 0) before message 1 (shard 1)."""
    m = ReplayMachine()
    m.create("dead", "fifo", 1, 100, 0, None, 0)
    m.create("q", "fifo", 2, 100, 1, "dead", 0)
    m.publish("q", [[b"one"], [b"two"]])
    m.checkpoint(1000)
    m.consume("q", 2, None)
    live, rebuilt = _restart_both(m)
    expected = [(1, b"one"), (2, b"two")]
    assert [r[:2] for r in live.snapshot()["dead"]["messages"]] == expected
    assert [r[:2] for r in rebuilt.snapshot()["dead"]["messages"]] == expected


def test_restart_from_a_checkpoint_is_the_same_as_without() -> None:
    """SPEC 9: snapshots change nothing a client can observe. Two queues (created as zeta,
    then alpha) dead-letter into one queue at a restart; the arrivals' order there must
    not depend on whether the broker was rebuilt from a checkpoint (SPEC 8.6: queues in
    name order)."""
    m = ReplayMachine()
    m.create("dead", "fifo", 1, 100, 0, None, 0)
    m.create("zeta", "fifo", 1, 100, 1, "dead", 0)
    m.create("alpha", "fifo", 1, 100, 1, "dead", 0)
    m.publish("zeta", [[b"from zeta"]])
    m.publish("alpha", [[b"from alpha"]])
    m.consume("zeta", 1, None)
    m.consume("alpha", 1, None)
    m.checkpoint(1000)
    live, rebuilt = _restart_both(m)
    assert rebuilt.snapshot() == live.snapshot()
    assert [r[:2] for r in live.snapshot()["dead"]["messages"]] == [(1, b"from alpha"), (2, b"from zeta")]


def test_a_checkpoint_keeps_the_order_leases_expire_in() -> None:
    """Leases restored from a checkpoint expire as they would have: by deadline, then in
    the order the messages were delivered (lifo delivers 2 before 1)."""
    m = ReplayMachine()
    m.create("q", "lifo", 1, 100, 0, None, 0)
    m.publish("q", [[b"one"], [b"two"]])
    m.consume("q", 2, None)
    m.checkpoint(1)
    expected = by_queue(copy.deepcopy(m.state).due(m.now + 100))
    assert expected == {"q": [(6, ["q", [2, 1], 0, True, m.now + 100, None, False, False])]}
    assert by_queue(startup(m.log, m.checkpoints).due(m.now + 100)) == expected
