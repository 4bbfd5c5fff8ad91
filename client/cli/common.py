"""Plumbing shared by brokerctl's commands: the connection options, credentials, exit
statuses, the connection itself, and the text and JSON output helpers."""
from __future__ import annotations

import functools
import io
import json
import os
import ssl
import stat
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, BinaryIO, NoReturn, TypeVar, cast

import click
from click.core import ParameterSource

from client.auth import PASSWORD_ENV, TOKEN_ENV, USER_ENV, Credentials
from client.errors import ConnectionClosed, LockgateError
from client.ops import QUEUE_SETTINGS, Param
from client.sync import SyncClient
from client.tls import tls_context
from client.types import (
    ADDR_ENV,
    DEFAULT_ADDR,
    PublishResult,
    parse_addr,
)
from protocol import (
    ErrorCode,
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

# --- exit statuses (documented in `brokerctl --help` and README) ---------------------------

EXIT_OK = 0
#: The broker refused the request (an error reply not covered below).
EXIT_ERROR = 1
#: Bad usage: an unknown option, a bad value, conflicting settings (click's own status).
EXIT_USAGE = 2
#: The broker could not be reached, or the connection was lost.
EXIT_UNREACHABLE = 3
#: Authentication failed, or the user lacks the permission (AUTH_FAILED, UNAUTHENTICATED,
#: PERMISSION_DENIED).
EXIT_AUTH = 4
#: No such queue, topic or group (QUEUE_NOT_FOUND).
EXIT_NOT_FOUND = 5
#: The broker did not answer within --timeout.
EXIT_TIMEOUT = 6
#: brokerctl itself failed (a bug; LOCKGATE_DEBUG=1 shows the traceback).
EXIT_INTERNAL = 70
#: Interrupted (Ctrl-C) where that is not the normal way to stop.
EXIT_INTERRUPTED = 130

EXIT_STATUS_HELP = f"""\
\b
Exit status:
  {EXIT_OK:<4} ok
  {EXIT_ERROR:<4} the broker refused the request (wal verify: damage found; user: a refused change)
  {EXIT_USAGE:<4} bad usage
  {EXIT_UNREACHABLE:<4} the broker cannot be reached, or the connection was lost
  {EXIT_AUTH:<4} authentication failed, or permission denied
  {EXIT_NOT_FOUND:<4} no such queue, topic or group
  {EXIT_TIMEOUT:<4} timed out waiting for the broker (--timeout)
  {EXIT_INTERNAL:<4} an internal error (LOCKGATE_DEBUG=1 shows the traceback)
  {EXIT_INTERRUPTED:<4} interrupted (Ctrl-C)"""

_AUTH_CODES = frozenset({ErrorCode.AUTH_FAILED, ErrorCode.UNAUTHENTICATED, ErrorCode.PERMISSION_DENIED})


def exit_status(exc: LockgateError) -> int:
    """The exit status for a broker's error (or a lost connection)."""
    if isinstance(exc, ConnectionClosed):
        return EXIT_UNREACHABLE
    if exc.code in _AUTH_CODES:
        return EXIT_AUTH
    if exc.code == ErrorCode.QUEUE_NOT_FOUND:
        return EXIT_NOT_FOUND
    return EXIT_ERROR


def fail(status: int, message: str) -> NoReturn:
    """Print ``error: message`` on stderr (one line) and exit with ``status``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def fail_with(exc: LockgateError, message: str | None = None) -> NoReturn:
    """Exit for a broker's error: ``error: CODE_NAME: message`` and its exit status."""
    fail(exit_status(exc), f"{exc.code_name}: {exc.message if message is None else message}")


# --- the global options: before or after the command --------------------------------------

#: The environment variables of the options that have no home in client.auth or client.types.
TIMEOUT_ENV = "LOCKGATE_TIMEOUT"
JSON_ENV = "LOCKGATE_JSON"
#: The variables of the TLS options (not LOCKGATE_TLS_CERT and LOCKGATE_TLS_KEY: those are
#: the broker's own certificate, which a shell that runs both may hold).
TLS_ENV, TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV = (
    "LOCKGATE_TLS", "LOCKGATE_TLS_CA", "LOCKGATE_CLIENT_CERT", "LOCKGATE_CLIENT_KEY")
DEFAULT_TIMEOUT_S = 30.0
_GLOBALS_KEY = "lockgate.brokerctl.globals"


@dataclass(frozen=True, slots=True)
class Globals:
    """The options every online command takes, before its name (``brokerctl --addr X
    ping``) or after it (``brokerctl ping --addr X``); after wins, then before, then the
    ``LOCKGATE_*`` variable, then the default."""

    addr: str = DEFAULT_ADDR
    user: str | None = None
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    as_json: bool = False


#: The global options by parameter name: flag, environment variable and click settings,
#: declared on the `brokerctl` group and on every online command.
_GLOBAL_OPTIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "addr": ("--addr", ADDR_ENV, {"metavar": "HOST:PORT", "help": "Broker address."}),
    "user": ("--user", USER_ENV, {
        "metavar": "NAME",
        "help": f"Authenticate as NAME (SCRAM-SHA-256), with the password in ${PASSWORD_ENV} "
                "(asked for on a terminal when unset).",
    }),
    "token": ("--token", TOKEN_ENV, {
        "metavar": "TOKEN",
        "help": f"Authenticate with this bearer token (prefer ${TOKEN_ENV}: a command line is visible "
                "to other users of the machine).",
    }),
    "timeout": ("--timeout", TIMEOUT_ENV, {
        "type": click.FloatRange(0, min_open=True), "metavar": "SECONDS",
        "help": "How long to wait for the broker: to connect, and for each reply.",
    }),
    "tls": ("--tls", TLS_ENV, {"is_flag": True, "help": "Connect with TLS, verifying the broker's certificate "
                                                        "and name (the host of --addr) against the system's CAs."}),
    "tls_ca": ("--tls-ca", TLS_CA_ENV, {
        "type": click.Path(exists=True, dir_okay=False), "metavar": "FILE",
        "help": "Verify the broker against the CA certificates in this PEM file instead; implies --tls.",
    }),
    "tls_cert": ("--tls-cert", TLS_CERT_ENV, {
        "type": click.Path(exists=True, dir_okay=False), "metavar": "FILE",
        "help": "Present this client certificate (PEM) to a broker that requires one; implies --tls.",
    }),
    "tls_key": ("--tls-key", TLS_KEY_ENV, {
        "type": click.Path(exists=True, dir_okay=False), "metavar": "FILE",
        "help": "The client certificate's private key (PEM), if it is not in --tls-cert.",
    }),
    "as_json": ("--json", JSON_ENV, {"is_flag": True,
                                     "help": "Print one machine-readable JSON document instead of text."}),
}
_DEFAULTS = Globals()


