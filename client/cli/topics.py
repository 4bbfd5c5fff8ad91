"""brokerctl's topic and consumer group commands (SPEC §8.13): ``brokerctl topic ...`` and
``brokerctl group ...``."""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from typing import Any, BinaryIO

import click

from client.cli.common import (
    Progress,
    SETTING_OPTIONS,
    common_options,
    connect,
    emit_json,
    fail_with,
    file_lines,
    plural,
    print_fields,
    print_table,
    read_stdin,
    setting_options,
    spans,
    stream_size,
    value_text,
)
from client.errors import LockgateError, QueueNotFound
from client.ops import OPS, QUEUE_SETTINGS, Param
from client.types import (
    GroupStats,
    PublishResult,
    TopicMessage,
    TopicStats,
    group_queue,
)
from protocol import MAX_DEDUP_WINDOW_MS, MAX_SHARDS, MIN_SHARDS, Retention


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
    "dedup_window_ms": {"type": click.IntRange(0, MAX_DEDUP_WINDOW_MS),
                        "help": "How long a dedup id published to the topic is remembered (publish "
                                "--dedup-id); 0 = no dedup [server default: 300000]."},
}
_QUEUE_SETTINGS_BY_NAME = {p.name: p for p in QUEUE_SETTINGS}
#: The delivery settings of ``create_group``: those it shares with ``create_queue``, with
#: the queue setting's help where the group's declaration has none.
GROUP_SETTINGS: tuple[Param, ...] = tuple(
    replace(p, doc=p.doc or _QUEUE_SETTINGS_BY_NAME[p.name].doc)
    for p in OPS["create_group"].params if p.name in _QUEUE_SETTINGS_BY_NAME
)
_GROUP_OPTIONS = SETTING_OPTIONS | {
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


@click.group()
def topic() -> None:
    """Topics: each message stored once, read by every consumer group.

    A topic keeps each message in the shard its key picks, at that shard's next offset,
    until its groups are done with it (retention interest), until its age, byte or
    message limit lets go of it (limits), or the first of the two (both). A message
    published with a dedup id is stored once within the topic's dedup window. Groups:
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
        emit_json({"topic": name, "created": created})
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
        emit_json([asdict(t) for t in stats])
        return
    if not stats:
        click.echo("no topics")
        return
    rows = [[_topic_cell(t, c) for c in _TOPIC_COLUMNS] for t in stats]
    print_table(_TOPIC_COLUMNS, rows, left={"name", "retention", "groups", "limits"})


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
        emit_json(asdict(stats))
    else:
        print_fields(asdict(stats))


def _topic_batches(messages: Iterable[TopicMessage], max_batch: int, max_frame: int) -> Iterator[list[TopicMessage]]:
    """``messages`` in batches of at most ``max_batch`` that fit a frame of ``max_frame``."""
    budget = max_frame - 1024
    batch: list[TopicMessage] = []
    size = 0
    for m in messages:
        key = m.key.encode() if isinstance(m.key, str) else m.key or b""
        n = len(m.body) * (4 if isinstance(m.body, str) else 1) + len(key) + 32 + sum(
            10 + len(k.encode()) + len(v.encode()) for k, v in (m.headers or {}).items())
        if batch and (len(batch) >= max_batch or size + n > budget):
            yield batch
            batch, size = [], 0
        batch.append(m)
        size += n
    if batch:
        yield batch


@topic.command("publish")
@click.argument("name", metavar="TOPIC")
@click.argument("body", required=False)
@click.option("--file", "-f", "file", type=click.File("rb"), metavar="FILE",
              help="Publish each line of FILE as one message, in order and in batches ('-': stdin lines); "
                   "empty lines are skipped. Instead of BODY.")
@click.option("--key", help="Routing key (text); picks the shard, keeping order per key.")
@click.option("--header", "headers", multiple=True, metavar="KEY=VALUE", callback=_pairs,
              help="A header (repeatable; at most 32 and 4096 bytes in all); groups may filter on them.")
@click.option("--dedup-id", help="Idempotency key (text, 1..128 bytes of UTF-8): not stored again if a message "
              "with it was published to the topic within its dedup window. Not with --file or --count.")
@click.option("--count", "-n", type=click.IntRange(1), default=1, show_default=True,
              help="Publish this many copies (sent in batches, each atomic). Not with --file.")
@common_options
def topic_publish(
    name: str, body: str | None, file: BinaryIO | None, key: str | None, headers: dict[str, str] | None,
    dedup_id: str | None, count: int, addr: str, as_json: bool,
) -> None:
    """Publish BODY to TOPIC, once for all its groups, or each line of --file.

    BODY is text, sent as UTF-8; "-" reads the body as raw bytes from stdin. With
    --file, each line is a message (raw bytes, without its line end), sent in order in
    batches, each atomic; a progress bar shows on a terminal for a file of 1 MiB or more.
    With --dedup-id, a message whose dedup id was already published to the topic within
    its dedup window is reported as a duplicate of the message published first (nothing
    is stored).
    """
    if (body is None) == (file is None):
        raise click.UsageError("give BODY or --file FILE (one of them)")
    if file is not None and count != 1:
        raise click.UsageError("--count cannot be used with --file")
    if dedup_id is not None and (file is not None or count != 1):
        raise click.UsageError("--dedup-id cannot be used with --file or --count")
    results: list[PublishResult] = []
    with connect(addr) as client:
        info = client.server_info
        if file is not None:
            with Progress(stream_size(file), "publishing") as progress:
                messages: Iterable[TopicMessage] = (
                    TopicMessage(line, key, headers) for line in file_lines(file, progress))
                for batch in _topic_batches(messages, info.max_batch, info.max_frame):
                    results.append(client.publish_topic(name, batch))
        else:
            message = TopicMessage(read_stdin() if body == "-" else (body or "").encode(), key, headers, dedup_id)
            for batch in _topic_batches(itertools.repeat(message, count), info.max_batch, info.max_frame):
                results.append(client.publish_topic(name, batch))
    sent = sum(r.count for r in results)
    duplicates = [mid for r in results for _, mid in r.duplicates]
    if as_json:
        emit_json({"topic": name, "count": sent + len(duplicates),
                    "batches": [{"first_id": r.first_id, "count": r.count,
                                 **({"duplicates": [list(d) for d in r.duplicates]} if r.duplicates else {})}
                                for r in results]})
    elif duplicates:
        click.echo(f"duplicate in topic {name}: nothing stored; the message published first is id {duplicates[0]}")
    elif file is None and count == 1:
        click.echo(f"published 1 message to topic {name}: id {results[0].first_id}")
    else:
        click.echo(f"published {plural(sent, 'message')} to topic {name}" + (f": ids {spans(results)}" if sent else ""))


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
        emit_json({"topic": name, "messages": dropped})
    else:
        click.echo(f"deleted topic {name} ({dropped} messages dropped)")


@click.group()
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
        emit_json({"topic": topic_name, "group": name, "queue": queue, "created": created})
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
            fail_with(reply)
        stats.append(spec.parse(reply))
    if as_json:
        emit_json([_group_json(g) for g in stats])
        return
    if not stats:
        click.echo(f"no groups of topic {topic_name}")
        return
    rows = [[value_text(_group_json(g)[c]) for c in _GROUP_COLUMNS] for g in stats]
    print_table(_GROUP_COLUMNS, rows, left={"group", "cursors"})


@group.command("stats")
@click.argument("topic_name", metavar="TOPIC")
@click.argument("name", metavar="GROUP")
@common_options
def group_stats_cmd(topic_name: str, name: str, addr: str, as_json: bool) -> None:
    """Show where GROUP of TOPIC stands and its delivery queue's settings and counters."""
    with connect(addr) as client:
        stats = _group_json(client.group_stats(topic_name, name))
    if as_json:
        emit_json(stats)
    else:
        print_fields(stats)


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
        emit_json({"topic": topic_name, "group": name, "cursors": cursors})
    else:
        click.echo(f"moved group {name} of topic {topic_name}: cursors {value_text(cursors)}")


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
        emit_json({"topic": topic_name, "group": name, "messages": dropped})
    else:
        click.echo(f"deleted group {name} of topic {topic_name} ({dropped} messages dropped)")


#: The commands of this family, as `brokerctl` offers them.
COMMANDS: tuple[click.Command, ...] = (topic, group)
