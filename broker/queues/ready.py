"""Ready sets of one shard, one class per queue kind.

Each keeps the shard's READY messages in delivery order. Entries of messages deleted
while ready stay behind as tombstones (state DELETED) and are skipped and dropped
lazily; every other state change removes its entry at once, so an entry whose
message is not DELETED is always READY.
"""
from __future__ import annotations

from bisect import insort
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
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

    def heads(self) -> Iterator[Message]:
        """The ready message pushed first (what ``oldest_ready_at`` looks at)."""
        for msg in self._items:
            if msg.state != DELETED:
                yield msg
                return

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

    def heads(self) -> Iterator[Message]:
        """The ready message pushed first at each priority."""
        for level in self._levels:
            for msg in self._buckets[level]:
                if msg.state != DELETED:
                    yield msg
                    break

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


#: What a taken entry of a key group is replaced with, so the group holds no reference
#: to a message that left it.
_GONE = Message(0, b"", None, 0, 0)
_GONE.state = DELETED


class _KeyGroup(list[Message]):
    """One key's entries in the order they became ready; those before ``head`` are
    gone (``_GONE``), so taking the first is O(1) without a deque's 760-byte block."""

    __slots__ = ("head",)

    def __init__(self, *entries: Message) -> None:
        super().__init__(entries)
        self.head = 0


