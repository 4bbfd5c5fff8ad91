"""TLS on the client port (``tls_cert``, ``tls_key``, ``tls_client_ca``; SPEC.md §1.3).

Rules:

1. The server context is TLS 1.2 or later with the ``ssl`` module's defaults for a
   server (``ssl.create_default_context(Purpose.CLIENT_AUTH)``), the certificate chain of
   ``tls_cert`` and the key of ``tls_key``. With ``tls_client_ca`` a client must present
   a certificate that this CA signed, or the TLS handshake fails. No ALPN is set.
   The files are read once, at start: new certificates take a restart.
2. Everything of a connection runs inside the TLS session: framing, ``hello``,
   authentication. The TLS handshake runs first, within the connection's
   ``handshake_timeout_ms`` (counted from the accept, so TLS and ``hello`` share it).
3. A connection whose first byte is not a TLS handshake record (0x16) is a plain client:
   it gets ``MALFORMED_FRAME`` (id nil, ``details.tls = "required"``) in plain text and a
   clean close (``connlimits``, rule 4). A plain client's first frame is ``hello``, far
   below 16 MiB, so its length prefix starts with 0x00: none is mistaken for TLS.
4. A TLS handshake that fails (no common version, a client certificate missing or not
   trusted, garbage) or does not finish in time ends in a clean close of the TCP
   connection, with nothing more sent; each is logged as a warning with the peer and the
   reason (at most one line a second per kind).
5. The broker neither sends nor needs ``close_notify``: frames are self-delimiting, so a
   TCP close ends the session, and a truncated frame is seen as one. A client's EOF
   without ``close_notify`` is no error (``OP_IGNORE_UNEXPECTED_EOF``): no alert is
   sent, and the replies to what it sent before still go out.
6. ``TlsStream.receive_some`` returns all that the records received so far decrypt to
   (up to its ``max_bytes``), not one record (16 KiB at most) per call: a round then
   holds as many requests over TLS as without it. No session tickets are sent (no
   resumption): a client reconnects with a full handshake.
"""
from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

import trio

__all__ = ["TLS_HANDSHAKE_RECORD", "TlsStream", "check_ca", "check_cert", "check_key", "first_byte",
           "handshake", "peer_summary", "server_context"]

#: The first byte of a TLS record carrying a handshake message (a ClientHello).
TLS_HANDSHAKE_RECORD = 0x16

#: What a receive asks of the TCP stream.
RECEIVE_BYTES = 256 * 1024


class TlsStream(trio.abc.Stream):
    """The server side of a TLS session over a TCP stream, on ``ssl.MemoryBIO`` (rule 6).
    One task receives; any number send (their records go out whole, in order).
    ``do_handshake`` first; a TLS failure is ``trio.BrokenResourceError`` from the
    ``ssl.SSLError``, after the alert that explains it has been sent when it could be."""

    def __init__(self, transport: trio.SocketStream, context: ssl.SSLContext) -> None:
        #: The TCP stream (``connlimits.transport`` finds it by this name).
        self.transport_stream = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        #: Held while records are taken from the outgoing BIO and written: they go out in
        #: the order they were made.
        self._send_lock = trio.Lock()

    def version(self) -> str | None:
        return self._ssl.version()

    def getpeercert(self) -> Any:
        return self._ssl.getpeercert()

    async def _flush(self) -> None:
        """Write what the TLS layer has made (records, alerts)."""
        async with self._send_lock:
            data = self._outgoing.read()
            if data:
                await self.transport_stream.send_all(data)

    async def _receive_records(self) -> bool:
        """Feed the next bytes from the TCP stream to the TLS layer; False at EOF."""
        data = await self.transport_stream.receive_some(RECEIVE_BYTES)
        if data:
            self._incoming.write(data)
            return True
        self._incoming.write_eof()
        return False

    async def do_handshake(self) -> None:
        while True:
            try:
                self._ssl.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError as exc:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self._flush()  # the alert
                raise trio.BrokenResourceError(str(exc)) from exc
            await self._flush()
            if done:
                return
            await self._receive_records()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """What the records received so far decrypt to, up to ``max_bytes`` (waiting for
        a record if none is whole); ``b""`` at the end of the stream."""
        limit = max_bytes or RECEIVE_BYTES
        read = self._ssl.read
        while True:
            chunks: list[bytes] = []
            got = 0
            ended = False
            try:
                while got < limit:
                    piece = read(limit - got)
                    if not piece:
                        ended = True
                        break
                    chunks.append(piece)
                    got += len(piece)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                ended = True  # close_notify, or the TCP stream ended (rule 5)
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            if self._outgoing.pending:
                await self._flush()  # e.g. the answer to a key update
            if chunks:
                return b"".join(chunks)
            if ended:
                return b""
            await self._receive_records()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            await trio.lowlevel.checkpoint()
            return
        async with self._send_lock:
            try:
                self._ssl.write(data)
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            await self.transport_stream.send_all(self._outgoing.read())

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Close the TCP stream (no ``close_notify``: rule 5)."""
        await self.transport_stream.aclose()


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read it: {getattr(exc, 'strerror', None) or exc}") from None


def check_cert(path: Path) -> None:
    """``tls_cert`` must be a readable PEM file with at least one certificate."""
    if "-----BEGIN CERTIFICATE-----" not in _read(path):
        raise ValueError("no PEM certificate in it (-----BEGIN CERTIFICATE-----)")
    check_ca(path)


def check_key(path: Path) -> None:
    """``tls_key`` must be a readable PEM file with a private key."""
    text = _read(path)
    if "PRIVATE KEY-----" not in text:
        raise ValueError("no PEM private key in it (-----BEGIN PRIVATE KEY-----)")


def check_ca(path: Path) -> None:
    """``tls_client_ca`` (and ``tls_cert``) must hold PEM certificates ``ssl`` can load."""
    _read(path)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise ValueError(f"not PEM certificates: {exc.reason or exc}") from None


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """The server's context (rule 1). A key that does not belong to the certificate (or a
    file that cannot be used) is a ``ValueError`` naming the settings."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.num_tickets = 0  # no resumption (rule 6)
    # A TCP close without close_notify is the end of the session (rule 5), not an error
    # that OpenSSL 3 would answer with a fatal decode_error alert, after which no reply
    # could be sent: a client that half-closes still gets the replies to what it sent.
    context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"tls_cert and tls_key cannot be used together: {reason}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"tls_client_ca cannot be used: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def first_byte(stream: trio.SocketStream) -> int | None:
    """The first byte the client sent, left in the socket for the TLS layer (None: it
    closed without sending any). The caller bounds the time."""
    first = await stream.socket.recv(1, socket.MSG_PEEK)
    return first[0] if first else None


async def handshake(stream: trio.SocketStream, context: ssl.SSLContext) -> TlsStream:
    """The TLS session over ``stream``, handshaken. A failed handshake raises
    ``trio.BrokenResourceError`` (its ``__cause__`` says why). The caller bounds the time."""
    tls = TlsStream(stream, context)
    await tls.do_handshake()
    return tls


def peer_summary(stream: TlsStream) -> dict[str, str]:
    """The TLS version and, when one was verified, the client certificate's subject
    common name, for the connection's log line."""
    out = {"tls": stream.version() or "?"}
    cert = stream.getpeercert()
    if cert:
        for rdn in cert.get("subject", ()):
            for name, value in rdn:
                if name == "commonName":
                    out["client_cert"] = value
    return out
