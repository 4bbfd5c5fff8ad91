"""The command registry: one declaration per op.

A ``Command`` entry carries everything the live path needs to know about an op:

- ``args``: its argument schema, in the order SPEC.md checks them. Each ``Arg``
  validates one argument and yields its value (an existing queue yields the ``Queue``);
  the handler gets the validated values by name.
- ``admission``: what its records need from the log (``admission.AdmissionClass``).
- ``changes_state``: whether it may return mutations; ``reads_state``: whether its
  reply reveals queue state (then it is sent only once the log covers what it saw).
- ``batch``: its batch fast path, if it has one (a run of plain single-message
  publishes from one read becomes one mutation; ``live.Run``).
- ``permission``: what the user must hold on the queue or topic an argument names, with
  ``auth = "required"`` (SPEC §4.3); ``lookup`` checks it for every request (``denial``).

A handler takes the connection's ``Session``, the validated args and a ``Context``
(read-only state, the time, the limits) and returns an ``Outcome``: the reply, the
mutations that must be logged and applied before the reply is sent, or a ``Wait``
when a consume should be held until messages arrive. Handlers never change queue
state themselves and never touch sockets, trio or the WAL.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from itertools import islice
from dataclasses import astuple, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from msgpack import packb

from protocol import (
    DEFAULT_CREDIT,
    DEFAULT_DEDUP_WINDOW_MS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PRIORITY,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_MAX_DELAY_MS,
    MAX_DEDUP_ID,
    MAX_DEDUP_WINDOW_MS,
    MAX_DELAY_MS,
    MAX_ERROR_TEXT,
    MAX_KEY,
    MAX_PRIORITY,
    MAX_RETRY_DELAY_MS,
    MAX_RETRY_JITTER,
    MAX_SHARDS,
    MAX_SUBSCRIPTIONS,
    MAX_TTL_MS,
    MAX_VISIBILITY_MS,
    MAX_WAIT_MS,
    MIN_MAX_FRAME,
    MIN_PRIORITY,
    MIN_SHARDS,
    PROTOCOL_VERSIONS,
    ErrorCode,
    OnExpire,
    Op,
    Overflow,
    ProtocolError,
    QueueKind,
    RetryBackoff,
    valid_queue_name,
)
from protocol.ops import DEFAULT_VISIBILITY_MS, GROUP_SEPARATOR
from protocol.users import Permission

from .admission import AdmissionClass
from .config import BrokerConfig
from .mutations import (
    Ack,
    Evict,
    Extend,
    Lease,
    Mutation,
    Publish,
    Purge,
    QueueCreate,
    QueueDelete,
    Redrive,
    Reject,
    Release,
    plain_publish,
)
from .queue_groups import QueueGroup, group_arg, members, rotated, select_fair
from .queues import DELAYED, LEASED, PEEK_EXTRA, READY, WAITING, DeadLetter, Message, Queue, QueueSettings, take_fitting
from .topics import Topic, TopicCopy
from .state import BrokerState

if TYPE_CHECKING:
    from .auth import Authenticator

SERVER_NAME = "lockgate/0.1.0"
#: Most messages one ``redrive`` moves (its log record stays under 10 MB); call again for more.
REDRIVE_LIMIT = 1_000_000
#: Frame bytes a consume reply needs beyond its deliveries.
REPLY_OVERHEAD = 1024
#: ``queue_list`` and ``topic_list``: most entries per page, and the default (SPEC §5.5).
#: A page of 200 queues takes about 4 ms to build: one page is never a long stall.
MAX_LIST_PAGE = 200
_MISSING: Any = object()


class Pushing(Protocol):
    """A running subscription, as the ``unsubscribe`` handler sees it."""

    @property
    def unacked(self) -> int: ...
    def stop(self) -> None: ...


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
    #: Running subscriptions by id, and the id the next one gets.
    subscriptions: dict[int, Pushing] = field(default_factory=dict)
    next_subscription: int = 1
    #: Why the broker ends this connection, once it has decided to (for the log line).
    closing: str = ""
    #: With ``auth = "required"`` (``broker/auth.py``): the broker's authenticator, the
    #: user this connection authenticated as, a SCRAM exchange under way, and how long a
    #: failed authentication's reply waits.
    auth: Authenticator | None = None
    user: str = ""
    pending: Any = None
    auth_delay: float = 0.0
    #: Set when the broker closes the connection cleanly after this round's replies
    #: (a user over ``max_connections_per_user``).
    close_after: bool = False
    #: Where this connection's next read of a queue group starts (``queue_groups`` rule 2).
    group_turn: int = 0


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What ``broker_info`` reports of the running server beyond its state and config."""

    #: When the broker started serving, on its clock.
    started_ms: int
    #: Client connections open now.
    connections: int
    #: The WAL's segment files and their bytes now.
    wal_segments: int
    wal_bytes: int
    #: The memory budget and the bytes counted against it now (``membudget``).
    memory_budget: int = 0
    memory_used: int = 0


