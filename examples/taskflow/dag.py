"""The tasks of the example: a DAG per tenant, how it is submitted, and how tasks run.

Each tenant orders a report. Its job is a small DAG over four queues, one per kind:

- ``fetch:T`` on ``tasks.fetch`` (**fifo**): data is fetched in the order jobs came in;
- ``render:T:P``, one per page, after the fetch, on ``tasks.render`` (**round_robin**,
  key = tenant): a tenant with many pages gets one render per turn, so it cannot hold
  the small tenants back;
- ``thumb:T``, after the fetch, on ``tasks.thumbs`` (**lifo**): the newest thumbnail
  request first (whoever just asked is still looking);
- ``assemble:T``, after every render and the thumbnail, on ``tasks.assemble``
  (**priority** = the tenant's tier): when several reports are ready to assemble, the
  higher tiers go first.

:func:`submit` publishes the tasks parents first, each naming the ``(queue, id)`` of its
parents in ``after``: the broker keeps a task *waiting* until all of them are acked
(SPEC §8.14), so no worker ever sees a task before its inputs exist.

Some tasks fail, by the plan in :data:`FAULTS` (the same every run):

- ``fetch:initech`` fails for good (the tenant's source refuses access): the worker
  rejects it, and the broker dead-letters every task that depends on it, and the ones
  depending on those (reason ``dependency``);
- ``render:globex:2`` fails every time: after ``max_attempts`` deliveries it is
  dead-lettered (reason ``max_attempts``), and so is globex's ``assemble``;
- ``render:acme:3`` fails once and succeeds when retried.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from client import Client

FETCH, RENDER, THUMBS, ASSEMBLE = "tasks.fetch", "tasks.render", "tasks.thumbs", "tasks.assemble"
#: The queues and their kinds, in the order a queue group serves them.
QUEUES = {FETCH: "fifo", RENDER: "round_robin", THUMBS: "lifo", ASSEMBLE: "priority"}
#: Tenants: pages to render, and tier (the priority of their ``assemble``, 0..255).
TENANTS = {"acme": (8, 5), "globex": (3, 9), "initech": (2, 1), "umbrella": (2, 3)}
#: Task name → how it fails: ``reject`` (for good), ``always`` (every attempt), ``once``.
FAULTS = {"fetch:initech": "reject", "render:globex:2": "always", "render:acme:3": "once"}


@dataclass(frozen=True, slots=True)
class Task:
    """A task: its unique ``name``, the queue it runs from, its parents' names."""

    name: str
    queue: str
    tenant: str
    after: tuple[str, ...] = ()
    priority: int | None = None

    def to_bytes(self) -> bytes:
        return json.dumps({"name": self.name, "tenant": self.tenant}).encode()


def make_dag(tenants: dict[str, tuple[int, int]] = TENANTS) -> list[Task]:
    """Every tenant's job, parents before children."""
    tasks: list[Task] = []
    for tenant in tenants:
        tasks.append(Task(f"fetch:{tenant}", FETCH, tenant))
    for tenant, (pages, _) in tenants.items():
        tasks += [Task(f"render:{tenant}:{p}", RENDER, tenant, (f"fetch:{tenant}",)) for p in range(1, pages + 1)]
    for tenant in tenants:
        tasks.append(Task(f"thumb:{tenant}", THUMBS, tenant, (f"fetch:{tenant}",)))
    for tenant, (pages, tier) in tenants.items():
        parents = (*(f"render:{tenant}:{p}" for p in range(1, pages + 1)), f"thumb:{tenant}")
        tasks.append(Task(f"assemble:{tenant}", ASSEMBLE, tenant, parents, priority=tier))
    return tasks


async def submit(client: Client, tasks: Iterable[Task]) -> dict[str, tuple[str, int]]:
    """Publish ``tasks`` (parents first), each after its parents; returns each task's
    ``(queue, id)``: its identity in the broker, for acks and status look-ups."""
    where: dict[str, tuple[str, int]] = {}
    for task in tasks:
        after = [where[p] for p in task.after] or None
        where[task.name] = (task.queue, await client.publish(task.queue, task.to_bytes(), key=task.tenant,
                                                             priority=task.priority, after=after))
    return where


class TaskFailed(Exception):
    """A task did not succeed; ``permanent`` when retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


async def perform(task: Task, attempt: int, work_ms: float) -> None:
    """Do ``task`` (pretend: it takes ``work_ms``) on its ``attempt``-th delivery, or fail
    as :data:`FAULTS` says."""
    await trio.sleep(work_ms / 1000)
    fault = FAULTS.get(task.name)
    if fault == "reject":
        raise TaskFailed(f"403 forbidden: {task.tenant}'s data source refused access", permanent=True)
    if fault == "always" or (fault == "once" and attempt == 1):
        raise TaskFailed(f"renderer crashed on {task.name} (attempt {attempt})")
