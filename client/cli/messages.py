"""brokerctl's message commands: publish, consume, subscribe, ack, nack, extend, reject,
peek and status."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from functools import partial
from typing import Any, BinaryIO

import click

from client.cli.common import (
    PROGRESS_MIN_MESSAGES,
    Progress,
    EXIT_ERROR,
    common_options,
    connect,
    emit_json,
    file_lines,
    fail,
    ids_text,
    plural,
    read_stdin,
    spans,
    stream_size,
    time_text,
)
from client.cli.output import (
    bytes_text,
    dead_letter_text,
    delivery_json,
    delivery_text,
    peeked_json,
    status_text,
)
from client.sync_subscription import SyncIncomingMessage
from client.sync import SyncClient
from client.types import Delivery, Message
from protocol import DEFAULT_CREDIT, MAX_TTL_MS


#: Where ``consume --follow`` long-polls: each request waits at most this long for messages.
FOLLOW_WAIT_MS = 10_000


def _copies(message: Message, count: int, progress: Progress) -> Iterator[Message]:
    """``count`` times ``message``; ``progress`` advances by one each."""
    for _ in range(count):
        progress.add(1)
        yield message


@click.command()
@click.argument("queue")
@click.argument("body", required=False)
@click.option("--file", "-f", "file", type=click.File("rb"), metavar="FILE",
              help="Publish each line of FILE as one message, in order and in batches ('-': stdin lines); "
                   "empty lines are skipped. Instead of BODY.")
@click.option("--key", help="Routing key (text); picks the shard, keeping order per key.")
@click.option("--priority", type=click.IntRange(0, 255), help="0..255, higher first (priority queues).")
@click.option("--delay-ms", type=click.IntRange(0), help="Keep the message invisible this long.")
@click.option("--ttl-ms", type=click.IntRange(1, MAX_TTL_MS),
              help="Remove the message this long after publishing if it is still there [queue's ttl_ms].")
@click.option("--dedup-id", help="Idempotency key (text, 1..128 bytes of UTF-8): not stored again if a message "
              "with it was published within the queue's dedup window. Not with --file.")
@click.option(
    "--count", "-n", type=click.IntRange(1), default=1, show_default=True,
    help="Publish this many copies (sent in batches). Not with --file.",
)
@click.option("--batch", type=click.IntRange(1), metavar="N",
              help="With --file or --count: at most N messages per batch [the broker's max_batch].")
@common_options
def publish(
    queue: str, body: str | None, file: BinaryIO | None, key: str | None, priority: int | None,
    delay_ms: int | None, ttl_ms: int | None, dedup_id: str | None, count: int, batch: int | None, addr: str,
    as_json: bool,
) -> None:
    """Publish BODY to QUEUE, or each line of --file.

    BODY is text, sent as UTF-8; "-" reads one body as raw bytes from stdin. With
    --file, each line is a message (raw bytes, without its line end); lines are sent in
    order in batches, each batch atomic, and a progress bar shows on a terminal for a
    file of 1 MiB or more (with --count, for 10,000 copies or more). With --dedup-id, a message whose dedup id was already
    published is reported as a duplicate of the message published first (nothing is
    stored).
    """
    if (body is None) == (file is None):
        raise click.UsageError("give BODY or --file FILE (one of them)")
    if file is not None and (count != 1 or dedup_id is not None):
        raise click.UsageError("--count and --dedup-id cannot be used with --file")
    with connect(addr) as client:
        if file is not None:
            with Progress(stream_size(file), "publishing") as progress:
                results = client.publish_many(
                    queue, (Message(line, key, priority, delay_ms, ttl_ms) for line in file_lines(file, progress)),
                    batch_size=batch)
        else:
            data = read_stdin() if body == "-" else (body or "").encode()
            message = Message(data, key, priority, delay_ms, ttl_ms, dedup_id)
            if count == 1:
                results = [client.publish_batch(queue, [message])]
            else:
                with Progress(count, "publishing", min_total=PROGRESS_MIN_MESSAGES) as progress:
                    results = client.publish_many(queue, _copies(message, count, progress), batch_size=batch)
    stored = sum(r.count for r in results)
    sent = stored + sum(len(r.duplicates) for r in results)
    duplicates = [mid for r in results for _, mid in r.duplicates]
    if as_json:
        emit_json({
            "queue": queue, "count": sent,
            "batches": [{"first_id": r.first_id, "count": r.count,
                         **({"duplicates": [list(d) for d in r.duplicates]} if r.duplicates else {})}
                        for r in results],
        })
    elif file is None and count == 1 and duplicates:
        click.echo(f"duplicate in {queue}: nothing stored; the message published first is id {duplicates[0]}")
    elif file is None and count == 1:
        click.echo(f"published 1 message to {queue}: id {results[0].first_id}")
    else:
        text = f"published {plural(stored, 'message')} to {queue}" + (f": ids {spans(results)}" if stored else "")
        if duplicates:
            text += f"; {len(duplicates)} duplicates of id{'s' if len(set(duplicates)) > 1 else ''} " \
                    f"{', '.join(map(str, sorted(set(duplicates))))}"
        click.echo(text)


@click.command()
@click.argument("queue")
@click.option("--max", "-n", "max_", type=click.IntRange(1), default=1, show_default=True,
              help="Most messages to take per request.")
@click.option("--ack/--no-ack", default=None,
              help="Acknowledge (delete) the messages once printed [--no-ack; with --follow: --ack].")
@click.option("--follow", "-F", is_flag=True,
              help="Keep consuming, printing messages as they arrive, until Ctrl-C (or --count).")
@click.option("--count", type=click.IntRange(1), metavar="N", help="With --follow: stop after N messages.")
@click.option("--visibility-ms", type=click.IntRange(1), help="Lease length [the queue's].")
@click.option("--wait-ms", type=click.IntRange(0), default=None,
              help=f"Wait this long for messages when none are ready [0; with --follow: {FOLLOW_WAIT_MS} "
                   "per request, again and again].")
@partial(common_options, json_help="Print one JSON document instead of text (with --follow: one JSON object "
                                   "per message and line).")
def consume(
    queue: str, max_: int, ack: bool | None, follow: bool, count: int | None, visibility_ms: int | None,
    wait_ms: int | None, addr: str, as_json: bool,
) -> None:
    """Lease messages from QUEUE and print them.

    Each line shows id, attempt, priority, key and body; a consumer group's messages
    (QUEUE is TOPIC/GROUP) also show their shard, offset and headers.
    Bodies print as text when they are UTF-8, else as hex (text) or base64 (JSON).
    Without --ack the messages stay leased until their lease expires or they are
    acked or nacked by id.

    With --follow it keeps going: each request waits up to --wait-ms for messages, and
    each batch is acked once printed (unless --no-ack). On Ctrl-C the messages of the
    batch not yet printed are given back (nacked), the printed ones acked, and it exits 0.
    """
    if count is not None and not follow:
        raise click.UsageError("--count goes with --follow (use --max for one request)")
    with connect(addr) as client:
        if follow:
            _follow(client, queue, max_, ack is not False, count, visibility_ms,
                    FOLLOW_WAIT_MS if wait_ms is None else wait_ms, as_json)
            return
        deliveries = client.consume(queue, max_, visibility_ms=visibility_ms, wait_ms=wait_ms or 0)
        acked = client.ack(queue, [d.id for d in deliveries]).acked if ack and deliveries else 0
    if as_json:
        out: dict[str, Any] = {"queue": queue, "messages": [delivery_json(d) for d in deliveries]}
        if ack:
            out["acked"] = acked
        emit_json(out)
        return
    if not deliveries:
        click.echo("no messages", err=True)
    for d in deliveries:
        click.echo(delivery_text(d))
    if ack and deliveries:
        click.echo(f"acked {acked} of {len(deliveries)}", err=True)


def _print_delivery(queue: str, d: Delivery, as_json: bool) -> None:
    """One line per message: consume's text line, or a compact JSON object."""
    click.echo(json.dumps({"queue": queue, **delivery_json(d)}) if as_json else delivery_text(d))


