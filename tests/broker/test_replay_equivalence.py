"""Live apply versus replay apply.

A hypothesis state machine runs random requests over a few queues through
``commands.dispatch`` and applies every resulting mutation to a live ``BrokerState``, as
the server does, recording each one as the WAL would: ``(TYPE, msgpack.packb(fields))``.
Invalid requests (missing queues, bad dead-letter names, full queues, ...) are part of the
mix; they must leave no record. Time passes explicitly and ``state.due(now)`` is applied
once per step, like a timer that may fire late.

After every step a fresh ``BrokerState`` built with ``apply_record`` from the recorded
records must have the same ``snapshot()`` as the live state. The ``restart`` rule then
does what start-up does: replay, append and apply a RECOVER record to both states, and
check that they still agree; that every message leased before is ready again with its
attempt count kept (or, out of attempts, moved to its dead-letter queue with attempt 0 or
dropped, and counted); that the ready order is otherwise unchanged; and that the timers
rebuilt by replay call for the same releases and promotions as the live ones. The run
then continues on the replayed state, as a restarted broker would.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import hypothesis.strategies as st
import msgpack
from hypothesis import currently_in_test_context, event, note, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from broker.commands import Context, Session, dispatch
from broker.config import BrokerConfig
from broker.mutations import Mutation, Recover, from_fields
from broker.queues import LEASED, READY
from broker.state import BrokerState
from protocol import ProtocolError

START_MS = 1_700_000_000_000
CONFIG = BrokerConfig()
ADDR = "127.0.0.1:7878"
NAMES = ["alpha", "beta", "gamma"]

Record = tuple[int, bytes]

names = st.sampled_from(NAMES)
bodies = st.binary(max_size=5)
keys = st.one_of(st.none(), st.sampled_from([b"", b"k1", b"k2"]), st.binary(min_size=1, max_size=3))
priorities = st.one_of(st.none(), st.integers(0, 3), st.just(255))
delays = st.one_of(st.none(), st.just(0), st.integers(1, 300))
id_picks = st.lists(st.integers(0, 20), min_size=1, max_size=4)


@st.composite
def entries(draw: Any) -> list[Any]:
    entry = [draw(bodies), draw(keys), draw(priorities), draw(delays)]
    return entry[: draw(st.integers(1, 4))]


def tally(label: str) -> None:
    if currently_in_test_context():
        event(label)


def record(m: Mutation) -> Record:
    return (m.TYPE, msgpack.packb(m.fields(), use_bin_type=True))


def replay(log: list[Record]) -> BrokerState:
    state = BrokerState()
    for rtype, payload in log:
        state.apply_record(rtype, payload)
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
        self.now = START_MS
        self.session = Session(ready=True, client_max_frame=16 * 2**20)

    # helpers

    def commit(self, mutations: list[Mutation] | tuple[Mutation, ...]) -> None:
        for m in mutations:
            rec = record(m)
            assert from_fields(rec[0], msgpack.unpackb(rec[1], raw=False)) == m
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
        kinds=st.lists(st.sampled_from(["fifo", "lifo", "priority"]), min_size=3, max_size=3),
        shards=st.lists(st.integers(1, 4), min_size=3, max_size=3),
        max_attempts=st.lists(st.integers(0, 3), min_size=3, max_size=3),
        dead_letters=st.tuples(st.sampled_from([None, "beta", "gamma"]), st.sampled_from([None, "gamma"])),
    )
    def create_all(self, kinds: list[str], shards: list[int], max_attempts: list[int],
                   dead_letters: tuple[str | None, str | None]) -> None:
        """gamma, then beta (dead-letter gamma or none), then alpha (beta, gamma or none)."""
        for name, kind, n, attempts, dlq in zip(
            ["gamma", "beta", "alpha"], kinds, shards, max_attempts, (None, dead_letters[1], dead_letters[0])
        ):
            assert self.call("queue_create", queue=name, kind=kind, shards=n, visibility_ms=100,
                             max_attempts=attempts, dead_letter=dlq) == {"queue": name, "created": True}

    @rule(
        name=names, kind=st.sampled_from(["fifo", "lifo", "priority"]), shards=st.integers(1, 4),
        visibility=st.integers(1, 300), max_attempts=st.integers(0, 3),
        dead_letter=st.one_of(st.none(), names), max_messages=st.sampled_from([0, 4, 12]),
    )
    def create(self, name: str, kind: str, shards: int, visibility: int, max_attempts: int,
               dead_letter: str | None, max_messages: int) -> None:
        self.call("queue_create", queue=name, kind=kind, shards=shards, visibility_ms=visibility,
                  max_attempts=max_attempts, dead_letter=dead_letter, max_messages=max_messages)

    @rule(name=names)
    def delete(self, name: str) -> None:
        self.call("queue_delete", queue=name)

    @rule(name=names, batch=st.lists(entries(), min_size=1, max_size=6))
    def publish(self, name: str, batch: list[list[Any]]) -> None:
        self.call("publish", queue=name, messages=batch)

    @rule(name=names, max_count=st.integers(1, 5),
          visibility=st.one_of(st.none(), st.integers(1, 300)))
    def consume(self, name: str, max_count: int, visibility: int | None) -> None:
        self.call("consume", queue=name, max=max_count, visibility_ms=visibility)

    @rule(name=names, picks=id_picks)
    def ack(self, name: str, picks: list[int]) -> None:
        self.call("ack", queue=name, ids=self.pick_ids(name, picks))

    @rule(name=names, picks=id_picks, delay=delays)
    def nack(self, name: str, picks: list[int], delay: int | None) -> None:
        self.call("nack", queue=name, ids=self.pick_ids(name, picks), delay_ms=delay)

    @rule(dt=st.integers(1, 400))
    def advance_time(self, dt: int) -> None:
        self.now += dt
        self.commit(self.state.due(self.now))

    @rule()
    def restart(self) -> None:
        replayed = replay(self.log)
        before = self.state.snapshot()
        assert replayed.snapshot() == before

        rec = Recover(self.now)
        self.commit([rec])
        replayed.apply_record(*self.log[-1])
        after = self.state.snapshot()
        assert replayed.snapshot() == after
        self.check_recovered(before, after)

        # Timers rebuilt by replay call for what the live timers call for.
        far = self.now + 10**9
        assert by_queue(replay(self.log).due(far)) == by_queue(self.state.due(far))

        self.state = replayed  # carry on as the restarted broker

    def check_recovered(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        arrivals: dict[str, Counter[tuple[Any, ...]]] = {}
        assert set(before) == set(after)
        for name, q in before.items():
            s, stats, new = q["settings"], q["stats"], after[name]
            leased = [m for m in q["messages"] if m[6] == LEASED]
            now_present = {m[0]: m for m in new["messages"]}
            dead = [m for m in leased if s.max_attempts and m[5] >= s.max_attempts]
            tally(f"restart: leased messages {'yes' if leased else 'no'}, dead {'yes' if dead else 'no'}")
            back = [m for m in leased if m not in dead]
            for mid, body, key, prio, shard, attempts, _, _ in back:
                assert now_present[mid] == (mid, body, key, prio, shard, attempts, READY, 0)
            for m in dead:
                assert m[0] not in now_present
            if dead:
                target = s.dead_letter if s.dead_letter in before else None
                if target is not None:
                    arrivals.setdefault(target, Counter()).update((m[1], m[2], m[3]) for m in dead)
            nstats = new["stats"]
            assert nstats["leased"] == 0
            assert nstats["expired"] == stats["expired"] + len(leased)
            assert nstats["dead_lettered"] + nstats["dropped"] == (
                stats["dead_lettered"] + stats["dropped"] + len(dead))
            if s.dead_letter not in before:
                assert nstats["dead_lettered"] == stats["dead_lettered"]
            # Messages that were ready keep their order; returned ones follow the kind's rule.
            returned = {m[0] for m in back}
            for shard, (old, cur) in enumerate(zip(q["ready"], new["ready"])):
                cur = [i for i in cur if i < q["next_id"]]  # leave out dead-letter arrivals
                assert [i for i in cur if i not in returned] == old
                mine = sorted(m[0] for m in back if m[4] == shard)
                if s.kind == "fifo":
                    assert cur[len(old):] == mine
                elif s.kind == "lifo":
                    assert cur[: len(mine)] == mine[::-1]
        for name, q in before.items():
            got = Counter(
                (m[1], m[2], m[3]) for m in after[name]["messages"] if m[0] >= q["next_id"]
            )
            assert all(m[5] == 0 and m[6] == READY for m in after[name]["messages"] if m[0] >= q["next_id"])
            assert got == arrivals.get(name, Counter()), name

    # invariants

    @invariant()
    def replay_gives_the_same_state(self) -> None:
        assert replay(self.log).snapshot() == self.state.snapshot()


TestReplayEquivalence = ReplayMachine.TestCase
TestReplayEquivalence.settings = settings(stateful_step_count=40)


def test_replay_matches_a_known_sequence() -> None:
    """A fixed sequence touching every mutation type, dead-lettering included."""
    m = ReplayMachine()
    m.create("beta", "fifo", 1, 50, 0, None, 0)
    m.create("alpha", "priority", 2, 50, 1, "beta", 0)
    m.publish("alpha", [[b"a", b"k1", 3], [b"b"], [b"c", None, None, 10]])
    m.consume("alpha", 5, None)
    m.nack("alpha", [0], 0)  # out of attempts: to beta
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
