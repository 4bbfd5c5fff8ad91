"""Sending a connection's replies, round by round, once the log covers them.

A connection runs its requests in rounds (``Broker._run_rounds``). Each round
ends with the replies it produced and the LSN the log must cover before any of them
may go out. ``Replies.deliver`` waits for that and sends them in one write.

Rules:
1. Rounds are sent in the order they were run, each after the log covers its LSN;
   within a round, replies keep request order. (Replies to held consumes go out on
   their own, through ``write``, when they are ready.)
2. A round whose sync runs outside the event loop (``GroupCommitter.syncs_elsewhere``)
   is handed over to ``run``, the connection's reply task, so the connection can run
   its next round meanwhile; so is every round after one still handed over (rule 1).
   Other rounds are delivered by the connection task itself: no hop between tasks
   where there is nothing to overlap.
3. At most one round waits for ``run`` beside the one it is delivering: ``send``
   blocks until ``run`` takes it. That bounds what a connection holds in replies.
   ``run`` starts in ``nursery`` when the first round is handed over (a connection that
   never hands one over, an idle one, costs no task and no channel).
4. A log that fails turns each reply of the round that waited on it into a
   STORAGE_ERROR (the request's outcome is unknown) and asks for the log's recovery.
5. Every reply byte counts against the memory budget (``membudget``, rule 1) from the
   moment its round is given to ``send`` (or ``deliver``, or its frame to ``write``)
   until it is written: ``account.hold``, then ``account.release``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from protocol import Encoder

from .live import log_failed
from .membudget import Account
from .wal import GroupCommitter, LogFailedError

__all__ = ["Replies", "Round"]


@dataclass(frozen=True, slots=True)
class Round:
    """The replies of one round: ``out`` in request order; ``answered`` holds (index in
    ``out``, request id) of each reply that may only go out once ``lsn`` is durable.
    ``sent``, if any, is called once they are written (the request latency metric)."""

    out: list[bytes]
    answered: list[tuple[int, int]]
    lsn: int
    sent: Callable[[], None] | None = None


class Replies:
    """The reply side of one connection (see the module docstring)."""

    __slots__ = ("_stream", "_account", "_write_lock", "_committer", "_enc", "_on_log_failure", "nursery",
                 "_send", "_receive", "_closed", "_pending", "rounds", "_sent", "_sent_event")

    def __init__(self, stream: trio.abc.SendStream, committer: GroupCommitter, enc: Encoder,
                 on_log_failure: Callable[[], None], account: Account) -> None:
        self._stream = stream
        self._account = account
        #: Held while a write is under way; made by the write that needs it and dropped
        #: once free (an idle connection keeps none).
        self._write_lock: trio.Lock | None = None
        self._committer = committer
        self._enc = enc
        self._on_log_failure = on_log_failure
        #: Where ``run`` starts when first needed (rule 3); without one the owner runs it.
        self.nursery: trio.Nursery | None = None
        self._send: trio.MemorySendChannel[Round] | None = None
        self._receive: trio.MemoryReceiveChannel[Round] | None = None
        self._closed = False
        #: Rounds handed over and not yet sent.
        self._pending = 0
        #: Rounds given to ``send`` so far, and rounds written so far (rule 1: in order).
        self.rounds = 0
        self._sent = 0
        #: Set when a round is written; made only while someone waits (``sent_through``).
        self._sent_event: trio.Event | None = None

    async def send(self, round_: Round) -> None:
        """Send ``round_`` after every earlier one, once the log covers it (rules 1-2)."""
        self.rounds += 1
        nbytes = sum(map(len, round_.out))
        self._account.hold(nbytes)
        if self._pending or (round_.answered and self._committer.syncs_elsewhere(round_.lsn)):
            self._committer.take_off()  # the sync starts before this connection reads on
            self._pending += 1
            if self._send is None and self.nursery is not None:
                self.nursery.start_soon(self.run)
            try:
                await self._channel().send(round_)
            except BaseException:
                self._account.release(nbytes)  # never handed over
                raise
        else:
            await self.deliver(round_, nbytes)
            self._count_sent()

    @property
    def unsent(self) -> bool:
        """Whether a round given to ``send`` has not been written yet."""
        return self._sent < self.rounds

    async def sent_through(self, rounds: int) -> None:
        """Wait until the first ``rounds`` rounds given to ``send`` have been written."""
        while self._sent < rounds:
            if self._sent_event is None:
                self._sent_event = trio.Event()
            await self._sent_event.wait()

    def _count_sent(self) -> None:
        self._sent += 1
        if self._sent_event is not None:
            self._sent_event.set()
            self._sent_event = None

    async def deliver(self, round_: Round, held: int = -1) -> None:
        """Wait until the log covers ``round_``, then write its replies. ``held``: the
        bytes ``send`` counted for it (-1: none yet, so they are counted here)."""
        out = round_.out
        account = self._account
        if held < 0:
            held = sum(map(len, out))
            account.hold(held)
        try:
            if round_.answered:
                try:
                    await self._committer.wait_durable(round_.lsn)
                except LogFailedError as exc:
                    self.fail(out, round_.answered, exc)
            if out:
                await self._write(b"".join(out))
        finally:
            account.release(held)
        if round_.sent is not None:
            round_.sent()

    def fail(self, out: list[bytes], answered: list[tuple[int, int]], exc: LogFailedError) -> None:
        """Rule 4: each reply in ``answered`` becomes STORAGE_ERROR; recovery is asked for."""
        self._on_log_failure()
        error = self._enc.error
        for index, rid in answered:
            failed = log_failed(exc, rid)
            out[index] = error(rid, failed.code, failed.message, failed.details)

    async def write(self, data: bytes) -> None:
        """Write whole frames (a held consume's reply, a push), never interleaved with
        another write; counted against the memory budget until written (rule 5)."""
        account = self._account
        account.hold(len(data))
        try:
            await self._write(data)
        finally:
            account.release(len(data))

    async def _write(self, data: bytes) -> None:
        """Write whole frames, never interleaved with another write. A free lock is
        taken without a scheduler pass: the reply goes out that much sooner."""
        lock = self._write_lock
        if lock is None:
            lock = self._write_lock = trio.Lock()
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            await self._stream.send_all(data)
        finally:
            lock.release()
            if not lock.locked() and self._write_lock is lock:  # nobody was handed it
                self._write_lock = None

    def _channel(self) -> trio.MemorySendChannel[Round]:
        """The channel to ``run``, made when first needed."""
        if self._send is None:
            self._send, self._receive = trio.open_memory_channel[Round](0)
            if self._closed:
                self._send.close()
        return self._send

    async def run(self) -> None:
        """The connection's reply task: deliver handed-over rounds until ``close``."""
        self._channel()
        assert self._receive is not None
        async with self._receive:
            async for round_ in self._receive:
                await self.deliver(round_, sum(map(len, round_.out)))
                self._pending -= 1
                self._count_sent()

    def close(self) -> None:
        """No more rounds: ``run`` returns once it has sent those handed over."""
        self._closed = True
        if self._send is not None:
            self._send.close()
