"""Order notifications: transactional and marketing emails through a flaky gateway.

    python -m examples.notifications --addr 127.0.0.1:7878 --orders 50 --workers 4

One run tells the whole story, in four steps:

1. **The order service** publishes two emails per order to the priority queue
   ``emails``: the order confirmation (transactional, priority 9) and a "you may also
   like" email (marketing, priority 1). Each email has a dedup id
   (``order-17/confirmation``) that stays the same however often it is published, and
   it goes with the publish: the order service publishes at least once (when it cannot
   tell whether a publish went through, it publishes again; here one order in ten is
   published twice, as after a lost reply), and the queue stores a dedup id it has seen
   within its dedup window only once.
2. **Workers** (``--workers`` of them, one connection each) take one email at a time
   with a long-poll ``consume``, highest priority first, and send it through the fake
   gateway of :mod:`.gateway`, which fails 30% of the time and is sometimes too slow to
   answer. A failed or timed-out send is nacked with the error text; the queue's retry
   backoff (exponential, with jitter) decides when it comes back, and after
   ``max_attempts`` deliveries it goes to the dead-letter queue ``emails.dlq``. A bounced
   address is rejected straight to the dead-letter queue: no retry will fix it.
   Sending is idempotent: before sending, a worker asks the gateway whether the email's
   dedup id went out already (a send that timed out may well have gone out) and then only
   acks. Workers stop when the queue is empty.
3. **The dead-letter queue** is inspected: ``peek`` with ``dead_letter=True`` lists each
   dead letter with where it came from, after how many attempts, why and the last error;
   ``message_status`` on the source ids says where those messages are now.
4. **Replay**: the dead letters that ran out of attempts (the gateway's fault) are
   redriven back to ``emails`` by id and the workers run again; bounced ones stay in the
   dead-letter queue for a person to fix the address.

Every step prints one line per event, ``event key=value ...``; the last line is
``summary ...``. ``--outbox FILE`` keeps the emails the gateway sent, one JSON line each.
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

import trio

from client import Client, Delivery, Message, PeekedMessage

from .gateway import Bounced, Email, FlakyGateway, Unavailable
from ..say import say

TRANSACTIONAL_PRIORITY = 9
MARKETING_PRIORITY = 1


@dataclass(frozen=True, slots=True)
class Settings:
    """What a run needs to know; :func:`main` fills it from the command line."""

    addr: str | None
    queue: str
    orders: int
    workers: int
    seed: int
    max_attempts: int
    send_timeout_ms: int

    @property
    def dead_letter(self) -> str:
        return f"{self.queue}.dlq"


@dataclass(slots=True)
class Tally:
    """What the workers did, for the summary."""

    sent: int = 0
    already_sent: int = 0
    failed: int = 0
    rejected: int = 0


# --- 1. the order service ---------------------------------------------------------------


async def declare_queues(client: Client, s: Settings) -> None:
    """The email queue and its dead-letter queue (declaring is idempotent)."""
    await client.create_queue(s.dead_letter)
    await client.create_queue(
        s.queue,
        kind="priority",
        max_attempts=s.max_attempts,
        dead_letter=s.dead_letter,
        visibility_ms=30_000,        # far longer than one send: a lease never runs out mid-send
        retry_delay_ms=50,           # then 100, 200, ... ms between attempts
        retry_backoff="exponential",
        retry_max_delay_ms=2_000,
        retry_jitter=50,             # spread the retries of emails that failed together
        dedup_window_ms=3_600_000,   # a publish retried within the hour is not stored twice
    )


def emails_of_order(order: int, to: str) -> list[Email]:
    return [
        Email(f"order-{order}/confirmation", to, "order_confirmation", order, transactional=True),
        Email(f"order-{order}/recommendations", to, "you_may_also_like", order, transactional=False),
    ]


async def place_orders(client: Client, s: Settings) -> list[Email]:
    """Publish the emails of ``s.orders`` orders, one atomic publish per order.

    One customer in twenty-five typed their address wrong (``.invalid``): those emails
    bounce. One order in ten is published a second time, as a producer does when the
    reply to its publish was lost: the dedup ids make that second publish store nothing.
    """
    rng = random.Random(s.seed)
    emails: list[Email] = []
    for order in range(1, s.orders + 1):
        domain = "example.invalid" if rng.random() < 0.04 else "example.com"
        batch = emails_of_order(order, f"customer{order}@{domain}")
        messages = [
            Message(email.to_bytes(), dedup_id=email.dedup_id,
                    priority=TRANSACTIONAL_PRIORITY if email.transactional else MARKETING_PRIORITY)
            for email in batch
        ]
        result = await client.publish_batch(s.queue, messages)
        for email, message_id in zip(batch, result.message_ids()):
            say("published", id=message_id, email=email.dedup_id)
        if rng.random() < 0.1:  # the reply "was lost": publish the same order again
            again = await client.publish_batch(s.queue, messages)
            say("republished", order=order, stored=again.count, duplicates=len(again.duplicates))
        emails += batch
    return emails


# --- 2. the workers ---------------------------------------------------------------------


async def run_workers(s: Settings, gateway: FlakyGateway, tally: Tally) -> None:
    """Run ``s.workers`` workers until the email queue is empty."""
    async with trio.open_nursery() as nursery:
        for n in range(1, s.workers + 1):
            nursery.start_soon(worker, s, gateway, tally, f"w{n}")


async def worker(s: Settings, gateway: FlakyGateway, tally: Tally, name: str) -> None:
    """Take one email at a time and send it; return once the queue holds nothing at all
    (nothing ready, nothing delayed for a retry, nothing leased to another worker)."""
    async with Client.connect(s.addr) as client:
        while True:
            deliveries = await client.consume(s.queue, max=1, wait_ms=200)
            if not deliveries:
                if (await client.queue_stats(s.queue)).messages == 0:
                    return
                continue
            await send_one(client, s, gateway, tally, name, deliveries[0])


async def send_one(
    client: Client, s: Settings, gateway: FlakyGateway, tally: Tally, name: str, d: Delivery
) -> None:
    """Send one delivered email at most once, then ack, nack or reject it.

    Asking the gateway first is enough because one email is one message (the queue does
    not store a dedup id twice) and a message is leased to one worker at a time (the lease
    is far longer than a send); redeliveries therefore come one after another.
    """
    email = Email.from_bytes(d.body)
    say("received", worker=name, id=d.id, attempt=d.attempt, priority=d.priority, email=email.dedup_id)
    if gateway.lookup(email.dedup_id) is not None:
        # An earlier delivery sent it and did not get to ack (a timeout, a crash): done.
        await client.ack(s.queue, [d.id])
        tally.already_sent += 1
        say("already-sent", worker=name, id=d.id, email=email.dedup_id)
        return
    try:
        with trio.fail_after(s.send_timeout_ms / 1000):
            receipt = await gateway.send(email)
    except Bounced as exc:
        await client.reject(s.queue, [d.id], error=str(exc))
        tally.rejected += 1
        say("rejected", worker=name, id=d.id, email=email.dedup_id, error=str(exc))
    except (Unavailable, trio.TooSlowError) as exc:
        error = str(exc) or f"no answer from the gateway within {s.send_timeout_ms} ms"
        await client.nack(s.queue, [d.id], error=error)  # the queue's backoff says when again
        tally.failed += 1
        last = d.attempt >= s.max_attempts
        say("failed", worker=name, id=d.id, attempt=d.attempt, email=email.dedup_id, error=error,
            next="dead-letter" if last else "retry")
    else:
        await client.ack(s.queue, [d.id])
        tally.sent += 1
        say("sent", worker=name, id=d.id, email=email.dedup_id, gateway_id=receipt.gateway_id)


# --- 3. and 4. the dead-letter queue ------------------------------------------------------


async def inspect_dead_letters(client: Client, s: Settings) -> list[PeekedMessage]:
    """Print every dead letter: where it came from, why, and where its source id is now."""
    dead = list(await client.peek(s.queue, max=client.info.max_batch, dead_letter=True))
    sources = [m.dead_letter.id for m in dead if m.dead_letter is not None]
    statuses = await client.message_status(s.queue, sources) if sources else []
    for message, status in zip(dead, statuses):
        dl = message.dead_letter
        assert dl is not None  # everything in this queue came by dead-lettering
        say("dead-letter", id=message.id, email=Email.from_bytes(message.body).dedup_id,
            source=f"{dl.queue}#{dl.id}", attempts=dl.attempts, reason=dl.reason, error=dl.error or "",
            source_status=f"{status.state}:{status.queue}#{status.dead_letter_id}")
    return dead


async def replay(client: Client, s: Settings, dead: list[PeekedMessage]) -> int:
    """Redrive the dead letters that ran out of attempts; leave the rejected ones."""
    ids = [m.id for m in dead if m.dead_letter is not None and m.dead_letter.reason == "max_attempts"]
    redriven = 0
    for i in range(0, len(ids), client.info.max_batch):
        result = await client.redrive(s.dead_letter, ids=ids[i:i + client.info.max_batch])
        redriven += result.redriven
    say("replay", redriven=redriven, left=len(dead) - redriven)
    return redriven


# --- the run ----------------------------------------------------------------------------


async def run(s: Settings, gateway: FlakyGateway) -> None:
    tally = Tally()
    async with Client.connect(s.addr) as client:
        await declare_queues(client, s)
        say("step", name="orders")
        emails = await place_orders(client, s)
        say("step", name="send")
        await run_workers(s, gateway, tally)
        say("step", name="inspect")
        dead = await inspect_dead_letters(client, s)
        say("step", name="replay")
        redriven = await replay(client, s, dead)
        if redriven:
            await run_workers(s, gateway, tally)
        say("step", name="left")
        left = await inspect_dead_letters(client, s)
        say("summary", emails=len(emails), sent=tally.sent, already_sent=tally.already_sent,
            failed=tally.failed, rejected=tally.rejected, redriven=redriven, dead_letters=len(left),
            duplicates=gateway.duplicates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.notifications",
        description="Order emails on a priority queue, sent by workers through a flaky gateway.",
    )
    parser.add_argument("--addr", help="broker host:port [$LOCKGATE_ADDR, else 127.0.0.1:7878]")
    parser.add_argument("--queue", default="emails", help="email queue; QUEUE.dlq is its dead-letter queue")
    parser.add_argument("--orders", type=int, default=50, help="orders to place (two emails each)")
    parser.add_argument("--workers", type=int, default=4, help="workers sending emails")
    parser.add_argument("--seed", type=int, default=1, help="seed of the addresses and of the gateway's luck")
    parser.add_argument("--max-attempts", type=int, default=3, help="deliveries before an email is dead-lettered")
    parser.add_argument("--failure-rate", type=float, default=0.3, help="share of sends the gateway fails")
    parser.add_argument("--slow-rate", type=float, default=0.1, help="share of sends answered too late")
    parser.add_argument("--send-timeout-ms", type=int, default=200, help="how long a worker waits for the gateway")
    parser.add_argument("--outbox", type=Path, help="append each email the gateway sends to this file (JSON lines)")
    a = parser.parse_args(argv)
    settings = Settings(a.addr, a.queue, a.orders, a.workers, a.seed, a.max_attempts, a.send_timeout_ms)
    gateway = FlakyGateway(seed=a.seed, failure_rate=a.failure_rate, slow_rate=a.slow_rate,
                           slow_ms=2 * a.send_timeout_ms, outbox=a.outbox)
    trio.run(run, settings, gateway)
    return 0
