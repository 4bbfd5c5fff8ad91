"""The stats map's ``delivered`` and ``oldest_ready_at`` (SPEC §5.6), through dispatch on
a state with an explicit clock: the heads of each queue kind's ready messages, a message
made ready again queuing behind those already ready, and the same figures after replay
and after a snapshot."""
from __future__ import annotations

from tests.broker.test_inspection_ops import T0, World


def stats(w: World, queue: str) -> tuple[int, int, int]:
    s = w.call("queue_stats", queue=queue)
    return s["ready"], s["delivered"], s["oldest_ready_at"]


def publish_at(w: World, ms: int, queue: str, *entries: list[object]) -> None:
    w.now = T0 + ms
    w.call("publish", queue=queue, messages=[list(e) for e in entries])


def test_fifo_the_oldest_ready_message_and_the_deliveries() -> None:
    w = World()
    w.call("queue_create", queue="q")
    assert stats(w, "q") == (0, 0, 0)                                  # nothing ready
    publish_at(w, 0, "q", [b"a"])
    publish_at(w, 10, "q", [b"b"], [b"c"])
    publish_at(w, 20, "q", [b"d"])
    assert stats(w, "q") == (4, 0, T0)
    w.call("consume", queue="q", max=1)                                 # a
    assert stats(w, "q") == (3, 1, T0 + 10)
    w.call("consume", queue="q", max=2)                                 # b and c
    assert stats(w, "q") == (1, 3, T0 + 20)
    w.call("nack", queue="q", ids=[1])                                  # a is ready again, behind d
    assert stats(w, "q") == (2, 3, T0 + 20)
    w.call("consume", queue="q", max=1)                                 # d: a is the head now
    assert stats(w, "q") == (1, 4, T0)
    for state in (w.replayed(), w.restored()):
        assert (state.queues["q"].stats()["oldest_ready_at"], state.queues["q"].stats()["delivered"]) == (T0, 4)


def test_every_shard_has_a_head() -> None:
    w = World()
    w.call("queue_create", queue="s", shards=4)
    for i in range(8):                                                  # two messages a shard
        publish_at(w, 10 * i, "s", [b"m%d" % i])
    assert stats(w, "s") == (8, 0, T0)
    w.call("consume", queue="s", max=8)
    assert stats(w, "s") == (0, 8, 0)
    w.call("nack", queue="s", ids=[5])                                  # published at T0 + 40
    assert stats(w, "s") == (1, 8, T0 + 40)


def test_priority_looks_at_every_priority() -> None:
    w = World()
    w.call("queue_create", queue="p", kind="priority")
    publish_at(w, 0, "p", [b"low", None, 1])
    publish_at(w, 5, "p", [b"high", None, 9])
    assert stats(w, "p") == (2, 0, T0)
    w.call("consume", queue="p", max=1)                                 # high first
    assert stats(w, "p") == (1, 1, T0)
    w.call("consume", queue="p", max=1)
    assert stats(w, "p") == (0, 2, 0)


def test_round_robin_looks_at_every_key() -> None:
    w = World()
    w.call("queue_create", queue="r", kind="round_robin")
    publish_at(w, 0, "r", [b"k1-first", b"k1"])
    publish_at(w, 5, "r", [b"k2-first", b"k2"], [b"k1-second", b"k1"])
    assert stats(w, "r") == (3, 0, T0)
    w.call("consume", queue="r", max=1)                                 # k1's first
    assert stats(w, "r") == (2, 1, T0 + 5)


def test_delayed_and_leased_messages_are_not_ready() -> None:
    w = World()
    w.call("queue_create", queue="d")
    publish_at(w, 0, "d", [b"later", None, None, 1000])                 # delayed 1 s
    publish_at(w, 5, "d", [b"now"])
    assert stats(w, "d") == (1, 0, T0 + 5)
    w.call("consume", queue="d", max=1)
    assert stats(w, "d") == (0, 1, 0)
    w.advance(2000)                                                     # its delay ended
    assert stats(w, "d") == (1, 1, T0)
