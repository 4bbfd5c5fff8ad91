"""The users file: who may connect, with which secrets, and what each user may do.

The broker reads it (``users_file``, with ``auth = "required"``) and re-reads it when it
changes; ``brokerctl user`` edits it offline. Both use this module, so the format has one
definition (docs/operations.md, "Authentication and permissions")::

    version = 1

    [users."alice"]
    publish = ["orders.*"]
    consume = ["orders.*", "audit"]
    admin = []

    [users."alice".scram_sha256]
    salt = "W22ZaJ0SNY7soEsUEjb6gQ=="          # base64
    iterations = 4096
    stored_key = "..."                         # base64 of 32 bytes
    server_key = "..."

    [users."billing"]
    tokens_sha256 = ["9f86d0...", ...]         # hex SHA-256 of each bearer token
    publish = ["billing"]

No password or token is stored: a SCRAM secret (``protocol.scram.ScramSecret``) and the
SHA-256 of each token. A permission pattern is a queue or topic name (exact), a name
prefix followed by ``*`` (``orders.*`` matches every name that starts with ``orders.``),
or ``*`` alone (every name). Queues and topics share the patterns; a consumer group
``TOPIC/GROUP`` is its topic's.

``parse`` checks everything (unknown keys, bad names and patterns are errors naming
where); ``dump`` writes the canonical form ``parse`` reads back.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from .ops import QUEUE_NAME_CHARS, QUEUE_NAME_MAX
from .scram import ScramError, ScramSecret

#: The format's version (the file's ``version`` key).
FORMAT_VERSION = 1
#: User names: 1..64 characters of these (no ',' or '=', which SCRAM escapes).
USER_NAME_MAX = 64
USER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.@")
#: Most users in a file, and most tokens and patterns per user.
MAX_USERS = 10_000
MAX_TOKENS = 16
MAX_PATTERNS = 256
#: A bearer token on the wire: 16..1024 characters.
MIN_TOKEN = 16
MAX_TOKEN = 1024
#: Tokens made by ``new_token`` begin with this.
TOKEN_PREFIX = "lgt_"
#: The pattern that matches every name.
ANY = "*"


class Permission(StrEnum):
    """What a user may do with a queue or topic (SPEC.md §4.3)."""

    #: ``publish``, ``topic_publish``, and publish steps of a ``txn``.
    PUBLISH = "publish"
    #: Read and settle: ``consume``, ``ack``, ``nack``, ``extend``, ``reject``, ``peek``,
    #: ``message_status``, ``subscribe``, the stats of one queue, topic or group.
    CONSUME = "consume"
    #: Create, delete, purge, redrive; topics and groups: create, delete, seek.
    ADMIN = "admin"


class UsersFileError(ValueError):
    """The users file cannot be used; ``str()`` says where and why."""


def valid_user_name(name: object) -> bool:
    return type(name) is str and 0 < len(name) <= USER_NAME_MAX and USER_NAME_CHARS.issuperset(name)


def check_pattern(pattern: object) -> str:
    """``pattern`` if it is ``*``, a queue name, or a queue name prefix and ``*``."""
    if type(pattern) is not str:
        raise UsersFileError("a pattern must be a string")
    stem = pattern[:-1] if pattern.endswith(ANY) else pattern
    if pattern != ANY and (not stem or len(stem) > QUEUE_NAME_MAX or not QUEUE_NAME_CHARS.issuperset(stem)):
        raise UsersFileError(f"bad pattern {pattern!r}: a queue or topic name, a name prefix "
                             "followed by '*', or '*' alone")
    return pattern


def token_hash(token: str) -> str:
    """The hex SHA-256 of a bearer token, as the file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A new random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Patterns:
    """The names one permission covers: exact names and prefixes (from ``prefix*``)."""

    patterns: tuple[str, ...] = ()
    exact: frozenset[str] = field(init=False, repr=False, compare=False)
    prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for p in self.patterns:
            check_pattern(p)
        object.__setattr__(self, "exact", frozenset(p for p in self.patterns if not p.endswith(ANY)))
        object.__setattr__(self, "prefixes", tuple(p[:-1] for p in self.patterns if p.endswith(ANY)))

    @classmethod
    def of(cls, patterns: Iterable[str]) -> Patterns:
        """Patterns without duplicates, in the order first given."""
        return cls(tuple(dict.fromkeys(patterns)))

    def matches(self, name: str) -> bool:
        return name in self.exact or any(name.startswith(p) for p in self.prefixes)

    def __bool__(self) -> bool:
        return bool(self.patterns)


