"""What both clients' subscriptions share: routing PUSH frames, and pushed messages.

No I/O and no trio here: :mod:`client.subscription` (async) and
:mod:`client.sync_subscription` (blocking) build on it.

- :class:`PushRouter` sends each ``deliver`` and ``subscription_end`` push (SPEC.md §3.2)
  to the subscription whose id it names; every other push, and a push for an id this
  client does not hold, goes to a fallback (the user's ``on_push``, or a counter).
- :class:`IncomingBase` is one pushed message: its fields and whether it has been settled
  (acked, nacked or rejected) through this client.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

from protocol import MAX_ERROR_TEXT, Push, PushName

from .errors import ConnectionClosed
from .types import Delivery

#: How a pushed message was settled through this client.
Settled = Literal["acked", "nacked", "rejected", "auto_acked"]


class PushTarget(Protocol):
    """A subscription, as the router sees it."""

    def _on_deliver(self, rows: list[Any], queue: str | None) -> None:
        """Deliveries (arrays, SPEC.md §5.8) pushed to it, in order, from ``queue`` (None
        from a server that does not name it)."""

    def _on_end(self, reason: str) -> None:
        """The server ended it (``subscription_end``); no push for it follows."""

    def _on_lost(self, error: ConnectionClosed) -> None:
        """Its connection is gone."""


class PushRouter:
    """Routes one connection's subscription pushes by subscription id.

    A subscription is added when its ``subscribe`` reply is read (before the frames after
    it, which may already be its pushes) and removed after its ``unsubscribe`` reply or
    its ``subscription_end``. Called from the connection's reader: quick, never raising.
    """

    __slots__ = ("fallback", "targets")

    def __init__(self, fallback: Callable[[Push], None]) -> None:
        #: Gets every push that is not for a subscription held here.
        self.fallback = fallback
        self.targets: dict[int, PushTarget] = {}

    def dispatch(self, push: Push) -> None:
        name = push.name
        if name == PushName.DELIVER or name == PushName.SUBSCRIPTION_END:
            payload = push.payload
            sid = payload.get("subscription")
            target = self.targets.get(sid) if type(sid) is int else None
            if target is not None:
                if name == PushName.DELIVER:
                    rows = payload.get("messages")
                    if type(rows) is list:
                        queue = payload.get("queue")
                        target._on_deliver(rows, queue if type(queue) is str else None)
                        return
                else:
                    del self.targets[sid]  # type: ignore[arg-type]
                    reason = payload.get("reason")
                    target._on_end(reason if type(reason) is str else "unknown")
                    return
        self.fallback(push)

    def lost(self, error: ConnectionClosed) -> None:
        """The connection closed: every subscription held here is told so, and forgotten."""
        targets, self.targets = self.targets, {}
        for target in targets.values():
            target._on_lost(error)


def target_name(queue: str | None, queues: Iterable[str] | None, prefix: str | None) -> str:
    """What a subscription reads, for messages: its queue, or its queue group (SPEC §8.15).
    Raises ``ValueError`` unless exactly one of the three is given."""
    if (queue is not None) + (queues is not None) + (prefix is not None) != 1:
        raise ValueError("subscribe to one of: a queue, queues=[...] or prefix=...")
    if queue is not None:
        return queue
    return f"prefix {prefix!r}" if prefix is not None else f"queues {list(queues or ())}"


def ids_by_queue(messages: Iterable[IncomingBase]) -> dict[str, list[int]]:
    """The ids of ``messages`` by queue, in order (to give them back, one request per queue)."""
    found: dict[str, list[int]] = {}
    for m in messages:
        found.setdefault(m.queue, []).append(m.id)
    return found


def error_text(exc: BaseException, limit: int = MAX_ERROR_TEXT) -> str:
    """``"TypeName: message"`` of an exception, cut to ``limit`` bytes of UTF-8."""
    text = "".join(traceback.format_exception_only(exc)).strip()
    return truncate_error(text, limit)


def truncate_error(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character (the
    server refuses a longer ``error``, SPEC.md §5.10)."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore")


class IncomingBase:
    """A message pushed to a subscription (one ``deliver`` entry), leased to this
    consumer unless the subscription is ``auto_ack``.

    ``id``, ``body``, ``attempt`` (1 on the first delivery), ``key``, ``priority`` and
    ``published_at`` are as in ``consume``; ``queue`` is the queue it came from (one of a
    queue group's). ``settled`` says how it was settled through this object (``None``
    while it is not).
    """

    __slots__ = ("attempt", "body", "headers", "id", "key", "offset", "priority", "published_at", "queue",
                 "settled", "shard")

    def __init__(self, queue: str, row: list[Any], auto_ack: bool) -> None:
        self.id: int = row[0]
        self.body: bytes = row[1]
        self.attempt: int = row[2]
        self.key: bytes | None = row[3]
        self.priority: int = row[4]
        self.published_at: int = row[5] if len(row) > 5 else 0
        #: From a consumer group (SPEC §8.13): topic shard, offset there, headers.
        self.shard: int | None = row[6] if len(row) > 8 else None
        self.offset: int | None = row[7] if len(row) > 8 else None
        self.headers: dict[str, str] | None = row[8] if len(row) > 8 else None
        self.queue = queue
        self.settled: Settled | None = "auto_acked" if auto_ack else None

    @property
    def delivery(self) -> Delivery:
        """The same fields as a ``consume`` result."""
        return Delivery(self.id, self.body, self.attempt, self.key, self.priority, self.published_at,
                        self.shard, self.offset, self.headers, self.queue)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.queue}#{self.id} attempt={self.attempt} "
            f"settled={self.settled} body={self.body[:32]!r}>"
        )

    def _claim(self, how: Settled) -> None:
        """Mark it settled before the request goes out; a second settle is a mistake."""
        if self.settled is not None:
            why = "the subscription is auto_ack" if self.settled == "auto_acked" else f"it was {self.settled}"
            raise RuntimeError(f"message {self.id} of {self.queue} cannot be {how}: {why}")
        self.settled = how


__all__ = ["IncomingBase", "PushRouter", "PushTarget", "Settled", "error_text", "truncate_error"]
