"""The moving parts: a connection that comes back, the producer, and the workers.

**Reconnecting.** :func:`reconnecting` runs a session on a connection; when the
connection is lost (the broker crashed or restarts) it connects again, every
``RETRY_S``, and runs the session again, giving up after ``give_up_s`` without a
connection. A session must therefore be safe to start over, and each one here is:

- **the producer** asks the topic how many orders it holds (``topic_stats``'s
  ``published``; it is the topic's only publisher and each publish is atomic) and goes
  on from there; and each order carries a dedup id (``order-N``), so even a batch sent
  again whose first send the broker did store is stored once (its orders come back as
  ``duplicates``, SPEC §8.9);
- **a worker** keeps the work it had transformed but not seen committed (``pending``)
  and sends that transaction again first. Whatever happened to the first one, the
  second cannot double it: if the first committed, its acks now find the orders not
  leased (``TxnConflict``); if it did not, the restart released the orders' leases, so
  they conflict too (or, when another worker has leased one again meanwhile, this
  commit wins and that worker's transaction conflicts later).

**A worker** consumes a batch from its group (``TOPIC/GROUP``), transforms each order,
and commits one transaction per batch: the ack of the batch and the publish of its
outputs, all or nothing (SPEC §5.28). A ``TxnConflict`` names the orders whose leases
were lost (ran out while the worker was slow, or released by a restart): someone else
has them or had them, so the worker drops that work, commits the rest, and moves on.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from client import Client, ConnectionClosed, Delivery, Message, TopicMessage, Transaction, TxnConflict

from .orders import AuditLine, Enriched, Order, audit, decode, encode, enrich
from ..say import say

#: Between connection attempts while the broker is away.
RETRY_S = 0.05
#: A consume waits this long for work before it looks whether the run is over.
WAIT_MS = 100


@dataclass(slots=True)
class Tally:
    """What the workers and the producer did, for the summary."""

    #: Orders committed (acked with their output published), by service.
    committed: Counter[str] = field(default_factory=Counter)
    #: Transactions committed, by service.
    txns: Counter[str] = field(default_factory=Counter)
    #: Orders whose work was dropped because their lease was lost, by service.
    dropped: Counter[str] = field(default_factory=Counter)
    #: Transactions sent again after a lost connection, by service.
    resent: Counter[str] = field(default_factory=Counter)
    #: Connections made again after a loss, by role.
    reconnects: Counter[str] = field(default_factory=Counter)


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception of a group) says the connection is gone."""
    if isinstance(exc, BaseExceptionGroup):
        return all(connection_lost(e) for e in exc.exceptions)
    return isinstance(exc, (ConnectionClosed, OSError))


