"""The trio server: connections, the live path, long-poll waiters and timers.

The live path for every request: decode -> ``commands.dispatch`` (validate, pick
mutations) -> append each mutation to the WAL -> apply it to the state -> wait until
the WAL policy covers the last record -> reply. A connection runs its requests in
rounds (at most ``ROUND_REQUESTS``); the replies of a round go out in one write, in
round order (``replies.Replies``). While a big round's fdatasync runs in the sync
helper, the connection already reads and runs its next round.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import msgpack
import trio

from protocol import NEED_DATA, Connection, Encoder, ErrorCode, Op, ProtocolError, Request

from . import gcpolicy, recovery
from .clock import Clock
from .commands import (
    STATELESS_OPS,
    Context,
    Outcome,
    Session,
    Wait,
    count_calls,
    dispatch,
    plain_single_publish,
)
from .config import RECV_BYTES, ROUND_REQUESTS, BrokerConfig
from .checkpointer import Checkpointer
from .mutations import Mutation, MutationType, Publish, Recover, plain_publish
from .queues import Queue
from .replies import Replies, Round
from .state import BrokerState, ack_cost
from .wal import FileIO, FsyncPolicy, GroupCommitter, SegmentedLog, StorageError, encode_record
from .wal.synchelper import SyncHelper

log = logging.getLogger("lockgate.server")

_PUBLISH = int(MutationType.PUBLISH)
_ACK = int(MutationType.ACK)
_PUBLISH_OP = str(Op.PUBLISH)

#: Log room kept beyond the acks of the live messages, for the records that are logged
#: even when the disk is full: lease expiries, promotions of delayed messages and the
#: start-up RECOVER record.
RESERVE_MARGIN = 256 * 1024
#: Further room a publish must leave, so that consumers can still lease (and nack)
#: what was published once publishes are refused.
PUBLISH_HEADROOM = 64 * 1024
#: Bytes a publish record takes beyond its bodies, at most: record header, fields,
#: the queue name's header (not the name), and per body its bin header.
_PUBLISH_OVERHEAD = 48
_PER_BODY = 5

#: How long a graceful shutdown lets connections finish what they have read.
SHUTDOWN_GRACE_S = 10.0


class Broker:
    """One broker process: state, WAL and listeners. Run with ``await broker.serve()``."""

    def __init__(self, config: BrokerConfig, *, io: FileIO | None = None) -> None:
        self.config = config
        self._io = io
        self.state = BrokerState()
        self.addr = ""
        self.replay_report: Any = None
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._log: SegmentedLog | None = None
        self._committer: GroupCommitter | None = None
        self._clock: Clock | None = None
        self._ready_events: dict[str, trio.Event] = {}
        self._timer_poke: trio.Event | None = None
        self._timer_target = math.inf
        self._stopping: trio.Event | None = None
        self._draining = False
        #: Cancel scopes of connections waiting for their next read (cancelled to drain).
        self._idle: set[trio.CancelScope] = set()
        self._snapshot_lsn = 0
        self._checkpointer: Checkpointer | None = None
        #: Fields of a folded publish record not yet appended (see ``_commit``).
        self._pending: list[Any] | None = None
        #: Log bytes admitted by ``_admit`` that may not be appended yet (folded).
        self._unflushed = 0
        #: The disk was found full: logged once, until room returns.
        self._disk_full = False
        #: Open client connections.
        self._connections = 0

    @property
    def wal_dir(self) -> Any:
        return self.config.data_dir / "wal"

    # -- start and stop ---------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild the state from the data directory and open the log for appending."""
        recovered = recovery.recover(self.wal_dir, self._io, mode=self.config.recover)
        self.state = recovered.state
        self.replay_report = recovered.replay
        self._snapshot_lsn = recovered.snapshot_lsn
        self._log = SegmentedLog.open(self.wal_dir, segment_bytes=self.config.segment_bytes, io=self._io)

    def shutdown(self) -> None:
        """Begin a graceful shutdown: stop accepting, finish in-flight requests, answer
        held consumes, fsync, checkpoint; ``serve`` then returns."""
        if self._stopping is not None:
            self._stopping.set()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Recover, listen and serve until ``shutdown()`` (or cancellation).

        ``task_status.started`` gets "host:port".
        """
        self._clock = Clock()
        self._stopping = trio.Event()
        gcpolicy.tune()
        self.recover()
        assert self._log is not None
        policy = FsyncPolicy(self.config.fsync)
        # Big sync rounds go to a helper process. A FileIO of the caller's own (one that
        # counts or fails calls) sees every fdatasync instead.
        helper = SyncHelper.start() if policy is FsyncPolicy.ALWAYS and self._io is None else None
        self._committer = GroupCommitter(
            self._log, policy, interval_ms=self.config.fsync_interval_ms, helper=helper)
        self._checkpointer = Checkpointer(
            self.state, self._log, self._committer, str(self.wal_dir),
            self._io if self._io is not None else FileIO(),
            min_bytes=self.config.checkpoint_bytes, snapshot_lsn=self._snapshot_lsn,
            reserve=self._log_reserve)
        clean = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._committer.run)
                if any(q.leased for q in self.state.queues.values()):
                    self._commit([Recover(self._clock.now_ms())])
                    await self._committer.wait_durable(self._durable_lsn())
                nursery.start_soon(self._timer_loop)
                await nursery.start(self._checkpointer.run)
                async with trio.open_nursery() as connections:
                    listening = trio.CancelScope()
                    listeners = await connections.start(self._listen, listening, connections)
                    host, port = listeners[0].socket.getsockname()[:2]
                    self.addr = f"{host}:{port}"
                    task_status.started(self.addr)
                    await self._stopping.wait()
                    log.info("shutting down: no new connections; finishing in-flight requests")
                    listening.cancel()
                    self._drain(connections)
                await self._checkpointer.stop()
                try:
                    await self._committer.aclose()
                    self._checkpointer.checkpoint_inline()
                    clean = True
                except StorageError:
                    log.exception("the log has failed: no final checkpoint; the next start replays it")
                except OSError as exc:  # e.g. no room for the snapshot: the log is whole
                    log.error("no final checkpoint (%s); the next start replays the log", exc)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    if not clean:
                        await self._committer.aclose()
                finally:
                    self._log.close()
                    if helper is not None:
                        helper.close()
            log.info("stopped%s", " cleanly" if clean else "")

    async def _listen(self, scope: trio.CancelScope, connections: trio.Nursery,
                      *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await trio.serve_tcp(self._handle_connection, self.config.port, host=self.config.host,
                                 handler_nursery=connections, task_status=task_status)

    def _drain(self, connections: trio.Nursery) -> None:
        """Let connections finish what they have read, then close; bounded by a grace period."""
        self._draining = True
        for scope in list(self._idle):
            scope.cancel()
        for event in self._ready_events.values():
            event.set()
        self._ready_events.clear()
        connections.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_S

    # -- the live path ----------------------------------------------------------------

    def _commit(self, mutations: tuple[Mutation, ...] | list[Mutation]) -> None:
        """Log each mutation, then apply it.

        Plain publishes to one queue with consecutive ids are folded into one pending
        WAL record (the same state as separate records, as ``fold_records`` relies on);
        ``_durable_lsn`` writes it out. Raises StorageError, having applied nothing
        more, once the WAL has failed.
        """
        assert self._log is not None
        append, pack, apply = self._log.append, self._pack, self.state.apply_fields
        for m in mutations:
            fields = m.fields()
            if m.TYPE == _PUBLISH and fields[4] is None and fields[5] is None \
                    and fields[6] is None:
                pending = self._pending
                if pending is not None and pending[0] == fields[0] \
                        and pending[1] + len(pending[3]) == fields[1]:
                    pending[3] += fields[3]
                else:
                    self._flush_pending()
                    self._pending = [fields[0], fields[1], fields[2], list(fields[3]), None, None, None]
            else:
                self._flush_pending()
                append(encode_record(m.TYPE, pack(fields)))
            apply(m.TYPE, fields)
        checkpointer = self._checkpointer
        if checkpointer is not None and self._log.appended_lsn >= checkpointer.check_at:
            checkpointer.poke()
        woken = self.state.take_woken()
        if woken and self._ready_events:
            for name in woken:
                event = self._ready_events.pop(name, None)
                if event is not None:
                    event.set()
        nxt = self.state.next_timer()
        if nxt is not None and nxt < self._timer_target and self._timer_poke is not None:
            self._timer_poke.set()

    def _heal_soon(self) -> None:
        """The log has failed: have the checkpointer recover it."""
        if self._checkpointer is not None:
            self._checkpointer.heal_soon()

    def _log_reserve(self) -> int:
        """Log room to keep for what must be logged even on a full disk."""
        return self.state.ack_reserve + RESERVE_MARGIN

    def _admit(self, req: Request, mutations: tuple[Mutation, ...]) -> None:
        """Refuse ``mutations`` with DISK_FULL, before anything is applied, unless the
        log has room reserved for their records plus the acks of every live message
        (theirs included) and ``RESERVE_MARGIN`` (and ``PUBLISH_HEADROOM`` for a
        publish). Acks are always admitted: their room was reserved at publish. Once
        the disk has been found full, publishes are also refused while a checkpoint is
        reclaiming the log or has no room for its snapshot: they would take that room."""
        wal = self._log
        assert wal is not None
        if wal.failed:
            self._heal_soon()
            raise ProtocolError(
                ErrorCode.STORAGE_ERROR,
                f"the log failed and is being recovered ({wal.failure}); this {req.op} was "
                "not applied, retry shortly", request_id=req.id)
        need = 0
        headroom = 0
        for m in mutations:
            t = m.TYPE
            if t == _PUBLISH:
                need += _publish_need(m)  # type: ignore[arg-type]
                headroom = PUBLISH_HEADROOM
            elif t != _ACK:
                need += len(self._pack(m.fields())) + _PUBLISH_OVERHEAD
        if self._disk_full and self._checkpointer is not None:
            self._checkpointer.reclaim()  # acks may have made a checkpoint worth it
        if not need:
            return
        reserve = self._log_reserve()
        wal.reserve_hint = reserve
        total = need + reserve + headroom + self._unflushed
        cp = self._checkpointer
        starved = headroom and cp is not None and (
            cp.starved or (self._disk_full and cp.reclaiming))
        if starved or (total > wal.room and not wal.ensure_room(total)):
            if not self._disk_full:  # from now on every request asks reclaim (above)
                self._disk_full = True
                if self._checkpointer is not None:
                    self._checkpointer.reclaim()
                log.warning("disk full: no room in %s for new work; refusing it with DISK_FULL "
                            "(the acks of live messages keep their reserved room)", self.wal_dir)
            why = ("a checkpoint must reclaim the log first"
                   if starved else f"{need} bytes of log plus {reserve} reserved for acks")
            raise ProtocolError(
                ErrorCode.DISK_FULL,
                f"no room on disk for this {req.op}: {why}; nothing was applied, retry once "
                "space is freed", request_id=req.id, details={"needed": need, "reserved": reserve})
        if self._disk_full and headroom:
            self._disk_full = False
            log.warning("the disk has room again in %s: accepting publishes", self.wal_dir)
        self._unflushed += need

    def _flush_pending(self) -> None:
        self._unflushed = 0
        if self._pending is not None:
            fields, self._pending = self._pending, None
            assert self._log is not None
            self._log.append(encode_record(_PUBLISH, self._pack(fields)))

    def _durable_lsn(self) -> int:
        """The LSN a reply must wait for: everything applied so far, folded records
        written out. Call it before every await, so no fold is pending across one."""
        self._flush_pending()
        assert self._log is not None
        return self._log.appended_lsn

    def _run_due(self) -> bool:
        """Log and apply lease expiries and elapsed delays; True if there were any."""
        assert self._clock is not None and self._log is not None
        nxt = self.state.next_timer()
        if nxt is None or self._log.failed:  # nothing may change until it is recovered
            return False
        now = self._clock.now_ms()
        if nxt > now:
            return False
        mutations = self.state.due(now)
        if mutations:
            self._commit(mutations)
        return bool(mutations)

    def _run_due_for(self, req: Request) -> bool:
        """``_run_due`` inside a request: a failed WAL becomes its STORAGE_ERROR."""
        try:
            return self._run_due()
        except StorageError as exc:
            raise ProtocolError(ErrorCode.STORAGE_ERROR, f"not confirmed: {exc}",
                                request_id=req.id) from None

    def _context(self) -> Context:
        assert self._clock is not None
        return Context(self.state, self.config, self._clock.now_ms(), self.addr)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        self._count_connections(+1)
        try:
            await self._serve_connection(stream)
        finally:
            self._count_connections(-1)

    def _count_connections(self, change: int) -> None:
        """Keep the count of open connections; a lone connection's rounds sync without
        waiting for others to join them."""
        self._connections += change
        assert self._committer is not None
        self._committer.sole_appender = self._connections == 1

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        assert self._committer is not None
        session = Session()
        try:
            session.peer = "%s:%s" % stream.socket.getpeername()[:2]
        except OSError:
            pass
        conn = Connection("server", max_frame=self.config.max_frame)
        enc = conn.encoder
        replies = Replies(stream, self._committer, enc, self._heal_soon)
        try:
            async with trio.open_nursery() as waiters:
                async with trio.open_nursery() as replying:
                    replying.start_soon(replies.run)
                    try:
                        await self._run_rounds(session, conn, stream, replies, waiters)
                    finally:
                        replies.close()  # the reply task sends what it holds, then ends
                if not self._draining:
                    waiters.cancel_scope.cancel()  # gone or broken: drop its held consumes
                # While draining, held consumes answer at once and the nursery waits for them.
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away (its reply task, then its reader, see that)
        except* Exception:
            # A fault in one connection must not take down the broker or other clients.
            log.exception("connection %s failed", session.peer)
        finally:
            await trio.aclose_forcefully(stream)

    async def _run_rounds(self, session: Session, conn: Connection, stream: trio.SocketStream,
                          replies: Replies, waiters: trio.Nursery) -> None:
        """Read and run one connection's requests in rounds until it closes or drains;
        each round's replies go to ``replies``."""
        enc = conn.encoder
        buffered = False  # requests left from the last round: run them first
        while buffered or not self._draining:
            if not buffered:
                with trio.CancelScope() as idle:
                    self._idle.add(idle)
                    data = await stream.receive_some(RECV_BYTES)
                self._idle.discard(idle)
                if idle.cancelled_caught or not data:
                    return
                conn.receive_data(data)
            buffered = False
            budget = ROUND_REQUESTS
            out: list[bytes] = []
            answered: list[tuple[int, int]] = []  # (index in out, request id)
            try:
                self._run_due()
            except StorageError:
                pass  # the replies below wait on the log and report it
            ctx = self._context()
            closing = False
            run = _PublishRun()
            while True:
                if not budget:
                    # A round's work is bounded: its replies go out (the client works
                    # on them meanwhile) and other connections get a turn.
                    buffered = True
                    break
                budget -= 1
                try:
                    frame = conn.next_frame()
                except ProtocolError as exc:
                    self._flush_run(run, session, ctx, enc, out, answered)
                    out.append(enc.error(exc.request_id, exc.code, exc.message, exc.details))
                    if exc.fatal:
                        closing = True
                        break
                    continue
                if frame is NEED_DATA:
                    break
                if frame.op == _PUBLISH_OP and run.take(session, frame, ctx):
                    continue
                if run.frames:
                    self._flush_run(run, session, ctx, enc, out, answered)
                    if frame.op == _PUBLISH_OP and run.take(session, frame, ctx):
                        continue
                self._answer(session, frame, ctx, enc, out, answered, waiters, replies)
            self._flush_run(run, session, ctx, enc, out, answered)
            # No reply may reveal state the log could still lose: every reply, whether
            # or not its request logged anything, waits until the log covers all that
            # has been applied so far.
            try:
                lsn = self._durable_lsn()
            except StorageError as exc:
                replies.fail(out, answered, exc)
                lsn, answered = 0, []
            await replies.send(Round(out, answered, lsn))
            if closing:
                return

    def _answer(self, session: Session, frame: Request, ctx: Context, enc: Encoder,
                out: list[bytes], answered: list[tuple[int, int]], waiters: trio.Nursery,
                replies: Replies) -> None:
        """Run one request; append its reply (or error) to ``out``, or hold it."""
        try:
            self._reply_into(session, frame, ctx, enc, out, answered)
        except _Hold as hold:
            self._start_waiter(waiters, session, frame, hold.wait, replies, enc)

    def _reply_into(self, session: Session, frame: Request, ctx: Context, enc: Encoder,
                    out: list[bytes], answered: list[tuple[int, int]]) -> None:
        """Run one request and append its reply or error to ``out`` (``_Hold`` passes)."""
        try:
            reply = self._execute(session, frame, ctx, enc)
        except ProtocolError as exc:
            out.append(enc.error(exc.request_id, exc.code, exc.message, exc.details))
            return
        if frame.op not in STATELESS_OPS:
            answered.append((len(out), frame.id))
        out.append(reply)

    def _flush_run(self, run: _PublishRun, session: Session, ctx: Context, enc: Encoder,
                   out: list[bytes], answered: list[tuple[int, int]]) -> None:
        """Apply a run of plain single-message publishes as one publish, and reply to
        each as if it had run alone: the ids follow one another in request order."""
        frames = run.frames
        if not frames:
            return
        queue, bodies = run.queue, run.bodies
        run.clear()
        assert queue is not None
        mutation = plain_publish(queue.name, queue.next_id, ctx.now_ms, bodies)
        try:
            self._admit(frames[0], (mutation,))
        except ProtocolError:
            # No room for them all at once: each alone, as dispatch would (rare). A
            # publish is never held.
            for frame in frames:
                self._reply_into(session, frame, ctx, enc, out, answered)
            return
        count_calls(_PUBLISH_OP, len(frames))
        try:
            self._commit((mutation,))
        except StorageError as exc:
            for frame in frames:
                out.append(enc.error(frame.id, ErrorCode.STORAGE_ERROR, f"not confirmed: {exc}"))
            return
        reply = enc.reply
        first = mutation.first_id
        for i, frame in enumerate(frames):
            answered.append((len(out), frame.id))
            out.append(reply(frame.id, {"first_id": first + i, "count": 1}))

    def _execute(self, session: Session, req: Request, ctx: Context, enc: Encoder) -> bytes:
        """Run one request through the registry and the WAL; returns its reply frame.

        The reply must not be sent before the log covers ``_durable_lsn()``."""
        outcome = self._dispatch(session, req, ctx)
        if outcome.wait is not None:
            if session.waiters >= self.config.max_waiters:
                raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                    f"at most {self.config.max_waiters} waiting consumes per connection",
                                    request_id=req.id, details={"limit": self.config.max_waiters})
            raise _Hold(outcome.wait)
        if outcome.mutations:
            self._admit(req, outcome.mutations)
            try:
                self._commit(outcome.mutations)
            except StorageError as exc:
                raise ProtocolError(ErrorCode.STORAGE_ERROR, f"not confirmed: {exc}",
                                    request_id=req.id) from None
        return enc.reply(req.id, outcome.result or {})

    def _commit_for(self, req: Request, mutations: tuple[Mutation, ...]) -> None:
        """``_commit`` for a request: a failed WAL becomes that request's STORAGE_ERROR."""
        try:
            self._commit(mutations)
        except StorageError as exc:
            raise ProtocolError(ErrorCode.STORAGE_ERROR, f"not confirmed: {exc}",
                                request_id=req.id) from None

    def _dispatch(self, session: Session, req: Request, ctx: Context) -> Outcome:
        """``commands.dispatch`` with every failure turned into a ProtocolError for ``req``."""
        try:
            return dispatch(session, req.op, req.args, ctx)
        except ProtocolError as exc:
            exc.request_id = req.id
            raise
        except Exception:
            log.exception("internal error in %s", req.op)
            raise ProtocolError(ErrorCode.INTERNAL_ERROR, f"internal error in {req.op}",
                                request_id=req.id) from None

    # -- long-poll consumes -------------------------------------------------------------

    def _start_waiter(self, nursery: trio.Nursery, session: Session, req: Request, wait: Wait,
                      replies: Replies, enc: Encoder) -> None:
        session.waiters += 1
        nursery.start_soon(self._wait_consume, session, req, wait, replies, enc)

    async def _wait_consume(self, session: Session, req: Request, wait: Wait,
                            replies: Replies, enc: Encoder) -> None:
        """Answer a held consume once its queue has ready messages or its wait ends."""
        assert self._committer is not None
        deadline = trio.current_time() + wait.wait_ms / 1000
        retry = Request(id=req.id, op=req.op, args={**req.args, "wait_ms": 0})
        try:
            while True:
                # Check, then register, with no checkpoint in between: no wake-up is missed.
                timed_out = self._draining or trio.current_time() >= deadline
                try:
                    self._run_due_for(retry)
                    outcome = self._dispatch(session, retry, self._context())
                    if outcome.mutations or timed_out:
                        if outcome.mutations:
                            self._admit(retry, outcome.mutations)
                            self._commit_for(retry, outcome.mutations)
                        reply = enc.reply(req.id, outcome.result or {})
                        break
                except ProtocolError as exc:
                    reply = enc.error(req.id, exc.code, exc.message, exc.details)
                    break
                event = self._ready_events.get(wait.queue)
                if event is None:
                    event = self._ready_events[wait.queue] = trio.Event()
                with trio.move_on_at(deadline):
                    await event.wait()
            assert self._log is not None
            try:  # as for every reply: only once the log covers what it reflects
                await self._committer.wait_durable(self._durable_lsn())
            except StorageError as exc:
                self._heal_soon()
                reply = enc.error(req.id, ErrorCode.STORAGE_ERROR, f"not confirmed: {exc}")
            await replies.write(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            session.waiters -= 1

    # -- timers -----------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        """Wake at the next lease or delay deadline and log what fell due."""
        assert self._clock is not None and self._committer is not None
        while True:
            self._timer_poke = trio.Event()
            nxt = self.state.next_timer()
            self._timer_target = math.inf if nxt is None else nxt
            if nxt is None:
                await self._timer_poke.wait()
            else:
                with trio.move_on_at(self._clock.trio_time(nxt)):
                    await self._timer_poke.wait()
            try:
                if self._run_due():
                    await self._committer.wait_durable(self._durable_lsn())
            except StorageError:
                if self._stopping is not None and self._stopping.is_set():
                    return  # the committer closed for shutdown
                log.error("could not log lease expiries and delays; recovering the log")
                self._heal_soon()
                await trio.sleep(1)  # the WAL has failed; do not spin


def _publish_need(m: Publish) -> int:
    """Log bytes a publish may take, its messages' future acks included (an upper bound)."""
    bodies = m.bodies
    n = len(bodies)
    need = _PUBLISH_OVERHEAD + len(m.queue) + sum(map(len, bodies)) + n * (_PER_BODY + ack_cost(m.queue))
    if m.keys is not None:
        need += sum(len(k) + _PER_BODY for k in m.keys if k is not None) + n
    if m.priorities is not None:
        need += 2 * n
    if m.ready_at_ms is not None:
        need += 9 * n
    return need


class _PublishRun:
    """Consecutive plain single-message publishes to one queue, from one read."""

    __slots__ = ("queue", "frames", "bodies")

    def __init__(self) -> None:
        self.queue: Queue | None = None
        self.frames: list[Request] = []
        self.bodies: list[bytes] = []

    def take(self, session: Session, frame: Request, ctx: Context) -> bool:
        """Add ``frame`` if ``plain_single_publish`` accepts it for this run's queue."""
        found = plain_single_publish(session, frame.args, ctx, len(self.bodies))
        if found is None:
            return False
        queue, body = found
        if self.queue is not queue:
            if self.frames:
                return False
            self.queue = queue
        self.frames.append(frame)
        self.bodies.append(body)
        return True

    def clear(self) -> None:
        self.queue = None
        self.frames = []
        self.bodies = []


class _Hold(Exception):
    """Raised inside the live path when a consume must wait for messages."""

    def __init__(self, wait: Wait) -> None:
        self.wait = wait
