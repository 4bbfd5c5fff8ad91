"""Reconnecting with backoff: the policy, and the task that keeps a client connected.

    async with Client.connect(addr, reconnect=True) as client:   # or reconnect=Reconnect(...)
        ...

What happens when the connection is lost (SPEC.md §3.3 says why the outcome of a request
in flight is unknown then):

- **Requests in flight fail** with :class:`~client.errors.ConnectionClosed`, except
  publishes (below). A ``consume``, ``ack``, ``nack``, ``txn`` or any other request whose
  reply was lost may or may not have taken effect; retrying it is the caller's choice.
- **Publishes are retried.** With ``retry_publishes`` (the default) the typed
  ``publish``, ``publish_batch`` and ``publish_topic`` give every message without a
  dedup id one of their own (16 bytes: 8 random per client, then a counter) before the
  first send, so that every message carries one; a publish whose connection is lost
  before its reply is sent again, with the same dedup ids, on the next connection. The
  broker stores a message whose dedup id it has already seen within the queue's or
  topic's dedup window only once (SPEC.md §8.9, §5.23), so a retry never duplicates
  (its reply names the messages stored before the loss in ``duplicates``). A publish is
  retried only within ``publish_retry_s`` (120 s) of its first send, which keeps the
  retry inside the default 5-minute dedup window; past that, or on a queue or topic
  whose ``dedup_window_ms`` is 0 (then it could duplicate), raise ``ConnectionClosed``
  as any request does. ``txn`` and ``client.request("publish", ...)`` are not retried.
  Generated dedup ids take room in the queue's or topic's dedup memory (at most
  1,000,000 ids each; one taking more than about 3,300 publishes a second outlives the
  oldest within the window).
- **Requests made while disconnected wait** for the next connection (nothing was sent,
  so nothing is unknown) and are then sent; bound them with ``anyio.fail_after`` if
  waiting is not acceptable.
- **Reconnecting.** The client tries again after ``initial_delay_s``, then after delays
  growing by ``multiplier`` up to ``max_delay_s``, each shortened at random by up to
  ``jitter`` of itself (so that many clients do not reconnect in step); a connection that
  completes ``hello`` resets the delay. After ``max_attempts`` failed attempts in a row
  (``None``: never) it gives up: waiting and later requests raise ``ConnectionClosed``
  and the client stays closed.
- **Subscriptions resubscribe** on the new connection with their settings, before the
  requests that waited are sent. Messages that were pushed but not handed out are
  forgotten (the broker released them when the connection went); messages handed out
  and not yet settled may be delivered again, and their ack reports them ``missing``.
  A subscription whose queue was deleted meanwhile ends (``end_reason`` is
  ``"queue_deleted"``).
- **The first connection** is not retried: ``Client.connect`` raises ``OSError`` (or the
  handshake's error) as it does without ``reconnect``.
"""
from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from .backoff import DedupIds, Reconnect
from .errors import ConnectionClosed, LockgateError

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager

    from .api import Client
    from .connection import Connection

logger = logging.getLogger("lockgate.client")

