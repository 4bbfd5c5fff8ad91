"""The op table: every typed operation of both clients, declared once.

An op is one declaration: a function without a body whose parameters (names, order,
kinds, defaults, type hints) and docstring are the method's, decorated with :func:`op`,
which names the wire op and says how its result map becomes the return value::

    @op(Op.ACK, t.ack_result)
    def ack(queue: str, ids: Annotated[Iterable[int], Arg(convert=list)]) -> None:
        \"\"\"Delete delivered messages by id.\"\"\"

From that :class:`OpSpec`, ``spec.async_method()`` makes the ``async def`` that
:class:`client.api.Client` carries and ``spec.sync_method()`` the plain ``def`` of
:class:`client.sync.SyncClient`; ``spec.args(...)`` builds just the request's ``args``
map. The declaration itself returns nothing: the method returns what the parser does,
and its type is the parser's return type (type checkers see it too, through the
``ParamSpec`` of the declaration).

How parameters become the ``args`` map:

- each parameter is sent under its own name, or ``Arg(wire=...)``'s;
- one whose default is ``None`` is left out when it is ``None``, so the server applies
  its documented default; ``Arg(omit_default=True)`` leaves a parameter out when it
  equals its default (``wait_ms=0``); every other parameter is always sent;
- ``Arg(convert=f)`` sends ``f(value)`` (``ids`` become a list);
- ``op(build=f)`` replaces all of that: the map is ``f(p1, p2, ...)`` of the parameters
  in order, and ``sends`` names the arguments it may contain.

``op(pages="queues")`` declares a paged list op (SPEC §5.5): the method sends the
request, then again with ``after`` set to each reply's ``next`` until it is nil, and
parses one result map whose ``queues`` holds every page's, in order (through
``self._pages`` of the client, which sends each page as the method would send one
request).

``op(methods=False)`` declares an op that gets no method of its own: a hand-written API
builds on its ``args`` and ``parse`` (``subscribe`` and ``unsubscribe``, which
``Client.subscribe`` and ``SyncClient.subscribe`` wrap in a subscription object).

The methods are generated as source text and compiled once, at import, the way
:mod:`dataclasses` makes ``__init__``: a call costs what the hand-written method did (no
signature binding, no loop over parameters, one dict display), which matters for
``publish``, ``consume`` and ``ack`` on the hot path. Their ``__signature__``,
``__annotations__`` and ``__doc__`` come from the declaration, so ``help()``,
``inspect.signature`` and editors show the real parameters.
"""
from __future__ import annotations

import inspect
import linecache
import typing
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from typing import Annotated, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar

from protocol import DEFAULT_CREDIT, Op

from . import types as t
from .types import Bytes, Message, PeekResult, PurgeResult, QueueStats, RedriveResult

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

#: A request's ``args`` map, or a reply's result map.
Wire = dict[str, Any]

_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True, slots=True)
class Arg:
    """How one parameter goes on the wire (attach with ``Annotated[type, Arg(...)]``)."""

    #: Argument name on the wire; ``None``: the parameter's name.
    wire: str | None = None
    #: Applied to the value before it is sent.
    convert: Callable[[Any], Any] | None = None
    #: Leave the argument out when the value equals the parameter's default.
    omit_default: bool = False
    #: One line for the method's docstring (and for ``brokerctl``'s option help).
    doc: str | None = None


@dataclass(frozen=True, slots=True)
class Field(Generic[T]):
    """A result parser that takes one field of the result map, typed ``T``.

    Generated methods inline it as ``result[key]``.
    """

    key: str
    type: type[T]

    def __call__(self, result: Wire) -> T:
        value: T = result[self.key]
        return value


