"""The live path: the one synchronous way a request, a publish run, a woken long-poll
or a timer changes the broker's state.

    execute:  lookup -> validate and decide (handler) -> admit -> log -> apply -> wake

Every state change goes through ``commit``: each mutation is encoded to its WAL record
(``records``), appended, then applied (``state``); a run of plain publishes is folded
into one pending record that ``durable_lsn`` writes out. After applying, ``commit``
wakes as many held long-poll consumes as queues gained ready messages, pokes the timer loop
when an earlier deadline appeared, and asks for a checkpoint when the log has grown.

Replies: ``execute`` appends each request's reply (or error) frame to a ``RoundOut``;
the caller sends a round's frames once the log covers ``durable_lsn()`` (every reply
that reveals state waits for that). A failed log becomes ``STORAGE_ERROR`` in one
place, ``log_failed``.

Nothing here awaits: the server (``server.py``) owns sockets, rounds and trio, and
passes in the callbacks that touch trio (``wake``, ``poke_timer``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from protocol import Encoder, ErrorCode, Op, ProtocolError, Request

from .admission import Admission, AdmissionClass
from .checkpointer import Checkpointer
from .clock import Clock
from .commands import (
    COMMANDS, REPLY_OVERHEAD, Batch, Command, Context, Outcome, ServerFacts, Session, Subscribe, Wait, delivery_row,
    denial, lookup, run)
from .config import BrokerConfig
from .mutations import (
    GroupCreate, GroupDelete, Lease, Mutation, Publish, QueueCreate, QueueDelete, Release, Take, TopicCreate,
    TopicDelete, Txn)
from .records import PublishFold, encode
from .state import BrokerState
from .wal import LogFailedError, SegmentedLog

logger = logging.getLogger("lockgate.live")

_PUBLISH = Publish.TYPE
#: Records fdatasynced before any reply that covers them under every fsync policy:
#: creating and deleting queues, topics and groups (settings never change after
#: creation). They are rare, and a client told ``created: true`` must never meet
#: ``QUEUE_NOT_FOUND`` after a power cut, even under ``never``.
_SYNCED_TYPES = frozenset(m.TYPE for m in (QueueCreate, QueueDelete, TopicCreate, TopicDelete,
                                           GroupCreate, GroupDelete))
#: Ops whose changes are logged with a line of their own (``_log_queue_change``); every other
#: administrative op gets an ``admin_op`` line (``_audit``); no other request is logged.
_LOGGED_OPS = frozenset({str(Op.QUEUE_CREATE), str(Op.QUEUE_DELETE)})
#: The arguments an ``admin_op`` line names.
_AUDITED_ARGS = ("queue", "topic", "group", "dead_letter")


def log_failed(exc: LogFailedError | str, request_id: int | None) -> ProtocolError:
    """The one mapping of a failed log to a request's ``STORAGE_ERROR``: the request's
    outcome is unknown (not confirmed), or it was not applied (a ``str`` reason)."""
    if isinstance(exc, str):
        return ProtocolError(ErrorCode.STORAGE_ERROR, exc, request_id=request_id)
    return ProtocolError(ErrorCode.STORAGE_ERROR, f"not confirmed: {exc}", request_id=request_id)


def _log_queue_change(session: Session, mutation: Mutation, result: dict[str, Any]) -> None:
    """One line for a queue created or deleted, and by which connection and user."""
    who = {"peer": session.peer, "client": session.client, "user": session.user or None}
    if type(mutation) is QueueCreate:
        logger.info("queue %s created (%s, shards %d) by %s %r%s", mutation.queue, mutation.kind,
                    mutation.shards, session.peer, session.client, _as_user(session),
                    extra={"event": "queue_create", "queue": mutation.queue, "kind": str(mutation.kind),
                           "shards": mutation.shards, "dead_letter": mutation.dead_letter, **who})
    elif type(mutation) is QueueDelete:
        logger.info("queue %s deleted (messages dropped: %d) by %s %r%s", mutation.queue, result.get("messages", 0),
                    session.peer, session.client, _as_user(session),
                    extra={"event": "queue_delete", "queue": mutation.queue,
                           "messages": result.get("messages", 0), **who})


def _as_user(session: Session) -> str:
    return f" as user {session.user!r}" if session.user else ""


def _audit(session: Session, command: Command, args: dict[str, Any], outcome: Outcome) -> None:
    """One line for an administrative op that succeeded, naming its user and peer (a queue
    created or deleted: ``_log_queue_change``; a queue_create that changed nothing: none)."""
    if command.op in _LOGGED_OPS:
        if outcome.mutations:
            _log_queue_change(session, outcome.mutations[0], outcome.result or {})
        return
    named = {name: args[name] for name in _AUDITED_ARGS if type(args.get(name)) is str}
    logger.info("%s %s by %s %r%s", command.op, " ".join(f"{k} {v}" for k, v in named.items()), session.peer,
                session.client, _as_user(session),
                extra={"event": "admin_op", "op": command.op, **named, "peer": session.peer,
                       "client": session.client, "user": session.user or None})


class RoundOut:
    """The reply frames of one round, in request order, and which of them reveal state
    (``answered``: (index in ``out``, request id)) and so wait for the log."""

    __slots__ = ("enc", "out", "answered", "size")

    def __init__(self, enc: Encoder) -> None:
        self.enc = enc
        self.out: list[bytes] = []
        self.answered: list[tuple[int, int]] = []
        #: Bytes of the frames added by ``reply`` and ``error`` (a batch fast path's
        #: replies, a few dozen bytes each, are not counted).
        self.size = 0

    def reply(self, rid: int, result: dict[str, Any], reads_state: bool = True) -> None:
        if reads_state:
            self.answered.append((len(self.out), rid))
        frame = self.enc.reply(rid, result)
        self.size += len(frame)
        self.out.append(frame)

    def error(self, exc: ProtocolError) -> None:
        frame = self.enc.error(exc.request_id, exc.code, exc.message, exc.details)
        self.size += len(frame)
        self.out.append(frame)


class Run:
    """Consecutive requests of one command's batch fast path from one read (``Batch``)."""

    __slots__ = ("command", "key", "frames", "items")

    def __init__(self) -> None:
        self.command: Command | None = None
        self.key: Any = None
        self.frames: list[Request] = []
        self.items: list[Any] = []

    def take(self, session: Session, frame: Request, ctx: Context) -> bool:
        """Add ``frame`` if its command's ``Batch`` accepts it for this run."""
        command = self.command
        if command is None or frame.op != command.op:
            if self.frames:
                return False  # another op ends the run
            command = COMMANDS.get(frame.op)
        batch: Batch | None = command.batch if command is not None else None
        if batch is None or command is None:
            return False
        if session.auth is not None and denial(session, command, frame.args) is not None:
            return False  # it runs alone, and lookup refuses it
        found = batch.take(session, frame.args, ctx, len(self.items))
        if found is None:
            return False
        key, item = found
        if self.frames:
            if self.key is not key:
                return False
        else:
            self.command, self.key = command, key
        self.frames.append(frame)
        self.items.append(item)
        return True

    def clear(self) -> None:
        self.command = None
        self.key = None
        self.frames = []
        self.items = []