class Reconnector:
    """Keeps one :class:`~client.api.Client` connected (``run`` is its task) and sends
    its requests on whichever connection is up."""

    def __init__(
        self,
        client: Client,
        policy: Reconnect,
        open_connection: Callable[[], AbstractAsyncContextManager[Connection]],
    ) -> None:
        self.client = client
        self.policy = policy
        self._open = open_connection
        #: Set while a connection is up (and once the client gave up, to wake waiters).
        self._up = anyio.Event()
        self._closing = False
        self._gave_up: ConnectionClosed | None = None
        self.dedup_ids = DedupIds()
        #: Connections made after the first, and publishes sent again after a loss.
        self.reconnects = 0
        self.publishes_retried = 0
        #: Called (quick, non-raising) each time a connection is up (the first one too).
        self.on_up: Callable[[], None] | None = None

    @property
    def will_reconnect(self) -> bool:
        return not self._closing and self._gave_up is None

    @property
    def connected(self) -> bool:
        return self._up.is_set() and self._gave_up is None and not self.client.connection.closed

    async def connection(self) -> Connection:
        """The connection that is up, waiting while the next is being made; raises
        :class:`ConnectionClosed` once the client is closed or gave up."""
        while True:
            if self._gave_up is not None:
                raise ConnectionClosed(self._gave_up.message) from self._gave_up.__cause__
            if self._closing:
                raise ConnectionClosed("the client is closed")
            if self._up.is_set():
                conn = self.client.connection
                if not conn.closed:
                    return conn
            await self._up.wait()

    async def request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send on the connection that is up (waiting for one); not retried."""
        conn = self.client.connection
        if not (self._up.is_set() and not conn.closed):
            conn = await self.connection()
        return await conn.request(op, args)

    async def typed_request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """:meth:`request`, but a publish (to a queue or a topic) gets dedup ids and is
        retried after a loss."""
        if not self.policy.retry_publishes or not self.dedup_ids.prepare_retry(op, args):
            return await self.request(op, args)
        deadline: float | None = None
        while True:
            conn = self.client.connection
            if not (self._up.is_set() and not conn.closed):
                conn = await self.connection()
            if deadline is None:
                deadline = anyio.current_time() + self.policy.publish_retry_s
            try:
                return await conn.request(op, args)
            except ConnectionClosed:
                if not self.will_reconnect or anyio.current_time() > deadline:
                    raise
                self.publishes_retried += 1

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, and connect again after each loss, until the client closes or the
        policy gives up. The first connection's failure is raised to the caller of
        ``task_group.start``."""
        client, policy = self.client, self.policy
        started = False
        attempt = 0
        error: BaseException | None = None
        while True:
            try:
                async with self._open() as conn:
                    attempt = 0
                    conn.on_close = self._lost
                    client._attach(conn)
                    if started:
                        self.reconnects += 1
                        logger.info("lockgate: reconnected", extra={"event": "reconnected"})
                        await client._restore(conn)
                    if not conn.closed:
                        self._up.set()
                        if self.on_up is not None:
                            self.on_up()
                    if not started:
                        started = True
                        task_status.started()
                    await conn.wait_closed()
                    error = ConnectionClosed(conn.close_reason or "connection closed")
            except (OSError, LockgateError) as exc:
                if not started:
                    raise
                error = exc
            if self._closing:
                return
            if policy.max_attempts is not None and attempt >= policy.max_attempts:
                self.give_up(error)
                return
            delay = policy.delay(attempt, random.random())
            attempt += 1
            logger.info("lockgate: connection lost (%s); reconnecting in %.3f s", error or "closed", delay,
                        extra={"event": "reconnecting", "attempt": attempt})
            await anyio.sleep(delay)

    def _lost(self, error: ConnectionClosed) -> None:
        """The connection closed (from its reader or a request: quick, non-raising)."""
        if self._up.is_set() and self._gave_up is None:
            self._up = anyio.Event()
        if self.will_reconnect:
            self.client._interrupted()
        else:
            self.client._pushes.lost(error)

    def give_up(self, error: BaseException | None, reason: str | None = None) -> None:
        """Stop: waiting and later requests raise ``ConnectionClosed``."""
        if self._gave_up is not None:
            return
        if reason is None:
            attempts = self.policy.max_attempts
            reason = f"gave up reconnecting after {attempts} attempt{'s' * (attempts != 1)}"
            if error is not None:
                reason += f": {error}"
        exc = ConnectionClosed(reason)
        exc.__cause__ = error
        self._gave_up = exc
        self._up.set()
        self.client._pushes.lost(exc)
        for sub in list(self.client._subscriptions):
            sub._on_lost(exc)

    async def aclose(self) -> None:
        """Close the client for good: the connection, and every wait for one."""
        self._closing = True
        try:
            conn: Connection | None = getattr(self.client, "connection", None)
            if conn is not None:
                await conn.aclose()
        finally:
            self.give_up(None, "the client is closed")


__all__ = ["DedupIds", "Reconnect", "Reconnector"]  # the first two from client.backoff
