"""The reconnect policy and the dedup ids of retried publishes, shared by both clients.

No I/O and no event loop here: the async client's reconnect task
(:mod:`client.reconnect`, whose docstring says what a reconnect does) and the blocking
client (:mod:`client.sync`) each apply them their own way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

#: Index of the dedup id in a publish entry (SPEC.md §5.7).
_DEDUP = 5
_PADDING = [[None] * (_DEDUP - n) for n in range(_DEDUP + 1)]


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
    #: Give publishes dedup ids and send them again after a reconnect.
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

    def fill(self, entries: list[list[Any]]) -> None:
        """Give each publish entry without a dedup id a new one (in place)."""
        for entry in entries:
            n = len(entry)
            if n > _DEDUP:
                if entry[_DEDUP] is None:
                    entry[_DEDUP] = self()
            else:
                entry.extend(_PADDING[n])
                entry.append(self())


__all__ = ["DedupIds", "Reconnect"]