def field(key: str, type_: type[T]) -> Field[T]:
    """Parse a reply by taking ``result[key]`` (of type ``type_``)."""
    return Field(key, type_)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of an op as the table sees it."""

    name: str
    kind: inspect._ParameterKind
    default: Any
    #: The type hint, without the ``Annotated`` wrapper.
    annotation: Any
    wire: str
    convert: Callable[[Any], Any] | None
    #: When the argument is left out of the request.
    omit: Literal["never", "none", "default"]
    doc: str | None

    @property
    def required(self) -> bool:
        return self.default is _EMPTY

    def parameter(self) -> inspect.Parameter:
        return inspect.Parameter(self.name, self.kind, default=self.default, annotation=self.annotation)


class OpSpec(Generic[P, R]):
    """One op of the client: wire name, parameters, how args are built, result parser, doc."""

    def __init__(
        self,
        declaration: Callable[P, None],
        op: Op,
        parse: Callable[[Wire], R],
        *,
        build: Callable[..., Wire] | None = None,
        sends: tuple[str, ...] | None = None,
        holds_for: str | None = None,
        methods: bool = True,
        pages: str | None = None,
    ) -> None:
        #: Method name.
        self.name = declaration.__name__
        #: Whether both clients carry a method made from it (else a hand-written API uses it).
        self.methods = methods
        #: Wire op name.
        self.op = str(op)
        self.parse = parse
        self.build = build
        #: A parameter (ms) for which the server may hold the reply; the blocking client
        #: adds it to its timeout.
        self.holds_for = holds_for
        #: For a paged list op, the result field holding the entries (see the module docs).
        self.pages = pages
        hints = typing.get_type_hints(declaration, include_extras=True)
        params = []
        for p in inspect.signature(declaration).parameters.values():
            hint = hints[p.name]
            arg = Arg()
            if typing.get_origin(hint) is Annotated:
                hint, *extras = typing.get_args(hint)
                arg = next((x for x in extras if isinstance(x, Arg)), arg)
            if arg.omit_default:
                omit: Literal["never", "none", "default"] = "default"
            elif p.default is None:
                omit = "none"
            else:
                omit = "never"
            params.append(Param(p.name, p.kind, p.default, hint, arg.wire or p.name, arg.convert, omit, arg.doc))
        #: The parameters, in declaration order.
        self.params: tuple[Param, ...] = tuple(params)
        if build is None:
            if sends is not None:
                raise TypeError(f"{self.name}: sends= goes with build=")
            sends = tuple(p.wire for p in self.params)
        elif sends is None:
            raise TypeError(f"{self.name}: build= needs sends=")
        #: Argument names the request may carry (a paged op's later pages add ``after``).
        self.sends: tuple[str, ...] = (*sends, "after") if pages is not None else sends
        if holds_for is not None and holds_for not in {p.name for p in self.params}:
            raise TypeError(f"{self.name}: holds_for names no parameter")
        #: The method's return type.
        self.returns: Any = parse.type if isinstance(parse, Field) else typing.get_type_hints(parse)["return"]
        #: The method's signature, without ``self``.
        self.signature = inspect.Signature(
            [p.parameter() for p in self.params], return_annotation=self.returns
        )
        self.doc = _doc(declaration.__doc__ or "", self.params)
        #: ``args(*params)``: the request's args map. Parameters may be passed by position
        #: in declaration order (keyword-only ones too) or by name.
        self.args: Callable[..., Wire] = self._compile("args")

    def __repr__(self) -> str:
        return f"<OpSpec {self.name} -> {self.op}>"

    def async_method(self) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
        """The ``async def`` for :class:`client.api.Client` (sends through ``self._request``)."""
        return self._compile("async")

    def sync_method(self) -> Callable[Concatenate[Any, P], R]:
        """The ``def`` for :class:`client.sync.SyncClient` (sends through ``self._typed_request``)."""
        return self._compile("sync")

    # --- code generation ------------------------------------------------------------

    def _compile(self, flavour: Literal["args", "async", "sync"]) -> Callable[..., Any]:
        ns: dict[str, Any] = {"_OP": self.op, "_parse": self.parse, "_build": self.build}
        params = self.params
        if flavour == "args":
            # Every parameter may be given by position, unless a required one follows one
            # with a default (then the declaration's kinds stay).
            last_required = max((i for i, p in enumerate(params) if p.required), default=-1)
            if all(p.required for p in params[:last_required]):
                params = tuple(_positional(p) for p in params)
        header = _parameter_list(params, ns, with_self=flavour != "args")
        body, args = _args_code(self.params, self.build, ns)
        if flavour == "args":
            call = args
        elif self.pages is not None:
            ns["_FIELD"] = self.pages
            call = f"{'await ' if flavour == 'async' else ''}self._pages(_OP, {args}, _FIELD)"
        elif flavour == "async":
            call = f"await self._request(_OP, {args})"
        elif self.holds_for is None:
            call = f"self._typed_request(_OP, {args})"
        else:
            wait = self.holds_for
            call = (f"self._typed_request(_OP, {args}, "
                    f"None if self.timeout is None else self.timeout + {wait} / 1000)")
        if flavour == "args":
            result = call
        elif isinstance(self.parse, Field):
            result = f"({call})[{self.parse.key!r}]"
        else:
            result = f"_parse({call})"
        keyword = "async def" if flavour == "async" else "def"
        name = f"{self.name}_args" if flavour == "args" else self.name
        source = "\n".join([f"{keyword} {name}({header}):", *body, f"    return {result}", ""])
        filename = f"<client op {self.name} ({flavour})>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # tracebacks
        exec(compile(source, filename, "exec"), ns)
        fn: Callable[..., Any] = ns[name]
        fn.__module__ = __name__
        sig_params = [p.parameter() for p in params]
        if flavour == "args":
            fn.__doc__ = f"The ``{self.op}`` request's args map for :meth:`{self.name}`."
            returns: Any = Wire
        else:
            fn.__doc__ = self.doc
            returns = self.returns
            sig_params.insert(0, inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD))
        fn.__annotations__ = {p.name: p.annotation for p in params} | {"return": returns}
        fn.__signature__ = inspect.Signature(sig_params, return_annotation=returns)  # type: ignore[attr-defined]
        return fn


def _positional(p: Param) -> Param:
    return replace(p, kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _parameter_list(params: tuple[Param, ...], ns: dict[str, Any], *, with_self: bool) -> str:
    parts = ["self"] if with_self else []
    star = False
    for p in params:
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        elif p.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            raise TypeError(f"parameter {p.name}: only plain and keyword-only parameters are supported")
        if p.required:
            parts.append(p.name)
        else:
            ns[f"_d_{p.name}"] = p.default
            parts.append(f"{p.name}=_d_{p.name}")
    return ", ".join(parts)


def _args_code(
    params: tuple[Param, ...], build: Callable[..., Wire] | None, ns: dict[str, Any]
) -> tuple[list[str], str]:
    """Statements, and the expression that is the args map after them."""
    if build is not None:
        return [], f"_build({', '.join(p.name for p in params)})"
    fixed: list[str] = []
    optional: list[str] = []
    for p in params:
        value = p.name
        if p.convert is not None:
            ns[f"_cv_{p.name}"] = p.convert
            value = f"_cv_{p.name}({p.name})"
        if p.omit == "never" and not optional:
            fixed.append(f"{p.wire!r}: {value}")
            continue
        store = f"args[{p.wire!r}] = {value}"
        if p.omit == "none":
            optional += [f"    if {p.name} is not None:", f"        {store}"]
        elif p.omit == "default":
            optional += [f"    if {p.name} != _d_{p.name}:", f"        {store}"]
        else:
            optional.append(f"    {store}")
    literal = "{" + ", ".join(fixed) + "}"
    if not optional:
        return [], literal
    return [f"    args = {literal}", *optional], "args"


def _doc(doc: str, params: tuple[Param, ...]) -> str:
    doc = inspect.cleandoc(doc)
    documented = [p for p in params if p.doc]
    if documented:
        lines = [f"- ``{p.name}``: {p.doc}" for p in documented]
        doc = "\n".join([doc, "", *lines])
    return doc


#: Every op, by method name, in declaration order.
OPS: dict[str, OpSpec[..., Any]] = {}


def op(
    wire_op: Op,
    parse: Callable[[Wire], R],
    *,
    build: Callable[..., Wire] | None = None,
    sends: tuple[str, ...] | None = None,
    holds_for: str | None = None,
    methods: bool = True,
    pages: str | None = None,
) -> Callable[[Callable[P, None]], OpSpec[P, R]]:
    """Declare an op (see the module docstring); it is added to :data:`OPS`."""

    def declare(declaration: Callable[P, None]) -> OpSpec[P, R]:
        spec = OpSpec(declaration, wire_op, parse, build=build, sends=sends, holds_for=holds_for, methods=methods,
                      pages=pages)
        if spec.name in OPS:
            raise TypeError(f"op {spec.name} is declared twice")
        OPS[spec.name] = spec
        return spec

    return declare


def merge_pages(first: Wire, field: str) -> tuple[Wire, list[Any]]:
    """The merged result so far and the list that later pages' entries join."""
    items = list(first[field])
    return {**first, field: items}, items


