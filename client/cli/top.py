"""brokerctl top: a live view of a broker's queues and consumer groups.

Every ``--interval`` seconds it samples the broker (``broker_info`` for its clock and
connections, ``queue_list`` for every queue, ``topic_list`` and ``group_stats`` for every
consumer group) and shows one row per queue and group. Rates are the differences of the
lifetime counters between the last two samples, so the first frame has none. The view
is a ``rich`` table redrawn in place; keys change the sort column and ``q`` quits.

The pieces: :func:`take_sample` (one round of requests), :func:`make_rows` (a row per
queue and group from two samples), :func:`render` (the frame), and :func:`run_live`
(the loop, with :class:`Keys` reading single key presses from a terminal).
"""
from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import click
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from client.cli.common import common_options, connect, emit_json, plural
from client.errors import LockgateError
from client.sync import SyncClient
from client.types import BrokerInfo, GroupStats, QueueStats

#: Width of a frame printed where stdout is not a terminal (``--once`` into a pipe).
PIPE_WIDTH = 160


@dataclass(frozen=True, slots=True)
class Sample:
    """One round of stats: the broker's info, every queue's and every group's stats, and
    the client's monotonic time when it was taken."""

    at: float
    info: BrokerInfo
    queues: tuple[QueueStats, ...]
    groups: tuple[GroupStats, ...]


def take_sample(client: SyncClient) -> Sample:
    """Ask the broker for a sample (groups this client may not read are left out)."""
    info = client.broker_info()
    queues = tuple(client.list_queues())
    groups: list[GroupStats] = []
    if info.groups:
        for topic in client.list_topics():
            for group in topic.groups:
                try:
                    groups.append(client.group_stats(topic.name, group))
                except LockgateError:  # deleted meanwhile, or not ours to read
                    continue
    return Sample(time.monotonic(), info, queues, tuple(groups))


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the view: a queue or a consumer group (``TOPIC/GROUP``)."""

    name: str
    #: ``"queue"`` or ``"group"``.
    kind: str
    depth: int
    ready: int
    leased: int
    delayed: int
    #: Messages in its dead-letter queue now (``None``: it has none).
    dead: int | None
    #: Messages published (moved in, for a group) and delivered per second between the
    #: last two samples (``None`` on the first).
    publish_rate: float | None
    deliver_rate: float | None
    #: Seconds the oldest ready message has waited, by the broker's clock (``None``:
    #: nothing is ready).
    oldest_age_s: float | None


def _rate(now: int, before: int | None, seconds: float) -> float | None:
    if before is None or seconds <= 0 or now < before:  # no earlier sample, or the queue was made anew
        return None
    return (now - before) / seconds


def make_rows(sample: Sample, previous: Sample | None = None) -> list[Row]:
    """A row per queue and per group of ``sample``, with rates against ``previous``."""
    seconds = 0.0 if previous is None else sample.at - previous.at
    before: dict[str, QueueStats] = {}
    if previous is not None:
        before = {q.name: q for q in previous.queues} | {g.delivery.name: g.delivery for g in previous.groups}
    depth = {q.name: q.messages for q in sample.queues}
    now_ms = sample.info.now_ms
    rows: list[Row] = []
    for kind, stats in [*(("queue", q) for q in sample.queues), *(("group", g.delivery) for g in sample.groups)]:
        old = before.get(stats.name)
        rows.append(Row(
            name=stats.name, kind=kind, depth=stats.messages, ready=stats.ready, leased=stats.leased,
            delayed=stats.delayed,
            dead=None if stats.dead_letter is None else depth.get(stats.dead_letter),
            publish_rate=_rate(stats.published, None if old is None else old.published, seconds),
            deliver_rate=_rate(stats.delivered, None if old is None else old.delivered, seconds),
            oldest_age_s=max(0.0, (now_ms - stats.oldest_ready_at) / 1000) if stats.oldest_ready_at else None,
        ))
    return rows


@dataclass(frozen=True, slots=True)
class Column:
    """A column: its header, the key that sorts by it, and how a row shows in it."""

    name: str
    header: str
    key: str
    value: Callable[[Row], float | str | None]
    text: Callable[[Row], str]


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _per_s(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.1f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


COLUMNS: tuple[Column, ...] = (
    Column("name", "NAME", "n", lambda r: r.name, lambda r: r.name if r.kind == "queue" else f"{r.name} (group)"),
    Column("depth", "DEPTH", "d", lambda r: r.depth, lambda r: _count(r.depth)),
    Column("ready", "READY", "r", lambda r: r.ready, lambda r: _count(r.ready)),
    Column("leased", "LEASED", "l", lambda r: r.leased, lambda r: _count(r.leased)),
    Column("delayed", "DELAYED", "y", lambda r: r.delayed, lambda r: _count(r.delayed)),
    Column("dead", "DEAD", "x", lambda r: r.dead, lambda r: _count(r.dead)),
    Column("publish", "PUB/S", "p", lambda r: r.publish_rate, lambda r: _per_s(r.publish_rate)),
    Column("deliver", "DEL/S", "v", lambda r: r.deliver_rate, lambda r: _per_s(r.deliver_rate)),
    Column("age", "OLDEST", "a", lambda r: r.oldest_age_s, lambda r: _age(r.oldest_age_s)),
)
BY_NAME = {c.name: c for c in COLUMNS}
BY_KEY = {c.key: c for c in COLUMNS}


@dataclass(frozen=True, slots=True)
class Sort:
    """The sort column and direction (numbers largest first unless reversed; names A-Z)."""

    column: str = "depth"
    reverse: bool = False

    def pressed(self, key: str) -> Sort:
        """The sort after ``key``: a column's key sorts by it (again: the other way)."""
        column = BY_KEY.get(key)
        if column is None:
            return self
        if column.name == self.column:
            return Sort(self.column, not self.reverse)
        return Sort(column.name)

    def apply(self, rows: list[Row]) -> list[Row]:
        column = BY_NAME[self.column]
        by_name = sorted(rows, key=lambda r: r.name)
        if column.name == "name":
            return by_name[::-1] if self.reverse else by_name
        present = [r for r in by_name if column.value(r) is not None]
        absent = [r for r in by_name if column.value(r) is None]  # "-" rows go last either way
        present.sort(key=lambda r: column.value(r), reverse=not self.reverse)  # type: ignore[arg-type, return-value]
        return present + absent