_NONE = Patterns()


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    """One user: a SCRAM secret and/or token hashes, and a pattern list per permission."""

    name: str
    scram: ScramSecret | None = None
    tokens: tuple[str, ...] = ()
    publish: Patterns = _NONE
    consume: Patterns = _NONE
    admin: Patterns = _NONE

    def __post_init__(self) -> None:
        if not valid_user_name(self.name):
            raise UsersFileError(f"bad user name {self.name!r}: 1..{USER_NAME_MAX} characters of "
                                 "A-Z a-z 0-9 _ - . @")
        if len(self.tokens) > MAX_TOKENS:
            raise UsersFileError(f"user {self.name!r}: at most {MAX_TOKENS} tokens")
        for digest in self.tokens:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise UsersFileError(f"user {self.name!r}: a token hash must be 64 lowercase hex digits")
        for permission in Permission:
            if len(self.patterns(permission).patterns) > MAX_PATTERNS:
                raise UsersFileError(f"user {self.name!r}: at most {MAX_PATTERNS} {permission} patterns")

    def patterns(self, permission: Permission | str) -> Patterns:
        if permission == Permission.PUBLISH:
            return self.publish
        if permission == Permission.CONSUME:
            return self.consume
        return self.admin

    def may(self, permission: Permission | str, name: str) -> bool:
        """Whether this user holds ``permission`` on the queue or topic ``name``."""
        return self.patterns(permission).matches(name)

    def may_see(self, name: str) -> bool:
        """Whether this user holds any permission on ``name`` (what the lists show)."""
        return self.publish.matches(name) or self.consume.matches(name) or self.admin.matches(name)

    def granted(self, permission: Permission, patterns: Iterable[str]) -> User:
        """This user with ``patterns`` added to ``permission``."""
        held = self.patterns(permission).patterns
        return self._with(permission, Patterns.of((*held, *map(check_pattern, patterns))))

    def revoked(self, permission: Permission, patterns: Iterable[str]) -> User:
        """This user without ``patterns`` in ``permission``."""
        gone = set(patterns)
        return self._with(permission, Patterns(tuple(p for p in self.patterns(permission).patterns if p not in gone)))

    def _with(self, permission: Permission, patterns: Patterns) -> User:
        if permission == Permission.PUBLISH:
            return replace(self, publish=patterns)
        if permission == Permission.CONSUME:
            return replace(self, consume=patterns)
        return replace(self, admin=patterns)


@dataclass(frozen=True, slots=True)
class Users:
    """Every user of a users file, by name; ``by_token`` finds a token's user."""

    users: Mapping[str, User] = field(default_factory=dict)
    by_token: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.users) > MAX_USERS:
            raise UsersFileError(f"at most {MAX_USERS} users")
        by_token: dict[str, str] = {}
        for user in self.users.values():
            for digest in user.tokens:
                other = by_token.setdefault(digest, user.name)
                if other != user.name:
                    raise UsersFileError(f"users {other!r} and {user.name!r} have the same token")
        object.__setattr__(self, "by_token", by_token)

    def __len__(self) -> int:
        return len(self.users)

    def __iter__(self) -> Iterator[User]:
        return iter(self.users.values())

    def get(self, name: str) -> User | None:
        return self.users.get(name)

    def with_user(self, user: User) -> Users:
        """These users with ``user`` added or replaced."""
        return Users({**self.users, user.name: user})

    def without(self, name: str) -> Users:
        return Users({n: u for n, u in self.users.items() if n != name})

    def user_for_token(self, token: str) -> User | None:
        """The user holding ``token``, or None."""
        name = self.by_token.get(token_hash(token))
        return None if name is None else self.users.get(name)


# -- reading and writing ----------------------------------------------------------------------

