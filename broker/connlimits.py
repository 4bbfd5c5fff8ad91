"""Connection limits: how many connections the broker serves, and how long a connection
may take to handshake, sit idle or send one frame (SPEC.md §10).

Rules:

1. At most ``max_connections`` connections are served at once (``fit_fd_limit`` raises
   the open-file limit to fit them, or lowers the limit to what fits). One more is
   accepted only to be sent ``TOO_MANY_CONNECTIONS`` (id nil, ``details.limit``) and
   closed cleanly (rule 4); nothing it sent is read as a request and it never counts.
   Per-user limits come with authentication; until then the limit is the broker's.
2. Every timeout is the deadline of the connection's next read, on trio's clock, set once
   per read (``ReadTimer.deadline``; nothing per frame). The earliest that applies wins:
   - before a successful ``hello``: ``handshake_timeout_ms`` after the accept;
   - part of a frame buffered: ``frame_timeout_ms`` after the read that brought its
     first bytes (a slow sender);
   - nothing buffered: ``idle_timeout_ms`` after the wait for the next request began
     (0: none). A connection that holds consumes or subscriptions, or whose replies
     are not all written yet (a round waiting for its fsync), is not idle: at its idle
     deadline the timer starts over.
3. A connection past a deadline gets the replies to everything it sent before, then
   ``CONNECTION_TIMEOUT`` (id nil, ``details.timeout`` ``"handshake"``, ``"idle"`` or
   ``"frame"``, ``details.limit_ms``), and is closed cleanly (rule 4). Its held consumes
   are dropped, as when a client goes away.
4. A clean close: the broker half-closes, then reads and discards what the peer still
   sends until it closes, for at most ``LINGER_S`` and ``LINGER_BYTES``, so that the error
   frame is not lost to a TCP reset; then it closes. (A peer that does not read its
   replies gets at most ``LINGER_S`` for them.)
5. A refusal, and a handshake or frame timeout (signs of a flood or a slowloris), is
   logged as a warning with the peer address (events ``connection_refused`` and
   ``connection_timeout``), at most one line per second per kind; a line says how many
   were held back since the last one (``held_back``). Every timeout also ends the
   connection's ``connection_close`` line with the reason ``<kind> timeout``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import trio

from protocol import Encoder, ErrorCode, ProtocolError

logger = logging.getLogger("lockgate.server")

__all__ = [
    "FD_RESERVE", "LINGER_BYTES", "LINGER_S", "MAX_LINGERING_REFUSALS", "RateLimitedLog", "ReadTimer",
    "Timeouts", "close_cleanly", "fit_fd_limit", "peer_of", "refusal", "refuse", "transport",
]

#: Open files kept beyond one per connection: the broker's own (log segments, pipes to
#: its helpers, listeners, the event loop) and connections being refused.
FD_RESERVE = 64
#: Longest a clean close waits for the peer to close its side (rule 4).
LINGER_S = 2.0
#: Most bytes a clean close reads and discards.
LINGER_BYTES = 1024 * 1024
#: Refused connections closed cleanly at once; beyond, they are closed at once (a flood).
MAX_LINGERING_REFUSALS = 256

HANDSHAKE = "handshake"
IDLE = "idle"
FRAME = "frame"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The three connection timeouts, in milliseconds (``idle_ms`` 0: none)."""

    handshake_ms: int
    idle_ms: int
    frame_ms: int


