"""Give the C heap's free memory back to the OS after connections close.

Every connection allocates read and reply buffers and protocol objects; when many
connections come and go (a reconnect storm, hostile clients, a fuzzer), glibc keeps the
freed chunks inside its heap, and the broker's RSS stays near its peak long after the
connections are gone. Measured with ``python -m tools.fuzz --inputs 100000 --seed 3``
(8,900 short connections): RSS 35.2 MiB at the start, 42.2 MiB at the end without
trimming; 35.7 and 34.8 MiB with it (peak 36.4). ``malloc_trim(0)`` releases every
free page of the heap, wherever it lies.

Rule: after a connection closes, the broker trims at once unless it trimmed within the
last ``TRIM_INTERVAL_S``; then it trims at the end of that interval. So it trims at most
once per interval, and always after the last close. A trim runs in a worker thread
(ctypes lets go of the interpreter lock); on the 2-core build machine it took about
20 ms on a 1 GiB heap with 500,000 free chunks. Without glibc (another libc, another
OS) nothing is done.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable

import trio

#: Seconds between two trims, at least.
TRIM_INTERVAL_S = 1.0
#: Allocations from this size on are mapped on their own, and unmapped when freed.
MMAP_THRESHOLD = 2 * 1024 * 1024
#: glibc's ``mallopt`` parameter number for the mmap threshold.
_M_MMAP_THRESHOLD = -3


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Keep buffers of ``threshold`` bytes and more out of the heap (glibc only; False
    elsewhere). glibc raises its mmap threshold each time a mapped chunk is freed, up to
    32 MiB, after which a hostile client's big partial frames come from the heap and stay
    in it once freed. Fixed at 2 MiB: a connection's reads (1 MiB at most) and small
    frames stay in the heap as before, while the frames that the memory budget exists
    for are mapped and given back whole."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class Trimmer:
    """Trims the heap soon after ``freed`` is called, at most once per ``interval`` s."""

    def __init__(self, interval: float = TRIM_INTERVAL_S,
                 trim: Callable[[], object] | None = None, *, in_thread: bool = True) -> None:
        self.interval = interval
        self._trim = trim if trim is not None else malloc_trim()
        self._in_thread = in_thread
        self._wanted = trio.Event()
        #: Trims done so far.
        self.trims = 0

    def freed(self) -> None:
        """Memory was freed in bulk (a connection closed): trim soon."""
        self._wanted.set()

    async def run(self) -> None:
        """Trim when asked, then wait out the interval; until cancelled."""
        if self._trim is None:
            return
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            if self._in_thread:
                # ctypes lets go of the interpreter lock for the call: requests are served meanwhile.
                await trio.to_thread.run_sync(self._trim)
            else:
                self._trim()
            self.trims += 1
            await trio.sleep(self.interval)