@dataclass(frozen=True, slots=True)
class Context:
    state: BrokerState
    config: BrokerConfig
    now_ms: int
    addr: str
    #: The running server's facts for ``broker_info``, read when asked (None: no server,
    #: as in tests that drive the commands alone).
    facts: Callable[[], ServerFacts] | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """Hold the consume until ``queue`` (or a queue of ``group``) gets ready messages or
    ``wait_ms`` passes."""

    queue: str
    wait_ms: int
    group: QueueGroup | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Start pushing ``queue`` to this connection as subscription ``subscription``."""

    subscription: int
    queue: str
    credit: int
    #: Lease length of pushed messages; None: the queue's.
    visibility_ms: int | None
    auto_ack: bool
    #: Several queues instead of ``queue`` (then empty), SPEC §8.15.
    group: QueueGroup | None = None


class Outcome(NamedTuple):
    """What a handler decided. Immutable; a NamedTuple because one is built per request
    and it costs less than half of a frozen dataclass (measured on the hot path)."""

    result: dict[str, Any] | None = None
    mutations: tuple[Mutation, ...] = ()
    #: A consume to hold, or a subscription to start (the reply goes out at once).
    wait: Wait | Subscribe | None = None


_tuple_new = tuple.__new__


def _outcome(result: dict[str, Any], mutations: tuple[Mutation, ...]) -> Outcome:
    """``Outcome(result, mutations)`` without the NamedTuple's Python-level ``__new__``
    (the publish path builds one per request)."""
    return _tuple_new(Outcome, (result, mutations, None))


Args = dict[str, Any]
Handler = Callable[[Session, Args, Context], Outcome]


# -- argument schema ----------------------------------------------------------------------

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
        topic, slash, group = name.partition(GROUP_SEPARATOR)
        if slash and valid_queue_name(topic) and valid_queue_name(group):  # a consumer group, SPEC §8.13
            what = f"topic {topic!r} has no group {group!r}" if topic in ctx.state.topics \
                else f"topic {topic!r} does not exist"
            raise ProtocolError(ErrorCode.QUEUE_NOT_FOUND, what,
                                details={"field": "queue", "queue": name, "topic": topic, "group": group})
    name = queue_name_arg(args)
    raise ProtocolError(ErrorCode.QUEUE_NOT_FOUND, f"queue {name!r} does not exist",
                        details={"field": "queue", "queue": name})


def _consumable(name: Any) -> bool:
    """A queue's name, or a consumer group's (``TOPIC/GROUP``)."""
    if type(name) is not str:
        return False
    topic, slash, group = name.partition(GROUP_SEPARATOR)
    return valid_queue_name(name) or bool(slash) and valid_queue_name(topic) and valid_queue_name(group)


def existing_topic(args: dict[str, Any], ctx: Context) -> Topic:
    name = args.get("topic")
    if type(name) is str:
        held = ctx.state.topics.get(name)
        if held is not None:
            return held
    name = queue_name_arg(args, "topic")
    raise ProtocolError(ErrorCode.QUEUE_NOT_FOUND, f"topic {name!r} does not exist",
                        details={"field": "topic", "topic": name})


def id_list_arg(args: dict[str, Any], ctx: Context, name: str = "ids") -> list[int]:
    ids = args.get(name)
    if type(ids) is not list or not ids:
        raise invalid(name, f"{name} must be a non-empty array of integers")
    if len(ids) > ctx.config.max_batch:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                            f"at most {ctx.config.max_batch} ids per request",
                            details={"field": name, "limit": ctx.config.max_batch})
    for i in ids:
        if type(i) is not int or not 0 <= i < 2**63:
            raise invalid(name, f"{name} must be integers from 0 to 2**63 - 1")
    return ids


def text_arg(args: dict[str, Any], name: str, limit: int) -> str | None:
    """A str of at most ``limit`` UTF-8 bytes, or None when absent or nil."""
    value = args.get(name)
    if value is None:
        return None
    if type(value) is not str:
        raise invalid(name, f"{name} must be a string")
    if len(value) > limit // 4 and len(value.encode()) > limit:
        raise invalid(name, f"{name} must be at most {limit} bytes of UTF-8")
    return value


def bool_arg(args: dict[str, Any], name: str, default: bool) -> bool:
    value = args.get(name)
    if value is None:
        return default
    if type(value) is not bool:
        raise invalid(name, f"{name} must be true or false")
    return value


#: A bound (default or limit) fixed in the schema, or computed from the context.
Bound = int | Callable[[Context], int]


@dataclass(frozen=True, slots=True)
class Arg:
    """One argument of an op: its name, what it is, its default and range.

    ``kind``: ``queue`` (an existing queue: yields the ``Queue``), ``queue_or_group``
    (that, or the ``QueueGroup`` its ``queues`` or ``prefix`` name), ``queue_name`` (a
    well-formed name), ``int`` (``lo``..``hi``; ``default`` absent means required),
    ``bool``, ``text`` (a str of at most ``hi`` UTF-8 bytes, or nil), ``choice`` (one
    of ``choices``), ``ids`` (1..``max_batch`` ids,
    duplicates dropped unless ``keep_duplicates``), or ``any`` (the handler checks it).
    A ``Bound`` that is a function is computed from the context; an ``int`` default of
    ``None`` stays ``None`` (the handler then picks, e.g. the queue's own value).
    """

    name: str
    kind: str
    default: Any = _MISSING
    lo: int = 0
    hi: Bound = 0
    choices: tuple[str, ...] = ()
    keep_duplicates: bool = False
    doc: str = ""

    def parse(self, args: dict[str, Any], ctx: Context) -> Any:
        kind = self.kind
        if kind == "queue":
            return existing_queue(args, ctx)
        if kind == "queue_or_group":
            if args.get("queues") is None and args.get("prefix") is None:
                return existing_queue(args, ctx)
            return group_arg(args, _consumable)
        if kind == "topic":
            return existing_topic(args, ctx)
        if kind == "int":
            hi = self.hi if type(self.hi) is int else self.hi(ctx)  # type: ignore[operator]
            return int_arg(args, self.name, self.default, self.lo, hi)
        if kind == "ids":
            if self.default is None and args.get(self.name) is None:
                return None
            ids = id_list_arg(args, ctx, self.name)
            return ids if self.keep_duplicates else list(dict.fromkeys(ids))
        if kind == "bool":
            return bool_arg(args, self.name, self.default)
        if kind == "text":
            return text_arg(args, self.name, self.hi)  # type: ignore[arg-type]
        if kind == "choice":
            value = args.get(self.name)
            if value is None:
                return self.default
            if value not in self.choices or type(value) is not str:
                raise invalid(self.name, f"{self.name} must be {_one_of(self.choices)}")
            return value
        if kind == "queue_name":
            if self.default is None and args.get(self.name) is None:
                return None
            return queue_name_arg(args, self.name)
        return args.get(self.name, self.default)


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]


#: The arguments of ``queue_list`` and ``topic_list`` (SPEC §5.5).
LIST_ARGS: tuple[Arg, ...] = (Arg("after", "queue_name", None), Arg("limit", "int", MAX_LIST_PAGE, 1, MAX_LIST_PAGE))


def _max_batch(ctx: Context) -> int:
    return ctx.config.max_batch


@dataclass(frozen=True, slots=True)
class Need:
    """A permission a request needs on the queue or topic its argument ``arg`` names (a
    consumer group ``TOPIC/GROUP``: its topic). Without that argument it needs nothing
    here: the op's own checks refuse the request."""

    permission: Permission
    arg: str


#: A request's needs computed from its arguments (``txn``: those of its steps), as
#: (permission, the argument's value).
NeedsOf = Callable[[dict[str, Any]], list[tuple[Permission, Any]]]


@dataclass(slots=True)
class Command:
    """One registry entry (see the module docs), with its counters."""

    op: str
    handler: Handler
    args: tuple[Arg, ...]
    admission: AdmissionClass = AdmissionClass.NONE
    changes_state: bool = False
    reads_state: bool = True
    needs_handshake: bool = True
    batch: Batch | None = None
    #: What its user must hold (SPEC §4.3); empty: any authenticated user may run it.
    permission: tuple[Need, ...] | NeedsOf = ()
    #: False for the one op a connection may send between ``hello`` and authenticating.
    needs_auth: bool = True
    #: The argument names it accepts (from ``args``).
    fields: frozenset[str] = field(init=False)
    #: An administrative op (it needs ``admin``): each one is logged with its user.
    audited: bool = field(init=False)
    calls: int = 0
    errors: int = 0

    def __post_init__(self) -> None:
        self.op = str(self.op)
        self.fields = frozenset(a.name for a in self.args)
        self.audited = not callable(self.permission) and any(
            n.permission is Permission.ADMIN for n in self.permission)
        if self.changes_state == (self.admission is AdmissionClass.NONE):
            raise ValueError(f"{self.op}: an op that changes state needs an admission class, "
                             "and one that does not must have none")

    def parse(self, args: dict[str, Any], ctx: Context) -> Args:
        """The validated values of ``args`` by name, checked in schema order."""
        return {a.name: a.parse(args, ctx) for a in self.args}


class Batch:
    """A command's batch fast path: consecutive requests of it from one read, each of a
    simple shape, run as one mutation. ``take`` accepts a request's raw args as one
    item of a run for ``key`` (None: not of that shape, or a check might refuse it;
    the request then runs alone and gets its error); ``build`` makes the run's
    mutations and each request's result. Validation and mutation are those of the
    command itself: the same state follows."""

    def take(self, session: Session, args: dict[str, Any], ctx: Context,
             ahead: int) -> tuple[Any, Any] | None:
        raise NotImplementedError

    def build(self, key: Any, items: list[Any], ctx: Context) -> tuple[tuple[Mutation, ...], list[dict[str, Any]]]:
        raise NotImplementedError


# -- handlers -----------------------------------------------------------------------------

def hello(session: Session, args: Args, ctx: Context) -> Outcome:
    versions = args["versions"]
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
    client = args["client"]
    if client is _MISSING:
        client = ""
    if type(client) is not str:
        raise invalid("client", "client must be a string")
    session.ready = session.auth is None or bool(session.user)
    session.version = max(common)
    session.client = client[:200]
    session.client_max_frame = client_max
    result = {
        "version": session.version,
        "max_frame": cfg.max_frame,
        "max_message": cfg.max_message,
        "max_batch": cfg.max_batch,
        "server": SERVER_NAME,
        "node": cfg.node_id,
        "shards": [{"queue": "*", "node": cfg.node_id, "addr": ctx.addr}],
    }
    if session.auth is not None:
        result["auth"] = session.auth.hello(session, args["auth"])
    return Outcome(result)


def auth(session: Session, args: Args, ctx: Context) -> Outcome:
    """Start or finish authenticating (``broker/auth.py``)."""
    if session.auth is None:
        raise invalid("mechanism", "this broker does not authenticate (auth is off)")
    return Outcome(session.auth.step(session, args))


def visible(session: Session, name: str) -> bool:
    """Whether ``queue_list`` and ``topic_list`` show ``name``: with auth, only to a user
    holding some permission on it."""
    if session.auth is None:
        return True
    user = session.auth.user(session.user)
    return user is not None and user.may_see(name)


def ping(session: Session, args: Args, ctx: Context) -> Outcome:
    return Outcome({"now_ms": ctx.now_ms})


def broker_info(session: Session, args: Args, ctx: Context) -> Outcome:
    """The broker's version, uptime, fsync policy, data directory, WAL size,
    connections and memory budget (SPEC §5.30)."""
    config = ctx.config
    facts = ctx.facts() if ctx.facts is not None else ServerFacts(ctx.now_ms, 0, 0, 0)
    groups = sum(GROUP_SEPARATOR in name for name in ctx.state.queues)
    return Outcome({
        "server": SERVER_NAME, "node": config.node_id, "now_ms": ctx.now_ms, "started_ms": facts.started_ms,
        "uptime_ms": max(0, ctx.now_ms - facts.started_ms), "fsync": str(config.fsync),
        "fsync_interval_ms": config.fsync_interval_ms, "data_dir": str(config.data_dir.absolute()),
        "wal_segments": facts.wal_segments, "wal_bytes": facts.wal_bytes, "connections": facts.connections,
        "queues": len(ctx.state.queues) - groups, "topics": len(ctx.state.topics), "groups": groups,
        "auth": config.auth, "memory_budget": facts.memory_budget, "memory_used": facts.memory_used,
    })


#: Settings a queue_create takes after the first seven, as QueueSettings declares them.
_LATER_SETTINGS = tuple(f.name for f in dataclass_fields(QueueSettings))[7:]


def queue_create(session: Session, args: Args, ctx: Context) -> Outcome:
    name = args["queue"]
    kind = args["kind"]
    shards = args["shards"]
    visibility = args["visibility_ms"]
    max_attempts = args["max_attempts"]
    max_messages = args["max_messages"] or ctx.config.max_queue_messages
    dead_letter = args["dead_letter"]
    if dead_letter is not None:
        if dead_letter == name:
            raise invalid("dead_letter", "a queue cannot be its own dead-letter queue")
        if dead_letter not in ctx.state.queues:
            raise ProtocolError(ErrorCode.QUEUE_NOT_FOUND,
                                f"dead-letter queue {dead_letter!r} does not exist",
                                details={"field": "dead_letter", "queue": dead_letter})
    if args["ordered"] and kind != QueueKind.FIFO:
        raise invalid("ordered", "only fifo queues can be ordered")
    later = {name_: args[name_] for name_ in _LATER_SETTINGS}
    settings = QueueSettings(name, kind, shards, visibility, max_attempts, dead_letter, max_messages, **later)
    existing = ctx.state.queues.get(name)
    if existing is not None:
        if existing.settings != settings:
            raise ProtocolError(ErrorCode.QUEUE_EXISTS,
                                f"queue {name!r} exists with different settings",
                                details={"queue": name})
        return Outcome({"queue": name, "created": False})
    mutation = QueueCreate(*astuple(settings))
    if len(ctx.state.queues) - len(ctx.state.group_queues) >= ctx.config.max_queues:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {ctx.config.max_queues} queues",
                            details={"limit": ctx.config.max_queues})
    return Outcome({"queue": name, "created": True}, (mutation,))