def render(sample: Sample, rows: list[Row], sort: Sort, addr: str, *, keys: bool = True) -> Group:
    """The frame: a summary line, the table, and (live) the keys."""
    info = sample.info
    up = _age(info.uptime_ms / 1000)
    summary = Text.assemble(
        (f"lockgate {info.server}", "bold"), f" at {addr}, node {info.node}, up {up}; ",
        f"{plural(info.connections, 'connection')}, {plural(info.queues, 'queue')}, "
        f"{plural(info.topics, 'topic')}, {plural(info.groups, 'group')}; "
        f"WAL {info.wal_bytes / 2**20:,.1f} MiB in {plural(info.wal_segments, 'segment')}",
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in COLUMNS:
        marker = ""
        if column.name == sort.column:  # the arrow points the way values go down the table
            largest_first = (column.name != "name") != sort.reverse
            marker = "↓" if largest_first else "↑"
        table.add_column(column.header + marker, justify="left" if column.name == "name" else "right",
                         no_wrap=True, overflow="ellipsis" if column.name == "name" else "fold")
    for row in sort.apply(rows):
        table.add_row(*(column.text(row) for column in COLUMNS))
    parts: list[Text | Table] = [summary, table]
    if not rows:
        parts.append(Text("no queues"))
    if keys:
        hint = "  ".join(f"{c.key} {c.header.lower()}" for c in COLUMNS)
        parts.append(Text(f"sort: {hint} (again: reverse)   q quit", style="dim"))
    return Group(*parts)


class Keys:
    """Single key presses from a terminal on stdin (nothing when stdin is not one)."""

    def __init__(self) -> None:
        self.fd: int | None = sys.stdin.fileno() if sys.stdin.isatty() else None

    @contextmanager
    def raw(self) -> Iterator[Keys]:
        """Put the terminal in cbreak mode (keys arrive at once, unechoed) meanwhile."""
        if self.fd is None:
            yield self
            return
        import termios  # POSIX only: imported where a terminal is driven
        import tty

        saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        try:
            yield self
        finally:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def read(self, timeout: float) -> str | None:
        """The next key, waiting at most ``timeout`` seconds; None when none came."""
        if self.fd is None:
            time.sleep(max(0.0, timeout))
            return None
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return None
        return os.read(self.fd, 1).decode(errors="replace")


def run_live(client: SyncClient, addr: str, interval: float, sort: Sort, console: Console) -> None:
    """Sample every ``interval`` seconds and redraw until ``q`` (or Ctrl-C)."""
    keys = Keys()
    previous: Sample | None = None
    with keys.raw(), Live(console=console, screen=True, auto_refresh=False) as live:
        while True:
            sample = take_sample(client)
            rows = make_rows(sample, previous)
            live.update(render(sample, rows, sort, addr), refresh=True)
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                key = keys.read(left)
                if key is None:
                    break
                if key in ("q", "Q"):
                    return
                changed = sort.pressed(key)
                if changed != sort:
                    sort = changed
                    live.update(render(sample, rows, sort, addr), refresh=True)
            previous = sample


@click.command()
@click.option("--interval", "-i", type=click.FloatRange(0.2, 3600), default=2.0, show_default=True,
              help="Seconds between samples.")
@click.option("--sort", "sort_by", type=click.Choice([c.name for c in COLUMNS]), default="depth", show_default=True,
              help="The column to sort by (numbers largest first, names A-Z).")
@click.option("--reverse", is_flag=True, help="Sort the other way.")
@click.option("--once", is_flag=True,
              help="Print one frame and exit, for scripts (no rates: they need two samples).")
@lambda f: common_options(f, json_help="Print one sample's rows and the broker's info as JSON, then exit.")
def top(interval: float, sort_by: str, reverse: bool, once: bool, addr: str, as_json: bool) -> None:
    """A live view of the broker's queues and consumer groups.

    One row per queue and per consumer group (TOPIC/GROUP): DEPTH (messages in every
    state) = READY + LEASED + DELAYED (+ waiting on dependencies); DEAD, the messages in
    its dead-letter queue ("-": it has none); PUB/S and DEL/S, messages published (moved
    in, for a group) and delivered per second since the last sample (every delivery
    attempt counts); OLDEST, how long the oldest message at the head of the ready
    messages has waited, by the broker's clock ("-": none is ready). The line above the
    table has the broker's version, uptime and connections.

    Keys: n d r l y x p v a sort by NAME, DEPTH, READY, LEASED, DELAYED, DEAD, PUB/S,
    DEL/S, OLDEST (the same key again: the other way); q quits.

    --once prints one frame (--json: the rows as JSON) and exits.
    """
    sort = Sort(sort_by, reverse)
    with connect(addr) as client:
        if once or as_json:
            sample = take_sample(client)
            rows = sort.apply(make_rows(sample))
            if as_json:
                emit_json({"broker": asdict(sample.info), "rows": [asdict(r) for r in rows]})
                return
            console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH, highlight=False,
                              no_color=not sys.stdout.isatty())
            console.print(render(sample, rows, sort, addr, keys=False))
            return
        run_live(client, addr, interval, sort, Console(highlight=False))


#: The commands of this family, as `brokerctl` offers them.
COMMANDS: tuple[click.Command, ...] = (top,)
