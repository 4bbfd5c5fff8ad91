"""A partitioned order pipeline in the style of Queen: consume → transform → transaction.

    python -m examples.partitioned --addr 127.0.0.1:7878 run --orders 300
    python -m examples.partitioned demo --crash-after 80     # starts, crashes and restarts its own broker

The shop publishes each order once to the topic ``orders``: 4 shards (partitions), the
customer id as the key, so one customer's orders stay in one shard, in order. Two
services read it, each through its own **consumer group**, with several workers sharing
the group's orders (competing consumers):

- **enrich** adds tax and total and publishes the result to the topic
  ``orders.enriched`` (keyed by customer again); its group is ``ordered``: the broker
  hands out one order per customer at a time, the next only once the previous is acked;
- **audit** writes a line per order to the queue ``orders.audit``; its group is not
  ordered, so its workers take any orders in parallel.

Each worker consumes a batch, transforms it and commits **one transaction**: the ack of
the batch and the publish of its outputs, all or nothing (:mod:`.pipeline`). So an order
is acked exactly when its output exists: every order yields exactly one output, even
when a worker is too slow and loses its lease (one worker stalls on ``--stall-order``
past its lease, so another takes the order over and the slow one's commit gets
``TxnConflict`` and drops the work), and even when the broker is killed mid-pipeline:
producer, workers and monitor reconnect and carry on, and a transaction whose reply was
lost is sent again and either conflicts (it had committed, or the restart released its
leases) or commits once.

**Order.** Per customer, the enriched outputs are in the customer's order (``seq`` 1, 2,
3, ... in the output topic's offsets): the group is ordered and the ack and the publish
are one step, so an order's output is published before the customer's next order is
handed out, whichever worker takes it, across lost leases and restarts. Across customers
there is no order. The audit outputs come once each, in no particular order.

``run`` works against a broker at ``--addr`` that someone else may kill and restart at
the same address. ``demo`` starts its own broker (``python -m broker`` on a free port,
data in ``--data`` or a temporary directory), SIGKILLs it once ``--crash-after``
enriched orders are committed, and starts it again on the same port and data.

After the pipeline is drained, the program reads every output back (the enriched topic
through a group ``check`` that started at ``earliest``; the audit queue) and counts them
by order number. Every event is one line, ``event key=value ...``; the last is
``summary ...``. A run starts by deleting what an earlier one left.
"""
from __future__ import annotations

import argparse
import tempfile
from collections import Counter, defaultdict
from contextlib import suppress
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import trio

from client import Client, QueueNotFound, group_queue

from .localbroker import LocalBroker
from .orders import AuditLine, Enriched, decode, make_orders
from .pipeline import Service, Tally, Worker, produce, reconnecting
from ..say import say

#: Most outputs read back per consume.
READ_BATCH = 500
#: How often the monitor asks whether the groups are drained.
POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Settings:
    """What a run needs to know; :func:`main` fills it from the command line."""

    addr: str | None
    topic: str = "orders"
    shards: int = 4
    orders: int = 300
    customers: int = 12
    seed: int = 1
    workers: int = 3
    batch: int = 8
    publish_batch: int = 10
    pace_ms: int = 20
    visibility_ms: int = 1_000
    stall_order: int = 5
    give_up_s: float = 30.0

    @property
    def enriched_topic(self) -> str:
        return f"{self.topic}.enriched"

    @property
    def audit_queue(self) -> str:
        return f"{self.topic}.audit"


# --- setup ----------------------------------------------------------------------------------


async def setup(client: Client, s: Settings) -> None:
    """Delete what an earlier run left, then declare the topics, groups and queue."""
    for topic in (s.topic, s.enriched_topic):
        with suppress(QueueNotFound):
            say("reset", topic=topic, messages=await client.delete_topic(topic))
    with suppress(QueueNotFound):
        say("reset", queue=s.audit_queue, messages=await client.delete_queue(s.audit_queue))
    await client.create_topic(s.topic, s.shards)  # retention interest: kept until both groups are done
    await client.create_group(s.topic, "enrich", ordered=True, visibility_ms=s.visibility_ms)
    await client.create_group(s.topic, "audit", visibility_ms=s.visibility_ms)
    await client.create_topic(s.enriched_topic, s.shards)
    await client.create_group(s.enriched_topic, "check", start="earliest")  # reads the outputs back at the end
    await client.create_queue(s.audit_queue)
    say("created", topic=s.topic, shards=s.shards, groups="enrich(ordered),audit",
        outputs=f"{s.enriched_topic},{s.audit_queue}")


