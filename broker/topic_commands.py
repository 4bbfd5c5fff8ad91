"""The topic and consumer-group ops (SPEC §5.19-§5.27): their handlers and registry
entries, which ``broker.commands`` adds to its registry. A group's messages are read
with the queue ops, naming the group ``TOPIC/GROUP`` (SPEC §8.13)."""
from __future__ import annotations

from typing import Any

from protocol import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_MAX_DELAY_MS,
    DEFAULT_VISIBILITY_MS,
    MAX_DEDUP_ID,
    MAX_DEDUP_WINDOW_MS,
    DEFAULT_DEDUP_WINDOW_MS,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_KEY,
    MAX_RETRY_DELAY_MS,
    MAX_RETRY_JITTER,
    MAX_SHARDS,
    MAX_VISIBILITY_MS,
    MIN_SHARDS,
    ErrorCode,
    Op,
    ProtocolError,
    Retention,
    RetryBackoff,
    StartFrom,
)
from protocol.users import Permission

from .admission import AdmissionClass
from .commands import (
    LIST_ARGS,
    Arg,
    Args,
    Command,
    Context,
    Need,
    Outcome,
    Session,
    _too_large,
    invalid,
    list_page,
    queue_name_arg,
    visible,
)
from .mutations import GroupCreate, GroupDelete, GroupSeek, TopicCreate, TopicDelete, TopicPublish
from .topics import Group, Topic, TopicSettings, group_queue_name

#: The longest a topic retains a message by age: a year.
MAX_AGE_MS = 365 * 24 * 60 * 60 * 1000


def existing_group(held: Topic, args: dict[str, Any]) -> Group:
    name = queue_name_arg(args, "group")
    group = held.groups.get(name)
    if group is None:
        raise ProtocolError(ErrorCode.QUEUE_NOT_FOUND, f"topic {held.name!r} has no group {name!r}",
                            details={"field": "group", "topic": held.name, "group": name})
    return group


# -- topics -----------------------------------------------------------------------------

def topic_create(session: Session, args: Args, ctx: Context) -> Outcome:
    name = args["topic"]
    mutation = TopicCreate(name, args["shards"], args["retention"], args["max_age_ms"], args["max_bytes"],
                           args["max_messages"], args["dedup_window_ms"])
    existing = ctx.state.topics.get(name)
    if existing is not None:
        if existing.settings != TopicSettings(*mutation.fields()):
            raise ProtocolError(ErrorCode.QUEUE_EXISTS, f"topic {name!r} exists with different settings",
                                details={"field": "topic", "topic": name})
        return Outcome({"topic": name, "created": False})
    if len(ctx.state.topics) >= ctx.config.max_queues:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {ctx.config.max_queues} topics",
                            details={"limit": ctx.config.max_queues})
    return Outcome({"topic": name, "created": True}, (mutation,))


def topic_delete(session: Session, args: Args, ctx: Context) -> Outcome:
    held: Topic = args["topic"]
    return Outcome({"topic": held.name, "messages": len(held)}, (TopicDelete(held.name),))


def topic_list(session: Session, args: Args, ctx: Context) -> Outcome:
    topics = ctx.state.topics
    return list_page(session, args, topics, lambda name: topics[name].stats(), "topics")


def topic_stats(session: Session, args: Args, ctx: Context) -> Outcome:
    return Outcome(args["topic"].stats())


def topic_publish(session: Session, args: Args, ctx: Context) -> Outcome:
    held: Topic = args["topic"]
    entries = args["messages"]
    if type(entries) is not list or not entries:
        raise invalid("messages", "messages must be a non-empty array")
    if len(entries) > ctx.config.max_batch:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {ctx.config.max_batch} messages per publish",
                            details={"field": "messages", "limit": ctx.config.max_batch})
    bodies: list[bytes] = []
    keys: list[bytes | None] = []
    headers: list[dict[str, str] | None] = []
    dedup_ids: list[bytes | None] = []
    duplicates: list[list[int]] = []
    #: Dedup ids of this request's stored entries -> the ids they get (SPEC §8.9).
    batch: dict[bytes, int] = {}
    dedup = held.dedup.window > 0
    now = ctx.now_ms
    first_id = held.next_id
    for index, entry in enumerate(entries):
        if type(entry) is not list or not 1 <= len(entry) <= 4:
            raise invalid(f"messages[{index}]", "a message is an array [body, key, headers, dedup_id]")
        body, key, more, dedup_id = (entry + [None, None, None])[:4]
        if type(body) is not bytes:
            raise invalid(f"messages[{index}].body", "body must be binary (msgpack bin)")
        if key is not None and (type(key) is not bytes or len(key) > MAX_KEY):
            raise invalid(f"messages[{index}].key",
                          f"key must be binary (msgpack bin) of at most {MAX_KEY} bytes, or nil")
        if more is not None:
            _check_headers(more, f"messages[{index}].headers")
        if dedup_id is not None:
            if type(dedup_id) is not bytes or not 1 <= len(dedup_id) <= MAX_DEDUP_ID:
                raise invalid(f"messages[{index}].dedup_id",
                              f"dedup_id must be binary (msgpack bin) of 1 to {MAX_DEDUP_ID} bytes, or nil")
            if dedup:
                earlier = held.dedup.first_of(dedup_id, now, batch)
                if earlier is not None:
                    duplicates.append([index, earlier])
                    continue
                batch[dedup_id] = first_id + len(bodies)
            else:
                dedup_id = None
        bodies.append(body)
        keys.append(key)
        headers.append(more or None)
        dedup_ids.append(dedup_id)
    every = [e[0] for e in entries] if duplicates else bodies  # duplicates' bodies too (SPEC §5.23)
    if max(map(len, every)) > ctx.config.max_message:
        _too_large(every, ctx.config.max_message)
    result: dict[str, Any] = {"first_id": first_id, "count": len(bodies)}
    if duplicates:
        result["duplicates"] = duplicates
    if not bodies:
        return Outcome(result)  # all duplicates: nothing to log
    mutation = TopicPublish(held.name, first_id, now, bodies,
                            keys if any(k is not None for k in keys) else None,
                            headers if any(h is not None for h in headers) else None,
                            dedup_ids if batch else None)
    return Outcome(result, (mutation,))


