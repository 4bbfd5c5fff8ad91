"""Authenticating a connection (SPEC.md §4.2), for both clients.

A client given ``user=`` and ``password=`` runs SCRAM-SHA-256: its client-first message
rides in ``hello``, its client-final in an ``auth`` request, and it checks the broker's
signature in the reply, so it knows the broker holds the user's secret (the password
itself never crosses the wire). A client given ``token=`` sends the bearer token in
``hello``. A client given credentials refuses a broker that does not authenticate (it
could not tell that broker from an impostor), and one given none refuses a broker that
requires them, both with a clear error at connect.

The PBKDF2 of a password is computed once per (password, salt, iterations) in a process
(``derive``, a small cache), so a client that connects again pays only for HMACs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from protocol.scram import MECHANISM as SCRAM
from protocol.scram import ClientExchange, ScramError, salted_keys

from .errors import AuthFailed, Unauthenticated

#: The bearer token mechanism's name.
TOKEN = "TOKEN"
#: The environment variables ``brokerctl`` takes credentials from.
USER_ENV = "LOCKGATE_USER"
PASSWORD_ENV = "LOCKGATE_PASSWORD"
TOKEN_ENV = "LOCKGATE_TOKEN"


@lru_cache(maxsize=16)
def derive(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) of a password, remembered for the next connect."""
    return salted_keys(password, salt, iterations)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Who a client connects as: ``user`` and ``password`` (SCRAM-SHA-256), or ``token``."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.token is not None:
            if self.user is not None or self.password is not None:
                raise ValueError("give user= and password=, or token=, not both")
            if not self.token:
                raise ValueError("token must not be empty")
        elif self.user is None or self.password is None:
            raise ValueError("user= needs password= (and password= needs user=)")
        elif not self.user:
            raise ValueError("user must not be empty")

    @classmethod
    def of(cls, user: str | None, password: str | None, token: str | None) -> Credentials | None:
        """The credentials given, or None when none were."""
        if user is None and password is None and token is None:
            return None
        return cls(user, password, token)


class Handshake:
    """One connection's authentication: ``hello_auth`` is hello's ``auth`` argument;
    ``after_hello`` takes the hello reply's ``auth`` and gives the ``auth`` request's
    arguments (None: done); ``after_auth`` checks that request's reply. ``credentials``
    None: the broker must not require authentication."""

    def __init__(self, credentials: Credentials | None) -> None:
        self.credentials = credentials
        self._scram: ClientExchange | None = None
        #: The user the broker authenticated this connection as.
        self.user: str | None = None

    def hello_auth(self) -> dict[str, Any] | None:
        creds = self.credentials
        if creds is None:
            return None
        if creds.token is not None:
            return {"mechanism": TOKEN, "token": creds.token}
        assert creds.user is not None and creds.password is not None
        try:
            self._scram = ClientExchange(creds.user, creds.password, derive=derive)
        except ScramError as exc:
            raise AuthFailed(f"cannot authenticate as {creds.user!r}: {exc}") from None
        return {"mechanism": SCRAM, "client_first": self._scram.first()}

    def after_hello(self, auth: Any) -> dict[str, Any] | None:
        if self.credentials is None:
            if isinstance(auth, dict) and "mechanisms" in auth:
                raise Unauthenticated("the broker requires authentication: connect with user= and "
                                      "password=, or token=")
            return None
        if not isinstance(auth, dict):
            raise AuthFailed("the broker does not authenticate (its auth is off): connect without credentials")
        if self._scram is None:
            self.user = auth.get("user")
            if self.user is None:
                raise AuthFailed("the broker did not confirm the token")
            return None
        server_first = auth.get("server_first")
        if type(server_first) is not str:
            raise AuthFailed("the broker answered SCRAM's first message without server_first")
        try:
            return {"client_final": self._scram.final(server_first)}
        except ScramError as exc:
            raise AuthFailed(f"the broker's SCRAM message is not acceptable: {exc}") from None

    def after_auth(self, result: dict[str, Any]) -> None:
        assert self._scram is not None
        server_final = result.get("server_final")
        try:
            if type(server_final) is not str:
                raise ScramError("no server_final in the reply")
            self._scram.verify(server_final)
        except ScramError as exc:
            raise AuthFailed(f"the broker could not prove it knows this user's secret: {exc}") from None
        self.user = result.get("user")
