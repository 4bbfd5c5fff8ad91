"""Garbage-collector settings for a process that holds millions of long-lived messages.

Queue state never forms reference cycles (messages hold bytes and ints; queues hold
messages), yet CPython's cyclic collector would rescan every live message each time the
heap grows by a quarter: measured here, that doubled the cost of accepting a message.
So the broker pauses the collector while it replays the WAL, freezes what it recovered
(frozen objects are never scanned again but are still freed by reference counting), and
runs with larger generation thresholds afterwards.

Every object that survives a young collection is scanned once by a middle-generation
collection whatever the thresholds, so the middle threshold sets only how many go
through at once: the longest pause. At 2 (not CPython's 10) a middle collection takes
what survived the last three young collections (at most 150,000 objects: some 20 ms
here), where 20 let the objects of 10,000 new connections (a million) go through in
one pause of 80 to 130 ms on an idle machine and over a second on a loaded one. The old
threshold is raised to match (1,000 middle collections, the same number of allocations
as 100 at 20), so full collections come no more often than before.
"""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: Generation thresholds for the running broker (CPython's default is 700, 10, 10).
THRESHOLDS = (50_000, 2, 1_000)


@contextmanager
def bulk_load() -> Iterator[None]:
    """Pause the collector for a bulk load, then freeze what was loaded."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def tune() -> None:
    """Apply the running broker's thresholds."""
    gc.set_threshold(*THRESHOLDS)
