"""One pipelined connection to a broker, on trio or asyncio (through anyio).

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
- **Keepalive.** The broker closes a connection that sends no request for its idle
  timeout (5 minutes by default, SPEC.md §10). With ``keepalive_s`` set (60 s unless
  told otherwise) a keepalive task wakes every ``keepalive_s``; when no request was sent
  since its last wake it sends ``ping``, so an idle connection sends a request at least
  every ``2 * keepalive_s``. The ping's reply is awaited without a deadline (a test clock
  that jumps, such as trio's ``MockClock``, could not then make a live peer look dead).
  A dead peer is the kernel's to find: :func:`open_connection` turns on TCP keepalive
  (first probe after ``keepalive_s`` of silence, then every ``keepalive_s / 4``, 4
  probes) and, on Linux, a ``TCP_USER_TIMEOUT`` of ``2 * keepalive_s`` for data the
  peer does not acknowledge; the connection then fails and requests raise
  ``ConnectionClosed`` (with ``reconnect``, the client reconnects).
- Only anyio is used (streams, task groups, events, cancel scopes), so the same code runs
  under ``trio.run`` and ``asyncio.run``. A trio stream (``send_all``/``receive_some``) is
  accepted too and adapted.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Protocol

import socket
import ssl

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup

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
from . import tls as _tls
from .auth import Credentials, Handshake
from .errors import ConnectionClosed, LockgateError, UnsupportedVersion, error_from_frame
from .types import ServerInfo, hello_args

#: Bytes asked of the socket per read.
RECEIVE_BYTES = 256 * 1024
#: Name sent in ``hello`` unless the caller picks one.
DEFAULT_CLIENT_NAME = "lockgate-py/0.1.0"
#: Seconds between keepalive checks (a ping goes out when nothing was sent meanwhile);
#: well below the broker's default idle timeout of 300 s, even doubled.
DEFAULT_KEEPALIVE_S = 60.0
#: What a broken or closed transport raises.
TRANSPORT_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)

PushHandler = Callable[[Push], None]
#: Called with a request's result map from the reader task, before later frames are read.
ReplyHook = Callable[[dict[str, Any]], None]


class TrioStream(Protocol):
    """A trio ``Stream``, as far as this module uses it (adapted by :class:`_TrioStreamAdapter`)."""

    async def send_all(self, data: bytes) -> None: ...

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

    async def aclose(self) -> None: ...


class _TrioStreamAdapter(ByteStream):
    """A trio stream seen as an anyio byte stream; any transport failure is
    ``BrokenResourceError``, end of data is ``EndOfStream``."""

    def __init__(self, stream: TrioStream) -> None:
        self._stream = stream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except Exception as exc:
            raise anyio.BrokenResourceError(str(exc) or type(exc).__name__) from exc
        if not data:
            raise anyio.EndOfStream
        return bytes(data)

    async def send(self, item: bytes) -> None:
        try:
            await self._stream.send_all(item)
        except Exception as exc:
            raise anyio.BrokenResourceError(str(exc) or type(exc).__name__) from exc

    async def send_eof(self) -> None:
        raise NotImplementedError("a lockgate connection never half-closes")

    async def aclose(self) -> None:
        await self._stream.aclose()


def as_byte_stream(stream: ByteStream | TrioStream) -> ByteStream:
    """``stream`` as an anyio byte stream (a trio stream is adapted)."""
    if isinstance(stream, ByteStream):
        return stream
    if hasattr(stream, "receive_some") and hasattr(stream, "send_all"):
        return _TrioStreamAdapter(stream)
    raise TypeError(f"not a byte stream: {stream!r}")


class _Waiter:
    """One pending request: ``result`` is set before ``event`` unless ``error`` is."""

    __slots__ = ("error", "event", "on_reply", "result")
    result: dict[str, Any]

    def __init__(self, event: anyio.Event, on_reply: ReplyHook | None) -> None:
        self.event = event
        self.error: LockgateError | None = None
        self.on_reply = on_reply


class Connection:
    """A handshaken connection; use it as ``async with Connection(stream) as conn``.

    Entering starts the reader task (in a task group the connection owns) and performs
    ``hello``; leaving closes the stream. Usually obtained from :func:`open_connection`.
    ``stream`` is an anyio byte stream (or a trio stream, adapted).
    ``max_frame`` is the largest frame this side accepts, announced in ``hello``; by
    default none is announced and the server's own limit applies both ways.
    ``on_push`` is called (synchronously, from the reader task: keep it quick and
    non-raising) for every PUSH frame; without it pushes are only counted.
    ``on_close`` is called once, the same way, with the error pending requests get,
    when the connection closes for any reason. ``keepalive_s`` (``None``: never) is the
    keepalive period (see the module docstring). ``credentials`` authenticate the
    handshake to a broker that requires it (:mod:`client.auth`).
    """

    def __init__(
        self,
        stream: ByteStream | TrioStream,
        *,
        max_frame: int | None = None,
        client_name: str = DEFAULT_CLIENT_NAME,
        on_push: PushHandler | None = None,
        keepalive_s: float | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        if keepalive_s is not None and not keepalive_s > 0:
            raise ValueError(f"keepalive_s must be positive or None, not {keepalive_s!r}")
        self._stream = as_byte_stream(stream)
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
        self._reader_scope = anyio.CancelScope()
        self._keepalive_scope = anyio.CancelScope()
        self._keepalive_s = keepalive_s
        self._task_group: TaskGroup | None = None
        # The backend's own event class, made once: ``anyio.Event()`` looks the backend up.
        self._new_event: Callable[[], anyio.Event] = type(anyio.Event())
        self._closed_event = self._new_event()
        self.on_push = on_push
        #: PUSH frames received while no ``on_push`` was set.
        self.unhandled_pushes = 0
        self.on_close: Callable[[ConnectionClosed], None] | None = None
        self._server_info: ServerInfo | None = None
        self._credentials = credentials
        #: The user the broker authenticated this connection as (None without auth).
        self.user: str | None = None
        self._read_pauses = 0
        self._read_gate = self._new_event()
        #: (host, port) of a broker reached over TLS, named in handshake errors.
        self.tls_peer: tuple[str, int] | None = None

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
    def close_reason(self) -> str | None:
        """Why the connection closed (``None`` while it is open)."""
        return self._closed_reason

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
        waiter = _Waiter(self._new_event(), on_reply)
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
            with anyio.CancelScope(shield=True):
                while self._wbuf:
                    buf = self._wbuf
                    self._wbuf = []
                    await self._stream.send(buf[0] if len(buf) == 1 else b"".join(buf))
        except TRANSPORT_ERRORS as exc:
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
                    try:
                        data = await stream.receive(RECEIVE_BYTES)
                    except anyio.EndOfStream:
                        break
                    proto.receive_data(data)
                    while (frame := proto.next_frame()) is not NEED_DATA:
                        self._dispatch(frame)
                    while self._read_pauses and not self._pending:
                        self._read_gate = self._new_event()
                        await self._read_gate.wait()
        except TRANSPORT_ERRORS as exc:
            reason = f"connection lost: {exc or type(exc).__name__}"
        except ProtocolError as exc:
            reason = f"unreadable data from the server: {exc.code.name}: {exc.message}"
        finally:
            self._fail(reason)

    async def _keepalive(self, period: float) -> None:
        with self._keepalive_scope:
            sent = self._next_id
            while True:
                await anyio.sleep(period)
                if self._next_id == sent:  # nothing sent for a whole period
                    try:
                        await self.request(Op.PING.value, {})
                    except LockgateError:
                        return  # closed: the reader says why
                sent = self._next_id

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
        self._keepalive_scope.cancel()
        if first:
            self._closed_event.set()
            if self.on_close is not None:
                self.on_close(self._closed_error())

    def _closed_error(self) -> ConnectionClosed:
        exc = ConnectionClosed(self._closed_reason or "connection closed")
        exc.__cause__ = self._server_error
        return exc

    async def wait_closed(self) -> None:
        """Return once the connection has closed (for any reason)."""
        await self._closed_event.wait()

    async def aclose(self) -> None:
        """Close the connection; pending requests raise :class:`ConnectionClosed`."""
        self._fail("connection closed by the client")
        await anyio.aclose_forcefully(self._stream)

    async def __aenter__(self) -> Connection:
        self._task_group = anyio.create_task_group()
        tasks = await self._task_group.__aenter__()
        tasks.start_soon(self._read_loop)
        try:
            handshake = Handshake(self._credentials)
            hello = hello_args(self._max_frame, self._client_name)
            if self._credentials is not None:
                hello["auth"] = handshake.hello_auth()
            result = await self.request(Op.HELLO.value, hello)
            if result.get("version") != PROTOCOL_VERSION:
                raise UnsupportedVersion(f"server chose protocol version {result.get('version')!r}")
            final = handshake.after_hello(result.get("auth"))
            if final is not None:
                handshake.after_auth(await self.request(Op.AUTH.value, final))
            self.user = handshake.user
            self._server_info = ServerInfo.from_wire(result)
        except BaseException as exc:
            if self.tls_peer is not None:
                _tls.note_handshake(exc, *self.tls_peer)
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._server_max_frame = self._server_info.max_frame
        if self._max_frame is None:
            self._proto.max_frame = self._server_info.max_frame
        if self._keepalive_s is not None:
            tasks.start_soon(self._keepalive, self._keepalive_s)
        return self

    async def __aexit__(
        self, etype: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        with anyio.CancelScope(shield=True):
            await self.aclose()
        assert self._task_group is not None
        try:
            return bool(await self._task_group.__aexit__(etype, exc, tb))
        except BaseExceptionGroup as group:
            # The reader and the keepalive never raise for transport trouble, so a group
            # holding only the body's own exception is just that exception: let it
            # propagate unwrapped.
            if exc is not None and len(group.exceptions) == 1 and group.exceptions[0] is exc:
                return False
            raise


def tcp_keepalive(sock: socket.socket, period: float) -> None:
    """Let the kernel find a dead peer: keepalive probes after ``period`` s of silence
    (then every ``period / 4`` s, 4 of them) and, where the platform has it, a
    ``TCP_USER_TIMEOUT`` of ``2 * period`` for unacknowledged data."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, round(period))
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", max(1, idle // 4)), ("TCP_KEEPCNT", 4),
                        ("TCP_USER_TIMEOUT", 2000 * idle)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


