"""What the broker fuzz (``tools.fuzz``) sends: the argument names of every op (checked
against the broker's registry by a test), hypothesis strategies for requests of every op,
frames of the wrong shape and raw inputs, and cheap variations of them (``Mutator``,
``InputStream``); with ``--auth``, the run's users and the credentials fuzzed ``hello``
and ``auth`` requests carry. No sockets and no broker: the module docstring of
``tools.fuzz`` says how they are sent and what is checked.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as with_seed
from hypothesis import strategies as st

from protocol import ErrorCode, Op, ProtocolError, parse_request


#: The argument names of every op, as SPEC §5 lists them (a test checks them against
#: the broker's registry).
OP_ARGS: dict[str, tuple[str, ...]] = {
    Op.HELLO: ("versions", "max_frame", "client", "auth"),
    Op.AUTH: ("mechanism", "client_first", "token", "client_final"),
    Op.PING: (),
    Op.BROKER_INFO: (),
    Op.QUEUE_CREATE: ("queue", "kind", "shards", "visibility_ms", "max_attempts", "max_messages",
                      "retry_delay_ms", "retry_backoff", "retry_max_delay_ms", "retry_jitter", "ttl_ms",
                      "on_expire", "dedup_window_ms", "ordered", "max_bytes", "overflow", "dead_letter"),
    Op.QUEUE_DELETE: ("queue",),
    Op.QUEUE_LIST: ("after", "limit"),
    Op.QUEUE_STATS: ("queue",),
    Op.QUEUE_PURGE: ("queue", "leased"),
    Op.PUBLISH: ("queue", "messages"),
    Op.CONSUME: ("queue", "queues", "prefix", "max", "visibility_ms", "wait_ms"),
    Op.ACK: ("queue", "ids"),
    Op.NACK: ("queue", "ids", "delay_ms", "error", "returned"),
    Op.EXTEND: ("queue", "ids", "visibility_ms"),
    Op.REJECT: ("queue", "ids", "error"),
    Op.REDRIVE: ("queue", "max", "ids"),
    Op.SUBSCRIBE: ("queue", "queues", "prefix", "credit", "visibility_ms", "auto_ack"),
    Op.UNSUBSCRIBE: ("subscription",),
    Op.PEEK: ("queue", "max", "state", "dead_letter"),
    Op.MESSAGE_STATUS: ("queue", "ids"),
    Op.TOPIC_CREATE: ("topic", "shards", "retention", "max_age_ms", "max_bytes", "max_messages",
                      "dedup_window_ms"),
    Op.TOPIC_DELETE: ("topic",),
    Op.TOPIC_LIST: ("after", "limit"),
    Op.TOPIC_STATS: ("topic",),
    Op.TOPIC_PUBLISH: ("topic", "messages"),
    Op.GROUP_CREATE: ("topic", "group", "start", "filter", "visibility_ms", "max_attempts",
                      "retry_delay_ms", "retry_backoff", "retry_max_delay_ms", "retry_jitter",
                      "ordered", "dead_letter"),
    Op.GROUP_DELETE: ("topic", "group"),
    Op.GROUP_STATS: ("topic", "group"),
    Op.GROUP_SEEK: ("topic", "group", "to"),
    Op.TXN: ("steps",),
}

#: The well-behaved client's queue; fuzzed names never take this form.
HEALTH_QUEUE = "fuzz-health.0"
#: Names the fuzzed requests use, so that some reach past the name checks (the run
#: creates some of them first).
NAMES = ("fz", "fz.b", "fzt", "fzt/g", "fzt/h", "dl", "g", "h", "", "x" * 201, "bad name", "fz/", "/")
#: Integers at and around every documented bound, and the ends of msgpack's range.
EXTREME_INTS = (0, 1, -1, 2, 255, 256, 1023, 1024, 1025, 65535, 65536, 10_000, 10_001,
                2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1, -2**31,
                -2**63, 604_800_000, 604_800_001, 1_200_000, 1_200_001, 43_200_000, 43_200_001,
                2_592_000_000, 2_592_000_001, 86_400_000, 86_400_001)
#: With ``--auth``, the run's users (a users file made for the run, SPEC §4.2, §4.3): the
#: well-behaved client is ``ADMIN_USER`` (every permission); fuzzing connections
#: authenticate as ``LIMITED_USER`` (by token and by SCRAM-SHA-256 in turn), whose
#: patterns grant some of ``NAMES`` and not others, so that every op that needs a
#: permission meets both a grant and ``PERMISSION_DENIED``.
ADMIN_USER = "fuzz-admin"
LIMITED_USER = "fuzz-limited"
#: Both users' password, and their tokens (a throwaway broker's).
PASSWORD = "fuzz-password"
ADMIN_TOKEN = "lgt_fuzz-admin-0123456789abcdef"
LIMITED_TOKEN = "lgt_fuzz-limited-0123456789abcdef"
LIMITED_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "publish": ("fz", "fzt"),
    "consume": ("fz", "fzt", "dl"),
    "admin": ("fz.b", "g", "h"),
}
#: Credentials fuzzed ``hello`` and ``auth`` requests carry: the limited user's token, a
#: token of the right form that nobody has, SCRAM first messages of a known and an
#: unknown user, a client-final message of no exchange.
AUTH_VALUES = (LIMITED_TOKEN, "lgt_" + "0" * 40, f"n,,n={LIMITED_USER},r=fuzz0123456789nonce",
               "n,,n=nobody,r=fuzz0123456789nonce", "c=biws,r=fuzz0123456789nonce,p=" + "A" * 43 + "=")
#: Connections that may fail to authenticate (before authentication, and raw inputs)
#: come from these loopback addresses, so the broker's limit of failures per address
#: (SPEC §4.2) slows them, not the well-behaved client or the authenticated ones (127.0.0.1).
HOSTILE_SOURCES = tuple(f"127.0.1.{i}" for i in range(1, 65))
#: Error codes after which the server closes the connection (SPEC §3.3).
CLOSING = {ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.CONNECTION_TIMEOUT,
           ErrorCode.TOO_MANY_CONNECTIONS, ErrorCode.AUTH_FAILED}


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# -- what is sent ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Input:
    """One input: a whole frame (``op`` and ``rid`` when it is a request) or raw bytes."""

    data: bytes
    kind: str  # "request", "shape", "raw", "truncated", "oversized", "nested", "ext"
    op: str | None = None
    rid: int | None = None
    #: A consume that may be held (``wait_ms`` > 0): its reply may come late.
    may_hold: bool = False
    #: The server's codec refuses it fatally: its error, then the connection closes.
    fatal: bool = False
    #: A variation of a hypothesis-generated input (``Mutator``), not one itself.
    mutant: bool = False


_ints = st.one_of(st.sampled_from(EXTREME_INTS), st.integers(-2**63, 2**64 - 1))
_scalars = st.one_of(
    st.none(), st.booleans(), _ints, st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=24), st.binary(max_size=48), st.sampled_from(NAMES),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=13)),
)
#: Any msgpack value: scalars of every type, and small arrays and maps (str keys mostly).
wild = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.one_of(st.text(max_size=12), st.sampled_from(NAMES), st.binary(max_size=4)),
                      inner, max_size=4),
    max_leaves=10,
)
_id_lists = st.lists(st.one_of(st.integers(0, 40), _ints, wild), max_size=6)
_pub_entry = st.lists(st.one_of(st.binary(max_size=32), st.none(), _ints, wild), min_size=0, max_size=9)
_headers = st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), wild), max_size=4)


_mechanisms = st.sampled_from(("TOKEN", "SCRAM-SHA-256", "PLAIN"))
#: Well-formed transactions, so that some reach past the steps' checks (with --auth, to
#: their permissions: the limited user may not publish to dl).
_STEPS = ([{"op": "ack", "queue": "fz", "ids": [1]}],
          [{"op": "publish", "queue": "dl", "messages": [[b"x"]]}, {"op": "ack", "queue": "fz", "ids": [2]}],
          [{"op": "topic_publish", "topic": "fzt", "messages": [[b"t"]]}, {"op": "publish", "queue": "fz",
                                                                          "messages": [[b"y"]]}])


def _plausible(name: str) -> st.SearchStrategy[Any]:
    """Values near the right type for an argument, so that checks past the first run."""
    if name in ("queue", "topic", "group", "dead_letter", "prefix"):
        return st.sampled_from(NAMES)
    if name == "queues":
        return st.lists(st.one_of(st.sampled_from(NAMES), wild), max_size=5)
    if name == "ids":
        return _id_lists
    if name == "messages":
        return st.lists(st.one_of(_pub_entry, st.tuples(st.binary(max_size=16), st.none(), _headers).map(list)),
                        max_size=5)
    if name in ("start", "to"):
        return st.one_of(st.sampled_from(("earliest", "latest", "middle")), _ints, st.lists(_ints, max_size=4))
    if name in ("filter", "auth"):
        credential = st.one_of(st.sampled_from(AUTH_VALUES), wild)
        return st.one_of(_headers, st.fixed_dictionaries({"mechanism": _mechanisms},
                                                         optional={"token": credential, "client_first": credential}))
    if name == "mechanism":
        return _mechanisms
    if name in ("token", "client_first", "client_final"):
        return st.sampled_from(AUTH_VALUES)
    if name == "steps":
        step = st.fixed_dictionaries({"op": st.sampled_from(("ack", "publish", "topic_publish", "ping", ""))},
                                     optional={"queue": st.sampled_from(NAMES), "topic": st.sampled_from(NAMES),
                                               "ids": _id_lists, "messages": _plausible("messages"),
                                               "extra": wild})
        return st.one_of(st.lists(st.one_of(step, wild), max_size=5), st.sampled_from(_STEPS))
    if name == "versions":
        return st.lists(_ints, max_size=3)
    return _ints


def _args(op: str) -> st.SearchStrategy[dict[str, Any]]:
    names = OP_ARGS.get(op, ())
    optional = {n: st.one_of(wild, _plausible(n)) for n in names}
    args = st.fixed_dictionaries({}, optional=optional)  # type: ignore[arg-type]
    # Now and then an argument the op does not take, or a key of another type.
    return st.one_of(args, args, args, st.tuples(args, st.dictionaries(
        st.one_of(st.text(max_size=6), st.binary(max_size=3)), wild, min_size=1, max_size=2)).map(
        lambda t: {**t[0], **t[1]}))


#: The argument strategy of every op (built once: building one costs more than drawing).
_OP_ARGS = {op: _args(op) for op in OP_ARGS}
_NO_ARGS = _args("")
_rids = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from((0, 2**64 - 1)))


@st.composite
def requests(draw: st.DrawFn) -> Input:
    """A well-formed REQUEST frame of a known op (now and then an unknown one)."""
    op = draw(st.one_of(st.sampled_from(sorted(OP_ARGS)), st.text(max_size=12)))
    args = draw(_OP_ARGS.get(op, _NO_ARGS))
    rid = draw(_rids)
    wait = args.get("wait_ms")
    hold = op == Op.CONSUME and type(wait) is int and wait > 0
    return Input(framed(pack([0, rid, op, args])), "request", op, rid, hold)


@st.composite
def shapes(draw: st.DrawFn) -> Input:
    """Valid msgpack of the wrong frame shape: wrong kind, id, op or args, or not an array."""
    body = draw(st.one_of(
        st.tuples(st.one_of(st.just(0), wild), st.one_of(_rids, wild), st.one_of(st.sampled_from(sorted(OP_ARGS)), wild),
                  wild).map(list),
        st.lists(wild, max_size=6),
        wild,
        st.dictionaries(st.one_of(_ints, st.none(), st.booleans()), wild, min_size=1, max_size=2),
    ))
    return Input(framed(pack(body)), "shape")


@st.composite
def raws(draw: st.DrawFn) -> Input:
    """Bytes that are not a frame: random, truncated, oversized or too deeply nested."""
    which = draw(st.sampled_from(("raw", "truncated", "oversized", "nested", "ext")))
    if which == "raw":
        return Input(draw(st.binary(min_size=1, max_size=256)), which)
    if which == "truncated":
        whole = draw(requests()).data
        return Input(whole[: draw(st.integers(1, len(whole) - 1))], which)
    if which == "oversized":
        length = draw(st.sampled_from((16 * 2**20 + 1, 2**31, 2**32 - 1)) | st.integers(16 * 2**20 + 1, 2**32 - 1))
        return Input(struct.pack(">I", length) + draw(st.binary(max_size=16)), which)
    if which == "ext":  # ext types below 0 (-1 is the timestamp), which msgpack cannot pack
        data = draw(st.binary(max_size=20))
        code = draw(st.integers(-128, -1)).to_bytes(1, "big", signed=True)
        return Input(framed(b"\x94\x00\x01\xa4ping\x81\xa1a\xc7" + bytes([len(data)]) + code + data), which)
    depth = draw(st.sampled_from((1021, 1022, 1023, 1024, 5000, 100_000)))
    body = b"\x94\x00\x01\xa4ping\x81\xa1a" + b"\x91" * depth + draw(st.sampled_from((b"\x90", b"\x80", b"\xc0")))
    return Input(framed(body), which)


#: One example: a run of frames (pipelined on one connection), or one raw input (on a
#: connection of its own).
frame_runs = st.lists(st.one_of(requests(), requests(), requests(), shapes()), min_size=1, max_size=24)
example_inputs = st.one_of(frame_runs, frame_runs, frame_runs, raws())


# -- the input stream: hypothesis examples, and cheap variations of them ------------------

#: Request ids of the sentinel ``ping`` that ends every pipelined batch (fuzzed ids are
#: drawn elsewhere: from hypothesis, ``EXTREME_INTS`` or the ids of other inputs).
SENTINEL_BASE = 0x5E47_0000_0000_0000
SENTINEL_MASK = 0xFFFF_FFFF


def classify(data: bytes, kind: str, mutant: bool = False) -> Input:
    """``data`` (a whole frame) as an :class:`Input`: its op and id, whether the server's
    codec refuses it fatally (the connection closes after its error), and whether it is a
    consume that may be held. Decided with ``protocol``'s own decoding, so a batch can end
    with its one fatal frame instead of losing the frames after it."""
    try:
        obj = msgpack.unpackb(data[4:], raw=False)
    except Exception:
        return Input(data, kind, fatal=True, mutant=mutant)
    try:
        req = parse_request(obj)
    except ProtocolError:
        return Input(data, kind, mutant=mutant)
    wait = req.args.get("wait_ms")
    hold = req.op == Op.CONSUME and wait is not None and wait is not False and wait != 0
    return Input(data, kind, req.op, req.id, hold, mutant=mutant)


def hypothesis_inputs(examples: int, seed: int | None) -> tuple[list[Input], list[Input]]:
    """``examples`` hypothesis examples of :data:`example_inputs`: (frames, raw inputs)."""
    frames: list[Input] = []
    raw: list[Input] = []

    @settings(max_examples=examples, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(example_inputs)
    def collect(example: list[Input] | Input) -> None:
        if isinstance(example, Input):
            raw.append(example)
        else:
            frames.extend(classify(x.data, x.kind) for x in example)

    if seed is not None:
        collect = with_seed(seed)(collect)
    collect()
    return frames, raw


_OPS = tuple(OP_ARGS)
_REPLACEMENTS: tuple[Any, ...] = (*EXTREME_INTS, -2**64, 2**64, 2**65, None, True, False, "", b"", [], {},
                                  1.5, float("nan"), float("inf"), -0.0, "\x00", "\U0010ffff", b"\x00" * 64,
                                  msgpack.ExtType(1, b""), [[[[]]]], {"": {"": {}}}, *NAMES)


class Mutator:
    """Variations of hypothesis-generated frames, cheap enough to send millions.

    A frame is decoded (most that are not a well-formed request of a known op are made
    one, keeping their arguments) and changed in one to three ways: an argument set to a
    value the same argument had in another frame, to a value of any argument (mostly
    the wrong type), to an extreme value, deleted, or wrapped in an array or a map; the
    op changed (its arguments kept); the arguments of two frames spliced; less often the
    id or kind set to an extreme or wrong value, or the body's array grown or shrunk.
    One in ten instead has its packed body changed byte by byte (a byte
    flipped, set to ``0xc1``, a slice cut, repeated or truncated) under a length prefix
    that stays right, so framing holds and the body may no longer be msgpack. Raw inputs
    get the byte changes, length prefixes included."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        #: Argument values seen in generated requests (bounded), for wrong-type swaps.
        self.values: list[Any] = list(_REPLACEMENTS)
        #: The same, by argument name (bounded each); well-formed transactions to start
        #: with (hypothesis seldom draws one in a long run of frames).
        self.by_name: dict[str, list[Any]] = {"steps": list(_STEPS)}
        self.frames: list[Input] = []
        self.raw: list[Input] = []
        #: Frames of ops with arguments that the broker answered with a reply, not an
        #: error, by op (bounded): half of all variations start from one (of an op drawn
        #: evenly), so that they reach past the argument checks.
        self.accepted: dict[str, list[Input]] = {}

    def feed(self, frames: list[Input], raw: list[Input]) -> None:
        """New hypothesis inputs to vary (the most recent few thousand are kept)."""
        self.frames = (self.frames + frames)[-4000:]
        self.raw = (self.raw + raw)[-500:]
        rng = self.rng
        for x in frames:
            obj = decode_body(x.data)
            if type(obj) is list and len(obj) == 4 and type(obj[3]) is dict:
                for name, value in obj[3].items():
                    for pool, most in ((self.values, 6000), (self.by_name.setdefault(str(name), []), 300)):
                        if len(pool) < most:
                            pool.append(value)
                        else:
                            pool[rng.randrange(most)] = value

    def accept(self, x: Input) -> None:
        """The broker replied to ``x`` (not an error): vary it more, if its op takes arguments."""
        if x.op is None or not OP_ARGS.get(x.op):
            return
        pool = self.accepted.setdefault(x.op, [])
        if len(pool) < 200:
            pool.append(x)
        else:
            pool[self.rng.randrange(200)] = x

    def frame(self) -> Input:
        """A variation of a random frame of the corpus."""
        rng = self.rng
        if self.accepted and rng.random() < 0.5:
            base = rng.choice(self.accepted[rng.choice(list(self.accepted))])
        else:
            base = rng.choice(self.frames)
        if rng.random() < 0.1:
            return classify(framed(self._bytes(base.data[4:])), "mutant", True)
        obj = decode_body(base.data)
        if not _well_formed(obj) and rng.random() < 0.6:
            # Most variations are well-formed requests of a known op, to reach the ops' checks.
            args = obj[3] if type(obj) is list and len(obj) > 3 and type(obj[3]) is dict else {}
            obj = [0, rng.randrange(2**64), rng.choice(_OPS), args]
        elif type(obj) is not list or not obj:
            obj = [0, rng.choice(_REPLACEMENTS), rng.choice(_OPS), {"x": obj}]
        for _ in range(rng.choice((1, 1, 2, 3))):
            obj = self._change(obj)
        try:
            data = framed(pack(obj))
        except Exception:  # a value msgpack cannot pack back (too deep): vary the bytes instead
            return classify(framed(self._bytes(base.data[4:])), "mutant", True)
        return classify(data, "mutant", True)

    def vary(self, data: bytes) -> bytes:
        """``data`` with one to four byte changes (as a raw input's)."""
        return self._bytes(data)

    def raw_input(self) -> Input:
        """A variation of a random raw input (its bytes, length prefix included)."""
        base = self.rng.choice(self.raw)
        return Input(self._bytes(base.data), "raw-mutant", mutant=True)

    def _change(self, obj: list[Any]) -> list[Any]:
        rng = self.rng
        args = obj[3] if len(obj) > 3 and type(obj[3]) is dict else None
        pick = rng.random()
        if args is not None and pick < 0.7:
            op = obj[2] if type(obj[2]) is str else ""
            names = OP_ARGS.get(op) or ("queue",)
            name: Any = rng.choice(names) if rng.random() < 0.85 or not args else rng.choice(list(args))
            which = rng.random()
            if which < 0.4 and name in self.by_name:  # a value this argument had elsewhere
                args[name] = rng.choice(self.by_name[name])
            elif which < 0.6:  # a value of any argument: mostly the wrong type
                args[name] = rng.choice(self.values)
            elif which < 0.8:
                args[name] = rng.choice(_REPLACEMENTS)
            elif which < 0.9 and name in args:
                args[name] = [args[name]] if rng.random() < 0.5 else {"v": args[name]}
            else:
                args.pop(name, None)
        elif args is not None and pick < 0.78:
            obj[2] = rng.choice(_OPS)
        elif args is not None and pick < 0.86:
            other = decode_body(rng.choice(self.frames).data)
            if type(other) is list and len(other) == 4 and type(other[3]) is dict:
                args.update(other[3])
        elif pick < 0.91 and len(obj) > 1:
            obj[1] = rng.choice(_REPLACEMENTS)
        elif pick < 0.94 and obj:
            obj[0] = rng.choice(_REPLACEMENTS)
        elif pick < 0.97:
            if obj and rng.random() < 0.5:
                obj.pop(rng.randrange(len(obj)))
            else:
                obj.insert(rng.randrange(len(obj) + 1), rng.choice(self.values))
        else:
            obj = [0, obj[1] if len(obj) > 1 else 1, rng.choice(_OPS), rng.choice(self.values)]
        return obj

    def _bytes(self, data: bytes) -> bytes:
        rng = self.rng
        b = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 4))):
            if not b:
                b.append(rng.randrange(256))
                continue
            i = rng.randrange(len(b))
            pick = rng.random()
            if pick < 0.35:
                b[i] ^= 1 << rng.randrange(8)
            elif pick < 0.5:
                b[i] = rng.choice((0x00, 0xC1, 0xFF, 0x7F, 0x80, 0xDC, 0xDE, 0xC7, 0xD4))
            elif pick < 0.65:
                del b[i:i + rng.randrange(1, 9)]
            elif pick < 0.8:
                j = rng.randrange(i, len(b) + 1)
                b[i:i] = b[i:j][:64]
            elif pick < 0.9:
                del b[i:]
            else:
                b.insert(i, rng.randrange(256))
        return bytes(b)