class ReadTimer:
    """One connection's read deadline (rule 2): ``deadline`` before each read,
    ``received`` after it, ``expired`` when the deadline passed."""

    __slots__ = ("_handshake_by", "_idle_s", "_frame_s", "_since", "_left", "_expect", "_kind", "_timeouts")

    def __init__(self, timeouts: Timeouts, accepted: float) -> None:
        self._timeouts = timeouts
        self._handshake_by = accepted + timeouts.handshake_ms / 1000
        self._idle_s = timeouts.idle_ms / 1000 if timeouts.idle_ms else float("inf")
        self._frame_s = timeouts.frame_ms / 1000
        #: When the frame partly buffered began to arrive (-1: none is).
        self._since = -1.0
        #: Bytes buffered when the last read began, and after it.
        self._left = 0
        self._expect = 0
        self._kind = IDLE

    def deadline(self, ready: bool, buffered: int) -> float:
        """The deadline of the next read, for a connection that has (``ready``) or has not
        completed ``hello`` and holds ``buffered`` bytes of an unfinished frame."""
        now = trio.current_time()
        if buffered:
            # Fewer bytes than the last read left means a frame completed since: the
            # buffered ones began a new frame in that read.
            if self._since < 0 or buffered < self._expect:
                self._since = now
            deadline, kind = self._since + self._frame_s, FRAME
        else:
            self._since = -1.0
            deadline, kind = now + self._idle_s, IDLE
        if not ready and self._handshake_by < deadline:
            deadline, kind = self._handshake_by, HANDSHAKE
        self._left = buffered
        self._kind = kind
        return deadline

    def received(self, nbytes: int) -> None:
        """The read that ``deadline`` bounded brought ``nbytes``."""
        self._expect = self._left + nbytes

    def expired(self, busy: bool) -> ProtocolError | None:
        """The error for the deadline that passed; None for an idle connection that is
        ``busy`` (holds consumes, subscriptions or unsent replies): it waits on."""
        kind = self._kind
        if kind == IDLE and busy:
            return None
        t = self._timeouts
        if kind == HANDSHAKE:
            limit, what = t.handshake_ms, f"no successful hello within {t.handshake_ms} ms of connecting"
        elif kind == FRAME:
            limit, what = t.frame_ms, f"a frame did not arrive whole within {t.frame_ms} ms"
        else:
            limit, what = t.idle_ms, f"no request for {t.idle_ms} ms"
        return ProtocolError(ErrorCode.CONNECTION_TIMEOUT, f"{what}; closing the connection",
                             details={"timeout": kind, "limit_ms": limit})


def refusal(limit: int) -> bytes:
    """The frame a connection over ``limit`` gets (rule 1)."""
    return Encoder().error(None, ErrorCode.TOO_MANY_CONNECTIONS,
                           f"the broker serves its limit of {limit} connections; try again later",
                           {"limit": limit})


def transport(stream: trio.abc.Stream) -> trio.SocketStream:
    """The TCP stream under ``stream`` (itself, or the transport of a TLS stream)."""
    while not isinstance(stream, trio.SocketStream):
        stream = stream.transport_stream  # type: ignore[attr-defined]
    return stream


async def close_cleanly(stream: trio.abc.Stream) -> None:
    """Rule 4: half-close, discard what the peer still sends until it closes (bounded),
    then close. Over TLS this is done on the TCP connection below (no ``close_notify``:
    ``broker/tls.py``, rule 5)."""
    stream = transport(stream)
    with trio.move_on_after(LINGER_S):
        try:
            await stream.send_eof()
            left = LINGER_BYTES
            while left > 0:
                data = await stream.receive_some(min(left, 65536))
                if not data:
                    break
                left -= len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await trio.aclose_forcefully(stream)


async def refuse(stream: trio.abc.Stream, frame: bytes, linger: bool) -> None:
    """Rule 1: send ``frame``, then close (cleanly if ``linger``)."""
    try:
        with trio.move_on_after(LINGER_S):
            await stream.send_all(frame)
        if linger:
            await close_cleanly(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def peer_of(stream: trio.abc.Stream) -> str:
    """``host:port`` of the peer, or ``?`` when the socket no longer knows it."""
    try:
        return "%s:%s" % transport(stream).socket.getpeername()[:2]
    except OSError:
        return "?"


def fit_fd_limit(max_connections: int) -> int:
    """Raise the soft open-file limit so ``max_connections`` connections and
    ``FD_RESERVE`` more files fit (up to the hard limit); the connection limit that fits,
    with a warning when it is lower than asked."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to fit
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_RESERVE
    infinite = resource.RLIM_INFINITY
    if soft != infinite and soft < want:
        raised = want if hard == infinite else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, raised, exc)
    if soft != infinite and soft < want:
        fits = max(1, soft - FD_RESERVE)
        logger.warning("max_connections %d does not fit the open-file limit of %d (hard limit %s); "
                       "serving at most %d connections (raise the limit with ulimit -n or LimitNOFILE=)",
                       max_connections, soft, "unlimited" if hard == infinite else hard, fits)
        return fits
    return max_connections


class RateLimitedLog:
    """At most one line per ``interval_s`` per kind (rule 5)."""

    __slots__ = ("_logger", "_interval", "_next", "_held")

    def __init__(self, log: logging.Logger, interval_s: float = 1.0) -> None:
        self._logger = log
        self._interval = interval_s
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, *args: Any, extra: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._next[kind] = now + self._interval
        held = self._held.pop(kind, 0)
        if held:
            msg += " (and %d more since the last such line)"
            args = (*args, held)
        self._logger.log(level, msg, *args, extra={**(extra or {}), "held_back": held})