def _publish_one(queue: str, body: Bytes, key: Bytes | None, priority: int | None, delay_ms: int | None,
                 ttl_ms: int | None, dedup_id: Bytes | None, deliver_at: int | None,
                 after: Iterable[tuple[str, int]] | None) -> Wire:
    if type(body) is bytes and key is None and priority is None and delay_ms is None and ttl_ms is None \
            and dedup_id is None and deliver_at is None and after is None:
        return {"queue": queue, "messages": [[body]]}  # the common case, without two more calls
    return {"queue": queue,
            "messages": [t.message_entry(body, key, priority, delay_ms, ttl_ms, dedup_id, deliver_at, after)]}


# --- the table ------------------------------------------------------------------------


@op(Op.PING, field("now_ms", int))
def ping() -> None:
    """Round-trip to the server; returns its wall clock in ms since the epoch."""


@op(Op.BROKER_INFO, t.BrokerInfo.from_wire)
def broker_info() -> None:
    """The broker's version, uptime, fsync policy, data directory, WAL size and open
    connections."""


@op(Op.QUEUE_CREATE, field("created", bool))
def create_queue(
    name: Annotated[str, Arg(wire="queue")],
    kind: Annotated[str, Arg(convert=str,
                             doc="Delivery order within a shard (fifo, lifo, priority or round_robin).")] = "fifo",
    shards: Annotated[int, Arg(doc="Number of shards (1..256).")] = 1,
    visibility_ms: Annotated[int | None, Arg(doc="Lease length of a delivery [server default: 30000].")] = None,
    max_attempts: Annotated[
        int | None, Arg(doc="Deliveries before dead-lettering; 0 = unlimited [server default: 20].")
    ] = None,
    dead_letter: Annotated[
        str | None, Arg(doc="Queue that receives messages past max attempts, and rejected ones.")
    ] = None,
    max_messages: Annotated[int | None, Arg(doc="Capacity; 0 = server default [0].")] = None,
    retry_delay_ms: Annotated[
        int | None, Arg(doc="Delay before a nacked (without delay_ms) or expired message is ready again; "
                            "0 = at once [server default: 0].")
    ] = None,
    retry_backoff: Annotated[
        str | None, Arg(doc="How the retry delay grows: fixed, or exponential (doubling per attempt) "
                            "[server default: exponential].")
    ] = None,
    retry_max_delay_ms: Annotated[
        int | None, Arg(doc="Cap of the exponential retry delay [server default: 900000].")
    ] = None,
    retry_jitter: Annotated[
        int | None, Arg(doc="Percent (0..100) by which a retry delay is shortened at random "
                            "[server default: 0].")
    ] = None,
    ttl_ms: Annotated[
        int | None, Arg(doc="Time to live of messages published without one; 0 = none "
                            "[server default: 0].")
    ] = None,
    on_expire: Annotated[
        str | None, Arg(doc="What happens to an expired message: drop, or dead_letter "
                            "(to the dead-letter queue) [server default: drop].")
    ] = None,
    dedup_window_ms: Annotated[
        int | None, Arg(doc="How long a published dedup id is remembered; 0 = no dedup "
                            "[server default: 300000].")
    ] = None,
    ordered: Annotated[
        bool | None, Arg(doc="Process messages with the same key one at a time, in publish "
                             "order (fifo queues only) [server default: false].")
    ] = None,
    max_bytes: Annotated[
        int | None, Arg(doc="Bound on the bytes of message bodies held; 0 = none [server default: 0].")
    ] = None,
    overflow: Annotated[
        str | None, Arg(convert=str, doc="What a publish past max_messages or max_bytes does: reject "
                                         "(QUEUE_FULL), drop_oldest, or dead_letter_oldest "
                                         "[server default: reject].")
    ] = None,
) -> None:
    """Declare a queue; ``True`` if created, ``False`` if it already existed with these settings.

    ``None`` settings take the server default. Raises ``QueueExists`` when the name
    is taken with different settings. The settings:
    """


