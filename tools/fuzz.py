"""Protocol fuzzing: hostile input to a real broker process, and coverage-guided fuzzing of the codec.

    python -m tools.fuzz --inputs 1000000 --seed 1   # hostile clients against a fresh broker
    python -m tools.fuzz --inputs 200000 --auth --tls  # ... requiring authentication, in TLS
    python -m tools.fuzz codec --runs 100000         # atheris (libFuzzer) on protocol's codec,
                                                     # seeded with SPEC §11's frames and hypothesis inputs
    python -m tools.fuzzcommands --runs 100000       # atheris on the command validation

The broker run starts ``python -m broker`` on 127.0.0.1, port 0, with a temporary data
directory (``tools.procs``). What it sends:

- hypothesis examples (``example_inputs``): well-formed requests of every op in the
  registry (SPEC §5) whose arguments have wrong types and extreme values (and now and
  then an argument the op does not take, or an unknown op), frames of the wrong shape;
  and, on connections of their own, random bytes, truncated frames, oversized length
  prefixes, ext values msgpack refuses and bodies nested 1,021 to 100,000 deep;
- variations of those (``Mutator``): ``--mutants`` per hypothesis-drawn input on average
  (15 unless set; 0 sends hypothesis inputs only). Each is one to three changes of a
  decoded frame (an argument given a value another frame had for it, a value of another
  argument, an extreme value, removed or wrapped; the op swapped; arguments spliced; the
  id, kind or array length broken), or byte changes under a correct length prefix.
  Half of them start from a frame of an op with arguments that the broker has replied
  to (not with an error), so that they reach past the argument checks into the handlers.
  Drawing a hypothesis example costs a few milliseconds; a variation tens of
  microseconds, which is what makes a million inputs a run of minutes, not hours.

Frames are pipelined: in each round every one of ``--connections`` connections (8) gets
a batch of ``--batch`` frames (64) in one write, ended by a ``ping`` whose reply marks
the end of the batch's replies; raw inputs go out at the same time, each on a new
connection that then half-closes. A connection is reused after error replies; a frame
the server's codec refuses fatally (``classify``) goes last in its batch, and the
connection is replaced after the close. In every round, once its inputs are sent, a
well-behaved client on its own connection pings (the median, 99th percentile and slowest
round trip are reported); between rounds, every ``health_every`` inputs (5,000), it
also publishes, consumes and acks one message, and the process must still be running.
It checks, and reports as findings:

- every frame before the batch's ``ping`` gets a reply or error before the ``ping``'s
  reply, or the connection closes after a fatal error (``no_reply``); nothing takes
  longer than ``--timeout`` seconds (``hang``);
- no reply is ``INTERNAL_ERROR`` (the op and the frame that got it are reported);
- the server's frames decode; the well-behaved client is served; the broker's log holds
  no traceback; the broker exits 0 when stopped with SIGTERM.

A held consume (``wait_ms`` > 0) may answer later: its batch is not waited for it, and
its connection is replaced. It reports the broker's RSS (``/proc/PID/status``) at the
start, its peak (``VmHWM``) and at the end, once the queues and topics the run made are
deleted and the connections closed (``settled_rss``). Exit status 0 when nothing was
found, 1 otherwise. Seeded runs (``--seed``) send the same inputs.

``--auth``: the broker requires authentication, with a users file made for the run
(``fuzz-admin``, every permission; ``fuzz-limited``, ``LIMITED_PERMISSIONS``). The
well-behaved client is the admin (SCRAM-SHA-256). One fuzzing connection in four sends
its batch before authenticating (a fresh connection every round; like raw inputs, from
one of 64 loopback addresses, so the broker's limit on failed attempts per address
slows them, not the others); the others authenticate first as ``fuzz-limited``, by token
and by SCRAM in turn (``client.auth``), whose grants cover some of ``NAMES`` and not
others, so permission checks run on every op (``PERMISSION_DENIED`` counted per op).
Fuzzed ``hello`` and ``auth`` requests carry that user's token, a token nobody has and
SCRAM messages (``AUTH_VALUES``).

``--tls``: the broker serves TLS with a throwaway certificate (``trustme``), and every
connection speaks TLS. Of the raw inputs, a quarter go to the TLS port in plain TCP: one
whose first byte is not 0x16 must get exactly one ``MALFORMED_FRAME`` with details
``{"tls": "required"}`` and a clean close (SPEC §1.3); a quarter are varied TLS
ClientHellos, which must be closed within the timeout. Findings beyond the above:
``tls_refusal`` (a plain client not refused so), ``tls_error`` (a TLS error reading the
broker's replies), ``connect`` (a well-formed connection or authentication failed).
``--auth`` and ``--tls`` go together.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as with_seed
from hypothesis import strategies as st

from client import SyncClient
from client.auth import Credentials, Handshake
from protocol import Connection, Encoder, Error, ErrorCode, Op, ProtocolError, Push, Reply, parse_request
from protocol.scram import ScramSecret
from protocol.users import Patterns, User, Users, dump, token_hash
from tools.procs import ROOT, BrokerProcess
from tools.tlscerts import throwaway_tls

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
_SENTINEL_MASK = 0xFFFF_FFFF


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
            obj = _decode(x.data)
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
        obj = _decode(base.data)
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
            other = _decode(rng.choice(self.frames).data)
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


def _decode(data: bytes) -> Any:
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


# -- findings and the report ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # "internal_error", "hang", "no_reply", "bad_server_frame", "crash", "health", "traceback",
    #            "exit_status", "connect" (a well-formed connection or authentication failed),
    #            "tls_refusal" (a plain client on the TLS port was not refused as SPEC §1.3 says)
    detail: str
    op: str | None = None
    input_hex: str = ""


@dataclass(slots=True)
class Report:
    inputs: int = 0
    frames: int = 0
    raw_inputs: int = 0
    #: Of ``inputs``: drawn by hypothesis, and variations of those (``Mutator``).
    generated: int = 0
    mutants: int = 0
    #: Frames of a batch after an unforeseen close, so never read by the broker (not in ``inputs``).
    unread: int = 0
    connections: int = 0
    #: Replies to the hello each fuzzing connection starts with (not in ``replies``).
    hellos: int = 0
    replies: int = 0
    errors: int = 0
    closes: int = 0
    resets: int = 0
    health_checks: int = 0
    #: The slowest health check (ping, publish, consume, ack), in ms.
    health_max_ms: float = 0.0
    #: The well-behaved client's pings between rounds: how many, and their round trip
    #: (median, 99th percentile, slowest) in ms.
    pings: int = 0
    ping_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0
    rss_start_kib: int = 0
    rss_peak_kib: int = 0
    rss_end_kib: int = 0
    exit_status: int | None = None
    codes: dict[str, int] = field(default_factory=dict)
    #: With ``--auth``: fuzzing connections authenticated before their first batch (as
    #: ``LIMITED_USER``), and the ``PERMISSION_DENIED`` errors by op.
    authenticated: int = 0
    denied: dict[str, int] = field(default_factory=dict)
    #: With ``--tls``: plain connections to the TLS port (raw inputs without TLS), of
    #: which refused as SPEC §1.3 says (one ``MALFORMED_FRAME``, ``{"tls": "required"}``,
    #: then the close); varied TLS ClientHellos sent.
    plain_on_tls: int = 0
    tls_refusals: int = 0
    client_hellos: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def settled_rss(pid: int, most_s: float = 5.0) -> tuple[int, int]:
    """``rss_kib`` once the process has had time to free what closed connections held
    (it trims its heap within a second of a close, ``broker/memtrim.py``): polled until
    it stops falling for a second, at most ``most_s`` seconds."""
    deadline = time.monotonic() + most_s
    rss, hwm = rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now, hwm = rss_kib(pid)
        if now >= rss:
            break
        rss = now
    return min(rss, now), hwm


# -- the broker run ---------------------------------------------------------------------

# -- --auth and --tls -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Security:
    """How the run's broker is reached. ``auth``: it requires authentication (the run's
    users file); of the fuzzing connections, one in four sends its frames before
    authenticating (a fresh one every round, from ``HOSTILE_SOURCES``), the others after
    authenticating as ``LIMITED_USER``. ``tls``: a client context trusting the run's
    throwaway CA; every connection speaks TLS, and of the raw inputs, a quarter go to the
    TLS port in plain TCP and a quarter are varied TLS ClientHellos (``client_hello``)."""

    auth: bool = False
    tls: ssl.SSLContext | None = None
    client_hello: bytes = b""


def run_users() -> Users:
    """The run's users: ``ADMIN_USER`` with every permission, ``LIMITED_USER`` with
    ``LIMITED_PERMISSIONS``; each with ``PASSWORD`` (SCRAM-SHA-256) and a token."""
    every = Patterns.of(["*"])
    limited = {name: Patterns.of(patterns) for name, patterns in LIMITED_PERMISSIONS.items()}
    return Users({
        ADMIN_USER: User(name=ADMIN_USER, scram=ScramSecret.from_password(PASSWORD),
                         tokens=(token_hash(ADMIN_TOKEN),), publish=every, consume=every, admin=every),
        LIMITED_USER: User(name=LIMITED_USER, scram=ScramSecret.from_password(PASSWORD),
                           tokens=(token_hash(LIMITED_TOKEN),), **limited),
    })


def write_users_file(path: Path) -> None:
    """The run's users file (``run_users``), readable by its owner only."""
    path.write_text(dump(run_users()))
    path.chmod(0o600)


