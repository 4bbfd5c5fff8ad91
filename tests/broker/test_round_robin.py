"""The ``round_robin`` ready set (SPEC 7.1): keys in turn, one message per key per turn.

Unit tests of ``RoundRobinReady`` itself (take order, keys joining and leaving the
rotation, released messages, deleted ones left as tombstones and dropped lazily), a
hypothesis test of it against a model in plain lists, and the worked example of SPEC 7.1
run through the command handlers.
"""
from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import msgpack
import pytest
from hypothesis import given, settings

from broker.commands import Context, Session, dispatch
from broker.config import BrokerConfig
from broker.queues import DELETED, LEASED, READY, Message, RoundRobinReady
from broker.state import BrokerState
from protocol import ErrorCode, ProtocolError

A, B, C = b"A", b"B", b"C"


def msg(mid: int, key: bytes | None) -> Message:
    return Message(mid, b"", key, 0, 0)


def filled(*keys: bytes | None) -> tuple[RoundRobinReady, list[Message]]:
    """A ready set holding one message per key given, ids 1, 2, ... in that order."""
    ready = RoundRobinReady()
    msgs = [msg(i, key) for i, key in enumerate(keys, 1)]
    for m in msgs:
        ready.push(m)
    return ready, msgs


def order(ready: RoundRobinReady) -> list[int]:
    return [m.id for m in ready.iter_ready()]


def take_next(ready: RoundRobinReady) -> int:
    """Take what a consume of one message would take."""
    first = next(ready.iter_ready())
    ready.take(first)
    first.state = LEASED
    return first.id


def delete(ready: RoundRobinReady, m: Message) -> None:
    """What ``Queue`` does when a ready message is deleted: a tombstone, then ``forget``."""
    m.state = DELETED
    ready.forget()


def rebuilt(ready: RoundRobinReady) -> RoundRobinReady:
    """What a snapshot restore builds: ``in_push_order`` pushed into a new set."""
    again = RoundRobinReady()
    for m in list(ready.in_push_order()):
        again.push(m)
    return again


def test_keys_take_turns_in_the_order_they_joined() -> None:
    ready, _ = filled(A, A, A, B, None, B)
    assert order(ready) == [1, 4, 5, 2, 6, 3]
    assert ready.count == 6
    assert [take_next(ready) for _ in range(6)] == [1, 4, 5, 2, 6, 3]
    assert ready.count == 0 and order(ready) == []


def test_one_busy_key_does_not_starve_the_others() -> None:
    ready, _ = filled(*[A] * 100, B, B, B, C, C, C)
    assert [take_next(ready) for _ in range(6)] == [1, 101, 104, 2, 102, 105]


def test_the_empty_key_and_no_key_are_different_keys() -> None:
    ready, _ = filled(b"", b"", None, None)
    assert order(ready) == [1, 3, 2, 4]


def test_a_served_key_goes_to_the_back_and_a_new_key_joins_behind_it() -> None:
    ready, _ = filled(A, A, B, B)
    assert take_next(ready) == 1                      # rotation: B, A
    ready.push(msg(5, C))                             # C joins at the back: B, A, C
    assert order(ready) == [3, 2, 5, 4]


def test_a_key_that_ran_out_rejoins_at_the_back() -> None:
    ready, _ = filled(A, B, C, C)
    assert take_next(ready) == 1                      # A has no ready message left: out
    ready.push(msg(5, A))                             # back in, behind B and C
    assert order(ready) == [2, 3, 5, 4]


def test_a_released_message_goes_to_the_back_of_its_key() -> None:
    ready, msgs = filled(A, A, B)
    assert take_next(ready) == 1                      # rotation: B, A; A holds 2
    msgs[0].state = READY
    ready.push(msgs[0])                               # released: behind 2, A keeps its place
    assert order(ready) == [3, 2, 1]
    assert take_next(ready) == 3                      # B out
    ready.push(msg(4, B))
    assert order(ready) == [2, 4, 1]


def test_taking_a_message_other_than_the_next_serves_its_key() -> None:
    """``select`` skips a message whose time to live has passed but whose expiry is not
    logged yet, so a lease may take the second message of a key: the key is served."""
    ready, msgs = filled(A, A, B)
    ready.take(msgs[1])
    assert order(ready) == [3, 1]                     # A went to the back, B is next
    ready.take(msgs[0])
    assert order(ready) == [3]


def test_a_deleted_message_is_skipped_and_its_key_keeps_its_turn() -> None:
    ready, msgs = filled(A, A, B, C)
    delete(ready, msgs[0])
    assert ready.count == 3
    assert order(ready) == [2, 3, 4]
    assert list(ready.in_push_order()) == [msgs[1], msgs[2], msgs[3]]