@op(Op.QUEUE_DELETE, field("messages", int))
def delete_queue(name: Annotated[str, Arg(wire="queue")]) -> None:
    """Delete a queue; returns how many messages were dropped with it."""


PageSize = Annotated[int | None, Arg(wire="limit", doc="Entries per request (1..200; default 200).")]


@op(Op.QUEUE_LIST, t.queue_list, pages="queues")
def list_queues(page_size: PageSize = None) -> None:
    """Stats of every queue, sorted by name, asked for a page at a time."""


@op(Op.QUEUE_STATS, QueueStats.from_wire)
def queue_stats(name: Annotated[str, Arg(wire="queue")]) -> None:
    """Settings and counters of one queue."""


@op(Op.PUBLISH, t.published_id, build=_publish_one, sends=("queue", "messages"))
def publish(
    queue: str,
    body: Bytes,
    *,
    key: Bytes | None = None,
    priority: int | None = None,
    delay_ms: int | None = None,
    ttl_ms: int | None = None,
    dedup_id: Bytes | None = None,
    deliver_at: int | None = None,
    after: Iterable[tuple[str, int]] | None = None,
) -> None:
    """Publish one message; returns its id once the server has confirmed it.

    ``ttl_ms`` (1..2,592,000,000): remove it that long after publishing if it is still
    there, wherever it is (default: the queue's ``ttl_ms``). ``dedup_id`` (1..128 bytes):
    if a message with this dedup id was published to the queue within its dedup window
    (5 minutes unless set), nothing is stored and the id returned is that message's.
    ``deliver_at`` (ms since the epoch, at most 7 days ahead): invisible until then,
    instead of ``delay_ms``. ``after``: ``(queue, id)`` messages it waits on until they are
    all acked (SPEC §8.14).
    """


