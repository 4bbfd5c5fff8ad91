"""An SQS-like job service on Lockgate: producers, push consumers, a dead-letter alarm,
redrive and a graceful shutdown.

    python -m examples.sqs_like demo --addr 127.0.0.1:7878 --count 100
    python -m examples.sqs_like produce --count 1000
    python -m examples.sqs_like work --consumers 4 --credit 8      # until Ctrl-C / SIGTERM
    python -m examples.sqs_like redrive

How the SQS ideas map onto Lockgate:

==============================  =============================================================
SQS                             here
==============================  =============================================================
SendMessageBatch                ``publish_batch``
ReceiveMessage (long polling)   ``subscribe``: the broker pushes, at most ``credit`` unacked
DeleteMessage                   ``ack`` (``async with msg`` acks when the job succeeds)
visibility timeout              ``visibility_ms`` of the queue; a lease ends in a retry
ChangeMessageVisibility         ``extend`` (a heartbeat while a long job runs)
redrive policy, maxReceiveCount ``dead_letter`` and ``max_attempts`` of the queue
(retry delays)                  ``retry_delay_ms``, ``retry_backoff``, ``retry_jitter``
MessageRetentionPeriod          ``ttl_ms`` of the queue (here expired jobs are dead-lettered)
(a deadline per message)        ``ttl_ms`` of a message: ``produce --ttl-ms``
CloudWatch alarm on the DLQ     :class:`DeadLetterAlarm`, from ``queue_stats`` of the DLQ
StartMessageMoveTask            ``redrive``
==============================  =============================================================

Jobs do not wait forever: the queue keeps them at most ``RETENTION_MS`` (its ``ttl_ms``),
and ``produce --ttl-ms N`` gives jobs that are worthless after N ms (a preview someone
is waiting for) a time to live of their own. An expired job is never delivered again; the
queue's ``on_expire="dead_letter"`` moves it to the dead-letter queue with reason
``expired``, where the alarm sees it, instead of dropping it unseen.

``demo`` runs the whole story against one broker: it publishes ``--count`` thumbnail jobs
(:mod:`.jobs`), runs consumers with the first version of the renderer, which cannot decode
webp, until the queue is empty; the webp jobs fail ``max_attempts`` times and land in the
dead-letter queue, and the alarm goes off. Then it "deploys" a renderer that knows webp,
redrives the dead letters, runs the consumers again until the queue is empty, and the
alarm clears.

``work`` runs consumers until SIGINT or SIGTERM (or, with ``--until-empty``, until the
queue is empty), then shuts down gracefully: each consumer unsubscribes (messages pushed
but not yet started are nacked at once), jobs in flight get ``--grace-ms`` to finish
and be acked, and the ones still running then are cancelled and nacked: back in the
queue (after its retry delay) for the next consumer, not leased until their leases run
out. Nothing acked is redone and nothing unacked is lost.

Every event is one line on stdout, ``event key=value ...``.
"""
from __future__ import annotations

import argparse
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from client import Client, IncomingMessage, Message

from .jobs import ALL_FORMATS, V1_FORMATS, Job, Renderer, make_jobs
from ..say import say

#: The queues' settings, declared by every command the same way (a queue's settings never
#: change once it exists; declaring it again with the same ones is a no-op).
VISIBILITY_MS = 1_000            # a lease: jobs that take longer extend it
MAX_ATTEMPTS = 3                 # deliveries before a job goes to the dead-letter queue
RETRY_DELAY_MS = 100             # then 200, 400 ... up to RETRY_MAX_DELAY_MS, minus jitter
RETRY_MAX_DELAY_MS = 1_000
RETRY_JITTER = 20                # percent
RETENTION_MS = 4 * 24 * 3600 * 1000  # how long a job may wait at most (SQS's default: 4 days)
#: Most messages one redrive moves (SPEC.md §5.16): call again for the rest.
REDRIVE_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class Settings:
    """What the commands share; :func:`main` fills it from the command line."""

    addr: str | None
    queue: str
    consumers: int = 3
    credit: int = 4
    grace_ms: int = 5_000
    alarm_threshold: int = 3
    period_ms: int = 100

    @property
    def dead_letter(self) -> str:
        return f"{self.queue}.dlq"


