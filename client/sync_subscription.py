"""Push subscriptions of the blocking client (SPEC.md §5.17, §5.18)::

    with client.subscribe("jobs", credit=64) as sub:
        for msg in sub:
            with msg:                # acks on success; nacks with the error and re-raises
                handle(msg.body)

The same contract as the async :mod:`client.subscription` (read its docstring: buffer,
credit, leaving, ends, how ``with msg`` settles), with the blocking client's I/O: pushes
are read whenever the client reads, that is while the iteration waits for a message and
while any request waits for its reply; they wait in the subscription's buffer until the
iteration takes them.

Timeouts, as in :class:`~client.sync.SyncClient`: the requests a subscription makes
(``subscribe``, ``unsubscribe``, acks and nacks) each wait at most the client's
``timeout``. Waiting for the next message is not a request: the iteration waits as long
as it takes, or at most ``idle_timeout`` seconds when that is set, then raises
``TimeoutError`` and stays usable (iterate again, or leave). :meth:`SyncSubscription.get`
waits at most its own ``timeout`` and returns ``None`` instead. If the ``subscribe``
reply itself times out, the client's connection is closed (the broker then drops the
subscription and releases its messages), since a subscription nobody reads would hold
messages.

A lost connection ends the iteration with :class:`~client.errors.ConnectionClosed`,
unless the client reconnects (``SyncClient(..., reconnect=True)``, :mod:`client.sync`):
then the buffer is dropped and the subscription is made again on the next connection,
which the iteration itself makes when it next waits for a message.

With ``auto_ack`` the buffer is bounded only by what arrives while the client reads: a
loop that makes no other requests reads only when its buffer is empty, one that makes
requests also takes in the pushes that arrive before each reply.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, Any

from protocol import Op

from . import ops
from .errors import ConnectionClosed, InvalidArgument, LockgateError, QueueNotFound
from .pushes import IncomingBase, error_text, ids_by_queue, target_name, truncate_error
from .types import AckResult, ExtendResult, NackResult, RejectResult

if TYPE_CHECKING:
    from .sync import SyncClient

_NEW, _OPEN, _CLOSING, _CLOSED = range(4)


class SyncIncomingMessage(IncomingBase):
    """A message pushed to a :class:`SyncSubscription` (fields in
    :class:`~client.pushes.IncomingBase`); the blocking twin of
    :class:`client.subscription.IncomingMessage`."""

    __slots__ = ("subscription",)

    def __init__(self, subscription: SyncSubscription, row: list[Any], queue: str | None = None) -> None:
        super().__init__(queue or subscription.queue, row, subscription.auto_ack)
        #: The subscription it was pushed to.
        self.subscription = subscription

    def ack(self) -> AckResult:
        """Delete it: processing succeeded."""
        self._claim("acked")
        try:
            return self.subscription.client.ack(self.queue, [self.id])
        except BaseException:
            self.settled = None
            raise

    def nack(self, *, delay_ms: int = 0, error: str | None = None) -> NackResult:
        """Give it back to be delivered again after ``delay_ms`` (0: the queue's retry
        backoff), with ``error`` (cut to 1024 bytes of UTF-8) as its last error."""
        self._claim("nacked")
        try:
            return self.subscription.client.nack(
                self.queue, [self.id], delay_ms=delay_ms, error=None if error is None else truncate_error(error)
            )
        except BaseException:
            self.settled = None
            raise

    def reject(self, *, error: str | None = None) -> RejectResult:
        """Dead-letter it now, whatever its attempts, with ``error`` (cut to 1024 bytes)."""
        self._claim("rejected")
        try:
            return self.subscription.client.reject(
                self.queue, [self.id], error=None if error is None else truncate_error(error)
            )
        except BaseException:
            self.settled = None
            raise

    def extend(self, visibility_ms: int | None = None) -> ExtendResult:
        """Move its lease deadline to now + ``visibility_ms`` (default: the queue's)."""
        if self.settled == "auto_acked":
            raise RuntimeError(f"message {self.id} of {self.queue} has no lease: the subscription is auto_ack")
        return self.subscription.client.extend(self.queue, [self.id], visibility_ms=visibility_ms)

    def process(self, *, delay_ms: int = 0, reraise: bool = True) -> SyncProcessing:
        """The ``with`` block that settles it: ack on success; on an exception nack (after
        ``delay_ms``, 0 = the queue's retry backoff) with the exception's text, then
        re-raise it unless ``reraise`` is false (``KeyboardInterrupt`` and other
        ``BaseException`` always propagate, nacked without a text)."""
        return SyncProcessing(self, delay_ms, reraise)

    def __enter__(self) -> SyncIncomingMessage:
        return self

    def __exit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return SyncProcessing(self, 0, True).__exit__(etype, exc, tb)


class SyncProcessing:
    """``with msg.process(...)``: see :meth:`SyncIncomingMessage.process`."""

    __slots__ = ("delay_ms", "message", "reraise")

    def __init__(self, message: SyncIncomingMessage, delay_ms: int, reraise: bool) -> None:
        self.message = message
        self.delay_ms = delay_ms
        self.reraise = reraise

    def __enter__(self) -> SyncIncomingMessage:
        return self.message

    def __exit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        msg = self.message
        if msg.settled is not None:  # settled in the block, or auto_ack
            return exc is not None and isinstance(exc, Exception) and not self.reraise
        if exc is None:
            try:
                msg.ack()
            except ConnectionClosed:
                if not msg.subscription.client._will_reconnect:
                    raise
                # The client reconnects: the ack's outcome is unknown, and a message it did
                # not reach is released by the broker and delivered again (at least once).
            return False
        failed = isinstance(exc, Exception)
        try:
            msg.nack(delay_ms=self.delay_ms, error=error_text(exc) if failed else None)
        except (LockgateError, TimeoutError, OSError) as nack_error:
            exc.add_note(f"lockgate: the nack of message {msg.id} failed: {nack_error}")
        return failed and not self.reraise


class SyncSubscription:
    """A push subscription of :meth:`client.sync.SyncClient.subscribe`: a context manager
    (entering subscribes, leaving unsubscribes) and an iterator of
    :class:`SyncIncomingMessage`. Enter it once."""

    def __init__(
        self,
        client: SyncClient,
        queue: str | None,
        credit: int,
        visibility_ms: int | None,
        auto_ack: bool,
        idle_timeout: float | None,
        queues: Iterable[str] | None = None,
        prefix: str | None = None,
    ) -> None:
        self.client = client
        #: Its queue; of a queue group (``queues`` or ``prefix``, SPEC §8.15), a description.
        self.queue = target_name(queue, queues, prefix)
        self._target = (queue, None if queues is None else list(queues), prefix)
        self.credit = credit
        self.visibility_ms = visibility_ms
        self.auto_ack = auto_ack
        #: Seconds the iteration waits for a message before ``TimeoutError`` (``None``: no limit).
        self.idle_timeout = idle_timeout
        #: The server's id for it (set once subscribed).
        self.id: int | None = None
        #: Why the server ended it (``"queue_deleted"``), or ``None``.
        self.end_reason: str | None = None
        self._buffer: deque[SyncIncomingMessage] = deque()
        self._state = _NEW
        self._lost: ConnectionClosed | None = None

    def __repr__(self) -> str:
        return f"<SyncSubscription {self.id} on {self.queue} credit={self.credit} buffered={len(self._buffer)}>"

    @property
    def buffered(self) -> int:
        """Messages pushed and not yet handed out by the iteration."""
        return len(self._buffer)

    @property
    def ended(self) -> bool:
        """True once no more messages will come: left, ended by the server, or its connection lost."""
        return self._state >= _CLOSING or self.end_reason is not None or self._lost is not None

    # --- subscribing -------------------------------------------------------------------

    def __enter__(self) -> SyncSubscription:
        if self._state != _NEW:
            raise RuntimeError("a subscription can be entered only once")
        self._state = _OPEN
        client = self.client
        try:
            while True:
                try:
                    self._subscribe(client.submit)
                    break
                except ConnectionClosed:
                    if not client._will_reconnect:
                        raise  # else: nothing took effect; subscribe on the next connection
        except BaseException:
            self._state = _CLOSED
            raise
        return self

    def _subscribe(self, send: Callable[..., int]) -> None:
        """Send ``subscribe`` through ``send`` and wait for its reply; the pushes after
        it land in the buffer."""
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
        rid = send(str(Op.SUBSCRIBE), args, on_reply=subscribed)
        try:
            client.result(rid)
        except TimeoutError:
            client._lose("timed out waiting for the subscribe reply")
            raise

    def _interrupted(self) -> None:
        """The connection went and the client reconnects: what it pushed is forgotten
        (the broker released it); subscribed again on the next connection."""
        self.id = None
        self._buffer.clear()

    def _resubscribe(self) -> None:
        """Subscribe again on the client's new connection (``ConnectionClosed`` or
        ``TimeoutError`` if that fails too)."""
        if self._state != _OPEN:
            return
        client = self.client
        try:
            self._subscribe(client._send_request)
        except (ConnectionClosed, TimeoutError):
            raise
        except QueueNotFound:
            client._subscriptions.discard(self)
            self._on_end("queue_deleted")  # deleted while the client was away
        except LockgateError as exc:
            client._subscriptions.discard(self)
            lost = ConnectionClosed(f"subscribing to {self.queue} again after a reconnect failed: {exc}")
            lost.__cause__ = exc
            self._on_lost(lost)

    def __exit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.close()
        except (LockgateError, TimeoutError, OSError) as cleanup_error:
            if exc is None:
                raise
            exc.add_note(f"lockgate: leaving subscription {self.id} failed: {cleanup_error}")

    def close(self) -> None:
        """Unsubscribe and nack what is buffered (as the async client does); idempotent."""
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        client, sid = self.client, self.id
        try:
            if sid is not None and self.end_reason is None and client.connected:
                try:
                    client.request(str(Op.UNSUBSCRIBE), ops.unsubscribe.args(sid))
                except InvalidArgument:
                    if self.end_reason is None:  # not the subscription_end race
                        raise
            leftover = ids_by_queue(self._buffer)
            self._buffer.clear()
            if leftover and not self.auto_ack and self.end_reason is None and client.connected:
                step = client.server_info.max_batch
                for queue, ids in leftover.items():
                    for i in range(0, len(ids), step):
                        client.nack(queue, ids[i:i + step], returned=True)
        except (ConnectionClosed, QueueNotFound):
            pass  # the broker releases them itself / they are gone
        finally:
            if sid is not None:
                client._pushes.targets.pop(sid, None)
            client._subscriptions.discard(self)
            self._buffer.clear()
            self._state = _CLOSED

    # --- iterating ---------------------------------------------------------------------

    def __iter__(self) -> SyncSubscription:
        return self

    def __next__(self) -> SyncIncomingMessage:
        msg = self._take(self.idle_timeout)
        if msg is None:
            raise StopIteration
        return msg

    def get(self, timeout: float | None = None) -> SyncIncomingMessage | None:
        """The next message, waiting at most ``timeout`` seconds (``None``: no limit);
        ``None`` when the time passed or the subscription has ended (see ``ended``)."""
        try:
            return self._take(timeout)
        except TimeoutError:
            return None

    def _take(self, timeout: float | None) -> SyncIncomingMessage | None:
        if self._state == _NEW:
            raise RuntimeError("enter the subscription first: with client.subscribe(...) as sub")
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            if self._lost is not None:
                raise ConnectionClosed(self._lost.message)
            if self._buffer and self._state == _OPEN:
                return self._buffer.popleft()
            if self.ended:
                return None
            self.client._poll(deadline)

    # --- from the client's reads -------------------------------------------------------

    def _on_deliver(self, rows: list[Any], queue: str | None) -> None:
        self._buffer.extend([SyncIncomingMessage(self, row, queue) for row in rows])

    def _on_end(self, reason: str) -> None:
        self.end_reason = reason
        self._buffer.clear()

    def _on_lost(self, error: ConnectionClosed) -> None:
        self._lost = error
        self._buffer.clear()


__all__ = ["SyncIncomingMessage", "SyncProcessing", "SyncSubscription"]
