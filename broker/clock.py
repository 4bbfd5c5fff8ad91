"""Wall-clock milliseconds that advance with trio's clock.

Deadlines in WAL records are wall-clock ms (they must mean something after a
restart), but the broker reads time only through ``trio.current_time()``, so tests
drive leases, delays and expiries with ``trio.testing.MockClock``.
"""
from __future__ import annotations

import math
import time

import trio


class Clock:
    """Create inside ``trio.run``: anchors wall time to trio's clock once."""

    def __init__(self, wall_ms: int | None = None) -> None:
        self._base_ms = int(time.time() * 1000) if wall_ms is None else wall_ms
        self._base_t = trio.current_time()

    def now_ms(self) -> int:
        return math.floor(self._base_ms + (trio.current_time() - self._base_t) * 1000)

    def trio_time(self, at_ms: int) -> float:
        """The trio time at which ``now_ms()`` first reads ``at_ms``."""
        return self._base_t + (at_ms - self._base_ms + 0.5) / 1000