async def declare_queues(client: Client, s: Settings) -> None:
    await client.create_queue(s.dead_letter)
    await client.create_queue(
        s.queue, kind="fifo", shards=2, visibility_ms=VISIBILITY_MS, max_attempts=MAX_ATTEMPTS,
        dead_letter=s.dead_letter, retry_delay_ms=RETRY_DELAY_MS, retry_backoff="exponential",
        retry_max_delay_ms=RETRY_MAX_DELAY_MS, retry_jitter=RETRY_JITTER,
        ttl_ms=RETENTION_MS, on_expire="dead_letter",
    )


# --- producing ----------------------------------------------------------------------------


async def produce(client: Client, s: Settings, jobs: list[Job], *, ttl_ms: int | None = None,
                  batch: int = 500) -> None:
    """Publish ``jobs``, ``batch`` per request (each request is all or nothing); with
    ``ttl_ms`` they expire that long after they are published (else the queue's retention
    applies)."""
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        result = await client.publish_batch(s.queue, [Message(job.to_bytes(), ttl_ms=ttl_ms) for job in chunk])
        say("produced", count=result.count, first_id=result.first_id, jobs=f"{chunk[0].number}-{chunk[-1].number}",
            ttl_ms=ttl_ms or RETENTION_MS)


# --- consuming ----------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What the consumers did, for the ``stopped`` line."""

    done: int = 0
    failed: int = 0
    released: int = 0
    extended: int = 0


class Consumer:
    """One push consumer: its own connection and one subscription.

    The subscription's ``credit`` is the consumer's concurrency: each pushed message gets
    its own task at once, so no message sits in a buffer while its lease runs, and the
    broker never pushes more than ``credit`` that are not yet acked.
    """

    def __init__(self, name: str, s: Settings, renderer: Renderer, tally: Tally) -> None:
        self.name = name
        self.s = s
        self.renderer = renderer
        self.tally = tally
        self._taking = trio.CancelScope()

    def stop(self) -> None:
        """Begin the graceful shutdown: take no more messages, let running jobs finish."""
        self._taking.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with Client.connect(self.s.addr) as client:
            async with trio.open_nursery() as jobs:
                async with client.subscribe(self.s.queue, credit=self.s.credit) as subscription:
                    task_status.started()
                    with self._taking:
                        async for msg in subscription:
                            jobs.start_soon(self.handle, msg)
                # Unsubscribed: nothing more is pushed, and what was pushed but never
                # started has been nacked. Running jobs get the grace period, then are
                # cancelled, which nacks them.
                jobs.cancel_scope.deadline = trio.current_time() + self.s.grace_ms / 1000

    async def handle(self, msg: IncomingMessage) -> None:
        job = Job.from_bytes(msg.body)
        outcome, detail = "released", ""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.keep_leased, msg, job)
                try:
                    async with msg:  # acks on success; nacks with the error text on an exception
                        detail = await self.renderer.render(job, msg.attempt)
                    outcome = "done"
                except Exception as exc:  # nacked: retried after the backoff, or dead-lettered
                    outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
                nursery.cancel_scope.cancel()
        finally:  # also when cancelled at shutdown: then it was nacked, back in the queue
            self.report(outcome, msg, job, detail)

    async def keep_leased(self, msg: IncomingMessage, job: Job) -> None:
        """A heartbeat: every half lease, move the lease deadline a whole lease ahead."""
        while True:
            await trio.sleep(VISIBILITY_MS / 2000)
            await msg.extend(VISIBILITY_MS)
            self.tally.extended += 1
            say("extended", consumer=self.name, id=msg.id, job=job.number, visibility_ms=VISIBILITY_MS)

    def report(self, outcome: str, msg: IncomingMessage, job: Job, detail: str) -> None:
        fields: dict[str, object] = {"consumer": self.name, "id": msg.id, "job": job.number, "attempt": msg.attempt}
        if outcome == "done":
            self.tally.done += 1
            say("done", **fields, thumbnail=detail)
        elif outcome == "failed":
            self.tally.failed += 1
            say("failed", **fields, error=detail, next="dead-letter" if msg.attempt >= MAX_ATTEMPTS else "retry")
        else:
            self.tally.released += 1
            say("released", **fields)


async def run_consumers(s: Settings, renderer: Renderer, tally: Tally, until: Callable[[], Awaitable[None]]) -> None:
    """Run ``s.consumers`` consumers until ``until()`` returns, then shut them down gracefully."""
    consumers = [Consumer(f"c{n}", s, renderer, tally) for n in range(1, s.consumers + 1)]
    async with trio.open_nursery() as nursery:
        for consumer in consumers:
            await nursery.start(consumer.run)
        say("consuming", consumers=len(consumers), credit=s.credit, formats=",".join(sorted(renderer.formats)))
        await until()
        say("stopping", grace_ms=s.grace_ms)
        for consumer in consumers:
            consumer.stop()
    say("stopped", done=tally.done, failed=tally.failed, released=tally.released, extended=tally.extended)


