"""Order events fanned out to billing, email and analytics: pub/sub on Lockgate topics.

    python -m examples.pubsub --addr 127.0.0.1:7878 --orders 60

The shop publishes each order event once, to the topic ``order-events``; every service
that wants the events has a **consumer group** on the topic, which reads every event at
its own pace, in publish order within each shard (the customer id is the key, so one
customer's events stay in order). The consumers of one group would share its events; the
groups are independent: their leases, retries and dead letters are their own.

One run tells the story in five steps:

1. **setup**: the topic (2 shards, ``interest`` retention: an event is kept until every
   group is done with it) and the groups ``billing``, ``email`` and ``analytics``;
   ``email`` retries a failed send after a backoff (20 ms, doubling) and after 3
   deliveries moves it to its dead-letter queue ``order-events.email.dlq``.
2. **live**: the shop publishes the orders while two services keep up. **billing** takes
   a push subscription (``subscribe`` on ``order-events/billing``, credit 16) and charges
   each order at once. **email** long-polls one event at a time (``consume`` with
   ``wait_ms``) and sends a confirmation through a slow mailer that fails some sends
   (:mod:`.orders`): they are nacked with the error and come back after the group's
   backoff; one customer's mail server never answers, so that event is dead-lettered.
   Billing never sees any of it: each of its events comes once, on the first attempt.
   **analytics** is a batch job that has not run yet: its lag is every event, so the
   topic still holds them all.
3. **late**: a new group ``audit`` is attached with ``start="earliest"``: it starts at
   the oldest event the topic retains and so sees the whole history.
4. **catch-up**: analytics (long-poll batches of 25) and audit (push) read everything.
   Once every group is done with an event the topic reclaims it: ``topic_stats`` shows
   ``messages`` dropping to 0, and ``reclaimed`` counting them.
5. **age-limit**: courier positions on a second topic, ``order-tracking``, are worthless
   after a moment: its retention is ``both`` with ``max_age_ms`` (300 ms). The ``map``
   group reads and acks the first few (reclaimed at once, as under ``interest``); the
   ones it never read are dropped when they grow too old (``expired`` on the topic,
   ``missed`` on the group).

Every step prints one line per event, ``event key=value ...``; the last line is
``summary ...``. A run starts by deleting the two topics and the dead-letter queue if an
earlier run left them.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field

import trio

from client import Client, QueueNotFound, TopicMessage, group_queue

from .orders import EVENT_TYPE, Mailer, MailError, OrderPlaced, make_orders
from ..say import say

SHARDS = 2
EMAIL_MAX_ATTEMPTS = 3
#: How often a consumer that is out of work asks whether its group is drained.
POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Settings:
    """What a run needs to know; :func:`main` fills it from the command line."""

    addr: str | None
    topic: str
    orders: int
    seed: int
    batch: int
    tracking_topic: str
    positions: int
    read_positions: int
    max_age_ms: int
    age_wait_s: float

    @property
    def email_dlq(self) -> str:
        return f"{self.topic}.email.dlq"


@dataclass(slots=True)
class Tally:
    """What each group's consumers did, by group, for the summary."""

    handled: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)


# --- 1. setup -----------------------------------------------------------------------------


async def reset(client: Client, s: Settings) -> None:
    """Delete what an earlier run left (deleting a topic deletes its groups)."""
    for topic in (s.topic, s.tracking_topic):
        with suppress(QueueNotFound):
            say("reset", topic=topic, messages=await client.delete_topic(topic))
    with suppress(QueueNotFound):
        await client.delete_queue(s.email_dlq)


async def setup(client: Client, s: Settings) -> None:
    await client.create_topic(s.topic, SHARDS, retention="interest")
    await client.create_queue(s.email_dlq)
    await client.create_group(s.topic, "billing")          # start="latest": every event from now on
    await client.create_group(
        s.topic, "email", max_attempts=EMAIL_MAX_ATTEMPTS, dead_letter=s.email_dlq,
        retry_delay_ms=20, retry_backoff="exponential", retry_max_delay_ms=200,
    )
    await client.create_group(s.topic, "analytics")
    say("created", topic=s.topic, shards=SHARDS, retention="interest", groups="billing,email,analytics")


# --- 2. live: the shop, billing and email ---------------------------------------------------


async def shop(client: Client, s: Settings, orders: list[OrderPlaced], done: trio.Event) -> None:
    """Publish the order events in batches (each batch atomic, each event stored once)."""
    for i in range(0, len(orders), s.batch):
        chunk = orders[i:i + s.batch]
        result = await client.publish_topic(s.topic, [
            TopicMessage(o.to_bytes(), key=o.customer, headers={"type": EVENT_TYPE}) for o in chunk
        ])
        say("published", first_id=result.first_id, count=result.count, orders=f"{chunk[0].order}-{chunk[-1].order}")
        await trio.sleep(0.01)  # orders trickle in
    done.set()


