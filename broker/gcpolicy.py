"""Garbage-collector settings for a process that holds millions of long-lived messages.

Queue state never forms reference cycles (messages hold bytes and ints; queues hold
messages), yet CPython's cyclic collector would rescan every live message each time the
heap grows by a quarter: measured here, that doubled the cost of accepting a message.
So the broker pauses the collector while it replays the WAL, freezes what it recovered
(frozen objects are never scanned again but are still freed by reference counting), and
runs with larger generation thresholds afterwards.

Big buffers (a connection's partial frame, a round's replies) are allocated and freed
by the megabyte. glibc's malloc raises its mmap threshold after such a free, so the
next big buffers come from the heap and their memory stays with the process once freed
(measured: a flood of 16 MiB partial frames against a 64 MiB memory budget left the
broker at 155 MiB of RSS; 99 MiB with the threshold fixed). ``tune`` fixes the
threshold at ``MMAP_THRESHOLD``, so buffers that big are mapped and unmapped whole.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: Generation thresholds for the running broker (CPython's default is 700, 10, 10).
THRESHOLDS = (50_000, 20, 100)
#: Allocations from this size on are mapped on their own (glibc's default start value,
#: kept from growing).
MMAP_THRESHOLD = 128 * 1024
#: glibc's mallopt parameter number for it.
_M_MMAP_THRESHOLD = -3


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
    """Apply the running broker's thresholds (and, with glibc, the fixed mmap threshold)."""
    gc.set_threshold(*THRESHOLDS)
    fix_mmap_threshold()


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD``; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