@asynccontextmanager
async def open_connection(
    host: str,
    port: int,
    *,
    max_frame: int | None = None,
    client_name: str = DEFAULT_CLIENT_NAME,
    on_push: PushHandler | None = None,
    keepalive_s: float | None = None,
    credentials: Credentials | None = None,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncIterator[Connection]:
    """Connect over TCP and handshake: ``async with open_connection(host, port) as conn``.

    Arguments are as for :class:`Connection`; with ``tls`` (a client context,
    :mod:`client.tls`) the connection runs in a TLS session whose server certificate must
    match ``server_hostname`` (default: ``host``). Raises ``OSError`` when the connection
    cannot be opened (``ssl.SSLCertVerificationError`` when the server's certificate does
    not verify).
    """
    stream: ByteStream
    if tls is None:
        stream = await anyio.connect_tcp(host, port)
    else:
        try:
            # Not standard-compatible: the broker sends no close_notify (frames delimit
            # themselves), so a TCP close is the end of the stream.
            stream = await anyio.connect_tcp(host, port, ssl_context=tls,
                                             tls_hostname=_tls.server_name(host, server_hostname),
                                             tls_standard_compatible=False)
        except ssl.SSLError as exc:
            _tls.note_handshake(exc, host, port)
            raise
    if keepalive_s is not None:
        tcp_keepalive(stream.extra(SocketAttribute.raw_socket), keepalive_s)
    conn = Connection(stream, max_frame=max_frame, client_name=client_name, on_push=on_push,
                      keepalive_s=keepalive_s, credentials=credentials)
    if tls is not None:
        conn.tls_peer = (host, port)
    async with conn:
        yield conn
