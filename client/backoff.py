"""The reconnect policy and the dedup ids of retried publishes, shared by both clients.

No I/O and no event loop here: the async client's reconnect task
(:mod:`client.reconnect`, whose docstring says what a reconnect does) and the blocking
client (:mod:`client.sync`) each apply them their own way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from protocol import Op

#: The ops whose typed calls are retried after a lost connection, because every message
#: they carry has a dedup id (one is given to each message without): the index of the
#: dedup id in their entries (SPEC.md §5.7, §5.23).
RETRIED_BY_DEDUP_ID = {Op.PUBLISH.value: 5, Op.TOPIC_PUBLISH.value: 3}
_DEDUP = RETRIED_BY_DEDUP_ID[Op.PUBLISH.value]
#: Per dedup id index, the Nones that pad an entry of n elements up to it.
_PADDING = {at: [[None] * (at - n) for n in range(at + 1)] for at in RETRIED_BY_DEDUP_ID.values()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconnect:
    """How a client reconnects (:mod:`client.reconnect` for the async client,
    :mod:`client.sync` for the blocking one). ``Reconnect()`` is what ``reconnect=True``
    means."""

    #: Seconds before the first attempt after a loss (0.001..3600).
    initial_delay_s: float = 0.1
    #: Longest delay between attempts (at least ``initial_delay_s``, at most 3600).
    max_delay_s: float = 10.0
    #: Growth of the delay per failed attempt (1..10).
    multiplier: float = 2.0
    #: Fraction (0..1) by which each delay is shortened at random.
    jitter: float = 0.5
    #: Failed attempts in a row before giving up (``None``: never).
    max_attempts: int | None = None
    #: Give publishes (to queues and topics) dedup ids and send them again after a reconnect.
    retry_publishes: bool = True
    #: Seconds after its first send within which a publish may be retried (0..3600).
    publish_retry_s: float = 120.0

    def __post_init__(self) -> None:
        _check("initial_delay_s", self.initial_delay_s, 0.001, 3600)
        _check("max_delay_s", self.max_delay_s, self.initial_delay_s, 3600)
        _check("multiplier", self.multiplier, 1, 10)
        _check("jitter", self.jitter, 0, 1)
        _check("publish_retry_s", self.publish_retry_s, 0, 3600)
        if self.max_attempts is not None and (type(self.max_attempts) is not int or self.max_attempts < 1):
            raise ValueError(f"max_attempts must be an int >= 1 or None, not {self.max_attempts!r}")

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds to wait before attempt ``attempt`` (0: the first after the loss), with
        ``draw`` in [0, 1) picking the jitter."""
        base = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** min(attempt, 64))
        return base * (1 - self.jitter * draw)


def _check(name: str, value: float, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}, not {value!r}")


class DedupIds:
    """Dedup ids unique to this object: 8 random bytes, then an 8-byte counter."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(8)
        self._count = 0

    def __call__(self) -> bytes:
        self._count += 1
        return self._prefix + self._count.to_bytes(8, "big")

    def fill(self, entries: list[list[Any]], at: int = _DEDUP) -> None:
        """Give each entry without a dedup id a new one (in place); ``at`` is the dedup
        id's index in an entry (a ``publish``'s unless given)."""
        padding = _PADDING[at]
        for entry in entries:
            n = len(entry)
            if n > at:
                if entry[at] is None:
                    entry[at] = self()
            else:
                entry.extend(padding[n])
                entry.append(self())

    def prepare_retry(self, op: str, args: dict[str, Any]) -> bool:
        """Whether a typed request of ``op`` is retried after a lost connection: only an
        op of ``RETRIED_BY_DEDUP_ID``, whose messages then all carry a dedup id (those
        without one get a new one here, in place, before the first send)."""
        at = RETRIED_BY_DEDUP_ID.get(op)
        if at is None:
            return False
        self.fill(args["messages"], at)
        return True


__all__ = ["RETRIED_BY_DEDUP_ID", "DedupIds", "Reconnect"]