def services(s: Settings) -> list[Service]:
    return [Service("enrich", group_queue(s.topic, "enrich"), s.enriched_topic, output_is_topic=True),
            Service("audit", group_queue(s.topic, "audit"), s.audit_queue, output_is_topic=False)]


# --- the run --------------------------------------------------------------------------------


async def until_drained(client: Client, s: Settings) -> None:
    """Return once every order is published and both groups have acked all of them."""
    while True:
        topic = await client.topic_stats(s.topic)
        if topic.published == s.orders:
            groups = [await client.group_stats(s.topic, g) for g in ("enrich", "audit")]
            if all(g.lag == 0 and g.delivery.messages == 0 for g in groups):
                return
        await trio.sleep(POLL_S)


async def crash_once(broker: LocalBroker, tally: Tally, after: int, down_s: float) -> None:
    """``demo``: SIGKILL the broker once ``after`` enriched orders are committed, leave
    it down for ``down_s``, start it again on the same port and data."""
    while tally.committed["enrich"] < after:
        await trio.sleep(0.005)
    broker.crash()
    say("crash", signal="SIGKILL", committed=dict(tally.committed), down_ms=round(down_s * 1000))
    await trio.sleep(down_s)
    await trio.to_thread.run_sync(broker.start)
    say("restarted", addr=broker.addr)


@dataclass(frozen=True, slots=True)
class Outputs:
    """The outputs read back: enriched ones with their (shard, offset), audit lines."""

    enriched: list[tuple[int, int, Enriched]]
    audit: list[AuditLine]


async def read_outputs(client: Client, s: Settings) -> Outputs:
    enriched: list[tuple[int, int, Enriched]] = []
    check = group_queue(s.enriched_topic, "check")
    while got := await client.consume(check, READ_BATCH):
        enriched += [(d.shard or 0, d.offset or 0, decode(Enriched, d.body)) for d in got]
        await client.ack(check, [d.id for d in got])
    audit: list[AuditLine] = []
    while got := await client.consume(s.audit_queue, READ_BATCH):
        audit += [decode(AuditLine, d.body) for d in got]
        await client.ack(s.audit_queue, [d.id for d in got])
    return Outputs(enriched, audit)


def out_of_order(rows: list[tuple[str, int]]) -> int:
    """Pairs of consecutive outputs of one customer (``rows`` in output order) whose
    ``seq`` does not increase."""
    last: dict[str, int] = {}
    bad = 0
    for customer, seq in rows:
        if seq <= last.get(customer, 0):
            bad += 1
        last[customer] = seq
    return bad


