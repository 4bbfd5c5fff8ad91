"""The command registry: op name -> handler with argument validation.

A handler takes the connection's ``Session``, the request args and a ``Context``
(read-only state, the time, the limits) and returns an ``Outcome``: the reply, the
mutations that must be logged and applied before the reply is sent, or a ``Wait``
when a consume should be held until messages arrive. Handlers never change queue
state themselves and never touch sockets, trio or the WAL.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from protocol import (
    DEFAULT_PRIORITY,
    MAX_DELAY_MS,
    MAX_KEY,
    MAX_PRIORITY,
    MAX_SHARDS,
    MAX_VISIBILITY_MS,
    MAX_WAIT_MS,
    MIN_MAX_FRAME,
    MIN_PRIORITY,
    MIN_SHARDS,
    PROTOCOL_VERSIONS,
    ErrorCode,
    Op,
    ProtocolError,
    QueueKind,
    valid_queue_name,
)
from protocol.ops import DEFAULT_VISIBILITY_MS

from .config import BrokerConfig
from .mutations import Ack, Lease, Mutation, Publish, QueueCreate, QueueDelete, Release, plain_publish
from .queues import LEASED, Queue
from .state import BrokerState

SERVER_NAME = "lockgate/0.1.0"
#: Frame bytes a consume reply needs beyond its deliveries.
REPLY_OVERHEAD = 1024
_MISSING: Any = object()


@dataclass(slots=True)
class Session:
    """Per-connection protocol state."""

    peer: str = ""
    ready: bool = False
    version: int = 0
    client: str = ""
    #: Largest frame the client accepts (from hello).
    client_max_frame: int = 0
    waiters: int = 0


@dataclass(frozen=True, slots=True)
class Context:
    state: BrokerState
    config: BrokerConfig
    now_ms: int
    addr: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Hold the consume until ``queue`` gets ready messages or ``wait_ms`` passes."""

    queue: str
    wait_ms: int


class Outcome(NamedTuple):
    """What a handler decided. Immutable; a NamedTuple because one is built per request
    and it costs less than half of a frozen dataclass (measured on the hot path)."""

    result: dict[str, Any] | None = None
    mutations: tuple[Mutation, ...] = ()
    wait: Wait | None = None


_tuple_new = tuple.__new__


def _outcome(result: dict[str, Any], mutations: tuple[Mutation, ...]) -> Outcome:
    """``Outcome(result, mutations)`` without the NamedTuple's Python-level ``__new__``
    (the publish path builds one per request)."""
    return _tuple_new(Outcome, (result, mutations, None))


Handler = Callable[[Session, dict[str, Any], Context], Outcome]


@dataclass(slots=True)
class Command:
    """One registry entry, with its counter."""

    op: str
    handler: Handler
    fields: frozenset[str]
    needs_handshake: bool = True
    #: False for ops whose replies reveal no queue state (they need not wait on the log).
    reads_state: bool = True
    calls: int = 0
    errors: int = 0


# -- argument helpers -------------------------------------------------------------------

def invalid(fieldname: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_ARGUMENT, message, details={"field": fieldname})


def int_arg(args: dict[str, Any], name: str, default: Any, lo: int, hi: int) -> int:
    value = args.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise invalid(name, f"{name} is required")
        return default
    if type(value) is not int:
        raise invalid(name, f"{name} must be an integer")
    if not lo <= value <= hi:
        raise invalid(name, f"{name} must be between {lo} and {hi}")
    return value


def queue_name_arg(args: dict[str, Any], name: str = "queue") -> str:
    value = args.get(name)
    if value is None:
        raise invalid(name, f"{name} is required")
    if not valid_queue_name(value):
        raise invalid(name, f"{name} must be 1-200 characters of A-Z a-z 0-9 _ - . :")
    return value


def existing_queue(args: dict[str, Any], ctx: Context) -> Queue:
    name = args.get("queue")
    if type(name) is str:
        queue = ctx.state.queues.get(name)
        if queue is not None:
            return queue  # its name was validated when it was created
    name = queue_name_arg(args)
    raise ProtocolError(ErrorCode.QUEUE_NOT_FOUND, f"queue {name!r} does not exist",
                        details={"field": "queue", "queue": name})


def id_list_arg(args: dict[str, Any], ctx: Context) -> list[int]:
    ids = args.get("ids")
    if type(ids) is not list or not ids:
        raise invalid("ids", "ids must be a non-empty array of integers")
    if len(ids) > ctx.config.max_batch:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                            f"at most {ctx.config.max_batch} ids per request",
                            details={"field": "ids", "limit": ctx.config.max_batch})
    for i in ids:
        if type(i) is not int or not 0 <= i < 2**63:
            raise invalid("ids", "ids must be integers from 0 to 2**63 - 1")
    return list(dict.fromkeys(ids))


