"""A fake email gateway that behaves like a real one on a bad day.

Each call to :meth:`FlakyGateway.send` draws its fate from a random generator seeded
with (seed, dedup id, how many times this dedup id was tried), so a run is repeatable
whatever order the workers happen to call in:

- an address at ``.invalid`` bounces: :class:`Bounced` (a permanent failure, retrying
  will not help);
- with probability ``failure_rate`` the gateway is unavailable: :class:`Unavailable`
  (a transient failure, nothing was sent);
- with probability ``slow_rate`` the email goes out but the answer takes ``slow_ms``:
  a caller with a shorter timeout gives up without knowing it was sent;
- otherwise the email goes out and the answer comes after a few milliseconds.

Every email that goes out is recorded under its dedup id and, with ``outbox``, appended
to that file as one JSON line: the file is the list of emails customers received. The
gateway itself sends whatever it is asked to, twice if asked twice: not sending an email
twice is the caller's job (:meth:`lookup` tells whether a dedup id went out already).
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio


@dataclass(frozen=True, slots=True)
class Email:
    """One email to send. ``dedup_id`` names it for good: the same email always has the
    same dedup id, however often it is published or delivered."""

    dedup_id: str
    to: str
    template: str
    order: int
    transactional: bool

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Email:
        fields: dict[str, Any] = json.loads(data)
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class Receipt:
    """The gateway's proof that an email went out."""

    dedup_id: str
    gateway_id: str


class GatewayError(Exception):
    """The gateway did not take the email."""


class Unavailable(GatewayError):
    """A transient failure: nothing was sent, a later try may work."""


class Bounced(GatewayError):
    """A permanent failure: the address does not take mail, no retry will help."""


class FlakyGateway:
    """An in-process stand-in for an email provider's API (see the module docstring)."""

    def __init__(
        self,
        *,
        seed: int,
        failure_rate: float = 0.3,
        slow_rate: float = 0.1,
        slow_ms: int = 400,
        outbox: Path | None = None,
    ) -> None:
        self.seed = seed
        self.failure_rate = failure_rate
        self.slow_rate = slow_rate
        self.slow_ms = slow_ms
        self.outbox = outbox
        self._sent: dict[str, Receipt] = {}
        self._tries: Counter[str] = Counter()
        #: How many emails went out (a repeated dedup id counts again).
        self.sent = 0
        #: Emails that went out although their dedup id had gone out before.
        self.duplicates = 0
        if outbox is not None and outbox.exists():  # what earlier runs sent stays sent
            for line in outbox.read_text().splitlines():
                record = json.loads(line)
                self._sent[record["dedup_id"]] = Receipt(record["dedup_id"], record["gateway_id"])

    def lookup(self, dedup_id: str) -> Receipt | None:
        """The receipt of the email with this dedup id, if it ever went out."""
        return self._sent.get(dedup_id)

    async def send(self, email: Email) -> Receipt:
        """Send ``email``; raises :class:`Unavailable` or :class:`Bounced`, or is slow."""
        self._tries[email.dedup_id] += 1
        rng = random.Random(f"{self.seed}/{email.dedup_id}/{self._tries[email.dedup_id]}")
        await trio.sleep(rng.uniform(0.001, 0.005))  # the round trip to the provider
        if email.to.endswith(".invalid"):
            raise Bounced(f"550 5.1.1 <{email.to}>: mailbox unavailable")
        roll = rng.random()
        if roll < self.failure_rate:
            raise Unavailable("421 4.3.2 service not available, try again later")
        receipt = self._deliver(email, rng)
        if roll < self.failure_rate + self.slow_rate:
            await trio.sleep(self.slow_ms / 1000)  # sent, but the answer is late
        return receipt

    def _deliver(self, email: Email, rng: random.Random) -> Receipt:
        if email.dedup_id in self._sent:
            self.duplicates += 1
        receipt = Receipt(email.dedup_id, f"gw-{rng.getrandbits(48):012x}")
        self._sent[email.dedup_id] = receipt
        self.sent += 1
        if self.outbox is not None:
            with self.outbox.open("a") as f:
                f.write(json.dumps({**asdict(email), "gateway_id": receipt.gateway_id}) + "\n")
        return receipt
