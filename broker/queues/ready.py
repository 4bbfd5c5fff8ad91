"""Ready sets of one shard, one class per queue kind.

Each keeps the shard's READY messages in delivery order. Entries of messages deleted
while ready stay behind as tombstones (state DELETED) and are skipped and dropped
lazily; every other state change removes its entry at once, so an entry whose
message is not DELETED is always READY.
"""
from __future__ import annotations

from bisect import insort
from collections import deque
from collections.abc import Iterator
from itertools import islice

from .message import DELETED, Message


class _SequenceReady:
    """Ready messages kept in push order in a deque; the subclass picks the end to serve."""

    __slots__ = ("_items", "count")

    def __init__(self) -> None:
        self._items: deque[Message] = deque()
        self.count = 0

    def push(self, msg: Message) -> None:
        self._items.append(msg)
        self.count += 1

    def push_many(self, msgs: list[Message]) -> None:
        self._items.extend(msgs)
        self.count += len(msgs)

    def in_push_order(self) -> Iterator[Message]:
        """Ready messages in the order pushing them again rebuilds this set."""
        return (m for m in self._items if m.state != DELETED)

    def forget(self) -> None:
        """A ready message was deleted: its entry became a tombstone."""
        self.count -= 1
        if len(self._items) > 2 * self.count + 64:
            self._items = deque(m for m in self._items if m.state != DELETED)


class FifoReady(_SequenceReady):
    """Oldest-ready first."""

    __slots__ = ()

    def iter_ready(self) -> Iterator[Message]:
        for msg in self._items:
            if msg.state != DELETED:
                yield msg

    def take(self, msg: Message) -> None:
        """Remove ``msg`` (usually the first live entry)."""
        items = self._items
        while items and items[0].state == DELETED:
            items.popleft()
        if items and items[0] is msg:
            items.popleft()
        else:
            items.remove(msg)
        self.count -= 1


class LifoReady(_SequenceReady):
    """Most-recently-ready first."""

    __slots__ = ()

    def iter_ready(self) -> Iterator[Message]:
        for msg in reversed(self._items):
            if msg.state != DELETED:
                yield msg

    def take(self, msg: Message) -> None:
        """Remove ``msg`` (usually the last live entry)."""
        items = self._items
        while items and items[-1].state == DELETED:
            items.pop()
        if items and items[-1] is msg:
            items.pop()
        else:
            items.remove(msg)
        self.count -= 1


class PriorityReady:
    """Highest priority first; oldest-ready first among equal priorities."""

    __slots__ = ("_buckets", "_levels", "_entries", "count")

    def __init__(self) -> None:
        self._buckets: dict[int, deque[Message]] = {}
        #: Priorities with a non-empty bucket, ascending.
        self._levels: list[int] = []
        #: Entries in all buckets, tombstones included.
        self._entries = 0
        self.count = 0

    def push(self, msg: Message) -> None:
        bucket = self._buckets.get(msg.priority)
        if bucket is None:
            bucket = self._buckets[msg.priority] = deque()
            insort(self._levels, msg.priority)
        bucket.append(msg)
        self._entries += 1
        self.count += 1

    def push_many(self, msgs: list[Message]) -> None:
        for msg in msgs:
            self.push(msg)

    def iter_ready(self) -> Iterator[Message]:
        for level in reversed(self._levels):
            for msg in self._buckets[level]:
                if msg.state != DELETED:
                    yield msg

    def in_push_order(self) -> Iterator[Message]:
        for level in self._levels:
            for msg in self._buckets[level]:
                if msg.state != DELETED:
                    yield msg

    def take(self, msg: Message) -> None:
        bucket = self._buckets[msg.priority]
        while bucket and bucket[0].state == DELETED:
            bucket.popleft()
            self._entries -= 1
        if bucket and bucket[0] is msg:
            bucket.popleft()
        else:
            bucket.remove(msg)
        self._entries -= 1
        self.count -= 1
        if not bucket:
            self._drop_level(msg.priority)

    def forget(self) -> None:
        self.count -= 1
        if self._entries > 2 * self.count + 64:
            for level in list(self._levels):
                kept = deque(m for m in self._buckets[level] if m.state != DELETED)
                if kept:
                    self._buckets[level] = kept
                else:
                    self._drop_level(level)
            self._entries = self.count

    def _drop_level(self, level: int) -> None:
        del self._buckets[level]
        self._levels.remove(level)


ReadySet = FifoReady | LifoReady | PriorityReady

READY_SETS: dict[str, type[FifoReady] | type[LifoReady] | type[PriorityReady]] = {
    "fifo": FifoReady,
    "lifo": LifoReady,
    "priority": PriorityReady,
}


def first_ready(ready: ReadySet, n: int) -> list[Message]:
    """The first ``n`` ready messages in delivery order, without removing them."""
    return list(islice(ready.iter_ready(), n))