def _well_formed(obj: Any) -> bool:
    return (type(obj) is list and len(obj) == 4 and obj[0] == 0 and type(obj[1]) is int
            and type(obj[2]) is str and obj[2] in OP_ARGS and type(obj[3]) is dict)


def decode_body(data: bytes) -> Any:
    """A framed input's msgpack body, or None when it is not msgpack."""
    try:
        return msgpack.unpackb(data[4:], raw=False, strict_map_key=False)
    except Exception:
        return None


class InputStream:
    """The inputs of a run: hypothesis examples, each followed on average by ``mutants``
    variations (:class:`Mutator`); fresh examples are drawn in chunks as it goes on.
    Raw inputs come in the proportion hypothesis draws them (``raw_ratio``)."""

    def __init__(self, seed: int | None, mutants: int, chunk: int = 200) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.mutants = mutants
        self.chunk = chunk
        self.chunks = 0
        self.mutator = Mutator(self.rng)
        self._frames: list[Input] = []
        self._raw: list[Input] = []
        self._drawn = [0, 0]  # frames, raw inputs drawn by hypothesis so far

    @property
    def raw_ratio(self) -> float:
        """Raw inputs per frame."""
        if not self._drawn[0]:
            self._refill()
        return self._drawn[1] / max(1, self._drawn[0])

    def _refill(self) -> None:
        self.chunks += 1
        frames, raw = hypothesis_inputs(self.chunk, None if self.seed is None else self.seed + self.chunks)
        self.mutator.feed(frames, raw)
        self._frames[:0] = reversed(frames)
        self._raw[:0] = reversed(raw)
        self._drawn[0] += len(frames)
        self._drawn[1] += len(raw)

    def _fresh(self) -> bool:
        """Whether the next input is a hypothesis example rather than a variation."""
        return self.rng.random() * (self.mutants + 1) < 1

    def frames(self, n: int) -> list[Input]:
        """``n`` frames (or one more) to pipeline; a fatal one only last."""
        out: list[Input] = []
        fatal: Input | None = None
        while len(out) < n:
            if not self._frames:
                self._refill()
            x = self._frames.pop() if self._fresh() else self.mutator.frame()
            if x.fatal:
                if fatal is None:
                    fatal = x
                elif not x.mutant:
                    self._frames.insert(0, x)  # kept for a later batch
                continue
            out.append(x)
        if fatal is not None:
            out.append(fatal)
        return out

    def raw(self) -> Input:
        """One raw input: a hypothesis example or a variation of one."""
        if not self._raw:
            self._refill()
        if self._raw and (self._fresh() or not self.mutator.raw):
            return self._raw.pop()
        return self.mutator.raw_input()