def _follow(client: SyncClient, queue: str, max_: int, ack: bool, count: int | None, visibility_ms: int | None,
            wait_ms: int, as_json: bool) -> None:
    """``consume --follow``: lease, print and (with ``ack``) ack batch after batch until
    ``count`` messages or Ctrl-C; a batch cut short by Ctrl-C gives back what it did not
    print."""
    printed = acked = 0
    try:
        while count is None or printed < count:
            want = max_ if count is None else min(max_, count - printed)
            deliveries = client.consume(queue, want, visibility_ms=visibility_ms, wait_ms=wait_ms)
            shown: list[int] = []
            try:
                for d in deliveries:
                    _print_delivery(queue, d, as_json)
                    shown.append(d.id)
            finally:
                printed += len(shown)
                rest = [d.id for d in deliveries[len(shown):]]
                if rest:
                    client.nack(queue, rest, returned=True)
                if ack and shown:
                    acked += client.ack(queue, shown).acked
    except KeyboardInterrupt:
        pass
    click.echo(f"received {plural(printed, 'message')}" + (f", acked {acked}" if ack else ""), err=True)


def _print_pushed(msg: SyncIncomingMessage, as_json: bool) -> None:
    """One line per message: consume's text line, or a compact JSON object."""
    d = msg.delivery
    if as_json:
        click.echo(json.dumps({"queue": msg.queue, **delivery_json(d)}))
        return
    click.echo(delivery_text(d))