async def drained(client: Client, s: Settings, group: str) -> bool:
    """Whether ``group`` has nothing left: no event it has not taken (lag), none ready,
    leased or waiting for a retry."""
    g = await client.group_stats(s.topic, group)
    return g.lag == 0 and g.delivery.messages == 0


async def until_drained(client: Client, s: Settings, group: str, published: trio.Event) -> None:
    """Return once everything is published and ``group`` is drained."""
    await published.wait()
    while not await drained(client, s, group):
        await trio.sleep(POLL_S)


def handled(tally: Tally, group: str, msg_id: int, shard: int | None, offset: int | None, attempt: int,
            order: OrderPlaced) -> None:
    tally.handled[group] += 1
    say("handled", group=group, id=msg_id, shard=shard, offset=offset, attempt=attempt, order=order.order,
        customer=order.customer)


async def push_consumer(s: Settings, group: str, tally: Tally, published: trio.Event, credit: int) -> None:
    """A push consumer of ``group`` (billing, audit): the broker pushes events as they
    come, at most ``credit`` unacked; ``async with msg`` acks each once handled. It stops
    once its group is drained."""
    async with Client.connect(s.addr) as client, trio.open_nursery() as nursery:
        async def stop_when_drained() -> None:
            await until_drained(client, s, group, published)
            nursery.cancel_scope.cancel()  # nothing is leased: leaving unsubscribes cleanly

        nursery.start_soon(stop_when_drained)
        async with client.subscribe(group_queue(s.topic, group), credit=credit) as sub:
            async for msg in sub:
                async with msg:
                    handled(tally, group, msg.id, msg.shard, msg.offset, msg.attempt, OrderPlaced.from_bytes(msg.body))


async def email_consumer(s: Settings, mailer: Mailer, tally: Tally, published: trio.Event) -> None:
    """Long-polls the email group one event at a time; a failed send is nacked with its
    error and comes back after the group's backoff, or goes to the dead-letter queue
    after ``EMAIL_MAX_ATTEMPTS`` deliveries."""
    queue = group_queue(s.topic, "email")
    async with Client.connect(s.addr) as client:
        while True:
            got = await client.consume(queue, 1, wait_ms=100)
            if not got:
                if published.is_set() and await drained(client, s, "email"):
                    return
                continue
            d = got[0]
            order = OrderPlaced.from_bytes(d.body)
            try:
                await mailer.send(order, d.attempt)
            except MailError as exc:
                error = f"{type(exc).__name__}: {exc}"
                await client.nack(queue, [d.id], error=error)   # the group's backoff says when again
                tally.failed["email"] += 1
                say("failed", group="email", id=d.id, attempt=d.attempt, order=order.order, error=error,
                    next="dead-letter" if d.attempt >= EMAIL_MAX_ATTEMPTS else "retry")
            else:
                await client.ack(queue, [d.id])
                handled(tally, "email", d.id, d.shard, d.offset, d.attempt, order)


async def batch_consumer(s: Settings, group: str, tally: Tally, published: trio.Event, batch: int) -> None:
    """Long-polls ``group`` (analytics) in batches, acking each batch in one request."""
    queue = group_queue(s.topic, group)
    async with Client.connect(s.addr) as client:
        while True:
            got = await client.consume(queue, batch, wait_ms=100)
            if not got:
                if published.is_set() and await drained(client, s, group):
                    return
                continue
            for d in got:
                handled(tally, group, d.id, d.shard, d.offset, d.attempt, OrderPlaced.from_bytes(d.body))
            await client.ack(queue, [d.id for d in got])
            say("batch", group=group, count=len(got))