def queue_delete(session: Session, args: Args, ctx: Context) -> Outcome:
    queue: Queue = args["queue"]
    not_a_group(queue, "delete it with group_delete")
    return Outcome({"queue": queue.name, "messages": len(queue)}, (QueueDelete(queue.name, ctx.now_ms),))


def list_page(session: Session, args: Args, named: dict[str, Any], stats: Callable[[str], dict[str, Any]],
              field_: str, listed: Callable[[str], bool] = lambda name: True) -> Outcome:
    """One page of a list op (SPEC §5.5): the stats of the ``listed`` and visible names
    of ``named`` after ``args["after"]`` in byte order, at most ``args["limit"]`` of them
    and no more than fit in the client's max frame less ``REPLY_OVERHEAD`` (at least
    one); ``next`` is the last name given when more follow."""
    ordered = _sorted_names(named)
    after = args["after"]
    start = bisect_right(ordered, after) if after is not None else 0
    limit: int = args["limit"]
    room = session.client_max_frame - REPLY_OVERHEAD
    page: list[dict[str, Any]] = []
    last = None
    for name in islice(ordered, start, None):
        if not listed(name) or not visible(session, name):
            continue
        if len(page) == limit:
            return Outcome({field_: page, "next": last})
        entry = stats(name)
        room -= len(packb(entry, use_bin_type=True))
        if room < 0 and page:
            return Outcome({field_: page, "next": last})
        page.append(entry)
        last = name
    return Outcome({field_: page, "next": None})


#: The names of a dict of queues or topics, sorted, by the dict's id: paging through
#: 10,000 names sorts them once, not once a page.
_SORTED: dict[int, list[str]] = {}


def _sorted_names(named: dict[str, Any]) -> list[str]:
    """``sorted(named)``, from the cache while it holds the same names (as many, each
    still there: the same set)."""
    cached = _SORTED.get(id(named))
    if cached is not None and len(cached) == len(named) and all(name in named for name in cached):
        return cached
    if len(_SORTED) > 8:
        _SORTED.clear()
    ordered = _SORTED[id(named)] = sorted(named)
    return ordered


def queue_list(session: Session, args: Args, ctx: Context) -> Outcome:
    queues = ctx.state.queues
    return list_page(session, args, queues, lambda name: queues[name].stats(), "queues",
                     lambda name: GROUP_SEPARATOR not in name)


def queue_stats(session: Session, args: Args, ctx: Context) -> Outcome:
    return Outcome(args["queue"].stats())


def queue_purge(session: Session, args: Args, ctx: Context) -> Outcome:
    queue: Queue = args["queue"]
    not_a_group(queue, "move it on with group_seek")
    leased: bool = args["leased"]
    result = {"queue": queue.name, "ready": queue.ready, "delayed": queue.delayed,
              "leased": queue.leased if leased else 0, "waiting": queue.waiting}
    if not (result["ready"] or result["delayed"] or result["leased"] or result["waiting"]):
        return Outcome(result)
    return Outcome(result, (Purge(queue.name, leased, ctx.now_ms),))


