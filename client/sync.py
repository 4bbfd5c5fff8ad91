"""A blocking client for scripts and tools: a plain socket, no trio.

    with SyncClient("127.0.0.1:7878") as client:
        client.publish("jobs", b"hello")
        for d in client.consume("jobs", max=10):
            ...

The typed methods are made from the same op table (:mod:`client.ops`) as those of
:class:`client.api.Client`, so the two take the same arguments. Pipelining is explicit:
``submit(op, args)`` sends a request at once and returns its id; ``result(id)`` reads
frames until that reply arrives, buffering replies to other submitted ids, so results
can be taken in any order. ``request_many`` and ``publish_many`` pipeline through a bounded window.
While a send cannot proceed the client keeps reading, so a server that is waiting for
its replies to be read never deadlocks with it.

Timeouts: every blocking step gives up after ``timeout`` seconds (default 30; ``None``
waits forever) with ``TimeoutError``. A timed-out ``result`` leaves the connection
usable and the request pending (call ``result`` again); a timed-out send closes the
connection, since part of a frame may have gone out. ``consume`` adds its ``wait_ms``
to the timeout. A ``SyncClient`` is not thread-safe.

Subscriptions (``with client.subscribe("jobs") as sub: for msg in sub: ...``) are in
:mod:`client.sync_subscription`; their pushes are read whenever the client reads.

Reconnecting: ``SyncClient(addr, reconnect=True)`` (or a
:class:`~client.backoff.Reconnect` policy) keeps the client usable across a lost
connection, with the async client's rules (:mod:`client.reconnect`), made when the
client next needs the connection, since a blocking client has no task of its own:

- **Requests in flight fail** with :class:`~client.errors.ConnectionClosed` (their
  outcome is unknown), except publishes: the typed ``publish``, ``publish_batch`` and
  ``publish_topic``, and ``publish_many``, give every message without a dedup id one of
  their own before the first send, and a publish whose connection is lost before its
  reply is sent again with the same ids on the next connection, within
  ``publish_retry_s`` of its first send; the broker stores a dedup id it has seen within
  the queue's or topic's dedup window only once (SPEC.md §8.9, §5.23). ``submit``,
  ``request``, ``request_many`` and ``txn`` are not retried.
- **The next request reconnects**: it waits out the backoff (``initial_delay_s``, growing
  by ``multiplier`` to ``max_delay_s``, shortened at random by up to ``jitter``), then
  connects and says ``hello`` again, as often as it takes, then is sent. The wait counts
  against the request's ``timeout`` (``TimeoutError`` then; the next call goes on
  trying). After ``max_attempts`` failed attempts in a row the client gives up: it is
  closed, and every call raises ``ConnectionClosed``.
- **Subscriptions resubscribe** on the new connection, with their settings, before
  anything else is sent on it; an iteration waiting for a message reconnects too (within
  its ``idle_timeout``, if set). Messages pushed but not handed out are forgotten (the
  broker released them); a message handed out may be delivered again, and an ack lost
  with the connection does not raise from ``with msg``. A subscription whose queue was
  deleted meanwhile ends (``end_reason`` ``"queue_deleted"``).
- **The first connection** is not retried: the constructor raises ``OSError`` (or the
  handshake's error) as it does without ``reconnect``.
"""
from __future__ import annotations

import logging
import random
import selectors
import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from time import monotonic, sleep
from types import EllipsisType, TracebackType
from typing import Any

from protocol import (
    DEFAULT_CREDIT,
    DEFAULT_MAX_FRAME,
    FATAL_CODES,
    NEED_DATA,
    PROTOCOL_VERSION,
    Op,
    ProtocolError,
    Push,
    Reply,
)
from protocol import Connection as ProtocolConnection
from protocol import Error as ErrorFrame

from . import ops
from . import types as t
from . import tls as _tls
from .auth import Credentials, Handshake
from .backoff import DedupIds, Reconnect
from .errors import ConnectionClosed, LockgateError, UnsupportedVersion, error_from_frame
from .pushes import PushRouter
from .sync_subscription import SyncSubscription
from .types import Bytes, Message, PublishResult, ServerInfo, Transaction

