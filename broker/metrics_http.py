"""The metrics endpoint: a small HTTP/1.x server in the broker's own trio loop.

It answers ``GET /metrics`` with the Prometheus text format (``broker.metrics``) in
two steps: ``scrape()`` runs in the event loop, between two rounds, and copies the
numbers it needs, so nothing has to be locked or kept consistent; the callable it
returns makes the text from that copy in a worker thread, so a big broker's long text
does not hold up the loop (docs/operations.md, "Metrics").

Rules:

1. One request per connection. The server reads the request head (at most
   ``MAX_HEAD`` bytes, within ``REQUEST_TIMEOUT_S``), answers (the answer, too, must
   be taken within ``REQUEST_TIMEOUT_S``), ends its side and closes once the client
   has (reading and dropping at most ``LINGER_BYTES`` more, for at most ``LINGER_S``);
   a request body is never used.
2. ``GET`` or ``HEAD`` of ``/metrics`` (a query string is ignored): 200 with the
   rendered bytes. Any other path: 404. Any other method: 405. A head that is not an
   HTTP/1.x request line: 400. A head longer than ``MAX_HEAD``: 431. A client that
   sends no whole head in time, or goes away, is closed without an answer.
3. At most ``MAX_CONNECTIONS`` at once; one more is closed at once, unanswered (a
   scraper records a failed scrape).
4. Nothing a client sends can stop the endpoint or the broker: a failing scrape
   answers 500 and is logged.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

__all__ = ["MAX_CONNECTIONS", "MAX_HEAD", "REQUEST_TIMEOUT_S", "MetricsEndpoint", "parse_addr"]

logger = logging.getLogger("lockgate.metrics")

#: Longest request head read (request line and headers), in bytes.
MAX_HEAD = 8192
#: Seconds a client has to send its whole request head.
REQUEST_TIMEOUT_S = 10.0
#: Connections served at once; more are closed at once.
MAX_CONNECTIONS = 16
#: After answering, how long and how much more input is read (and dropped) before closing.
LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024
#: The one path served.
METRICS_PATH = "/metrics"

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


def parse_addr(addr: str) -> tuple[str | None, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) as (host, port); an empty host
    (``:9100``) is None, every interface. Raises ``ValueError`` saying what is wrong."""
    host, sep, port_text = addr.rpartition(":")
    if not sep:
        raise ValueError("must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets, as in [::1]:9100")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return (host or None), int(port_text)


def _response(status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8",
              *, head_only: bool = False, extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("ascii") + (b"" if head_only else body)


class MetricsEndpoint:
    """Serves at ``/metrics`` the text that ``scrape()`` (in the event loop) returns a
    maker of (run in a worker thread); see the module docs."""

    def __init__(self, scrape: Callable[[], Callable[[], bytes]], content_type: str) -> None:
        self._scrape = scrape
        self._content_type = content_type
        self._open = 0

    async def serve(self, host: str | None, port: int, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``task_status.started`` gets "host:port"
        (the real port when ``port`` is 0)."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle, port, host=host))
            sockname = listeners[0].socket.getsockname()
            shown = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
            task_status.started(f"{shown}:{sockname[1]}")

    async def _handle(self, stream: trio.SocketStream) -> None:
        self._open += 1
        try:
            if self._open > MAX_CONNECTIONS:
                return
            head = None
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                head = await _read_head(stream)
            if head is None:
                return
            reply = await self._answer(head)
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                await stream.send_all(reply)
                # Closing with unread input would reset the connection, and the client
                # could lose the answer: end our side, then read what it still sends.
                await stream.send_eof()
                with trio.move_on_after(LINGER_S):
                    drained = 0
                    while drained < LINGER_BYTES and (data := await stream.receive_some(65536)):
                        drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        finally:
            self._open -= 1
            await trio.aclose_forcefully(stream)

    async def _answer(self, head: bytes) -> bytes:
        """The whole response to a request head (``b""``: too long)."""
        if not head:
            return _response(431, b"request head too long\n")
        parts = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _response(400, b"not an HTTP/1.x request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response(405, b"only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
        if target != METRICS_PATH.encode():
            return _response(404, b"not found; metrics are at /metrics\n")
        try:
            body = await trio.to_thread.run_sync(self._scrape())
        except Exception:
            logger.exception("could not render the metrics")
            return _response(500, b"could not render the metrics; see the broker's log\n")
        return _response(200, body, self._content_type, head_only=method == b"HEAD")


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request head up to its blank line; ``b""`` if it runs past ``MAX_HEAD``,
    None if the client closed first."""
    buf = bytearray()
    while True:
        data = await stream.receive_some(MAX_HEAD + 1 - len(buf))
        if not data:
            return None
        buf += data
        if len(buf) > MAX_HEAD:
            return b""
        if b"\r\n\r\n" in buf or b"\n\n" in buf:
            return bytes(buf)