# -- handlers -----------------------------------------------------------------------------

def hello(session: Session, args: dict[str, Any], ctx: Context) -> Outcome:
    versions = args.get("versions")
    if type(versions) is not list or not all(type(v) is int for v in versions):
        raise invalid("versions", "versions must be an array of integers")
    common = [v for v in PROTOCOL_VERSIONS if v in versions]
    if not common:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                            f"server speaks versions {list(PROTOCOL_VERSIONS)}",
                            details={"supported": list(PROTOCOL_VERSIONS)})
    cfg = ctx.config
    floor = max(MIN_MAX_FRAME, cfg.max_message + 4096)
    client_max = int_arg(args, "max_frame", cfg.max_frame, floor, 2**32 - 1)
    client = args.get("client", "")
    if type(client) is not str:
        raise invalid("client", "client must be a string")
    session.ready = True
    session.version = max(common)
    session.client = client[:200]
    session.client_max_frame = client_max
    return Outcome({
        "version": session.version,
        "max_frame": cfg.max_frame,
        "max_message": cfg.max_message,
        "max_batch": cfg.max_batch,
        "server": SERVER_NAME,
        "node": cfg.node_id,
        "shards": [{"queue": "*", "node": cfg.node_id, "addr": ctx.addr}],
    })


def ping(session: Session, args: dict[str, Any], ctx: Context) -> Outcome:
    return Outcome({"now_ms": ctx.now_ms})


def queue_create(session: Session, args: dict[str, Any], ctx: Context) -> Outcome:
    name = queue_name_arg(args)
    kind = args.get("kind", "fifo")
    if kind is None:
        kind = "fifo"
    if kind not in QueueKind.__members__.values():
        raise invalid("kind", "kind must be fifo, lifo or priority")
    shards = int_arg(args, "shards", 1, MIN_SHARDS, MAX_SHARDS)
    visibility = int_arg(args, "visibility_ms", DEFAULT_VISIBILITY_MS, 1, MAX_VISIBILITY_MS)
    max_attempts = int_arg(args, "max_attempts", 0, 0, 2**31 - 1)
    max_messages = int_arg(args, "max_messages", 0, 0, 2**63 - 1) or ctx.config.max_queue_messages
    dead_letter = args.get("dead_letter")
    if dead_letter is not None:
        dead_letter = queue_name_arg(args, "dead_letter")
        if dead_letter == name:
            raise invalid("dead_letter", "a queue cannot be its own dead-letter queue")
        if dead_letter not in ctx.state.queues:
            raise ProtocolError(ErrorCode.QUEUE_NOT_FOUND,
                                f"dead-letter queue {dead_letter!r} does not exist",
                                details={"field": "dead_letter", "queue": dead_letter})
    mutation = QueueCreate(name, str(kind), shards, visibility, max_attempts, dead_letter, max_messages)
    existing = ctx.state.queues.get(name)
    if existing is not None:
        s = existing.settings
        if (s.kind, s.shards, s.visibility_ms, s.max_attempts, s.dead_letter, s.max_messages) != (
            mutation.kind, shards, visibility, max_attempts, dead_letter, max_messages
        ):
            raise ProtocolError(ErrorCode.QUEUE_EXISTS,
                                f"queue {name!r} exists with different settings",
                                details={"queue": name})
        return Outcome({"queue": name, "created": False})
    if len(ctx.state.queues) >= ctx.config.max_queues:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {ctx.config.max_queues} queues",
                            details={"limit": ctx.config.max_queues})
    return Outcome({"queue": name, "created": True}, (mutation,))


def queue_delete(session: Session, args: dict[str, Any], ctx: Context) -> Outcome:
    queue = existing_queue(args, ctx)
    return Outcome({"queue": queue.name, "messages": len(queue)}, (QueueDelete(queue.name),))


def queue_list(session: Session, args: dict[str, Any], ctx: Context) -> Outcome:
    return Outcome({"queues": [q.stats() for _, q in sorted(ctx.state.queues.items())]})


def queue_stats(session: Session, args: dict[str, Any], ctx: Context) -> Outcome:
    return Outcome(existing_queue(args, ctx).stats())


_LIST, _BYTES, _ONE = {list}, {bytes}, {1}


