"""brokerctl: inspect and drive a Lockgate broker from the shell.

Every command that talks to a broker takes ``--addr host:port`` (default
``$LOCKGATE_ADDR``, else 127.0.0.1:7878); every command takes ``--json`` (one JSON
document on stdout). The ``wal`` commands read a data directory offline. Failures print
``error: CODE_NAME: message`` to stderr and exit 1; when the broker cannot be reached
or the connection drops, the exit status is 2.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from dataclasses import MISSING, asdict, fields, replace
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click

from client.auth import PASSWORD_ENV, TOKEN_ENV, USER_ENV
from client.errors import ConnectionClosed, LockgateError, QueueNotFound
from client.ops import OPS, QUEUE_SETTINGS, Param
from client.sync import SyncClient
from client.sync_subscription import SyncIncomingMessage
from client.types import (
    ADDR_ENV,
    DEFAULT_ADDR,
    DeadLetterInfo,
    Delivery,
    GroupStats,
    Message,
    MessageStatus,
    PeekedMessage,
    PublishResult,
    QueueStats,
    TopicMessage,
    TopicStats,
    ack_result,
    group_queue,
    message_entries,
    parse_addr,
    publish_result,
    topic_entries,
)
from protocol import (
    DEFAULT_CREDIT,
    MAX_RETRY_JITTER,
    MAX_SHARDS,
    MAX_TTL_MS,
    MIN_SHARDS,
    ErrorCode,
    OnExpire,
    Overflow,
    QueueKind,
    Retention,
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


def _fail(status: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(status)


def credentials() -> dict[str, str]:
    """``$LOCKGATE_USER`` and ``$LOCKGATE_PASSWORD`` (asked for on a terminal when unset),
    or ``$LOCKGATE_TOKEN``; none when neither is set."""
    user, password, token = (os.environ.get(name) or None for name in (USER_ENV, PASSWORD_ENV, TOKEN_ENV))
    if token is not None:
        if user is not None:
            _fail(EXIT_UNREACHABLE, f"set {TOKEN_ENV} or {USER_ENV}, not both")
        return {"token": token}
    if user is None:
        if password is not None:
            _fail(EXIT_UNREACHABLE, f"{PASSWORD_ENV} is set but {USER_ENV} is not")
        return {}
    if password is None:
        if not sys.stdin.isatty():
            _fail(EXIT_UNREACHABLE, f"{USER_ENV} is set but {PASSWORD_ENV} is not")
        password = click.prompt(f"Password for {user}", hide_input=True, err=True)
    return {"user": user, "password": password}


@contextmanager
def connect(addr: str) -> Iterator[SyncClient]:
    """A connected client, authenticated with ``credentials()``; broker errors and
    transport trouble become exit statuses."""
    try:
        client = SyncClient(addr, client_name="brokerctl", **credentials())
    except LockgateError as exc:
        _fail(EXIT_UNREACHABLE, f"handshake with {addr} failed: {exc.code_name}: {exc.message}")
    except OSError as exc:
        _fail(EXIT_UNREACHABLE, f"cannot connect to {addr}: {exc.strerror or exc}")
    try:
        with client:
            yield client
    except ConnectionClosed as exc:
        _fail(EXIT_UNREACHABLE, f"connection to {addr} lost: {exc.message}")
    except TimeoutError:
        _fail(EXIT_UNREACHABLE, f"timed out waiting for {addr}")
    except LockgateError as exc:
        _fail(EXIT_ERROR, f"{exc.code_name}: {exc.message}")
    except OSError as exc:
        _fail(EXIT_UNREACHABLE, f"connection to {addr} failed: {exc.strerror or exc}")


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def _bytes_json(value: bytes | None) -> tuple[str | None, str | None]:
    """``(text, "utf-8")`` when ``value`` decodes, else ``(base64, "base64")``."""
    if value is None:
        return None, None
    try:
        return value.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), "base64"


def _bytes_text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "hex:" + value.hex()


def _delivery_json(d: Delivery) -> dict[str, Any]:
    """A delivery as JSON; one from a consumer group also has ``shard``, ``offset`` and
    ``headers``."""
    body, body_encoding = _bytes_json(d.body)
    key, key_encoding = _bytes_json(d.key)
    out: dict[str, Any] = {
        "id": d.id, "attempt": d.attempt, "priority": d.priority, "published_at": d.published_at,
        "key": key, "key_encoding": key_encoding, "body": body, "body_encoding": body_encoding,
    }
    if d.shard is not None:
        out |= {"shard": d.shard, "offset": d.offset, "headers": d.headers}
    return out


def _delivery_text(d: Delivery) -> str:
    """``ID<TAB>attempt=N priority=P [key=K] [shard=S offset=O [headers={...}]]<TAB>BODY``
    (shard, offset and headers for a delivery from a consumer group)."""
    extra = "" if d.key is None else f" key={_bytes_text(d.key)}"
    if d.shard is not None:
        extra += f" shard={d.shard} offset={d.offset}"
        if d.headers:
            extra += f" headers={_compact_json(d.headers)}"
    return f"{d.id}\tattempt={d.attempt} priority={d.priority}{extra}\t{_bytes_text(d.body)}"


def _compact_json(value: Any) -> str:
    """One line of JSON without spaces (a header map in a text line)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _read_stdin() -> bytes:
    with click.open_file("-", "rb") as f:
        return f.read()


def _ids_text(ids: tuple[int, ...] | list[int]) -> str:
    return ", ".join(map(str, ids))


def _time_text(ms: int) -> str:
    """A server wall-clock time (ms since the epoch) as ISO 8601 UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error_text(error: str) -> str:
    """A consumer's error text, quoted and escaped so that it stays on one line."""
    return json.dumps(error, ensure_ascii=False)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _peeked_json(m: PeekedMessage) -> dict[str, Any]:
    body, body_encoding = _bytes_json(m.body)
    key, key_encoding = _bytes_json(m.key)
    return {
        "id": m.id, "state": m.state, "attempts": m.attempts, "priority": m.priority, "until_ms": m.until_ms,
        "key": key, "key_encoding": key_encoding, "body": body, "body_encoding": body_encoding,
        "dead_letter": None if m.dead_letter is None else asdict(m.dead_letter),
        "published_at": m.published_at,
    }