@click.command("subscribe")
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
            fail(EXIT_ERROR, f"the broker ended the subscription: {sub.end_reason}")
    summary = f"received {plural(printed, 'message')}"
    click.echo(summary + (f", acked {acked}" if mode == "ack" else ""), err=True)


@click.command("ack")
@click.argument("queue")
@click.argument("ids", nargs=-1, type=int, required=True)
@common_options
def ack_cmd(queue: str, ids: tuple[int, ...], addr: str, as_json: bool) -> None:
    """Acknowledge (delete) messages of QUEUE by id."""
    with connect(addr) as client:
        result = client.ack(queue, ids)
    if as_json:
        emit_json({"queue": queue, "acked": result.acked, "missing": list(result.missing)})
        return
    click.echo(f"acked {result.acked} of {len(ids)}")
    if result.missing:
        click.echo(f"not found: {ids_text(result.missing)}", err=True)


@click.command("nack")
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
        emit_json({"queue": queue, "released": result.released, "missing": list(result.missing)})
        return
    click.echo(f"released {result.released} of {len(ids)}")
    if result.missing:
        click.echo(f"not found or not leased: {ids_text(result.missing)}", err=True)


@click.command("extend")
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
        emit_json({"queue": queue, "extended": result.extended, "missing": list(result.missing)})
        return
    click.echo(f"extended {result.extended} of {len(ids)}")
    if result.missing:
        click.echo(f"not found or not leased: {ids_text(result.missing)}", err=True)


@click.command("reject")
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
        emit_json({"queue": queue, "rejected": result.rejected, "missing": list(result.missing)})
        return
    click.echo(f"rejected {result.rejected} of {len(ids)}")
    if result.missing:
        click.echo(f"not found or not leased: {ids_text(result.missing)}", err=True)


@click.command()
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
        emit_json({"queue": result.queue, "messages": [peeked_json(m) for m in result]})
        return
    if dead_letter:
        click.echo(f"dead-letter queue {result.queue}", err=True)
    if not result.messages:
        click.echo("no messages", err=True)
    for m in result:
        key = "" if m.key is None else f" key={bytes_text(m.key)}"
        until = f" until={time_text(m.until_ms)}" if m.until_ms else ""
        until += f" published={time_text(m.published_at)}" if m.published_at else ""
        dead = "" if m.dead_letter is None else f" {dead_letter_text(m.dead_letter)}"
        click.echo(
            f"{m.id}\t{m.state} attempts={m.attempts} priority={m.priority}{key}{until}{dead}"
            f"\t{bytes_text(m.body)}"
        )


@click.command()
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
        emit_json({"queue": queue, "statuses": [asdict(s) for s in statuses]})
        return
    for s in statuses:
        click.echo(status_text(s))


#: The commands of this family, as `brokerctl` offers them.
COMMANDS: tuple[click.Command, ...] = (
    publish, consume, subscribe_cmd, ack_cmd, nack_cmd, extend_cmd, reject_cmd, peek, status,
)
