"""brokerctl txn: the steps of a JSON file as one transaction (SPEC §5.28)."""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import fields
from typing import Any

import click

from client.cli.common import (
    common_options,
    compact_json,
    connect,
    emit_json,
    exit_status,
    fail,
    ids_text,
    plural,
    spans,
)
from client.errors import ConnectionClosed, LockgateError
from client.types import (
    Message,
    TopicMessage,
    ack_result,
    message_entries,
    publish_result,
    topic_entries,
)
from protocol import ErrorCode


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
dedup_id, deliver_at, after; topic_publish: key, headers, dedup_id); key and dedup_id are written
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
    raise TxnFileError(f'{where}: expected a string or {{"base64": "..."}}, got {compact_json(value)}')


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
            raise TxnFileError(f'{where}.after: expected [[queue, id], ...], got {compact_json(after)}')
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
            raise TxnFileError(f"step {i}: expected an object with \"op\", got {compact_json(step)}")
        op = step.get("op")
        if op not in TXN_OPS:
            raise TxnFileError(f"step {i}: \"op\" must be one of {', '.join(TXN_OPS)}, got {compact_json(op)}")
        wire = dict(step)
        if op != "ack" and "messages" in step:
            messages = step["messages"]
            where = f"step {i} ({op}): messages"
            if not isinstance(messages, list):
                raise TxnFileError(f"{where}: expected an array, got {compact_json(messages)}")
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
        message += f" (ids {ids_text(exc.details['ids'])})"
    return f"{exc.code_name}: {message}"


def _txn_result_text(i: int, step: dict[str, Any], result: dict[str, Any]) -> str:
    op = step["op"]
    head = f"step {i} {op} {step.get('topic' if op == 'topic_publish' else 'queue')}"
    if op == "ack":
        ack = ack_result(result)
        text = f"{head}: acked {ack.acked}"
        return text + (f"; not held: {ids_text(ack.missing)}" if ack.missing else "")
    published = publish_result(result)
    text = f"{head}: ids {spans([published])}" if published.count else f"{head}: nothing stored"
    if published.duplicates:
        text += f"; {plural(len(published.duplicates), 'duplicate')} of " \
                f"{ids_text(sorted({mid for _, mid in published.duplicates}))}"
    return text


@click.command("txn", epilog=TXN_FILE_HELP)
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
            fail(exit_status(exc), _txn_error(exc, steps))
    if as_json:
        emit_json({"results": [
            {"step": i, "op": step["op"],
             **({"topic": step.get("topic")} if step["op"] == "topic_publish" else {"queue": step.get("queue")}),
             **result}
            for i, (step, result) in enumerate(zip(steps, results))
        ]})
        return
    for i, (step, result) in enumerate(zip(steps, results)):
        click.echo(_txn_result_text(i, step, result))
    click.echo(f"committed {plural(len(steps), 'step')}", err=True)


#: The commands of this family, as `brokerctl` offers them.
COMMANDS: tuple[click.Command, ...] = (txn_cmd,)