def _first(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def reconnecting(addr: str | None, role: str, tally: Tally, give_up_s: float,
                       session: Callable[[Client], Awaitable[None]]) -> None:
    """Run ``session(client)`` until it returns, on a new connection after each loss."""
    lost_at: float | None = None
    while True:
        try:
            async with Client.connect(addr) as client:
                if lost_at is not None:
                    tally.reconnects[role] += 1
                    say("reconnected", role=role, after_ms=round((trio.current_time() - lost_at) * 1000))
                    lost_at = None
                await session(client)
                return
        except Exception as exc:
            if not connection_lost(exc):
                raise
            now = trio.current_time()
            if lost_at is None:
                lost_at = now
                say("disconnected", role=role, error=f"{type(_first(exc)).__name__}: {_first(exc)}")
            elif now - lost_at > give_up_s:
                raise
        await trio.sleep(RETRY_S)


# --- the producer -------------------------------------------------------------------------


async def produce(client: Client, topic: str, orders: list[Order], batch: int, pace_s: float) -> None:
    """Publish ``orders`` to ``topic`` in batches, key = customer, from the first order the
    topic does not hold yet (a session: see the module docstring)."""
    held = (await client.topic_stats(topic)).published
    if held:
        say("resume", role="producer", published=held, next_order=held + 1)
    for i in range(held, len(orders), batch):
        chunk = orders[i:i + batch]
        result = await client.publish_topic(topic, [TopicMessage(encode(o), key=o.customer, dedup_id=order_id(o))
                                                     for o in chunk])
        say("published", first_id=result.first_id, count=result.count, orders=f"{chunk[0].order}-{chunk[-1].order}",
            **({"duplicates": len(result.duplicates)} if result.duplicates else {}))
        await trio.sleep(pace_s)  # orders trickle in


def order_id(order: Order) -> bytes:
    """An order's dedup id: the topic stores an order published twice only once."""
    return f"order-{order.order}".encode()


# --- the workers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Work:
    """An order taken from a group, and the output record made from it."""

    delivery: Delivery
    order: Order
    output: Enriched | AuditLine


@dataclass(frozen=True, slots=True)
class Service:
    """A consumer group and what its workers make of each order, and where it goes."""

    name: str
    #: The group's queue name, TOPIC/GROUP.
    queue: str
    #: The topic (enrich) or queue (audit) the outputs go to.
    output: str
    output_is_topic: bool

    def transform(self, d: Delivery, worker: str) -> Work:
        order = decode(Order, d.body)
        if self.output_is_topic:
            return Work(d, order, enrich(order, d.id, worker))
        return Work(d, order, audit(order, d.id, d.attempt, worker))

    def add_outputs(self, txn: Transaction, works: list[Work]) -> Transaction:
        if self.output_is_topic:
            return txn.publish_topic(self.output, [TopicMessage(encode(w.output), key=w.order.customer)
                                                   for w in works])
        return txn.publish(self.output, [Message(encode(w.output), key=w.order.customer) for w in works])


@dataclass(slots=True)
class Worker:
    """One worker of a service: consume a batch → transform → one transaction."""

    name: str
    service: Service
    tally: Tally
    stop: trio.Event
    batch: int
    #: Hold the work of this order (on its first delivery) past its lease, once: its
    #: lease runs out, another worker takes it, and this one's commit conflicts.
    stall_order: int = 0
    stall_s: float = 0.0
    #: Transformed, not yet known to be committed (kept across reconnects).
    pending: list[Work] = field(default_factory=list)

    async def session(self, client: Client) -> None:
        if self.pending:
            self.tally.resent[self.service.name] += 1
            say("resend", worker=self.name, orders=[w.order.order for w in self.pending])
            await self.commit(client)
        while True:
            got = await client.consume(self.service.queue, self.batch, wait_ms=WAIT_MS)
            if not got:
                if self.stop.is_set():
                    return
                continue
            self.pending = [self.service.transform(d, self.name) for d in got]
            if any(d.attempt == 1 and w.order.order == self.stall_order for d, w in zip(got, self.pending)):
                say("stall", worker=self.name, order=self.stall_order, ms=round(self.stall_s * 1000))
                await trio.sleep(self.stall_s)
            await self.commit(client)

    async def commit(self, client: Client) -> None:
        """Ack the pending orders and publish their outputs in one transaction; drop the
        orders whose leases were lost and commit the rest."""
        while self.pending:
            works = self.pending
            txn = client.transaction().ack(self.service.queue, [w.delivery.id for w in works])
            try:
                await self.service.add_outputs(txn, works).commit()
            except TxnConflict as exc:
                lost = set(exc.details.get("ids") or [w.delivery.id for w in works])
                dropped = [w for w in works if w.delivery.id in lost]
                self.tally.dropped[self.service.name] += len(dropped)
                say("conflict", worker=self.name, dropped=[w.order.order for w in dropped],
                    ids=[w.delivery.id for w in dropped])
                self.pending = [w for w in works if w.delivery.id not in lost]
                continue
            self.pending = []
            self.tally.committed[self.service.name] += len(works)
            self.tally.txns[self.service.name] += 1
            say("committed", worker=self.name, service=self.service.name, orders=[w.order.order for w in works],
                attempts=[w.delivery.attempt for w in works])
