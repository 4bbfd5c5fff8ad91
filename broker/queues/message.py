"""One message held by a queue."""
from __future__ import annotations

#: Message states.
READY = 0
LEASED = 1
DELAYED = 2
DELETED = 3


class Message:
    """A message and where it stands. Mutable, internal to the broker's state."""

    __slots__ = ("id", "body", "key", "priority", "shard", "attempts", "state", "deadline", "lease")

    def __init__(
        self, id: int, body: bytes, key: bytes | None, priority: int, shard: int
    ) -> None:
        self.id = id
        self.body = body
        self.key = key
        self.priority = priority
        self.shard = shard
        #: Deliveries so far (1 while the first lease is held).
        self.attempts = 0
        self.state = READY
        #: Lease deadline (LEASED) or ready time (DELAYED), wall-clock ms; else 0.
        self.deadline = 0
        #: Sequence number of the lease batch holding it (valid while LEASED).
        self.lease = 0

    def __repr__(self) -> str:
        return f"Message(id={self.id}, state={self.state}, attempts={self.attempts})"