def client_hello(tls: ssl.SSLContext) -> bytes:
    """The first flight of a TLS handshake (the ClientHello) as ``tls`` sends it to 127.0.0.1."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = tls.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    try:
        handshake.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def secure(where: Path, auth: bool, tls: bool) -> tuple[tuple[str, ...], Security]:
    """brokerd's flags and the fuzzer's :class:`Security` for ``--auth`` and ``--tls``
    (the users file and certificate are written to ``where``)."""
    args: tuple[str, ...] = ()
    context: ssl.SSLContext | None = None
    if auth:
        write_users_file(where / "users.toml")
        args += ("--auth", "required", "--users-file", str(where / "users.toml"))
    if tls:
        flags, context = throwaway_tls(where)
        args += flags
    return args, Security(auth, context, client_hello(context) if context is not None else b"")


def on_tls_port(x: Input, stream: InputStream, hello: bytes) -> Input:
    """A raw input for a TLS broker: itself (in a TLS session) half the time; else the
    same bytes in plain TCP (now and then after a plain ``hello``), or a varied ClientHello."""
    pick = stream.rng.random()
    if pick < 0.5:
        return x
    if pick < 0.75:
        return Input(_HELLO + x.data if pick > 0.7 else x.data, "plain-on-tls", mutant=x.mutant)
    return Input(stream.mutator.vary(hello), "client-hello", mutant=True)


_HELLO = framed(pack([0, 0, "hello", {"versions": [1]}]))


class _Peer:
    """One fuzzing connection: a blocking socket with a deadline on every read; in TLS
    with ``tls`` (the handshake is done here), from the loopback address ``source``."""

    def __init__(self, addr: tuple[str, int], timeout: float, tls: ssl.SSLContext | None = None,
                 source: str | None = None) -> None:
        sock = socket.create_connection(addr, timeout=timeout, source_address=None if source is None else (source, 0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=addr[0])
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.conn = Connection("client", max_frame=2**32 - 1, encoder=_ENCODER)
        self.open = True
        #: Its hello is sent with its first batch; its reply is read with that batch's.
        self.greeted = False
        #: Its hello is sent and the reply to it not read yet (the first response).
        self.hello_pending = False
        self.hung = False
        #: Authenticated before its first batch (``--auth``): its frames run as that user.
        self.user = ""
        #: "plain" (no auth), "limited" (authenticated) or "anon" (before authentication).
        self.role = "plain"

    def half_close(self) -> None:
        """Send EOF, keep reading. ``SSLSocket.shutdown`` would drop the TLS session (later
        reads would see raw records): the TCP socket's own shutdown keeps it, and the
        broker needs no ``close_notify`` (SPEC §1.3)."""
        socket.socket.shutdown(self.sock, socket.SHUT_WR)

    def authenticate(self, handshake: Handshake) -> None:
        """``hello`` with the handshake's ``auth`` (and an ``auth`` request for SCRAM), as
        the SDK does (``client.auth``), before any fuzzed frame. Raises on any failure."""
        hello = self.call(0, "hello", {"versions": [1], "auth": handshake.hello_auth()})
        more = handshake.after_hello(hello.get("auth"))
        if more is not None:
            handshake.after_auth(self.call(1, "auth", more))
        self.greeted = True
        self.user = handshake.user or ""

    def call(self, rid: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """One request, and its reply's result; ``RuntimeError`` for an error or a close."""
        self.sock.sendall(framed(pack([0, rid, op, args])))
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                raise RuntimeError(f"the broker closed the connection before answering {op}")
            self.conn.receive_data(data)
            for frame in self.conn.frames():
                if isinstance(frame, Error) and frame.id == rid:
                    raise RuntimeError(f"{op}: {frame.code!r} {frame.message}")
                if isinstance(frame, Reply) and frame.id == rid:
                    return frame.result

    def close(self) -> None:
        self.open = False
        self.sock.close()