def _dead_letter_text(d: DeadLetterInfo) -> str:
    """Where a dead letter came from and why: ``source=QUEUE#ID source_attempts=N reason=R
    dead_lettered_at=TIME [error="..."]`` (``#`` is not a queue name character)."""
    text = (
        f"source={d.queue}#{d.id} source_attempts={d.attempts} reason={d.reason}"
        f" dead_lettered_at={_time_text(d.at_ms)}"
    )
    return text if d.error is None else f"{text} error={_error_text(d.error)}"


def _status_text(s: MessageStatus) -> str:
    details = []
    if s.state == "dead_lettered":
        details.append(f"queue={s.queue} id={s.dead_letter_id}")
    if s.state in ("ready", "leased", "delayed", "dead_lettered"):
        details.append(f"attempts={s.attempts}")
    if s.until_ms:
        details.append(f"until={_time_text(s.until_ms)}")
    if s.expires_at_ms:
        details.append(f"expires={_time_text(s.expires_at_ms)}")
    if s.published_at:
        details.append(f"published={_time_text(s.published_at)}")
    if s.reason is not None:
        details.append(f"reason={s.reason}")
    if s.dead_lettered_at_ms is not None:
        details.append(f"dead_lettered_at={_time_text(s.dead_lettered_at_ms)}")
    if s.error is not None:
        details.append(f"error={_error_text(s.error)}")
    return f"{s.id}\t{s.state}" + (f"\t{' '.join(details)}" if details else "")


