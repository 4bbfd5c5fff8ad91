"""One message held by a queue."""
from __future__ import annotations

#: Message states.
READY = 0
LEASED = 1
DELAYED = 2
DELETED = 3
#: Published with dependencies not yet acked (SPEC §8.14): neither ready nor delayed.
WAITING = 4


class Message:
    """A message and where it stands. Mutable, internal to the broker's state."""

    __slots__ = ("id", "body", "key", "priority", "shard", "published_at", "attempts", "state",
                 "deadline", "lease")

    def __init__(
        self, id: int, body: bytes, key: bytes | None, priority: int, shard: int,
        published_at: int = 0,
    ) -> None:
        self.id = id
        self.body = body
        self.key = key
        self.priority = priority
        self.shard = shard
        #: When it was first published (wall-clock ms; kept through dead-lettering and
        #: redrive); 0 when unknown (restored from a snapshot that predates it).
        self.published_at = published_at
        #: Deliveries so far (1 while the first lease is held).
        self.attempts = 0
        self.state = READY
        #: Lease deadline (LEASED) or ready time (DELAYED), wall-clock ms; else 0.
        self.deadline = 0
        #: Sequence number of the lease batch holding it (valid while LEASED).
        self.lease = 0

    def __repr__(self) -> str:
        return f"Message(id={self.id}, state={self.state}, attempts={self.attempts})"


_new = object.__new__


def plain_messages(first_id: int, bodies: list[bytes], published_at: int) -> list[Message]:
    """``Message(first_id + i, bodies[i], None, 0, 0, published_at)`` for each body, without a Python
    ``__init__`` call per message: publish and replay build them by the thousand. It
    sets every slot as ``__init__`` does (a test compares the two)."""
    out: list[Message] = []
    add = out.append
    mid = first_id
    for body in bodies:
        m = _new(Message)
        m.id = mid
        m.body = body
        m.key = None
        m.priority = 0
        m.shard = 0
        m.published_at = published_at
        m.attempts = 0
        m.state = READY
        m.deadline = 0
        m.lease = 0
        add(m)
        mid += 1
    return out
