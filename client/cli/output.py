"""How brokerctl shows messages: deliveries, peeked messages, dead letters and message
statuses, as text lines and as JSON."""
from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

from client.cli.common import compact_json, error_text, time_text
from client.types import (
    DeadLetterInfo,
    Delivery,
    MessageStatus,
    PeekedMessage,
)


def bytes_json(value: bytes | None) -> tuple[str | None, str | None]:
    """``(text, "utf-8")`` when ``value`` decodes, else ``(base64, "base64")``."""
    if value is None:
        return None, None
    try:
        return value.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), "base64"


def bytes_text(value: bytes) -> str:
    """``value`` as text when it is UTF-8, else as ``hex:...``."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "hex:" + value.hex()


def delivery_json(d: Delivery) -> dict[str, Any]:
    """A delivery as JSON; one from a consumer group also has ``shard``, ``offset`` and
    ``headers``."""
    body, body_encoding = bytes_json(d.body)
    key, key_encoding = bytes_json(d.key)
    out: dict[str, Any] = {
        "id": d.id, "attempt": d.attempt, "priority": d.priority, "published_at": d.published_at,
        "key": key, "key_encoding": key_encoding, "body": body, "body_encoding": body_encoding,
    }
    if d.shard is not None:
        out |= {"shard": d.shard, "offset": d.offset, "headers": d.headers}
    return out


def delivery_text(d: Delivery) -> str:
    """``ID<TAB>attempt=N priority=P [key=K] [shard=S offset=O [headers={...}]]<TAB>BODY``
    (shard, offset and headers for a delivery from a consumer group)."""
    extra = "" if d.key is None else f" key={bytes_text(d.key)}"
    if d.shard is not None:
        extra += f" shard={d.shard} offset={d.offset}"
        if d.headers:
            extra += f" headers={compact_json(d.headers)}"
    return f"{d.id}\tattempt={d.attempt} priority={d.priority}{extra}\t{bytes_text(d.body)}"


def peeked_json(m: PeekedMessage) -> dict[str, Any]:
    """A peeked message as JSON (bodies and keys as by :func:`bytes_json`)."""
    body, body_encoding = bytes_json(m.body)
    key, key_encoding = bytes_json(m.key)
    return {
        "id": m.id, "state": m.state, "attempts": m.attempts, "priority": m.priority, "until_ms": m.until_ms,
        "key": key, "key_encoding": key_encoding, "body": body, "body_encoding": body_encoding,
        "dead_letter": None if m.dead_letter is None else asdict(m.dead_letter),
        "published_at": m.published_at,
    }


def dead_letter_text(d: DeadLetterInfo) -> str:
    """Where a dead letter came from and why: ``source=QUEUE#ID source_attempts=N reason=R
    dead_lettered_at=TIME [error="..."]`` (``#`` is not a queue name character)."""
    text = (
        f"source={d.queue}#{d.id} source_attempts={d.attempts} reason={d.reason}"
        f" dead_lettered_at={time_text(d.at_ms)}"
    )
    return text if d.error is None else f"{text} error={error_text(d.error)}"


def status_text(s: MessageStatus) -> str:
    """One line of ``brokerctl status``: ``ID<TAB>STATE<TAB>details``."""
    details = []
    if s.state == "dead_lettered":
        details.append(f"queue={s.queue} id={s.dead_letter_id}")
    if s.state in ("ready", "leased", "delayed", "dead_lettered"):
        details.append(f"attempts={s.attempts}")
    if s.until_ms:
        details.append(f"until={time_text(s.until_ms)}")
    if s.expires_at_ms:
        details.append(f"expires={time_text(s.expires_at_ms)}")
    if s.published_at:
        details.append(f"published={time_text(s.published_at)}")
    if s.reason is not None:
        details.append(f"reason={s.reason}")
    if s.dead_lettered_at_ms is not None:
        details.append(f"dead_lettered_at={time_text(s.dead_lettered_at_ms)}")
    if s.error is not None:
        details.append(f"error={error_text(s.error)}")
    return f"{s.id}\t{s.state}" + (f"\t{' '.join(details)}" if details else "")