@op(Op.PUBLISH, t.publish_result)
def publish_batch(
    queue: str, messages: Annotated[Iterable[Bytes | Message], Arg(convert=t.message_entries)]
) -> None:
    """Publish many messages atomically in one request (at most the server's ``max_batch``).

    Each item is a body or a :class:`~client.types.Message`; ids are consecutive in
    item order. Messages whose dedup id was already published within the queue's dedup
    window are not stored again: the result's ``duplicates`` names them and the ids
    they map to, and ``message_ids()`` gives every item's id.
    """


@op(Op.CONSUME, t.deliveries, holds_for="wait_ms")
def consume(
    queue: str,
    max: int = 1,
    *,
    visibility_ms: int | None = None,
    wait_ms: Annotated[int, Arg(omit_default=True)] = 0,
) -> None:
    """Lease up to ``max`` messages; with ``wait_ms`` the server holds the reply until
    messages arrive or the time passes (the result may then be empty).

    The blocking client waits ``wait_ms`` longer than its timeout for the reply.
    """


@op(Op.CONSUME, t.group_deliveries, holds_for="wait_ms")
def consume_group(
    queues: Annotated[Iterable[str] | None, Arg(convert=list, omit_default=True)] = None,
    max: int = 1,
    *,
    prefix: Annotated[str | None, Arg(omit_default=True)] = None,
    visibility_ms: int | None = None,
    wait_ms: Annotated[int, Arg(omit_default=True)] = 0,
) -> None:
    """Lease up to ``max`` messages from a queue group (SPEC §8.15): the queues named in
    ``queues``, or every queue whose name starts with ``prefix``, served fairly. Each
    :class:`~client.types.Delivery` names its ``queue`` (ack it there).

    With ``wait_ms`` the server holds the reply until any of them has messages or the
    time passes, like ``consume``.
    """


@op(Op.ACK, t.ack_result)
def ack(queue: str, ids: Annotated[Iterable[int], Arg(convert=list)]) -> None:
    """Delete delivered messages by id."""


@op(Op.NACK, t.nack_result)
def nack(
    queue: str,
    ids: Annotated[Iterable[int], Arg(convert=list)],
    *,
    delay_ms: Annotated[int, Arg(omit_default=True)] = 0,
    error: str | None = None,
    returned: Annotated[bool, Arg(omit_default=True)] = False,
) -> None:
    """Return leased messages to the queue (ready again after ``delay_ms``, or after the
    queue's retry backoff when 0).

    ``error`` (at most 1024 bytes of UTF-8) is kept with each released message as its
    last error, and goes with it if it is dead-lettered later. ``returned=True`` gives
    them back unhandled: ready at once, and the delivery does not count as an attempt.
    """


@op(Op.EXTEND, t.extend_result)
def extend(
    queue: str,
    ids: Annotated[Iterable[int], Arg(convert=list)],
    *,
    visibility_ms: int | None = None,
) -> None:
    """Extend the leases of leased messages: each now runs until the server's now +
    ``visibility_ms`` (default: the queue's), which may also shorten it.

    Attempts are not counted; ids that are not leased are reported ``missing``.
    """


