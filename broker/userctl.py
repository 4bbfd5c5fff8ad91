"""``brokerctl user``: edit a broker's users file offline (add, passwd, delete, list,
grant, revoke).

The file is the broker's ``users_file`` (``--file``, default ``$LOCKGATE_USERS_FILE``),
in the format of ``protocol/users.py``; a running broker reads it again within a second
of a change, so a new user, password or grant applies without a restart. Passwords are
read from the terminal (asked twice) or from stdin with ``--password-stdin``; only their
SCRAM-SHA-256 keys are written. ``--token`` makes a bearer token, prints it once and
writes only its SHA-256. The file is replaced atomically (a new file, fsynced, renamed
over the old one) and is private (mode 0600). Comments in the file are not kept.

Exit status: 0 ok, 1 a refused change (no such user, an existing user, a bad pattern,
an unreadable file), 2 bad usage.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import click

from protocol.scram import DEFAULT_ITERATIONS, MAX_ITERATIONS, MIN_ITERATIONS, ScramError, ScramSecret
from protocol.users import Patterns, Permission, User, Users, UsersFileError, dump, new_token, parse, token_hash

#: The environment variable naming the users file (the broker's setting ``users_file``).
USERS_FILE_ENV = "LOCKGATE_USERS_FILE"
EXIT_REFUSED = 1
PERMISSIONS = [str(p) for p in Permission]


def json_flag(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """``--json`` here, or brokerctl's own (before the command, or ``$LOCKGATE_JSON``)."""
    return value or bool(ctx.find_root().params.get("as_json"))


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_REFUSED)


def load(path: Path, *, missing_ok: bool = False) -> Users:
    """The users of ``path`` (none if it does not exist and ``missing_ok``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return Users()
        _fail(f"{path}: no such users file")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}")
    try:
        return parse(text)
    except UsersFileError as exc:
        _fail(f"{path}: {exc}")


def save(path: Path, users: Users) -> None:
    """Replace ``path`` with ``users``, atomically and private (0600)."""
    text = dump(users)
    folder = path.resolve().parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _user(users: Users, name: str) -> User:
    held = users.get(name)
    if held is None:
        _fail(f"no user {name!r}")
    return held


def _secret(password_stdin: bool, iterations: int) -> ScramSecret:
    """A SCRAM secret for a password from stdin (its first line) or asked for twice."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        return ScramSecret.from_password(password, iterations=iterations)
    except ScramError as exc:
        _fail(f"unusable password: {exc}")


def _user_json(u: User) -> dict[str, Any]:
    return {"user": u.name, "scram": u.scram is not None,
            "iterations": u.scram.iterations if u.scram is not None else None, "tokens": len(u.tokens),
            **{p: list(u.patterns(p).patterns) for p in PERMISSIONS}}


def file_option(f: Any) -> Any:
    return click.option("--file", "path", envvar=USERS_FILE_ENV, show_envvar=True, required=True,
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="The users file (the broker's users_file).")(f)


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, callback=json_flag,
                        help="Print one JSON document instead of text.")(f)


def password_options(f: Any) -> Any:
    f = click.option("--iterations", type=click.IntRange(MIN_ITERATIONS, MAX_ITERATIONS), default=DEFAULT_ITERATIONS,
                     show_default=True, help="PBKDF2 iterations of the SCRAM secret (each connect costs the "
                     "client this many).")(f)
    f = click.option("--token", "token", is_flag=True,
                     help="Make a bearer token (printed once; only its hash is kept).")(f)
    return click.option("--password-stdin", is_flag=True,
                        help="Read the password from the first line of stdin instead of asking.")(f)