async def all_of(*jobs: Callable[[], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(job)


async def report(client: Client, s: Settings, groups: list[str]) -> int:
    """Print the topic's and each group's stats; returns the messages the topic retains."""
    t = await client.topic_stats(s.topic)
    say("topic", name=t.name, messages=t.messages, published=t.published, reclaimed=t.reclaimed,
        first_offsets=list(t.first_offsets), next_offsets=list(t.next_offsets))
    for group in groups:
        g = await client.group_stats(s.topic, group)
        say("group", name=group, lag=g.lag, ready=g.delivery.ready, leased=g.delivery.leased,
            acked=g.delivery.acked, nacked=g.delivery.nacked, dead_lettered=g.delivery.dead_lettered,
            cursors=list(g.cursors))
    return t.messages


# --- 5. age limits --------------------------------------------------------------------------


async def age_limit(client: Client, s: Settings) -> dict[str, int]:
    """Courier positions that expire: retention ``both`` with ``max_age_ms``."""
    topic = s.tracking_topic
    await client.create_topic(topic, 1, retention="both", max_age_ms=s.max_age_ms)
    await client.create_group(topic, "map")
    result = await client.publish_topic(topic, [
        TopicMessage(json.dumps({"order": n, "lat": 52.52 + n / 1000, "lon": 13.40}).encode(), key=f"order-{n}",
                     headers={"type": "courier.position"})
        for n in range(1, s.positions + 1)
    ])
    say("published", topic=topic, first_id=result.first_id, count=result.count, max_age_ms=s.max_age_ms)
    read = await client.consume(group_queue(topic, "map"), s.read_positions)
    await client.ack(group_queue(topic, "map"), [d.id for d in read])
    reclaimed = (await client.topic_stats(topic)).reclaimed
    say("read", topic=topic, group="map", acked=len(read), reclaimed=reclaimed)

    # The rest grow old unread; the broker drops them on its own clock. Wait for that,
    # a bounded while.
    started = time.monotonic()
    deadline = started + s.age_wait_s
    while (t := await client.topic_stats(topic)).messages and time.monotonic() < deadline:
        await trio.sleep(0.05)
    g = await client.group_stats(topic, "map")
    say("aged-out", topic=topic, messages=t.messages, expired=t.expired, reclaimed=t.reclaimed,
        missed=g.missed, waited_ms=round((time.monotonic() - started) * 1000))
    return {"published": result.count, "acked": len(read), "reclaimed": t.reclaimed, "expired": t.expired,
            "missed": g.missed, "retained": t.messages}


# --- the run --------------------------------------------------------------------------------


async def run(s: Settings, mailer: Mailer) -> None:
    tally = Tally()
    orders = make_orders(s.orders, s.seed)
    async with Client.connect(s.addr) as client:
        await reset(client, s)
        say("step", name="setup")
        await setup(client, s)

        say("step", name="live")
        published = trio.Event()
        await all_of(
            lambda: shop(client, s, orders, published),
            lambda: push_consumer(s, "billing", tally, published, credit=16),
            lambda: email_consumer(s, mailer, tally, published),
        )
        retained_live = await report(client, s, ["billing", "email", "analytics"])

        say("step", name="late")
        await client.create_group(s.topic, "audit", start="earliest")
        audit = await client.group_stats(s.topic, "audit")
        audit_history = audit.lag + audit.delivery.messages  # not taken yet, or taken and not delivered
        say("joined", group="audit", start="earliest", to_read=audit_history, cursors=list(audit.cursors))

        say("step", name="catch-up")
        await all_of(
            lambda: batch_consumer(s, "analytics", tally, published, batch=25),
            lambda: push_consumer(s, "audit", tally, published, credit=32),
        )
        retained = await report(client, s, ["billing", "email", "analytics", "audit"])
        topic = await client.topic_stats(s.topic)
        dead = list(await client.peek(s.email_dlq, max=100))
        for m in dead:
            assert m.dead_letter is not None  # everything in it came by dead-lettering
            say("dead-letter", queue=s.email_dlq, source=f"{m.dead_letter.queue}#{m.dead_letter.id}",
                attempts=m.dead_letter.attempts, reason=m.dead_letter.reason, error=m.dead_letter.error or "")

        say("step", name="age-limit")
        aged = await age_limit(client, s)

    say("summary", orders=len(orders), published=topic.published,
        billing=tally.handled["billing"], email=tally.handled["email"],
        email_failures=tally.failed["email"], email_dead_letters=len(dead),
        analytics=tally.handled["analytics"], audit=tally.handled["audit"],
        audit_history=audit_history, retained_live=retained_live, retained=retained, reclaimed=topic.reclaimed,
        tracking=aged)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.pubsub",
        description="Order events fanned out to billing, email and analytics consumer groups.",
    )
    parser.add_argument("--addr", help="broker host:port [$LOCKGATE_ADDR, else 127.0.0.1:7878]")
    parser.add_argument("--topic", default="order-events", help="the order events topic")
    parser.add_argument("--orders", type=int, default=60, help="orders the shop places (one event each)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the customers and of the mailer's luck")
    parser.add_argument("--batch", type=int, default=10, help="events per publish")
    parser.add_argument("--send-ms", type=float, default=3.0, help="how long the mailer takes per email")
    parser.add_argument("--tracking-topic", default="order-tracking", help="the topic of courier positions")
    parser.add_argument("--positions", type=int, default=10, help="courier positions published")
    parser.add_argument("--read-positions", type=int, default=4, help="positions the map group reads")
    parser.add_argument("--max-age-ms", type=int, default=300, help="age limit of the courier positions")
    parser.add_argument("--age-wait-s", type=float, default=10.0,
                        help="longest wait for the old positions to be dropped")
    a = parser.parse_args(argv)
    settings = Settings(a.addr, a.topic, a.orders, a.seed, a.batch, a.tracking_topic, a.positions,
                        a.read_positions, a.max_age_ms, a.age_wait_s)
    trio.run(run, settings, Mailer(seed=a.seed, send_ms=a.send_ms))
    return 0
