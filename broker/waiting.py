"""Held long-poll consumes: one line per queue, in arrival order, woken a few at a time.

A consume that finds nothing and may wait (``wait_ms``) takes a place at the end of its
queue's line when its request runs (``enqueue``), so the line keeps arrival order, and a
task of its connection waits there (``hold``). Rules:

1. A change that makes k messages of a queue ready wakes the first k waiters still in its
   line (``wake``, the live path's wake-up callback), not all of them; deleting the queue
   wakes every one (each is then answered ``QUEUE_NOT_FOUND``).
2. A woken waiter looks again through ``Live.retry``. If it took nothing (another
   consumer was first) it goes back to the front of the line; if it took its messages and
   more are ready than woken waiters still to look, it passes the turn to the next one.
3. A waiter whose wait ends, or whose connection goes away, leaves the line; entries left
   behind are skipped by wake-ups and cleaned once they outnumber the waiters.
4. While the broker drains for shutdown, every held consume looks once more and answers.
5. A consume whose reply cannot be sent (its connection is gone) releases the messages
   it leased at once, as if they had never been leased (no attempt counted), rather than
   leaving them leased for the whole lease.
6. Subscriptions (``subscriptions.py``) wait in the same lines, beside held consumes.
7. A consume or subscription of a queue group (``queue_groups.py``) waits in the line of
   each of its queues, with one event, and leaves the others once one wakes it; one of a
   ``prefix`` group waits in its prefix's line, which a change to any queue whose name
   starts with the prefix wakes like a queue's own line.
"""
from __future__ import annotations

from collections import deque

import trio

from protocol import Encoder, Request

from .commands import Session, Wait
from .queue_groups import QueueGroup
from .live import Live, RoundOut
from .replies import Replies, Round
from .state import WAKE_ALL
from .wal import LogFailedError


class Waiter:
    """One held consume's (or subscription's) place in a line."""

    __slots__ = ("event", "gone")

    def __init__(self, event: trio.Event | None = None) -> None:
        self.event = trio.Event() if event is None else event
        #: It left the line (woken, timed out or cancelled): a wake-up skips it.
        self.gone = False


class Line:
    """The held consumes of one queue (or of a prefix's queues), in arrival order (rule 3
    for what it keeps)."""

    __slots__ = ("name", "prefix", "_line", "_waiting", "woken")

    def __init__(self, name: str = "", prefix: bool = False) -> None:
        self.name = name
        self.prefix = prefix
        self._line: deque[Waiter] = deque()
        self._waiting = 0
        #: Waiters woken that have not looked at the queue yet.
        self.woken = 0

    def __len__(self) -> int:
        return len(self._line)

    @property
    def waiting(self) -> int:
        """Waiters in the line that are still waiting."""
        return self._waiting

    def add(self, waiter: Waiter, first: bool) -> None:
        if first:
            self._line.appendleft(waiter)
        else:
            self._line.append(waiter)
        self._waiting += 1

    def leave(self, waiter: Waiter) -> None:
        """``waiter`` stops waiting without having been woken."""
        waiter.gone = True
        self._waiting -= 1
        if len(self._line) > 2 * self._waiting + 64:
            self._line = deque(w for w in self._line if not w.gone)

    def wake(self, count: int) -> None:
        """Wake the first ``count`` waiters that are still waiting."""
        line = self._line
        while count > 0 and line:
            waiter = line.popleft()
            if not waiter.gone:
                waiter.gone = True
                waiter.event.set()
                self._waiting -= 1
                self.woken += 1
                count -= 1

    def looked(self) -> None:
        """A woken waiter has looked at the queue."""
        self.woken -= 1


Place = tuple[Line, Waiter]
#: Prefix lines kept with nobody in them, at most (the others are dropped).
IDLE_PREFIX_LINES = 256


