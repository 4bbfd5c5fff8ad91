"""The records of the example and the two transforms that turn one into the next.

An :class:`Order` is an input event: customer ``customer`` placed their ``seq``-th order,
number ``order`` (unique, from 1). The shop publishes one per order with the customer id
as its key, so one customer's orders stay in one shard, in order.

Each service turns an order into one output record, from the order alone (a pure
function: running it twice gives the same record, which is what makes dropping a
duplicate attempt safe):

- ``enrich`` adds the tax of the customer's region and the total
  (:func:`enrich`, an :class:`Enriched`), published to the topic ``orders.enriched``;
- ``audit`` writes an audit line (:func:`audit`, an :class:`AuditLine`) to the queue
  ``audit.log``.

Which customers and amounts come up is drawn from a generator seeded with ``seed``, so
runs repeat.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

#: Tax rate of each region, in basis points (1/100 of a percent).
TAX_BP = {"north": 1900, "south": 700, "east": 2100, "west": 1000}

R = TypeVar("R")


def encode(record: Any) -> bytes:
    """A record (one of the dataclasses below) as a JSON body."""
    return json.dumps(asdict(record), separators=(",", ":")).encode()


def decode(cls: type[R], data: bytes) -> R:
    """A JSON body as a record of type ``cls``."""
    fields: dict[str, Any] = json.loads(data)
    return cls(**fields)


@dataclass(frozen=True, slots=True)
class Order:
    """Customer ``customer`` (in ``region``) placed their ``seq``-th order, ``order``."""

    order: int
    customer: str
    seq: int
    region: str
    amount_cents: int


@dataclass(frozen=True, slots=True)
class Enriched:
    """An order with its tax and total; ``input_id`` is the order event's topic id."""

    order: int
    customer: str
    seq: int
    input_id: int
    tax_cents: int
    total_cents: int
    worker: str


@dataclass(frozen=True, slots=True)
class AuditLine:
    """What the audit service records of an order."""

    order: int
    customer: str
    input_id: int
    attempt: int
    line: str
    worker: str


def make_orders(count: int, customers: int, seed: int) -> list[Order]:
    """``count`` orders numbered from 1, by ``customers`` customers ``c1`` ..., each
    customer's numbered from 1 in ``seq``."""
    rng = random.Random(seed)
    regions = {f"c{n}": rng.choice(sorted(TAX_BP)) for n in range(1, customers + 1)}
    seqs: dict[str, int] = {}
    orders = []
    for number in range(1, count + 1):
        customer = f"c{rng.randrange(1, customers + 1)}"
        seqs[customer] = seqs.get(customer, 0) + 1
        orders.append(Order(number, customer, seqs[customer], regions[customer], rng.randrange(100, 100_000)))
    return orders


def enrich(order: Order, input_id: int, worker: str) -> Enriched:
    tax = order.amount_cents * TAX_BP[order.region] // 10_000
    return Enriched(order.order, order.customer, order.seq, input_id, tax, order.amount_cents + tax, worker)


def audit(order: Order, input_id: int, attempt: int, worker: str) -> AuditLine:
    line = f"order {order.order} by {order.customer}: {order.amount_cents / 100:.2f} ({order.region})"
    return AuditLine(order.order, order.customer, input_id, attempt, line, worker)
