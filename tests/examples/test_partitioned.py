"""examples/partitioned against a real broker process (127.0.0.1, port 0, a temporary
data dir), killed with SIGKILL in the middle of the pipeline and started again on the
same port and data; and its ``demo``, which does the same to a broker of its own."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from broker.server import Broker
from client import Client, SyncClient, TopicMessage
from examples.partitioned.orders import encode, make_orders
from examples.partitioned.pipeline import order_id, produce

from ..broker_process import BrokerProcess
from .programs import Event, Running, named, run

PROGRAM = "examples.partitioned"
SERVICES = ("enrich", "audit")


def committed(events: list[Event], service: str) -> Counter[int]:
    """How often each order was seen committed by a worker of ``service``."""
    return Counter(n for e in named(events, "committed") if e["service"] == service for n in e["orders"])


def check_exactly_once(events: list[Event], orders: int) -> Event:
    """The checks every run must pass; returns its summary."""
    (summary,) = named(events, "summary")
    assert events[-1] is summary
    numbers = set(range(1, orders + 1))

    # Every order produced exactly one output of each service: counted by order number
    # in the outputs read back, and by the broker's own count of what was published.
    assert (summary["orders"], summary["published"], summary["retained"]) == (orders, orders, 0)
    assert (summary["enriched"], summary["enriched_published"]) == (orders, orders)
    assert (summary["audit"], summary["audit_published"]) == (orders, orders)
    assert summary["lost"] == {"enrich": 0, "audit": 0} and summary["doubled"] == {"enrich": 0, "audit": 0}

    # Per customer the enriched outputs are in the customer's order, in one shard.
    assert summary["out_of_order"] == 0
    (enrich,) = [e for e in named(events, "verified") if e["service"] == "enrich"]
    assert (enrich["out_of_order"], enrich["shards_per_customer"]) == (0, 1)

    # No worker saw an order committed twice; an order no worker saw committed was in a
    # transaction whose reply was lost and that was sent again (and then conflicted:
    # the first one had committed).
    resent = {n for e in named(events, "resend") for n in e["orders"]}
    for service in SERVICES:
        seen = committed(events, service)
        assert set(seen.values()) <= {1}, service
        assert numbers - set(seen) <= resent, service

    # The order held past its lease was taken over: one of its two attempts conflicted
    # and was dropped.
    assert 5 in {n for e in named(events, "conflict") for n in e["dropped"]}
    assert summary["dropped"]["enrich"] >= 1
    return summary


def test_a_broker_killed_mid_pipeline_loses_and_doubles_nothing(broker_process: BrokerProcess) -> None:
    orders = 300
    program = Running(PROGRAM, broker_process.addr, "run", "--orders", str(orders), "--give-up-s", "60")
    try:
        program.wait_for(lambda ev: sum(committed(ev, "enrich").values()) >= 60)
        broker_process.kill()
        # Again on the same port (the program reconnects to the address it knows) and data.
        broker_process.args = (*broker_process.args, "--port", str(broker_process.port))
        broker_process.start()
        program.wait_for(lambda ev: bool(named(ev, "summary")), timeout=60)
        assert program.proc.wait(timeout=30) == 0, program.stderr()
    finally:
        program.kill()
    events = program.events

    summary = check_exactly_once(events, orders)
    # The crash hit the pipeline in the middle: the workers, the producer's monitor and
    # the others lost their connections with work left, and came back.
    names = [e.name for e in events]
    first_loss = names.index("disconnected")
    assert sum(committed(events[:first_loss], "enrich").values()) < orders
    roles = {e["role"] for e in named(events, "reconnected")}
    assert {f"{s}-{i}" for s in SERVICES for i in (1, 2, 3)} | {"monitor"} <= roles
    assert summary["reconnects"] >= 7

    with SyncClient(broker_process.addr) as lg:
        for group in SERVICES:
            g = lg.group_stats("orders", group)
            assert (g.lag, g.delivery.messages) == (0, 0), group
        assert lg.topic_stats("orders.enriched").published == orders
        assert lg.queue_stats("orders.audit").published == orders


def test_demo_crashes_and_restarts_its_own_broker(tmp_path: Path) -> None:
    orders = 120
    # demo starts its own broker: the address it is given is not used.
    events = run(PROGRAM, "127.0.0.1:1", "demo", "--orders", str(orders), "--crash-after", "30",
                 "--data", str(tmp_path / "demo"), "--down-ms", "100")
    names = [e.name for e in events]
    assert "stall" in names and names.index("crash") < names.index("restarted") < names.index("summary")
    (crash,) = named(events, "crash")
    assert 30 <= crash["committed"]["enrich"] < orders
    summary = check_exactly_once(events, orders)
    assert summary["reconnects"] >= 1


async def test_the_producer_sent_again_from_the_start_stores_each_order_once(broker: Broker) -> None:
    """A producer session that starts over from an order the topic already holds (as a
    second producer, or one whose ``published`` count was stale, would): the orders'
    dedup ids keep one copy of each."""
    orders = make_orders(12, customers=3, seed=7)
    async with Client.connect(broker.addr) as client:
        await client.create_topic("orders", shards=2)
        await produce(client, "orders", orders[:8], batch=4, pace_s=0)
        again = await client.publish_topic(
            "orders", [TopicMessage(encode(o), key=o.customer, dedup_id=order_id(o)) for o in orders[4:12]])
        assert (again.count, [index for index, _ in again.duplicates]) == (4, [0, 1, 2, 3])
        stats = await client.topic_stats("orders")
    assert stats.published == 12  # not 16