_LIST, _BYTES, _ONE = {list}, {bytes}, {1}


def publish(session: Session, args: Args, ctx: Context) -> Outcome:
    queue: Queue = args["queue"]
    entries = args["messages"]
    not_a_group(queue, "publish to its topic with topic_publish")
    if type(entries) is not list or not entries:
        raise invalid("messages", "messages must be a non-empty array")
    cfg = ctx.config
    count = len(entries)
    if count > cfg.max_batch:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {cfg.max_batch} messages per publish",
                            details={"field": "messages", "limit": cfg.max_batch})
    if len(queue.messages) + count > queue.settings.max_messages and queue.arrivals is None \
            and not _room_without_duplicates(queue, entries, ctx.now_ms):
        raise _queue_full(queue, "max_messages")
    if queue.bounds_checked:
        return _within_bounds(queue, _publish_outcome(queue, entries, count, ctx), ctx.now_ms)
    return _publish_outcome(queue, entries, count, ctx)


def _publish_outcome(queue: Queue, entries: list[Any], count: int, ctx: Context) -> Outcome:
    """``publish`` past the checks of the request as a whole (SPEC §5.7 checks 1-4)."""
    cfg = ctx.config
    now = ctx.now_ms
    first = entries[0]
    if queue.default_ttl:  # every message gets an expiry: not plain (records.py rule 2)
        return _publish_entries(queue, entries, now, cfg.max_message, ctx.state.queues)
    elif count == 1 and type(first) is list and len(first) == 1 and type(first[0]) is bytes:
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
    elif set(map(type, entries)) == _LIST and set(map(len, entries)) == _SIX and queue.settings.dedup_window_ms:
        found = _deduplicated_columns(queue, entries, now, cfg.max_message)
        return found if found is not None else _publish_entries(queue, entries, now, cfg.max_message, ctx.state.queues)
    else:
        return _publish_entries(queue, entries, now, cfg.max_message, ctx.state.queues)
    return _outcome({"first_id": mutation.first_id, "count": count}, (mutation,))


_SIX, _NONE = {6}, {None}


def _deduplicated_columns(queue: Queue, entries: list[list[Any]], now: int, max_message: int) -> Outcome | None:
    """Entries ``[body, nil, nil, nil, nil, dedup_id]`` checked by column with builtins
    (no Python call per entry), when every dedup id is new: well-formed, distinct, and
    none held by the window. None when any entry is otherwise: ``_publish_entries`` then
    checks them one by one and says which (or finds the duplicates)."""
    bodies, keys, priorities, delays, ttls, dedup_ids = map(list, zip(*entries))
    if not (_NONE.issuperset(keys) and _NONE.issuperset(priorities) and _NONE.issuperset(delays)
            and _NONE.issuperset(ttls)):
        return None
    if set(map(type, bodies)) != _BYTES or set(map(type, dedup_ids)) != _BYTES \
            or max(map(len, bodies)) > max_message:
        return None
    lengths = set(map(len, dedup_ids))
    if min(lengths) < 1 or max(lengths) > MAX_DEDUP_ID or len(set(dedup_ids)) != len(dedup_ids):
        return None
    held = queue.dedup
    if not held.keys().isdisjoint(dedup_ids) and any(
            queue.dedup.duplicate_of(d, now) is not None for d in dedup_ids if d in held):
        return None
    first_id = queue.next_id
    return _outcome({"first_id": first_id, "count": len(bodies)}, (Publish(
        queue.name, first_id, now, bodies, None, None, None, None, dedup_ids),))


def _queue_full(queue: Queue, bound: str) -> ProtocolError:
    limit = getattr(queue.settings, bound)
    unit = "messages" if bound == "max_messages" else "bytes"
    return ProtocolError(ErrorCode.QUEUE_FULL, f"queue {queue.name!r} is full ({limit} {unit})",
                         details={"queue": queue.name, "limit": limit, "bound": bound})


def _within_bounds(queue: Queue, outcome: Outcome, now: int) -> Outcome:
    """A publish to a queue with a byte bound or an eviction policy (SPEC §8.12): refused
    with QUEUE_FULL past a bound under ``reject``; otherwise it first evicts the oldest
    messages that are not leased, in the same request, or is refused if that cannot
    make room."""
    added = [m for m in outcome.mutations if type(m) is Publish]
    if not added:
        return outcome  # every entry a duplicate: nothing stored
    bodies = added[0].bodies
    nbytes = sum(map(len, bodies))
    settings = queue.settings
    if queue.arrivals is None:  # reject: the count was checked before the entries
        if queue.bytes + nbytes > settings.max_bytes:
            raise _queue_full(queue, "max_bytes")
        return outcome
    evict = queue.to_evict(len(bodies), nbytes)
    if evict is None:
        raise _queue_full(queue, _bound_missed(queue, len(bodies), nbytes))
    if not evict:
        return outcome
    return Outcome(outcome.result, (Evict(queue.name, evict, now), *outcome.mutations))


def _bound_missed(queue: Queue, count: int, nbytes: int) -> str:
    """Which bound ``count`` messages of ``nbytes`` cannot fit in, evictions or not."""
    settings = queue.settings
    if count > settings.max_messages:
        return "max_messages"
    if settings.max_bytes and nbytes > settings.max_bytes:
        return "max_bytes"
    return "max_messages" if len(queue.messages) + count > settings.max_messages else "max_bytes"


class PlainPublishes(Batch):
    """``publish``'s batch fast path: requests of exactly one message, plain (no key,
    priority, delay or time to live) or with only a dedup id, to one queue, run as one
    publish with consecutive ids (duplicates of the window or of earlier requests of the
    run store nothing, SPEC §8.9); each request's result is as if it had run alone."""

    def take(self, session: Session, args: dict[str, Any], ctx: Context,
             ahead: int) -> tuple[Queue, bytes | tuple[bytes, bytes]] | None:
        """The queue and the body (or (body, dedup id)), when ``publish`` would accept the
        request as one such message with ``ahead`` more messages already bound for the
        queue (duplicates among them counted as stored: a bound never passes)."""
        if not session.ready or len(args) != 2:
            return None
        messages = args.get("messages")
        name = args.get("queue")
        if type(messages) is not list or len(messages) != 1 or type(name) is not str:
            return None
        entry = messages[0]
        if type(entry) is not list:
            return None
        size = len(entry)
        if size == 1:
            dedup_id = None
        elif size == 6 and entry[1] is None and entry[2] is None and entry[3] is None and entry[4] is None:
            dedup_id = entry[5]
            if type(dedup_id) is not bytes or not 1 <= len(dedup_id) <= MAX_DEDUP_ID:
                return None
        else:
            return None
        body = entry[0]
        if type(body) is not bytes or len(body) > ctx.config.max_message:
            return None
        queue = ctx.state.queues.get(name)
        if queue is None or len(queue.messages) + ahead + 1 > queue.plain_limit:  # -1 with a default ttl
            return None
        if dedup_id is None or not queue.settings.dedup_window_ms:  # without a window it is ignored
            return queue, body
        return queue, (body, dedup_id)

    def build(self, key: Queue, items: list[bytes | tuple[bytes, bytes]],
              ctx: Context) -> tuple[tuple[Mutation, ...], list[dict[str, Any]]]:
        if _BYTES.issuperset(map(type, items)):  # all plain
            bodies: list[bytes] = items  # type: ignore[assignment]
            mutation = plain_publish(key.name, key.next_id, ctx.now_ms, bodies)
            first = mutation.first_id
            return (mutation,), [{"first_id": first + i, "count": 1} for i in range(len(bodies))]
        return _deduplicated_run(key, items, ctx.now_ms)