# Click types of the queue settings whose type hint alone says too little; the others
# follow their hint (int or str). Names, defaults and help come from client.ops.
_SETTING_OPTIONS: dict[str, dict[str, Any]] = {
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
    settings: Iterable[Param], overrides: dict[str, dict[str, Any]] = _SETTING_OPTIONS
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


# --- commands ----------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Inspect and drive a Lockgate broker.

    Queues: create-queue, publish, consume, subscribe, ack, stats, ... Topics and
    consumer groups: `brokerctl topic ...` (create, list, stats, publish, delete) and
    `brokerctl group ...` (create, list, stats, seek, delete); a group's messages are
    read with the queue commands under the name TOPIC/GROUP (`brokerctl consume
    orders/billing`). `brokerctl txn FILE` runs acks and publishes from a JSON file
    as one transaction: all of them or none.

    Commands that talk to a broker accept --addr HOST:PORT (default: $LOCKGATE_ADDR,
    else 127.0.0.1:7878) and authenticate as $LOCKGATE_USER with $LOCKGATE_PASSWORD, or
    with $LOCKGATE_TOKEN, when set; all accept --json. `brokerctl wal ...` reads a data directory
    offline (never modifying it); `brokerctl user ...` edits a users file offline. Exit status: 0 ok, 1 the broker refused the request
    (or, for wal, damage was found), 2 the broker could not be reached (or bad usage).
    """


@main.command()
@common_options
def ping(addr: str, as_json: bool) -> None:
    """Measure the round-trip time; show the server's info."""
    with connect(addr) as client:
        start = time.perf_counter()
        now_ms = client.ping()
        rtt_ms = (time.perf_counter() - start) * 1000
        info = client.server_info
    if as_json:
        _emit_json({"rtt_ms": round(rtt_ms, 3), "server_time_ms": now_ms, "server": asdict(info)})
        return
    click.echo(f"pong from {addr}: time={rtt_ms:.3f} ms")
    click.echo(f"server {info.server} (protocol v{info.version}), node {info.node!r}")
    click.echo(
        f"limits: max_frame={info.max_frame} max_message={info.max_message} max_batch={info.max_batch}"
    )
    for route in info.shards:
        click.echo(f"shards of {route.queue}: node {route.node!r} at {route.addr}")


_TABLE_COLUMNS = (
    "name", "kind", "shards", "ready", "leased", "delayed", "published", "acked", "max_attempts", "dead_letter",
    "settings",
)
#: Defaults of the QueueStats fields that have one (the settings added after the first).
_STATS_DEFAULTS = {f.name: f.default for f in fields(QueueStats) if f.default is not MISSING}


def _other_settings(s: QueueStats) -> str:
    """The queue settings without a column of their own, as ``name=value``: each one that
    has no default in QueueStats, and the others when they differ from it."""
    shown = []
    for setting in QUEUE_SETTINGS:
        name = setting.name
        if name in _TABLE_COLUMNS:
            continue
        value = getattr(s, name, None)
        if name not in _STATS_DEFAULTS or value != _STATS_DEFAULTS[name]:
            shown.append(f"{name}={'-' if value is None else value}")
    return " ".join(shown)


def _queue_cell(s: QueueStats, column: str) -> str:
    if column == "settings":
        return _other_settings(s)
    value = getattr(s, column)
    return "-" if value is None else str(value)


@main.command()
@common_options
def queues(addr: str, as_json: bool) -> None:
    """List every queue with its message counts and settings.

    MAX_ATTEMPTS is 0 when unlimited; DEAD_LETTER is "-" when there is none. SETTINGS
    shows visibility_ms and max_messages, and the other settings (retry backoff, ...)
    where they differ from their defaults; `brokerctl stats NAME` shows them all.
    """
    with connect(addr) as client:
        stats = client.list_queues()
    if as_json:
        _emit_json([asdict(s) for s in stats])
        return
    if not stats:
        click.echo("no queues")
        return
    rows = [[_queue_cell(s, c) for c in _TABLE_COLUMNS] for s in stats]
    _print_table(_TABLE_COLUMNS, rows, left={"name", "kind", "dead_letter", "settings"})


def _print_table(columns: tuple[str, ...], rows: list[list[str]], left: set[str]) -> None:
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


@main.command("create-queue")
@click.argument("name")
@queue_setting_options
@common_options
def create_queue(name: str, addr: str, as_json: bool, **settings: Any) -> None:
    """Create queue NAME (idempotent when the settings match)."""
    with connect(addr) as client:
        created = client.create_queue(name, **settings)
    if as_json:
        _emit_json({"queue": name, "created": created})
    elif created:
        click.echo(f"created queue {name}")
    else:
        click.echo(f"queue {name} already exists with these settings")


@main.command("delete-queue")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@common_options
def delete_queue(name: str, yes: bool, addr: str, as_json: bool) -> None:
    """Delete queue NAME and every message in it."""
    if not yes:
        click.confirm(f"Delete queue {name} and all its messages?", abort=True, err=True)
    with connect(addr) as client:
        dropped = client.delete_queue(name)
    if as_json:
        _emit_json({"queue": name, "messages": dropped})
    else:
        click.echo(f"deleted queue {name} ({dropped} messages dropped)")


@main.command()
@click.argument("name")
@common_options
def stats(name: str, addr: str, as_json: bool) -> None:
    """Show the settings and counters of queue NAME."""
    with connect(addr) as client:
        s = client.queue_stats(name)
    values = asdict(s)
    if as_json:
        _emit_json(values)
        return
    width = max(map(len, values))
    for field, value in values.items():
        click.echo(f"{field.ljust(width)}  {'-' if value is None else value}")


@main.command()
@click.argument("queue")
@click.argument("body")
@click.option("--key", help="Routing key (text); picks the shard, keeping order per key.")
@click.option("--priority", type=click.IntRange(0, 255), help="0..255, higher first (priority queues).")
@click.option("--delay-ms", type=click.IntRange(0), help="Keep the message invisible this long.")
@click.option("--ttl-ms", type=click.IntRange(1, MAX_TTL_MS),
              help="Remove the message this long after publishing if it is still there [queue's ttl_ms].")
@click.option("--dedup-id", help="Idempotency key (text, 1..128 bytes of UTF-8): not stored again if a message "
              "with it was published within the queue's dedup window.")
@click.option(
    "--count", "-n", type=click.IntRange(1), default=1, show_default=True,
    help="Publish this many copies (sent in batches).",
)
@common_options
def publish(
    queue: str, body: str, key: str | None, priority: int | None, delay_ms: int | None,
    ttl_ms: int | None, dedup_id: str | None, count: int, addr: str, as_json: bool,
) -> None:
    """Publish BODY to QUEUE.

    BODY is text, sent as UTF-8; "-" reads the body as raw bytes from stdin. With
    --dedup-id, a message whose dedup id was already published is reported as a
    duplicate of the message published first (nothing is stored).
    """
    data = _read_stdin() if body == "-" else body.encode()
    message = Message(data, key, priority, delay_ms, ttl_ms, dedup_id)
    with connect(addr) as client:
        if count == 1:
            results = [client.publish_batch(queue, [message])]
        else:
            results = client.publish_many(queue, (message for _ in range(count)))
    stored = sum(r.count for r in results)
    duplicates = [mid for r in results for _, mid in r.duplicates]
    if as_json:
        _emit_json({
            "queue": queue, "count": count,
            "batches": [{"first_id": r.first_id, "count": r.count,
                         **({"duplicates": [list(d) for d in r.duplicates]} if r.duplicates else {})}
                        for r in results],
        })
    elif count == 1 and duplicates:
        click.echo(f"duplicate in {queue}: nothing stored; the message published first is id {duplicates[0]}")
    elif count == 1:
        click.echo(f"published 1 message to {queue}: id {results[0].first_id}")
    else:
        spans = ", ".join(
            str(r.first_id) if r.count == 1 else f"{r.first_id}-{r.first_id + r.count - 1}"
            for r in results if r.count
        )
        text = f"published {stored} messages to {queue}: ids {spans}" if stored else f"published 0 messages to {queue}"
        if duplicates:
            text += f"; {len(duplicates)} duplicates of id{'s' if len(set(duplicates)) > 1 else ''} " \
                    f"{', '.join(map(str, sorted(set(duplicates))))}"
        click.echo(text)


@main.command()
@click.argument("queue")
@click.option("--max", "-n", "max_", type=click.IntRange(1), default=1, show_default=True,
              help="Most messages to take.")
@click.option("--ack", is_flag=True, help="Acknowledge (delete) the messages once printed.")
@click.option("--visibility-ms", type=click.IntRange(1), help="Lease length [the queue's].")
@click.option("--wait-ms", type=click.IntRange(0), default=0, show_default=True,
              help="Wait this long for messages when none are ready.")
@common_options
def consume(
    queue: str, max_: int, ack: bool, visibility_ms: int | None, wait_ms: int, addr: str, as_json: bool
) -> None:
    """Lease messages from QUEUE and print them.

    Each line shows id, attempt, priority, key and body; a consumer group's messages
    (QUEUE is TOPIC/GROUP) also show their shard, offset and headers.
    Bodies print as text when they are UTF-8, else as hex (text) or base64 (JSON).
    Without --ack the messages stay leased until their lease expires or they are
    acked or nacked by id.
    """
    with connect(addr) as client:
        deliveries = client.consume(queue, max_, visibility_ms=visibility_ms, wait_ms=wait_ms)
        acked = client.ack(queue, [d.id for d in deliveries]).acked if ack and deliveries else 0
    if as_json:
        out: dict[str, Any] = {"queue": queue, "messages": [_delivery_json(d) for d in deliveries]}
        if ack:
            out["acked"] = acked
        _emit_json(out)
        return
    if not deliveries:
        click.echo("no messages", err=True)
    for d in deliveries:
        click.echo(_delivery_text(d))
    if ack and deliveries:
        click.echo(f"acked {acked} of {len(deliveries)}", err=True)


def _print_pushed(msg: SyncIncomingMessage, as_json: bool) -> None:
    """One line per message: consume's text line, or a compact JSON object."""
    d = msg.delivery
    if as_json:
        click.echo(json.dumps({"queue": msg.queue, **_delivery_json(d)}))
        return
    click.echo(_delivery_text(d))


@main.command("subscribe")
@click.argument("queue")
@click.option("--credit", type=click.IntRange(1), default=DEFAULT_CREDIT, show_default=True,
              help="Most messages pushed and not yet acked at once (with --count, at most that many).")
@click.option("--ack", "mode", flag_value="ack", help="Acknowledge (delete) each message once printed.")
@click.option("--auto-ack", "mode", flag_value="auto_ack",
              help="At most once: the broker deletes each message as it pushes it (not with --count).")
@click.option("--count", "-n", type=click.IntRange(1), help="Stop after this many messages [until Ctrl-C].")
@click.option("--visibility-ms", type=click.IntRange(1), help="Lease length [the queue's].")
@partial(common_options, json_help="Print one JSON object per message and line instead of text.")
def subscribe_cmd(
    queue: str, credit: int, mode: str | None, count: int | None, visibility_ms: int | None,
    addr: str, as_json: bool,
) -> None:
    """Print the messages of QUEUE as the broker pushes them.

    One line per message, as consume prints them (--json: one JSON object per line),
    until --count messages have arrived or Ctrl-C. Without --ack or --auto-ack the
    messages stay leased: after --credit of them nothing more comes until their leases
    end (then they come again, with the next attempt). On leaving, messages pushed but
    not printed are given back (nacked). --auto-ack cannot be combined with --count: the
    broker would delete the messages it pushes past the count, unprinted.
    """
    if mode == "auto_ack" and count is not None:
        raise click.UsageError("--auto-ack cannot be used with --count (messages pushed past the count "
                               "would be deleted unprinted); use --ack")
    if count is not None:
        credit = min(credit, count)
    # With --count and --ack, acks that would let the broker push more than --count
    # messages in all are held back and sent at the end.
    ack_now = None if count is None else count - credit
    printed = acked = 0
    held: list[int] = []
    current: SyncIncomingMessage | None = None  # handed out, not printed yet
    with connect(addr) as client:
        sub = client.subscribe(queue, credit=credit, visibility_ms=visibility_ms, auto_ack=mode == "auto_ack")
        try:
            with sub:
                for current in sub:
                    _print_pushed(current, as_json)
                    printed += 1
                    if mode == "ack":
                        if ack_now is None or acked < ack_now:
                            acked += current.ack().acked
                        else:
                            held.append(current.id)
                    current = None
                    if printed == count:
                        break
        except KeyboardInterrupt:
            if current is not None and current.settled is None:
                current.nack()  # Ctrl-C came before it was printed: give it back
        if held:
            acked += client.ack(queue, held).acked
        if sub.end_reason is not None:
            _fail(EXIT_ERROR, f"the broker ended the subscription: {sub.end_reason}")
    summary = f"received {_plural(printed, 'message')}"
    click.echo(summary + (f", acked {acked}" if mode == "ack" else ""), err=True)


@main.command("ack")
@click.argument("queue")
@click.argument("ids", nargs=-1, type=int, required=True)
@common_options
def ack_cmd(queue: str, ids: tuple[int, ...], addr: str, as_json: bool) -> None:
    """Acknowledge (delete) messages of QUEUE by id."""
    with connect(addr) as client:
        result = client.ack(queue, ids)
    if as_json:
        _emit_json({"queue": queue, "acked": result.acked, "missing": list(result.missing)})
        return
    click.echo(f"acked {result.acked} of {len(ids)}")
    if result.missing:
        click.echo(f"not found: {_ids_text(result.missing)}", err=True)


@main.command("nack")
@click.argument("queue")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--delay-ms", type=click.IntRange(0), default=0, show_default=True,
              help="Make the messages ready again only after this long.")