_ENCODER = Encoder()


@dataclass(slots=True)
class _Sent:
    """One batch in flight on one connection."""

    peer: _Peer
    batch: list[Input]
    #: Responses to read before the sentinel's reply (held consumes may answer later).
    wanted: int
    sentinel: int | None
    hello: bool


class Fuzzer:
    """Drives one broker process with hostile input; see the module docs."""

    def __init__(self, broker: BrokerProcess, connections: int = 8, timeout: float = 10.0,
                 accepted: Callable[[Input], None] | None = None, security: Security = Security()) -> None:
        self.broker = broker
        self.addr = (broker.host, broker.port)
        self.timeout = timeout
        self.security = security
        self.report = Report()
        self.peers: list[_Peer | None] = [None] * connections
        #: What each fuzzing connection is (``Security``): with auth, one in four is "anon".
        self.roles = [("anon" if i % 4 == 3 else "limited") if security.auth else "plain"
                      for i in range(connections)]
        #: Told of every frame the broker replied to (not with an error).
        self.accepted = accepted
        self._sentinels = 0
        #: The well-behaved client's ping round trips between rounds, in ms.
        self._pings: list[float] = []
        creds = {"user": ADMIN_USER, "password": PASSWORD} if security.auth else {}
        self.health = SyncClient(broker.addr, timeout=timeout, tls=security.tls, **creds)  # type: ignore[arg-type]
        self.health.create_queue(HEALTH_QUEUE)
        self.make_names()
        assert broker.pid is not None
        self.report.rss_start_kib, _ = rss_kib(broker.pid)

    def make_names(self) -> None:
        """Create the queues, topic and group some fuzzed names refer to (again, once a
        fuzzed request has deleted them), so that requests get past QUEUE_NOT_FOUND."""
        for op, args in (("queue_create", {"queue": "fz"}), ("queue_create", {"queue": "dl"}),
                         ("topic_create", {"topic": "fzt"}), ("group_create", {"topic": "fzt", "group": "g"})):
            try:
                self.health.request(op, args)
            except Exception:  # exists with other settings (a fuzzed create came first)
                pass

    # One round: a batch on every connection and some raw inputs, all in flight at once

    def run_round(self, batches: list[list[Input]], raws: list[Input]) -> None:
        sent: list[_Sent] = []
        for i, batch in enumerate(batches):
            if batch:
                s = self._send(i, batch)
                if s is not None:
                    sent.append(s)
        raw_peers = [(self._send_raw(x), x) for x in raws]
        self.ping()  # while the broker works through all of that
        for s in sent:
            self._collect(s)
            if not s.peer.open or any(x.may_hold for x in s.batch) or s.peer.role == "anon":
                # A held consume may answer late: a fresh connection starts clean (and
                # frames before authentication go on a fresh connection every round).
                self._drop(s.peer)
        for peer, x in raw_peers:
            if peer is None:
                continue
            if x.kind in _PLAIN_ON_TLS:
                self._expect_refusal(peer, x)
            else:
                self._expect_close(peer, time.monotonic() + self.timeout, [x])

    def _connect(self, role: str, raw: bool = False) -> _Peer | None:
        """A new fuzzing connection of ``role``: authenticated first if "limited" (by
        token and by SCRAM in turn); in plain TCP if ``raw`` (to a TLS port). A failure
        is a finding: a well-formed client must be able to connect."""
        hostile = self.security.auth and role != "limited"
        source = HOSTILE_SOURCES[self.report.connections % len(HOSTILE_SOURCES)] if hostile else None
        try:
            peer = _Peer(self.addr, self.timeout, None if raw else self.security.tls, source)
        except OSError as exc:
            self.report.findings.append(Finding("connect", f"a {role} connection failed: {exc!r}"))
            return None
        peer.role = role
        self.report.connections += 1
        if role == "limited":
            token = self.report.authenticated % 2 == 0
            handshake = Handshake(Credentials(token=LIMITED_TOKEN) if token else Credentials(LIMITED_USER, PASSWORD))
            try:
                peer.authenticate(handshake)
            except Exception as exc:  # any failure of a well-formed authentication is the finding
                self.report.findings.append(Finding("connect", f"authenticating as {LIMITED_USER} by "
                                                    f"{'token' if token else 'SCRAM'} failed: {exc!r}"))
                peer.close()
                return None
            self.report.hellos += 1
            self.report.authenticated += 1
        return peer

    def _send(self, i: int, batch: list[Input]) -> _Sent | None:
        peer = self.peers[i]
        if peer is None or not peer.open:
            peer = self.peers[i] = self._connect(self.roles[i])
            if peer is None:
                return None
        hello = not peer.greeted
        peer.greeted = True
        peer.hello_pending = hello
        sentinel: int | None = None
        tail = b""
        if not batch[-1].fatal:
            self._sentinels += 1
            sentinel = SENTINEL_BASE | (self._sentinels & _SENTINEL_MASK)
            tail = framed(pack([0, sentinel, "ping", {}]))
        try:
            peer.sock.sendall((_HELLO if hello else b"") + b"".join(x.data for x in batch) + tail)
        except OSError:
            self.report.resets += 1
            self._drop(peer)
            return None
        wanted = hello + len(batch) - sum(x.may_hold for x in batch)
        return _Sent(peer, batch, wanted, sentinel, hello)

    def _send_raw(self, x: Input) -> _Peer | None:
        """Raw bytes on a connection of their own (after hello), then EOF: the broker must
        answer with errors and close, within the timeout. To a TLS port in plain TCP, the
        bytes alone (``_PLAIN_ON_TLS``): the broker must refuse them (``_expect_refusal``)."""
        plain = x.kind in _PLAIN_ON_TLS
        peer = self._connect("anon" if self.security.auth else "plain", raw=plain)
        if peer is None:
            return None
        peer.hello_pending = not plain
        self._count(x, 1)
        if x.kind == "plain-on-tls":
            self.report.plain_on_tls += 1
        elif x.kind == "client-hello":
            self.report.client_hellos += 1
        try:
            peer.sock.sendall(x.data if plain else _HELLO + x.data)
            peer.half_close()
        except OSError:
            self.report.resets += 1
            peer.close()
            return None
        return peer

    def _count(self, x: Input, n: int) -> None:
        r = self.report
        r.inputs += n
        if x.kind.startswith("raw") or x.kind in _RAW_KINDS:
            r.raw_inputs += n
        else:
            r.frames += n
        if x.mutant:
            r.mutants += n
        else:
            r.generated += n

    def _drop(self, peer: _Peer) -> None:
        peer.close()
        for i, p in enumerate(self.peers):
            if p is peer:
                self.peers[i] = None

    def _collect(self, s: _Sent) -> None:
        """Read the batch's responses up to the sentinel's reply (or, after a fatal
        frame, up to the close): every frame before it must have had its response.
        A hang past the timeout is a finding. Frames after an unforeseen close were
        never read by the broker: they are counted as ``unread``, not as inputs."""
        peer, batch = s.peer, s.batch
        got = 0
        deadline = time.monotonic() + self.timeout
        ended = ""
        errored = False  # a closing error came before the close
        while not ended:
            frames = self._read(peer, deadline, batch)
            if frames is None:
                ended = "hang" if peer.hung else "closed"
                break
            for frame in frames:
                if isinstance(frame, Push):
                    continue
                if s.sentinel is not None and type(frame) in (Reply, Error) and frame.id == s.sentinel:
                    # (an Error: UNAUTHENTICATED, on a connection that has not authenticated)
                    ended = "sentinel"
                    break
                got += 1
                self._check(frame, batch, peer)
                if isinstance(frame, Error) and frame.code in CLOSING:
                    errored = True
                    self._expect_close(peer, deadline, batch)
                    ended = "closed"
                    break
        if ended == "sentinel":
            if got < s.wanted:
                self._finding("no_reply", f"{s.wanted - got} frames of the batch got no reply before "
                              "the ping sent after them", batch)
            reached = len(batch)
        elif ended == "closed":
            reached = min(len(batch), got - s.hello + sum(x.may_hold for x in batch) + (not errored))
        else:
            reached = len(batch)
        for x in batch[:reached]:
            self._count(x, 1)
        self.report.unread += len(batch) - reached

    def _read(self, peer: _Peer, deadline: float, batch: list[Input]) -> list[Any] | None:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            peer.sock.settimeout(left)
            data = peer.sock.recv(1 << 20)
        except TimeoutError:
            self._finding("hang", f"no reply within {self.timeout} s", batch)
            peer.hung = True
            peer.close()
            return None
        except ConnectionResetError:
            self.report.resets += 1
            peer.close()
            return None
        except ssl.SSLError as exc:
            self._finding("tls_error", f"reading from the broker's TLS session failed: {exc!r}", batch)
            peer.close()
            return None
        if not data:
            self.report.closes += 1
            peer.close()
            return None
        peer.conn.receive_data(data)
        try:
            return peer.conn.frames()
        except ProtocolError as exc:
            self._finding("bad_server_frame", f"the server sent a frame the codec refuses: {exc}", batch)
            peer.close()
            return None

    def _expect_close(self, peer: _Peer, deadline: float, batch: list[Input]) -> None:
        while peer.open:
            frames = self._read(peer, deadline, batch)
            for frame in frames or ():
                if not isinstance(frame, Push):
                    self._check(frame, batch, peer)

    def _check(self, frame: Any, batch: list[Input], peer: _Peer | None = None) -> None:
        if peer is not None and peer.hello_pending:
            peer.hello_pending = False
            if isinstance(frame, Reply):  # the connection's own hello
                self.report.hellos += 1
                return
        if isinstance(frame, Reply):
            self.report.replies += 1
            if self.accepted is not None:
                sent = [x for x in batch if x.rid == frame.id]
                if len(sent) == 1:  # the frame it answers, if the id tells
                    self.accepted(sent[0])
            return
        if not isinstance(frame, Error):
            self._finding("bad_server_frame", f"unexpected frame {frame!r}", batch)
            return
        self.report.errors += 1
        name = ErrorCode(frame.code).name if frame.code in ErrorCode._value2member_map_ else str(frame.code)
        self.report.codes[name] = self.report.codes.get(name, 0) + 1
        if frame.code == ErrorCode.INTERNAL_ERROR:
            culprit = [x for x in batch if x.rid == frame.id and x.rid is not None] or batch
            self._finding("internal_error", f"{frame.message} {frame.details}", culprit[:1])
        elif frame.code == ErrorCode.PERMISSION_DENIED:
            sent = [x for x in batch if x.rid == frame.id]
            if len(sent) == 1 and sent[0].op is not None:  # the frame it answers, if the id tells
                op = sent[0].op
                self.report.denied[op] = self.report.denied.get(op, 0) + 1

    def _expect_refusal(self, peer: _Peer, x: Input) -> None:
        """A plain connection to the TLS port: it must be closed within the timeout; if its
        first byte is not a TLS record's (0x16), after exactly one ``MALFORMED_FRAME`` with
        details ``{"tls": "required"}`` (SPEC §1.3). A ClientHello gets TLS records, not frames."""
        deadline = time.monotonic() + self.timeout
        got = b""
        reset = False
        while peer.open:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                peer.sock.settimeout(left)
                data = peer.sock.recv(1 << 16)
            except TimeoutError:
                self._finding("hang", f"a plain connection to the TLS port was not closed within {self.timeout} s",
                              [x])
                peer.close()
                return
            except ConnectionResetError:
                self.report.resets += 1
                reset = True
                peer.close()
                break
            if not data:
                self.report.closes += 1
                peer.close()
                break
            got += data
        if x.kind != "plain-on-tls" or x.data[:1] in (b"", b"\x16") or reset:
            return
        conn = Connection("client", max_frame=2**32 - 1)
        conn.receive_data(got)
        try:
            frames: list[Any] = conn.frames()
        except ProtocolError as exc:
            frames = [exc]
        first = frames[0] if len(frames) == 1 else None
        if isinstance(first, Error) and first.code == ErrorCode.MALFORMED_FRAME and first.id is None \
                and first.details == {"tls": "required"}:
            self.report.tls_refusals += 1
        else:
            self._finding("tls_refusal", f"a plain client on the TLS port got {frames!r}", [x])

    def _finding(self, kind: str, detail: str, batch: list[Input]) -> None:
        x = batch[0] if batch else None
        self.report.findings.append(Finding(kind, detail, x.op if x else None,
                                            x.data[:4096].hex() if x else ""))

    # The well-behaved client -----------------------------------------------------------

    def ping(self) -> None:
        """The well-behaved client pings (in every round, once the round's inputs are
        sent); its round trip is kept."""
        started = time.monotonic()
        try:
            self.health.ping()
        except Exception as exc:  # any failure of a well-behaved client is the finding
            self.report.findings.append(Finding("health", f"well-behaved client's ping failed: {exc!r}"))
            return
        self._pings.append((time.monotonic() - started) * 1000)

    def check_health(self) -> None:
        """The broker runs, and a well-behaved client on its own connection is served."""
        self.report.health_checks += 1
        pid = self.broker.pid
        if not self.broker.running or pid is None:
            self.report.findings.append(Finding("crash", f"broker exited: {self.broker.log_tail(2000)}"))
            raise SystemExit(1)
        _, hwm = rss_kib(pid)
        self.report.rss_peak_kib = max(self.report.rss_peak_kib, hwm)
        started = time.monotonic()
        try:
            self.health.ping()
            mid = self.health.publish(HEALTH_QUEUE, b"health")
            got = self.health.consume(HEALTH_QUEUE, max=1)
            assert [d.id for d in got] == [mid], (got, mid)
            self.health.ack(HEALTH_QUEUE, [mid])
        except Exception as exc:  # any failure of a well-behaved client is the finding
            self.report.findings.append(Finding("health", f"well-behaved client failed: {exc!r}"))
        took = (time.monotonic() - started) * 1000
        self.report.health_max_ms = max(self.report.health_max_ms, round(took, 1))
        self.make_names()

    def finish(self) -> None:
        """Close the fuzzing connections, delete what the run created, measure RSS, stop."""
        pings = sorted(self._pings)
        if pings:
            self.report.pings = len(pings)
            self.report.ping_ms = (round(pings[len(pings) // 2], 2), round(pings[int(len(pings) * 0.99)], 2),
                                   round(pings[-1], 2))
        for peer in list(self.peers):
            if peer is not None:
                self._drop(peer)
        try:
            for topic in self.health.list_topics():
                self.health.request("topic_delete", {"topic": topic.name})
            for q in self.health.list_queues():
                if "/" not in q.name:
                    self.health.request("queue_delete", {"queue": q.name})
        except Exception as exc:
            self.report.findings.append(Finding("health", f"cleanup failed: {exc!r}"))
        self.health.close()
        pid = self.broker.pid
        assert pid is not None
        self.report.rss_end_kib, hwm = settled_rss(pid)
        self.report.rss_peak_kib = max(self.report.rss_peak_kib, hwm)
        status = self.broker.stop()
        self.report.exit_status = status
        if status != 0:
            self.report.findings.append(Finding("exit_status", f"broker exited {status} on SIGTERM"))
        for tb in re.findall(r"Traceback \(most recent call last\):.*?(?=\n\S|\Z)",
                             self.broker.log_tail(10**8), re.S):
            self.report.findings.append(Finding("traceback", tb[-3000:]))


#: Raw inputs sent in plain TCP to a TLS port.
_PLAIN_ON_TLS = frozenset({"plain-on-tls", "client-hello"})
_RAW_KINDS = frozenset({"truncated", "oversized", "nested", "ext", *_PLAIN_ON_TLS})


def fuzz_broker(data_dir: Path, inputs: int, *, connections: int = 8, batch: int = 64, mutants: int = 15,
                timeout: float = 10.0, seed: int | None = None, fsync: str = "never",
                health_every: int = 5000, progress: Callable[[Report], None] | None = None,
                auth: bool = False, tls: bool = False) -> Report:
    """Start a broker in ``data_dir`` and send it at least ``inputs`` inputs; see the module
    docs. ``auth``: the broker requires authentication; ``tls``: it serves TLS (``Security``)."""
    started = time.monotonic()
    args, security = secure(data_dir, auth, tls)
    broker = BrokerProcess(data_dir / "data", fsync=fsync, log_path=data_dir / "broker.log", args=args)
    broker.start()
    try:
        stream = InputStream(seed, mutants)
        fuzzer = Fuzzer(broker, connections, timeout, stream.mutator.accept, security)
        report = fuzzer.report
        fuzzer.check_health()
        next_health = health_every
        raw_due = 0.0
        while report.inputs < inputs:
            batches = [stream.frames(batch) for _ in range(connections)]
            raw_due += sum(map(len, batches)) * stream.raw_ratio
            raws = [stream.raw() for _ in range(int(raw_due))]
            if security.tls is not None:
                raws = [on_tls_port(x, stream, security.client_hello) for x in raws]
            raw_due -= int(raw_due)
            fuzzer.run_round(batches, raws)
            if report.inputs >= next_health:
                next_health += health_every
                fuzzer.check_health()
                report.seconds = round(time.monotonic() - started, 1)
                if progress is not None:
                    progress(report)
        fuzzer.check_health()
        fuzzer.finish()
    finally:
        broker.kill()
    fuzzer.report.seconds = round(time.monotonic() - started, 1)
    return fuzzer.report


# -- coverage-guided: the codec in-process -----------------------------------------------

def codec_target(data: bytes, proto: Any = None) -> None:
    """One input: bytes to the server's sans-IO connection (``proto``: the ``protocol``
    package to use). Only ``ProtocolError`` may come out (a typed refusal); anything
    else is a bug and propagates."""
    proto = proto or sys.modules["protocol"]
    conn = proto.Connection("server", max_frame=1 << 16)
    conn.receive_data(data)
    try:
        conn.frames()
    except proto.ProtocolError:
        pass
    try:
        obj = msgpack.unpackb(data[4:], raw=False)
    except Exception:  # msgpack's own refusals; the codec's are checked above
        return
    try:
        proto.parse_request(obj)
    except proto.ProtocolError:
        pass


#: SPEC.md, whose §11 byte-exact examples seed the codec's corpus.
SPEC = ROOT / "SPEC.md"
_SPEC_EXAMPLE = re.compile(r"^```spec-example[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_SPEC_KEY = re.compile(r"^([a-z][a-z0-9-]*):(.*)$")


def spec_frames(spec: Path = SPEC) -> list[tuple[str, str, bytes]]:
    """The frames of SPEC.md §11's byte-exact examples (the ones
    tests/protocol/test_spec_examples.py checks), in the document's order: (the example's
    ``name``, ``"request"`` or ``"reply"``, the frame's bytes, length prefix included)."""
    out: list[tuple[str, str, bytes]] = []
    for block in _SPEC_EXAMPLE.findall(spec.read_text(encoding="utf-8")):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = _SPEC_KEY.match(line)
            if m:
                last = m.group(1)
                fields[last] = m.group(2).strip()
            elif last:
                fields[last] += " " + line.strip()
        for side in ("request", "reply"):
            if side in fields:
                out.append((fields.get("name", "?"), side, bytes.fromhex(fields[side])))
    return out


def write_codec_seeds(corpus: Path, examples: int = 200, seed: int = 0) -> int:
    """Seed the codec's corpus in ``corpus``: every frame of SPEC.md §11 alone, the
    requests of each run of examples that share a connection as one input, and the
    frames and raw inputs of ``examples`` hypothesis examples (:data:`example_inputs`);
    returns how many files were written. Made by the tool each time, never committed."""
    corpus.mkdir(parents=True, exist_ok=True)
    inputs: list[tuple[str, bytes]] = []
    spec = spec_frames()
    for name, side, data in spec:
        inputs.append((f"spec-{name}-{side}", data))
    # The examples' requests in order, cut before each hello, as connections send them.
    connection: list[bytes] = []
    connections = 0
    for name, side, data in spec:
        if side != "request":
            continue
        body = _decode(data)
        if type(body) is list and body[2:3] == ["hello"] and connection:
            inputs.append((f"spec-connection-{connections}", b"".join(connection)))
            connections += 1
            connection = []
        connection.append(data)
    if connection:
        inputs.append((f"spec-connection-{connections}", b"".join(connection)))
    frames, raw = hypothesis_inputs(examples, seed)
    inputs += [(f"hypothesis-frame-{i:05d}", x.data) for i, x in enumerate(frames)]
    inputs += [(f"hypothesis-raw-{i:05d}", x.data) for i, x in enumerate(raw)]
    for name, data in inputs:
        (corpus / re.sub(r"[^A-Za-z0-9_.-]", "_", name)).write_bytes(data)
    return len(inputs)


def fuzz_codec(argv: list[str], corpus: Path | None = None) -> None:
    """Run atheris (libFuzzer) on :func:`codec_target`; ``argv`` are libFuzzer's flags
    (``-runs=N``, ``-max_total_time=S``), ``corpus`` the seed corpus directory (libFuzzer
    adds what it finds to it). Never returns: libFuzzer exits the process."""
    import importlib

    import atheris  # type: ignore[import-not-found]

    # protocol is loaded already (above): load a fresh copy with coverage instrumentation.
    for name in [m for m in sys.modules if m == "protocol" or m.startswith("protocol.")]:
        del sys.modules[name]
    with atheris.instrument_imports(include=["protocol"]):
        proto = importlib.import_module("protocol")
    atheris.Setup([sys.argv[0], *argv, *([str(corpus)] if corpus is not None else [])],
                  lambda b: codec_target(b, proto))
    atheris.Fuzz()


# -- command line ---------------------------------------------------------------------

_EPILOG = """\
The long run (docs/benchmarks.md, "Fuzzing"):
  python -m tools.fuzz --inputs 1000000 --seed 1
Coverage-guided, in-process:
  python -m tools.fuzz codec --runs 1000000       # the sans-IO codec (atheris)
  python -m tools.fuzzcommands --runs 1000000     # command validation (atheris)
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["codec"]:
        p = argparse.ArgumentParser(prog="python -m tools.fuzz codec",
                                    description="atheris (libFuzzer) on protocol's sans-IO codec, seeded with "
                                    "SPEC.md §11's frames and hypothesis-drawn inputs; other flags go to libFuzzer")
        p.add_argument("--runs", type=int, default=100_000, help="inputs to run (100,000)")
        p.add_argument("--max-seconds", type=int, default=0, help="stop after this many seconds (0: no limit)")
        p.add_argument("--corpus", type=Path, default=None,
                       help="corpus directory, kept between runs (default: a temporary one); seeded when empty")
        p.add_argument("--seeds", type=int, default=200, help="hypothesis examples in a new corpus (200)")
        p.add_argument("--seed", type=int, default=1, help="seed of libFuzzer and of the corpus (1)")
        ns, rest = p.parse_known_args(args[1:])
        flags = [f"-runs={ns.runs}", f"-seed={ns.seed}",
                 *([f"-max_total_time={ns.max_seconds}"] if ns.max_seconds else []), *rest]
        if ns.corpus is not None:
            if not ns.corpus.exists() or not any(ns.corpus.iterdir()):
                written = write_codec_seeds(ns.corpus, ns.seeds, ns.seed)
                print(f"seed corpus: {written} inputs in {ns.corpus}", file=sys.stderr, flush=True)
            fuzz_codec(flags, ns.corpus)  # libFuzzer ends the process
        # A temporary corpus: libFuzzer ends its process, so it runs in a child and this
        # one removes the directory after it.
        with tempfile.TemporaryDirectory(prefix="lockgate-fuzz-codec-") as tmp:
            child = [sys.executable, "-m", "tools.fuzz", "codec", "--corpus", str(Path(tmp) / "corpus"),
                     "--seeds", str(ns.seeds), *args[1:]]
            return subprocess.run(child, check=False).returncode
    p = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__.split("\n\n")[0],
                                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=10_000, help="inputs to send, at least (default 10,000)")
    p.add_argument("--connections", type=int, default=8, help="fuzzing connections at once (8)")
    p.add_argument("--batch", type=int, default=64, help="frames pipelined per connection and round (64)")
    p.add_argument("--mutants", type=int, default=15,
                   help="variations per hypothesis-drawn input, on average (15; 0: hypothesis only)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a reply or close may take (10)")
    p.add_argument("--seed", type=int, default=None, help="seed of the generators (default random)")
    p.add_argument("--fsync", default="never", help="the broker's fsync policy (never)")
    p.add_argument("--auth", action="store_true",
                   help="the broker requires authentication (a users file made for the run); the fuzzing "
                   "connections send their frames before authenticating and as a user of limited permissions")
    p.add_argument("--tls", action="store_true",
                   help="the broker serves TLS (a throwaway certificate); every connection speaks TLS, and raw "
                   "inputs also go to the TLS port in plain TCP, with varied ClientHellos")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    ns = p.parse_args(args)

    def progress(r: Report) -> None:
        print(f"  {r.inputs:>9,} inputs  {r.seconds:>6.0f} s  {r.inputs / max(r.seconds, 0.1):>5.0f}/s  "
              f"findings {len(r.findings)}  RSS peak {r.rss_peak_kib / 1024:.0f} MiB  "
              f"slowest health check {r.health_max_ms:.0f} ms", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="lockgate-fuzz-") as tmp:
        report = fuzz_broker(Path(tmp), ns.inputs, connections=ns.connections, batch=ns.batch,
                             mutants=ns.mutants, timeout=ns.timeout, seed=ns.seed, fsync=ns.fsync,
                             progress=progress, auth=ns.auth, tls=ns.tls)
    out = asdict(report)
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if ns.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{report.inputs:,} inputs in {report.seconds} s ({report.inputs / max(report.seconds, 0.1):,.0f}/s): "
              f"{report.frames:,} frames pipelined, {report.raw_inputs:,} raw on connections of their own; "
              f"{report.generated:,} drawn by hypothesis, {report.mutants:,} variations of them; "
              f"{report.unread:,} unread after a close")
        print(f"{report.replies:,} replies, {report.errors:,} errors, {report.closes:,} closes, "
              f"{report.resets:,} resets, {report.connections:,} connections ({report.hellos:,} hellos answered); "
              f"{report.health_checks} health "
              f"checks, the slowest {report.health_max_ms} ms; {report.pings:,} pings during rounds: "
              "median {0} ms, p99 {1} ms, slowest {2} ms".format(*report.ping_ms))
        print(f"broker RSS: start {report.rss_start_kib / 1024:.1f} MiB, peak {report.rss_peak_kib / 1024:.1f} MiB, "
              f"end {report.rss_end_kib / 1024:.1f} MiB; exit status {report.exit_status}")
        print("error codes: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.codes.items())))
        if ns.auth:
            print(f"auth: {report.authenticated:,} connections authenticated as {LIMITED_USER}; "
                  f"PERMISSION_DENIED in {len(report.denied)} ops: "
                  + ", ".join(f"{k} {v:,}" for k, v in sorted(report.denied.items())))
        if ns.tls:
            print(f"tls: {report.plain_on_tls:,} plain inputs to the TLS port ({report.tls_refusals:,} refused "
                  f"with MALFORMED_FRAME tls=required, the others began with 0x16 or were empty), "
                  f"{report.client_hellos:,} varied ClientHellos")
        for f in report.findings:
            print(f"FINDING {f.kind} op={f.op} {f.detail}\n  input {f.input_hex[:400]}")
        print("no findings" if report.ok else f"{len(report.findings)} findings")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