def _check_headers(value: Any, field: str) -> dict[str, str]:
    """A header map: str keys and values, at most ``MAX_HEADERS`` of them and
    ``MAX_HEADER_BYTES`` bytes of UTF-8 in all."""
    if type(value) is not dict or not all(type(k) is str and type(v) is str for k, v in value.items()):
        raise invalid(field, "headers must be a map of str to str, or nil")
    if len(value) > MAX_HEADERS or sum(len(k.encode()) + len(v.encode()) for k, v in value.items()) \
            > MAX_HEADER_BYTES:
        raise invalid(field, f"at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes in all")
    return value


# -- groups -----------------------------------------------------------------------------

#: A group's delivery settings, in GroupCreate's order after its cursors and filter.
_DELIVERY = ("visibility_ms", "max_attempts", "dead_letter", "retry_delay_ms", "retry_backoff",
             "retry_max_delay_ms", "retry_jitter", "ordered")


def _start(held: Topic, value: Any, field: str) -> list[int]:
    """Per-shard cursors for a start position (SPEC §5.24)."""
    if value == StartFrom.EARLIEST or value == StartFrom.LATEST:
        return held.start_cursors(str(value))
    if type(value) is int and value >= 0:
        return held.start_cursors(value)
    if type(value) is list and len(value) == held.settings.shards \
            and all(type(o) is int and 0 <= o < 2**63 for o in value):
        return held.start_cursors(value)
    raise invalid(field, f"{field} must be \"earliest\", \"latest\", a time in ms, or an array of "
                         f"{held.settings.shards} offsets (one per shard)")


def group_create(session: Session, args: Args, ctx: Context) -> Outcome:
    held: Topic = args["topic"]
    name = args["group"]
    start = args["start"]
    wanted = args["filter"]
    if wanted is not None:
        _check_headers(wanted, "filter")
        wanted = wanted or None
    dead_letter = args["dead_letter"]
    if dead_letter is not None and dead_letter not in ctx.state.queues:
        raise ProtocolError(ErrorCode.QUEUE_NOT_FOUND, f"dead-letter queue {dead_letter!r} does not exist",
                            details={"field": "dead_letter", "queue": dead_letter})
    delivery = [args[a] for a in _DELIVERY]
    existing = held.groups.get(name)
    if existing is not None:
        s = existing.queue.settings
        same = [s.visibility_ms, s.max_attempts, s.dead_letter, s.retry_delay_ms, s.retry_backoff,
                s.retry_max_delay_ms, s.retry_jitter, s.ordered] == delivery and existing.filter == wanted
        if not same:
            raise ProtocolError(ErrorCode.QUEUE_EXISTS, f"group {name!r} of topic {held.name!r} exists with "
                                "different settings", details={"field": "group", "topic": held.name, "group": name})
        return Outcome({"topic": held.name, "group": name, "created": False})
    cursors = _start(held, start, "start")
    if len(ctx.state.group_queues) >= ctx.config.max_queues:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {ctx.config.max_queues} groups",
                            details={"limit": ctx.config.max_queues})
    return Outcome({"topic": held.name, "group": name, "created": True},
                   (GroupCreate(held.name, name, cursors, wanted, *delivery),))


def group_delete(session: Session, args: Args, ctx: Context) -> Outcome:
    held: Topic = args["topic"]
    group = existing_group(held, args)
    return Outcome({"topic": held.name, "group": group.name, "messages": len(group.queue)},
                   (GroupDelete(held.name, group.name),))


