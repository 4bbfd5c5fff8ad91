"""Topics and consumer groups (SPEC §8.13): what a topic retains, shard by shard, and
where each of its groups stands.

Pure state, like ``broker.queues``: changed only by ``BrokerState``'s appliers with
values from mutation records; the rest only reads.

Rules:
1. A topic stores each message once, in its shard's log, with a topic-wide id (ids grow
   by one per message, as in a queue) and a per-shard offset (from 1).
2. A group reads the topic through per-shard cursors (the next offset it has not taken).
   What it has taken and not yet acked lives in its delivery queue (``Group.queue``, a
   ``Queue`` named ``TOPIC/GROUP`` holding ``TopicCopy`` messages that share the topic's
   bodies), so leases, retries, dead letters, long polls and subscriptions are the
   queue's. The queue is topped up from the cursors to ``GROUP_WINDOW`` ready messages
   whenever it runs low (``BrokerState._top_up``), so unread messages cost nothing per
   group.
3. A message is done for a group once the group's cursor has passed it and its copy is
   gone from the group's queue (acked, dead-lettered, dropped, or skipped by the
   group's filter). Under ``interest`` retention a topic drops a message, oldest first
   in each shard, once every group is done with it; under ``limits`` once it passes the
   topic's age, byte or message limit, done or not (groups then skip it and count it
   as ``missed``).
"""
from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from operator import attrgetter
from typing import Any

from protocol import DEFAULT_DEDUP_WINDOW_MS, GROUP_SEPARATOR, Retention, shard_for_key

from .queues import DedupIds, Message, Queue


#: Most group names a topic's stats list (the first, by name): a bounded reply however
#: many groups it has; ``group_count`` says how many.
STATS_GROUPS = 1000


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """What a topic was created with."""

    name: str
    shards: int
    retention: str = Retention.INTEREST
    #: Limits (0: none), used by ``limits`` and ``both`` retention.
    max_age_ms: int = 0
    max_bytes: int = 0
    max_messages: int = 0
    #: How long a dedup id published to it is remembered (SPEC §8.9); 0: no dedup.
    dedup_window_ms: int = 300_000


class TopicMessage:
    """One message a topic retains."""

    __slots__ = ("id", "shard", "offset", "body", "key", "headers", "published_at")

    def __init__(self, id: int, shard: int, offset: int, body: bytes, key: bytes | None,
                 headers: dict[str, str] | None, published_at: int) -> None:
        self.id = id
        self.shard = shard
        self.offset = offset
        self.body = body
        self.key = key
        self.headers = headers
        self.published_at = published_at

    def row(self) -> list[Any]:
        """As a snapshot row."""
        return [self.id, self.shard, self.offset, self.body, self.key, self.headers, self.published_at]


class TopicCopy(Message):
    """A group's copy of a topic message (rule 2): a queue message that also knows its
    place in the topic and its headers."""

    __slots__ = ("offset", "headers")

    def __init__(self, source: TopicMessage) -> None:
        super().__init__(source.id, source.body, source.key, 0, source.shard, source.published_at)
        self.offset = source.offset
        self.headers = source.headers


def copy_row_extra(copy: Message) -> int:
    """Bytes a group's delivery adds beyond a queue's: shard 3, offset 9, and the
    headers map (nil 1, or at most 3 + 10 per pair + the UTF-8 of keys and values)."""
    headers = getattr(copy, "headers", None)
    if not headers:
        return 13
    return 15 + sum(10 + len(k.encode()) + len(v.encode()) for k, v in headers.items())


def group_queue_name(topic: str, group: str) -> str:
    return f"{topic}{GROUP_SEPARATOR}{group}"