async def until_empty(client: Client, s: Settings) -> None:
    """Return once the queue holds nothing: nothing ready, waiting for a retry or leased."""
    while (await client.queue_stats(s.queue)).messages:
        await trio.sleep(s.period_ms / 1000)


async def first_of(*waits: Callable[[], Awaitable[None]]) -> None:
    """Return as soon as one of ``waits`` returns (the others are cancelled)."""
    async with trio.open_nursery() as nursery:
        async def then_stop(wait: Callable[[], Awaitable[None]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()
        for wait in waits:
            nursery.start_soon(then_stop, wait)


# --- the dead-letter queue ----------------------------------------------------------------


class DeadLetterAlarm:
    """An alarm on the dead-letter queue's depth, from its ``queue_stats``.

    It goes to ALARM when the queue holds ``threshold`` or more messages than when the
    alarm was armed (its baseline), printing what brought them there (the exceptions of
    jobs out of attempts, or "expired"), and back to OK once the queue is down to its
    baseline again (after a redrive, say).
    """

    def __init__(self, client: Client, s: Settings) -> None:
        self.client = client
        self.s = s
        self.state = "OK"
        self.baseline: int | None = None

    async def check(self) -> None:
        """Look at the dead-letter queue once; print a line when the state changes."""
        depth = (await self.client.queue_stats(self.s.dead_letter)).messages
        if self.baseline is None:
            self.baseline = depth
            say("alarm-armed", queue=self.s.dead_letter, depth=depth, threshold=self.s.alarm_threshold)
        elif self.state == "OK" and depth - self.baseline >= self.s.alarm_threshold:
            self.state = "ALARM"
            causes: Counter[str] = Counter()
            for m in await self.client.peek(self.s.dead_letter, max=100):
                dl = m.dead_letter
                if dl is None:
                    continue
                if dl.reason == "max_attempts" and dl.error:  # the exception's name, from "module.Name: text"
                    causes[dl.error.split(":")[0].rsplit(".", 1)[-1]] += 1
                else:  # "rejected", "expired"
                    causes[dl.reason] += 1
            say("ALARM", queue=self.s.dead_letter, depth=depth, grew_by=depth - self.baseline,
                threshold=self.s.alarm_threshold, causes=dict(causes))
        elif self.state == "ALARM" and depth <= self.baseline:
            self.state = "OK"
            say("alarm-ok", queue=self.s.dead_letter, depth=depth)

    async def watch(self) -> None:
        """Check every ``period_ms``, until cancelled."""
        while True:
            await self.check()
            await trio.sleep(self.s.period_ms / 1000)


async def redrive(client: Client, s: Settings) -> int:
    """Move every dead letter back to the queue it came from."""
    total = 0
    while True:
        result = await client.redrive(s.dead_letter)
        total += result.redriven
        say("redrive", redriven=result.redriven, queues=result.queues, skipped=result.skipped)
        if result.redriven < REDRIVE_LIMIT:
            return total


# --- the commands -------------------------------------------------------------------------


async def demo(s: Settings, count: int, seed: int) -> None:
    """Produce, consume with the first renderer, alarm, deploy, redrive, consume again."""
    tally = Tally()
    async with Client.connect(s.addr) as client:
        await declare_queues(client, s)
        alarm = DeadLetterAlarm(client, s)
        await alarm.check()
        await produce(client, s, make_jobs(count, seed))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(alarm.watch)
            v1 = Renderer(V1_FORMATS, seed, large_ms=VISIBILITY_MS * 3 // 2)
            await run_consumers(s, v1, tally, lambda: until_empty(client, s))
            await alarm.check()
            say("deploy", formats=",".join(sorted(ALL_FORMATS)))
            await redrive(client, s)
            v2 = Renderer(ALL_FORMATS, seed, large_ms=VISIBILITY_MS * 3 // 2)
            await run_consumers(s, v2, tally, lambda: until_empty(client, s))
            await alarm.check()
            nursery.cancel_scope.cancel()
        jobs, dlq = await client.queue_stats(s.queue), await client.queue_stats(s.dead_letter)
        say("summary", published=jobs.published, acked=jobs.acked, dead_lettered=jobs.dead_lettered,
            lease_expiries=jobs.expired, left=jobs.messages, dead_letters_left=dlq.messages,
            extended=tally.extended, alarm=alarm.state)


async def work(s: Settings, formats: frozenset[str], seed: int, stop_when_empty: bool) -> None:
    """Consume until SIGINT or SIGTERM (or an empty queue), then shut down gracefully."""
    # Listen for the signals first, so one that comes while starting up is not missed.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async def signalled() -> None:
            async for signum in signals:
                say("signal", name=signal.Signals(signum).name)
                return

        async with Client.connect(s.addr) as client:
            await declare_queues(client, s)
            waits = [signalled] + ([lambda: until_empty(client, s)] if stop_when_empty else [])
            renderer = Renderer(formats, seed, large_ms=VISIBILITY_MS * 3 // 2)
            await run_consumers(s, renderer, Tally(), lambda: first_of(*waits))
            stats = await client.queue_stats(s.queue)
            say("left", queue=s.queue, ready=stats.ready, delayed=stats.delayed, leased=stats.leased)


async def produce_command(s: Settings, count: int, seed: int, first: int, ttl_ms: int | None) -> None:
    async with Client.connect(s.addr) as client:
        await declare_queues(client, s)
        await produce(client, s, make_jobs(count, seed, first), ttl_ms=ttl_ms)


async def redrive_command(s: Settings) -> None:
    async with Client.connect(s.addr) as client:
        await declare_queues(client, s)
        await redrive(client, s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.sqs_like",
                                     description="An SQS-like thumbnail job service on Lockgate.")
    parser.add_argument("--addr", help="broker host:port [$LOCKGATE_ADDR, else 127.0.0.1:7878]")
    parser.add_argument("--queue", default="jobs", help="job queue; QUEUE.dlq is its dead-letter queue [jobs]")
    commands = parser.add_subparsers(dest="command", required=True)

    def consumer_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--consumers", type=int, default=3, help="push consumers, one connection each [3]")
        p.add_argument("--credit", type=int, default=4, help="jobs each consumer runs at once [4]")
        p.add_argument("--grace-ms", type=int, default=5_000,
                       help="at shutdown, how long running jobs may finish before they are nacked [5000]")

    p = commands.add_parser("demo", help="the whole story: produce, fail, alarm, fix, redrive, drain")
    p.add_argument("--count", type=int, default=100, help="jobs to publish [100]")
    p.add_argument("--seed", type=int, default=1, help="seed of the job mix and of the failures [1]")
    p.add_argument("--alarm-threshold", type=int, default=3, help="dead letters that set off the alarm [3]")
    consumer_options(p)
    p = commands.add_parser("produce", help="publish jobs")
    p.add_argument("--count", type=int, default=100, help="jobs to publish [100]")
    p.add_argument("--seed", type=int, default=1, help="seed of the job mix [1]")
    p.add_argument("--first", type=int, default=1, help="number of the first job [1]")
    p.add_argument("--ttl-ms", type=int, help="drop the jobs (to the dead-letter queue) if not done this soon "
                                              "[the queue's retention, 4 days]")
    p = commands.add_parser("work", help="consume until SIGINT/SIGTERM, then shut down gracefully")
    p.add_argument("--formats", default=",".join(sorted(ALL_FORMATS)),
                   help=f"image formats the renderer decodes [{','.join(sorted(ALL_FORMATS))}]")
    p.add_argument("--seed", type=int, default=1, help="seed of the failures [1]")
    p.add_argument("--until-empty", action="store_true", help="also stop once the queue is empty")
    consumer_options(p)
    commands.add_parser("redrive", help="move the dead letters back to the job queue")

    a = parser.parse_args(argv)
    if a.command == "demo":
        s = Settings(a.addr, a.queue, a.consumers, a.credit, a.grace_ms, a.alarm_threshold)
        trio.run(demo, s, a.count, a.seed)
    elif a.command == "work":
        s = Settings(a.addr, a.queue, a.consumers, a.credit, a.grace_ms)
        trio.run(work, s, frozenset(a.formats.split(",")), a.seed, a.until_empty)
    elif a.command == "produce":
        trio.run(produce_command, Settings(a.addr, a.queue), a.count, a.seed, a.first, a.ttl_ms)
    else:
        trio.run(redrive_command, Settings(a.addr, a.queue))
    return 0
