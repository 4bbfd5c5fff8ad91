"""Authentication and permissions (SPEC.md §4.2, §4.3), with ``auth = "required"``.

Rules:

1. **The users file** (``users_file``, format in ``protocol/users.py``) is read at start
   (a bad file stops the start) and again whenever its modification time, size or inode
   changes, checked every ``USERS_POLL_S`` on trio's clock. A file that cannot be read or
   parsed is logged as an error and the users read before stay in force.
2. **A connection authenticates once**: with a bearer token in ``hello``, or with
   SCRAM-SHA-256, whose first message rides in ``hello`` (or an ``auth`` request) and
   whose final message in an ``auth`` request. Until then every request but ``hello``
   and ``auth`` gets ``UNAUTHENTICATED``. The connection keeps its user for its life; each
   permission check reads that user's permissions from the current file, so a change
   applies to the next request of every connection (a user no longer in the file holds
   no permission).
3. **An unknown user** goes through SCRAM like a known one (a salt derived from the name
   and a key of this process), and fails at the proof, so the replies do not tell which
   names exist.
4. **Failed attempts are limited per peer address** (``FailureLimit``): a failure's
   ``AUTH_FAILED`` is sent after ``0.1 s * 2**(n-1)`` (at most 5 s), n counting the
   address's recent failures, and the connection is closed. An address may fail
   ``AUTH_FAILURE_BURST`` times, then once per ``AUTH_FAILURE_REFILL_S``; beyond, its
   attempts are refused unchecked (``AUTH_FAILED``, ``details.retry_after_ms``, after 5 s).
   A success does not reset the count.
5. **Connections per user** (``max_connections_per_user``, 0: no limit but
   ``max_connections``): a connection whose authentication succeeds while its user
   already has that many authenticated connections open gets ``TOO_MANY_CONNECTIONS``
   (``details.limit``, ``details.user``) as the reply to that request and is closed
   cleanly; logged (``connection_refused``, at most one line a second). The server
   tells ``disconnected`` when an authenticated connection ends.
6. **The audit lines** (logger ``lockgate.auth``): ``auth_ok`` and ``auth_failed``
   name the peer and the user (as claimed; nil for an unknown token), never a password,
   token, proof or SCRAM message; ``permission_denied`` at most once a second.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from protocol import ErrorCode, ProtocolError
from protocol.scram import MECHANISM as SCRAM, DEFAULT_ITERATIONS, ScramError, ScramSecret, ServerExchange
from protocol.scram import parse_client_first
from protocol.users import MAX_TOKEN, MIN_TOKEN, Permission, User, Users, UsersFileError, parse

from .connlimits import RateLimitedLog

if TYPE_CHECKING:
    from .commands import Session

logger = logging.getLogger("lockgate.auth")

#: The bearer token mechanism's name in ``hello``'s ``auth`` map.
TOKEN = "TOKEN"
MECHANISMS = (SCRAM, TOKEN)
#: How often the users file is checked for a change, in seconds (rule 1).
USERS_POLL_S = 1.0
#: Failures an address may make at once, and how often it may fail again after (rule 4).
AUTH_FAILURE_BURST = 10
AUTH_FAILURE_REFILL_S = 6.0
#: The delay of the first failure's reply, doubling per failure up to the last.
AUTH_DELAY_BASE_S = 0.1
AUTH_DELAY_MAX_S = 5.0
#: Addresses whose failures are remembered at most (the oldest are forgotten first).
MAX_TRACKED_ADDRESSES = 100_000


def read_users(path: Path) -> Users:
    """The users of the file at ``path``; ``UsersFileError`` naming the file otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return parse(text)
    except UsersFileError as exc:
        raise UsersFileError(f"{path}: {exc}") from None


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


def host_of(peer: str) -> str:
    """The address part of ``host:port`` (IPv6 too: split at the last colon)."""
    return peer.rpartition(":")[0] or peer


