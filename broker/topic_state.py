"""The appliers of topic and consumer-group mutations, and the upkeep every change to a
group's delivery queue calls for (``broker.topics`` rules 2 and 3).

``BrokerState`` inherits them; the rules of ``broker.state`` hold here too: each
applier reads only its record's fields and the state, and never fails.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from typing import Any

from protocol import GROUP_WINDOW, QueueKind

from .mutations import GroupCreate, GroupDelete, GroupSeek, TopicCreate, TopicDelete, TopicPublish, TopicTrim
from .queues import LEASED, Queue, QueueSettings
from .records import ack_cost
from .topics import Group, Topic, TopicCopy, TopicSettings, copy_row_extra, group_queue_name

#: Timer names of topics (their age limit) in ``BrokerState``'s timer heap; "#" is in no
#: queue name.
TOPIC_TIMER = "#"
#: ``max_messages`` of a group's delivery queue: it holds at most ``GROUP_WINDOW`` ready
#: messages plus the leased ones, so the queue bound never applies.
_GROUP_QUEUE_MAX = 2**62


def _applies(mutation_class: type) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``broker.state.applies`` (imported late: that module imports this one)."""
    def mark(method: Callable[..., None]) -> Callable[..., None]:
        method.applies = mutation_class  # type: ignore[attr-defined]
        return method
    return mark