@op(Op.REJECT, t.reject_result)
def reject(
    queue: str,
    ids: Annotated[Iterable[int], Arg(convert=list)],
    *,
    error: str | None = None,
) -> None:
    """Send leased messages straight to the queue's dead-letter queue (reason
    ``"rejected"``), whatever their attempts; with no dead-letter queue they are dropped.

    ``error`` (at most 1024 bytes of UTF-8) is kept with the dead letter. Ids that are
    not leased are reported ``missing``.
    """


@op(Op.QUEUE_PURGE, PurgeResult.from_wire)
def purge_queue(queue: str, *, leased: Annotated[bool, Arg(omit_default=True)] = False) -> None:
    """Delete every ready and delayed message of ``queue`` (with ``leased``, the leased
    ones too); returns how many of each went.

    Purged messages are gone for good: not dead-lettered, not counted as acked; a later
    ack or nack of their ids reports them missing. The queue itself stays.
    """


@op(Op.PEEK, PeekResult.from_wire)
def peek(
    queue: str,
    max: int = 10,
    *,
    state: str | None = None,
    dead_letter: Annotated[bool, Arg(omit_default=True)] = False,
) -> None:
    """Look at up to ``max`` messages without leasing them (no attempt is counted).

    ``state`` (``"ready"``, ``"leased"`` or ``"delayed"``) keeps only messages in that
    state; ``dead_letter`` looks at the queue's dead-letter queue instead (the result's
    ``queue`` names it). Ready messages come first, in the order ``consume`` would take
    them, then leased ones by lease deadline, then delayed ones by ready time.
    """


@op(Op.MESSAGE_STATUS, t.message_statuses)
def message_status(queue: str, ids: Annotated[Iterable[int], Arg(convert=list)]) -> None:
    """Where each message of ``ids`` is now: one :class:`~client.types.MessageStatus` per
    id, in order (ready, leased, delayed, dead_lettered, gone or unknown)."""


@op(Op.REDRIVE, RedriveResult.from_wire)
def redrive(
    queue: str,
    *,
    max: int | None = None,
    ids: Annotated[Iterable[int] | None, Arg(convert=list)] = None,
) -> None:
    """Move dead letters of the dead-letter queue ``queue`` back to the queues they came
    from, as new ready messages with no attempts; all of them or none.

    Without ``ids``, every message of ``queue`` in id order, at most ``max`` of them;
    with ``ids`` (not together with ``max``), only those. Messages that are leased, were
    not dead-lettered there, or whose source queue no longer exists stay, counted in
    ``skipped``.
    """


@op(Op.SUBSCRIBE, field("subscription", int), methods=False)
def subscribe(
    queue: Annotated[str | None, Arg(omit_default=True)] = None,
    *,
    credit: Annotated[
        int, Arg(omit_default=True, doc="Most pushed messages not yet acked at once (1..max_batch).")
    ] = DEFAULT_CREDIT,
    visibility_ms: Annotated[int | None, Arg(doc="Lease length of the pushed messages [the queue's].")] = None,
    auto_ack: Annotated[
        bool, Arg(omit_default=True, doc="At most once: the broker deletes each message as it pushes it.")
    ] = False,
    queues: Annotated[Iterable[str] | None, Arg(convert=list, omit_default=True,
                                                doc="A queue group: these queues instead of one.")] = None,
    prefix: Annotated[str | None, Arg(omit_default=True,
                                      doc="A queue group: the queues whose names start with it.")] = None,
) -> None:
    """Start pushing ``queue``'s messages (or those of a queue group: ``queues`` or
    ``prefix``, SPEC §8.15) to this connection; returns the subscription id.

    No method of its own: ``Client.subscribe`` and ``SyncClient.subscribe`` send it and
    route the ``deliver`` pushes that follow.
    """


@op(Op.UNSUBSCRIBE, field("unacked", int), methods=False)
def unsubscribe(subscription: int) -> None:
    """Stop a subscription's pushes; returns how many pushed messages are still unacked
    (they stay leased). Sent when a subscription object is left."""


# --- topics and consumer groups (SPEC §8.13) ----------------------------------------------


