"""Round-robin queues (SPEC 7.1) through the SDKs and brokerctl against real brokers.

Fairness over a real socket with both clients, ``peek`` in consume order, the order kept
across a SIGKILL (log replay) and a clean restart (snapshot), and brokerctl's ``--kind``.
"""
from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from click.testing import CliRunner

from client import Message, SyncClient
from client.cli import main
from protocol import shard_for_key

from ..broker_process import BrokerProcess
from .apis import api  # noqa: F401  (the fixture)

_names = itertools.count()
A, B, C = b"A", b"B", b"C"


def qname() -> str:
    return f"rr-{uuid.uuid4().hex[:8]}-{next(_names)}"


async def test_a_busy_key_does_not_starve_the_others(api: Any) -> None:
    q = qname()
    assert await api.create_queue(q, kind="round_robin")
    assert (await api.queue_stats(q)).kind == "round_robin"
    await api.publish_batch(q, [Message(b"a%d" % i, key=A) for i in range(100)])   # ids 1..100
    for i in range(3):
        await api.publish(q, b"b%d" % i, key=B)                                     # ids 101..103
    await api.publish_batch(q, [Message(b"c%d" % i, key=C) for i in range(3)])     # ids 104..106

    listed = [(m.id, m.key) for m in await api.peek(q, 6)]
    first = [(d.id, d.key) for _ in range(6) for d in await api.consume(q)]
    assert first == listed == [(1, A), (101, B), (104, C), (2, A), (102, B), (105, C)]
    # B and C have one message each left: they keep taking turns with A, then A drains.
    rest = [d.key for d in await api.consume(q, 200)]
    assert rest[:5] == [A, B, C, A, A] and rest.count(A) == 98 and len(rest) == 100


async def test_a_nacked_message_waits_behind_its_own_key(api: Any) -> None:
    q = qname()
    await api.create_queue(q, kind="round_robin")
    await api.publish_batch(q, [Message(b"a1", key=A), Message(b"a2", key=A), Message(b"n1"), Message(b"b1", key=B)])
    (d,) = await api.consume(q)
    assert d.id == 1
    await api.nack(q, [1])                             # back of A's messages; A is behind nil and B
    assert [m.id for m in await api.peek(q)] == [3, 4, 2, 1]
    assert [d.id for d in await api.consume(q, 10)] == [3, 4, 2, 1]


def test_the_order_survives_a_kill_and_a_clean_restart(broker_process: BrokerProcess) -> None:
    proc = broker_process
    q = qname()
    with SyncClient(proc.addr) as client:
        client.create_queue(q, kind="round_robin", shards=2)
        keys = [A, A, A, B, None, C, b"", None, B, A, C, b"D"]
        client.publish_batch(q, [Message(bytes([i]), key=key) for i, key in enumerate(keys)])
        taken = [d.id for d in client.consume(q, 3)]
        client.ack(q, taken[:2])
        client.nack(q, taken[2:])
        client.ack(q, [9])                             # a ready one
        client.publish(q, b"late", key=B)
        before = [(m.id, m.key) for m in client.peek(q, 100)]
    assert len(before) == 10
    proc.kill()                                        # recovery replays the log
    proc.start()
    with SyncClient(proc.addr) as client:
        assert [(m.id, m.key, m.state) for m in client.peek(q, 100)] == [(*m, "ready") for m in before]
    assert proc.stop() == 0                            # a checkpoint: the next start loads it
    proc.start()
    with SyncClient(proc.addr) as client:
        assert [(m.id, m.key) for m in client.peek(q, 100)] == before
        delivered = [d.id for d in client.consume(q, 100)]

    def shard(mid: int, key: bytes | None) -> int:
        return shard_for_key(key, 2) if key is not None else mid % 2

    # peek lists shard 0, then shard 1, each in the order its consumes deliver.
    shards = [shard(*m) for m in before]
    assert shards == sorted(shards)
    for s in (0, 1):
        mine = {mid for mid, key in before if shard(mid, key) == s}
        assert [i for i in delivered if i in mine] == [mid for mid, _ in before if mid in mine]
    assert len(delivered) == len(before)


def test_brokerctl_creates_a_round_robin_queue(sync_broker_addr: tuple[str, int]) -> None:
    addr = f"{sync_broker_addr[0]}:{sync_broker_addr[1]}"
    name = qname()
    runner = CliRunner()
    result = runner.invoke(main, ["create-queue", name, "--kind", "round_robin", "--addr", addr])
    assert result.exit_code == 0, result.output
    stats = runner.invoke(main, ["stats", name, "--json", "--addr", addr])
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["kind"] == "round_robin"
    assert "round_robin" in runner.invoke(main, ["create-queue", "--help"]).stdout
