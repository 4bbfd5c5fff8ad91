"""Recovery's ReplayLoader folds publish runs yet yields exactly the state of one-by-one replay."""
from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from broker.mutations import Ack, Lease, Publish, QueueCreate, Release
from broker.state import BrokerState

pack = msgpack.Packer(use_bin_type=True).pack


def _records(ops: list[tuple[str, int]]) -> list[tuple[int, bytes]]:
    """A log: two queues, then publishes (plain and keyed), leases, acks and releases."""
    live = BrokerState()
    records: list[tuple[int, bytes]] = []

    def do(m: object) -> None:
        records.append((m.TYPE, pack(m.fields())))  # type: ignore[attr-defined]
        live.apply(m)  # type: ignore[arg-type]

    do(QueueCreate("a", "fifo", 1, 1000, 0, None, 10**9))
    do(QueueCreate("b", "priority", 2, 1000, 2, "a", 10**9))
    for op, n in ops:
        q = "a" if n % 2 else "b"
        queue = live.queues[q]
        if op == "pub":
            do(Publish(q, queue.next_id, 0, [bytes([n % 256])] * (1 + n % 3)))
        elif op == "keyed":
            do(Publish(q, queue.next_id, 0, [b"k"], [b"key"], [n % 5], None))
        elif op == "lease":
            ids = [m.id for m in queue.select(1 + n % 4, 10**6)]
            if ids:
                do(Lease(q, 5000 + n, ids))
        elif op == "ack":
            ids = sorted(queue.messages)[: 1 + n % 3]
            if ids:
                do(Ack(q, ids))
        elif op == "release":
            ids = [m.id for m in queue.messages.values() if m.state == 1][:2]
            if ids:
                do(Release(q, ids, 0, n % 2 == 0, 6000))
    return records


@given(st.lists(st.tuples(st.sampled_from(["pub", "pub", "pub", "keyed", "lease", "ack", "release"]),
                          st.integers(0, 1000)), max_size=80))
def test_loader_state_equals_one_by_one_replay(ops: list[tuple[str, int]]) -> None:
    records = _records(ops)
    plain = BrokerState()
    for rtype, payload in records:
        plain.apply_record(rtype, payload)
    folded = BrokerState()
    loader = folded.replay_loader()
    for rtype, payload in records:
        loader.apply_record(rtype, payload)
    loader.flush()
    assert folded.snapshot() == plain.snapshot()
    assert folded.next_timer() == plain.next_timer()


def test_loader_folds_consecutive_publishes() -> None:
    state = BrokerState()
    loader = state.replay_loader()
    loader.apply_record(QueueCreate.TYPE, pack(QueueCreate("q", "fifo", 1, 1000, 0, None, 10).fields()))
    for i in range(1, 4):
        loader.apply_record(Publish.TYPE, pack(Publish("q", i, 0, [b"%d" % i]).fields()))
    assert len(state.queues["q"].messages) == 0  # folded, not applied yet
    loader.flush()
    assert [m.body for m in state.queues["q"].ready_sets[0].iter_ready()] == [b"1", b"2", b"3"]


def test_a_run_of_plain_publishes_is_one_apply_in_a_batch_or_one_by_one() -> None:
    from broker.state import ReplayLoader

    counts = [1 + i % 3 for i in range(50)]
    records, first = [], 7
    for i, n in enumerate(counts):
        records.append((Publish.TYPE, pack(Publish("q", first, 0, [b"%d" % i] * n).fields())))
        first += n
    bodies = [b"%d" % i for i, n in enumerate(counts) for _ in range(n)]
    for batched in (True, False):
        emitted: list[tuple[int, list[object]]] = []
        loader = ReplayLoader(lambda t, f: emitted.append((t, f)))
        if batched:
            loader.apply_batch(bytes(t for t, _ in records), [p for _, p in records])
        else:
            for t, p in records:
                loader.apply_record(t, p)
        loader.flush()
        assert emitted == [(Publish.TYPE, ["q", 7, 0, bodies, None, None, None])]