def publish(session: Session, args: dict[str, Any], ctx: Context) -> Outcome:
    queue = existing_queue(args, ctx)
    entries = args.get("messages")
    if type(entries) is not list or not entries:
        raise invalid("messages", "messages must be a non-empty array")
    cfg = ctx.config
    count = len(entries)
    if count > cfg.max_batch:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {cfg.max_batch} messages per publish",
                            details={"field": "messages", "limit": cfg.max_batch})
    if len(queue.messages) + count > queue.settings.max_messages:
        raise ProtocolError(ErrorCode.QUEUE_FULL,
                            f"queue {queue.name!r} is full ({queue.settings.max_messages} messages)",
                            details={"queue": queue.name, "limit": queue.settings.max_messages})
    now = ctx.now_ms
    first = entries[0]
    if count == 1 and type(first) is list and len(first) == 1 and type(first[0]) is bytes:
        if len(first[0]) > cfg.max_message:
            _too_large([first[0]], cfg.max_message)
        mutation = plain_publish(queue.name, queue.next_id, now, [first[0]])
    elif set(map(type, entries)) == _LIST and set(map(len, entries)) == _ONE:
        # Plain messages: one column, checked with builtins (no Python call per entry).
        bodies = [b for (b,) in entries]
        if set(map(type, bodies)) != _BYTES:
            index = next(i for i, b in enumerate(bodies) if type(b) is not bytes)
            raise invalid(f"messages[{index}].body", "body must be binary (msgpack bin)")
        if max(map(len, bodies)) > cfg.max_message:
            _too_large(bodies, cfg.max_message)
        mutation = plain_publish(queue.name, queue.next_id, now, bodies)
    else:
        mutation = _publish_columns(queue, entries, now, cfg.max_message)
    return _outcome({"first_id": mutation.first_id, "count": count}, (mutation,))


def plain_single_publish(session: Session, args: dict[str, Any], ctx: Context,
                         ahead: int) -> tuple[Queue, bytes] | None:
    """The queue and body of a ``publish`` request that ``publish`` would accept as one
    plain message (no key, priority or delay) with ``ahead`` more messages already
    bound for the queue; ``None`` whenever any check might refuse it or it is of
    another shape (``dispatch`` then runs it and gives the error).

    Lets the server apply a run of such requests from one read as one publish: the
    same validation, the same mutation and applier, one call instead of one each.
    """
    if not session.ready or len(args) != 2:
        return None
    messages = args.get("messages")
    name = args.get("queue")
    if type(messages) is not list or len(messages) != 1 or type(name) is not str:
        return None
    entry = messages[0]
    if type(entry) is not list or len(entry) != 1:
        return None
    body = entry[0]
    if type(body) is not bytes or len(body) > ctx.config.max_message:
        return None
    queue = ctx.state.queues.get(name)
    if queue is None or len(queue.messages) + ahead + 1 > queue.settings.max_messages:
        return None
    return queue, body


def count_calls(op: str, n: int) -> None:
    """Count ``n`` requests of ``op`` run outside ``dispatch`` (see ``plain_single_publish``)."""
    COMMANDS[op].calls += n


def _too_large(bodies: list[bytes], limit: int) -> None:
    index = next(i for i, b in enumerate(bodies) if len(b) > limit)
    raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE,
                        f"message {index} has {len(bodies[index])} bytes; the limit is {limit}",
                        details={"index": index, "limit": limit})


def _publish_columns(queue: Queue, entries: list[Any], now: int, max_message: int) -> Publish:
    """Validate entries that may carry a key, priority or delay."""
    bodies: list[bytes] = []
    keys: list[bytes | None] = []
    priorities: list[int] = []
    ready_ats: list[int] = []
    for index, entry in enumerate(entries):
        if type(entry) is not list or not 1 <= len(entry) <= 4:
            raise invalid(f"messages[{index}]", "a message is an array [body, key, priority, delay_ms]")
        body, key, priority, delay = (entry + [None, None, None])[:4]
        if type(body) is not bytes:
            raise invalid(f"messages[{index}].body", "body must be binary (msgpack bin)")
        if key is not None and (type(key) is not bytes or len(key) > MAX_KEY):
            raise invalid(f"messages[{index}].key",
                          f"key must be binary (msgpack bin) of at most {MAX_KEY} bytes, or nil")
        if priority is None:
            priority = DEFAULT_PRIORITY
        elif type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise invalid(f"messages[{index}].priority",
                          f"priority must be an integer {MIN_PRIORITY}-{MAX_PRIORITY}")
        if delay is None:
            delay = 0
        elif type(delay) is not int or not 0 <= delay <= MAX_DELAY_MS:
            raise invalid(f"messages[{index}].delay_ms", f"delay_ms must be an integer 0-{MAX_DELAY_MS}")
        bodies.append(body)
        keys.append(key)
        priorities.append(priority)
        ready_ats.append(now + delay if delay else 0)
    if max(map(len, bodies)) > max_message:
        _too_large(bodies, max_message)
    return Publish(
        queue.name, queue.next_id, now, bodies,
        keys if any(k is not None for k in keys) else None,
        priorities if any(priorities) else None,
        ready_ats if any(ready_ats) else None,
    )


