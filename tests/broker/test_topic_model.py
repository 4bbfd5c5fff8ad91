"""A hypothesis state machine of a topic and its consumer groups against a model
(SPEC §8.13), through ``dispatch`` and the real appliers:

- each group delivers every message of the topic for the first time in offset order
  within each shard, whatever the other groups do;
- under ``interest`` retention a shard's oldest retained message is one some group is
  not done with (nothing reclaimable is kept at the front), and every message published
  is retained or reclaimed;
- a publish entry whose dedup id the topic published within its window (whatever
  retention did since) stores nothing and names the first message's id (SPEC §8.9);
- live apply, replay of the log, and a restore from a snapshot (then the rest of the log)
  give the same state, topics and groups included, remembered dedup ids too.
"""
from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from broker.commands import Context, Session, dispatch
from broker.config import BrokerConfig
from broker.mutations import Mutation
from broker.records import encode
from broker.state import BrokerState
from broker.wal import RECORD_HEADER_SIZE
from protocol import ProtocolError

CFG = BrokerConfig()
START_MS = 1_700_000_000_000
GROUPS = ["a", "b", "c"]
DEDUP_IDS = [b"d1", b"d2", b"d3", b"d4"]


class TopicMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = BrokerState()
        self.log: list[Mutation] = []
        self.now = START_MS
        self.session = Session(ready=True, client_max_frame=16 * 2**20)
        #: Per group: ids delivered at least once, and per shard the last offset first delivered.
        self.seen: dict[str, set[int]] = {}
        self.last_offset: dict[str, dict[int, int]] = {}
        #: The dedup model: id -> (first publish ms, message id).
        self.window = 0
        self.first_published: dict[bytes, tuple[int, int]] = {}

    def call(self, op: str, **args: Any) -> dict[str, Any] | None:
        try:
            outcome = dispatch(self.session, op, args, Context(self.state, CFG, self.now, "a:1"))
        except ProtocolError:
            return None
        for m in outcome.mutations:
            self.log.append(m)
            self.state.apply(m)
        return outcome.result

    @initialize(shards=st.integers(1, 3), window=st.sampled_from([0, 150, 300_000]))
    def create(self, shards: int, window: int) -> None:
        assert self.call("topic_create", topic="t", shards=shards, dedup_window_ms=window) == {
            "topic": "t", "created": True}
        self.window = window

    @rule(group=st.sampled_from(GROUPS), start=st.sampled_from(["earliest", "latest"]))
    def create_group(self, group: str, start: str) -> None:
        if self.call("group_create", topic="t", group=group, start=start, visibility_ms=100,
                     max_attempts=0) is not None and group not in self.seen:
            self.seen[group] = set()
            self.last_offset[group] = {}

    @rule(group=st.sampled_from(GROUPS))
    def delete_group(self, group: str) -> None:
        if self.call("group_delete", topic="t", group=group) is not None:
            self.seen.pop(group, None)
            self.last_offset.pop(group, None)

    @rule(entries=st.lists(st.tuples(st.one_of(st.none(), st.sampled_from([b"k1", b"k2", b"k3"])),
                                      st.one_of(st.none(), st.sampled_from(DEDUP_IDS))), min_size=1, max_size=6))
    def publish(self, entries: list[tuple[bytes | None, bytes | None]]) -> None:
        first_id = self.state.topics["t"].next_id
        result = self.call("topic_publish", topic="t", messages=[[b"m", k, None, d] for k, d in entries])
        assert result is not None
        duplicates: list[list[int]] = []
        stored = 0
        for index, (_, dedup_id) in enumerate(entries):
            earlier = self.first_published.get(dedup_id) if dedup_id is not None and self.window else None
            if earlier is not None and self.now < earlier[0] + self.window:
                duplicates.append([index, earlier[1]])
                continue
            if dedup_id is not None and self.window:
                self.first_published[dedup_id] = (self.now, first_id + stored)
            stored += 1
        assert result == {"first_id": first_id, "count": stored, **({"duplicates": duplicates} if duplicates else {})}

    @rule(group=st.sampled_from(GROUPS), most=st.integers(1, 5), ack=st.booleans())
    def consume(self, group: str, most: int, ack: bool) -> None:
        result = self.call("consume", queue=f"t/{group}", max=most)
        if result is None:
            return
        seen, last = self.seen[group], self.last_offset[group]
        for d in result["messages"]:
            mid, shard, offset = d[0], d[6], d[7]
            if mid not in seen:  # a first delivery: next in its shard's offset order
                assert offset > last.get(shard, 0), (group, shard, offset, last)
                last[shard] = offset
                seen.add(mid)
        if ack and result["messages"]:
            self.call("ack", queue=f"t/{group}", ids=[d[0] for d in result["messages"]])

    @rule(group=st.sampled_from(GROUPS), picks=st.lists(st.integers(0, 20), min_size=1, max_size=3))
    def ack_some(self, group: str, picks: list[int]) -> None:
        queue = self.state.queues.get(f"t/{group}")
        leased = [m.id for m in queue.leased_in_order()] if queue is not None else []
        if leased:
            self.call("ack", queue=f"t/{group}", ids=[leased[p % len(leased)] for p in picks])

    @rule(group=st.sampled_from(GROUPS))
    def nack_all_leased(self, group: str) -> None:
        queue = self.state.queues.get(f"t/{group}")
        if queue is not None and queue.leased:
            self.call("nack", queue=f"t/{group}", ids=[m.id for m in queue.leased_in_order()])

    @rule(group=st.sampled_from(GROUPS))
    def seek_back(self, group: str) -> None:
        if self.call("group_seek", topic="t", group=group, to="earliest") is not None:
            # messages read again are redeliveries for the order check: start afresh
            self.seen[group] = set()
            self.last_offset[group] = {}

    @rule(dt=st.integers(1, 200))
    def advance(self, dt: int) -> None:
        self.now += dt
        for m in self.state.due(self.now):
            self.log.append(m)
            self.state.apply(m)

    @precondition(lambda self: len(self.log) > 2)
    @rule(cut=st.integers(0, 1000))
    def restore_from_a_snapshot_midway(self, cut: int) -> None:
        """A snapshot after some prefix of the log, then the rest replayed, equals live."""
        at = cut % len(self.log)
        prefix = BrokerState()
        for m in self.log[:at]:
            prefix.apply_record(m.TYPE, encode(m)[RECORD_HEADER_SIZE:])
        rebuilt = BrokerState.from_records(list(prefix.export_records(chunk=3)))
        for m in self.log[at:]:
            rebuilt.apply_record(m.TYPE, encode(m)[RECORD_HEADER_SIZE:])
        assert rebuilt.topics_snapshot() == self.state.topics_snapshot()
        assert rebuilt.snapshot() == self.state.snapshot()

    @invariant()
    def interest_keeps_exactly_what_some_group_needs(self) -> None:
        topic = self.state.topics.get("t")
        if topic is None:
            return
        groups = list(topic.groups.values())
        for log in topic.logs:
            # oldest first: a shard's oldest message is one some group still needs
            if log:
                assert any(not g.done_with(log[0]) for g in groups), log[0].id
        assert topic.reclaimed + len(topic) == topic.published

    @invariant()
    def replay_equals_live(self) -> None:
        replayed = BrokerState()
        for m in self.log:
            replayed.apply_record(m.TYPE, encode(m)[RECORD_HEADER_SIZE:])
        assert replayed.topics_snapshot() == self.state.topics_snapshot()
        assert replayed.snapshot() == self.state.snapshot()


TestTopicMachine = TopicMachine.TestCase
TestTopicMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