def group_stats(session: Session, args: Args, ctx: Context) -> Outcome:
    held: Topic = args["topic"]
    return Outcome(_group_stats(held, existing_group(held, args)))


def _group_stats(held: Topic, group: Group) -> dict[str, Any]:
    return {
        "topic": held.name, "group": group.name, "queue": group.queue.name,
        "cursors": list(group.cursors), "lag": held.lag(group), "filter": group.filter,
        "missed": group.missed, "filtered": group.filtered,
        **{k: v for k, v in group.queue.stats().items() if k != "queue"},
    }


def group_seek(session: Session, args: Args, ctx: Context) -> Outcome:
    held: Topic = args["topic"]
    group = existing_group(held, args)
    cursors = _start(held, args["to"], "to")
    return Outcome({"topic": held.name, "group": group.name, "cursors": cursors},
                   (GroupSeek(held.name, group.name, cursors),))


# -- the registry entries -------------------------------------------------------------------

_TOPIC = Arg("topic", "topic", doc="An existing topic.")
_GROUP = Arg("group", "any", doc="A group of the topic.")
#: What the topic and group ops need of their user (SPEC §4.3).
_PUBLISHES = (Need(Permission.PUBLISH, "topic"),)
_CONSUMES = (Need(Permission.CONSUME, "topic"),)
_ADMINISTERS = (Need(Permission.ADMIN, "topic"),)

TOPIC_COMMANDS: tuple[Command, ...] = (
    Command(Op.TOPIC_CREATE, topic_create, (
        Arg("topic", "queue_name"),
        Arg("shards", "int", default=1, lo=MIN_SHARDS, hi=MAX_SHARDS),
        Arg("retention", "choice", default=str(Retention.INTEREST), choices=tuple(Retention)),
        Arg("max_age_ms", "int", default=0, lo=0, hi=MAX_AGE_MS),
        Arg("max_bytes", "int", default=0, lo=0, hi=2**63 - 1),
        Arg("max_messages", "int", default=0, lo=0, hi=2**63 - 1),
        Arg("dedup_window_ms", "int", default=DEFAULT_DEDUP_WINDOW_MS, lo=0, hi=MAX_DEDUP_WINDOW_MS),
    ), AdmissionClass.LOG, changes_state=True, permission=_ADMINISTERS),
    Command(Op.TOPIC_DELETE, topic_delete, (_TOPIC,), AdmissionClass.LOG, changes_state=True,
            permission=_ADMINISTERS),
    Command(Op.TOPIC_LIST, topic_list, LIST_ARGS),
    Command(Op.TOPIC_STATS, topic_stats, (_TOPIC,), permission=_CONSUMES),
    Command(Op.TOPIC_PUBLISH, topic_publish, (_TOPIC, Arg("messages", "any")), AdmissionClass.PUBLISH,
            changes_state=True, permission=_PUBLISHES),
    Command(Op.GROUP_CREATE, group_create, (
        _TOPIC,
        Arg("group", "queue_name"),
        Arg("start", "any", default=str(StartFrom.LATEST)),
        Arg("filter", "any", default=None),
        Arg("visibility_ms", "int", default=DEFAULT_VISIBILITY_MS, lo=1, hi=MAX_VISIBILITY_MS),
        Arg("max_attempts", "int", default=DEFAULT_MAX_ATTEMPTS, lo=0, hi=2**31 - 1),
        Arg("retry_delay_ms", "int", default=0, lo=0, hi=MAX_RETRY_DELAY_MS),
        Arg("retry_backoff", "choice", default=str(DEFAULT_RETRY_BACKOFF), choices=tuple(RetryBackoff)),
        Arg("retry_max_delay_ms", "int", default=DEFAULT_RETRY_MAX_DELAY_MS, lo=0, hi=MAX_RETRY_DELAY_MS),
        Arg("retry_jitter", "int", default=0, lo=0, hi=MAX_RETRY_JITTER),
        Arg("ordered", "bool", default=False),
        Arg("dead_letter", "queue_name", default=None),
    ), AdmissionClass.LOG, changes_state=True,
            permission=(Need(Permission.ADMIN, "topic"), Need(Permission.PUBLISH, "dead_letter"))),
    Command(Op.GROUP_DELETE, group_delete, (_TOPIC, _GROUP), AdmissionClass.LOG, changes_state=True,
            permission=_ADMINISTERS),
    Command(Op.GROUP_STATS, group_stats, (_TOPIC, _GROUP), permission=_CONSUMES),
    Command(Op.GROUP_SEEK, group_seek, (_TOPIC, _GROUP, Arg("to", "any", default=None)),
            AdmissionClass.LOG, changes_state=True, permission=_ADMINISTERS),
)