def _print_token(name: str, token: str, as_json: bool) -> None:
    if not as_json:
        click.echo(f"token for {name} (shown once, keep it secret): {token}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def user() -> None:
    """Edit the users file offline: who may connect and what each may do.

    Permissions are publish, consume and admin, each a list of patterns: a queue or
    topic name, a prefix and * (orders.* matches orders.eu), or * for every name. A
    running broker reads the file again within a second of a change.
    """


@user.command("add")
@click.argument("name")
@password_options
@click.option("--publish", multiple=True, metavar="PATTERN", help="May publish to these queues and topics.")
@click.option("--consume", multiple=True, metavar="PATTERN", help="May consume from these queues and topics.")
@click.option("--admin", multiple=True, metavar="PATTERN", help="May create, delete, purge and redrive these.")
@file_option
@json_option
def add(name: str, password_stdin: bool, token: bool, iterations: int, publish: tuple[str, ...],
        consume: tuple[str, ...], admin: tuple[str, ...], path: Path, as_json: bool) -> None:
    """Add user NAME with a password (asked for) or --token, and permissions."""
    users = load(path, missing_ok=True)
    if users.get(name) is not None:
        _fail(f"user {name!r} exists (change it with passwd, grant or revoke)")
    made = new_token() if token else None
    secret = _secret(password_stdin, iterations) if password_stdin or not token else None
    try:
        new = User(name=name, scram=secret, tokens=(token_hash(made),) if made else (), publish=Patterns.of(publish),
                   consume=Patterns.of(consume), admin=Patterns.of(admin))
    except UsersFileError as exc:
        _fail(str(exc))
    save(path, users.with_user(new))
    if as_json:
        click.echo(json.dumps({**_user_json(new), "token": made}, indent=2))
    else:
        click.echo(f"added user {name}")
        if made:
            _print_token(name, made, as_json)


@user.command("passwd")
@click.argument("name")
@password_options
@file_option
@json_option
def passwd(name: str, password_stdin: bool, token: bool, iterations: int, path: Path, as_json: bool) -> None:
    """Give user NAME a new password, or with --token a new token (its old tokens stop working)."""
    users = load(path)
    held = _user(users, name)
    made = new_token() if token else None
    changed = []
    if made is not None:
        held = replace(held, tokens=(token_hash(made),))
        changed.append("token")
    if password_stdin or not token:
        held = replace(held, scram=_secret(password_stdin, iterations))
        changed.insert(0, "password")
    save(path, users.with_user(held))
    if as_json:
        click.echo(json.dumps({**_user_json(held), "token": made}, indent=2))
    else:
        click.echo(f"changed the {' and '.join(changed)} of {name}")
        if made:
            _print_token(name, made, as_json)


@user.command("delete")
@click.argument("name")
@file_option
@json_option
def delete(name: str, path: Path, as_json: bool) -> None:
    """Delete user NAME (its open connections keep running, with no permission)."""
    users = load(path)
    _user(users, name)
    save(path, users.without(name))
    click.echo(json.dumps({"user": name, "deleted": True}) if as_json else f"deleted user {name}")


@user.command("list")
@file_option
@json_option
def list_users(path: Path, as_json: bool) -> None:
    """List the users, how they authenticate and their permissions."""
    users = sorted(load(path), key=lambda u: u.name)
    if as_json:
        click.echo(json.dumps({"users": [_user_json(u) for u in users]}, indent=2))
        return
    rows = [["USER", "AUTH", *(p.upper() for p in PERMISSIONS)]]
    for u in users:
        auth = ", ".join(filter(None, ["scram" if u.scram else "", f"{len(u.tokens)} token(s)" if u.tokens else ""]))
        rows.append([u.name, auth or "-", *(" ".join(u.patterns(p).patterns) or "-" for p in PERMISSIONS)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def _change(name: str, permission: str, patterns: tuple[str, ...], path: Path, as_json: bool, grant: bool) -> None:
    users = load(path)
    held = _user(users, name)
    try:
        changed = (held.granted if grant else held.revoked)(Permission(permission), patterns)
    except UsersFileError as exc:
        _fail(str(exc))
    save(path, users.with_user(changed))
    if as_json:
        click.echo(json.dumps(_user_json(changed), indent=2))
    else:
        held_now = " ".join(changed.patterns(permission).patterns) or "nothing"
        click.echo(f"{name} may {permission}: {held_now}")


@user.command("grant")
@click.argument("name")
@click.argument("permission", type=click.Choice(PERMISSIONS))
@click.argument("patterns", nargs=-1, required=True)
@file_option
@json_option
def grant(name: str, permission: str, patterns: tuple[str, ...], path: Path, as_json: bool) -> None:
    """Let user NAME publish, consume or admin the queues and topics matching PATTERNS."""
    _change(name, permission, patterns, path, as_json, grant=True)


@user.command("revoke")
@click.argument("name")
@click.argument("permission", type=click.Choice(PERMISSIONS))
@click.argument("patterns", nargs=-1, required=True)
@file_option
@json_option
def revoke(name: str, permission: str, patterns: tuple[str, ...], path: Path, as_json: bool) -> None:
    """Take PATTERNS (as written when granted) out of user NAME's PERMISSION."""
    _change(name, permission, patterns, path, as_json, grant=False)