@click.option("--error", metavar="TEXT",
              help="Why processing failed (at most 1024 bytes); kept with each message, and with it "
                   "in the dead-letter queue if it goes there.")
@common_options
def nack_cmd(
    queue: str, ids: tuple[int, ...], delay_ms: int, error: str | None, addr: str, as_json: bool
) -> None:
    """Return leased messages of QUEUE to the queue by id."""
    with connect(addr) as client:
        result = client.nack(queue, ids, delay_ms=delay_ms, error=error)
    if as_json:
        _emit_json({"queue": queue, "released": result.released, "missing": list(result.missing)})
        return
    click.echo(f"released {result.released} of {len(ids)}")
    if result.missing:
        click.echo(f"not found or not leased: {_ids_text(result.missing)}", err=True)


@main.command("extend")
@click.argument("queue")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--visibility-ms", type=click.IntRange(1),
              help="The leases run this long from now [the queue's visibility_ms].")
@common_options
def extend_cmd(queue: str, ids: tuple[int, ...], visibility_ms: int | None, addr: str, as_json: bool) -> None:
    """Extend the leases of messages of QUEUE by id.

    Each lease then runs until now + --visibility-ms, which may also shorten it. No
    attempt is counted. Ids that are not leased (ready, delayed, unknown) are reported.
    """
    with connect(addr) as client:
        result = client.extend(queue, ids, visibility_ms=visibility_ms)
    if as_json:
        _emit_json({"queue": queue, "extended": result.extended, "missing": list(result.missing)})
        return
    click.echo(f"extended {result.extended} of {len(ids)}")
    if result.missing:
        click.echo(f"not found or not leased: {_ids_text(result.missing)}", err=True)


@main.command("reject")
@click.argument("queue")
@click.argument("ids", nargs=-1, type=int, required=True)
@click.option("--error", metavar="TEXT", help="Why (at most 1024 bytes); kept with the dead letter.")
@common_options
def reject_cmd(queue: str, ids: tuple[int, ...], error: str | None, addr: str, as_json: bool) -> None:
    """Dead-letter leased messages of QUEUE now, by id.

    The messages go straight to QUEUE's dead-letter queue: they leave QUEUE at once,
    whatever their attempts, with reason "rejected" (dropped if QUEUE has no
    dead-letter queue). Ids that are not leased are reported.
    """
    with connect(addr) as client:
        result = client.reject(queue, ids, error=error)
    if as_json:
        _emit_json({"queue": queue, "rejected": result.rejected, "missing": list(result.missing)})
        return
    click.echo(f"rejected {result.rejected} of {len(ids)}")
    if result.missing:
        click.echo(f"not found or not leased: {_ids_text(result.missing)}", err=True)


