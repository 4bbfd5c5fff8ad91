"""TLS for the SDK: the contexts ``Client.connect(..., tls=...)`` and ``SyncClient`` take.

    async with Client.connect("mq.example.com:7878", tls=True) as lg: ...     # the system's CAs
    ctx = tls_context(ca="ca.pem", cert="client.pem", key="client.key")     # own CA, client cert
    with SyncClient("10.0.0.5:7878", tls=ctx, server_hostname="mq.internal") as lg: ...

The server is always verified unless the caller passes a context of its own that does
not: ``tls=True`` is ``ssl.create_default_context()`` (the system's CAs, host name
checked), TLS 1.2 or later. The name checked is ``server_hostname`` if given, else the
host of the address (an IP address is checked against the certificate's IP entries).
A certificate that does not verify raises ``ssl.SSLCertVerificationError`` (an
``OSError``) at connect. A broker that requires a client certificate and gets none (or
one it does not trust) ends the connection: ``ConnectionClosed`` (under TLS 1.3, where
the server checks it after the client's handshake) or ``ssl.SSLError`` (TLS 1.2).
"""
from __future__ import annotations

import os
import ssl

from .errors import ConnectionClosed

__all__ = ["TlsOption", "note_handshake", "resolve", "server_name", "tls_context"]

#: What ``tls=`` takes: a context, True for the default verifying context, or None/False
#: for none (plain TCP).
TlsOption = ssl.SSLContext | bool | None

StrPath = str | os.PathLike[str]


def tls_context(*, ca: StrPath | None = None, cert: StrPath | None = None,
                key: StrPath | None = None) -> ssl.SSLContext:
    """A client context that verifies the server, TLS 1.2 or later: against the CA
    certificates in ``ca`` (PEM) if given, else the system's; with the client certificate
    chain ``cert`` (PEM) and its private key ``key`` (default: in ``cert``) if given."""
    if key is not None and cert is None:
        raise ValueError("a client key needs its certificate (cert=)")
    context = ssl.create_default_context(cafile=None if ca is None else os.fspath(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(os.fspath(cert), None if key is None else os.fspath(key))
    return context


def resolve(tls: TlsOption) -> ssl.SSLContext | None:
    """The context for ``tls=``: None for none; ``True``: :func:`tls_context` ()."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return tls_context()
    if isinstance(tls, ssl.SSLContext):
        return tls
    raise TypeError(f"tls= takes an ssl.SSLContext, True or None, not {tls!r}")


def server_name(host: str, server_hostname: str | None) -> str:
    """The name the server's certificate must match."""
    return server_hostname or host


#: Added to the ``ConnectionClosed`` of a TLS connection that closed before its ``hello``
#: was answered: under TLS 1.3 that is how a missing or untrusted client certificate shows.
CLOSED_BEFORE_HELLO = ("the broker closed the TLS connection before answering hello: it may require a "
                       "client certificate (tls_context(cert=...)) that it trusts")


def note_handshake(exc: BaseException, host: str, port: int) -> None:
    """Name the broker in a TLS error raised at connect; say what a close before
    ``hello``'s reply may mean."""
    if isinstance(exc, ssl.SSLError):
        exc.add_note(f"in the TLS handshake with the broker at {host}:{port}")
    elif isinstance(exc, ConnectionClosed) and exc.__cause__ is None:
        exc.add_note(CLOSED_BEFORE_HELLO)
