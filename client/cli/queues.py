"""brokerctl's queue commands: queues, create-queue, delete-queue, stats, purge and dlq
redrive."""
from __future__ import annotations

from collections import Counter
from dataclasses import MISSING, asdict, fields
from typing import Any

import click

from client.cli.common import (
    PROGRESS_MIN_MESSAGES,
    Progress,
    common_options,
    connect,
    emit_json,
    plural,
    print_table,
    queue_setting_options,
)
from client.ops import QUEUE_SETTINGS
from client.sync import SyncClient
from client.types import QueueStats, RedriveResult


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


@click.command()
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
        emit_json([asdict(s) for s in stats])
        return
    if not stats:
        click.echo("no queues")
        return
    rows = [[_queue_cell(s, c) for c in _TABLE_COLUMNS] for s in stats]
    print_table(_TABLE_COLUMNS, rows, left={"name", "kind", "dead_letter", "settings"})


@click.command("create-queue")
@click.argument("name")
@queue_setting_options
@common_options
def create_queue(name: str, addr: str, as_json: bool, **settings: Any) -> None:
    """Create queue NAME (idempotent when the settings match)."""
    with connect(addr) as client:
        created = client.create_queue(name, **settings)
    if as_json:
        emit_json({"queue": name, "created": created})
    elif created:
        click.echo(f"created queue {name}")
    else:
        click.echo(f"queue {name} already exists with these settings")


@click.command("delete-queue")
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
        emit_json({"queue": name, "messages": dropped})
    else:
        click.echo(f"deleted queue {name} ({dropped} messages dropped)")


@click.command()
@click.argument("name")
@common_options
def stats(name: str, addr: str, as_json: bool) -> None:
    """Show the settings and counters of queue NAME."""
    with connect(addr) as client:
        s = client.queue_stats(name)
    values = asdict(s)
    if as_json:
        emit_json(values)
        return
    width = max(map(len, values))
    for field, value in values.items():
        click.echo(f"{field.ljust(width)}  {'-' if value is None else value}")


@click.command()
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
        emit_json(asdict(result))
        return
    click.echo(
        f"purged {result.total} messages from {queue} "
        f"(ready {result.ready}, delayed {result.delayed}, leased {result.leased})"
    )


#: The most messages one ``redrive`` request moves (SPEC §5.16).
REDRIVE_LIMIT = 1_000_000


@click.group()
def dlq() -> None:
    """Dead-letter queues: send their messages back (redrive)."""


@dlq.command("redrive")
@click.argument("queue", metavar="DLQ")
@click.argument("id_list", metavar="[ID]...", nargs=-1, type=int)
@click.option("--max", "-n", "max_", type=click.IntRange(1),
              help="Move at most this many, lowest ids first [no limit].")
@click.option("--ids", "only_ids", is_flag=True, help="Move only the ids given after DLQ (--ids ID...).")
@click.option("--batch", type=click.IntRange(1, REDRIVE_LIMIT), metavar="N",
              help=f"Move them N at a time, each batch all or none, with a progress bar on a terminal "
                   f"[{REDRIVE_LIMIT:,}, the most one request moves]. Not with --ids.")
@common_options
def redrive_cmd(
    queue: str, id_list: tuple[int, ...], max_: int | None, only_ids: bool, batch: int | None, addr: str,
    as_json: bool,
) -> None:
    """Move dead letters of DLQ back to the queues they came from.

    Each moved message is published again to its source queue as a new message (a new
    id there), ready at once with no attempts. Without --ids every message of DLQ is
    considered, in id order (with --max, at most that many move), in requests of --batch
    messages (each request all or none; the broker moves at most 1,000,000 per request,
    and brokerctl asks again until the rest is moved). With --ids, those move, all or
    none. Messages that are leased, were not dead-lettered into DLQ, or whose source queue
    no longer exists stay where they are and are counted as skipped.
    """
    if id_list and not only_ids:
        raise click.UsageError("give message ids after --ids, e.g. --ids 4 5 6")
    if only_ids and not id_list:
        raise click.UsageError("--ids needs at least one id")
    if only_ids and (max_ is not None or batch is not None):
        raise click.UsageError("--max and --batch cannot be used with --ids")
    with connect(addr) as client:
        if id_list:
            result = client.redrive(queue, ids=id_list)
        else:
            result = _redrive_in_batches(client, queue, max_, batch or REDRIVE_LIMIT)
    if as_json:
        emit_json({"queue": queue, "redriven": result.redriven, "queues": result.queues,
                    "skipped": result.skipped})
        return
    click.echo(f"redrove {plural(result.redriven, 'message')} from {queue}")
    for name, count in sorted(result.queues.items()):
        click.echo(f"  {count} to {name}")
    if result.skipped:
        why = "leased, not dead letters of it, source queue gone" + (", or not found" if id_list else "")
        click.echo(f"skipped {result.skipped} ({why})", err=True)


def _redrive_in_batches(client: SyncClient, queue: str, max_: int | None, batch: int) -> RedriveResult:
    """Redrive requests of at most ``batch`` messages until ``max_`` moved or one moves
    fewer than it asked for (then nothing movable is left); the sums, and the skipped
    count of the last request (which looked at every message left)."""
    stats = client.queue_stats(queue)
    expected = stats.ready + stats.delayed if max_ is None else min(max_, stats.ready + stats.delayed)
    moved: Counter[str] = Counter()
    redriven = skipped = 0
    with Progress(expected, "redriving", min_total=PROGRESS_MIN_MESSAGES) as progress:
        while max_ is None or redriven < max_:
            want = batch if max_ is None else min(batch, max_ - redriven)
            result = client.redrive(queue, max=want)
            redriven += result.redriven
            moved.update(result.queues)
            skipped = result.skipped
            progress.add(result.redriven)
            if result.redriven < want:
                break
    return RedriveResult(redriven, dict(moved), skipped)


#: The commands of this family, as `brokerctl` offers them.
COMMANDS: tuple[click.Command, ...] = (queues, create_queue, delete_queue, stats, purge, dlq)
