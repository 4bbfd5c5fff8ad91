"""SCRAM-SHA-256 (RFC 5802, RFC 7677), sans-IO: the messages of both sides and the keys.

The exchange, as the ``hello`` and ``auth`` ops carry it (SPEC.md §4.2)::

    client-first  n,,n=USER,r=CNONCE                     (ClientExchange.first)
    server-first  r=CNONCE+SNONCE,s=BASE64(SALT),i=ITER   (ServerExchange.server_first)
    client-final  c=biws,r=CNONCE+SNONCE,p=BASE64(PROOF)  (ClientExchange.final)
    server-final  v=BASE64(SERVER_SIGNATURE)              (ServerExchange.final)

The password never crosses the wire, and the server stores only the salt, the iteration
count, ``StoredKey`` and ``ServerKey`` (``ScramSecret``): enough to check a proof, not
to make one. The client checks the server's signature (``ClientExchange.verify``), so it
knows the server holds the user's ``ServerKey``.

Only what Lockgate uses is spoken: no channel binding (the GS2 header is always ``n,,``,
so ``c=biws``), no authorization identity, no extensions. A message that is not of this
form raises ``ScramError``; so does a proof that does not match or a server signature
that does not.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

#: The mechanism's name in ``hello``'s ``auth`` map.
MECHANISM = "SCRAM-SHA-256"
#: Iterations of PBKDF2 for a new secret unless asked otherwise (RFC 7677's minimum).
DEFAULT_ITERATIONS = 4096
MIN_ITERATIONS = 4096
#: The most iterations a client computes: a server asking for more is refused (it would
#: stall the client for seconds).
MAX_ITERATIONS = 1_000_000
#: Bytes of a new random salt.
SALT_BYTES = 16
#: The GS2 header (no channel binding, no authorization identity) and its base64.
GS2_HEADER = "n,,"
CHANNEL_BINDING = base64.b64encode(GS2_HEADER.encode()).decode()  # "biws"
#: Longest user name and nonce accepted in a message.
MAX_NAME = 255
MAX_NONCE = 255

#: (password, salt, iterations) -> (ClientKey, ServerKey)
KeyDerivation = Callable[[str, bytes, int], "tuple[bytes, bytes]"]


class ScramError(ValueError):
    """A SCRAM message that is malformed, or a proof or signature that does not match."""


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ScramError(f"{what} is not base64") from None


def saslprep(text: str, *, allow_unassigned: bool = True) -> str:
    """``text`` prepared by SASLprep (RFC 4013): non-ASCII spaces become spaces, soft
    hyphens and the like go, NFKC; control, private-use and other prohibited
    characters, and bad bidirectional text, raise ``ScramError``. Unassigned code points
    are refused for a stored password (``allow_unassigned=False``)."""
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c))
    prepared = unicodedata.normalize("NFKC", mapped)
    for c in prepared:
        if (stringprep.in_table_c12(c) or stringprep.in_table_c21_c22(c) or stringprep.in_table_c3(c)
                or stringprep.in_table_c4(c) or stringprep.in_table_c5(c) or stringprep.in_table_c6(c)
                or stringprep.in_table_c7(c) or stringprep.in_table_c8(c) or stringprep.in_table_c9(c)):
            raise ScramError(f"prohibited character U+{ord(c):04X} (SASLprep)")
        if not allow_unassigned and stringprep.in_table_a1(c):
            raise ScramError(f"unassigned character U+{ord(c):04X} (SASLprep)")
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared) or not (
                stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise ScramError("mixed right-to-left and left-to-right text (SASLprep)")
    return prepared


def salted_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) of ``password``: HMAC of ``SaltedPassword =
    PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations)`` with "Client Key" and
    "Server Key"."""
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScramSecret:
    """What a server stores of a password: salt, iterations, StoredKey = H(ClientKey),
    ServerKey."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def __post_init__(self) -> None:
        if not self.salt:
            raise ScramError("the salt must not be empty")
        if not MIN_ITERATIONS <= self.iterations <= MAX_ITERATIONS:
            raise ScramError(f"iterations must be {MIN_ITERATIONS} to {MAX_ITERATIONS}")
        if len(self.stored_key) != 32 or len(self.server_key) != 32:
            raise ScramError("stored_key and server_key must be 32 bytes")

    @classmethod
    def from_password(cls, password: str, *, salt: bytes | None = None,
                      iterations: int = DEFAULT_ITERATIONS) -> ScramSecret:
        """The secret of ``password`` with a new random salt (unless given)."""
        saslprep(password, allow_unassigned=False)
        if not password:
            raise ScramError("the password must not be empty")
        if salt is None:
            salt = secrets.token_bytes(SALT_BYTES)
        client_key, server_key = salted_keys(password, salt, iterations)
        return cls(salt=salt, iterations=iterations, stored_key=hashlib.sha256(client_key).digest(),
                   server_key=server_key)


def _attributes(message: str, names: str, what: str) -> list[str]:
    """The values of ``message``'s ``k=v`` attributes, which must be exactly ``names`` in order."""
    parts = message.split(",")
    if len(parts) != len(names):
        raise ScramError(f"{what} must have the attributes {', '.join(names)}")
    values = []
    for part, name in zip(parts, names):
        if part[:2] != name + "=":
            raise ScramError(f"{what}: expected {name}=, got {part[:2]!r}")
        values.append(part[2:])
    return values