def _deduplicated_run(queue: Queue, items: list[bytes | tuple[bytes, bytes]],
                      now: int) -> tuple[tuple[Mutation, ...], list[dict[str, Any]]]:
    """A run of single-message publishes, some with a dedup id, as ``_publish_entries``
    would store them one request after another: one publish of those not duplicates."""
    next_id = queue.next_id
    bodies: list[bytes] = []
    dedup_ids: list[bytes | None] = []
    results: list[dict[str, Any]] = []
    #: Dedup ids stored by earlier requests of the run -> the ids they got.
    stored: dict[bytes, int] = {}
    for item in items:
        if type(item) is tuple:
            body, dedup_id = item
            earlier = queue.dedup.first_of(dedup_id, now, stored)
            if earlier is not None:
                results.append({"first_id": next_id + len(bodies), "count": 0, "duplicates": [[0, earlier]]})
                continue
            stored[dedup_id] = next_id + len(bodies)
        else:
            body, dedup_id = item, None  # type: ignore[assignment]
        results.append({"first_id": next_id + len(bodies), "count": 1})
        bodies.append(body)
        dedup_ids.append(dedup_id)
    if not bodies:
        return (), results
    return (Publish(queue.name, next_id, now, bodies, None, None, None, None, dedup_ids),), results


def _too_large(bodies: list[bytes], limit: int) -> None:
    index = next(i for i, b in enumerate(bodies) if len(b) > limit)
    raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE,
                        f"message {index} has {len(bodies[index])} bytes; the limit is {limit}",
                        details={"index": index, "limit": limit})


def _publish_entries(queue: Queue, entries: list[Any], now: int, max_message: int,
                     queues: dict[str, Queue]) -> Outcome:
    """Validate entries that may carry a key, priority, delay, time to live, dedup id or
    dependencies, and publish those that are not duplicates (SPEC §8.9)."""
    bodies: list[bytes] = []
    keys: list[bytes | None] = []
    priorities: list[int] = []
    ready_ats: list[int] = []
    expiries: list[int] = []
    dedup_ids: list[bytes | None] = []
    depends_on: list[list[list[Any]] | None] = []
    duplicates: list[list[int]] = []
    #: Dedup ids of this request's stored entries -> the ids they get.
    batch: dict[bytes, int] = {}
    sizes: list[bytes] = []
    default_ttl = queue.default_ttl
    dedup = queue.settings.dedup_window_ms > 0
    next_id = queue.next_id
    for index, entry in enumerate(entries):
        if type(entry) is not list or not 1 <= len(entry) <= 8:
            raise invalid(f"messages[{index}]", "a message is an array "
                          "[body, key, priority, delay_ms, ttl_ms, dedup_id, deliver_at, after]")
        body, key, priority, delay, ttl, dedup_id, deliver_at, after = (entry + [None] * 7)[:8]
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
        if ttl is None:
            ttl = default_ttl
        elif type(ttl) is not int or not 1 <= ttl <= MAX_TTL_MS:
            raise invalid(f"messages[{index}].ttl_ms", f"ttl_ms must be an integer 1-{MAX_TTL_MS}, or nil")
        if dedup_id is not None and (type(dedup_id) is not bytes or not 1 <= len(dedup_id) <= MAX_DEDUP_ID):
            raise invalid(f"messages[{index}].dedup_id",
                          f"dedup_id must be binary (msgpack bin) of 1 to {MAX_DEDUP_ID} bytes, or nil")
        if deliver_at is not None:
            if type(deliver_at) is not int or not 0 <= deliver_at <= now + MAX_DELAY_MS or delay:
                raise invalid(f"messages[{index}].deliver_at",
                              f"deliver_at must be a time in ms at most {MAX_DELAY_MS} ms from now, "
                              "or nil, and not given with delay_ms")
            delay = max(deliver_at - now, 0)
        if after is not None:
            after = _dependencies(after, f"messages[{index}].after", queue, next_id + len(bodies), queues)
        sizes.append(body)
        if dedup and dedup_id is not None:
            earlier = queue.dedup.first_of(dedup_id, now, batch)
            if earlier is not None:
                duplicates.append([index, earlier])
                continue
            batch[dedup_id] = next_id + len(bodies)
        else:
            dedup_id = None
        bodies.append(body)
        keys.append(key)
        priorities.append(priority)
        ready_ats.append(now + delay if delay else 0)
        expiries.append(now + ttl if ttl else 0)
        dedup_ids.append(dedup_id)
        depends_on.append(after or None)
    if max(map(len, sizes)) > max_message:
        _too_large(sizes, max_message)
    result: dict[str, Any] = {"first_id": next_id, "count": len(bodies)}
    if duplicates:
        result["duplicates"] = duplicates
    if not bodies:
        return Outcome(result)  # all duplicates: nothing to log
    return _outcome(result, (Publish(
        queue.name, next_id, now, bodies,
        keys if any(k is not None for k in keys) else None,
        priorities if any(priorities) else None,
        ready_ats if any(ready_ats) else None,
        expiries if any(expiries) else None,
        dedup_ids if batch else None,
        depends_on if any(d is not None for d in depends_on) else None,
    ),))


#: Most dependencies of one message (SPEC §8.14).
MAX_DEPENDENCIES = 64


def _dependencies(value: Any, field: str, queue: Queue, next_id: int, queues: dict[str, Queue]) -> list[list[Any]]:
    """An entry's ``after``: up to ``MAX_DEPENDENCIES`` distinct ``[queue, id]`` pairs,
    each naming a queue that exists (not a consumer group) and an id it has given out, or
    in ``queue`` an id given out earlier in this publish (next to get: ``next_id``)."""
    if type(value) is not list or len(value) > MAX_DEPENDENCIES:
        raise invalid(field, f"after must be an array of at most {MAX_DEPENDENCIES} [queue, id] pairs, or nil")
    pairs: list[list[Any]] = []
    for pair in value:
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str or type(pair[1]) is not int:
            raise invalid(field, "each dependency is a [queue, id] pair")
        name, mid = pair
        held = queues.get(name)
        limit = next_id if name == queue.name else (held.next_id if held is not None else 0)
        if held is None or GROUP_SEPARATOR in name or not 1 <= mid < limit:
            raise invalid(field, f"no message {mid} was published to queue {name!r}")
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def _room_without_duplicates(queue: Queue, entries: list[Any], now: int) -> bool:
    """Whether the queue has room for the entries that are not duplicates (SPEC §5.7 check
    4), counting as duplicates only well-formed dedup ids of entries of 6 or 7 elements."""
    if not queue.settings.dedup_window_ms:
        return False
    seen: set[bytes] = set()
    duplicates = 0
    for entry in entries:
        dedup_id = entry[5] if type(entry) is list and 6 <= len(entry) <= 8 else None
        if type(dedup_id) is bytes and 1 <= len(dedup_id) <= MAX_DEDUP_ID:
            if dedup_id in seen or queue.dedup.duplicate_of(dedup_id, now) is not None:
                duplicates += 1
            else:
                seen.add(dedup_id)
    return len(queue.messages) + len(entries) - duplicates <= queue.settings.max_messages


