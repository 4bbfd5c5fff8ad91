"""A task runner in the style of TaskQueueX: a DAG of tasks over FIFO, LIFO, priority
and round-robin queues, workers on a queue group, task status by id.

    python -m examples.taskflow --addr 127.0.0.1:7878 --workers 3

The run, in three steps:

1. **submit**: the queues (:data:`~.dag.QUEUES`, each with ``max_attempts`` 3 and the
   dead-letter queue ``tasks.dlq``) and every tenant's DAG (:mod:`.dag`), parents first,
   each task published ``after`` its parents. Then the status of every task, looked up
   by its id with ``message_status``: the fetches are ``ready``, everything else
   ``waiting``, with the tasks it still ``waits_on``.
2. **work**: ``--workers`` workers, each with its own connection, consume from the
   four queues as one **queue group** (``consume_group``, SPEC §8.15): the broker takes
   one task at a time, in turn from the queues that have work, holds the consume while
   none has, and names the queue each task came from. A task that succeeds is acked, which releases
   the tasks waiting on it; a transient failure is nacked with its error (retried after
   the queue's backoff, dead-lettered after 3 deliveries); a permanent one is rejected
   straight to the dead-letter queue. Meanwhile a tracker looks up every task's status
   every ``--watch-ms`` and prints each change (``waiting`` → ``ready`` → ``leased`` →
   ``gone``, or ``dead_lettered`` with the reason). The workers stop when the four
   queues are empty (no task ready, leased, delayed or waiting).
3. **report**: the dead-letter queue, read with ``peek``: the task that failed and the
   tasks the broker dead-lettered because of it, each with its source, reason and error.

Every event is one line, ``event key=value ...``; the last is ``summary ...``. A run
starts by deleting the queues an earlier run left.
"""
from __future__ import annotations

import argparse
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field

import trio

from client import Client, MessageStatus, QueueNotFound

from .dag import QUEUES, Task, TaskFailed, make_dag, perform, submit
from ..say import say

DEAD_LETTER = "tasks.dlq"
MAX_ATTEMPTS = 3
RETRY_DELAY_MS = 20  # then 40: the queues' exponential backoff
#: A worker's consume waits this long for a task before it looks whether the run is over.
WAIT_MS = 200


@dataclass(frozen=True, slots=True)
class Settings:
    """What a run needs to know; :func:`main` fills it from the command line."""

    addr: str | None
    workers: int = 3
    work_ms: float = 10.0
    watch_ms: int = 20


@dataclass(slots=True)
class Tally:
    """What the workers did, for the summary."""

    done: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    #: Deliveries by queue.
    taken: Counter[str] = field(default_factory=Counter)


# --- 1. submit ------------------------------------------------------------------------------


async def setup(client: Client) -> None:
    """Delete what an earlier run left; declare the dead-letter queue and the task queues."""
    for queue in (*QUEUES, DEAD_LETTER):
        with suppress(QueueNotFound):
            await client.delete_queue(queue)
    await client.create_queue(DEAD_LETTER)
    for queue, kind in QUEUES.items():
        await client.create_queue(queue, kind=kind, max_attempts=MAX_ATTEMPTS, dead_letter=DEAD_LETTER,
                                  retry_delay_ms=RETRY_DELAY_MS)
    say("created", queues=",".join(f"{q}({k})" for q, k in QUEUES.items()), dead_letter=DEAD_LETTER)


class Tracker:
    """Looks up the status of every task by id (one ``message_status`` per queue) and
    prints each change."""

    def __init__(self, client: Client, where: dict[str, tuple[str, int]]) -> None:
        self.client = client
        self.where = where
        self.name_of = {place: name for name, place in where.items()}
        self.last: dict[str, MessageStatus] = {}

    async def poll(self, event: str = "status") -> None:
        by_queue: dict[str, list[str]] = {}
        for name, (queue, _) in self.where.items():
            by_queue.setdefault(queue, []).append(name)
        for queue, names in by_queue.items():
            statuses = await self.client.message_status(queue, [self.where[n][1] for n in names])
            for name, st in zip(names, statuses):
                before = self.last.get(name)
                if before is None or (before.state, before.waits_on) != (st.state, st.waits_on):
                    self.last[name] = st
                    self.show(event, name, st)

    def show(self, event: str, name: str, st: MessageStatus) -> None:
        queue, mid = self.where[name]
        extra: dict[str, object] = {}
        if st.state == "waiting":
            extra["waits_on"] = [self.name_of.get(w, f"{w[0]}#{w[1]}") for w in st.waits_on]
        if st.state == "dead_lettered":
            extra |= {"reason": st.reason, "error": st.error or "", "dead_letter_id": st.dead_letter_id}
        say(event, task=name, queue=queue, id=mid, state=st.state, attempts=st.attempts, **extra)

    async def watch(self, every_s: float) -> None:
        while True:
            await self.poll()
            await trio.sleep(every_s)

    def states(self) -> Counter[str]:
        return Counter(st.state for st in self.last.values())