def _check_addr(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            parse_addr(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _option(name: str, json_help: str | None = None) -> Callable[[F], F]:
    """One global option, the same on the group and on each command (a command's value
    is used only when given on its command line: the group's already holds the
    variable's or the default)."""
    flag, envvar, settings = _GLOBAL_OPTIONS[name]
    settings = dict(settings, envvar=envvar, show_envvar=True)
    if name == "as_json" and json_help is not None:
        settings["help"] = json_help
    if name == "addr":
        settings["callback"] = _check_addr
    default = getattr(_DEFAULTS, name)
    if default is not None:
        settings |= {"default": default, "show_default": not settings.get("is_flag", False)}
    return click.option(flag, name, **settings)


def group_options(f: F) -> F:
    """The global options on the `brokerctl` group (they take the ``LOCKGATE_*``
    variables and defaults)."""
    for name in reversed(_GLOBAL_OPTIONS):
        f = _option(name)(f)
    return f


def remember_globals(ctx: click.Context, values: dict[str, Any]) -> None:
    """Keep the global options in force for the command that runs under it."""
    ctx.meta[_GLOBALS_KEY] = Globals(**{name: values[name] for name in _GLOBAL_OPTIONS})


def current_globals() -> Globals:
    """The global options in force for the running command."""
    ctx = click.get_current_context()
    found = ctx.meta.get(_GLOBALS_KEY)
    return found if isinstance(found, Globals) else _DEFAULTS


def common_options(f: F, json_help: str | None = None) -> F:
    """Add the global options to an online command, which gets the values in force as
    ``addr`` and ``as_json`` (``connect`` takes the others from :func:`current_globals`)."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        given = {name: kwargs.pop(name) for name in _GLOBAL_OPTIONS}
        on_group = current_globals()
        values = {
            name: value if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
            else getattr(on_group, name)
            for name, value in given.items()
        }
        remember_globals(ctx, values)
        return f(*args, addr=values["addr"], as_json=values["as_json"], **kwargs)

    command = cast(F, run)
    for name in reversed(_GLOBAL_OPTIONS):
        command = _option(name, json_help)(command)
    return command


def credentials(opts: Globals) -> Credentials | None:
    """The user (with ``$LOCKGATE_PASSWORD``, asked for on a terminal when unset) or the
    token of ``opts``; None when neither is set."""
    if opts.user is not None and opts.token is not None:
        raise click.UsageError(f"give --user (${USER_ENV}) or --token (${TOKEN_ENV}), not both")
    if opts.token is not None:
        return Credentials(token=opts.token)
    if opts.user is None:
        if os.environ.get(PASSWORD_ENV):
            raise click.UsageError(f"${PASSWORD_ENV} is set but no user is given (--user or ${USER_ENV})")
        return None
    password = os.environ.get(PASSWORD_ENV) or None
    if password is None:
        if not sys.stdin.isatty():
            raise click.UsageError(f"user {opts.user!r} is given but ${PASSWORD_ENV} is not set "
                                   "(and there is no terminal to ask on)")
        password = click.prompt(f"Password for {opts.user}", hide_input=True, err=True)
    return Credentials(user=opts.user, password=password)


def tls_option(opts: Globals) -> ssl.SSLContext | None:
    """The client TLS context the options ask for; None for plain TCP."""
    if not (opts.tls or opts.tls_ca or opts.tls_cert or opts.tls_key):
        return None
    if opts.tls_key and not opts.tls_cert:
        raise click.UsageError(f"--tls-key (${TLS_KEY_ENV}) needs --tls-cert (${TLS_CERT_ENV})")
    try:
        return tls_context(ca=opts.tls_ca, cert=opts.tls_cert, key=opts.tls_key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        named = ", ".join(f"{flag} {value}" for flag, value in (
            ("--tls-ca", opts.tls_ca), ("--tls-cert", opts.tls_cert), ("--tls-key", opts.tls_key)) if value)
        raise click.UsageError(f"cannot use the TLS files ({named}): {exc}") from None


def _certificate_refused(exc: ConnectionClosed) -> bool:
    """Whether a TLS connection closed with an alert about the client's certificate."""
    text = f"{exc.message} {exc.__cause__ or ''}".upper()
    return "ALERT" in text and "CERTIFICATE" in text or "UNKNOWN_CA" in text


@contextmanager
def connect(addr: str) -> Iterator[SyncClient]:
    """A client connected to ``addr`` with the global options in force (credentials,
    timeout, TLS); broker errors and transport trouble become one line and an exit status."""
    opts = current_globals()
    creds = credentials(opts)
    tls = tls_option(opts)
    try:
        client = SyncClient(addr, client_name="brokerctl", timeout=opts.timeout,
                            user=creds.user if creds else None, password=creds.password if creds else None,
                            token=creds.token if creds else None, tls=tls)
    except ConnectionClosed as exc:
        cause = exc.__cause__
        if isinstance(cause, LockgateError) and cause.details.get("tls") == "required":
            fail(EXIT_UNREACHABLE, f"{addr} speaks TLS: connect with --tls (and --tls-ca FILE for a CA of "
                                   "your own)")
        if tls is not None and _certificate_refused(exc):
            fail(EXIT_AUTH, f"{addr} refused the TLS connection: {exc.message}; it requires a client "
                            "certificate it trusts (--tls-cert FILE)")
        fail(EXIT_UNREACHABLE, f"handshake with {addr} failed: {exc.message}")
    except ssl.SSLCertVerificationError as exc:
        fail(EXIT_UNREACHABLE, f"cannot connect to {addr}: its TLS certificate does not verify: "
                               f"{exc.verify_message or exc.reason} (--tls-ca FILE names the CA to trust)")
    except LockgateError as exc:
        status = exit_status(exc)
        fail(status if status == EXIT_AUTH else EXIT_UNREACHABLE,
             f"handshake with {addr} failed: {exc.code_name}: {exc.message}")
    except TimeoutError:
        fail(EXIT_TIMEOUT, f"timed out connecting to {addr} (--timeout {opts.timeout:g} s)")
    except OSError as exc:
        fail(EXIT_UNREACHABLE, f"cannot connect to {addr}: {exc.strerror or exc}")
    try:
        with client:
            yield client
    except ConnectionClosed as exc:
        fail(EXIT_UNREACHABLE, f"connection to {addr} lost: {exc.message}")
    except TimeoutError:
        fail(EXIT_TIMEOUT, f"timed out waiting for {addr} (--timeout {opts.timeout:g} s)")
    except LockgateError as exc:
        fail_with(exc)
    except OSError as exc:
        fail(EXIT_UNREACHABLE, f"connection to {addr} failed: {exc.strerror or exc}")


# --- progress ---------------------------------------------------------------------------

#: A progress bar shows for runs of at least this many bytes (or messages, for counts).
PROGRESS_MIN_BYTES = 1 << 20
PROGRESS_MIN_MESSAGES = 10_000


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def stream_size(f: IO[bytes]) -> int | None:
    """The bytes left to read from ``f`` when it is a regular file (a path, or stdin
    redirected from one); None for a pipe or a terminal."""
    try:
        st = os.fstat(f.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        return max(0, st.st_size - f.tell())
    except OSError:
        return st.st_size


class Progress:
    """A progress bar on stderr over a known total (bytes or messages), shown only when
    stderr is a terminal and the total reaches ``min_total``; otherwise it does nothing
    (scripts and pipes see no bar)."""

    def __init__(self, total: int | None, label: str, *, min_total: int = PROGRESS_MIN_BYTES) -> None:
        show = total is not None and total >= min_total and _isatty(sys.stderr)
        self._bar: Any = click.progressbar(length=total, label=label, file=sys.stderr) if show else None

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def add(self, n: int) -> None:
        """Advance by ``n``."""
        if self._bar is not None:
            self._bar.update(n)


def file_lines(f: BinaryIO, progress: Progress) -> Iterator[bytes]:
    """The lines of ``f`` without their line ends (``\\n`` or ``\\r\\n``), empty ones
    skipped, as raw bytes; ``progress`` advances by the bytes read."""
    for raw in f:
        progress.add(len(raw))
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if line.endswith(b"\r"):
            line = line[:-1]
        if line:
            yield line


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