@main.command()
@click.argument("queue")
@click.option("--leased", is_flag=True, help="Also delete the leased messages (in-flight work is lost).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@common_options
def purge(queue: str, leased: bool, yes: bool, addr: str, as_json: bool) -> None:
    """Delete the ready and delayed messages of QUEUE.

    The queue stays. With --leased the leased messages go too. Purged messages are not
    dead-lettered; later acks of their ids report them missing.
    """
    if not yes:
        which = "every message" if leased else "every ready and delayed message"
        click.confirm(f"Delete {which} of queue {queue}?", abort=True, err=True)
    with connect(addr) as client:
        result = client.purge_queue(queue, leased=leased)
    if as_json:
        _emit_json(asdict(result))
        return
    click.echo(
        f"purged {result.total} messages from {queue} "
        f"(ready {result.ready}, delayed {result.delayed}, leased {result.leased})"
    )


@main.command()
@click.argument("queue")
@click.option("--max", "-n", "max_", type=click.IntRange(1), default=10, show_default=True,
              help="Most messages to show.")
@click.option("--state", type=click.Choice(["ready", "leased", "delayed", "waiting"]),
              help="Only messages in this state [every state].")
@click.option("--dead-letter", is_flag=True, help="Look at the queue's dead-letter queue instead.")
@common_options
def peek(queue: str, max_: int, state: str | None, dead_letter: bool, addr: str, as_json: bool) -> None:
    """Show messages of QUEUE without leasing them.

    Each line shows id, state, attempts so far, priority, key, the lease deadline or
    ready time (UTC) and body. A message that was dead-lettered into the queue also
    shows where it came from (source=QUEUE#ID), how often it was delivered there,
    the reason, when it moved (UTC) and the last error text. Ready messages come first,
    in the order consume would take them, then leased, then delayed ones. Nothing
    changes: no lease is taken and no attempt is counted.
    """
    with connect(addr) as client:
        result = client.peek(queue, max_, state=state, dead_letter=dead_letter)
    if as_json:
        _emit_json({"queue": result.queue, "messages": [_peeked_json(m) for m in result]})
        return
    if dead_letter:
        click.echo(f"dead-letter queue {result.queue}", err=True)
    if not result.messages:
        click.echo("no messages", err=True)
    for m in result:
        key = "" if m.key is None else f" key={_bytes_text(m.key)}"
        until = f" until={_time_text(m.until_ms)}" if m.until_ms else ""
        until += f" published={_time_text(m.published_at)}" if m.published_at else ""
        dead = "" if m.dead_letter is None else f" {_dead_letter_text(m.dead_letter)}"
        click.echo(
            f"{m.id}\t{m.state} attempts={m.attempts} priority={m.priority}{key}{until}{dead}"
            f"\t{_bytes_text(m.body)}"
        )


@main.command()
@click.argument("queue")
@click.argument("ids", nargs=-1, type=int, required=True)
@common_options
def status(queue: str, ids: tuple[int, ...], addr: str, as_json: bool) -> None:
    """Show where messages of QUEUE are now, by id.

    One line per id: ready, leased or delayed (with attempts so far, the lease
    deadline or ready time and when its time to live ends, UTC), dead_lettered (with the dead-letter queue and the id
    there, the reason, when it moved and the last error text), gone (acked, purged or
    dropped) or unknown (never published to QUEUE).
    """
    with connect(addr) as client:
        statuses = client.message_status(queue, ids)
    if as_json:
        _emit_json({"queue": queue, "statuses": [asdict(s) for s in statuses]})
        return
    for s in statuses:
        click.echo(_status_text(s))


@main.group()
def dlq() -> None:
    """Dead-letter queues: send their messages back (redrive)."""


@dlq.command("redrive")
@click.argument("queue", metavar="DLQ")
@click.argument("id_list", metavar="[ID]...", nargs=-1, type=int)
@click.option("--max", "-n", "max_", type=click.IntRange(1),
              help="Move at most this many, lowest ids first [no limit].")
@click.option("--ids", "only_ids", is_flag=True, help="Move only the ids given after DLQ (--ids ID...).")
@common_options
def redrive_cmd(
    queue: str, id_list: tuple[int, ...], max_: int | None, only_ids: bool, addr: str, as_json: bool
) -> None:
    """Move dead letters of DLQ back to the queues they came from.

    Each moved message is published again to its source queue as a new message (a new
    id there), ready at once with no attempts; all move or none. Without --ids every
    message of DLQ is considered, in id order (with --max, at most that many move).
    Messages that are leased, were not dead-lettered into DLQ, or whose source queue
    no longer exists stay where they are and are counted as skipped.
    """
    if id_list and not only_ids:
        raise click.UsageError("give message ids after --ids, e.g. --ids 4 5 6")
    if only_ids and not id_list:
        raise click.UsageError("--ids needs at least one id")
    if only_ids and max_ is not None:
        raise click.UsageError("--max and --ids cannot be used together")
    with connect(addr) as client:
        result = client.redrive(queue, max=max_, ids=id_list or None)
    if as_json:
        _emit_json({"queue": queue, "redriven": result.redriven, "queues": result.queues,
                    "skipped": result.skipped})
        return
    click.echo(f"redrove {_plural(result.redriven, 'message')} from {queue}")
    for name, count in sorted(result.queues.items()):
        click.echo(f"  {count} to {name}")
    if result.skipped:
        why = "leased, not dead letters of it, source queue gone" + (", or not found" if id_list else "")
        click.echo(f"skipped {result.skipped} ({why})", err=True)


# --- topics and consumer groups (SPEC §8.13) --------------------------------------------


def _pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str] | None:
    """Repeated ``KEY=VALUE`` options as a map (``None`` when none is given)."""
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        if key in pairs:
            raise click.BadParameter(f"{key!r} is given twice")
        pairs[key] = value
    return pairs or None


POSITION_HELP = (
    "earliest (the oldest message retained), latest (only messages published from now on), "
    "a time in ms since the epoch (per shard, the first message published then or later), or "
    "one offset per shard as o1,o2,... (one shard: 'o1,')."
)


def _position(ctx: click.Context, param: click.Parameter, value: str | None) -> str | int | list[int] | None:
    """A group position: ``earliest``, ``latest``, a time in ms, or offsets ``o1,o2,...``."""
    if value is None or value in ("earliest", "latest"):
        return value
    if "," in value:
        parts = value.split(",")
        if parts[-1] == "":
            parts.pop()  # "7,": the offset of a topic's one shard
        if parts and all(p.isdigit() for p in parts):
            return [int(p) for p in parts]
    elif value.isdigit():
        return int(value)
    raise click.BadParameter(f"expected earliest, latest, a time in ms or offsets o1,o2,...; got {value!r}")


def _value_text(value: Any) -> str:
    """A stats value on a text line: lists comma-separated, maps as compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return _compact_json(value)
    return str(value)


def _print_fields(values: dict[str, Any]) -> None:
    """One ``name  value`` line per field, as `stats` prints a queue."""
    width = max(map(len, values))
    for name, value in values.items():
        click.echo(f"{name.ljust(width)}  {_value_text(value)}")


def _spans(results: list[PublishResult]) -> str:
    """The ids of publish results as ``1-1000, 1001-1500``."""
    return ", ".join(
        str(r.first_id) if r.count == 1 else f"{r.first_id}-{r.first_id + r.count - 1}" for r in results if r.count
    )


def _group_json(g: GroupStats) -> dict[str, Any]:
    """A group's stats as SPEC §5.26 lays them out: its place in the topic, then its
    delivery queue's stats (``queue`` is the name to read it by, TOPIC/GROUP)."""
    delivery = asdict(g.delivery)
    queue = delivery.pop("name")
    return {"topic": g.topic, "group": g.group, "queue": queue, "cursors": list(g.cursors), "lag": g.lag,
            "missed": g.missed, "filtered": g.filtered, "filter": g.filter, **delivery}