async def run(s: Settings, broker: LocalBroker | None, crash_after: int, down_s: float) -> None:
    tally = Tally()
    orders = make_orders(s.orders, s.customers, s.seed)
    async with Client.connect(s.addr) as client:
        await setup(client, s)
    stop = trio.Event()
    workers = [
        Worker(f"{svc.name}-{i}", svc, tally, stop, s.batch,
               stall_order=s.stall_order if svc.name == "enrich" else 0, stall_s=s.visibility_ms * 1.5 / 1000)
        for svc in services(s) for i in range(1, s.workers + 1)
    ]
    say("step", name="pipeline", orders=s.orders, customers=s.customers, workers_per_service=s.workers)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reconnecting, s.addr, "producer", tally, s.give_up_s,
                           partial(produce, topic=s.topic, orders=orders, batch=s.publish_batch,
                                   pace_s=s.pace_ms / 1000))
        for w in workers:
            nursery.start_soon(reconnecting, s.addr, w.name, tally, s.give_up_s, w.session)
        if broker is not None:
            nursery.start_soon(crash_once, broker, tally, crash_after, down_s)
        await reconnecting(s.addr, "monitor", tally, s.give_up_s, partial(until_drained, s=s))
        stop.set()  # the workers leave once their next consume finds nothing

    say("step", name="verify")
    async with Client.connect(s.addr) as client:
        out = await read_outputs(client, s)
        topic = await client.topic_stats(s.topic)
        enriched_topic = await client.topic_stats(s.enriched_topic)
        audit_queue = await client.queue_stats(s.audit_queue)
    by_order = {"enrich": Counter(e.order for _, _, e in out.enriched), "audit": Counter(a.order for a in out.audit)}
    numbers = range(1, s.orders + 1)
    lost = {svc: sum(1 for n in numbers if not seen[n]) for svc, seen in by_order.items()}
    doubled = {svc: sum(1 for n in numbers if seen[n] > 1) for svc, seen in by_order.items()}
    shards_of: defaultdict[str, set[int]] = defaultdict(set)
    for shard, _, e in out.enriched:
        shards_of[e.customer].add(shard)
    enriched_rows = [(e.customer, e.seq) for _, _, e in sorted(out.enriched, key=lambda r: (r[0], r[1]))]
    seq_of = {o.order: o.seq for o in orders}
    say("verified", service="enrich", outputs=len(out.enriched), lost=lost["enrich"], doubled=doubled["enrich"],
        out_of_order=out_of_order(enriched_rows), shards_per_customer=max(map(len, shards_of.values()), default=0))
    say("verified", service="audit", outputs=len(out.audit), lost=lost["audit"], doubled=doubled["audit"],
        out_of_order=out_of_order([(a.customer, seq_of[a.order]) for a in out.audit]))
    say("summary", orders=s.orders, published=topic.published, retained=topic.messages,
        enriched=len(out.enriched), enriched_published=enriched_topic.published,
        audit=len(out.audit), audit_published=audit_queue.published,
        lost=lost, doubled=doubled, out_of_order=out_of_order(enriched_rows),
        audit_out_of_order=out_of_order([(a.customer, seq_of[a.order]) for a in out.audit]),
        txns=dict(tally.txns), dropped=dict(tally.dropped), resent=dict(tally.resent),
        reconnects=sum(tally.reconnects.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.partitioned",
        description="A partitioned order pipeline: consumer groups, consume → transform → transaction, "
                    "and a broker crash in the middle.",
    )
    parser.add_argument("--addr", help="broker host:port [$LOCKGATE_ADDR, else 127.0.0.1:7878]; "
                                       "demo runs its own")
    commands = parser.add_subparsers(dest="command", required=True)
    d = Settings(None)
    run_p = commands.add_parser("run", help="run the pipeline against the broker at --addr")
    demo_p = commands.add_parser("demo", help="start a broker of its own, crash it mid-pipeline, restart it")
    for p in (run_p, demo_p):
        p.add_argument("--topic", default=d.topic, help=f"the input topic [{d.topic}]")
        p.add_argument("--shards", type=int, default=d.shards, help=f"shards (partitions) of the topics [{d.shards}]")
        p.add_argument("--orders", type=int, default=d.orders, help=f"orders the shop places [{d.orders}]")
        p.add_argument("--customers", type=int, default=d.customers, help=f"customers (keys) [{d.customers}]")
        p.add_argument("--seed", type=int, default=d.seed, help=f"seed of customers and amounts [{d.seed}]")
        p.add_argument("--workers", type=int, default=d.workers, help=f"workers per service [{d.workers}]")
        p.add_argument("--batch", type=int, default=d.batch, help=f"orders per consume and transaction [{d.batch}]")
        p.add_argument("--publish-batch", type=int, default=d.publish_batch,
                       help=f"orders per publish [{d.publish_batch}]")
        p.add_argument("--pace-ms", type=int, default=d.pace_ms, help=f"pause between publishes [{d.pace_ms}]")
        p.add_argument("--visibility-ms", type=int, default=d.visibility_ms,
                       help=f"lease of the groups [{d.visibility_ms}]")
        p.add_argument("--stall-order", type=int, default=d.stall_order,
                       help=f"an enrich worker holds this order past its lease, once; 0: none [{d.stall_order}]")
        p.add_argument("--give-up-s", type=float, default=d.give_up_s,
                       help=f"end the run when the broker is unreachable this long [{d.give_up_s:g}]")
    demo_p.add_argument("--data", type=Path, help="the broker's data directory [a temporary one]")
    demo_p.add_argument("--crash-after", type=int, default=80,
                        help="SIGKILL the broker once this many enriched orders are committed [80]")
    demo_p.add_argument("--down-ms", type=int, default=300, help="how long the broker stays down [300]")
    a = parser.parse_args(argv)
    s = Settings(a.addr, a.topic, a.shards, a.orders, a.customers, a.seed, a.workers, a.batch, a.publish_batch,
                 a.pace_ms, a.visibility_ms, a.stall_order, a.give_up_s)
    if a.command == "run":
        trio.run(run, s, None, 0, 0.0)
        return 0
    with tempfile.TemporaryDirectory(prefix="lockgate-partitioned-") as tmp:
        broker = LocalBroker(a.data or Path(tmp) / "data")
        say("broker", addr=broker.start(), data=str(broker.data_dir))
        try:
            trio.run(run, replace(s, addr=broker.addr), broker, a.crash_after, a.down_ms / 1000)
        finally:
            broker.stop()
    return 0