@op(Op.TOPIC_CREATE, field("created", bool))
def create_topic(
    name: Annotated[str, Arg(wire="topic")],
    shards: int = 1,
    *,
    retention: Annotated[str | None, Arg(convert=str, doc="interest, limits or both [server default: interest].")] = None,
    max_age_ms: Annotated[int | None, Arg(doc="Age limit (limits/both); 0 = none.")] = None,
    max_bytes: Annotated[int | None, Arg(doc="Bytes of bodies retained, at most (limits/both); 0 = none.")] = None,
    max_messages: Annotated[int | None, Arg(doc="Messages retained, at most (limits/both); 0 = none.")] = None,
    dedup_window_ms: Annotated[
        int | None, Arg(doc="How long a published dedup id is remembered; 0 = no dedup "
                            "[server default: 300000].")
    ] = None,
) -> None:
    """Declare a topic; ``True`` if created, ``False`` if it existed with these settings.

    Each message published to it is stored once and read by every consumer group.
    """


@op(Op.TOPIC_DELETE, field("messages", int))
def delete_topic(name: Annotated[str, Arg(wire="topic")]) -> None:
    """Delete a topic with its messages and groups; returns how many messages it held."""


@op(Op.TOPIC_LIST, t.topic_list, pages="topics")
def list_topics(page_size: PageSize = None) -> None:
    """Statistics of every topic, sorted by name, asked for a page at a time."""


@op(Op.TOPIC_STATS, t.TopicStats.from_wire)
def topic_stats(name: Annotated[str, Arg(wire="topic")]) -> None:
    """Statistics of one topic."""


@op(Op.TOPIC_PUBLISH, t.publish_result)
def publish_topic(
    topic: str, messages: Annotated[Iterable[Bytes | t.TopicMessage], Arg(convert=t.topic_entries)]
) -> None:
    """Publish messages to a topic atomically (stored once, read by every group); each
    item is a body or a :class:`~client.types.TopicMessage` (key, headers, dedup id).
    Messages whose dedup id was already published to the topic within its dedup window
    are not stored again: the result's ``duplicates`` names them and the ids they map
    to, and ``message_ids()`` gives every item's id."""


@op(Op.GROUP_CREATE, field("created", bool))
def create_group(
    topic: str,
    group: str,
    *,
    start: Annotated[
        str | int | list[int] | None,
        Arg(doc='"earliest", "latest", a time in ms, or one offset per shard [server default: latest].'),
    ] = None,
    filter: Annotated[dict[str, str] | None, Arg(doc="Only messages whose headers hold all these pairs.")] = None,
    visibility_ms: int | None = None,
    max_attempts: int | None = None,
    dead_letter: str | None = None,
    retry_delay_ms: int | None = None,
    retry_backoff: str | None = None,
    retry_max_delay_ms: int | None = None,
    retry_jitter: int | None = None,
    ordered: bool | None = None,
) -> None:
    """Attach a consumer group to ``topic``; ``True`` if created. Read it with the queue
    methods (``consume``, ``subscribe``, ``ack``, ...) under the name ``"TOPIC/GROUP"``
    (:func:`client.types.group_queue`). The delivery settings are those of
    ``create_queue``."""


@op(Op.GROUP_DELETE, field("messages", int))
def delete_group(topic: str, group: str) -> None:
    """Detach a consumer group; returns how many messages its delivery queue held."""


@op(Op.GROUP_STATS, t.GroupStats.from_wire)
def group_stats(topic: str, group: str) -> None:
    """A group's cursors, lag, filter and delivery statistics."""


@op(Op.GROUP_SEEK, field("cursors", list))
def seek_group(topic: str, group: str, to: str | int | list[int]) -> None:
    """Move a group's cursors (``"earliest"``, ``"latest"``, a time in ms, or one offset
    per shard); returns the new cursors."""


@op(Op.TXN, field("results", list))
def txn(steps: Annotated[Iterable[dict[str, Any]], Arg(convert=list)]) -> None:
    """Run steps (``{"op": "ack" | "publish" | "topic_publish", ...that op's arguments}``)
    as one change: all or nothing (SPEC §5.28). Returns each step's result map, in order.
    :meth:`transaction` builds the steps."""


#: The settings of ``create_queue`` (every parameter after the name), for tools that
#: offer them, such as ``brokerctl create-queue``.
QUEUE_SETTINGS: tuple[Param, ...] = create_queue.params[1:]

__all__ = ["OPS", "QUEUE_SETTINGS", "Arg", "Field", "OpSpec", "Param", "Wire", "field", "op"]