#: Default seconds a blocking step may take.
DEFAULT_TIMEOUT = 30.0
#: Default number of requests ``request_many`` keeps in flight.
DEFAULT_WINDOW = 256
#: Room left for the request envelope when ``publish_many`` packs a frame.
_FRAME_SLACK = 4096
_RECEIVE_BYTES = 256 * 1024
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
#: What a non-blocking send or receive raises when it cannot go on yet (a TLS socket
#: raises the last two: a record is incomplete, or the send buffer is full).
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_PUBLISH = Op.PUBLISH.value

logger = logging.getLogger("lockgate.client")


def _again(error: ConnectionClosed) -> ConnectionClosed:
    """A new error like ``error`` (one loss fails many requests; each raises its own)."""
    exc = ConnectionClosed(error.message)
    exc.__cause__ = error.__cause__
    return exc


class SyncClient:
    """A blocking, pipelining connection with typed methods. Use it as a context manager.

    ``submit``/``result`` pipeline any request; the typed methods each wait for their own
    reply (replies to other submitted requests read meanwhile are kept for ``result``).
    """

    #: The reconnect policy (``None``: a lost connection closes the client).
    _policy: Reconnect | None = None

    def __init__(
        self,
        addr: str | tuple[str, int] | None = None,
        port: int | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_frame: int | None = None,
        client_name: str = "lockgate-py-sync/0.1.0",
        on_push: Callable[[Push], None] | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        tls: _tls.TlsOption = None,
        server_hostname: str | None = None,
        reconnect: bool | Reconnect = False,
    ) -> None:
        """Connect and handshake. ``addr`` is as for :func:`client.types.parse_addr`;
        ``max_frame`` (largest frame this client accepts) defaults to the server's own.
        ``user`` and ``password`` (SCRAM-SHA-256), or ``token``, authenticate to a broker
        that requires it (:mod:`client.auth`; ``AuthFailed`` if that fails), on every
        connection. ``tls`` (``True`` or an ``ssl.SSLContext``) connects in TLS and
        verifies the broker's certificate against ``server_hostname`` (default: the
        host), as ``Client.connect`` does (:mod:`client.tls`). ``reconnect`` (``True`` or a
        :class:`~client.backoff.Reconnect`) reconnects after a loss (see the module
        docstring). Raises ``OSError`` when the broker cannot be reached
        (``ssl.SSLCertVerificationError`` when its certificate does not verify)."""
        self._target = t.parse_addr(addr, port)
        self._credentials = Credentials.of(user, password, token)
        self._client_name = client_name
        self._max_frame = max_frame
        self._tls_context = _tls.resolve(tls)
        self._server_hostname = server_hostname
        self.timeout = timeout
        #: Gets every PUSH frame that is not for a subscription of this client.
        self.on_push = on_push
        #: PUSH frames received while no ``on_push`` was set.
        self.unhandled_pushes = 0
        self._pushes = PushRouter(self._unrouted_push)
        self._next_id = 1
        self._waiting: set[int] = set()
        self._reply_hooks: dict[int, Callable[[dict[str, Any]], None]] = {}
        self._done: dict[int, Reply | ErrorFrame] = {}
        #: Requests whose connection was lost before their reply: the error to raise.
        self._failed: dict[int, ConnectionClosed] = {}
        self._closed_reason: str | None = None
        self._server_error: LockgateError | None = None
        self._server_max_frame = DEFAULT_MAX_FRAME
        self._sock: socket.socket | None = None
        self._policy = Reconnect() if reconnect is True else (reconnect or None)
        self._dedup_ids = DedupIds()
        #: Open subscriptions (made again after a reconnect).
        self._subscriptions: set[SyncSubscription] = set()
        #: While reconnecting: failed attempts so far, and when to make the next.
        self._attempt = 0
        self._retry_at = 0.0
        self._opening = False
        #: The error of the last lost connection (raised again while none is up).
        self._lost_error: ConnectionClosed | None = None
        self._reconnects = 0
        self._publishes_retried = 0
        try:
            self._open()
        except BaseException as exc:
            self._closed_reason = f"could not connect: {exc}"
            raise

    def _open(self) -> None:
        """Connect and handshake on a new socket (the first connection, or the next one)."""
        handshake = Handshake(self._credentials)
        max_frame = self._max_frame
        self._proto = ProtocolConnection("client", max_frame or DEFAULT_MAX_FRAME)
        self._server_error = None
        self._server_max_frame = DEFAULT_MAX_FRAME
        host, port = self._target
        context = self._tls_context
        sock = socket.create_connection(self._target, timeout=self.timeout)
        if context is not None:
            try:  # the TLS handshake runs here, within the timeout
                sock = context.wrap_socket(sock, server_hostname=_tls.server_name(host, self._server_hostname))
            except BaseException as exc:
                sock.close()
                _tls.note_handshake(exc, host, port)
                raise
        self._selector = selectors.DefaultSelector()
        self._opening = True
        self._sock = sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            self._selector.register(sock, _READ)
            self._events = _READ
            hello = t.hello_args(max_frame, self._client_name)
            if handshake.credentials is not None:
                hello["auth"] = handshake.hello_auth()
            result = self.result(self._send_request(Op.HELLO.value, hello))
            if result.get("version") != PROTOCOL_VERSION:
                raise UnsupportedVersion(f"server chose protocol version {result.get('version')!r}")
            final = handshake.after_hello(result.get("auth"))
            if final is not None:
                handshake.after_auth(self.result(self._send_request(Op.AUTH.value, final)))
            #: The user the broker authenticated this connection as (None without auth).
            self.user = handshake.user
            #: The server's ``hello`` reply.
            self.server_info = ServerInfo.from_wire(result)
        except BaseException as exc:
            if context is not None:
                _tls.note_handshake(exc, host, port)
            self._lose("the handshake failed")
            raise
        finally:
            self._opening = False
        self._server_max_frame = self.server_info.max_frame
        if max_frame is None:
            self._proto.max_frame = self.server_info.max_frame

    # --- lifecycle -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the client is closed for good: by ``close``, by a lost connection
        without ``reconnect``, or because it gave up reconnecting."""
        return self._closed_reason is not None

    @property
    def connected(self) -> bool:
        """True while a connection is up (with ``reconnect``, False between connections)."""
        return self._sock is not None

    @property
    def reconnects(self) -> int:
        """Connections made after the first one (0 without ``reconnect``)."""
        return self._reconnects

    @property
    def publishes_retried(self) -> int:
        """Publishes sent again after a lost connection (0 without ``reconnect``)."""
        return self._publishes_retried

    def close(self) -> None:
        """Close the client for good; results not yet received raise :class:`ConnectionClosed`."""
        if self._sock is not None:
            self._lose("connection closed by the client", for_good=True)
        elif self._closed_reason is None:
            self._end("connection closed by the client", ConnectionClosed("connection closed by the client"))

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _lose(self, reason: str, *, for_good: bool = False) -> ConnectionClosed:
        """The connection is gone for ``reason``: close it and fail the requests waiting
        for a reply on it; then, with ``reconnect``, wait to make the next one, else close
        for good. Returns the error to raise (the first loss's, if already lost)."""
        sock = self._sock
        if sock is None:
            return self._closed_error()
        if self._server_error is not None:
            reason = f"{reason} after {self._server_error}"
        error = ConnectionClosed(reason)
        error.__cause__ = self._server_error
        self._sock = None
        self._selector.close()
        sock.close()
        for rid in self._waiting:
            self._failed[rid] = error
        self._waiting.clear()
        self._reply_hooks.clear()
        self._lost_error = error
        if self._opening:
            pass  # a connection attempt failed: its caller decides what follows
        elif for_good or not self._will_reconnect:
            self._end(reason, error)
        else:
            self._pushes.targets.clear()
            for sub in list(self._subscriptions):
                sub._interrupted()
            self._attempt = 0
            self._schedule(error)
        return error

    def _end(self, reason: str, error: ConnectionClosed) -> None:
        """Closed for good: every subscription is told so."""
        self._closed_reason = reason
        self._lost_error = error
        self._pushes.lost(error)
        for sub in list(self._subscriptions):
            sub._on_lost(error)
        self._subscriptions.clear()

    def _closed_error(self) -> ConnectionClosed:
        """A new error like the last loss's (or the closing's)."""
        last = self._lost_error
        if last is None:
            return ConnectionClosed(self._closed_reason or "connection closed")
        exc = ConnectionClosed(last.message)
        exc.__cause__ = last.__cause__
        return exc

    # --- reconnecting ----------------------------------------------------------------

    @property
    def _will_reconnect(self) -> bool:
        return self._policy is not None and self._closed_reason is None

    def _schedule(self, error: BaseException) -> None:
        """Plan the next connection attempt after ``error``, or give up."""
        policy = self._policy
        assert policy is not None
        if policy.max_attempts is not None and self._attempt >= policy.max_attempts:
            attempts = policy.max_attempts
            reason = f"gave up reconnecting after {attempts} attempt{'s' * (attempts != 1)}: {error}"
            lost = ConnectionClosed(reason)
            lost.__cause__ = error
            self._end(reason, lost)
            return
        delay = policy.delay(self._attempt, random.random())
        self._attempt += 1
        self._retry_at = monotonic() + delay
        logger.info("lockgate: connection lost (%s); reconnecting in %.3f s", error, delay,
                    extra={"event": "reconnecting", "attempt": self._attempt})

    def _connected(self, deadline: float | None) -> None:
        """Return once a connection is up. With ``reconnect``, make it (waiting out the
        backoff; ``TimeoutError`` at ``deadline``) and resubscribe; raises
        :class:`ConnectionClosed` once the client is closed for good."""
        while self._sock is None:
            if self._closed_reason is not None:
                raise self._closed_error()
            wait = self._retry_at - monotonic()
            if wait > 0:
                if deadline is not None and monotonic() + wait > deadline:
                    sleep(max(0.0, deadline - monotonic()))
                    raise TimeoutError("timed out waiting to reconnect to the broker")
                sleep(wait)
            try:
                self._open()
            except (OSError, LockgateError) as exc:
                self._schedule(exc)
                continue
            self._attempt = 0
            self._reconnects += 1
            logger.info("lockgate: reconnected", extra={"event": "reconnected"})
            try:
                for sub in list(self._subscriptions):
                    sub._resubscribe()
            except ConnectionClosed:
                continue  # lost again (and the next attempt planned): try again
            except TimeoutError:
                self._lose("timed out waiting for a subscribe reply after reconnecting")

    def _typed_request(
        self, op: str, args: dict[str, Any], timeout: float | None | EllipsisType = ...
    ) -> dict[str, Any]:
        """What the typed methods send through: :meth:`request`, but with ``reconnect`` a
        publish (to a queue or a topic) gets dedup ids and is sent again after a lost
        connection."""
        policy = self._policy
        if policy is None or not policy.retry_publishes or not self._dedup_ids.prepare_retry(op, args):
            return self.request(op, args, timeout)
        self._connected(self._deadline(self.timeout))
        until = monotonic() + policy.publish_retry_s
        while True:
            try:
                return self.request(op, args, timeout)
            except ConnectionClosed:
                if not self._will_reconnect or monotonic() > until:
                    raise
                self._publishes_retried += 1

    # --- pipelining ----------------------------------------------------------------

    def submit(
        self, op: str, args: dict[str, Any], *, on_reply: Callable[[dict[str, Any]], None] | None = None
    ) -> int:
        """Send a request now; returns its id for :meth:`result`.

        ``on_reply`` (quick, non-raising) gets the result map as soon as the reply is
        read, before any frame after it is handled.
        """
        self._connected(self._deadline(self.timeout))
        return self._send_request(op, args, on_reply)

    def _send_request(
        self, op: str, args: dict[str, Any], on_reply: Callable[[dict[str, Any]], None] | None = None
    ) -> int:
        """Send on the connection that is up; returns the request id."""
        rid = self._next_id
        self._next_id = rid + 1
        data = t.checked_request(self._proto.encoder, rid, op, args, self._server_max_frame)
        self._waiting.add(rid)
        if on_reply is not None:
            self._reply_hooks[rid] = on_reply
        try:
            self._send(data)
        except BaseException:
            self._waiting.discard(rid)
            self._reply_hooks.pop(rid, None)
            self._failed.pop(rid, None)
            raise
        return rid

    def result(self, request_id: int, timeout: float | None | EllipsisType = ...) -> dict[str, Any]:
        """Block until request ``request_id`` is answered; returns its result map or raises
        its typed error. ``timeout`` defaults to the client's."""
        frame = self._done.pop(request_id, None)
        if frame is None:
            if request_id not in self._waiting:
                lost = self._failed.pop(request_id, None)
                if lost is not None:
                    raise _again(lost)
                raise KeyError(f"request {request_id} is not pending")
            deadline = self._deadline(self.timeout if isinstance(timeout, EllipsisType) else timeout)
            while (frame := self._done.pop(request_id, None)) is None:
                if request_id not in self._waiting:  # its connection was lost
                    raise _again(self._failed.pop(request_id))
                try:
                    while not self._read_available():
                        self._wait(_READ, deadline)
                except ConnectionClosed:
                    pass  # the loop raises this request's own error
        if type(frame) is Reply:
            return frame.result
        raise error_from_frame(frame)  # type: ignore[arg-type]

    def request(
        self, op: str, args: dict[str, Any], timeout: float | None | EllipsisType = ...
    ) -> dict[str, Any]:
        """Send one request and wait for its result (``submit`` + ``result``)."""
        return self.result(self.submit(op, args), timeout)

    def request_many(
        self, calls: Iterable[tuple[str, dict[str, Any]]], *, window: int = DEFAULT_WINDOW
    ) -> list[dict[str, Any] | LockgateError]:
        """Run ``(op, args)`` calls pipelined, at most ``window`` in flight.

        Returns one entry per call, in order: its result map, or the typed error it
        failed with (other calls are unaffected). A lost connection still raises.
        """
        out: list[dict[str, Any] | LockgateError] = []
        in_flight: deque[int] = deque()
        for op, args in calls:
            if len(in_flight) >= window:
                out.append(self._outcome(in_flight.popleft()))
            in_flight.append(self.submit(op, args))
        while in_flight:
            out.append(self._outcome(in_flight.popleft()))
        return out

    def _outcome(self, rid: int) -> dict[str, Any] | LockgateError:
        try:
            return self.result(rid)
        except ConnectionClosed:
            raise
        except LockgateError as exc:
            return exc

    # --- I/O -----------------------------------------------------------------------

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else monotonic() + timeout

    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            raise self._closed_error()
        return sock

    def _wait(self, events: int, deadline: float | None) -> int:
        if events != self._events:
            self._selector.modify(self._socket(), events)
            self._events = events
        remaining = None if deadline is None else max(0.0, deadline - monotonic())
        ready = self._selector.select(remaining)
        if not ready:
            raise TimeoutError("timed out waiting for the broker")
        return ready[0][1]

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = self._deadline(self.timeout)
        sock = self._socket()
        while True:
            try:
                view = view[sock.send(view):]
            except _WOULD_BLOCK:
                pass
            except OSError as exc:
                raise self._lose(f"connection lost while sending: {exc}") from exc
            if not view:
                return
            try:
                ready = self._wait(_READ | _WRITE, deadline)
            except TimeoutError:
                self._lose("timed out while sending")
                raise
            if ready & _READ:
                self._read_available()

    def _read_available(self) -> bool:
        """Read and dispatch whatever has arrived, without blocking; False if nothing had."""
        try:
            data = self._socket().recv(_RECEIVE_BYTES)
        except _WOULD_BLOCK:
            return False
        except OSError as exc:
            raise self._lose(f"connection lost: {exc}") from exc
        if not data:
            raise self._lose("connection closed by the server")
        proto = self._proto
        proto.receive_data(data)
        try:
            while (frame := proto.next_frame()) is not NEED_DATA:
                self._dispatch(frame)
        except ProtocolError as exc:
            raise self._lose(f"unreadable data from the server: {exc.code.name}: {exc.message}") from exc
        return True

    def _poll(self, deadline: float | None) -> None:
        """Read and dispatch what arrives, waiting for it until ``deadline``
        (``TimeoutError`` then); for subscriptions waiting for pushes. With ``reconnect``
        a lost connection is made again here (and its subscriptions with it)."""
        if self._sock is None:
            self._connected(deadline)
            return  # a new connection: the caller looks again before waiting
        try:
            if not self._read_available():
                self._wait(_READ, deadline)
        except ConnectionClosed:
            if not self._will_reconnect:
                raise

    def _dispatch(self, frame: Any) -> None:
        if type(frame) is Push:
            self._pushes.dispatch(frame)
        elif frame.id in self._waiting:
            self._waiting.discard(frame.id)
            self._done[frame.id] = frame
            if self._reply_hooks:
                hook = self._reply_hooks.pop(frame.id, None)
                if hook is not None and type(frame) is Reply:
                    hook(frame.result)
        elif frame.id is None and frame.code in FATAL_CODES:
            self._server_error = error_from_frame(frame)

    def _unrouted_push(self, push: Push) -> None:
        if self.on_push is not None:
            self.on_push(push)
        else:
            self.unhandled_pushes += 1

    # --- operations ----------------------------------------------------------------

    def _pages(self, op: str, args: dict[str, Any], field: str) -> dict[str, Any]:
        """A paged list op's every page as one result map (``client/ops.py``)."""
        result, items = ops.merge_pages(self.request(op, args), field)
        page = result
        while page.get("next") is not None:
            page = self.request(op, {**args, "after": page["next"]})
            items += page[field]
        return result

    # The typed operations, one line each, all from the op table in client/ops.py.

    ping = ops.ping.sync_method()
    broker_info = ops.broker_info.sync_method()
    create_queue = ops.create_queue.sync_method()
    delete_queue = ops.delete_queue.sync_method()
    list_queues = ops.list_queues.sync_method()
    queue_stats = ops.queue_stats.sync_method()
    publish = ops.publish.sync_method()
    publish_batch = ops.publish_batch.sync_method()
    consume = ops.consume.sync_method()
    consume_group = ops.consume_group.sync_method()
    ack = ops.ack.sync_method()
    nack = ops.nack.sync_method()
    purge_queue = ops.purge_queue.sync_method()
    peek = ops.peek.sync_method()
    message_status = ops.message_status.sync_method()
    extend = ops.extend.sync_method()
    reject = ops.reject.sync_method()
    redrive = ops.redrive.sync_method()
    create_topic = ops.create_topic.sync_method()
    delete_topic = ops.delete_topic.sync_method()
    list_topics = ops.list_topics.sync_method()
    topic_stats = ops.topic_stats.sync_method()
    publish_topic = ops.publish_topic.sync_method()
    create_group = ops.create_group.sync_method()
    delete_group = ops.delete_group.sync_method()
    group_stats = ops.group_stats.sync_method()
    seek_group = ops.seek_group.sync_method()
    txn = ops.txn.sync_method()

    def transaction(self) -> Transaction:
        """Steps to commit as one ``txn``: ``.ack(...)``, ``.publish(...)``,
        ``.publish_topic(...)``, then ``commit()``."""
        return Transaction(self)

    def subscribe(
        self,
        queue: str | None = None,
        *,
        credit: int = DEFAULT_CREDIT,
        visibility_ms: int | None = None,
        auto_ack: bool = False,
        queues: Iterable[str] | None = None,
        prefix: str | None = None,
        idle_timeout: float | None = None,
    ) -> SyncSubscription:
        """A push subscription to ``queue``: ``with client.subscribe(queue) as sub:
        for msg in sub: with msg: ...`` (see :mod:`client.sync_subscription`).

        Instead of one queue it may read a queue group (SPEC §8.15): ``queues=[...]`` or
        ``prefix="..."``; each message's ``queue`` says where it came from.

        At most ``credit`` (1..``max_batch``) pushed messages are unacked at once; each is
        leased for ``visibility_ms`` (default: the queue's). With ``auto_ack`` the broker
        deletes each message as it pushes it (at most once). The iteration waits for the
        next message without a limit, or raises ``TimeoutError`` after ``idle_timeout``
        seconds without one. Subscribing happens when the ``with`` block is entered.
        """
        return SyncSubscription(self, queue, credit, visibility_ms, auto_ack, idle_timeout, queues, prefix)

    def publish_many(
        self,
        queue: str,
        messages: Iterable[Bytes | Message],
        *,
        batch_size: int | None = None,
        window: int = 1,
    ) -> list[PublishResult]:
        """Publish any number of messages as batches; returns one result per batch.

        Batches hold at most ``batch_size`` (default ``server_info.max_batch``) messages
        and fit the server's frame limit. With ``window`` > 1 that many batches are in
        flight at once, and the server may apply them in any order. Each batch is atomic,
        the whole is not: after a failed batch no new batch is sent, the batches already
        sent stay published, and the first error is raised. With ``reconnect`` every
        message gets a dedup id and a batch whose connection is lost is sent again (see
        the module docstring).
        """
        limit = batch_size or self.server_info.max_batch
        budget = self._server_max_frame - _FRAME_SLACK
        policy = self._policy
        retry = policy is not None and policy.retry_publishes
        dedup_room = 24 if retry else 0  # a 16-byte id and the fields before it

        def batches() -> Iterable[dict[str, Any]]:
            batch: list[list[Any]] = []
            size = 0
            for entry in t.message_entries(messages):
                key = entry[1] if len(entry) > 1 else None
                n = len(entry[0]) + (0 if key is None else len(key)) + 24 + dedup_room  # + msgpack overhead
                if batch and (len(batch) >= limit or size + n > budget):
                    yield {"queue": queue, "messages": batch}
                    batch, size = [], 0
                batch.append(entry)
                size += n
            if batch:
                yield {"queue": queue, "messages": batch}

        out: list[PublishResult] = []
        error: LockgateError | None = None
        #: (request id, args, when first sent)
        in_flight: deque[tuple[int, dict[str, Any], float]] = deque()

        def may_retry(first: float) -> bool:
            return (retry and self._will_reconnect and policy is not None
                    and monotonic() <= first + policy.publish_retry_s)

        def send(args: dict[str, Any], first: float) -> int:
            while True:
                try:
                    return self.submit(_PUBLISH, args)
                except ConnectionClosed:
                    if not may_retry(first):
                        raise
                    self._publishes_retried += 1

        def settle(rid: int, args: dict[str, Any], first: float) -> None:
            nonlocal error
            while True:
                try:
                    result = self.result(rid)
                except ConnectionClosed:
                    if not may_retry(first):
                        raise
                    self._publishes_retried += 1
                    rid = send(args, first)
                    continue
                except LockgateError as exc:
                    error = error or exc
                    return
                out.append(t.publish_result(result))
                return

        for args in batches():
            if len(in_flight) >= window:
                settle(*in_flight.popleft())
            if error is not None:
                break
            if retry:
                self._dedup_ids.fill(args["messages"])
            first = monotonic()
            in_flight.append((send(args, first), args, first))
        while in_flight:
            settle(*in_flight.popleft())
        if error is not None:
            raise error
        return out