def _nonce(value: str, what: str) -> str:
    """A nonce: 1..MAX_NONCE printable ASCII characters but ','."""
    if not 0 < len(value) <= MAX_NONCE or not all("!" <= c <= "~" and c != "," for c in value):
        raise ScramError(f"{what}: the nonce must be 1..{MAX_NONCE} printable characters other than ','")
    return value


def _decode_name(value: str) -> str:
    """A saslname: ``=2C`` is ',' and ``=3D`` is '='; any other '=' is malformed."""
    if not 0 < len(value) <= MAX_NAME:
        raise ScramError(f"the user name must be 1..{MAX_NAME} characters")
    out, i = [], 0
    while i < len(value):
        if value[i] == "=":
            code = value[i + 1:i + 3]
            if code not in ("2C", "3D"):
                raise ScramError("the user name has a bad '=' escape")
            out.append("," if code == "2C" else "=")
            i += 3
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _encode_name(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def new_nonce() -> str:
    """24 random bytes as URL-safe base64 (32 characters, never ',')."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class ClientFirst:
    """A parsed client-first message: the user, the client's nonce, and the message
    without its GS2 header (part of the AuthMessage)."""

    user: str
    nonce: str
    bare: str


def parse_client_first(message: str) -> ClientFirst:
    """Parse ``n,,n=USER,r=NONCE`` (no channel binding, no authzid, no extensions)."""
    if not message.startswith(GS2_HEADER):
        raise ScramError("client-first must begin with 'n,,' (no channel binding, no authorization identity)")
    bare = message[len(GS2_HEADER):]
    name, nonce = _attributes(bare, "nr", "client-first")
    return ClientFirst(_decode_name(name), _nonce(nonce, "client-first"), bare)


class ClientExchange:
    """The client's side: ``first()``, then ``final(server_first)``, then
    ``verify(server_final)``. ``derive`` computes (ClientKey, ServerKey) from the
    password, salt and iterations (default ``salted_keys``; a client may cache it)."""

    def __init__(self, user: str, password: str, *, nonce: str | None = None,
                 derive: KeyDerivation = salted_keys) -> None:
        if not user:
            raise ScramError("the user name must not be empty")
        self.user = user
        self._password = password
        self._nonce = _nonce(nonce if nonce is not None else new_nonce(), "client nonce")
        self._derive = derive
        self._bare = f"n={_encode_name(user)},r={self._nonce}"
        self._server_signature = b""

    def first(self) -> str:
        """The client-first message."""
        return GS2_HEADER + self._bare

    def final(self, server_first: str) -> str:
        """The client-final message (with the proof) for the server's ``server_first``."""
        nonce, salt_b64, iterations_text = _attributes(server_first, "rsi", "server-first")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramError("server-first: the nonce does not extend the client's")
        _nonce(nonce, "server-first")
        salt = _unb64(salt_b64, "server-first salt")
        if not iterations_text.isdigit() or not MIN_ITERATIONS <= int(iterations_text) <= MAX_ITERATIONS:
            raise ScramError(f"server-first: iterations must be {MIN_ITERATIONS} to {MAX_ITERATIONS}")
        client_key, server_key = self._derive(self._password, salt, int(iterations_text))
        without_proof = f"c={CHANNEL_BINDING},r={nonce}"
        auth_message = f"{self._bare},{server_first},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self._server_signature = _hmac(server_key, auth_message)
        return f"{without_proof},p={_b64(proof)}"

    def verify(self, server_final: str) -> None:
        """Check the server's signature; ``ScramError`` if it is not the expected one."""
        if not self._server_signature:
            raise ScramError("final() must come before verify()")
        (value,) = _attributes(server_final, "v", "server-final")
        if not hmac.compare_digest(_unb64(value, "server signature"), self._server_signature):
            raise ScramError("the server's signature does not match: it does not know this user's secret")


class ServerExchange:
    """The server's side for one client-first message and the user's stored secret:
    ``server_first`` to send, then ``final(client_final)`` checks the proof and returns
    the server-final message."""

    def __init__(self, first: ClientFirst, secret: ScramSecret, *, nonce: str | None = None) -> None:
        self.user = first.user
        self._secret = secret
        self._nonce = first.nonce + _nonce(nonce if nonce is not None else new_nonce(), "server nonce")
        self._client_bare = first.bare
        self.server_first = f"r={self._nonce},s={_b64(secret.salt)},i={secret.iterations}"

    def final(self, client_final: str) -> str:
        """The server-final message; ``ScramError`` if the proof is wrong or the message malformed."""
        binding, nonce, proof_b64 = _attributes(client_final, "crp", "client-final")
        if binding != CHANNEL_BINDING:
            raise ScramError(f"client-final: channel binding must be c={CHANNEL_BINDING} (none)")
        if not hmac.compare_digest(nonce.encode(), self._nonce.encode()):
            raise ScramError("client-final: the nonce is not the one of this exchange")
        proof = _unb64(proof_b64, "client proof")
        if len(proof) != 32:
            raise ScramError("client-final: the proof must be 32 bytes")
        without_proof = client_final[:client_final.rindex(",p=")]
        auth_message = f"{self._client_bare},{self.server_first},{without_proof}".encode()
        signature = _hmac(self._secret.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._secret.stored_key):
            raise ScramError("the proof does not match")
        return f"v={_b64(_hmac(self._secret.server_key, auth_message))}"
