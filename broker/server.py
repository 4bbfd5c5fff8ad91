"""The trio server: listening, connections, request rounds, long-poll waiters, timers.

Every request runs through the live path (``live.Live``), which is synchronous. This
module only moves bytes and time: a connection reads, decodes and runs its requests in
rounds (at most ``ROUND_REQUESTS``), and the replies of a round go out in one write,
in round order, once the log covers them (``replies.Replies``). While a big round's
fdatasync runs in the sync helper, the connection already reads and runs its next
round. A consume that must wait is held by a task of its connection (``waiting.Holds``).
"""
from __future__ import annotations

import ipaddress
import logging
import math
import ssl
import time
from typing import TYPE_CHECKING, Any

import trio

from protocol import NEED_DATA, Connection, Encoder, ErrorCode, ProtocolError, PushName, Request

from . import connlimits, datadir, gcpolicy, recovery, sockread, tls
from .admission import Admission
from .auth import Authenticator
from .checkpointer import Checkpointer
from .clock import Clock
from .commands import ServerFacts, Session, Subscribe
from .config import RECV_BYTES, ROUND_BUSY_S, ROUND_REPLY_BYTES, ROUND_REQUESTS, BrokerConfig
from .live import Live, RoundOut, Run
from .membudget import Account, MemoryBudget, default_budget
from .memtrim import Trimmer, fix_mmap_threshold
from .mutations import Recover
from .replies import Replies, Round
from .subscriptions import Subscriptions
from .waiting import Holds
from .state import BrokerState
from .wal import FileIO, FsyncPolicy, GroupCommitter, LogFailedError, SegmentedLog
from .wal.synchelper import SyncHelper

if TYPE_CHECKING:
    from .metrics import BrokerMetrics

logger = logging.getLogger("lockgate.server")

#: How long a graceful shutdown lets connections finish what they have read.
SHUTDOWN_GRACE_S = 10.0

#: How ``Broker._run_rounds`` ended a connection's reading.
EOF_ = "eof"  # the client closed its side
DRAINED = "drained"  # the broker shuts down: replies, then the notice and a clean close
TIMED_OUT = "timed out"  # a timeout, a failed or refused authentication: its error, then a clean close
CLOSING = "closing"  # a fatal protocol error: its error, then a close

#: The ``notice`` push every connection gets last when the broker shuts down (SPEC §3.2).
SHUTDOWN_NOTICE = {"reason": "shutdown"}


