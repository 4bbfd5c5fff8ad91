"""Push subscriptions of the async client (SPEC.md §5.17, §5.18)::

    async with client.subscribe("jobs", credit=64) as sub:
        async for msg in sub:
            async with msg:          # acks on success; nacks with the error and re-raises
                await handle(msg.body)

How it works and what it promises:

- Entering sends ``subscribe``; the subscription is registered with the client's push
  router from the reader task the moment the reply is read, so the pushes that follow it
  (SPEC.md §3.2: never before it) all land in its buffer.
- **Buffer.** Pushed messages wait in a buffer until the iteration takes them. Without
  ``auto_ack`` the server pushes at most ``credit`` messages that are not acked, so the
  buffer never holds more. With ``auto_ack`` nothing stays unacked and credit only bounds
  one push, so once ``credit`` messages are buffered the connection stops reading until
  the iteration takes one, except while a request on it waits for its reply (a consumer
  that calls the broker from its loop is never starved). TCP then holds the broker back.
- **Leaving** the ``async with`` (normally, by ``break``, an exception or a
  cancellation) sends ``unsubscribe``; after its reply no push for it comes. Messages
  still in the buffer, which the iteration never handed out, are then given back with
  ``nack(returned=True)``: ready again at once, whatever the queue's retry backoff, and
  that delivery does not count as an attempt. With ``auto_ack`` they were deleted by the
  server as they were pushed: they are lost, as at-most-once allows. Messages handed out
  and not settled stay leased: settle them (by id, on any connection) or their leases
  end. This cleanup is shielded from cancellation and bounded by
  :data:`CLOSE_TIMEOUT_S`.
- **Ends.** A ``subscription_end`` push (its queue was deleted) ends the iteration
  (``StopAsyncIteration``); ``end_reason`` says why, and the buffered messages are
  dropped (their queue is gone). A lost connection makes the iteration raise
  :class:`~client.errors.ConnectionClosed` (the broker releases the unacked messages),
  unless the client reconnects (``reconnect=``, :mod:`client.reconnect`): then the
  buffer is dropped, the iteration waits, and the subscription is made again on the new
  connection with the same settings (a queue deleted meanwhile ends it, ``end_reason``
  ``"queue_deleted"``); it raises only once the client gives up.
- **Messages.** ``async with msg`` (or ``msg.process(...)``) settles it the way aio-pika's
  ``message.process()`` does: ack on success; on an exception nack with the exception's
  text (``"TypeName: message"``, cut to the server's 1024 bytes) as the message's last
  error, then re-raise, unless ``process(reraise=False)``. A cancellation (or other
  ``BaseException``) nacks without an error text and always propagates. A message
  settled inside the block is left as it is. With ``auto_ack`` the block does nothing.
  When the client reconnects (``reconnect=``), an ack lost with its connection does not
  raise from the block: its outcome is unknown, and if it did not reach the broker the
  message is delivered again (at least once).
  A message nacked while its subscription is open is ready again and may be pushed
  straight back to it; if the iteration then ends (the exception propagated), it is
  given back from the buffer with ``returned=True``, so that push costs no attempt.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from protocol import Op

from . import ops
from .errors import ConnectionClosed, InvalidArgument, LockgateError, QueueNotFound
from .pushes import IncomingBase, error_text, ids_by_queue, target_name, truncate_error
from .types import AckResult, ExtendResult, NackResult, RejectResult

if TYPE_CHECKING:
    from .api import Client
    from .connection import Connection

#: Longest a subscription's cleanup (``unsubscribe`` and the nack of its buffer) may take
#: once it runs shielded from cancellation; past it the subscription is dropped locally.
CLOSE_TIMEOUT_S = 10.0

_NEW, _OPEN, _CLOSING, _CLOSED = range(4)


class IncomingMessage(IncomingBase):
    """A message pushed to a :class:`Subscription` (fields in :class:`~client.pushes.IncomingBase`).

    ``async with msg:`` acks it on success and nacks it on an exception (see the module
    docstring); the methods settle it explicitly. Each may be called once per message
    (``extend`` any number of times); a second settle raises ``RuntimeError``.
    """

    __slots__ = ("subscription",)

    def __init__(self, subscription: Subscription, row: list[Any], queue: str | None = None) -> None:
        super().__init__(queue or subscription.queue, row, subscription.auto_ack)
        #: The subscription it was pushed to.
        self.subscription = subscription

    async def ack(self) -> AckResult:
        """Delete it: processing succeeded."""
        self._claim("acked")
        try:
            return await self.subscription.client.ack(self.queue, [self.id])
        except BaseException:
            self.settled = None
            raise

    async def nack(self, *, delay_ms: int = 0, error: str | None = None) -> NackResult:
        """Give it back to be delivered again after ``delay_ms`` (0: the queue's retry
        backoff), with ``error`` (cut to 1024 bytes of UTF-8) as its last error."""
        self._claim("nacked")
        try:
            return await self.subscription.client.nack(
                self.queue, [self.id], delay_ms=delay_ms, error=None if error is None else truncate_error(error)
            )
        except BaseException:
            self.settled = None
            raise

    async def reject(self, *, error: str | None = None) -> RejectResult:
        """Dead-letter it now, whatever its attempts, with ``error`` (cut to 1024 bytes)."""
        self._claim("rejected")
        try:
            return await self.subscription.client.reject(
                self.queue, [self.id], error=None if error is None else truncate_error(error)
            )
        except BaseException:
            self.settled = None
            raise

    async def extend(self, visibility_ms: int | None = None) -> ExtendResult:
        """Move its lease deadline to now + ``visibility_ms`` (default: the queue's)."""
        if self.settled == "auto_acked":
            raise RuntimeError(f"message {self.id} of {self.queue} has no lease: the subscription is auto_ack")
        return await self.subscription.client.extend(self.queue, [self.id], visibility_ms=visibility_ms)

    def process(self, *, delay_ms: int = 0, reraise: bool = True) -> Processing:
        """The ``async with`` block that settles it: ack on success; on an exception nack
        (after ``delay_ms``, 0 = the queue's retry backoff) with the exception's text, then
        re-raise it unless ``reraise`` is false (cancellations always propagate)."""
        return Processing(self, delay_ms, reraise)

    async def __aenter__(self) -> IncomingMessage:
        return self

    async def __aexit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return await Processing(self, 0, True).__aexit__(etype, exc, tb)


class Processing:
    """``async with msg.process(...)``: see :meth:`IncomingMessage.process`."""

    __slots__ = ("delay_ms", "message", "reraise")

    def __init__(self, message: IncomingMessage, delay_ms: int, reraise: bool) -> None:
        self.message = message
        self.delay_ms = delay_ms
        self.reraise = reraise

    async def __aenter__(self) -> IncomingMessage:
        return self.message

    async def __aexit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        msg = self.message
        if msg.settled is not None:  # settled in the block, or auto_ack
            return exc is not None and isinstance(exc, Exception) and not self.reraise
        if exc is None:
            try:
                await msg.ack()
            except ConnectionClosed:
                if not msg.subscription.client._will_reconnect:
                    raise
                # The client reconnects: the ack's outcome is unknown, and a message it did
                # not reach is released by the broker and delivered again (at least once).
            return False
        failed = isinstance(exc, Exception)
        try:
            # A cancellation is not the message's fault: no error text, and shielded so
            # the message is released now rather than when its lease runs out.
            with anyio.CancelScope(shield=not failed):
                await msg.nack(delay_ms=self.delay_ms, error=error_text(exc) if failed else None)
        except LockgateError as nack_error:
            exc.add_note(f"lockgate: the nack of message {msg.id} failed: {nack_error}")
        return failed and not self.reraise


class Subscription:
    """A push subscription of :meth:`client.api.Client.subscribe`: an async context manager
    (entering subscribes, leaving unsubscribes) that is also an async iterator of
    :class:`IncomingMessage`. Several tasks may iterate it at once. Enter it once."""

    def __init__(
        self, client: Client, queue: str | None, credit: int, visibility_ms: int | None, auto_ack: bool,
        queues: Iterable[str] | None = None, prefix: str | None = None,
    ) -> None:
        self.client = client
        #: Its queue; of a queue group (``queues`` or ``prefix``, SPEC §8.15), a description.
        self.queue = target_name(queue, queues, prefix)
        self._target = (queue, None if queues is None else list(queues), prefix)
        self.credit = credit
        self.visibility_ms = visibility_ms
        self.auto_ack = auto_ack
        #: The server's id for it (set once subscribed).
        self.id: int | None = None
        #: Why the server ended it (``"queue_deleted"``), or ``None``.
        self.end_reason: str | None = None
        self._buffer: deque[IncomingMessage] = deque()
        #: Set (and replaced) to wake the tasks waiting in ``__anext__``.
        self._wakeup = anyio.Event()
        self._state = _NEW
        self._lost: ConnectionClosed | None = None
        self._paused = False

    def __repr__(self) -> str:
        return f"<Subscription {self.id} on {self.queue} credit={self.credit} buffered={len(self._buffer)}>"

    @property
    def buffered(self) -> int:
        """Messages pushed and not yet handed out by the iteration."""
        return len(self._buffer)

    @property
    def ended(self) -> bool:
        """True once no more messages will come: left, ended by the server, or its connection lost."""
        return self._state >= _CLOSING or self.end_reason is not None or self._lost is not None

    # --- subscribing -------------------------------------------------------------------

    async def __aenter__(self) -> Subscription:
        if self._state != _NEW:
            raise RuntimeError("a subscription can be entered only once")
        self._state = _OPEN
        client = self.client
        try:
            while True:
                conn = await client._connected()
                try:
                    await self._subscribe(conn)
                    break
                except ConnectionClosed:
                    if not client._will_reconnect:
                        raise  # else: nothing took effect; subscribe on the next connection
        except BaseException:
            self._state = _CLOSED
            raise
        if conn.closed and self._lost is None and not client._will_reconnect:
            self._lost = ConnectionClosed("connection closed")  # lost between the reply and now
        return self

    async def _subscribe(self, conn: Connection) -> None:
        """Send ``subscribe`` on ``conn``; the pushes after its reply land in the buffer."""
        client = self.client

        def subscribed(result: dict[str, Any]) -> None:
            sid = result.get("subscription")
            if type(sid) is int:
                self.id = sid
                client._pushes.targets[sid] = self
                client._subscriptions.add(self)

        queue, queues, prefix = self._target
        args = ops.subscribe.args(
            queue, credit=self.credit, visibility_ms=self.visibility_ms, auto_ack=self.auto_ack, queues=queues, prefix=prefix)
        # Shielded: a subscribe abandoned after the server took it would leave a
        # subscription nobody reads. Its reply comes within a round.
        with anyio.CancelScope(shield=True):
            await conn.request(str(Op.SUBSCRIBE), args, on_reply=subscribed)

    def _interrupted(self) -> None:
        """The connection went and the client reconnects (client/reconnect.py): what it
        pushed is forgotten (the broker released it); resubscribed on the next one."""
        self.id = None
        self._buffer.clear()
        self._paused = False

    async def _resubscribe(self, conn: Connection) -> None:
        """Subscribe again on a new connection (``ConnectionClosed`` if it goes too)."""
        if self._state != _OPEN:
            return
        try:
            await self._subscribe(conn)
        except ConnectionClosed:
            raise
        except QueueNotFound:
            self.client._subscriptions.discard(self)
            self._on_end("queue_deleted")  # deleted while the client was away
        except LockgateError as exc:
            self.client._subscriptions.discard(self)
            lost = ConnectionClosed(f"subscribing to {self.queue} again after a reconnect failed: {exc}")
            lost.__cause__ = exc
            self._on_lost(lost)
        else:
            if self._state != _OPEN and self.id is not None:  # left meanwhile
                sid, self.id = self.id, None
                self.client._pushes.targets.pop(sid, None)
                self.client._subscriptions.discard(self)
                with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S):
                    await conn.request(str(Op.UNSUBSCRIBE), ops.unsubscribe.args(sid))

    async def __aexit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.aclose()
        except LockgateError as cleanup_error:
            if exc is None:
                raise
            exc.add_note(f"lockgate: leaving subscription {self.id} failed: {cleanup_error}")

    async def aclose(self) -> None:
        """Unsubscribe and nack what is buffered (see the module docstring); idempotent."""
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        client, sid = self.client, self.id
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S):
                if sid is not None and self.end_reason is None and not client.connection.closed:
                    try:
                        await client.connection.request(str(Op.UNSUBSCRIBE), ops.unsubscribe.args(sid))
                    except InvalidArgument:
                        if self.end_reason is None:  # not the subscription_end race
                            raise
                leftover = ids_by_queue(self._buffer)
                self._buffer.clear()
                if leftover and not self.auto_ack and self.end_reason is None and not client.connection.closed:
                    step = client.info.max_batch
                    for queue, ids in leftover.items():
                        for i in range(0, len(ids), step):
                            await client.nack(queue, ids[i:i + step], returned=True)
        except (ConnectionClosed, QueueNotFound):
            pass  # the broker releases them itself / they are gone
        finally:
            client._subscriptions.discard(self)
            if self.id is not None:
                client._pushes.targets.pop(self.id, None)
            self._buffer.clear()
            self._state = _CLOSED
            self._resume()
            self._wake()

    # --- iterating ---------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> IncomingMessage:
        if self._state == _NEW:
            raise RuntimeError("enter the subscription first: async with client.subscribe(...) as sub")
        await anyio.lowlevel.checkpoint()
        while True:
            if self._lost is not None:
                raise ConnectionClosed(self._lost.message) from self._lost.__cause__
            if self._buffer and self._state == _OPEN:
                msg = self._buffer.popleft()
                if self._paused and len(self._buffer) < self.credit:
                    self._resume()
                return msg
            if self.ended:
                raise StopAsyncIteration
            await self._wakeup.wait()

    # --- from the connection's reader (quick, never raising) ---------------------------

    def _on_deliver(self, rows: list[Any], queue: str | None) -> None:
        buffer = self._buffer
        buffer.extend([IncomingMessage(self, row, queue) for row in rows])
        if self.auto_ack and not self._paused and len(buffer) >= self.credit:
            self._paused = True
            self.client.connection.pause_reading()
        self._wake()

    def _on_end(self, reason: str) -> None:
        self.end_reason = reason
        self._buffer.clear()
        self._resume()
        self._wake()

    def _on_lost(self, error: ConnectionClosed) -> None:
        self._lost = error
        self._buffer.clear()
        self._wake()

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = anyio.Event()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self.client.connection.resume_reading()


__all__ = ["CLOSE_TIMEOUT_S", "IncomingMessage", "Processing", "Subscription"]