class Live:
    """The live path of one broker (see the module docs)."""

    def __init__(self, state: BrokerState, wal: SegmentedLog, config: BrokerConfig, clock: Clock,
                 admission: Admission, checkpointer: Checkpointer | None,
                 wake: Callable[[dict[str, int]], None], poke_timer: Callable[[], None]) -> None:
        self.state = state
        self.config = config
        self.addr = ""
        self._wal = wal
        self.clock = clock
        self._admission = admission
        self._checkpointer = checkpointer
        self._wake = wake
        self._poke_timer = poke_timer
        self._fold = PublishFold()
        #: The deadline the timer loop sleeps until; ``commit`` pokes it for an earlier one.
        self.timer_target = math.inf
        #: Queues whose changes a watcher is told of (``subscriptions.Subscriptions``), and it.
        self.watched: dict[str, Any] = {}
        self.watcher: Callable[[Mutation], None] | None = None
        #: Told the LSN just past each record of ``_SYNCED_TYPES`` (the group committer's
        #: ``sync_through``): replies covering it then wait for an fdatasync.
        self.sync_through: Callable[[int], None] | None = None
        #: The server's facts for ``broker_info`` (set by the server).
        self.facts: Callable[[], ServerFacts] | None = None

    def context(self) -> Context:
        return Context(self.state, self.config, self.clock.now_ms(), self.addr, self.facts)

    # -- requests ---------------------------------------------------------------------

    def execute(self, session: Session, req: Request, ctx: Context,
                out: RoundOut) -> Wait | Subscribe | None:
        """Run one request; its reply or error goes to ``out``. A consume that must wait
        for messages returns its ``Wait`` instead (``retry`` answers it later); a
        ``subscribe`` is answered and returns the subscription to start."""
        try:
            command = lookup(session, req.op, req.args)
            outcome = self._decide(command, session, req, ctx)
            if type(outcome.wait) is Subscribe:
                out.reply(req.id, outcome.result or {})
                return outcome.wait
            if outcome.wait is not None:
                if session.waiters >= self.config.max_waiters:
                    raise ProtocolError(
                        ErrorCode.LIMIT_EXCEEDED,
                        f"at most {self.config.max_waiters} waiting consumes per connection",
                        details={"limit": self.config.max_waiters})
                return outcome.wait
            self._change(command, req, outcome.mutations)
            if command.audited:
                _audit(session, command, req.args, outcome)
        except ProtocolError as exc:
            exc.request_id = req.id
            out.error(exc)
            return None
        out.reply(req.id, outcome.result or {}, command.reads_state)
        return None

    def retry(self, session: Session, req: Request, out: RoundOut, *,
              final: bool) -> list[tuple[str, list[int]]] | None:
        """Check a held consume again (as if its ``wait_ms`` were 0). Once answered into
        ``out`` (it took messages, failed, or it is ``final``: its wait is over) returns
        the ids it leased by queue (maybe none); None while it must wait on."""
        try:
            self.run_due()
            command = lookup(session, req.op, req.args)
            ctx = self.context()
            now = Request(id=req.id, op=req.op, args={**req.args, "wait_ms": 0})
            outcome = self._decide(command, session, now, ctx)
            if not outcome.mutations and not final:
                return None
            self._change(command, req, outcome.mutations)
        except ProtocolError as exc:
            exc.request_id = req.id
            out.error(exc)
            return []
        except LogFailedError as exc:
            out.error(log_failed(exc, req.id))
            return []
        out.reply(req.id, outcome.result or {})
        return [(m.queue, m.ids) for m in outcome.mutations if type(m) is Lease]

    def push(self, queue: str, most: int, visibility_ms: int | None, auto_ack: bool,
             budget: int) -> tuple[list[list[Any]], list[int]] | None:
        """Deliver up to ``most`` ready messages of ``queue`` to a subscription: leased for
        ``visibility_ms`` (None: the queue's), or with ``auto_ack`` deleted as they go, in
        one record. Returns (deliveries as ``consume`` gives them, their ids), or None if
        the queue is gone. Raises ProtocolError (``DISK_FULL``, ``STORAGE_ERROR``)."""
        held = self.state.queues.get(queue)
        if held is None:
            return None
        now = self.clock.now_ms()
        chosen = held.select(most, budget - REPLY_OVERHEAD, now)  # never one past its time to live
        if not chosen:
            return [], []
        ids = [m.id for m in chosen]
        deliver: Mutation
        if auto_ack:
            deliver = Take(queue, ids)
        else:
            visibility = held.settings.visibility_ms if visibility_ms is None else visibility_ms
            deliver = Lease(queue, now + visibility, ids)
        rows = [delivery_row(m) for m in chosen]
        self._admit_and_commit(AdmissionClass.LOG, "push", None, (deliver,))
        return rows, ids

    def release(self, queue: str, ids: list[int], *, delivered: bool) -> None:
        """Leased messages whose consumer is gone are ready again at once, whatever the
        queue's retry backoff: a subscriber's connection closed (``delivered``: they were
        pushed, so the attempt counts, as for a nack), or a held consume's reply could not
        be sent (not ``delivered``: as if never leased). Logged within the reserve, like
        lease expiries."""
        if not ids or queue not in self.state.queues or self._wal.failed:
            return
        release = Release(queue, ids, 0, False, self.clock.now_ms(), None, True, not delivered)
        try:
            self.commit((release,))
        except LogFailedError:
            logger.warning("could not release %d messages of %s (the log failed); their "
                           "leases end by themselves", len(ids), queue)

    def execute_run(self, run: Run, session: Session, ctx: Context, out: RoundOut) -> None:
        """Run the requests gathered in ``run`` as one change, each replied to as if it
        had run alone; then empty it. Without room for them all at once, each runs alone."""
        frames, command = run.frames, run.command
        if not frames or command is None or command.batch is None:
            return
        mutations, results = command.batch.build(run.key, run.items, ctx)
        run.clear()
        try:
            self._change(command, frames[0], mutations)
        except ProtocolError as exc:
            if exc.code != ErrorCode.DISK_FULL:
                for frame in frames:
                    exc.request_id = frame.id
                    out.error(exc)
                return
            for frame in frames:  # no room for them all at once: each alone (rare)
                self.execute(session, frame, ctx, out)
            return
        command.calls += len(frames)
        reply, answered, frames_out = out.enc.reply, out.answered, out.out
        for frame, result in zip(frames, results):  # out.reply, inlined: one per message
            answered.append((len(frames_out), frame.id))
            frames_out.append(reply(frame.id, result))

    def _decide(self, command: Command, session: Session, req: Request, ctx: Context) -> Outcome:
        """The handler's outcome; an unexpected fault becomes INTERNAL_ERROR."""
        try:
            return run(command, session, req.args, ctx)
        except ProtocolError:
            raise
        except Exception:
            logger.exception("internal error in %s", req.op)
            raise ProtocolError(ErrorCode.INTERNAL_ERROR, f"internal error in {req.op}") from None

    def _change(self, command: Command, req: Request, mutations: Sequence[Mutation]) -> None:
        """Admit, log and apply a request's mutations, or raise its ProtocolError."""
        if mutations:
            assert command.changes_state, f"{command.op} changed state but is declared read-only"
            self._admit_and_commit(command.admission, req.op, req.id, mutations)

    def _admit_and_commit(self, admission: AdmissionClass, what: str, request_id: int | None,
                          mutations: Sequence[Mutation]) -> None:
        """The log must not have failed and must have room (``admission``); then log and
        apply. A refusal or a failed log is the ProtocolError of ``request_id``."""
        wal = self._wal
        if wal.failed:
            self.heal_soon()
            raise log_failed(f"the log failed and is being recovered ({wal.failure}); this "
                             f"{what} was not applied, retry shortly", request_id)
        self._admission.admit(admission, mutations, what)
        try:
            self.commit(mutations)
        except LogFailedError as exc:
            raise log_failed(exc, request_id) from None

    # -- the one way state changes ----------------------------------------------------------

    def commit(self, mutations: Sequence[Mutation]) -> None:
        """Log each mutation, then apply it (see the module docs). Raises
        LogFailedError, having applied nothing more, once the WAL has failed."""
        append, apply, fold = self._wal.append, self.state.apply_fields, self._fold
        for m in mutations:
            if m.TYPE == _PUBLISH and m.plain:  # type: ignore[attr-defined]
                ended = fold.add(m)  # type: ignore[arg-type]
                if ended is not None:
                    append(ended)
            else:
                self._flush_fold()
                lsn = append(encode(m))
                if m.TYPE in _SYNCED_TYPES and self.sync_through is not None:
                    self.sync_through(lsn)
            apply(m.TYPE, m.fields())
            if self.watched and self.watcher:
                for part in (m.mutations() if type(m) is Txn else (m,)):
                    if getattr(part, "queue", None) in self.watched:
                        self.watcher(part)
        checkpointer = self._checkpointer
        if checkpointer is not None and self._wal.appended_lsn >= checkpointer.check_at:
            checkpointer.poke()
        woken = self.state.take_woken()
        if woken:
            self._wake(woken)
        nxt = self.state.next_timer()
        if nxt is not None and nxt < self.timer_target:
            self._poke_timer()

    def _flush_fold(self) -> None:
        self._admission.flushed()
        record = self._fold.flush()
        if record is not None:
            self._wal.append(record)

    def durable_lsn(self) -> int:
        """The LSN a reply must wait for: everything applied so far, folded records
        written out. Call it before every await, so no fold is pending across one."""
        self._flush_fold()
        return self._wal.appended_lsn

    def run_due(self) -> bool:
        """Log and apply lease expiries and elapsed delays; True if there were any."""
        nxt = self.state.next_timer()
        if nxt is None or self._wal.failed:  # nothing may change until it is recovered
            return False
        now = self.clock.now_ms()
        if nxt > now:
            return False
        mutations = self.state.due(now)
        if mutations:
            self.commit(mutations)
        return bool(mutations)

    def heal_soon(self) -> None:
        """The log has failed: have the checkpointer recover it."""
        if self._checkpointer is not None:
            self._checkpointer.heal_soon()
