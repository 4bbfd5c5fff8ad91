"""The events of the example, and the one service that has trouble with them.

An :class:`OrderPlaced` event says a customer placed an order. The shop publishes one
per order with the customer id as its key (so one customer's orders keep their order in
one shard) and a ``type`` header.

:class:`Mailer` sends the order confirmations (it only pretends, with ``trio.sleep``)
and fails the way mail relays fail:

- one first attempt in ``flaky_rate`` finds the relay busy (:class:`RelayBusy`): a
  transient failure that a retry fixes;
- the mail server of one customer's domain never answers (:class:`NoAnswer`): every
  attempt fails, and that confirmation ends in the email group's dead-letter queue.

Which orders are which is drawn from a generator seeded with ``seed``, so runs repeat.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from typing import Any

import trio

#: The ``type`` header of the events this shop publishes.
EVENT_TYPE = "order.placed"


@dataclass(frozen=True, slots=True)
class OrderPlaced:
    """Customer ``customer`` placed order ``order`` for ``amount_cents``."""

    order: int
    customer: str
    email: str
    amount_cents: int

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> OrderPlaced:
        fields: dict[str, Any] = json.loads(data)
        return cls(**fields)


def make_orders(count: int, seed: int) -> list[OrderPlaced]:
    """``count`` orders numbered from 1, by about ``count / 3`` customers; the customer of
    one order (the unreachable one) has an address at ``unreachable.example``."""
    rng = random.Random(seed)
    customers = max(1, count // 3)
    unreachable = rng.randrange(1, count + 1)
    orders = []
    for number in range(1, count + 1):
        customer = f"c{rng.randrange(1, customers + 1)}"
        domain = "unreachable.example" if number == unreachable else "example.com"
        orders.append(OrderPlaced(number, customer, f"{customer}.{number}@{domain}", rng.randrange(500, 50_000)))
    return orders


class MailError(Exception):
    """A confirmation could not be sent."""


class RelayBusy(MailError):
    """The relay refused for now (transient)."""


class NoAnswer(MailError):
    """The recipient's mail server does not answer (every time)."""


@dataclass(frozen=True, slots=True)
class Mailer:
    """Sends order confirmations, ``send_ms`` each."""

    seed: int
    send_ms: float = 3.0
    flaky_rate: float = 0.15

    async def send(self, order: OrderPlaced, attempt: int) -> None:
        """Send the confirmation of ``order`` on its ``attempt``-th delivery."""
        await trio.sleep(self.send_ms / 1000)
        if order.email.endswith("@unreachable.example"):
            raise NoAnswer(f"no answer from the mail server of {order.email}")
        if attempt == 1 and random.Random(f"{self.seed}/{order.order}").random() < self.flaky_rate:
            raise RelayBusy("421 relay busy, try again later")