class FailureLimit:
    """Failed authentications per address as a leaky bucket (rule 4); times are
    trio-clock seconds passed in, so it is tested without a clock."""

    __slots__ = ("_level",)

    def __init__(self) -> None:
        #: address -> (failures not yet leaked away, when that was counted)
        self._level: dict[str, tuple[float, float]] = {}

    def _current(self, host: str, now: float) -> float:
        level, at = self._level.get(host, (0.0, now))
        return max(0.0, level - (now - at) / AUTH_FAILURE_REFILL_S)

    def retry_after(self, host: str, now: float) -> float:
        """Seconds until ``host`` may try again; 0 when it may now."""
        over = self._current(host, now) + 1 - AUTH_FAILURE_BURST
        return over * AUTH_FAILURE_REFILL_S if over > 0 else 0.0

    def failed(self, host: str, now: float) -> tuple[int, float]:
        """Count a failure of ``host``: (its recent failures, the delay of its reply in s)."""
        level = self._current(host, now) + 1
        self._level.pop(host, None)
        self._level[host] = (level, now)  # newest last: the oldest are dropped first
        if len(self._level) > MAX_TRACKED_ADDRESSES:
            for old in list(self._level)[:len(self._level) // 10]:
                del self._level[old]
        count = math.ceil(level)
        return count, min(AUTH_DELAY_BASE_S * 2 ** (count - 1), AUTH_DELAY_MAX_S)


class Authenticator:
    """The users, the handshake's checks and the permission lookups of one broker."""

    def __init__(self, path: Path, clock: Callable[[], float], max_per_user: int = 0) -> None:
        self.path = Path(path)
        #: Authenticated connections open per user, and how many one user may have (rule 5).
        self.max_per_user = max_per_user
        self.connected: dict[str, int] = {}
        self.users = Users()
        self._clock = clock
        self._stamp: tuple[int, int, int] | None = None
        self._limit = FailureLimit()
        #: Keys the SCRAM salts and keys of unknown users are derived from (rule 3).
        self._fake_key = secrets.token_bytes(32)
        self._rare = RateLimitedLog(logger)

    # -- the users file ------------------------------------------------------------------

    def load(self) -> None:
        """Read the users file (rule 1); ``UsersFileError`` if it cannot be used."""
        stamp = _stamp(self.path) if self.path.exists() else None
        self.users = read_users(self.path)
        self._stamp = stamp
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        if mode & 0o077:
            logger.warning("users file %s is readable by others (mode %o): its SCRAM keys allow "
                           "guessing passwords offline; chmod 600 it", self.path, mode,
                           extra={"event": "users_file_open", "path": str(self.path), "mode": f"{mode:o}"})

    def reload_if_changed(self) -> bool:
        """Read the users file again if it changed (rule 1); True if new users took effect."""
        try:
            stamp = _stamp(self.path)
        except OSError as exc:
            stamp = None
            error = f"{self.path}: {exc.strerror or exc}"
        if stamp is not None and stamp == self._stamp:
            return False
        if stamp is not None:
            try:
                users = read_users(self.path)
            except UsersFileError as exc:
                error = str(exc)
            else:
                self._stamp, self.users = stamp, users
                logger.info("users file %s read again: %d users", self.path, len(users),
                            extra={"event": "users_reloaded", "path": str(self.path), "users": len(users)})
                return True
        self._rare.log(logging.ERROR, "users_file_invalid", "users file unusable, the users read before stay "
                       "in force: %s", error, extra={"event": "users_file_invalid", "path": str(self.path),
                                                      "error": error})
        return False

    async def watch(self) -> None:
        """Re-read the users file whenever it changes, until cancelled."""
        while True:
            await trio.sleep(USERS_POLL_S)
            self.reload_if_changed()

    # -- the handshake ---------------------------------------------------------------------

    def hello(self, session: Session, auth: Any) -> dict[str, Any]:
        """The ``auth`` field of the hello reply; ``auth`` is hello's argument (nil: the
        client learns the mechanisms and authenticates with ``auth``)."""
        if session.user:
            return {"user": session.user}  # a later hello keeps the connection's user
        if auth is None:
            return {"mechanisms": list(MECHANISMS)}
        if type(auth) is not dict:
            raise _invalid("auth", "auth must be a map with a mechanism")
        unknown = next((k for k in auth if k not in ("mechanism", "client_first", "token")), None)
        if unknown is not None:
            raise _invalid(f"auth.{unknown}" if type(unknown) is str else "auth", f"auth takes no {unknown!r}")
        return self.start(session, auth.get("mechanism"), auth.get("client_first"), auth.get("token"), "auth.")

    def start(self, session: Session, mechanism: Any, client_first: Any, token: Any,
              prefix: str = "") -> dict[str, Any]:
        """Begin authenticating: check a token, or answer a SCRAM client-first message."""
        session.pending = None
        if mechanism not in MECHANISMS:
            raise _invalid(f"{prefix}mechanism", f"mechanism must be {' or '.join(MECHANISMS)}")
        self._refuse_if_blocked(session, mechanism)
        if mechanism == TOKEN:
            if type(token) is not str or not MIN_TOKEN <= len(token) <= MAX_TOKEN:
                raise _invalid(f"{prefix}token", f"token must be a string of {MIN_TOKEN} to {MAX_TOKEN} characters")
            user = self.users.user_for_token(token)
            if user is None:
                raise self._failed(session, TOKEN, None, "unknown token")
            return self._authenticated(session, user.name, TOKEN)
        if type(client_first) is not str:
            raise _invalid(f"{prefix}client_first", "client_first must be a SCRAM client-first message")
        try:
            first = parse_client_first(client_first)
        except ScramError as exc:
            raise _invalid(f"{prefix}client_first", str(exc)) from None
        held = self.users.get(first.user)
        known = held is not None and held.scram is not None
        secret = held.scram if held is not None and held.scram is not None else self._fake_secret(first.user)
        exchange = ServerExchange(first, secret)
        session.pending = (exchange, known)
        return {"mechanism": SCRAM, "server_first": exchange.server_first}

    def step(self, session: Session, args: dict[str, Any]) -> dict[str, Any]:
        """The ``auth`` request: start (``mechanism`` with ``client_first`` or ``token``) or
        finish SCRAM (``client_final``)."""
        if session.user:
            raise _invalid("mechanism", f"this connection is authenticated as {session.user!r} already")
        client_final = args.get("client_final")
        if client_final is None:
            return self.start(session, args.get("mechanism"), args.get("client_first"), args.get("token"))
        if session.pending is None:
            raise _invalid("client_final", "no SCRAM exchange in progress: send client_first first")
        if type(client_final) is not str:
            raise _invalid("client_final", "client_final must be a SCRAM client-final message")
        exchange, known = session.pending
        session.pending = None
        self._refuse_if_blocked(session, SCRAM)
        try:
            server_final = exchange.final(client_final)
        except ScramError as exc:
            raise self._failed(session, SCRAM, exchange.user, str(exc) if known else "unknown user") from None
        if not known or self.users.get(exchange.user) is None:
            raise self._failed(session, SCRAM, exchange.user, "unknown user")
        return {**self._authenticated(session, exchange.user, SCRAM), "server_final": server_final}

    def _fake_secret(self, user: str) -> ScramSecret:
        """The SCRAM secret an unknown user seems to have (rule 3)."""
        seed = hmac.new(self._fake_key, user.encode(), hashlib.sha256).digest()
        return ScramSecret(salt=seed[:16], iterations=DEFAULT_ITERATIONS,
                           stored_key=hashlib.sha256(seed).digest(), server_key=hashlib.sha256(seed[::-1]).digest())

    def _authenticated(self, session: Session, user: str, mechanism: str) -> dict[str, Any]:
        held = self.connected.get(user, 0)
        if self.max_per_user and held >= self.max_per_user:
            limit = self.max_per_user
            session.close_after = True
            session.closing = f"user {user!r} has its limit of {limit} connections"
            self._rare.log(logging.WARNING, "max_connections_per_user", "refused a connection from %s: user %r "
                           "has %d connections open, its limit", session.peer, user, held,
                           extra={"event": "connection_refused", "peer": session.peer, "user": user,
                                  "limit": limit})
            raise ProtocolError(ErrorCode.TOO_MANY_CONNECTIONS,
                                f"user {user!r} has its limit of {limit} connections open; try again later",
                                details={"limit": limit, "user": user})
        self.connected[user] = held + 1
        session.user = user
        session.ready = True
        logger.info("connection from %s authenticated as %r (%s)", session.peer, user, mechanism,
                    extra={"event": "auth_ok", "peer": session.peer, "user": user, "mechanism": mechanism,
                           "client": session.client})
        return {"mechanism": mechanism, "user": user}

    def disconnected(self, user: str) -> None:
        """An authenticated connection of ``user`` ended (rule 5)."""
        left = self.connected.get(user, 0) - 1
        if left > 0:
            self.connected[user] = left
        else:
            self.connected.pop(user, None)

    def _refuse_if_blocked(self, session: Session, mechanism: str) -> None:
        """AUTH_FAILED, unchecked, for an address over its failures (rule 4)."""
        host = host_of(session.peer)
        wait = self._limit.retry_after(host, self._clock())
        if not wait:
            return
        session.auth_delay = AUTH_DELAY_MAX_S
        session.closing = "authentication refused: too many failures"
        self._rare.log(logging.WARNING, "auth_blocked", "connection from %s refused authentication unchecked: "
                       "too many failures from %s", session.peer, host,
                       extra={"event": "auth_failed", "peer": session.peer, "user": None, "mechanism": mechanism,
                              "reason": "too many failures from this address"})
        retry_ms = math.ceil(wait * 1000)
        raise ProtocolError(ErrorCode.AUTH_FAILED, f"too many failed authentications from this address; "
                            f"try again in {retry_ms} ms", details={"mechanism": mechanism, "retry_after_ms": retry_ms})

    def _failed(self, session: Session, mechanism: str, user: str | None, reason: str) -> ProtocolError:
        """Count, log and delay a failed attempt (rule 4); the error to send."""
        failures, delay = self._limit.failed(host_of(session.peer), self._clock())
        session.auth_delay = delay
        session.closing = "authentication failed"
        logger.warning("connection from %s failed to authenticate as %r (%s): %s; answered after %d ms",
                       session.peer, user, mechanism, reason, round(delay * 1000),
                       extra={"event": "auth_failed", "peer": session.peer, "user": user, "mechanism": mechanism,
                              "reason": reason, "failures": failures, "delay_ms": round(delay * 1000)})
        return ProtocolError(ErrorCode.AUTH_FAILED, "authentication failed", details={"mechanism": mechanism})

    # -- permissions -----------------------------------------------------------------------

    def user(self, name: str) -> User | None:
        """The user ``name`` as the current file has it."""
        return self.users.get(name)

    def denied(self, session: Session, op: str, permission: Permission | str, resource: str) -> ProtocolError:
        """The PERMISSION_DENIED of a request (logged at most once a second)."""
        self._rare.log(logging.WARNING, "permission_denied", "user %r from %s may not %s %r (%s)",
                       session.user, session.peer, permission, resource, op,
                       extra={"event": "permission_denied", "peer": session.peer, "user": session.user,
                              "op": op, "permission": str(permission), "resource": resource})
        return ProtocolError(ErrorCode.PERMISSION_DENIED,
                             f"user {session.user!r} may not {permission} {resource!r}",
                             details={"permission": str(permission), "resource": resource, "user": session.user})


def _invalid(field: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_ARGUMENT, message, details={"field": field})