class TopicAppliers:
    """Mixed into ``BrokerState``."""

    queues: dict[str, Queue]
    ack_reserve: int
    _woken: dict[str, int]
    _timer_at: dict[str, int]

    def _init_topics(self) -> None:
        self.topics: dict[str, Topic] = {}
        #: Consumer groups by the name of their delivery queue (``TOPIC/GROUP``).
        self.group_queues: dict[str, Group] = {}

    # Provided by BrokerState.
    def _wake(self, name: str, count: int) -> None: ...
    def _schedule(self, name: str, at_ms: int) -> None: ...
    def _queue_delete(self, name: str) -> None: ...

    # -- appliers -------------------------------------------------------------------

    @_applies(TopicCreate)
    def _topic_create(self, topic: str, shards: int, retention: str, max_age_ms: int, max_bytes: int,
                      max_messages: int, dedup_window_ms: int = 300_000) -> None:
        if topic not in self.topics:
            self.topics[topic] = Topic(TopicSettings(topic, shards, retention, max_age_ms, max_bytes,
                                                     max_messages, dedup_window_ms))

    @_applies(TopicDelete)
    def _topic_delete(self, topic: str) -> None:
        held = self.topics.pop(topic, None)
        if held is None:
            return
        for group in list(held.groups):
            self._drop_group(held, group)
        self._timer_at.pop(TOPIC_TIMER + topic, None)

    @_applies(TopicPublish)
    def _topic_publish(self, topic: str, first_id: int, now_ms: int, bodies: list[bytes],
                       keys: list[bytes | None] | None = None,
                       headers: list[dict[str, str] | None] | None = None,
                       dedup_ids: list[bytes | None] | None = None) -> None:
        held = self.topics[topic]
        caught_up = list(held.next_offsets)
        held.add(first_id, now_ms, bodies, keys, headers)
        if dedup_ids is not None:
            held.dedup.remember(first_id, dedup_ids, now_ms)
        dropped = self._enforce_limits(held, None)
        moved = dropped or not held.groups
        for group in held.groups.values():
            # Only a group that had read everything can take the new messages: one with
            # unread messages holds more than half a window (rule 2), which a publish
            # does not change, unless the limits just took copies from it.
            if dropped or group.cursors == caught_up:
                self._top_up(held, group)
                moved = True
        if moved:  # else no group moved on: nothing more is done with than before (rule 3)
            self._reclaim(held)
        self._schedule_age(held)

    @_applies(GroupCreate)
    def _group_create(self, topic: str, group: str, cursors: list[int], filter: dict[str, str] | None,
                      visibility_ms: int, max_attempts: int, dead_letter: str | None, retry_delay_ms: int,
                      retry_backoff: str, retry_max_delay_ms: int, retry_jitter: int, ordered: bool) -> None:
        held = self.topics[topic]
        if group in held.groups:
            return
        name = group_queue_name(topic, group)
        queue = Queue(QueueSettings(
            name, str(QueueKind.FIFO), held.settings.shards, visibility_ms, max_attempts, dead_letter,
            _GROUP_QUEUE_MAX, retry_delay_ms, retry_backoff, retry_max_delay_ms, retry_jitter,
            dedup_window_ms=0, ordered=ordered))
        self._attach(held, Group(topic, group, queue, list(cursors), filter))
        self._top_up(held, held.groups[group])
        self._reclaim(held)

    def _attach(self, held: Topic, group: Group) -> None:
        """Make ``group``'s delivery queue a queue of the broker's."""
        queue = group.queue
        queue.on_ready = self._wake
        queue.plain_limit = -1  # never on the publish fast path: publishes go to the topic
        queue.row_extra = copy_row_extra
        self.queues[queue.name] = queue
        held.groups[group.name] = group
        self.group_queues[queue.name] = group

    @_applies(GroupDelete)
    def _group_delete(self, topic: str, group: str) -> None:
        held = self.topics.get(topic)
        if held is not None and group in held.groups:
            self._drop_group(held, group)
            self._reclaim(held)

    def _drop_group(self, held: Topic, group: str) -> None:
        name = held.groups.pop(group).queue.name
        del self.group_queues[name]
        self._queue_delete(name)

    @_applies(GroupSeek)
    def _group_seek(self, topic: str, group: str, cursors: list[int]) -> None:
        held = self.topics[topic]
        moved = held.groups.get(group)
        if moved is None:
            return
        queue = moved.queue
        taken = [m.id for m in queue.messages.values() if m.state != LEASED]
        self.ack_reserve -= queue.remove(taken) * ack_cost(queue.name)
        moved.cursors = list(cursors)
        self._top_up(held, moved)
        self._reclaim(held)

    @_applies(TopicTrim)
    def _topic_trim(self, topic: str, now_ms: int) -> None:
        held = self.topics.get(topic)
        if held is not None:
            self._enforce_limits(held, now_ms)
            self._reclaim(held)
            self._schedule_age(held)

    # -- upkeep -----------------------------------------------------------------------

    def group_changed(self, name: str) -> None:
        """A mutation changed the delivery queue ``name``: if it is a group's, top it up
        and reclaim what every group is done with."""
        group = self.group_queues.get(name)
        if group is not None:
            held = self.topics[group.topic]
            self._top_up(held, group)
            self._reclaim(held)

    def groups_changed(self) -> None:
        """Any group may have changed (a restart released every lease)."""
        for held in self.topics.values():
            for group in held.groups.values():
                self._top_up(held, group)
            self._reclaim(held)

    def _top_up(self, held: Topic, group: Group) -> None:
        """Rule 2: take messages past the cursors into the delivery queue once it holds
        at most half of ``GROUP_WINDOW`` ready, up to the window (skipping, for good,
        those the filter does not match)."""
        queue = group.queue
        want = GROUP_WINDOW - queue.ready
        if want < GROUP_WINDOW // 2:
            return
        cursors = group.cursors
        held_copies = queue.messages
        taken: list[TopicCopy] = []
        for msg in held.unread(group):
            cursors[msg.shard] = msg.offset + 1
            if msg.id in held_copies:  # still leased from before a seek back
                continue
            if group.matches(msg):
                taken.append(TopicCopy(msg))
                if len(taken) >= want:
                    break
            else:
                group.filtered += 1
        if taken:
            parked = len(queue.parked)
            queue.add_messages(taken)
            self.ack_reserve += len(taken) * ack_cost(queue.name)
            ready = len(taken) - (len(queue.parked) - parked)
            if ready:
                self._wake(queue.name, ready)

    def _reclaim(self, held: Topic) -> None:
        """Rule 3, ``interest``: drop each shard's oldest messages every group is done with."""
        if held.settings.retention == "limits":
            return
        groups = list(held.groups.values())
        for shard, log in enumerate(held.logs):
            while log and all(g.done_with(log[0]) for g in groups):
                held.drop_head(shard)
                held.reclaimed += 1

    def _enforce_limits(self, held: Topic, now_ms: int | None) -> int:
        """Rule 3, ``limits``: drop the oldest messages past the limits (the age limit only
        given ``now_ms``); groups skip those not yet taken and lose their copies of the
        others, and count them as missed. Returns how many were dropped."""
        dropped = 0
        while held.over_limits(now_ms):
            dropped += 1
            shard = held.oldest_shard()
            assert shard is not None
            msg = held.drop_head(shard)
            held.expired += 1
            for group in held.groups.values():
                queue = group.queue
                if msg.offset >= group.cursors[shard]:
                    group.cursors[shard] = msg.offset + 1
                    if group.matches(msg):
                        group.missed += 1
                elif msg.id in queue.messages:
                    self.ack_reserve -= queue.remove([msg.id]) * ack_cost(queue.name)
                    group.missed += 1
        return dropped

    def _schedule_age(self, held: Topic) -> None:
        at = held.next_age_deadline()
        if at is not None:
            self._schedule(TOPIC_TIMER + held.name, at)

    def topic_due(self, name: str, now_ms: int) -> list[Any]:
        """The mutations a topic's timer calls for at ``now_ms`` (reads only)."""
        held = self.topics.get(name[len(TOPIC_TIMER):])
        if held is None:
            return []
        at = held.next_age_deadline()
        if at is None:
            return []
        if at > now_ms:
            self._schedule(name, at)
            return []
        return [TopicTrim(held.name, now_ms)]


# A topic's settings are declared once (TopicSettings); its creation record mirrors them.
assert TopicCreate.FIELDS[1:] == tuple(f.name for f in dataclass_fields(TopicSettings))[1:], \
    "TopicCreate's fields must be TopicSettings' fields, in order"
