"""Plumbing shared by brokerctl's commands: the connection options, credentials, exit
statuses, the connection itself, and the text and JSON output helpers."""
from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click

from client.auth import PASSWORD_ENV, TOKEN_ENV, USER_ENV
from client.errors import ConnectionClosed, LockgateError
from client.ops import QUEUE_SETTINGS, Param
from client.sync import SyncClient
from client.types import (
    ADDR_ENV,
    DEFAULT_ADDR,
    PublishResult,
    parse_addr,
)
from protocol import (
    MAX_RETRY_JITTER,
    MAX_SHARDS,
    MAX_TTL_MS,
    MIN_SHARDS,
    OnExpire,
    Overflow,
    QueueKind,
    RetryBackoff,
)


F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_UNREACHABLE = 2


# --- plumbing ----------------------------------------------------------------------


def _check_addr(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_addr(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def common_options(f: F, json_help: str = "Print one machine-readable JSON document instead of text.") -> F:
    """Add ``--addr`` and ``--json`` to a command."""
    f = click.option("--json", "as_json", is_flag=True, help=json_help)(f)
    f = click.option(
        "--addr",
        envvar=ADDR_ENV,
        default=DEFAULT_ADDR,
        show_default=True,
        show_envvar=True,
        callback=_check_addr,
        metavar="HOST:PORT",
        help="Broker address.",
    )(f)
    return f


def fail(status: int, message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``status``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def credentials() -> dict[str, str]:
    """``$LOCKGATE_USER`` and ``$LOCKGATE_PASSWORD`` (asked for on a terminal when unset),
    or ``$LOCKGATE_TOKEN``; none when neither is set."""
    user, password, token = (os.environ.get(name) or None for name in (USER_ENV, PASSWORD_ENV, TOKEN_ENV))
    if token is not None:
        if user is not None:
            fail(EXIT_UNREACHABLE, f"set {TOKEN_ENV} or {USER_ENV}, not both")
        return {"token": token}
    if user is None:
        if password is not None:
            fail(EXIT_UNREACHABLE, f"{PASSWORD_ENV} is set but {USER_ENV} is not")
        return {}
    if password is None:
        if not sys.stdin.isatty():
            fail(EXIT_UNREACHABLE, f"{USER_ENV} is set but {PASSWORD_ENV} is not")
        password = click.prompt(f"Password for {user}", hide_input=True, err=True)
    return {"user": user, "password": password}


@contextmanager
def connect(addr: str) -> Iterator[SyncClient]:
    """A connected client, authenticated with ``credentials()``; broker errors and
    transport trouble become exit statuses."""
    creds = credentials()
    try:
        client = SyncClient(addr, client_name="brokerctl", user=creds.get("user"), password=creds.get("password"),
                            token=creds.get("token"))
    except LockgateError as exc:
        fail(EXIT_UNREACHABLE, f"handshake with {addr} failed: {exc.code_name}: {exc.message}")
    except OSError as exc:
        fail(EXIT_UNREACHABLE, f"cannot connect to {addr}: {exc.strerror or exc}")
    try:
        with client:
            yield client
    except ConnectionClosed as exc:
        fail(EXIT_UNREACHABLE, f"connection to {addr} lost: {exc.message}")
    except TimeoutError:
        fail(EXIT_UNREACHABLE, f"timed out waiting for {addr}")
    except LockgateError as exc:
        fail(EXIT_ERROR, f"{exc.code_name}: {exc.message}")
    except OSError as exc:
        fail(EXIT_UNREACHABLE, f"connection to {addr} failed: {exc.strerror or exc}")


def emit_json(value: Any) -> None:
    """Print ``value`` as one indented JSON document on stdout."""
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def compact_json(value: Any) -> str:
    """One line of JSON without spaces (a header map in a text line)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def read_stdin() -> bytes:
    """All of stdin, as bytes."""
    with click.open_file("-", "rb") as f:
        return f.read()


def ids_text(ids: tuple[int, ...] | list[int]) -> str:
    """Message ids as ``1, 2, 3``."""
    return ", ".join(map(str, ids))


def time_text(ms: int) -> str:
    """A server wall-clock time (ms since the epoch) as ISO 8601 UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_text(error: str) -> str:
    """A consumer's error text, quoted and escaped so that it stays on one line."""
    return json.dumps(error, ensure_ascii=False)


def plural(count: int, noun: str) -> str:
    """``1 message``, ``2 messages``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# Click types of the queue settings whose type hint alone says too little; the others
# follow their hint (int or str). Names, defaults and help come from client.ops.
SETTING_OPTIONS: dict[str, dict[str, Any]] = {
    "kind": {"type": click.Choice([k.value for k in QueueKind])},
    "shards": {"type": click.IntRange(MIN_SHARDS, MAX_SHARDS)},
    "dead_letter": {"metavar": "QUEUE"},
    "retry_backoff": {"type": click.Choice([b.value for b in RetryBackoff])},
    "retry_jitter": {"type": click.IntRange(0, MAX_RETRY_JITTER)},
    "ttl_ms": {"type": click.IntRange(0, MAX_TTL_MS)},
    "on_expire": {"type": click.Choice([e.value for e in OnExpire])},
    "overflow": {"type": click.Choice([o.value for o in Overflow])},
}


def setting_options(
    settings: Iterable[Param], overrides: dict[str, dict[str, Any]] = SETTING_OPTIONS
) -> Callable[[F], F]:
    """A decorator adding one option per setting (a parameter of the client's op table):
    its name, type hint, default and help, with ``overrides`` by name."""

    def add(f: F) -> F:
        for setting in reversed(tuple(settings)):
            hint = setting.annotation
            if isinstance(hint, types.UnionType):
                hint = next(a for a in hint.__args__ if a is not type(None))
            options: dict[str, Any] = {"type": hint, "help": setting.doc}
            if setting.default is not None:
                options |= {"default": setting.default, "show_default": True}
            options |= overrides.get(setting.name, {})
            f = click.option(f"--{setting.name.replace('_', '-')}", setting.name, **options)(f)
        return f

    return add


#: One option per ``create_queue`` setting.
queue_setting_options = setting_options(QUEUE_SETTINGS)


def print_table(columns: tuple[str, ...], rows: list[list[str]], left: set[str]) -> None:
    """Columns headed by their names in capitals; those in ``left`` flush left, the
    others (numbers) flush right."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if col in left else cell.rjust(w)
            for cell, w, col in zip(cells, widths, columns, strict=True)
        ).rstrip()

    click.echo(line([c.upper() for c in columns]))
    for row in rows:
        click.echo(line(row))


def value_text(value: Any) -> str:
    """A stats value on a text line: lists comma-separated, maps as compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return compact_json(value)
    return str(value)


def print_fields(values: dict[str, Any]) -> None:
    """One ``name  value`` line per field, as `stats` prints a queue."""
    width = max(map(len, values))
    for name, value in values.items():
        click.echo(f"{name.ljust(width)}  {value_text(value)}")


def spans(results: list[PublishResult]) -> str:
    """The ids of publish results as ``1-1000, 1001-1500``."""
    return ", ".join(
        str(r.first_id) if r.count == 1 else f"{r.first_id}-{r.first_id + r.count - 1}" for r in results if r.count
    )
