"""One pipelined trio connection to a broker.

Why it looks like this:

- Requests carry increasing ids and any number may be in flight; replies arrive in any
  order (a ``consume`` with ``wait_ms`` is answered late), so each caller parks on a small
  waiter keyed by its id.
- One reader task owns the receive side: it feeds bytes to the sans-IO
  :class:`protocol.Connection` and wakes the waiter each REPLY or ERROR names.
- There is no writer task. A caller appends its frame to a buffer; if nobody is sending,
  it sends everything buffered in one ``send_all`` (looping while more arrives), so
  concurrent callers coalesce into few writes. The send is shielded: cancelling a caller
  never leaves half a frame on the wire (it still ends when the connection closes).
- On transport loss every pending request raises :class:`ConnectionClosed`.
- PUSH frames go to ``on_push``, from the reader task. A caller whose request starts
  pushes (``subscribe``) passes ``on_reply``, which runs from the reader as soon as the
  reply is read, before the frames after it, so no push that follows its reply is missed.
- ``pause_reading`` lets a consumer whose buffer is full stop the reader (TCP then holds
  the server back); it reads on meanwhile whenever a request is waiting for its reply,
  so a paused connection never starves its own callers.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import trio

from protocol import (
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

from . import types as t
from .errors import ConnectionClosed, LockgateError, UnsupportedVersion, error_from_frame
from .types import ServerInfo, hello_args

#: Bytes asked of the socket per read.
RECEIVE_BYTES = 256 * 1024
#: Name sent in ``hello`` unless the caller picks one.
DEFAULT_CLIENT_NAME = "lockgate-py/0.1.0"

PushHandler = Callable[[Push], None]
#: Called with a request's result map from the reader task, before later frames are read.
ReplyHook = Callable[[dict[str, Any]], None]


class _Waiter:
    """One pending request: ``result`` is set before ``event`` unless ``error`` is."""

    __slots__ = ("error", "event", "on_reply", "result")
    result: dict[str, Any]

    def __init__(self, on_reply: ReplyHook | None) -> None:
        self.event = trio.Event()
        self.error: LockgateError | None = None
        self.on_reply = on_reply


class Connection:
    """A handshaken connection; use it as ``async with Connection(stream) as conn``.

    Entering starts the reader task (in a nursery the connection owns) and performs
    ``hello``; leaving closes the stream. Usually obtained from :func:`open_connection`.
    ``max_frame`` is the largest frame this side accepts, announced in ``hello``; by
    default none is announced and the server's own limit applies both ways.
    ``on_push`` is called (synchronously, from the reader task: keep it quick and
    non-raising) for every PUSH frame; without it pushes are only counted.
    ``on_close`` is called once, the same way, with the error pending requests get,
    when the connection closes for any reason.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_frame: int | None = None,
        client_name: str = DEFAULT_CLIENT_NAME,
        on_push: PushHandler | None = None,
    ) -> None:
        self._stream = stream
        self._proto = ProtocolConnection("client", max_frame or DEFAULT_MAX_FRAME)
        self._max_frame = max_frame
        self._client_name = client_name
        self._pending: dict[int, _Waiter] = {}
        self._next_id = 1
        self._wbuf: list[bytes] = []
        self._sending = False
        self._closed_reason: str | None = None
        self._server_error: LockgateError | None = None
        self._server_max_frame = DEFAULT_MAX_FRAME
        self._reader_scope = trio.CancelScope()
        self._nursery_manager: Any = None
        self.on_push = on_push
        #: PUSH frames received while no ``on_push`` was set.
        self.unhandled_pushes = 0
        self.on_close: Callable[[ConnectionClosed], None] | None = None
        self._server_info: ServerInfo | None = None
        self._read_pauses = 0
        self._read_gate = trio.Event()

    @property
    def server_info(self) -> ServerInfo:
        """The server's ``hello`` reply."""
        if self._server_info is None:
            raise RuntimeError("the connection has not completed its handshake")
        return self._server_info

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    async def request(
        self, op: str, args: dict[str, Any], *, on_reply: ReplyHook | None = None
    ) -> dict[str, Any]:
        """Send one request and wait for its result map; an ERROR raises its typed exception.

        Cancelling the wait abandons the request (it may still take effect on the server).
        ``on_reply`` (quick, non-raising) gets the result map from the reader task as soon
        as the reply is read, before any frame after it; it is not called if the caller
        gave up waiting first.
        """
        if self._closed_reason is not None:
            raise self._closed_error()
        rid = self._next_id
        self._next_id = rid + 1
        data = t.checked_request(self._proto.encoder, rid, op, args, self._server_max_frame)
        waiter = _Waiter(on_reply)
        self._pending[rid] = waiter
        if self._read_pauses:
            self._read_gate.set()  # a paused reader reads on until this reply has come
        try:
            await self._send(data)
            await waiter.event.wait()
        except BaseException:
            self._pending.pop(rid, None)
            raise
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    async def _send(self, data: bytes) -> None:
        self._wbuf.append(data)
        if self._sending:
            return  # the task that is sending picks it up
        self._sending = True
        try:
            with trio.CancelScope(shield=True):
                while self._wbuf:
                    buf = self._wbuf
                    self._wbuf = []
                    await self._stream.send_all(buf[0] if len(buf) == 1 else b"".join(buf))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._wbuf.clear()
            self._fail(f"connection lost while sending: {exc or type(exc).__name__}")
        finally:
            self._sending = False

    async def _read_loop(self) -> None:
        reason = "connection closed by the server"
        try:
            with self._reader_scope:
                stream = self._stream
                proto = self._proto
                while True:
                    data = await stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        break
                    proto.receive_data(data)
                    while (frame := proto.next_frame()) is not NEED_DATA:
                        self._dispatch(frame)
                    while self._read_pauses and not self._pending:
                        self._read_gate = trio.Event()
                        await self._read_gate.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"connection lost: {exc or type(exc).__name__}"
        except ProtocolError as exc:
            reason = f"unreadable data from the server: {exc.code.name}: {exc.message}"
        finally:
            self._fail(reason)

    def _dispatch(self, frame: Any) -> None:
        kind = type(frame)
        if kind is Reply:
            waiter = self._pending.pop(frame.id, None)
            if waiter is not None:  # None: the caller gave up waiting
                waiter.result = frame.result
                if waiter.on_reply is not None:
                    waiter.on_reply(frame.result)
                waiter.event.set()
        elif kind is ErrorFrame:
            if frame.id is None:
                # Not tied to a request; a fatal one is followed by the server closing.
                if frame.code in FATAL_CODES:
                    self._server_error = error_from_frame(frame)
                return
            waiter = self._pending.pop(frame.id, None)
            if waiter is not None:
                waiter.error = error_from_frame(frame)
                waiter.event.set()
        elif self.on_push is not None:
            self.on_push(frame)
        else:
            self.unhandled_pushes += 1

    def pause_reading(self) -> None:
        """Stop reading after the current read until :meth:`resume_reading` is called as
        often as this was, except while requests wait for their replies."""
        self._read_pauses += 1

    def resume_reading(self) -> None:
        """Undo one :meth:`pause_reading`."""
        if self._read_pauses <= 0:
            raise RuntimeError("resume_reading without pause_reading")
        self._read_pauses -= 1
        if not self._read_pauses:
            self._read_gate.set()

    def _fail(self, reason: str) -> None:
        """Mark the connection closed and fail every pending request (idempotent)."""
        first = self._closed_reason is None
        if first:
            if self._server_error is not None:
                reason = f"{reason} after {self._server_error}"
            self._closed_reason = reason
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.error = self._closed_error()
            waiter.event.set()
        self._reader_scope.cancel()
        if first and self.on_close is not None:
            self.on_close(self._closed_error())

    def _closed_error(self) -> ConnectionClosed:
        exc = ConnectionClosed(self._closed_reason or "connection closed")
        exc.__cause__ = self._server_error
        return exc

    async def aclose(self) -> None:
        """Close the connection; pending requests raise :class:`ConnectionClosed`."""
        self._fail("connection closed by the client")
        await trio.aclose_forcefully(self._stream)

    async def __aenter__(self) -> Connection:
        self._nursery_manager = trio.open_nursery()
        nursery = await self._nursery_manager.__aenter__()
        nursery.start_soon(self._read_loop)
        try:
            result = await self.request(Op.HELLO.value, hello_args(self._max_frame, self._client_name))
            if result.get("version") != PROTOCOL_VERSION:
                raise UnsupportedVersion(f"server chose protocol version {result.get('version')!r}")
            self._server_info = ServerInfo.from_wire(result)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._server_max_frame = self._server_info.max_frame
        if self._max_frame is None:
            self._proto.max_frame = self._server_info.max_frame
        return self

    async def __aexit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        with trio.CancelScope(shield=True):
            await self.aclose()
        try:
            return bool(await self._nursery_manager.__aexit__(etype, exc, tb))
        except BaseExceptionGroup as group:
            # The reader never raises for transport trouble, so a group holding only the
            # body's own exception is just that exception: let it propagate unwrapped.
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                return False
            raise


@asynccontextmanager
async def open_connection(
    host: str,
    port: int,
    *,
    max_frame: int | None = None,
    client_name: str = DEFAULT_CLIENT_NAME,
    on_push: PushHandler | None = None,
) -> AsyncIterator[Connection]:
    """Connect over TCP and handshake: ``async with open_connection(host, port) as conn``.

    Arguments are as for :class:`Connection`. Raises ``OSError`` when the connection
    cannot be opened.
    """
    stream = await trio.open_tcp_stream(host, port)
    async with Connection(stream, max_frame=max_frame, client_name=client_name, on_push=on_push) as conn:
        yield conn