def test_a_key_whose_messages_were_all_deleted_is_out_of_the_rotation() -> None:
    ready, msgs = filled(A, A, B, C)
    delete(ready, msgs[2])                            # B has nothing ready: out, lazily
    assert order(ready) == [1, 4, 2]
    ready.push(msg(5, B))                             # B rejoins at the back, not in its old place
    assert order(ready) == [1, 4, 5, 2]
    assert order(rebuilt(ready)) == [1, 4, 5, 2]
    assert [take_next(ready) for _ in range(4)] == [1, 4, 5, 2]


def test_a_key_with_several_messages_all_deleted_rejoins_at_the_back() -> None:
    ready, msgs = filled(A, A, B, A, C)
    for m in (msgs[0], msgs[1], msgs[3]):
        delete(ready, m)
    assert order(ready) == [3, 5]
    ready.push(msg(6, A))
    assert order(ready) == [3, 5, 6]
    assert [take_next(ready) for _ in range(3)] == [3, 5, 6]


def test_a_key_down_to_one_message_keeps_its_turns() -> None:
    ready, msgs = filled(A, A, A, B, B)
    assert take_next(ready) == 1                      # rotation B, A; A holds 2, 3
    delete(ready, msgs[2])                            # A holds 2 only
    ready.push(msg(6, A))                             # A holds 2, 6 and keeps its place
    assert order(ready) == [4, 2, 5, 6]
    assert [take_next(ready) for _ in range(4)] == [4, 2, 5, 6]


def test_tombstones_are_dropped_and_keys_without_messages_forgotten() -> None:
    ready = RoundRobinReady()
    msgs = [msg(i, bytes([i % 250])) for i in range(1, 1001)]
    for m in msgs:
        ready.push(m)
    for m in msgs[:990]:
        delete(ready, m)
    assert ready.count == 10
    assert ready._entries <= 2 * ready.count + 64           # compacted as they went
    assert len(ready._turns) <= ready._entries
    assert order(ready) == [m.id for m in msgs[990:]]
    assert [take_next(ready) for _ in range(10)] == [m.id for m in msgs[990:]]
    assert len(ready._turns) == 0 and ready._entries == 0


def test_a_busy_key_keeps_its_list_short_while_it_drains() -> None:
    ready, _ = filled(*[A] * 5000, B)
    group = ready._turns[A]
    for _ in range(5001):
        take_next(ready)
        assert len(group) - group.head <= ready.count + 1       # its entries from the head
        assert len(group) <= 2 * (ready.count + 1) + 32        # taken ones are compacted away
    assert ready.count == 0


# -- against a model ------------------------------------------------------------------------


class Model:
    """The rotation as a list of keys and each key's messages as a list of ids."""

    def __init__(self) -> None:
        self.rotation: list[bytes | None] = []
        self.groups: dict[bytes | None, list[int]] = {}

    def push(self, mid: int, key: bytes | None) -> None:
        if key not in self.rotation:
            self.rotation.append(key)
        self.groups.setdefault(key, []).append(mid)

    def remove(self, mid: int, key: bytes | None, served: bool) -> None:
        self.groups[key].remove(mid)
        if served or not self.groups[key]:
            self.rotation.remove(key)
            if self.groups[key]:
                self.rotation.append(key)

    def order(self) -> list[int]:
        groups = [self.groups[key] for key in self.rotation]
        return [g[turn] for turn in range(max(map(len, groups), default=0)) for g in groups if turn < len(g)]


#: Steps (op, n): publishes are the most common, so that keys often hold several messages;
#: n picks a key (publish, delete_key: ``KEYS[n % 3]``), a count (consume, ``n % 3 + 1``)
#: or a message.
KEYS = [None, A, B]
ops = st.lists(st.tuples(
    st.sampled_from(["publish"] * 4 + ["consume", "take", "release", "delete", "delete_key"]),
    st.integers(0, 50),
), max_size=80)


@settings(max_examples=500)  # a second or two: it is the one test of every path at once
@given(ops)
def test_against_the_model(steps: list[tuple[str, int]]) -> None:
    ready, model = RoundRobinReady(), Model()
    msgs: dict[int, Message] = {}
    for op, arg in steps:
        live = [m for m in msgs.values() if m.state == READY]
        leased = [m for m in msgs.values() if m.state == LEASED]
        if op == "publish":
            m = msgs[len(msgs) + 1] = msg(len(msgs) + 1, KEYS[arg % 3])
            ready.push(m)
            model.push(m.id, m.key)
        elif op == "consume":                         # as select + lease: the first few, in order
            for m in list(ready.iter_ready())[:arg % 3 + 1]:
                ready.take(m)
                m.state = LEASED
                model.remove(m.id, m.key, served=True)
        elif op == "take" and live:                   # any ready one (a lease that skipped some)
            m = live[arg % len(live)]
            ready.take(m)
            m.state = LEASED
            model.remove(m.id, m.key, served=True)
        elif op == "release" and leased:
            m = leased[arg % len(leased)]
            m.state = READY
            ready.push(m)
            model.push(m.id, m.key)
        elif op == "delete" and live:
            m = live[arg % len(live)]
            delete(ready, m)
            model.remove(m.id, m.key, served=False)
        elif op == "delete_key":
            for m in live:
                if m.key == KEYS[arg % 3]:
                    delete(ready, m)
                    model.remove(m.id, m.key, served=False)
        expected = model.order()
        assert order(ready) == expected
        assert ready.count == len(expected)
        assert order(rebuilt(ready)) == expected
    # Taking one at a time delivers exactly the order listed.
    again = rebuilt(ready)
    listed = order(again)
    assert [take_next(again) for _ in listed] == listed