class Holds:
    """Every held consume of one broker (see the module docs)."""

    def __init__(self) -> None:
        self.live: Live | None = None
        self.draining = False
        self._lines: dict[str, Line] = {}
        self._prefix_lines: dict[str, Line] = {}

    def line(self, queue: str) -> Line | None:
        return self._lines.get(queue)

    def enqueue(self, queue: str, first: bool = False, event: trio.Event | None = None) -> Place:
        """A new place in ``queue``'s line: at its end, or at its front for a waiter that
        was woken and found nothing; woken through ``event`` if given."""
        line = self._lines.get(queue)
        if line is None:
            line = self._lines[queue] = Line(queue)
        waiter = Waiter(event)
        line.add(waiter, first)
        return line, waiter

    def places(self, queue: str, group: QueueGroup | None, first: bool = False,
               event: trio.Event | None = None) -> list[Place]:
        """New places of a consume or subscription of ``queue``, or of ``group`` (rule 7),
        all woken through one event (``event`` if given)."""
        if group is None:
            return [self.enqueue(queue, first, event)]
        event = trio.Event() if event is None else event
        if group.prefix is None:
            return [self.enqueue(name, first, event) for name in group.queues]
        lines = self._prefix_lines
        line = lines.get(group.prefix)
        if line is None:
            if len(lines) >= IDLE_PREFIX_LINES:
                for name in [n for n, ln in lines.items() if not ln.waiting and not ln.woken]:
                    del lines[name]
            line = lines[group.prefix] = Line(group.prefix, prefix=True)
        waiter = Waiter(event)
        line.add(waiter, first)
        return [(line, waiter)]

    def wake(self, queues: dict[str, int]) -> None:
        """Rule 1: for each queue, how many messages became ready (``WAKE_ALL``: it is gone)."""
        lines = self._lines
        if lines:
            for name, count in queues.items():
                line = lines.get(name)
                if line is not None:
                    line.wake(count)
                    if count >= WAKE_ALL:
                        del lines[name]
        if self._prefix_lines:
            for prefix, line in self._prefix_lines.items():
                if line.waiting:
                    matched = sum(count for name, count in queues.items() if name.startswith(prefix))
                    if matched:
                        line.wake(min(matched, WAKE_ALL))

    def drain(self) -> None:
        """Rule 4."""
        self.draining = True
        for line in (*self._lines.values(), *self._prefix_lines.values()):
            line.wake(WAKE_ALL)
        self._lines.clear()
        self._prefix_lines.clear()

    async def hold(self, session: Session, req: Request, wait: Wait, replies: Replies,
                   encoder: Encoder, places: list[Place]) -> None:
        """Answer a held consume once it takes messages or its wait ends; it counts in
        ``session.waiters`` until then (the caller counted it in)."""
        live = self.live
        assert live is not None
        deadline = trio.current_time() + wait.wait_ms / 1000
        out = RoundOut(encoder)
        try:
            while True:
                try:
                    if not self.draining:
                        with trio.move_on_at(deadline):
                            await places[0][1].event.wait()
                finally:
                    woke = left(places)  # timed out, draining or cancelled: none woke it
                leased = live.retry(session, req, out,
                                    final=self.draining or trio.current_time() >= deadline)
                for line in woke:
                    line.looked()
                if leased is not None:
                    break
                # Looked, and in line again with no checkpoint in between: no wake-up is missed.
                places = self.places(wait.queue, wait.group, first=bool(woke))
            for line in woke:
                self._pass_on(line)
            try:  # as for every reply: only once the log covers what it reflects
                lsn = live.durable_lsn()
            except LogFailedError as exc:
                replies.fail(out.out, out.answered, exc)
                lsn, out.answered = 0, []
            try:
                await replies.deliver(Round(out.out, out.answered, lsn))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                for queue, ids in leased:  # rule 5: nobody got them
                    live.release(queue, ids, delivered=False)
        finally:
            session.waiters -= 1

    def _pass_on(self, line: Line) -> None:
        """Rule 2: the next waiter's turn, if more are ready than woken waiters still to look."""
        assert self.live is not None
        queues = self.live.state.queues
        if line.prefix:
            ready = sum(q.ready for name, q in queues.items() if name.startswith(line.name))
        else:
            held = queues.get(line.name)
            ready = 0 if held is None else held.ready
        if ready > line.woken and line.waiting:
            line.wake(1)


def left(places: list[Place]) -> list[Line]:
    """A waiter of ``places`` stops waiting: it leaves the lines that did not wake it;
    returns those that did (rule 7)."""
    woke: list[Line] = []
    for line, waiter in places:
        if waiter.gone:
            woke.append(line)
        else:
            line.leave(waiter)
    return woke