class Group:
    """A consumer group of a topic: its cursors, filter and delivery queue."""

    def __init__(self, topic: str, name: str, queue: Queue, cursors: list[int],
                 filter: dict[str, str] | None) -> None:
        self.topic = topic
        self.name = name
        self.queue = queue
        #: Per shard, the next offset not yet taken into ``queue``.
        self.cursors = cursors
        #: Only messages whose headers hold every one of these pairs are delivered.
        self.filter = filter
        #: Messages the topic dropped by its limits before the group was done with them.
        self.missed = 0
        #: Messages passed over because they did not match ``filter``.
        self.filtered = 0

    def matches(self, msg: TopicMessage) -> bool:
        wanted = self.filter
        if not wanted:
            return True
        headers = msg.headers
        if not headers:
            return False
        return all(headers.get(k) == v for k, v in wanted.items())

    def done_with(self, msg: TopicMessage) -> bool:
        """Rule 3: the cursor has passed it and no copy of it is held."""
        return msg.offset < self.cursors[msg.shard] and msg.id not in self.queue.messages

    def export_header(self) -> list[Any]:
        return [self.topic, self.name, self.cursors, self.filter, self.missed, self.filtered]


class Topic:
    """A topic's retained messages, per shard, and its groups."""

    def __init__(self, settings: TopicSettings) -> None:
        self.settings = settings
        n = settings.shards
        #: Per shard, the retained messages by offset (oldest first).
        self.logs: list[deque[TopicMessage]] = [deque() for _ in range(n)]
        #: Per shard, the offset the next message gets (offsets start at 1).
        self.next_offsets = [1] * n
        self.next_id = 1
        self.bytes = 0
        self.groups: dict[str, Group] = {}
        # Lifetime counters.
        self.published = 0
        #: Dropped once every group was done with them (interest).
        self.reclaimed = 0
        #: Dropped by the age, byte or message limit.
        self.expired = 0
        #: Dedup ids remembered (SPEC §8.9), whatever retention did to their messages.
        self.dedup = DedupIds(settings.dedup_window_ms)

    @property
    def name(self) -> str:
        return self.settings.name

    def __len__(self) -> int:
        return sum(map(len, self.logs))

    def shard_of(self, msg_id: int, key: bytes | None) -> int:
        """Queues' rule (SPEC §7.2): by key hash when keyed, else by id."""
        n = self.settings.shards
        if n == 1:
            return 0
        return shard_for_key(key, n) if key is not None else msg_id % n

    def first_offset(self, shard: int) -> int:
        """The offset of the oldest message the shard retains (its next one if none)."""
        log = self.logs[shard]
        return log[0].offset if log else self.next_offsets[shard]

    # -- reading -----------------------------------------------------------------------

    def start_cursors(self, start: Any) -> list[int]:
        """Per-shard cursors for a start position (checked by the handler): ``earliest``,
        ``latest``, a time in ms (the first message published at or after it), or a
        list of per-shard offsets (clamped to what is retained)."""
        n = self.settings.shards
        if start == "earliest":
            return [self.first_offset(s) for s in range(n)]
        if start == "latest":
            return list(self.next_offsets)
        if type(start) is int:
            out = []
            for s, log in enumerate(self.logs):
                i = bisect.bisect_left(log, start, key=attrgetter("published_at"))
                out.append(log[i].offset if i < len(log) else self.next_offsets[s])
            return out
        return [min(max(o, self.first_offset(s)), self.next_offsets[s]) for s, o in enumerate(start)]

    def unread(self, group: Group) -> Iterator[TopicMessage]:
        """The messages past ``group``'s cursors, in id order (publish order) across shards."""
        sources = []
        for s, log in enumerate(self.logs):
            if log:
                start = group.cursors[s] - log[0].offset
                if start < len(log):
                    sources.append(islice(log, max(start, 0), None))
        if len(sources) == 1:
            return sources[0]
        return heapq.merge(*sources, key=attrgetter("id"))

    def lag(self, group: Group) -> int:
        """Messages retained past ``group``'s cursors (not yet taken)."""
        return sum(max(0, self.next_offsets[s] - max(c, self.first_offset(s)))
                   for s, c in enumerate(group.cursors))

    def find(self, msg_id: int) -> TopicMessage | None:
        """The retained message with this id, if any."""
        for log in self.logs:
            i = bisect.bisect_left(log, msg_id, key=attrgetter("id"))
            if i < len(log) and log[i].id == msg_id:
                return log[i]
        return None

    # -- changing (called only from BrokerState appliers) --------------------------------

    def add(self, first_id: int, now_ms: int, bodies: list[bytes], keys: list[bytes | None] | None,
            headers: list[dict[str, str] | None] | None) -> None:
        logs, offsets = self.logs, self.next_offsets
        for i, body in enumerate(bodies):
            mid = first_id + i
            key = keys[i] if keys is not None else None
            shard = self.shard_of(mid, key)
            offset = offsets[shard]
            offsets[shard] = offset + 1
            logs[shard].append(TopicMessage(mid, shard, offset, body, key,
                                            headers[i] if headers is not None else None, now_ms))
        self.next_id = first_id + len(bodies)
        self.published += len(bodies)
        self.bytes += sum(map(len, bodies))

    def drop_head(self, shard: int) -> TopicMessage:
        msg = self.logs[shard].popleft()
        self.bytes -= len(msg.body)
        return msg

    def oldest_shard(self) -> int | None:
        """The shard whose oldest message is the oldest of the topic, if any is retained."""
        best: int | None = None
        best_id = 0
        for s, log in enumerate(self.logs):
            if log and (best is None or log[0].id < best_id):
                best, best_id = s, log[0].id
        return best

    def over_limits(self, now_ms: int | None) -> bool:
        """Whether the oldest message must go by the limits (age only given ``now_ms``)."""
        s = self.settings
        if s.retention == Retention.INTEREST:
            return False
        if s.max_messages and len(self) > s.max_messages:
            return True
        if s.max_bytes and self.bytes > s.max_bytes:
            return True
        if s.max_age_ms and now_ms is not None:
            shard = self.oldest_shard()
            return shard is not None and self.logs[shard][0].published_at + s.max_age_ms <= now_ms
        return False

    def next_age_deadline(self) -> int | None:
        """When the oldest message passes ``max_age_ms`` (None: no age limit or none held)."""
        s = self.settings
        if not s.max_age_ms or s.retention == Retention.INTEREST:
            return None
        heads = [log[0].published_at for log in self.logs if log]
        return min(heads) + s.max_age_ms if heads else None

    def export_header(self) -> list[Any]:
        s = self.settings
        return [s.name, s.shards, s.retention, s.max_age_ms, s.max_bytes, s.max_messages,
                self.next_offsets, self.next_id, self.published, self.reclaimed, self.expired,
                s.dedup_window_ms]

    @classmethod
    def from_header(cls, fields: list[Any]) -> Topic:
        """From ``export_header``; a header of an older build lacks ``dedup_window_ms``
        (then the default, as for an older ``TopicCreate`` record)."""
        name, shards, retention, max_age, max_bytes, max_messages = fields[:6]
        window = fields[11] if len(fields) > 11 else DEFAULT_DEDUP_WINDOW_MS
        topic = cls(TopicSettings(name, shards, retention, max_age, max_bytes, max_messages, window))
        (topic.next_offsets, topic.next_id, topic.published, topic.reclaimed,
         topic.expired) = fields[6:11]
        return topic

    def export_messages(self) -> Iterator[list[Any]]:
        for log in self.logs:
            for msg in log:
                yield msg.row()

    def import_messages(self, rows: list[list[Any]]) -> None:
        for mid, shard, offset, body, key, headers, published_at in rows:
            self.logs[shard].append(TopicMessage(mid, shard, offset, body, key, headers, published_at))
            self.bytes += len(body)

    def stats(self) -> dict[str, Any]:
        s = self.settings
        return {
            "topic": s.name, "shards": s.shards, "retention": s.retention,
            "max_age_ms": s.max_age_ms, "max_bytes": s.max_bytes, "max_messages": s.max_messages,
            "dedup_window_ms": s.dedup_window_ms, "messages": len(self), "bytes": self.bytes,
            "first_offsets": [self.first_offset(i) for i in range(s.shards)],
            "next_offsets": list(self.next_offsets),
            "published": self.published, "reclaimed": self.reclaimed, "expired": self.expired,
            "groups": sorted(self.groups)[:STATS_GROUPS], "group_count": len(self.groups),
        }


def copy_maker(topic: Topic) -> Any:
    """For ``Queue.import_messages``: a group's restored copies share the topic's message
    (its body, offset and headers)."""
    def make(mid: int, body: bytes, key: bytes | None, priority: int, shard: int,
             published_at: int) -> Message:
        source = topic.find(mid)
        if source is None:  # not retained: cannot happen (rule 3), kept as a plain message
            return Message(mid, body, key, priority, shard, published_at)
        return TopicCopy(source)
    return make