# -- through the command handlers -------------------------------------------------------------


def test_the_worked_example_of_the_spec() -> None:
    """SPEC 7.1's example, as a client sees it."""
    state, now = BrokerState(), 1_700_000_000_000
    session = Session(ready=True, client_max_frame=2**20)

    def run(op: str, **args: Any) -> dict[str, Any]:
        outcome = dispatch(session, op, args, Context(state, BrokerConfig(), now, "127.0.0.1:7878"))
        for m in outcome.mutations:
            state.apply(m)
        return outcome.result or {}

    def ids(reply: dict[str, Any]) -> list[int]:
        return [d[0] for d in reply["messages"]]

    assert run("queue_create", queue="jobs", kind="round_robin")["created"]
    run("publish", queue="jobs", messages=[[b"a1", A], [b"a2", A], [b"a3", A], [b"b1", B], [b"n1"], [b"b2", B]])
    assert ids(run("peek", queue="jobs")) == [1, 4, 5, 2, 6, 3]
    assert ids(run("consume", queue="jobs", max=2)) == [1, 4]
    run("publish", queue="jobs", messages=[[b"c1", C]])
    run("nack", queue="jobs", ids=[1])
    assert ids(run("peek", queue="jobs", state="ready")) == [5, 2, 6, 7, 3, 1]
    assert ids(run("consume", queue="jobs", max=10)) == [5, 2, 6, 7, 3, 1]
    assert run("queue_stats", queue="jobs")["kind"] == "round_robin"


def test_ordered_is_for_fifo_queues_only() -> None:
    ctx = Context(BrokerState(), BrokerConfig(), 1_700_000_000_000, "127.0.0.1:7878")
    with pytest.raises(ProtocolError) as info:
        dispatch(Session(ready=True, client_max_frame=2**20), "queue_create",
                 {"queue": "q", "kind": "round_robin", "ordered": True}, ctx)
    assert (info.value.code, info.value.details.get("field")) == (ErrorCode.INVALID_ARGUMENT, "ordered")


def test_a_checkpoint_and_the_log_both_restore_the_rotation() -> None:
    """After consumes have turned the rotation, acks have left tombstones and a key has
    run out and rejoined, a snapshot (in every chunk size) and a replay of the log both
    rebuild the same order, and consuming from them delivers it."""
    state, now = BrokerState(), 1_700_000_000_000
    session = Session(ready=True, client_max_frame=2**20)
    log: list[tuple[int, bytes]] = []

    def run(op: str, **args: Any) -> dict[str, Any]:
        outcome = dispatch(session, op, args, Context(state, BrokerConfig(), now, "127.0.0.1:7878"))
        for m in outcome.mutations:
            log.append((m.TYPE, msgpack.packb(m.record_fields(), use_bin_type=True)))
            state.apply(m)
        return outcome.result or {}

    run("queue_create", queue="jobs", kind="round_robin", shards=2)
    keys = [A, B, C, None, b"", b"D", A, A, B, None, b"E", C]
    run("publish", queue="jobs", messages=[[bytes([i]), key] for i, key in enumerate(keys)])
    run("consume", queue="jobs", max=3)
    run("consume", queue="jobs", max=2)
    run("ack", queue="jobs", ids=[7, 12])                  # ready ones: tombstones
    run("nack", queue="jobs", ids=[1, 2])
    run("publish", queue="jobs", messages=[[b"x", C], [b"y", A], [b"z"]])
    expected = state.snapshot()["jobs"]["ready"]
    assert sum(map(len, expected)) >= 10
    for chunk in (1, 3, 1000):
        assert BrokerState.from_records(list(state.export_records(chunk=chunk))).snapshot() == state.snapshot()
    replayed = BrokerState()
    for rtype, payload in log:
        replayed.apply_record(rtype, payload)
    assert replayed.snapshot() == state.snapshot()

    restored = BrokerState.from_records(list(state.export_records()))
    for shard, listed in enumerate(expected):
        queue = restored.queues["jobs"]
        got = []
        while queue.ready_sets[shard].count:
            m = next(queue.ready_sets[shard].iter_ready())
            queue.lease(now + 1000, [m.id])
            got.append(m.id)
        assert got == listed
