"""The heap trimmer (broker/memtrim.py): at most once per interval, always after the last call."""
from __future__ import annotations

import threading

import trio
import trio.testing

from broker.memtrim import Trimmer, malloc_trim


async def test_it_trims_at_once_then_at_most_once_per_interval(autojump_clock: trio.testing.MockClock) -> None:
    calls: list[float] = []
    trimmer = Trimmer(interval=1.0, trim=lambda: calls.append(trio.current_time()), in_thread=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trimmer.run)
        start = trio.current_time()
        trimmer.freed()
        await trio.testing.wait_all_tasks_blocked()
        assert calls == [start]
        for _ in range(250):  # closes every 10 ms for 2.5 s: one trim a second, then one after the last
            trimmer.freed()
            await trio.sleep(0.01)
        await trio.sleep(5)
        assert [round(t - start, 2) for t in calls] == [0.0, 1.0, 2.0, 3.0]
        await trio.sleep(5)  # nothing freed since: no more trims
        assert trimmer.trims == 4
        nursery.cancel_scope.cancel()


async def test_nothing_freed_means_no_trim(autojump_clock: trio.testing.MockClock) -> None:
    trimmer = Trimmer(trim=lambda: 1 / 0, in_thread=False)
    with trio.move_on_after(60):
        await trimmer.run()
    assert trimmer.trims == 0


async def test_the_trim_runs_in_a_worker_thread() -> None:
    threads: list[threading.Thread] = []
    trimmer = Trimmer(trim=lambda: threads.append(threading.current_thread()))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trimmer.run)
        trimmer.freed()
        with trio.fail_after(10):  # a real thread: a bounded wait
            while not trimmer.trims:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert threads and threads[0] is not threading.main_thread()


def test_the_c_library_has_malloc_trim() -> None:
    """This build machine's glibc (elsewhere, None: the broker then never trims)."""
    trim = malloc_trim()
    assert trim is not None
    assert trim() in (0, 1)


def test_the_mmap_threshold_is_fixed_where_glibc_has_mallopt() -> None:
    import ctypes
    import platform

    from broker.memtrim import MMAP_THRESHOLD, fix_mmap_threshold

    has_glibc = platform.libc_ver()[0] == "glibc" and hasattr(ctypes.CDLL(None), "mallopt")
    assert fix_mmap_threshold(MMAP_THRESHOLD) is has_glibc