def consume(session: Session, args: dict[str, Any], ctx: Context) -> Outcome:
    queue = existing_queue(args, ctx)
    max_count = int_arg(args, "max", 1, 1, ctx.config.max_batch)
    visibility = int_arg(args, "visibility_ms", queue.settings.visibility_ms, 1, MAX_VISIBILITY_MS)
    wait_ms = int_arg(args, "wait_ms", 0, 0, MAX_WAIT_MS)
    chosen = queue.select(max_count, session.client_max_frame - REPLY_OVERHEAD)
    if not chosen:
        if wait_ms:
            return Outcome(wait=Wait(queue.name, wait_ms))
        return Outcome({"messages": []})
    deadline = ctx.now_ms + visibility
    deliveries = [[m.id, m.body, m.attempts + 1, m.key, m.priority] for m in chosen]
    return Outcome({"messages": deliveries}, (Lease(queue.name, deadline, [m.id for m in chosen]),))


def ack(session: Session, args: dict[str, Any], ctx: Context) -> Outcome:
    queue = existing_queue(args, ctx)
    ids = id_list_arg(args, ctx)
    msgs = queue.messages
    present = [i for i in ids if i in msgs]
    missing = [i for i in ids if i not in msgs] if len(present) != len(ids) else []
    mutations = (Ack(queue.name, present),) if present else ()
    return Outcome({"acked": len(present), "missing": missing}, mutations)


def nack(session: Session, args: dict[str, Any], ctx: Context) -> Outcome:
    queue = existing_queue(args, ctx)
    ids = id_list_arg(args, ctx)
    delay = int_arg(args, "delay_ms", 0, 0, MAX_DELAY_MS)
    msgs = queue.messages
    leased = [i for i in ids if (m := msgs.get(i)) is not None and m.state == LEASED]
    if len(leased) != len(ids):
        released = set(leased)
        missing = [i for i in ids if i not in released]
    else:
        missing = []
    ready_at = ctx.now_ms + delay if delay else 0
    mutations = (Release(queue.name, leased, ready_at, False, ctx.now_ms),) if leased else ()
    return Outcome({"released": len(leased), "missing": missing}, mutations)


def _command(op: Op, handler: Handler, fields: str, needs_handshake: bool = True,
             reads_state: bool = True) -> Command:
    return Command(str(op), handler, frozenset(fields.split()), needs_handshake, reads_state)


#: The registry. Each entry lists the argument names the op accepts.
COMMANDS: dict[str, Command] = {
    c.op: c
    for c in (
        _command(Op.HELLO, hello, "versions max_frame client", needs_handshake=False,
                 reads_state=False),
        _command(Op.PING, ping, "", reads_state=False),
        _command(Op.QUEUE_CREATE, queue_create,
                 "queue kind shards visibility_ms max_attempts dead_letter max_messages"),
        _command(Op.QUEUE_DELETE, queue_delete, "queue"),
        _command(Op.QUEUE_LIST, queue_list, ""),
        _command(Op.QUEUE_STATS, queue_stats, "queue"),
        _command(Op.PUBLISH, publish, "queue messages"),
        _command(Op.CONSUME, consume, "queue max visibility_ms wait_ms"),
        _command(Op.ACK, ack, "queue ids"),
        _command(Op.NACK, nack, "queue ids delay_ms"),
    )
}


#: Ops whose replies may be sent without waiting for the log.
STATELESS_OPS = frozenset(c.op for c in COMMANDS.values() if not c.reads_state)


def dispatch(session: Session, op: str, args: dict[str, Any], ctx: Context) -> Outcome:
    """Validate and run one request. Raises ProtocolError for any refusal."""
    command = COMMANDS.get(op)
    if command is None:
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}", details={"op": op})
    if command.needs_handshake and not session.ready:
        raise ProtocolError(ErrorCode.HANDSHAKE_REQUIRED, "send hello first")
    command.calls += 1
    if not command.fields.issuperset(args):
        command.errors += 1
        name = next(n for n in args if n not in command.fields)
        if type(name) is not str:
            raise invalid("args", "argument names must be strings")
        raise invalid(name, f"{op} takes no argument {name!r}")
    try:
        return command.handler(session, args, ctx)
    except ProtocolError:
        command.errors += 1
        raise
