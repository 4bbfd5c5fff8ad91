"""``Queue.delivered``: every lease (each attempt) and every auto-ack take counts once;
replay and snapshots rebuild it, and a snapshot from before it has none."""
from __future__ import annotations

from broker.mutations import Take
from broker.queues import Queue

from .test_inspection_ops import World


def test_leases_and_takes_count_as_deliveries_and_survive_a_restart() -> None:
    w = World()
    w.call("queue_create", queue="q", visibility_ms=1000, max_attempts=5)
    w.call("publish", queue="q", messages=[[b"a"], [b"b"], [b"c"], [b"d"]])
    ids = [m[0] for m in w.call("consume", queue="q", max=2)["messages"]]
    assert w.state.queues["q"].delivered == 2
    w.call("nack", queue="q", ids=ids[:1])  # ready again: its next lease counts again
    w.advance(1000)  # the other lease expires: the same
    assert len(w.call("consume", queue="q", max=8)["messages"]) == 4
    assert w.state.queues["q"].delivered == 6
    w.call("consume", queue="q", max=8)  # nothing ready: no delivery
    take = Take("q", [ids[0], 999])  # one leased, one unknown: neither is taken
    w.log.append(take)
    w.state.apply(take)
    assert w.state.queues["q"].delivered == 6
    w.advance(1000)
    take = Take("q", ids)
    w.log.append(take)
    w.state.apply(take)
    queue = w.state.queues["q"]
    assert (queue.delivered, queue.acked) == (8, 2)
    assert w.replayed().snapshot() == w.state.snapshot()
    assert w.restored().snapshot() == w.state.snapshot()
    assert w.restored().queues["q"].delivered == 8
    assert Queue.from_header(queue.export_header()[:24]).delivered == 0  # a header from before it
