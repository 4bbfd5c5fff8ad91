"""The typed async client.

    async with Client.connect("127.0.0.1:7878") as client:
        await client.create_queue("jobs")
        await client.publish("jobs", b"hello")
        for d in await client.consume("jobs", max=10, wait_ms=1000):
            ...
        await client.ack("jobs", [d.id])

        async with client.subscribe("jobs", credit=64) as sub:   # pushed, no polling
            async for msg in sub:
                async with msg:      # ack on success, nack (with the error) on an exception
                    ...

It runs on trio and on asyncio alike (it is written against anyio): the same code works
under ``trio.run(main)`` and ``asyncio.run(main())``.

``Client.connect`` is an async context manager (not awaitable): the connection's reader
task lives in a task group that the ``async with`` block scopes. One ``Client`` may be
used by many tasks at once; their requests are pipelined on the single connection. Failed
requests raise the :mod:`client.errors` subclass for their error code; a lost connection
raises :class:`~client.errors.ConnectionClosed`. Bodies and keys accept ``bytes`` or
``str`` (sent as UTF-8). There are no built-in timeouts: use ``anyio.fail_after`` (or
``trio.fail_after``, ``asyncio.timeout``). An idle connection pings the broker now and
then (``keepalive_s``, :mod:`client.connection`) so the broker's idle timeout does not
close it.

``reconnect=True`` (or a :class:`~client.reconnect.Reconnect` policy) makes a lost
connection come back by itself, with backoff; publishes in flight are sent again with
dedup ids, subscriptions resubscribe, and requests made meanwhile wait (exactly what is
retried and what is not: :mod:`client.reconnect`). ``spill=Spill(path)`` adds a bounded
local file that holds ``publish_or_spill`` messages while the broker is unreachable
(:mod:`client.spill`).

The client routes the PUSH frames of its subscriptions itself (:mod:`client.subscription`);
``on_push`` gets every other push.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from protocol import DEFAULT_CREDIT, Op, Push

from . import ops
from . import types as t
from .auth import Credentials
from .connection import DEFAULT_CLIENT_NAME, DEFAULT_KEEPALIVE_S, Connection, PushHandler, open_connection
from .errors import (
    ConnectionClosed,
    DiskFull,
    LockgateError,
    QueueFull,
    ShuttingDown,
    StorageError,
)
from .pushes import PushRouter
from .reconnect import Reconnect, Reconnector
from .spill import Spill, SpillFile
from .subscription import Subscription
from .tls import TlsOption
from .tls import resolve as resolve_tls
from .types import Bytes, Message, ServerInfo, Transaction

logger = logging.getLogger("lockgate.client")

_PUBLISH = Op.PUBLISH.value
#: Refusals of a spilled batch that may pass: the batch is sent again after a backoff.
_TRANSIENT = (ConnectionClosed, DiskFull, QueueFull, ShuttingDown, StorageError)
#: Room left for the request envelope when the spill packs a batch.
_FRAME_SLACK = 4096


class Client:
    """Typed operations over one pipelined :class:`~client.connection.Connection` (or,
    with ``reconnect``, over whichever connection is up)."""

    def __init__(self, connection: Connection) -> None:
        """A client over ``connection`` (without reconnect); :meth:`connect` is the usual way."""
        self._setup(connection.on_push)
        self._attach(connection)
        connection.on_close = self._pushes.lost
        #: What the typed methods send through (with ``reconnect``: a retrying request).
        self._request: Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]] = connection.request

    def _setup(self, on_push: PushHandler | None) -> None:
        self._user_push = on_push
        self._pushes = PushRouter(self._unrouted)
        #: Subscriptions open on this client (resubscribed after a reconnect).
        self._subscriptions: set[Subscription] = set()
        self._reconnector: Reconnector | None = None
        self._spill: SpillFile | None = None
        self._spill_lock: anyio.Lock | None = None
        self._spill_wake: anyio.Event | None = None
        self._spill_drained: anyio.Event | None = None
        #: Spilled messages the broker refused for good (dropped from the spill file).
        self.spill_dropped = 0

    def _attach(self, connection: Connection) -> None:
        #: The connection requests go on (with ``reconnect``: the latest one).
        self.connection = connection
        connection.on_push = self._pushes.dispatch

    def _unrouted(self, push: Push) -> None:
        if self._user_push is not None:
            self._user_push(push)
        else:
            self.connection.unhandled_pushes += 1

    @classmethod
    def connect(
        cls,
        addr: str | tuple[str, int] | None = None,
        port: int | None = None,
        *,
        max_frame: int | None = None,
        client_name: str = DEFAULT_CLIENT_NAME,
        on_push: PushHandler | None = None,
        keepalive_s: float | None = DEFAULT_KEEPALIVE_S,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        reconnect: bool | Reconnect = False,
        spill: Spill | None = None,
        tls: TlsOption = None,
        server_hostname: str | None = None,
    ) -> AbstractAsyncContextManager[Client]:
        """Connect and handshake: ``async with Client.connect(addr) as client``.

        ``addr`` is ``"host:port"``, ``(host, port)``, or a host with ``port``; when
        omitted, ``$LOCKGATE_ADDR`` or ``127.0.0.1:7878``. ``max_frame`` (largest frame
        this client accepts) defaults to the server's own limit. ``on_push`` gets the
        PUSH frames that are not for this client's subscriptions. ``keepalive_s``
        (``None``: off) is how often an idle connection checks in with a ``ping``.
        ``user`` and ``password`` (SCRAM-SHA-256; the client checks the broker's
        signature), or ``token``, authenticate to a broker that requires it
        (:mod:`client.auth`: ``AuthFailed`` if that fails, ``Unauthenticated`` if it is
        required and none were given); every reconnect authenticates again.
        ``reconnect`` (``True`` or a :class:`~client.reconnect.Reconnect`) reconnects
        after a loss (:mod:`client.reconnect`); ``spill`` (needs ``reconnect``) is the
        file ``publish_or_spill`` keeps messages in while the broker is unreachable
        (:mod:`client.spill`). ``tls`` (``True``, or an ``ssl.SSLContext`` such as
        :func:`client.tls.tls_context` makes, with a CA or a client certificate) connects
        in TLS and verifies the broker's certificate against ``server_hostname`` (default:
        the host of ``addr``); every reconnect does the same (:mod:`client.tls`). The
        first connection is not retried: ``OSError`` if the broker cannot be reached
        (``ssl.SSLCertVerificationError`` if its certificate does not verify). The
        connection closes when the block exits.
        """
        host, port_ = t.parse_addr(addr, port)
        credentials = Credentials.of(user, password, token)
        if keepalive_s is not None and not keepalive_s > 0:
            raise ValueError(f"keepalive_s must be positive or None, not {keepalive_s!r}")
        policy = Reconnect() if reconnect is True else (reconnect or None)
        if spill is not None and policy is None:
            raise ValueError("spill= needs reconnect=: spilled messages are sent once the client reconnects")
        opener = partial(open_connection, host, port_, max_frame=max_frame, client_name=client_name,
                         keepalive_s=keepalive_s, credentials=credentials, tls=resolve_tls(tls),
                         server_hostname=server_hostname)
        if policy is None:
            return _connect_once(cls, opener, on_push)
        return _Connecting(cls, opener, on_push, policy, spill)

    @property
    def info(self) -> ServerInfo:
        """What the server announced in ``hello`` (limits, version, shard map)."""
        return self.connection.server_info

    @property
    def reconnects(self) -> int:
        """Connections made after the first one (0 without ``reconnect``)."""
        return 0 if self._reconnector is None else self._reconnector.reconnects

    @property
    def publishes_retried(self) -> int:
        """Publishes sent again after a lost connection (0 without ``reconnect``)."""
        return 0 if self._reconnector is None else self._reconnector.publishes_retried

    async def aclose(self) -> None:
        """Close the connection now (the ``async with`` block does this on exit); with
        ``reconnect``, for good."""
        if self._reconnector is not None:
            await self._reconnector.aclose()
        else:
            await self.connection.aclose()

    async def request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send any operation with raw ``args``; returns the raw result map or raises its
        typed error. Never retried (with ``reconnect`` it waits for a connection)."""
        if self._reconnector is not None:
            return await self._reconnector.request(op, args)
        return await self._request(op, args)

    async def _pages(self, op: str, args: dict[str, Any], field: str) -> dict[str, Any]:
        """A paged list op's every page as one result map (``client/ops.py``)."""
        result, items = ops.merge_pages(await self._request(op, args), field)
        page = result
        while page.get("next") is not None:
            page = await self._request(op, {**args, "after": page["next"]})
            items += page[field]
        return result

    # The typed operations, one line each, all from the op table in client/ops.py.
    ping = ops.ping.async_method()
    broker_info = ops.broker_info.async_method()
    create_queue = ops.create_queue.async_method()
    delete_queue = ops.delete_queue.async_method()
    list_queues = ops.list_queues.async_method()
    queue_stats = ops.queue_stats.async_method()
    publish = ops.publish.async_method()
    publish_batch = ops.publish_batch.async_method()
    consume = ops.consume.async_method()
    consume_group = ops.consume_group.async_method()
    ack = ops.ack.async_method()
    nack = ops.nack.async_method()
    purge_queue = ops.purge_queue.async_method()
    peek = ops.peek.async_method()
    message_status = ops.message_status.async_method()
    extend = ops.extend.async_method()
    reject = ops.reject.async_method()
    redrive = ops.redrive.async_method()
    create_topic = ops.create_topic.async_method()
    delete_topic = ops.delete_topic.async_method()
    list_topics = ops.list_topics.async_method()
    topic_stats = ops.topic_stats.async_method()
    publish_topic = ops.publish_topic.async_method()
    create_group = ops.create_group.async_method()
    delete_group = ops.delete_group.async_method()
    group_stats = ops.group_stats.async_method()
    seek_group = ops.seek_group.async_method()
    txn = ops.txn.async_method()

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
    ) -> Subscription:
        """A push subscription to ``queue``: ``async with client.subscribe(queue) as sub:
        async for msg in sub: async with msg: ...`` (see :mod:`client.subscription`).

        Instead of one queue it may read a queue group (SPEC §8.15): ``queues=[...]`` or
        ``prefix="..."``; each message's ``queue`` says where it came from.

        At most ``credit`` (1..``max_batch``) pushed messages are unacked at once; each is
        leased for ``visibility_ms`` (default: the queue's). With ``auto_ack`` the broker
        deletes each message as it pushes it (at most once) and ``async with msg`` does
        nothing. Subscribing happens when the ``async with`` block is entered.
        """
        return Subscription(self, queue, credit, visibility_ms, auto_ack, queues, prefix)

    # --- the spill file (client/spill.py) ------------------------------------------------

    @property
    def spill_pending(self) -> int:
        """Messages in the spill file that the broker has not confirmed yet."""
        return 0 if self._spill is None else len(self._spill.pending)

    async def publish_or_spill(self, queue: str, message: Bytes | Message) -> int | None:
        """Publish one message (a body or a :class:`~client.types.Message`) now if the
        broker is reachable and the spill file is empty, and return its id; otherwise keep
        it in the spill file, to be sent in order once the broker is back, and return
        ``None``. Raises :class:`~client.spill.SpillFull` when it had to be kept and the
        file had no room. Needs ``Client.connect(..., spill=Spill(...))``; see
        :mod:`client.spill` for what may be lost and when."""
        spill, rc = self._spill, self._reconnector
        if spill is None or rc is None:
            raise RuntimeError("publish_or_spill needs Client.connect(..., reconnect=True, spill=Spill(path))")
        entry = t.message_entries([message])[0]
        rc.dedup_ids.fill([entry])
        if not spill.pending and rc.connected:
            try:
                return t.published_id(await self.connection.request(_PUBLISH, {"queue": queue, "messages": [entry]}))
            except ConnectionClosed:
                pass  # outcome unknown: spilled with its dedup id, a resend stores nothing twice
        await self._spill_io(spill.append, queue, entry)
        self._wake_spill()
        return None

    async def drain_spill(self) -> None:
        """Wait until the spill file is empty (everything in it confirmed or dropped)."""
        while self._spill is not None and self._spill.pending:
            assert self._spill_drained is not None
            if self._spill_drained.is_set():
                self._spill_drained = anyio.Event()
            await self._spill_drained.wait()

    def _wake_spill(self) -> None:
        if self._spill_wake is not None:
            self._spill_wake.set()

    async def _spill_io(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._spill_lock is not None
        async with self._spill_lock:
            return await anyio.to_thread.run_sync(fn, *args)

    async def _drain_spill(self) -> None:
        """Send the spill file's messages in order, a batch at a time (client/spill.py)."""
        import random

        spill, rc, lock = self._spill, self._reconnector, self._spill_lock
        assert spill is not None and rc is not None and lock is not None
        attempt = 0
        singles = 0  # after a refusal for good: messages to send one by one
        while True:
            if not spill.pending:
                if self._spill_drained is not None:
                    self._spill_drained.set()
                self._spill_wake = anyio.Event()
                if not spill.pending:
                    await self._spill_wake.wait()
                continue
            try:
                conn = await rc.connection()
            except ConnectionClosed:
                return  # the client is closing: what is left stays in the file
            async with lock:
                batch = spill.batch(1 if singles else conn.server_info.max_batch,
                                    conn.server_info.max_frame - _FRAME_SLACK)
            queue = batch[0].queue
            try:
                await conn.request(_PUBLISH, {"queue": queue, "messages": [p.entry for p in batch]})
            except _TRANSIENT as exc:
                if not isinstance(exc, ConnectionClosed):
                    await anyio.sleep(rc.policy.delay(attempt, random.random()))
                    attempt += 1
                continue
            except LockgateError as exc:
                if len(batch) > 1:
                    singles = len(batch)
                    continue
                self.spill_dropped += 1
                logger.warning("lockgate: dropped a spilled message to %s: %s", queue, exc,
                               extra={"event": "spill_dropped", "queue": queue, "error": str(exc)})
            attempt = 0
            singles = max(0, singles - len(batch))
            await self._spill_io(spill.confirm, len(batch))

    # --- reconnect (client/reconnect.py) -------------------------------------------------

    async def _connected(self) -> Connection:
        """The connection to send on; with ``reconnect`` it waits for one."""
        if self._reconnector is not None:
            return await self._reconnector.connection()
        return self.connection

    @property
    def _will_reconnect(self) -> bool:
        return self._reconnector is not None and self._reconnector.will_reconnect

    def _interrupted(self) -> None:
        """The connection is gone and another will be made: subscriptions wait for it."""
        self._pushes.targets.clear()
        for sub in list(self._subscriptions):
            sub._interrupted()

    async def _restore(self, conn: Connection) -> None:
        """A new connection is up: resubscribe (raises ``ConnectionClosed`` if it goes again)."""
        for sub in list(self._subscriptions):
            await sub._resubscribe(conn)


@asynccontextmanager
async def _connect_once(
    cls: type[Client], opener: Callable[..., AbstractAsyncContextManager[Connection]], on_push: PushHandler | None
) -> AsyncIterator[Client]:
    async with opener(on_push=on_push) as conn:
        yield cls(conn)


class _Connecting:
    """``Client.connect(..., reconnect=...)``: the client with its reconnect task (and the
    spill file's drain task) in a task group that the ``async with`` block scopes."""

    def __init__(
        self,
        cls: type[Client],
        opener: Callable[[], AbstractAsyncContextManager[Connection]],
        on_push: PushHandler | None,
        policy: Reconnect,
        spill: Spill | None,
    ) -> None:
        self._cls = cls
        self._opener = opener
        self._on_push = on_push
        self._policy = policy
        self._spill = spill
        self._client: Client | None = None
        self._tasks: TaskGroup | None = None

    async def __aenter__(self) -> Client:
        client = self._cls.__new__(self._cls)
        client._setup(self._on_push)
        rc = client._reconnector = Reconnector(client, self._policy, self._opener)
        client._request = rc.typed_request
        self._client = client
        self._tasks = anyio.create_task_group()
        tasks = await self._tasks.__aenter__()
        try:
            if self._spill is not None:
                client._spill = await anyio.to_thread.run_sync(SpillFile, self._spill)
                client._spill_lock = anyio.Lock()
                client._spill_wake = anyio.Event()
                client._spill_drained = anyio.Event()
                rc.on_up = client._wake_spill
            await tasks.start(rc.run)
            if client._spill is not None:
                tasks.start_soon(client._drain_spill)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return client

    async def __aexit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        client, tasks = self._client, self._tasks
        assert client is not None and tasks is not None and client._reconnector is not None
        try:
            with anyio.CancelScope(shield=True):
                await client._reconnector.aclose()
            tasks.cancel_scope.cancel()
            try:
                return bool(await tasks.__aexit__(etype, exc, tb))
            except BaseExceptionGroup as group:
                # The tasks never raise, so a group holding only the body's own exception
                # is that exception: let it propagate unwrapped.
                if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                    return False
                raise
        finally:
            if client._spill is not None:
                client._spill.close()