def delivery_row(m: Message) -> list[Any]:
    """A message as a delivery (SPEC §5.8), as it is about to be leased; a consumer
    group's (SPEC §8.13) adds its shard, offset and headers."""
    if type(m) is TopicCopy:
        return [m.id, m.body, m.attempts + 1, m.key, m.priority, m.published_at, m.shard, m.offset, m.headers]
    return [m.id, m.body, m.attempts + 1, m.key, m.priority, m.published_at]


def not_a_group(queue: Queue, why: str) -> None:
    """Refuse an op that does not apply to a consumer group's delivery queue."""
    if GROUP_SEPARATOR in queue.name:
        raise invalid("queue", f"{queue.name!r} is a consumer group: {why}")


def consume(session: Session, args: Args, ctx: Context) -> Outcome:
    queue: Queue | QueueGroup = args["queue"]
    if type(queue) is QueueGroup:
        return _consume_group(session, queue, args, ctx)
    assert type(queue) is Queue
    visibility = args["visibility_ms"]
    if visibility is None:
        visibility = queue.settings.visibility_ms
    chosen = queue.select(args["max"], session.client_max_frame - REPLY_OVERHEAD, ctx.now_ms)
    if not chosen:
        if args["wait_ms"]:
            return Outcome(wait=Wait(queue.name, args["wait_ms"]))
        return Outcome({"messages": []})
    deadline = ctx.now_ms + visibility
    deliveries = [delivery_row(m) for m in chosen]
    return Outcome({"messages": deliveries}, (Lease(queue.name, deadline, [m.id for m in chosen]),))


def may_consume(session: Session) -> Callable[[str], bool]:
    """Whether the session's user may consume from a queue (any queue without auth)."""
    auth = session.auth
    if auth is None:
        return lambda name: True
    user = auth.user(session.user)
    return lambda name: user is not None and user.may(Permission.CONSUME, name.partition(GROUP_SEPARATOR)[0])


def _consume_group(session: Session, group: QueueGroup, args: Args, ctx: Context) -> Outcome:
    """``consume`` of a queue group (SPEC §8.15): fair shares of its members' ready
    messages, each leased in its own queue; the reply names each message's queue."""
    found = members(group, ctx.state.queues, may_consume(session))
    session.group_turn += 1
    picked = select_fair(rotated(found, session.group_turn - 1), args["max"],
                         session.client_max_frame - REPLY_OVERHEAD, ctx.now_ms)
    if not picked:
        if args["wait_ms"]:
            return Outcome(wait=Wait("", args["wait_ms"], group))
        return Outcome({"messages": [], "queues": []})
    visibility = args["visibility_ms"]
    rows: list[list[Any]] = []
    names: list[str] = []
    leases: list[Mutation] = []
    for queue, chosen in picked:
        lease_ms = queue.settings.visibility_ms if visibility is None else visibility
        rows += [delivery_row(m) for m in chosen]
        names += [queue.name] * len(chosen)
        leases.append(Lease(queue.name, ctx.now_ms + lease_ms, [m.id for m in chosen]))
    return Outcome({"messages": rows, "queues": names}, tuple(leases))


def ack(session: Session, args: Args, ctx: Context) -> Outcome:
    queue: Queue = args["queue"]
    ids: list[int] = args["ids"]
    msgs = queue.messages
    present = [i for i in ids if i in msgs]
    missing = [i for i in ids if i not in msgs] if len(present) != len(ids) else []
    mutations = (Ack(queue.name, present),) if present else ()
    return Outcome({"acked": len(present), "missing": missing}, mutations)


def nack(session: Session, args: Args, ctx: Context) -> Outcome:
    queue: Queue = args["queue"]
    ids: list[int] = args["ids"]
    delay = args["delay_ms"]
    msgs = queue.messages
    leased = [i for i in ids if (m := msgs.get(i)) is not None and m.state == LEASED]
    if len(leased) != len(ids):
        released = set(leased)
        missing = [i for i in ids if i not in released]
    else:
        missing = []
    returned: bool = args["returned"]
    if returned and delay:
        raise invalid("returned", "a message given back unhandled is ready at once: no delay_ms")
    ready_at = ctx.now_ms + delay if delay else 0
    mutations = (Release(queue.name, leased, ready_at, False, ctx.now_ms, args["error"],
                         returned, returned),) if leased else ()
    return Outcome({"released": len(leased), "missing": missing}, mutations)


def _leased(queue: Queue, ids: list[int]) -> tuple[list[int], list[int]]:
    """(the leased ones among ``ids``, the others), each in request order."""
    msgs = queue.messages
    leased = [i for i in ids if (m := msgs.get(i)) is not None and m.state == LEASED]
    if len(leased) == len(ids):
        return leased, []
    chosen = set(leased)
    return leased, [i for i in ids if i not in chosen]


def extend(session: Session, args: Args, ctx: Context) -> Outcome:
    queue: Queue = args["queue"]
    visibility = args["visibility_ms"]
    if visibility is None:
        visibility = queue.settings.visibility_ms
    leased, missing = _leased(queue, args["ids"])
    mutations = (Extend(queue.name, ctx.now_ms + visibility, leased),) if leased else ()
    return Outcome({"extended": len(leased), "missing": missing}, mutations)


def reject(session: Session, args: Args, ctx: Context) -> Outcome:
    queue: Queue = args["queue"]
    leased, missing = _leased(queue, args["ids"])
    mutations = (Reject(queue.name, leased, args["error"], ctx.now_ms),) if leased else ()
    return Outcome({"rejected": len(leased), "missing": missing}, mutations)


def redrive(session: Session, args: Args, ctx: Context) -> Outcome:
    dlq: Queue = args["queue"]
    ids: list[int] | None = args["ids"]
    limit: int | None = args["max"]
    if ids is not None and limit is not None:
        raise invalid("ids", "give ids or max, not both")
    state = ctx.state
    if ids is None:
        candidates: list[int] = sorted(dlq.messages)
        limit = REDRIVE_LIMIT if limit is None else min(limit, REDRIVE_LIMIT)
    else:
        candidates, limit = ids, len(ids)
    chosen: list[int] = []
    counts: dict[str, int] = {}
    skipped = 0
    for mid in candidates:
        if len(chosen) >= limit:
            break
        target = state.redrive_target(dlq, mid)
        if target is None:
            skipped += 1
            continue
        chosen.append(mid)
        counts[target.name] = counts.get(target.name, 0) + 1
    result = {"redriven": len(chosen), "queues": counts, "skipped": skipped}
    return Outcome(result, (Redrive(dlq.name, chosen, ctx.now_ms),) if chosen else ())


def subscribe(session: Session, args: Args, ctx: Context) -> Outcome:
    queue: Queue | QueueGroup = args["queue"]
    if len(session.subscriptions) >= MAX_SUBSCRIPTIONS:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection",
                            details={"limit": MAX_SUBSCRIPTIONS})
    sid = session.next_subscription
    session.next_subscription += 1
    if type(queue) is QueueGroup:
        members(queue, ctx.state.queues, may_consume(session))  # refuse a group that cannot be read
        start = Subscribe(sid, "", args["credit"], args["visibility_ms"], args["auto_ack"], queue)
        named: dict[str, Any] = {"queues": list(queue.queues)} if queue.prefix is None else {"prefix": queue.prefix}
        return Outcome({"subscription": sid, **named}, wait=start)
    assert type(queue) is Queue
    start = Subscribe(sid, queue.name, args["credit"], args["visibility_ms"], args["auto_ack"])
    return Outcome({"subscription": sid, "queue": queue.name}, wait=start)