class RoundRobinReady:
    """Keys in turn, each key's messages oldest-ready first (SPEC §7.1).

    The rotation is an ordered dict from key (``None`` for messages without one) to its
    entries, next key first: the message itself while a key has one entry, a
    ``_KeyGroup`` once it has more. A take serves a key and moves it to the back; a
    key leaves when it has no ready message, and one that gets its first ready message
    joins at the back. A key whose ready messages were all deleted (tombstones only)
    may linger; it counts as gone: skipped, dropped when it reaches the front, moved to
    the back if a message of it becomes ready again.

    Costs: push, take and forget O(1) amortized (a take that is not of a key's first
    entry searches that key's entries, as ``FifoReady.take`` does); 8 bytes per
    message in a key's group, and per key an ordered dict entry (~100 bytes) plus,
    for a key with more than one message, its group (~90 bytes).
    """

    __slots__ = ("_turns", "_entries", "count")

    def __init__(self) -> None:
        self._turns: OrderedDict[bytes | None, Message | _KeyGroup] = OrderedDict()
        #: Entries held (from each group's head on), tombstones included.
        self._entries = 0
        self.count = 0

    def push(self, msg: Message) -> None:
        turns = self._turns
        key = msg.key
        held = turns.get(key)
        if held is None:
            turns[key] = msg
        elif isinstance(held, Message):
            if held.state == DELETED:  # a tombstone only: the key had left, it rejoins at the back
                del turns[key]
                self._entries -= 1
                turns[key] = msg
            else:
                turns[key] = _KeyGroup(held, msg)
        else:
            # Without tombstones (the usual case) a group held has a ready message.
            if self._entries != self.count and not self._has_ready(held):
                turns.move_to_end(key)
            held.append(msg)
        self._entries += 1
        self.count += 1

    def push_many(self, msgs: list[Message]) -> None:
        for msg in msgs:
            self.push(msg)

    def iter_ready(self) -> Iterator[Message]:
        """Ready messages in the order successive takes would deliver them: turn after
        turn, each key in rotation order gives its next one."""
        more: list[tuple[_KeyGroup, int]] = []
        for held in self._turns.values():
            if isinstance(held, Message):
                if held.state != DELETED:
                    yield held
                continue
            i = self._next_ready(held, held.head)
            if i >= 0:
                yield held[i]
                more.append((held, i + 1))
        while more:
            turn, more = more, []
            for group, start in turn:
                i = self._next_ready(group, start)
                if i >= 0:
                    yield group[i]
                    more.append((group, i + 1))

    def in_push_order(self) -> Iterator[Message]:
        """Key by key in rotation order, each key's ready messages in order: pushing them
        again rebuilds the rotation and the groups."""
        for held in self._turns.values():
            for msg in (held,) if isinstance(held, Message) else islice(held, held.head, None):
                if msg.state != DELETED:
                    yield msg

    def heads(self) -> Iterator[Message]:
        """The ready message pushed first of each key."""
        for held in self._turns.values():
            if isinstance(held, Message):
                if held.state != DELETED:
                    yield held
            else:
                i = self._next_ready(held, held.head)
                if i >= 0:
                    yield held[i]

    def take(self, msg: Message) -> None:
        """Remove ``msg`` (usually the first of the front key) and send its key to the
        back of the rotation, or out of it when it has no ready message left."""
        turns = self._turns
        key = msg.key
        held = turns[key]
        # Without tombstones (the usual case) every entry from a group's head on is ready.
        clean = self._entries == self.count
        self._entries -= 1
        self.count -= 1
        if held is msg:
            del turns[key]
        else:
            assert not isinstance(held, Message)
            if not clean:
                self._has_ready(held)
            if held[held.head] is msg:
                self._pop_head(held)
            else:
                del held[held.index(msg, held.head)]
            if held.head < len(held) and (clean or self._has_ready(held)):
                if len(held) - held.head == 1:
                    turns[key] = held[held.head]  # back to a single entry
                turns.move_to_end(key)
            else:
                del turns[key]
        if not clean:
            # Keys left with tombstones only are dropped as they reach the front.
            while turns:
                first = next(iter(turns))
                if self._ready_in(turns[first]):
                    break
                del turns[first]

    def forget(self) -> None:
        self.count -= 1
        if self._entries > 2 * self.count + 64:
            turns = self._turns
            for key, held in list(turns.items()):
                if isinstance(held, Message):
                    live = [held] if held.state != DELETED else []
                else:
                    live = [m for m in islice(held, held.head, None) if m.state != DELETED]
                if not live:
                    del turns[key]
                elif len(live) == 1:
                    turns[key] = live[0]
                else:
                    turns[key] = _KeyGroup(*live)
            self._entries = self.count

    def _ready_in(self, held: Message | _KeyGroup) -> bool:
        """Whether a key's entries hold a ready message (dropping tombstones at the head;
        a lone tombstone is counted as dropped, its key must go)."""
        if isinstance(held, Message):
            if held.state != DELETED:
                return True
            self._entries -= 1
            return False
        return self._has_ready(held)

    def _has_ready(self, group: _KeyGroup) -> bool:
        """Drop the tombstones at ``group``'s head; whether a ready message is left."""
        while group.head < len(group):
            if group[group.head].state != DELETED:
                return True
            self._pop_head(group)
            self._entries -= 1
        return False

    @staticmethod
    def _next_ready(group: _KeyGroup, i: int) -> int:
        """The index of the first ready entry of ``group`` from ``i`` on, or -1."""
        n = len(group)
        while i < n:
            if group[i].state != DELETED:
                return i
            i += 1
        return -1

    @staticmethod
    def _pop_head(group: _KeyGroup) -> None:
        """Drop the head entry; compact once the gone ones are at least half the list."""
        head = group.head
        group[head] = _GONE
        head += 1
        if head == len(group):
            group.clear()
            head = 0
        elif head >= 32 and 2 * head >= len(group):
            del group[:head]
            head = 0
        group.head = head


ReadySet = FifoReady | LifoReady | PriorityReady | RoundRobinReady

READY_SETS: dict[str, type[FifoReady] | type[LifoReady] | type[PriorityReady] | type[RoundRobinReady]] = {
    "fifo": FifoReady,
    "lifo": LifoReady,
    "priority": PriorityReady,
    "round_robin": RoundRobinReady,
}


def first_ready(ready: ReadySet, n: int) -> list[Message]:
    """The first ``n`` ready messages in delivery order, without removing them."""
    return list(islice(ready.iter_ready(), n))
