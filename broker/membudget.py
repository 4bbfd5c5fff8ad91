"""The broker-wide memory budget (``memory_budget``, SPEC.md §10): what clients can make
the broker hold, counted per connection and in total, and what the broker does near it.

Rules:

1. **What counts.** Per connection (``Account``): its input (bytes read and not yet run:
   whole frames waiting for their round and the start of the next frame) and its replies
   not yet written (rounds waiting for the log or the socket, a held consume's reply or a
   push being written). ``MemoryBudget.used`` is the sum over every connection.
2. **Normal** (``used`` below ``high``, three quarters of the budget): a connection reads
   up to ``RECV_BYTES`` at a time, as ever.
3. **Pressure** (``used`` at ``high`` or more): a connection's share is ``share`` (a
   sixteenth of the budget, at least ``SMALL``); at the budget itself it is ``SMALL``
   (64 KiB). A connection holding more than its share reads nothing until it holds less
   or ``used`` falls (its replies still go out and its whole frames still run): the
   heaviest stop first, small clients read on. Those that read take at most ``SMALL``
   at a time, so the budget is passed by at most that per connection still reading.
4. **Refusal.** Under pressure, a connection in the middle of a frame that would take it
   past its share (what it holds plus the rest of the frame, by the frame's length
   prefix) gets ``MEMORY_LIMIT`` (id nil; details ``limit``, ``length``, ``held``,
   ``budget``) and a clean close, rather than holding its part of a frame while it waits.
5. **Waking.** A connection waiting for room waits for any release (``Account.release``
   and ``close`` set one event while someone waits), then checks again.
"""
from __future__ import annotations

import os
from pathlib import Path

import trio

from protocol import ErrorCode, ProtocolError

__all__ = ["GIB", "SMALL", "Account", "MemoryBudget", "default_budget"]

GIB = 1024 * 1024 * 1024
#: The share of every connection at the budget, and the most one reads at a time under
#: pressure (rule 3).
SMALL = 64 * 1024


def default_budget(physical: int | None = None) -> int:
    """1 GiB, or a quarter of the machine's memory (or of the cgroup's limit) if less."""
    if physical is None:
        physical = _physical_memory()
    return min(GIB, physical // 4) if physical > 0 else GIB


def _physical_memory() -> int:
    total = 0
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total == 0 or 0 < int(text) < total):
            total = int(text)
    return total


class MemoryBudget:
    """The budget and what every connection holds against it (module docs)."""

    __slots__ = ("limit", "high", "share", "used", "peak", "refused", "paused", "_relief", "_waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.high = limit * 3 // 4
        self.share = max(SMALL, limit // 16)
        #: Bytes held now, the most held since start, connections refused (rule 4) and
        #: times a connection waited for room (rule 3).
        self.used = 0
        self.peak = 0
        self.refused = 0
        self.paused = 0
        self._relief: trio.Event | None = None
        self._waiting = 0

    def account(self) -> Account:
        """A new connection's account."""
        return Account(self)

    def cap(self) -> int:
        """What one connection may hold and still read now (rule 3); -1: no cap."""
        used = self.used
        if used < self.high:
            return -1
        return self.share if used < self.limit else SMALL

    def _changed(self, delta: int) -> None:
        used = self.used = self.used + delta
        if used > self.peak:
            self.peak = used
        if delta < 0 and self._relief is not None:
            self._relief.set()
            self._relief = None

    async def wait_for_room(self, account: Account) -> None:
        """Return once ``account`` may read (rule 3); at once when it may now."""
        counted = False
        while True:
            cap = self.cap()
            if cap < 0 or account.held <= cap:
                return
            if not counted:
                self.paused += 1
                counted = True
            if self._relief is None:
                self._relief = trio.Event()
            await self._relief.wait()

    def read_size(self, most: int) -> int:
        """How much one read may bring now (rule 3)."""
        return most if self.used < self.high else min(most, SMALL)

    def check_frame(self, account: Account, missing: int) -> None:
        """Rule 4: raise ``MEMORY_LIMIT`` if the frame that ``account``'s connection is in
        the middle of, ``missing`` bytes from whole, would take it past its share."""
        cap = self.cap()
        if cap < 0 or missing <= 0:
            return
        held = account.held
        if held + missing <= cap:
            return
        self.refused += 1
        raise ProtocolError(
            ErrorCode.MEMORY_LIMIT,
            f"the broker is near its memory budget of {self.limit} bytes and this frame would take the "
            f"connection past its share of {cap} bytes; closing the connection (try again later)",
            details={"limit": cap, "length": held + missing, "held": held, "budget": self.limit})


class Account:
    """What one connection holds (rule 1): ``input`` and ``replies``, in bytes."""

    __slots__ = ("budget", "input", "replies")

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.input = 0
        self.replies = 0

    @property
    def held(self) -> int:
        return self.input + self.replies

    def set_input(self, nbytes: int) -> None:
        """The connection now holds ``nbytes`` of input."""
        delta = nbytes - self.input
        if delta:
            self.input = nbytes
            self.budget._changed(delta)

    def hold(self, nbytes: int) -> None:
        """Replies of ``nbytes`` wait to be written."""
        self.replies += nbytes
        self.budget._changed(nbytes)

    def release(self, nbytes: int) -> None:
        """Replies of ``nbytes`` were written (or dropped)."""
        self.replies -= nbytes
        self.budget._changed(-nbytes)

    def close(self) -> None:
        """The connection ended: what it held is free."""
        held = self.held
        self.input = self.replies = 0
        if held:
            self.budget._changed(-held)