_USER_KEYS = frozenset({"scram_sha256", "tokens_sha256", *map(str, Permission)})
_SCRAM_KEYS = ("salt", "iterations", "stored_key", "server_key")


def _strings(value: Any, where: str) -> list[str]:
    if type(value) is not list or not all(type(v) is str for v in value):
        raise UsersFileError(f"{where} must be an array of strings")
    return list(value)


def _b64(value: Any, where: str) -> bytes:
    if type(value) is not str:
        raise UsersFileError(f"{where} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise UsersFileError(f"{where} is not base64") from None


def _scram(value: Any, where: str) -> ScramSecret:
    if type(value) is not dict or set(value) != set(_SCRAM_KEYS):
        raise UsersFileError(f"{where} must have exactly the keys {', '.join(_SCRAM_KEYS)}")
    iterations = value["iterations"]
    if type(iterations) is not int:
        raise UsersFileError(f"{where}.iterations must be an integer")
    try:
        return ScramSecret(salt=_b64(value["salt"], f"{where}.salt"), iterations=iterations,
                           stored_key=_b64(value["stored_key"], f"{where}.stored_key"),
                           server_key=_b64(value["server_key"], f"{where}.server_key"))
    except ScramError as exc:
        raise UsersFileError(f"{where}: {exc}") from None


def _user(name: str, entry: Any) -> User:
    where = f"users.{name}"
    if type(entry) is not dict:
        raise UsersFileError(f"{where} must be a table")
    unknown = sorted(set(entry) - _USER_KEYS)
    if unknown:
        raise UsersFileError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_USER_KEYS))})")
    try:
        grants = {str(p): Patterns.of(_strings(entry.get(str(p), []), f"{where}.{p}")) for p in Permission}
        scram = _scram(entry["scram_sha256"], f"{where}.scram_sha256") if "scram_sha256" in entry else None
        tokens = tuple(dict.fromkeys(_strings(entry.get("tokens_sha256", []), f"{where}.tokens_sha256")))
        return User(name=name, scram=scram, tokens=tokens, **grants)
    except UsersFileError as exc:
        message = str(exc)
        raise UsersFileError(message if message.startswith(where) else f"{where}: {message}") from None


def parse(text: str) -> Users:
    """The users of a users file's text; ``UsersFileError`` naming what is wrong."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(f"not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"version", "users"})
    if unknown:
        raise UsersFileError(f"unknown key {unknown[0]!r} (known: version, users)")
    if doc.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise UsersFileError(f"version {doc.get('version')!r}: this broker reads version {FORMAT_VERSION}")
    users = doc.get("users", {})
    if type(users) is not dict:
        raise UsersFileError("users must be a table of users by name")
    return Users({name: _user(name, entry) for name, entry in users.items()})


def _toml_str(value: str) -> str:
    return json.dumps(value)  # names, patterns, base64 and hex: ASCII without control characters


def _toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(map(_toml_str, values)) + "]"


def dump(users: Users) -> str:
    """The canonical text of a users file (users sorted by name); ``parse`` reads it back."""
    lines = ["# Lockgate users: brokerctl user add|passwd|delete|grant|revoke edits this file.",
             "# Secrets are stored as SCRAM-SHA-256 keys and SHA-256 hashes of tokens, never in clear.",
             f"version = {FORMAT_VERSION}"]
    for user in sorted(users, key=lambda u: u.name):
        key = f"users.{_toml_str(user.name)}"
        lines += ["", f"[{key}]"]
        if user.tokens:
            lines.append(f"tokens_sha256 = {_toml_list(user.tokens)}")
        for permission in Permission:
            lines.append(f"{permission} = {_toml_list(user.patterns(permission).patterns)}")
        if user.scram is not None:
            s = user.scram
            lines += [f"[{key}.scram_sha256]",
                      f"salt = {_toml_str(base64.b64encode(s.salt).decode())}",
                      f"iterations = {s.iterations}",
                      f"stored_key = {_toml_str(base64.b64encode(s.stored_key).decode())}",
                      f"server_key = {_toml_str(base64.b64encode(s.server_key).decode())}"]
    return "\n".join(lines) + "\n"
