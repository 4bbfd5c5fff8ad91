"""SCRAM-SHA-256 without sockets: the RFC 7677 example exchange, both sides against each
other, and every way a message or proof can be wrong."""
from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.scram import (
    DEFAULT_ITERATIONS,
    MAX_ITERATIONS,
    ClientExchange,
    ScramError,
    ScramSecret,
    ServerExchange,
    parse_client_first,
    saslprep,
    salted_keys,
)

# RFC 7677, section 3: user "user", password "pencil".
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_FIRST = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
CLIENT_FINAL = ("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

PENCIL = ScramSecret.from_password("pencil", salt=SALT, iterations=4096)


def test_rfc7677_client_side() -> None:
    client = ClientExchange("user", "pencil", nonce=CLIENT_NONCE)
    assert client.first() == CLIENT_FIRST
    assert client.final(SERVER_FIRST) == CLIENT_FINAL
    client.verify(SERVER_FINAL)


def test_rfc7677_server_side() -> None:
    first = parse_client_first(CLIENT_FIRST)
    assert (first.user, first.nonce, first.bare) == ("user", CLIENT_NONCE, "n=user,r=rOprNGfwEbeRWgbNEkqO")
    server = ServerExchange(first, PENCIL, nonce=SERVER_NONCE)
    assert server.server_first == SERVER_FIRST
    assert server.final(CLIENT_FINAL) == SERVER_FINAL


def test_the_stored_secret_is_not_the_password() -> None:
    assert len(PENCIL.stored_key) == len(PENCIL.server_key) == 32
    assert b"pencil" not in PENCIL.stored_key + PENCIL.server_key + PENCIL.salt
    fresh = ScramSecret.from_password("pencil")
    assert fresh.iterations == DEFAULT_ITERATIONS >= 4096
    assert fresh.salt != SALT and len(fresh.salt) == 16
    assert fresh.stored_key != PENCIL.stored_key  # another salt, other keys


@given(user=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30),
       password=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30))
def test_both_sides_agree(user: str, password: str) -> None:
    secret = ScramSecret.from_password(password, salt=b"0123456789abcdef")
    client = ClientExchange(user, password)
    server = ServerExchange(parse_client_first(client.first()), secret)
    assert server.user == user  # ',' and '=' in names survive their escapes
    client.verify(server.final(client.final(server.server_first)))


def test_a_wrong_password_fails_the_proof() -> None:
    client = ClientExchange("user", "pencil!", nonce=CLIENT_NONCE)
    server = ServerExchange(parse_client_first(client.first()), PENCIL)
    with pytest.raises(ScramError, match="proof does not match"):
        server.final(client.final(server.server_first))


def test_a_server_without_the_secret_fails_the_signature() -> None:
    """A server that fakes the exchange (not knowing ServerKey) is caught by the client."""
    client = ClientExchange("user", "pencil", nonce=CLIENT_NONCE)
    client.final(SERVER_FIRST)
    forged = "v=" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(ScramError, match="signature does not match"):
        client.verify(forged)
    with pytest.raises(ScramError):
        ClientExchange("user", "pencil").verify(SERVER_FINAL)  # before final()


@pytest.mark.parametrize("message", [
    "y,,n=user,r=abc", "p=tls-unique,,n=user,r=abc", "n,a=admin,n=user,r=abc", "n,,r=abc,n=user",
    "n,,n=user", "n,,n=user,r=abc,m=ext", "n,,n=,r=abc", "n,,n=user,r=", "n,,n=us=er,r=abc",
    "n,,n=user,r=a b", "n,,n=user,r=\u00e9",
])
def test_malformed_client_first(message: str) -> None:
    with pytest.raises(ScramError):
        parse_client_first(message)


@pytest.mark.parametrize("final", [
    "c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    "c=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=not base64",
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    "",
])
def test_malformed_or_wrong_client_final(final: str) -> None:
    server = ServerExchange(parse_client_first(CLIENT_FIRST), PENCIL, nonce=SERVER_NONCE)
    with pytest.raises(ScramError):
        server.final(final)


@pytest.mark.parametrize("server_first", [
    "r=someoneelse123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",   # does not extend our nonce
    "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # adds nothing to it
    "r=rOprNGfwEbeRWgbNEkqOxyz,s=!!,i=4096",
    "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1",
    f"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i={MAX_ITERATIONS + 1}",  # would stall us
    "r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==",
    "m=x,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
])
def test_the_client_refuses_a_bad_server_first(server_first: str) -> None:
    with pytest.raises(ScramError):
        ClientExchange("user", "pencil", nonce=CLIENT_NONCE).final(server_first)


def test_the_client_may_cache_its_keys() -> None:
    calls: list[tuple[str, bytes, int]] = []

    def derive(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        calls.append((password, salt, iterations))
        return salted_keys(password, salt, iterations)

    client = ClientExchange("user", "pencil", nonce=CLIENT_NONCE, derive=derive)
    assert client.final(SERVER_FIRST) == CLIENT_FINAL
    assert calls == [("pencil", SALT, 4096)]


def test_saslprep() -> None:
    assert saslprep("I\u00adX") == "IX"            # soft hyphen mapped to nothing (RFC 4013 §3)
    assert saslprep("user") == "user"
    assert saslprep("\u00aa") == "a"               # NFKC
    assert saslprep("\u2168") == "IX"
    assert saslprep("a\u00a0b") == "a b"           # non-ASCII space
    for bad in ("\u0007", "\u0627\u0031"):         # a control character; bidi rule
        with pytest.raises(ScramError):
            saslprep(bad)
    with pytest.raises(ScramError):
        saslprep("\u0221", allow_unassigned=False)  # unassigned in Unicode 3.2
    # The same password prepared either way gives the same keys.
    assert ScramSecret.from_password("I\u00adX", salt=SALT).stored_key == \
        ScramSecret.from_password("IX", salt=SALT).stored_key


def test_secret_bounds() -> None:
    with pytest.raises(ScramError):
        ScramSecret.from_password("")
    with pytest.raises(ScramError):
        ScramSecret.from_password("pw", iterations=4095)
    with pytest.raises(ScramError):
        ScramSecret(salt=SALT, iterations=4096, stored_key=b"x", server_key=bytes(32))
