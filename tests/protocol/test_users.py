"""The users file format (protocol/users.py): parse, dump, patterns, tokens, errors."""
from __future__ import annotations

import base64

import pytest

from protocol.scram import ScramSecret
from protocol.users import (
    Patterns,
    Permission,
    User,
    Users,
    UsersFileError,
    dump,
    new_token,
    parse,
    token_hash,
)

SECRET = ScramSecret.from_password("pencil", salt=b"0123456789abcdef")
TOKEN = new_token()

EXAMPLE = f"""
version = 1

[users."alice"]
publish = ["orders.*"]
consume = ["orders.*", "audit"]
admin = []

[users."alice".scram_sha256]
salt = "MDEyMzQ1Njc4OWFiY2RlZg=="
iterations = 4096
stored_key = "{base64.b64encode(SECRET.stored_key).decode()}"
server_key = "{base64.b64encode(SECRET.server_key).decode()}"

[users.billing]
tokens_sha256 = ["{token_hash(TOKEN)}"]
publish = ["billing"]
"""


def test_parse_the_documented_example() -> None:
    users = parse(EXAMPLE)
    alice, billing = users.get("alice"), users.get("billing")
    assert alice is not None and billing is not None
    assert alice.scram == SECRET and alice.tokens == ()
    assert alice.may("publish", "orders.eu") and alice.may(Permission.CONSUME, "audit")
    assert not alice.may("publish", "audit") and not alice.may("admin", "orders.eu")
    assert not alice.may("publish", "orders")  # "orders.*" needs the dot
    assert billing.scram is None
    assert users.user_for_token(TOKEN) is billing
    assert users.user_for_token(TOKEN + "x") is None


def test_dump_reads_back_the_same() -> None:
    users = parse(EXAMPLE)
    text = dump(users)
    assert parse(text) == users
    assert dump(parse(text)) == text
    assert "pencil" not in text and TOKEN not in text


@pytest.mark.parametrize("patterns,name,matches", [
    (["*"], "anything", True),
    (["orders.*"], "orders.eu", True),
    (["orders.*"], "orders", False),
    (["orders*"], "orders", True),
    (["orders*"], "ordersx", True),
    (["orders"], "orders", True),
    (["orders"], "orders.eu", False),
    ([], "orders", False),
    (["a", "b.*", "c"], "b.x", True),
])
def test_patterns(patterns: list[str], name: str, matches: bool) -> None:
    assert Patterns.of(patterns).matches(name) is matches


@pytest.mark.parametrize("pattern", ["", "a*b", "**", "a b", "a/b", "x" * 201, "*a"])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(UsersFileError, match="bad pattern"):
        Patterns.of([pattern])


def test_grant_and_revoke() -> None:
    user = User(name="u").granted(Permission.PUBLISH, ["a", "b.*", "a"])
    assert user.publish.patterns == ("a", "b.*")
    assert user.may("publish", "b.c") and not user.may("consume", "a")
    user = user.revoked(Permission.PUBLISH, ["a", "zzz"])
    assert user.publish.patterns == ("b.*",)
    assert user.may_see("b.x") and not user.may_see("a")


@pytest.mark.parametrize("text,message", [
    ("version = 2", "version 2"),
    ("[users.alice]\npublsh = []", "users.alice: unknown key 'publsh'"),
    ("[users.alice]\npublish = 'orders'", "users.alice.publish must be an array of strings"),
    ("[users.alice]\npublish = ['a*b']", "users.alice: bad pattern 'a\\*b'"),
    ('[users."a b"]', "bad user name 'a b'"),
    ('[users."a,b"]', "bad user name"),
    ("[users.alice]\ntokens_sha256 = ['abc']", "64 lowercase hex"),
    ("[users.alice.scram_sha256]\nsalt = 'AA=='\niterations = 4096", "exactly the keys"),
    ("[users.alice.scram_sha256]\nsalt = '!!'\niterations = 4096\nstored_key = ''\nserver_key = ''",
     "users.alice.scram_sha256.salt is not base64"),
    ("[users.alice.scram_sha256]\nsalt = 'AA=='\niterations = 10\nstored_key = ''\nserver_key = ''",
     "iterations must be"),
    ("users = 3", "users must be a table"),
    ("extra = 1", "unknown key 'extra'"),
    ("[users.alice", "not valid TOML"),
])
def test_errors_name_where(text: str, message: str) -> None:
    with pytest.raises(UsersFileError, match=message):
        parse(text)


def test_a_token_belongs_to_one_user() -> None:
    digest = token_hash(TOKEN)
    with pytest.raises(UsersFileError, match="same token"):
        Users({"a": User(name="a", tokens=(digest,)), "b": User(name="b", tokens=(digest,))})


def test_with_user_and_without() -> None:
    users = Users().with_user(User(name="a", tokens=(token_hash(TOKEN),)))
    assert len(users) == 1 and users.user_for_token(TOKEN) is users.get("a")
    users = users.without("a")
    assert len(users) == 0 and users.user_for_token(TOKEN) is None
    assert parse(dump(Users())) == Users()