# --- 2. work --------------------------------------------------------------------------------


async def worker(name: str, s: Settings, tasks: dict[tuple[str, int], Task], tally: Tally,
                 stop: trio.Event) -> None:
    """Take one task at a time from the queue group; ack, nack or reject it."""
    async with Client.connect(s.addr) as client:
        while True:
            taken = await client.consume_group(list(QUEUES), 1, wait_ms=WAIT_MS)
            if not taken:
                if stop.is_set():
                    return
                continue
            for d in taken:
                queue = d.queue
                assert queue is not None  # a group's deliveries name their queue
                task = tasks[(queue, d.id)]
                tally.taken[queue] += 1
                say("start", worker=name, task=task.name, queue=queue, id=d.id, attempt=d.attempt)
                try:
                    await perform(task, d.attempt, s.work_ms)
                except TaskFailed as exc:
                    if exc.permanent:
                        say("failed", worker=name, task=task.name, attempt=d.attempt, error=str(exc), next="reject")
                        tally.rejected[queue] += 1
                        await client.reject(queue, [d.id], error=str(exc))
                    else:
                        last = d.attempt >= MAX_ATTEMPTS
                        say("failed", worker=name, task=task.name, attempt=d.attempt, error=str(exc),
                            next="dead-letter" if last else "retry")
                        tally.retried[queue] += 0 if last else 1
                        await client.nack(queue, [d.id], error=str(exc))
                else:
                    # Said before the ack: a child can only start once the ack is in.
                    say("done", worker=name, task=task.name, attempt=d.attempt)
                    tally.done[task.name] += 1
                    await client.ack(queue, [d.id])


async def until_empty(client: Client) -> None:
    """Return once no task queue holds a task (ready, leased, delayed or waiting)."""
    while True:
        stats = [await client.queue_stats(q) for q in QUEUES]
        if all(st.messages == 0 for st in stats):
            return
        await trio.sleep(0.02)


# --- the run --------------------------------------------------------------------------------


async def run(s: Settings) -> None:
    dag = make_dag()
    tally = Tally()
    async with Client.connect(s.addr) as client:
        say("step", name="submit")
        await setup(client)
        where = await submit(client, dag)
        for task in dag:
            queue, mid = where[task.name]
            say("submitted", task=task.name, queue=queue, id=mid, after=list(task.after))
        tracker = Tracker(client, where)
        await tracker.poll()

        say("step", name="work", workers=s.workers)
        tasks = {where[t.name]: t for t in dag}
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tracker.watch, s.watch_ms / 1000)
            async with trio.open_nursery() as workers:
                for i in range(1, s.workers + 1):
                    workers.start_soon(worker, f"w{i}", s, tasks, tally, stop)
                await until_empty(client)
                stop.set()
            nursery.cancel_scope.cancel()
        await tracker.poll()

        say("step", name="report")
        dead = list(await client.peek(DEAD_LETTER, max=100))
        reasons: Counter[str] = Counter()
        for m in dead:
            assert m.dead_letter is not None  # everything in it came by dead-lettering
            info = m.dead_letter
            reasons[info.reason] += 1
            say("dead-letter", id=m.id, task=tracker.name_of[(info.queue, info.id)],
                source=f"{info.queue}#{info.id}", reason=info.reason, attempts=info.attempts, error=info.error or "")

    say("summary", tasks=len(dag), done=len(tally.done), runs=sum(tally.done.values()),
        retried=sum(tally.retried.values()), rejected=sum(tally.rejected.values()),
        dead_lettered=dict(sorted(reasons.items())), final=dict(sorted(tracker.states().items())),
        deliveries=dict(tally.taken))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.taskflow",
        description="A DAG of tasks over fifo, lifo, priority and round-robin queues, run by workers "
                    "on a queue group.",
    )
    d = Settings(None)
    parser.add_argument("--addr", help="broker host:port [$LOCKGATE_ADDR, else 127.0.0.1:7878]")
    parser.add_argument("--workers", type=int, default=d.workers, help=f"workers [{d.workers}]")
    parser.add_argument("--work-ms", type=float, default=d.work_ms, help=f"how long a task takes [{d.work_ms:g}]")
    parser.add_argument("--watch-ms", type=int, default=d.watch_ms,
                        help=f"how often the tracker looks up every task's status [{d.watch_ms}]")
    a = parser.parse_args(argv)
    trio.run(run, Settings(a.addr, a.workers, a.work_ms, a.watch_ms))
    return 0