def unsubscribe(session: Session, args: Args, ctx: Context) -> Outcome:
    sid: int = args["subscription"]
    running = session.subscriptions.pop(sid, None)
    if running is None:
        raise invalid("subscription", f"this connection has no subscription {sid}")
    running.stop()
    return Outcome({"subscription": sid, "unacked": running.unacked})


#: Message states by their wire names (``peek``, ``message_status``).
STATE_NAMES = {READY: "ready", LEASED: "leased", DELAYED: "delayed", WAITING: "waiting"}
_STATES = {name: state for state, name in STATE_NAMES.items()}


def peek(session: Session, args: Args, ctx: Context) -> Outcome:
    queue: Queue = args["queue"]
    if args["dead_letter"]:
        queue = _dead_letter_queue(queue, ctx)
    state = None if args["state"] is None else _STATES[args["state"]]
    names, sources = STATE_NAMES, queue.sources

    def row_extra(msg: Message) -> int:
        record = sources.get(msg.id)
        return PEEK_EXTRA if record is None else PEEK_EXTRA + record.wire_size()

    chosen = take_fitting(queue.peek(state), args["max"], session.client_max_frame - REPLY_OVERHEAD,
                          row_extra)
    return Outcome({"queue": queue.name, "messages": [
        [m.id, m.body, m.attempts, m.key, m.priority, names[m.state], m.deadline,
         _dead_letter_info(sources.get(m.id)), m.published_at] for m in chosen]})


def _dead_letter_info(record: DeadLetter | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"queue": record.source, "id": record.source_id, "attempts": record.attempts,
            "reason": record.reason, "error": record.error, "at_ms": record.at_ms}


def _dead_letter_queue(queue: Queue, ctx: Context) -> Queue:
    name = queue.settings.dead_letter
    if name is None:
        raise invalid("dead_letter", f"queue {queue.name!r} has no dead-letter queue")
    target = ctx.state.queues.get(name)
    if target is None:
        raise ProtocolError(ErrorCode.QUEUE_NOT_FOUND, f"dead-letter queue {name!r} does not exist",
                            details={"field": "dead_letter", "queue": name})
    return target


def message_status(session: Session, args: Args, ctx: Context) -> Outcome:
    queue: Queue = args["queue"]
    dlq_name = queue.settings.dead_letter
    dlq = ctx.state.queues.get(dlq_name) if dlq_name is not None else None
    return Outcome({"statuses": [_status(queue, dlq, i) for i in args["ids"]]})


def _status(queue: Queue, dlq: Queue | None, mid: int) -> dict[str, Any]:
    msg = queue.messages.get(mid)
    if msg is not None:
        status = {"id": mid, "state": STATE_NAMES[msg.state], "queue": queue.name,
                  "attempts": msg.attempts, "until_ms": msg.deadline,
                  "expires_at_ms": queue.expires.get(mid, 0), "published_at": msg.published_at}
        if msg.state == WAITING:
            status["waits_on"] = sorted(map(list, queue.waits_on[mid]))
        return status
    if dlq is not None:
        dead_id = dlq.dead_letter_of(queue.name, mid)
        if dead_id is not None:
            dead: Message = dlq.messages[dead_id]
            record = dlq.sources[dead_id]
            return {"id": mid, "state": "dead_lettered", "queue": dlq.name,
                    "attempts": dead.attempts, "until_ms": 0,
                    "expires_at_ms": dlq.expires.get(dead_id, 0), "dead_letter_id": dead_id,
                    "reason": record.reason, "error": record.error,
                    "dead_lettered_at_ms": record.at_ms, "published_at": dead.published_at}
    state = "gone" if 0 < mid < queue.next_id else "unknown"
    return {"id": mid, "state": state, "queue": queue.name, "attempts": 0, "until_ms": 0,
            "expires_at_ms": 0, "published_at": 0}


# -- the registry -----------------------------------------------------------------------

_QUEUE = Arg("queue", "queue", doc="An existing queue.")
_IDS = Arg("ids", "ids", doc="1..max_batch message ids.")
_ERROR = Arg("error", "text", hi=MAX_ERROR_TEXT, doc="The consumer's error text.")
#: What the queue ops need of their user (SPEC §4.3).
def _publishes(args: dict[str, Any]) -> list[tuple[Permission, Any]]:
    """``publish`` needs ``publish`` on its queue, and ``consume`` on every queue its
    entries' ``after`` names (a dependency reveals whether that message was acked)."""
    needs: list[tuple[Permission, Any]] = [(Permission.PUBLISH, args.get("queue"))]
    messages = args.get("messages")
    for entry in messages if type(messages) is list else ():
        if type(entry) is list and len(entry) > 7 and type(entry[7]) is list:
            needs += [(Permission.CONSUME, pair[0]) for pair in entry[7]
                      if type(pair) is list and pair and type(pair[0]) is str]
    return list(dict.fromkeys(needs)) if len(needs) > 1 else needs
_CONSUMES = (Need(Permission.CONSUME, "queue"),)


def _consumes_group(args: dict[str, Any]) -> list[tuple[Permission, Any]]:
    """``consume`` and ``subscribe`` need ``consume`` on their queue, or on each queue a
    ``queues`` group names (a ``prefix`` group reads only the queues its user may
    consume from: ``queue_groups`` rule 1)."""
    queues = args.get("queues")
    if type(queues) is list:
        return [(Permission.CONSUME, name) for name in queues]
    return [(Permission.CONSUME, args.get("queue"))]


#: The queue of ``consume`` and ``subscribe``, or the group they read instead (SPEC §8.15).
_QUEUE_OR_GROUP = (
    Arg("queue", "queue_or_group", doc="An existing queue; or instead queues or prefix."),
    Arg("queues", "any", default=None, doc="A queue group: 1..1000 existing queues."),
    Arg("prefix", "any", default=None, doc="A queue group: the queues whose names start with it."),
)
_ADMINISTERS = (Need(Permission.ADMIN, "queue"),)

