"""Recovery's fold: runs of publishes folded, yet exactly the state of one-by-one replay."""
from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from broker.mutations import Ack, Lease, Publish, QueueCreate, Release
from broker.records import PublishFold, decode, fold_records
from broker.state import BrokerState
from broker.wal import RECORD_HEADER_SIZE

pack = msgpack.Packer(use_bin_type=True).pack


def _records(ops: list[tuple[str, int]]) -> list[tuple[int, bytes]]:
    """A log: two queues, then publishes (plain and keyed), leases, acks and releases."""
    live = BrokerState()
    records: list[tuple[int, bytes]] = []

    def do(m: object) -> None:
        records.append((m.TYPE, pack(m.record_fields())))  # type: ignore[attr-defined]
        live.apply(m)  # type: ignore[arg-type]

    do(QueueCreate("a", "fifo", 1, 1000, 0, None, 10**9))
    do(QueueCreate("b", "priority", 2, 1000, 2, "a", 10**9))
    for op, n in ops:
        q = "a" if n % 2 else "b"
        queue = live.queues[q]
        if op == "pub":
            # A few distinct publish times: runs at one time fold, across times they must not.
            do(Publish(q, queue.next_id, n // 250, [bytes([n % 256])] * (1 + n % 3)))
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


def _fold(records: list[tuple[int, bytes]]) -> list[list[object]]:
    return fold_records(bytes(t for t, _ in records), [p for _, p in records])


@given(st.lists(st.tuples(st.sampled_from(["pub", "pub", "pub", "keyed", "lease", "ack", "release"]),
                          st.integers(0, 1000)), max_size=80),
       st.lists(st.integers(0, 200), max_size=6))
def test_folded_batches_give_the_state_of_one_by_one_replay(
        ops: list[tuple[str, int]], cuts: list[int]) -> None:
    records = _records(ops)
    plain = BrokerState()
    for rtype, payload in records:
        plain.apply_record(rtype, payload)
    folded = BrokerState()
    bounds = [0, *sorted(min(c, len(records)) for c in cuts), len(records)]
    for a, b in zip(bounds, bounds[1:]):
        items = _fold(records[a:b])
        # What a replay helper ships: the items through msgpack.
        folded.apply_items(msgpack.unpackb(pack(items)) if a % 2 else items)
    assert folded.snapshot() == plain.snapshot()
    assert folded.next_timer() == plain.next_timer()
    assert folded.ack_reserve == plain.ack_reserve


def test_a_run_of_plain_publishes_is_one_item() -> None:
    counts = [1 + i % 3 for i in range(50)]
    records, first = [(QueueCreate.TYPE, pack(QueueCreate("q", "fifo", 1, 1000, 0, None, 10).record_fields()))], 7
    for i, n in enumerate(counts):
        records.append((Publish.TYPE, pack(Publish("q", first, 5, [b"%d" % i] * n).record_fields())))
        first += n
    records.append((Ack.TYPE, pack(Ack("q", [7]).record_fields())))
    records.append((Publish.TYPE, pack(Publish("q", first, 5, [b"x"]).record_fields())))
    bodies = [b"%d" % i for i, n in enumerate(counts) for _ in range(n)]
    assert _fold(records) == [
        [QueueCreate.TYPE, ["q", "fifo", 1, 1000, 0, None, 10]],
        [Publish.TYPE, ["q", 7, 5, bodies, None, None, None]],
        [Ack.TYPE, ["q", [7]]],
        [Publish.TYPE, ["q", first, 5, [b"x"], None, None, None]],  # after the ack: a new run
    ]


def test_a_run_ends_at_a_gap_another_queue_or_a_publish_with_columns() -> None:
    recs = [Publish("q", 1, 0, [b"a"]), Publish("q", 3, 0, [b"b"]),      # a gap in the ids
            Publish("r", 4, 0, [b"c"]),                                # another queue
            Publish("r", 5, 0, [b"d"], [b"k"], None, None),            # a key column
            Publish("r", 6, 0, [b"e"]), Publish("r", 7, 0, [b"f"])]
    items = _fold([(m.TYPE, pack(m.record_fields())) for m in recs])
    assert [(f[0], f[1], f[3]) for _, f in items] == [
        ("q", 1, [b"a"]), ("q", 3, [b"b"]), ("r", 4, [b"c"]), ("r", 5, [b"d"]),
        ("r", 6, [b"e", b"f"])]


def test_only_records_of_exactly_the_plain_fields_fold() -> None:
    """Optional columns spelled out as None (not as ``records.encode`` writes them) or set
    make a publish record stand alone; folded or not, replay gives the same state."""
    recs = [QueueCreate("q", "fifo", 1, 1000, 0, None, 10**6),
            Publish("q", 1, 0, [b"a"]), Publish("q", 2, 0, [b"b"]),
            Publish("q", 3, 5, [b"c"], expires_at_ms=[900]), Publish("q", 4, 0, [b"d"]),
            Publish("q", 5, 5, [b"e"], dedup_ids=[b"x"]), Publish("q", 6, 0, [b"f"])]
    spelled = [(m.TYPE, pack(m.fields())) for m in recs]
    trimmed = [(m.TYPE, pack(m.record_fields())) for m in recs]
    assert len(_fold(spelled)) == len(recs)
    assert [f[3] for _, f in _fold(trimmed)] == [1000, [b"a", b"b"], [b"c"], [b"d"], [b"e"], [b"f"]]
    one_by_one = BrokerState()
    for m in recs:
        one_by_one.apply(m)
    for records in (spelled, trimmed):
        state = BrokerState()
        state.apply_items(_fold(records))
        assert state.snapshot() == one_by_one.snapshot()


def test_the_live_fold_joins_only_publishes_of_one_time() -> None:
    """``PublishFold`` (the live path's) folds consecutive plain publishes of one queue and
    one ``now_ms``; a new time starts a new record, so each message keeps its own."""
    fold = PublishFold()
    assert fold.add(Publish("q", 1, 7, [b"a"])) is None
    assert fold.add(Publish("q", 2, 7, [b"b", b"c"])) is None  # joined
    ended = fold.add(Publish("q", 4, 8, [b"d"]))  # a later time: the run of 7 ends
    assert ended is not None
    assert decode(Publish.TYPE, ended[RECORD_HEADER_SIZE:]) == Publish("q", 1, 7, [b"a", b"b", b"c"])
    last = fold.flush()
    assert last is not None and decode(Publish.TYPE, last[RECORD_HEADER_SIZE:]) == Publish("q", 4, 8, [b"d"])
    state = BrokerState()
    state.apply(QueueCreate("q", "fifo", 1, 1000, 0, None, 100))
    for record in (ended, last):
        state.apply_record(Publish.TYPE, record[RECORD_HEADER_SIZE:])
    assert [m.published_at for m in state.queues["q"].messages.values()] == [7, 7, 7, 8]