class Broker:
    """One broker process: state, WAL and listeners. Run with ``await broker.serve()``."""

    def __init__(self, config: BrokerConfig, *, io: FileIO | None = None) -> None:
        self.config = config
        self._io = io
        self.state = BrokerState()
        self.addr = ""
        self.replay_report: Any = None
        self._log: SegmentedLog | None = None
        self._committer: GroupCommitter | None = None
        self._checkpointer: Checkpointer | None = None
        self._live: Live | None = None
        self._snapshot_lsn = 0
        #: Held long-poll consumes and subscriptions waiting for messages; ``Live.commit``
        #: wakes them.
        self._holds = Holds()
        self._subscriptions: Subscriptions | None = None
        self._timer_poke: trio.Event | None = None
        self._stopping: trio.Event | None = None
        self._draining = False
        #: Cancel scopes of connections waiting for their next read (cancelled to drain).
        self._idle: set[trio.CancelScope] = set()
        #: Open client connections, and those accepted since start.
        self._connections = 0
        self._accepted = 0
        self._started_ms = 0
        #: How many connections may be open (``connlimits``, rule 1), the frame that
        #: refuses one more, and refusals closing cleanly now.
        self._max_connections = config.max_connections
        self._refusal = connlimits.refusal(config.max_connections)
        self._lingering = 0
        self._timeouts = connlimits.Timeouts(config.handshake_timeout_ms, config.idle_timeout_ms,
                                             config.frame_timeout_ms)
        self._limit_log = connlimits.RateLimitedLog(logger)
        #: What every connection holds in input and replies (``membudget``).
        self.memory = MemoryBudget(config.memory_budget or default_budget())
        #: One encoder for every connection: frames are encoded in this one thread, whole.
        self._encoder = Encoder()
        #: The metrics (``config.metrics_addr``), and "host:port" of their endpoint once
        #: it serves.
        self.metrics: BrokerMetrics | None = None
        self.metrics_addr = ""
        #: With ``auth = "required"``: the users and the handshake's checks (``broker/auth.py``).
        self.auth: Authenticator | None = None
        #: With ``tls_cert``: the server's TLS context (``broker/tls.py``).
        self._tls: ssl.SSLContext | None = None
        #: The frame a plain client on a TLS port gets (``broker/tls.py``, rule 3).
        self._tls_required = Encoder().error(
            None, ErrorCode.MALFORMED_FRAME, "this port speaks TLS: connect with TLS", {"tls": "required"})
        #: Gives the heap's free memory back to the OS after connections close (``memtrim``).
        self.trimmer = Trimmer()

    @property
    def wal_dir(self) -> Any:
        return self.config.data_dir / "wal"

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return self._connections

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted since start."""
        return self._accepted

    def _facts(self) -> ServerFacts:
        """What ``broker_info`` reports of this server (a listing and a ``stat`` per WAL
        segment)."""
        segments, size = self._log.disk_usage()[:2] if self._log is not None else (0, 0)
        return ServerFacts(self._started_ms, self._connections, segments, size, self.memory.limit, self.memory.used)

    # -- start and stop ---------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild the state from the data directory and open the log for appending."""
        datadir.make_private(self.config.data_dir, self.wal_dir)
        recovered = recovery.recover(self.wal_dir, self._io, mode=self.config.recover)
        self.state = recovered.state
        self.replay_report = recovered.replay
        self._snapshot_lsn = recovered.snapshot_lsn
        self._log = SegmentedLog.open(self.wal_dir, segment_bytes=self.config.segment_bytes, io=self._io)

    def shutdown(self) -> None:
        """Begin a graceful shutdown (SPEC.md §3.3): stop accepting and reading, answer
        what was read, held consumes at once, end subscriptions, then send each
        connection the ``notice`` push and close it cleanly; fsync, checkpoint; ``serve``
        then returns."""
        if self._stopping is not None:
            self._stopping.set()

    def _start(self) -> SyncHelper | None:
        """Recover, then build the log's committer, admission, checkpointer and live path."""
        gcpolicy.tune()
        fix_mmap_threshold()
        self._tls = self.config.tls_context()
        if self.config.auth == "required":
            assert self.config.users_file is not None
            self.auth = Authenticator(self.config.users_file, trio.current_time,
                                      self.config.max_connections_per_user)
            self.auth.load()
        self._max_connections = connlimits.fit_fd_limit(self.config.max_connections)
        self._refusal = connlimits.refusal(self._max_connections)
        self.recover()
        wal = self._log
        assert wal is not None
        policy = self.config.fsync
        # Big sync rounds go to a helper process. A FileIO of the caller's own (one that
        # counts or fails calls) sees every fdatasync instead, unless it is told of syncs
        # done elsewhere.
        io = self._io
        helper = SyncHelper.start() if policy is FsyncPolicy.ALWAYS and (
            io is None or io.reports_outside_syncs) else None
        self._committer = GroupCommitter(wal, policy, interval_ms=self.config.fsync_interval_ms,
                                         helper=helper)
        admission = Admission(wal, lambda: self.state.ack_reserve, str(self.wal_dir),
                              lambda: self.state.snapshot_bound())
        self._checkpointer = Checkpointer(
            self.state, wal, self._committer, str(self.wal_dir), io if io is not None else FileIO(),
            min_bytes=self.config.checkpoint_bytes, snapshot_lsn=self._snapshot_lsn,
            admission=admission)
        self._live = Live(self.state, wal, self.config, Clock(), admission, self._checkpointer,
                          self._holds.wake, self._poke_timer)
        self._live.sync_through = self._committer.sync_through
        self._started_ms = self._live.clock.now_ms()
        self._live.facts = self._facts
        self._holds.live = self._live
        self._subscriptions = Subscriptions(self._live, self._holds, self._committer)
        return helper

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Recover, listen and serve until ``shutdown()`` (or cancellation).

        ``task_status.started`` gets "host:port".
        """
        self._stopping = trio.Event()
        helper = self._start()
        wal, committer, checkpointer, live = self._log, self._committer, self._checkpointer, self._live
        assert wal is not None and committer is not None and checkpointer is not None and live is not None
        clean = False
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(committer.run)
                if self.config.metrics_addr is not None:
                    self.metrics_addr = await nursery.start(self._serve_metrics, self.config.metrics_addr)
                    logger.info("metrics at http://%s/metrics", self.metrics_addr)
                if any(q.leased for q in self.state.queues.values()):
                    live.commit([Recover(live.context().now_ms)])
                    await committer.wait_durable(live.durable_lsn())
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self.trimmer.run)
                if self.auth is not None:
                    nursery.start_soon(self.auth.watch)
                await nursery.start(checkpointer.run)
                async with trio.open_nursery() as connections:
                    listening = trio.CancelScope()
                    listeners = await connections.start(self._listen, listening, connections)
                    host, port = listeners[0].socket.getsockname()[:2]
                    self.addr = live.addr = f"{host}:{port}"
                    self._log_auth([listener.socket.getsockname()[0] for listener in listeners])
                    if self._tls is not None:
                        logger.info("TLS required on %s%s", self.addr,
                                    ", with client certificates" if self.config.tls_client_ca else "",
                                    extra={"event": "tls_required", "client_certs": bool(self.config.tls_client_ca)})
                    task_status.started(self.addr)
                    await self._stopping.wait()
                    logger.info("shutting down: no new connections; finishing in-flight requests")
                    listening.cancel()
                    self._drain(connections)
                await checkpointer.stop()
                try:
                    await committer.aclose()
                    checkpointer.checkpoint_inline()
                    clean = True
                except LogFailedError:
                    logger.exception("the log has failed: no final checkpoint; the next start replays it",
                                     extra={"event": "checkpoint_failed"})
                except OSError as exc:  # e.g. no room for the snapshot: the log is whole
                    logger.error("no final checkpoint (%s); the next start replays the log", exc,
                                 extra={"event": "checkpoint_failed", "error": str(exc)})
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    if not clean:
                        await committer.aclose()
                finally:
                    wal.close()
                    if helper is not None:
                        helper.close()
            logger.info("stopped%s", " cleanly" if clean else "")

    def _log_auth(self, hosts: list[str]) -> None:
        """Say how clients authenticate; loudly when anyone beyond this machine may do anything."""
        if self.auth is not None:
            logger.info("authentication required: %d users from %s", len(self.auth.users), self.auth.path,
                        extra={"event": "auth_required", "users": len(self.auth.users),
                               "path": str(self.auth.path)})
        elif not all(ipaddress.ip_address(host.split("%")[0]).is_loopback for host in hosts):
            logger.warning("AUTHENTICATION IS OFF and the broker listens on %s, beyond this machine: "
                           "anyone who can reach it can read, change and delete every queue and topic. "
                           "Set auth = \"required\" and a users_file (docs/operations.md)", ", ".join(hosts),
                           extra={"event": "auth_off_exposed", "hosts": hosts})

    async def _serve_metrics(self, addr: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve ``/metrics`` at ``addr`` until cancelled (``broker/metrics.py``)."""
        from .metrics import CONTENT_TYPE_LATEST, BrokerMetrics  # prometheus_client only when asked for
        from .metrics_http import MetricsEndpoint, parse_addr

        assert self._log is not None
        try:
            host, port = parse_addr(addr)
        except ValueError as exc:
            raise ValueError(f"metrics_addr {addr!r}: {exc}") from None
        self.metrics = BrokerMetrics(self, self._log)
        memory = self.memory
        self.metrics.memory_budget = lambda: (memory.used, memory.limit)
        await MetricsEndpoint(self.metrics.scrape, CONTENT_TYPE_LATEST).serve(host, port, task_status=task_status)

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
        self._holds.drain()
        if self._subscriptions is not None:
            self._subscriptions.drain()
        connections.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_S

    # -- the timer loop's wake-up (called by the live path) ----------------------------

    def _poke_timer(self) -> None:
        if self._timer_poke is not None:
            self._timer_poke.set()

    # -- connections ------------------------------------------------------------------

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        if self._connections >= self._max_connections:
            await self._refuse(stream)
            return
        self._accepted += 1
        self._count_connections(+1)
        try:
            await self._serve_connection(stream)
        finally:
            self._count_connections(-1)
            self.trimmer.freed()

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """One connection over the limit: TOO_MANY_CONNECTIONS, then a close (``connlimits``)."""
        peer = connlimits.peer_of(stream)
        self._limit_log.log(logging.WARNING, "max_connections", "refused a connection from %s: "
                            "%d connections open, the limit", peer, self._connections,
                            extra={"event": "connection_refused", "peer": peer, "limit": self._max_connections})
        linger = self._lingering < connlimits.MAX_LINGERING_REFUSALS
        self._lingering += linger
        try:
            if self._tls is None:
                await connlimits.refuse(stream, self._refusal, linger)
            elif linger:  # the refusal goes inside a TLS session, if one is made in time
                upgraded: tls.TlsStream | None = None
                with trio.move_on_after(connlimits.LINGER_S):
                    try:
                        if await tls.first_byte(stream) == tls.TLS_HANDSHAKE_RECORD:
                            upgraded = await tls.handshake(stream, self._tls)
                    except (trio.BrokenResourceError, OSError):
                        pass
                if upgraded is not None:
                    await connlimits.refuse(upgraded, self._refusal, linger)
                else:
                    await connlimits.close_cleanly(stream)
        finally:
            self._lingering -= linger
            await trio.aclose_forcefully(stream)

    def _count_connections(self, change: int) -> None:
        """Keep the count of open connections; a lone connection's rounds sync without
        waiting for others to join them."""
        self._connections += change
        assert self._committer is not None
        self._committer.sole_appender = self._connections == 1

    async def _serve_connection(self, raw: trio.SocketStream) -> None:
        assert self._committer is not None and self._live is not None
        session = Session(auth=self.auth)
        session.peer = connlimits.peer_of(raw)
        opened = trio.current_time()
        stream: trio.abc.Stream = raw
        about: dict[str, str] = {}
        if self._tls is not None:
            upgraded = await self._tls_handshake(raw, session.peer, opened)
            if upgraded is None:
                return  # logged and closed (trio's serve_tcp closes ``raw`` too)
            stream = upgraded
            about = tls.peer_summary(upgraded)
        logger.info("connection from %s%s", session.peer, "".join(f", {k} {v}" for k, v in about.items()),
                    extra={"event": "connection_open", "peer": session.peer, **about})
        conn = Connection("server", max_frame=self.config.max_frame, encoder=self._encoder)
        account = self.memory.account()
        replies = Replies(stream, self._committer, conn.encoder, self._live.heal_soon, account)
        ended = CLOSING
        try:
            async with trio.open_nursery() as holding:
                replies.nursery = holding  # its reply task starts there when first needed
                try:
                    ended = await self._run_rounds(session, conn, stream, replies, holding, opened, account)
                finally:
                    replies.close()  # the reply task sends what it holds, then ends
                # What it holds goes out first; after a timeout, within the linger time or not at all.
                with trio.move_on_after(connlimits.LINGER_S if ended == TIMED_OUT else math.inf):
                    await replies.sent_through(replies.rounds)
                if not self._draining:
                    holding.cancel_scope.cancel()  # gone or broken: drop its held consumes
                # While draining, held consumes answer at once, subscriptions send their
                # subscription_end, and the nursery waits for them.
            if ended == DRAINED:
                # Last of all: every reply and push is written; nothing more was read.
                await stream.send_all(conn.encoder.push(PushName.NOTICE, SHUTDOWN_NOTICE))
            if ended == TIMED_OUT or ended == DRAINED:
                await connlimits.close_cleanly(stream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client went away (its reply task, then its reader, see that).
            session.closing = session.closing or "connection lost"
        except* Exception:
            # A fault in one connection must not take down the broker or other clients.
            logger.exception("connection %s failed", session.peer,
                             extra={"event": "connection_failed", "peer": session.peer})
            session.closing = "internal error"
        finally:
            account.close()
            await trio.aclose_forcefully(stream)
            if session.user and self.auth is not None:
                self.auth.disconnected(session.user)
            self._log_close(session, opened)

    async def _tls_handshake(self, raw: trio.SocketStream, peer: str, opened: float) -> tls.TlsStream | None:
        """The TLS session of a new connection (``broker/tls.py``), made within the
        handshake timeout; None (logged, closed cleanly) for a plain client, a failed
        handshake or one not done in time."""
        assert self._tls is not None
        limit_ms = self._timeouts.handshake_ms
        upgraded: tls.TlsStream | None = None
        first: int | None = tls.TLS_HANDSHAKE_RECORD
        scope = trio.CancelScope(deadline=opened + limit_ms / 1000)
        try:
            self._idle.add(scope)  # a shutdown ends it
            try:
                with scope:
                    first = await tls.first_byte(raw)
                    if first == tls.TLS_HANDSHAKE_RECORD:
                        upgraded = await tls.handshake(raw, self._tls)
            finally:
                self._idle.discard(scope)
            if upgraded is not None:
                return upgraded
            if scope.cancelled_caught:
                if self._draining:
                    return None
                kind, reason = "handshake", f"no TLS handshake within {limit_ms} ms of connecting"
                extra: dict[str, Any] = {"event": "connection_timeout", "timeout": "handshake",
                                         "limit_ms": limit_ms, "tls": True}
            elif first is not None:
                kind, reason = "tls_plain", "a plain (not TLS) client on the TLS port"
                extra = {"event": "tls_handshake_failed", "reason": "plain client"}
                with trio.move_on_after(connlimits.LINGER_S):
                    await raw.send_all(self._tls_required)
            else:
                return None  # closed before sending a byte: nothing to say
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            why = getattr(cause, "reason", None) or str(cause or exc) or type(cause or exc).__name__
            if "EOF" in why:  # e.g. a client that does not trust this certificate hangs up
                why = f"the client closed the connection ({why})"
            kind, reason = "tls_failed", f"TLS handshake failed: {why}"
            extra = {"event": "tls_handshake_failed", "reason": why}
        except OSError as exc:  # reset while peeking
            logger.info("connection from %s lost before its TLS handshake: %s", peer, exc)
            return None
        self._limit_log.log(logging.WARNING, kind, "connection %s: %s; closing it", peer, reason,
                            extra={"peer": peer, **extra})
        await connlimits.close_cleanly(raw)
        return None

    def _log_close(self, session: Session, opened: float) -> None:
        """One line for a connection's end, with its client's name and why it ended."""
        reason = session.closing or ("broker shutting down" if self._draining else "closed by the client")
        level = logging.WARNING if reason.startswith(("protocol error", "internal error")) else logging.INFO
        client = repr(session.client) if session.client else "no hello"
        user = f" as user {session.user!r}" if session.user else ""
        logger.log(level, "connection from %s%s closed (%s): %s", session.peer, user, client, reason,
                   extra={"event": "connection_close", "peer": session.peer, "client": session.client,
                          "user": session.user or None,
                          "reason": reason, "seconds": round(trio.current_time() - opened, 3)})

    async def _run_rounds(self, session: Session, conn: Connection, stream: trio.abc.Stream,
                          replies: Replies, holding: trio.Nursery, opened: float, account: Account) -> str:
        """Read and run one connection's requests in rounds until it closes or drains;
        each round's replies go to ``replies``. Returns how it ended: ``EOF_``,
        ``DRAINED`` (the broker shuts down: it read nothing more once the requests it
        had read had run), ``TIMED_OUT`` for a timeout (``connlimits``, rules 2-3), after
        sending CONNECTION_TIMEOUT, for a frame refused by the memory budget after
        MEMORY_LIMIT (``membudget``, rule 4), or for a failed authentication, whose
        AUTH_FAILED it sends late (``auth``, rule 4), or ``CLOSING`` after a fatal
        protocol error."""
        live = self._live
        memory = self.memory
        assert live is not None
        reads = connlimits.ReadTimer(self._timeouts, opened)
        receive = sockread.receiver(stream)
        timer = self.metrics.rounds if self.metrics is not None else None
        read_at = 0.0  # when the data of this round's requests was read (with metrics)
        buffered = False  # requests left from the last round: run them first
        while buffered or not self._draining:
            if not buffered:
                with trio.CancelScope(deadline=reads.deadline(session.ready, conn.buffered)) as idle:
                    self._idle.add(idle)
                    if memory.used >= memory.high:  # under pressure (``membudget``, rules 3-4)
                        try:
                            memory.check_frame(account, conn.missing)
                        except ProtocolError as exc:
                            self._idle.discard(idle)
                            await self._refuse_frame(session, conn, replies, exc)
                            return TIMED_OUT
                        await memory.wait_for_room(account)
                    data = await receive(memory.read_size(RECV_BYTES))
                self._idle.discard(idle)
                if idle.cancelled_caught:
                    if self._draining:
                        return DRAINED
                    error = reads.expired(bool(session.waiters or session.subscriptions) or replies.unsent)
                    if error is None:
                        continue  # it holds consumes, subscriptions or replies: not idle
                    await self._time_out(session, conn, replies, error)
                    return TIMED_OUT
                if not data:
                    return EOF_
                reads.received(len(data))
                if timer is not None:
                    read_at = time.monotonic()
                conn.receive_data(data)
                account.set_input(conn.buffered)
                if conn.waiting:
                    # Part of a frame: read on. A round (and its place in the reply
                    # order, behind an fsync) is for requests; a big frame arrives in
                    # many reads.
                    continue
            out = RoundOut(conn.encoder)
            ops: list[str] | None = [] if timer is not None else None
            buffered, closing = self._run_round(session, conn, out, replies, holding, ops)
            account.set_input(conn.buffered)
            sent = timer.ran(ops, read_at) if timer is not None and ops else None
            # No reply may reveal state the log could still lose: every reply, whether
            # or not its request logged anything, waits until the log covers all that
            # has been applied so far.
            try:
                lsn = live.durable_lsn()
            except LogFailedError as exc:
                replies.fail(out.out, out.answered, exc)
                lsn, out.answered = 0, []
            if closing and session.auth_delay:
                await trio.sleep(session.auth_delay)  # a failed authentication is answered late
            await replies.send(Round(out.out, out.answered, lsn, sent))
            if closing:
                return TIMED_OUT if session.auth_delay or session.close_after else CLOSING
        return DRAINED

    async def _time_out(self, session: Session, conn: Connection, replies: Replies,
                        error: ProtocolError) -> None:
        """Log a connection's timeout and send it ``error`` after its earlier replies."""
        kind = error.details["timeout"]
        session.closing = f"{kind} timeout"
        if kind != "idle":  # the normal end of a quiet client is its connection_close line
            self._limit_log.log(logging.WARNING, kind, "connection %s: %s", session.peer, error.message,
                                extra={"event": "connection_timeout", "peer": session.peer, **error.details})
        frame = conn.encoder.error(None, error.code, error.message, error.details)
        with trio.move_on_after(connlimits.LINGER_S):  # a peer that reads nothing gets no more
            await replies.send(Round([frame], [], 0))

    async def _refuse_frame(self, session: Session, conn: Connection, replies: Replies,
                            error: ProtocolError) -> None:
        """``membudget`` rule 4: log, then send MEMORY_LIMIT after the earlier replies."""
        session.closing = "memory limit"
        memory = self.memory
        self._limit_log.log(logging.WARNING, "memory_limit", "connection %s: refused a frame of %d bytes "
                            "near the memory budget (%d of %d bytes held)", session.peer, error.details["length"],
                            memory.used, memory.limit,
                            extra={"event": "memory_limit", "peer": session.peer, "used": memory.used,
                                   **error.details})
        frame = conn.encoder.error(None, error.code, error.message, error.details)
        with trio.move_on_after(connlimits.LINGER_S):
            await replies.send(Round([frame], [], 0))

    def _run_round(self, session: Session, conn: Connection, out: RoundOut, replies: Replies,
                   holding: trio.Nursery, ops: list[str] | None = None) -> tuple[bool, bool]:
        """Run the requests buffered in ``conn``, at most ``ROUND_REQUESTS``, and none more
        once the replies reach ``ROUND_REPLY_BYTES`` or a request outside a batch fast
        path ends ``ROUND_BUSY_S`` after the round began; consecutive
        requests of a batch fast path run together; each one's op goes to ``ops`` (for
        the metrics). Returns (more are buffered, the connection must close)."""
        live = self._live
        assert live is not None
        try:
            live.run_due()
        except LogFailedError:
            pass  # the replies wait on the log and report it
        ctx = live.context()
        run = Run()
        busy_until = time.perf_counter() + ROUND_BUSY_S
        busy = False
        for _ in range(ROUND_REQUESTS):
            if busy or out.size >= ROUND_REPLY_BYTES:  # the rest of what is buffered: the next round
                live.execute_run(run, session, ctx, out)
                return True, False
            try:
                frame = conn.next_frame()
            except ProtocolError as exc:
                live.execute_run(run, session, ctx, out)
                out.error(exc)
                if exc.fatal:
                    session.closing = f"protocol error {exc.code.name}"
                    return False, True
                continue
            if frame is NEED_DATA:
                break
            assert type(frame) is Request
            if ops is not None:
                ops.append(frame.op)
            if run.take(session, frame, ctx):
                continue
            if run.frames:
                live.execute_run(run, session, ctx, out)
                if run.take(session, frame, ctx):
                    continue
            if self._draining and frame.op == "subscribe":  # it would end at once
                out.error(ProtocolError(ErrorCode.SHUTTING_DOWN, "the broker is shutting down; "
                                        "subscribe again once it is back", request_id=frame.id))
                continue
            wait = live.execute(session, frame, ctx, out)
            if session.auth_delay or session.close_after:  # nothing after it is read
                return False, True
            busy = time.perf_counter() >= busy_until
            if isinstance(wait, Subscribe):
                assert self._subscriptions is not None
                self._subscriptions.start(session, wait, replies, conn.encoder, holding)
            elif wait is not None:
                session.waiters += 1
                holds = self._holds
                holding.start_soon(holds.hold, session, frame, wait, replies, conn.encoder,
                                   holds.places(wait.queue, wait.group))
        else:
            # A round's work is bounded: its replies go out (the client works on them
            # meanwhile) and other connections get a turn.
            live.execute_run(run, session, ctx, out)
            return True, False
        live.execute_run(run, session, ctx, out)
        return False, False

    # -- timers -----------------------------------------------------------------------------

    async def _timer_loop(self) -> None:
        """Wake at the next lease or delay deadline and log what fell due."""
        live, committer = self._live, self._committer
        assert live is not None and committer is not None
        clock = live.clock
        while True:
            self._timer_poke = trio.Event()
            nxt = self.state.next_timer()
            live.timer_target = float("inf") if nxt is None else nxt
            if nxt is None:
                await self._timer_poke.wait()
            else:
                with trio.move_on_at(clock.trio_time(nxt)):
                    await self._timer_poke.wait()
            try:
                if live.run_due():
                    # Consumers it woke lease what fell due in the same fdatasync.
                    await committer.wait_durable(live.durable_lsn(), gather=True)
            except LogFailedError:
                if self._stopping is not None and self._stopping.is_set():
                    return  # the committer closed for shutdown
                logger.error("could not log lease expiries and delays; recovering the log",
                             extra={"event": "storage_error", "op": "timers"})
                live.heal_soon()
                await trio.sleep(1)  # the WAL has failed; do not spin


