"""A queue group: consume from several queues as if they were one, fairly.

    group = QueueGroup(client, ["tasks.fetch", "tasks.render", "tasks.thumbs"])
    taken = await group.consume(1, wait_ms=1000)     # Taken(queue, deliveries)
    for d in taken.deliveries:
        ...
        await client.ack(taken.queue, [d.id])

The broker's ``consume`` names one queue (a server-side consume of several queues is not
there yet), so the group does it on the client, with plain ``consume`` calls:

- **Fair by turns.** Each call serves one queue: the first one, in the group's order,
  that has ready messages, starting at the queue after the one served last. So when every
  queue has work, successive calls take from each in turn, and a busy queue cannot starve
  the others (a round-robin over queues, as the ``round_robin`` kind is over keys).
- **Waiting.** When a pass over all queues finds nothing, the group holds a long-poll
  ``consume`` on one queue (the next in turn) for at most ``hold_ms``, then looks at all
  of them again, until ``wait_ms`` is over. A message that arrives on the held queue is
  taken at once; one that arrives on another waits at most ``hold_ms``. An idle group
  costs one pass (one request per queue) every ``hold_ms``.

Deliveries are leased from their own queue: ack, nack or reject them there
(``taken.queue``). One group serves one consumer; give each worker its own, on the
worker's own connection or a shared one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import trio

from client import Client, Delivery

#: The longest a held consume waits before the group looks at every queue again.
HOLD_MS = 50


@dataclass(frozen=True, slots=True)
class Taken:
    """What one ``consume`` of the group took: ``deliveries`` from ``queue`` (none: the
    wait ended; ``queue`` is then ``""``)."""

    queue: str
    deliveries: list[Delivery]


class QueueGroup:
    """Several queues consumed in turn through one :class:`~client.Client`."""

    def __init__(self, client: Client, queues: Sequence[str], *, hold_ms: int = HOLD_MS) -> None:
        if not queues:
            raise ValueError("a queue group needs at least one queue")
        if hold_ms < 1:
            raise ValueError(f"hold_ms must be at least 1, not {hold_ms}")
        self.client = client
        self.queues = tuple(queues)
        self.hold_ms = hold_ms
        self._next = 0  # the queue whose turn it is

    async def consume(self, max: int = 1, *, wait_ms: int = 0, visibility_ms: int | None = None) -> Taken:
        """Lease up to ``max`` messages from the first queue, in turn, that has any;
        wait at most ``wait_ms`` for one."""
        deadline = trio.current_time() + wait_ms / 1000
        while True:
            for i in range(len(self.queues)):
                queue = self.queues[(self._next + i) % len(self.queues)]
                got = await self.client.consume(queue, max, visibility_ms=visibility_ms)
                if got:
                    self._next = (self._next + i + 1) % len(self.queues)
                    return Taken(queue, got)
            left_ms = int((deadline - trio.current_time()) * 1000)
            if left_ms <= 0:
                return Taken("", [])
            queue = self.queues[self._next]
            self._next = (self._next + 1) % len(self.queues)
            got = await self.client.consume(queue, max, visibility_ms=visibility_ms,
                                            wait_ms=min(self.hold_ms, left_ms))
            if got:
                return Taken(queue, got)