#: The registry: every op, declared once.
COMMANDS: dict[str, Command] = {
    c.op: c
    for c in (
        Command(Op.HELLO, hello, (Arg("versions", "any"), Arg("max_frame", "any"),
                                  Arg("client", "any", default=_MISSING), Arg("auth", "any", default=None)),
                reads_state=False, needs_handshake=False),
        Command(Op.AUTH, auth, tuple(Arg(name, "any", default=None)
                                     for name in ("mechanism", "client_first", "token", "client_final")),
                reads_state=False, needs_auth=False),
        Command(Op.PING, ping, (), reads_state=False),
        Command(Op.BROKER_INFO, broker_info, ()),
        Command(Op.QUEUE_CREATE, queue_create, (
            Arg("queue", "queue_name"),
            Arg("kind", "choice", default="fifo", choices=tuple(QueueKind)),
            Arg("shards", "int", default=1, lo=MIN_SHARDS, hi=MAX_SHARDS),
            Arg("visibility_ms", "int", default=DEFAULT_VISIBILITY_MS, lo=1, hi=MAX_VISIBILITY_MS),
            Arg("max_attempts", "int", default=DEFAULT_MAX_ATTEMPTS, lo=0, hi=2**31 - 1),
            Arg("max_messages", "int", default=0, lo=0, hi=2**63 - 1),
            Arg("retry_delay_ms", "int", default=0, lo=0, hi=MAX_RETRY_DELAY_MS),
            Arg("retry_backoff", "choice", default=str(DEFAULT_RETRY_BACKOFF), choices=tuple(RetryBackoff)),
            Arg("retry_max_delay_ms", "int", default=DEFAULT_RETRY_MAX_DELAY_MS, lo=0, hi=MAX_RETRY_DELAY_MS),
            Arg("retry_jitter", "int", default=0, lo=0, hi=MAX_RETRY_JITTER),
            Arg("ttl_ms", "int", default=0, lo=0, hi=MAX_TTL_MS),
            Arg("on_expire", "choice", default=str(OnExpire.DROP), choices=tuple(OnExpire)),
            Arg("dedup_window_ms", "int", default=DEFAULT_DEDUP_WINDOW_MS, lo=0, hi=MAX_DEDUP_WINDOW_MS),
            Arg("ordered", "bool", default=False),
            Arg("max_bytes", "int", default=0, lo=0, hi=2**63 - 1),
            Arg("overflow", "choice", default=str(Overflow.REJECT), choices=tuple(Overflow)),
            Arg("dead_letter", "queue_name", default=None),
        ), AdmissionClass.LOG, changes_state=True,
                permission=(Need(Permission.ADMIN, "queue"), Need(Permission.PUBLISH, "dead_letter"))),
        Command(Op.QUEUE_DELETE, queue_delete, (_QUEUE,), AdmissionClass.LOG, changes_state=True,
                permission=_ADMINISTERS),
        Command(Op.QUEUE_LIST, queue_list, LIST_ARGS),
        Command(Op.QUEUE_STATS, queue_stats, (_QUEUE,), permission=_CONSUMES),
        Command(Op.QUEUE_PURGE, queue_purge, (_QUEUE, Arg("leased", "bool", default=False)),
                AdmissionClass.LOG, changes_state=True, permission=_ADMINISTERS),
        Command(Op.PUBLISH, publish, (_QUEUE, Arg("messages", "any")), AdmissionClass.PUBLISH,
                changes_state=True, batch=PlainPublishes(), permission=_publishes),
        Command(Op.CONSUME, consume, (
            *_QUEUE_OR_GROUP,
            Arg("max", "int", default=1, lo=1, hi=_max_batch),
            Arg("visibility_ms", "int", default=None, lo=1, hi=MAX_VISIBILITY_MS),
            Arg("wait_ms", "int", default=0, lo=0, hi=MAX_WAIT_MS),
        ), AdmissionClass.LOG, changes_state=True, permission=_consumes_group),
        Command(Op.ACK, ack, (_QUEUE, _IDS), AdmissionClass.RESERVED, changes_state=True,
                permission=_CONSUMES),
        Command(Op.NACK, nack, (_QUEUE, _IDS, Arg("delay_ms", "int", default=0, lo=0, hi=MAX_DELAY_MS),
                                _ERROR, Arg("returned", "bool", default=False)),
                AdmissionClass.LOG, changes_state=True, permission=_CONSUMES),
        Command(Op.EXTEND, extend, (
            _QUEUE, _IDS, Arg("visibility_ms", "int", default=None, lo=1, hi=MAX_VISIBILITY_MS),
        ), AdmissionClass.LOG, changes_state=True, permission=_CONSUMES),
        Command(Op.REJECT, reject, (_QUEUE, _IDS, _ERROR), AdmissionClass.LOG, changes_state=True,
                permission=_CONSUMES),
        Command(Op.REDRIVE, redrive, (
            _QUEUE,
            Arg("max", "int", default=None, lo=1, hi=2**31 - 1),
            Arg("ids", "ids", default=None),
        ), AdmissionClass.LOG, changes_state=True, permission=_ADMINISTERS),
        Command(Op.SUBSCRIBE, subscribe, (
            *_QUEUE_OR_GROUP,
            Arg("credit", "int", default=DEFAULT_CREDIT, lo=1, hi=_max_batch),
            Arg("visibility_ms", "int", default=None, lo=1, hi=MAX_VISIBILITY_MS),
            Arg("auto_ack", "bool", default=False),
        ), permission=_consumes_group),
        Command(Op.UNSUBSCRIBE, unsubscribe, (Arg("subscription", "int", lo=1, hi=2**63 - 1),)),
        Command(Op.PEEK, peek, (
            _QUEUE,
            Arg("max", "int", default=10, lo=1, hi=_max_batch),
            Arg("state", "choice", default=None, choices=tuple(_STATES)),
            Arg("dead_letter", "bool", default=False),
        ), permission=_CONSUMES),
        Command(Op.MESSAGE_STATUS, message_status, (_QUEUE, Arg("ids", "ids", keep_duplicates=True)),
                permission=_CONSUMES),
    )
}


def lookup(session: Session, op: str, args: dict[str, Any]) -> Command:
    """The command for a request, after the checks every op shares (SPEC §5.0, 1-3)."""
    command = COMMANDS.get(op)
    if command is None:
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}", details={"op": op})
    if command.needs_handshake and not session.ready and (command.needs_auth or not session.version):
        if session.version:
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "the broker requires authentication: send auth")
        raise ProtocolError(ErrorCode.HANDSHAKE_REQUIRED, "send hello first")
    command.calls += 1
    if not command.fields.issuperset(args):
        command.errors += 1
        name = next(n for n in args if n not in command.fields)
        if type(name) is not str:
            raise invalid("args", "argument names must be strings")
        raise invalid(name, f"{op} takes no argument {name!r}")
    auth = session.auth
    if auth is not None and command.permission:
        lacking = denial(session, command, args)
        if lacking is not None:
            command.errors += 1
            raise auth.denied(session, command.op, *lacking)
    return command


def denial(session: Session, command: Command, args: dict[str, Any]) -> tuple[Permission, str] | None:
    """The first permission a request needs that the session's user lacks, with the
    queue or topic it is needed on (SPEC §4.3); None when the user holds them all.
    Only with auth (``session.auth``)."""
    assert session.auth is not None
    needs = command.permission
    wanted = needs(args) if callable(needs) else [(n.permission, args.get(n.arg)) for n in needs]
    user = session.auth.user(session.user)
    for permission, name in wanted:
        if type(name) is str:
            resource = name.partition(GROUP_SEPARATOR)[0]
            if user is None or not user.may(permission, resource):
                return permission, resource
    return None


def dispatch(session: Session, op: str, args: dict[str, Any], ctx: Context) -> Outcome:
    """Validate and run one request. Raises ProtocolError for any refusal."""
    command = lookup(session, op, args)
    return run(command, session, args, ctx)


def run(command: Command, session: Session, args: dict[str, Any], ctx: Context) -> Outcome:
    """Check a request's arguments and run its handler (after ``lookup``)."""
    try:
        return command.handler(session, command.parse(args, ctx), ctx)
    except ProtocolError:
        command.errors += 1
        raise


# The topic and group ops build on this module's schema, so they are added last.
from .topic_commands import TOPIC_COMMANDS  # noqa: E402
from .txn_commands import TXN_COMMANDS  # noqa: E402

COMMANDS.update((str(c.op), c) for c in TOPIC_COMMANDS + TXN_COMMANDS)