#: How ``topic create``'s options differ from what the op table says of them.
_TOPIC_OPTIONS: dict[str, dict[str, Any]] = {
    "shards": {"type": click.IntRange(MIN_SHARDS, MAX_SHARDS),
               "help": "Number of shards: a message's key picks its shard; order holds per shard."},
    "retention": {"type": click.Choice([r.value for r in Retention]),
                  "help": "How long messages are kept: until every group is done with them (interest), "
                          "by the limits below (limits), or the first of the two (both) "
                          "[server default: interest]."},
    "max_age_ms": {"type": click.IntRange(0)},
    "max_bytes": {"type": click.IntRange(0)},
    "max_messages": {"type": click.IntRange(0)},
}
_QUEUE_SETTINGS_BY_NAME = {p.name: p for p in QUEUE_SETTINGS}
#: The delivery settings of ``create_group``: those it shares with ``create_queue``, with
#: the queue setting's help where the group's declaration has none.
GROUP_SETTINGS: tuple[Param, ...] = tuple(
    replace(p, doc=p.doc or _QUEUE_SETTINGS_BY_NAME[p.name].doc)
    for p in OPS["create_group"].params if p.name in _QUEUE_SETTINGS_BY_NAME
)
_GROUP_OPTIONS = _SETTING_OPTIONS | {
    "ordered": {"help": "Process the group's messages with the same key one at a time, in publish "
                        "order [server default: false]."},
}
_TOPIC_COLUMNS = ("name", "shards", "retention", "messages", "bytes", "published", "reclaimed", "expired",
                  "groups", "limits")
_GROUP_COLUMNS = ("group", "lag", "ready", "leased", "delayed", "acked", "dead_lettered", "missed", "filtered",
                  "cursors")


def _topic_cell(t: TopicStats, column: str) -> str:
    if column == "groups":
        return ",".join(t.groups) or "-"
    if column == "limits":
        limits = [f"{name}={getattr(t, name)}" for name in ("max_age_ms", "max_bytes", "max_messages")
                  if getattr(t, name)]
        return " ".join(limits) or "-"
    return str(getattr(t, column))


@main.group()
def topic() -> None:
    """Topics: each message stored once, read by every consumer group.

    A topic keeps each message in the shard its key picks, at that shard's next offset,
    until its groups are done with it (retention interest), until its age, byte or
    message limit lets go of it (limits), or the first of the two (both). Groups:
    `brokerctl group ...`.
    """


@topic.command("create")
@click.argument("name")
@setting_options(OPS["create_topic"].params[1:], _TOPIC_OPTIONS)
@common_options
def topic_create(name: str, addr: str, as_json: bool, **settings: Any) -> None:
    """Create topic NAME (idempotent when the settings match)."""
    with connect(addr) as client:
        created = client.create_topic(name, **settings)
    if as_json:
        _emit_json({"topic": name, "created": created})
    elif created:
        click.echo(f"created topic {name}")
    else:
        click.echo(f"topic {name} already exists with these settings")


@topic.command("list")
@common_options
def topic_list(addr: str, as_json: bool) -> None:
    """List every topic with its counts, groups and limits.

    MESSAGES and BYTES are what it retains now; RECLAIMED counts the messages dropped
    once every group was done with them, EXPIRED those dropped by a limit. LIMITS shows
    the limits that are set.
    """
    with connect(addr) as client:
        stats = client.list_topics()
    if as_json:
        _emit_json([asdict(t) for t in stats])
        return
    if not stats:
        click.echo("no topics")
        return
    rows = [[_topic_cell(t, c) for c in _TOPIC_COLUMNS] for t in stats]
    _print_table(_TOPIC_COLUMNS, rows, left={"name", "retention", "groups", "limits"})


@topic.command("stats")
@click.argument("name")
@common_options
def topic_stats_cmd(name: str, addr: str, as_json: bool) -> None:
    """Show the settings and counters of topic NAME.

    first_offsets and next_offsets are per shard: the oldest offset retained and the
    offset the next message there gets.
    """
    with connect(addr) as client:
        stats = client.topic_stats(name)
    if as_json:
        _emit_json(asdict(stats))
    else:
        _print_fields(asdict(stats))


@topic.command("publish")
@click.argument("name", metavar="TOPIC")
@click.argument("body")
@click.option("--key", help="Routing key (text); picks the shard, keeping order per key.")
@click.option("--header", "headers", multiple=True, metavar="KEY=VALUE", callback=_pairs,
              help="A header (repeatable; at most 32 and 4096 bytes in all); groups may filter on them.")
@click.option("--count", "-n", type=click.IntRange(1), default=1, show_default=True,
              help="Publish this many copies (sent in batches, each atomic).")
@common_options
def topic_publish(
    name: str, body: str, key: str | None, headers: dict[str, str] | None, count: int, addr: str, as_json: bool
) -> None:
    """Publish BODY to TOPIC, once for all its groups.

    BODY is text, sent as UTF-8; "-" reads the body as raw bytes from stdin.
    """
    data = _read_stdin() if body == "-" else body.encode()
    message = TopicMessage(data, key, headers)
    results: list[PublishResult] = []
    with connect(addr) as client:
        info = client.server_info
        size = len(data) + len((key or "").encode()) + 32 + sum(
            10 + len(k.encode()) + len(v.encode()) for k, v in (headers or {}).items())
        per_batch = max(1, min(info.max_batch, (info.max_frame - 1024) // size))
        left = count
        while left:
            n = min(per_batch, left)
            results.append(client.publish_topic(name, [message] * n))
            left -= n
    if as_json:
        _emit_json({"topic": name, "count": count,
                    "batches": [{"first_id": r.first_id, "count": r.count} for r in results]})
    elif count == 1:
        click.echo(f"published 1 message to topic {name}: id {results[0].first_id}")
    else:
        click.echo(f"published {count} messages to topic {name}: ids {_spans(results)}")


@topic.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@common_options
def topic_delete(name: str, yes: bool, addr: str, as_json: bool) -> None:
    """Delete topic NAME, every message it retains and all its groups."""
    if not yes:
        click.confirm(f"Delete topic {name}, its messages and its groups?", abort=True, err=True)
    with connect(addr) as client:
        dropped = client.delete_topic(name)
    if as_json:
        _emit_json({"topic": name, "messages": dropped})
    else:
        click.echo(f"deleted topic {name} ({dropped} messages dropped)")


@main.group()
def group() -> None:
    """Consumer groups: each reads every message of its topic, at its own pace.

    The consumers of one group share its messages; read them with the queue commands
    under the name TOPIC/GROUP: `brokerctl consume orders/billing --ack`, `subscribe`,
    `ack`, `nack`, `peek`, `stats`. Each group has its own leases, retries and
    dead-letter queue.
    """


@group.command("create")
@click.argument("topic_name", metavar="TOPIC")
@click.argument("name", metavar="GROUP")
@click.option("--start", callback=_position, metavar="POSITION",
              help=f"Where it starts reading: {POSITION_HELP} [server default: latest]")
@click.option("--filter", "filter_", multiple=True, metavar="KEY=VALUE", callback=_pairs,
              help="Deliver only messages with this header (repeatable: all of them); the others are skipped.")
@setting_options(GROUP_SETTINGS, _GROUP_OPTIONS)
@common_options
def group_create(
    topic_name: str, name: str, start: str | int | list[int] | None, filter_: dict[str, str] | None,
    addr: str, as_json: bool, **settings: Any,
) -> None:
    """Attach consumer group GROUP to TOPIC (idempotent when the settings and filter match).

    Its messages are then read as the queue TOPIC/GROUP. --start is not compared with an
    existing group's: move one with `brokerctl group seek`.
    """
    with connect(addr) as client:
        created = client.create_group(topic_name, name, start=start, filter=filter_, **settings)
    queue = group_queue(topic_name, name)
    if as_json:
        _emit_json({"topic": topic_name, "group": name, "queue": queue, "created": created})
    elif created:
        click.echo(f"created group {name} of topic {topic_name} (read it as {queue})")
    else:
        click.echo(f"group {name} of topic {topic_name} already exists with these settings")


@group.command("list")
@click.argument("topic_name", metavar="TOPIC")
@common_options
def group_list(topic_name: str, addr: str, as_json: bool) -> None:
    """List the consumer groups of TOPIC with their progress.

    LAG counts the messages retained that the group has not taken yet; READY, LEASED and
    DELAYED those it has taken and not acked; MISSED those the topic's limits dropped
    before the group was done with them; FILTERED those its filter skipped. CURSORS is,
    per shard, the next offset it has not taken.
    """
    spec = OPS["group_stats"]
    with connect(addr) as client:
        names = client.topic_stats(topic_name).groups
        replies = client.request_many((spec.op, spec.args(topic_name, name)) for name in names)
    stats: list[GroupStats] = []
    for reply in replies:
        if isinstance(reply, QueueNotFound):
            continue  # deleted meanwhile
        if isinstance(reply, LockgateError):
            _fail(EXIT_ERROR, f"{reply.code_name}: {reply.message}")
        stats.append(spec.parse(reply))
    if as_json:
        _emit_json([_group_json(g) for g in stats])
        return
    if not stats:
        click.echo(f"no groups of topic {topic_name}")
        return
    rows = [[_value_text(_group_json(g)[c]) for c in _GROUP_COLUMNS] for g in stats]
    _print_table(_GROUP_COLUMNS, rows, left={"group", "cursors"})


@group.command("stats")
@click.argument("topic_name", metavar="TOPIC")
@click.argument("name", metavar="GROUP")
@common_options
def group_stats_cmd(topic_name: str, name: str, addr: str, as_json: bool) -> None:
    """Show where GROUP of TOPIC stands and its delivery queue's settings and counters."""
    with connect(addr) as client:
        stats = _group_json(client.group_stats(topic_name, name))
    if as_json:
        _emit_json(stats)
    else:
        _print_fields(stats)


@group.command("seek")
@click.argument("topic_name", metavar="TOPIC")
@click.argument("name", metavar="GROUP")
@click.option("--to", "to", required=True, callback=_position, metavar="POSITION", help=POSITION_HELP)
@common_options
def group_seek(topic_name: str, name: str, to: str | int | list[int], addr: str, as_json: bool) -> None:
    """Move the cursors of GROUP of TOPIC.

    Messages the group had taken and not delivered go back, to be read again when the
    cursors reach them; leased ones stay leased until acked, released or expired.
    """
    with connect(addr) as client:
        cursors = client.seek_group(topic_name, name, to)
    if as_json:
        _emit_json({"topic": topic_name, "group": name, "cursors": cursors})
    else:
        click.echo(f"moved group {name} of topic {topic_name}: cursors {_value_text(cursors)}")


@group.command("delete")
@click.argument("topic_name", metavar="TOPIC")
@click.argument("name", metavar="GROUP")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@common_options
def group_delete(topic_name: str, name: str, yes: bool, addr: str, as_json: bool) -> None:
    """Delete GROUP of TOPIC and what it has taken and not acked.

    Messages only this group was still interested in are then reclaimed.
    """
    if not yes:
        click.confirm(f"Delete group {name} of topic {topic_name} and the messages it holds?",
                      abort=True, err=True)
    with connect(addr) as client:
        dropped = client.delete_group(topic_name, name)
    if as_json:
        _emit_json({"topic": topic_name, "group": name, "messages": dropped})
    else:
        click.echo(f"deleted group {name} of topic {topic_name} ({dropped} messages dropped)")


# --- transactions (SPEC §5.28) --------------------------------------------------------------

#: The ops a transaction step may be, and the fields of a message in a publish step and
#: in a topic_publish step (as the SDK's Message and TopicMessage take them).
TXN_OPS = ("ack", "publish", "topic_publish")
_MESSAGE_FIELDS = tuple(f.name for f in fields(Message))
_TOPIC_MESSAGE_FIELDS = tuple(f.name for f in fields(TopicMessage))
TXN_FILE_HELP = """\
FILE is a JSON array of steps (or an object {"steps": [...]}), at most 64, each an
object with "op" and that op's arguments as in SPEC.md §5.28:

\b
  {"op": "ack", "queue": "in", "ids": [17, 18]}
  {"op": "publish", "queue": "out", "messages": ["text", {"base64": "AAE="},
      {"body": "urgent", "key": "k", "priority": 9, "after": [["in", 19]]}]}
  {"op": "topic_publish", "topic": "orders", "messages": [
      {"body": "paid", "key": "c-42", "headers": {"type": "paid"}}]}

A message is its body (a string, sent as UTF-8, or {"base64": "..."}) or an object with
"body" and the message's other fields (publish: key, priority, delay_ms, ttl_ms,
dedup_id, deliver_at, after; topic_publish: key, headers); key and dedup_id are written
like a body. An ack step may name a consumer group as TOPIC/GROUP."""


class TxnFileError(ValueError):
    """A transaction file whose steps cannot be read (bad usage: nothing is sent)."""


def _json_bytes(value: Any, where: str) -> bytes:
    """A body, key or dedup id from JSON: a string (UTF-8) or ``{"base64": "..."}``."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except binascii.Error as exc:
            raise TxnFileError(f"{where}: not base64 ({exc})") from None
    raise TxnFileError(f'{where}: expected a string or {{"base64": "..."}}, got {_compact_json(value)}')


def _txn_message(value: Any, where: str, topic: bool) -> Message | TopicMessage:
    """One message of a publish (``topic``: topic_publish) step."""
    if isinstance(value, str) or (isinstance(value, dict) and "base64" in value and "body" not in value):
        body = _json_bytes(value, where)
        return TopicMessage(body) if topic else Message(body)
    if not isinstance(value, dict) or "body" not in value:
        raise TxnFileError(f'{where}: expected a body (a string or {{"base64": "..."}}) or an object with "body"')
    allowed = _TOPIC_MESSAGE_FIELDS if topic else _MESSAGE_FIELDS
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise TxnFileError(f"{where}: unknown field {unknown[0]!r} (a message has {', '.join(allowed)})")
    values = dict(value)
    values["body"] = _json_bytes(values["body"], f"{where}.body")
    for name in ("key", "dedup_id"):
        if values.get(name) is not None:
            values[name] = _json_bytes(values[name], f"{where}.{name}")
    after = values.get("after")
    if after is not None:
        if not isinstance(after, list) or not all(isinstance(a, list) and len(a) == 2 for a in after):
            raise TxnFileError(f'{where}.after: expected [[queue, id], ...], got {_compact_json(after)}')
        values["after"] = [(q, i) for q, i in after]
    return TopicMessage(**values) if topic else Message(**values)


def txn_steps(doc: Any) -> list[dict[str, Any]]:
    """The ``txn`` steps of a transaction file's JSON (see ``brokerctl txn --help``):
    messages become wire entries; everything else goes to the broker as written, which
    checks it (and names the step of a bad argument)."""
    steps = doc["steps"] if isinstance(doc, dict) and set(doc) == {"steps"} else doc
    if not isinstance(steps, list):
        raise TxnFileError('expected a JSON array of steps, or an object {"steps": [...]}')
    out = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            raise TxnFileError(f"step {i}: expected an object with \"op\", got {_compact_json(step)}")
        op = step.get("op")
        if op not in TXN_OPS:
            raise TxnFileError(f"step {i}: \"op\" must be one of {', '.join(TXN_OPS)}, got {_compact_json(op)}")
        wire = dict(step)
        if op != "ack" and "messages" in step:
            messages = step["messages"]
            where = f"step {i} ({op}): messages"
            if not isinstance(messages, list):
                raise TxnFileError(f"{where}: expected an array, got {_compact_json(messages)}")
            parsed = [_txn_message(m, f"{where}[{j}]", op == "topic_publish") for j, m in enumerate(messages)]
            wire["messages"] = (topic_entries([m for m in parsed if isinstance(m, TopicMessage)])
                                if op == "topic_publish" else
                                message_entries([m for m in parsed if isinstance(m, Message)]))
        out.append(wire)
    return out


def _txn_error(exc: LockgateError, steps: list[dict[str, Any]]) -> str:
    """``CODE_NAME: step i (op): message``: the broker's error, naming the step (from
    ``details.step`` or ``details.field``) when its message does not, and the ids of a
    conflict."""
    message = exc.message
    step = exc.details.get("step")
    if step is None and (m := re.match(r"steps\[(\d+)\]", str(exc.details.get("field", "")))):
        step = int(m[1])
    if isinstance(step, int) and not message.startswith(f"step {step} "):
        op = steps[step].get("op") if 0 <= step < len(steps) else None
        message = f"step {step} ({op}): {message}"
    if exc.code == ErrorCode.TXN_CONFLICT and exc.details.get("ids"):
        message += f" (ids {_ids_text(exc.details['ids'])})"
    return f"{exc.code_name}: {message}"


def _txn_result_text(i: int, step: dict[str, Any], result: dict[str, Any]) -> str:
    op = step["op"]
    head = f"step {i} {op} {step.get('topic' if op == 'topic_publish' else 'queue')}"
    if op == "ack":
        ack = ack_result(result)
        text = f"{head}: acked {ack.acked}"
        return text + (f"; not held: {_ids_text(ack.missing)}" if ack.missing else "")
    published = publish_result(result)
    text = f"{head}: ids {_spans([published])}" if published.count else f"{head}: nothing stored"
    if published.duplicates:
        text += f"; {_plural(len(published.duplicates), 'duplicate')} of " \
                f"{_ids_text(sorted({mid for _, mid in published.duplicates}))}"
    return text


@main.command("txn", epilog=TXN_FILE_HELP)
@click.argument("file", type=click.File("rb"))
@common_options
def txn_cmd(file: Any, addr: str, as_json: bool) -> None:
    """Run the steps in FILE ('-': stdin) as one transaction: all of them or none.

    Acks (of leased messages only) and publishes to queues and topics take effect
    together, as one record in the broker's log. Prints each step's result in order.
    A step that fails aborts the whole: nothing is applied, and the error names the
    step (exit 1). A file that cannot be read as steps is a usage error (exit 2) and
    sends nothing.
    """
    text = file.read()
    try:
        steps = txn_steps(json.loads(text))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="FILE") from None
    except TxnFileError as exc:
        raise click.BadParameter(str(exc), param_hint="FILE") from None
    with connect(addr) as client:
        try:
            results = client.txn(steps)
        except ConnectionClosed:
            raise
        except LockgateError as exc:
            _fail(EXIT_ERROR, _txn_error(exc, steps))
    if as_json:
        _emit_json({"results": [
            {"step": i, "op": step["op"],
             **({"topic": step.get("topic")} if step["op"] == "topic_publish" else {"queue": step.get("queue")}),
             **result}
            for i, (step, result) in enumerate(zip(steps, results))
        ]})
        return
    for i, (step, result) in enumerate(zip(steps, results)):
        click.echo(_txn_result_text(i, step, result))
    click.echo(f"committed {_plural(len(steps), 'step')}", err=True)


# --- more commands -----------------------------------------------------------------
# The `bench` and `wal` subcommands are registered on `main` here, e.g.
#     from tools.bench import bench; main.add_command(bench)
# Keep `tools.brokerctl.main` importable: it is the `brokerctl` console script.

from tools.userctl import user  # noqa: E402  (the users file, offline)
from tools.walctl import wal  # noqa: E402  (offline WAL tools; needs no broker)

main.add_command(user)
main.add_command(wal)


if __name__ == "__main__":
    main()
