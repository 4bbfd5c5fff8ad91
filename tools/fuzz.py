"""Protocol fuzzing: hostile input to a real broker process, and coverage-guided fuzzing of the codec.

    python -m tools.fuzz --inputs 100000        # hostile clients against a fresh broker
    python -m tools.fuzz codec --runs 100000    # atheris (libFuzzer) on protocol's codec

The broker run starts ``python -m broker`` on 127.0.0.1, port 0, with a temporary data
directory (``tools.procs``) and sends it, on ``--connections`` connections at once,
hypothesis-generated frames: well-formed requests of every op (SPEC §5) whose arguments
have wrong types and extreme values, requests of wrong shape, random bytes, truncated
frames, oversized length prefixes and deeply nested bodies. Between batches a
well-behaved client on its own connection pings and does a publish, consume and ack, and
the process must still be running. It checks, and reports as findings:

- every frame gets a reply or error, or the connection closes cleanly, within
  ``--timeout`` seconds (a hang is a finding);
- no reply is ``INTERNAL_ERROR`` (the op and the one frame that got it are reported);
- the server's frames decode; the broker's log holds no traceback;
- the broker exits 0 when stopped with SIGTERM.

It reports the broker's RSS (``/proc/PID/status``) at the start, its peak (``VmHWM``)
and at the end, after the queues and topics the run made are deleted. Exit status 0
when nothing was found, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import struct
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
from protocol import Connection, Error, ErrorCode, Op, ProtocolError, Push, Reply
from tools.procs import BrokerProcess

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
    Op.TOPIC_CREATE: ("topic", "shards", "retention", "max_age_ms", "max_bytes", "max_messages"),
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


def _plausible(name: str) -> st.SearchStrategy[Any]:
    """Values near the right type for an argument, so that checks past the first run."""
    if name in ("queue", "topic", "group", "dead_letter"):
        return st.sampled_from(NAMES)
    if name == "ids":
        return _id_lists
    if name == "messages":
        return st.lists(st.one_of(_pub_entry, st.tuples(st.binary(max_size=16), st.none(), _headers).map(list)),
                        max_size=5)
    if name in ("start", "to"):
        return st.one_of(st.sampled_from(("earliest", "latest", "middle")), _ints, st.lists(_ints, max_size=4))
    if name in ("filter", "auth"):
        return st.one_of(_headers, st.fixed_dictionaries({"mechanism": st.sampled_from(
            ("TOKEN", "SCRAM-SHA-256", "PLAIN"))}, optional={"token": wild, "client_first": wild}))
    if name == "steps":
        step = st.fixed_dictionaries({"op": st.sampled_from(("ack", "publish", "topic_publish", "ping", ""))},
                                     optional={"queue": st.sampled_from(NAMES), "topic": st.sampled_from(NAMES),
                                               "ids": _id_lists, "messages": _plausible("messages"),
                                               "extra": wild})
        return st.lists(st.one_of(step, wild), max_size=5)
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


#: One example: for each connection a pipelined batch of frames; or one raw input on
#: a connection of its own.
frame_batches = st.lists(st.lists(st.one_of(requests(), requests(), requests(), shapes()), max_size=12),
                         min_size=1, max_size=4)
examples = st.one_of(frame_batches, frame_batches, frame_batches, raws())


# -- findings and the report ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # "internal_error", "hang", "bad_server_frame", "crash", "health", "traceback", "exit_status"
    detail: str
    op: str | None = None
    input_hex: str = ""


@dataclass(slots=True)
class Report:
    inputs: int = 0
    frames: int = 0
    raw_inputs: int = 0
    replies: int = 0
    errors: int = 0
    closes: int = 0
    resets: int = 0
    health_checks: int = 0
    seconds: float = 0.0
    rss_start_kib: int = 0
    rss_peak_kib: int = 0
    rss_end_kib: int = 0
    exit_status: int | None = None
    codes: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


# -- the broker run ---------------------------------------------------------------------

class _Peer:
    """One fuzzing connection: a blocking socket with a deadline on every read."""

    def __init__(self, addr: tuple[str, int], timeout: float, hello: bool = True) -> None:
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = Connection("client", max_frame=2**32 - 1)
        self.timeout = timeout
        self.open = True
        if hello:
            self.sock.sendall(framed(pack([0, 0, "hello", {"versions": [1]}])))

    def close(self) -> None:
        self.open = False
        self.sock.close()


class Fuzzer:
    """Drives one broker process with hostile input; see the module docs."""

    def __init__(self, broker: BrokerProcess, connections: int = 4, timeout: float = 10.0,
                 progress: Callable[[Report], None] | None = None) -> None:
        self.broker = broker
        self.addr = (broker.host, broker.port)
        self.timeout = timeout
        self.report = Report()
        self.peers: list[_Peer | None] = [None] * connections
        self.progress = progress
        self.health = SyncClient(broker.addr, timeout=timeout)
        self.health.create_queue(HEALTH_QUEUE)
        # Some of the fuzzed names exist, so that requests get past QUEUE_NOT_FOUND.
        self.health.request("queue_create", {"queue": "fz"})
        self.health.request("queue_create", {"queue": "dl"})
        self.health.request("topic_create", {"topic": "fzt"})
        self.health.request("group_create", {"topic": "fzt", "group": "g"})
        assert broker.pid is not None
        self.report.rss_start_kib, _ = rss_kib(broker.pid)

    # One example ---------------------------------------------------------------------

    def run_example(self, example: list[list[Input]] | Input) -> None:
        if isinstance(example, Input):
            self._run_raw(example)
            return
        sent: list[tuple[_Peer, list[Input]]] = []
        for i, batch in enumerate(example):
            if not batch:
                continue
            peer = self._peer(i % len(self.peers))
            try:
                peer.sock.sendall(b"".join(x.data for x in batch))
            except OSError:
                self.report.resets += 1
                self._drop(i % len(self.peers))
                continue
            sent.append((peer, batch))
            self.report.inputs += len(batch)
            self.report.frames += len(batch)
        for peer, batch in sent:
            self._collect(peer, batch)
            if not peer.open or any(x.may_hold for x in batch):
                # A held consume may answer late: a fresh connection starts clean.
                self._drop(self.peers.index(peer))

    def _peer(self, i: int) -> _Peer:
        peer = self.peers[i]
        if peer is None or not peer.open:
            peer = self.peers[i] = _Peer(self.addr, self.timeout)
            self._collect(peer, [Input(b"", "hello", "hello", 0)])
        return peer

    def _drop(self, i: int) -> None:
        peer = self.peers[i]
        if peer is not None:
            peer.close()
        self.peers[i] = None

    def _collect(self, peer: _Peer, batch: list[Input]) -> None:
        """Read one response per frame of ``batch`` (held consumes excepted), or up to a
        clean close; a hang past the timeout is a finding."""
        wanted = len(batch) - sum(x.may_hold for x in batch)
        got = 0
        deadline = time.monotonic() + self.timeout
        while got < wanted and peer.open:
            frames = self._read(peer, deadline, batch)
            if frames is None:
                return
            for frame in frames:
                if isinstance(frame, Push):
                    continue
                got += 1
                self._check(frame, batch)
                if isinstance(frame, Error) and frame.code in CLOSING:
                    self._expect_close(peer, deadline, batch)
                    return

    def _read(self, peer: _Peer, deadline: float, batch: list[Input]) -> list[Any] | None:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            peer.sock.settimeout(left)
            data = peer.sock.recv(1 << 20)
        except TimeoutError:
            self._finding("hang", f"no reply within {self.timeout} s", batch)
            peer.close()
            return None
        except ConnectionResetError:
            self.report.resets += 1
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
                    self._check(frame, batch)

    def _check(self, frame: Any, batch: list[Input]) -> None:
        if isinstance(frame, Reply):
            self.report.replies += 1
            return
        if not isinstance(frame, Error):
            self._finding("bad_server_frame", f"unexpected frame {frame!r}", batch)
            return
        self.report.errors += 1
        name = ErrorCode(frame.code).name if frame.code in ErrorCode._value2member_map_ else str(frame.code)
        self.report.codes[name] = self.report.codes.get(name, 0) + 1
        if frame.code == ErrorCode.INTERNAL_ERROR:
            culprit = [x for x in batch if x.rid == frame.id and x.kind == "request"] or batch
            self._finding("internal_error", f"{frame.message} {frame.details}", culprit[:1])

    def _run_raw(self, x: Input) -> None:
        """Raw bytes on a connection of their own (after hello), then EOF: the broker must
        answer with errors and close, within the timeout."""
        self.report.inputs += 1
        self.report.raw_inputs += 1
        peer = _Peer(self.addr, self.timeout)
        try:
            self._collect(peer, [Input(b"", "hello", "hello", 0)])
            peer.sock.sendall(x.data)
            peer.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.report.resets += 1
            peer.close()
            return
        self._expect_close(peer, time.monotonic() + self.timeout, [x])

    def _finding(self, kind: str, detail: str, batch: list[Input]) -> None:
        x = batch[0] if batch else None
        self.report.findings.append(Finding(kind, detail, x.op if x else None,
                                            x.data[:4096].hex() if x else ""))

    # Between batches -----------------------------------------------------------------

    def check_health(self) -> None:
        """The broker runs, and a well-behaved client on its own connection is served."""
        self.report.health_checks += 1
        pid = self.broker.pid
        if not self.broker.running or pid is None:
            self.report.findings.append(Finding("crash", f"broker exited: {self.broker.log_tail(2000)}"))
            raise SystemExit(1)
        _, hwm = rss_kib(pid)
        self.report.rss_peak_kib = max(self.report.rss_peak_kib, hwm)
        try:
            self.health.ping()
            mid = self.health.publish(HEALTH_QUEUE, b"health")
            got = self.health.consume(HEALTH_QUEUE, max=1)
            assert [d.id for d in got] == [mid], (got, mid)
            self.health.ack(HEALTH_QUEUE, [mid])
        except Exception as exc:  # any failure of a well-behaved client is the finding
            self.report.findings.append(Finding("health", f"well-behaved client failed: {exc!r}"))

    def finish(self) -> None:
        """Close the fuzzing connections, delete what the run created, measure RSS, stop."""
        for i in range(len(self.peers)):
            self._drop(i)
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
        self.report.rss_end_kib, hwm = rss_kib(pid)
        self.report.rss_peak_kib = max(self.report.rss_peak_kib, hwm)
        status = self.broker.stop()
        self.report.exit_status = status
        if status != 0:
            self.report.findings.append(Finding("exit_status", f"broker exited {status} on SIGTERM"))
        for tb in re.findall(r"Traceback \(most recent call last\):.*?(?=\n\S|\Z)",
                             self.broker.log_tail(10**7), re.S):
            self.report.findings.append(Finding("traceback", tb[-3000:]))


def fuzz_broker(data_dir: Path, inputs: int, *, connections: int = 4, timeout: float = 10.0,
                examples_per_batch: int = 100, seed: int | None = None, fsync: str = "never",
                progress: Callable[[Report], None] | None = None) -> Report:
    """Start a broker in ``data_dir`` and send it at least ``inputs`` inputs; see the module docs."""
    started = time.monotonic()
    broker = BrokerProcess(data_dir / "data", fsync=fsync, log_path=data_dir / "broker.log")
    broker.start()
    try:
        fuzzer = Fuzzer(broker, connections, timeout, progress)
        fuzzer.check_health()
        batch = 0
        while fuzzer.report.inputs < inputs:
            batch += 1

            @settings(max_examples=examples_per_batch, phases=[Phase.generate], database=None,
                      deadline=None, suppress_health_check=list(HealthCheck))
            @given(examples)
            def one(example: list[list[Input]] | Input) -> None:
                fuzzer.run_example(example)

            if seed is not None:
                one = with_seed(seed + batch)(one)
            one()
            fuzzer.check_health()
            if progress is not None:
                progress(fuzzer.report)
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


def fuzz_codec(argv: list[str]) -> None:
    """Run atheris (libFuzzer) on :func:`codec_target`; ``argv`` are libFuzzer's flags
    (``-runs=N``, ``-max_total_time=S``). Never returns: libFuzzer exits the process."""
    import importlib

    import atheris  # type: ignore[import-not-found]

    # protocol is loaded already (above): load a fresh copy with coverage instrumentation.
    for name in [m for m in sys.modules if m == "protocol" or m.startswith("protocol.")]:
        del sys.modules[name]
    with atheris.instrument_imports(include=["protocol"]):
        proto = importlib.import_module("protocol")
    atheris.Setup([sys.argv[0], *argv], lambda b: codec_target(b, proto))
    atheris.Fuzz()


# -- command line ---------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["codec"]:
        p = argparse.ArgumentParser(prog="python -m tools.fuzz codec")
        p.add_argument("--runs", type=int, default=100_000)
        p.add_argument("--max-seconds", type=int, default=0)
        ns, rest = p.parse_known_args(args[1:])
        fuzz_codec([f"-runs={ns.runs}", *([f"-max_total_time={ns.max_seconds}"] if ns.max_seconds else []), *rest])
        return 0
    p = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=10_000, help="inputs to send, at least (default 10,000)")
    p.add_argument("--connections", type=int, default=4, help="fuzzing connections at once (4)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a reply or close may take (10)")
    p.add_argument("--seed", type=int, default=None, help="seed of the generator (default random)")
    p.add_argument("--fsync", default="never", help="the broker's fsync policy (never)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    ns = p.parse_args(args)

    def progress(r: Report) -> None:
        print(f"  {r.inputs:>9,} inputs  {r.seconds or 0:.0f}  findings {len(r.findings)}",
              file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="lockgate-fuzz-") as tmp:
        report = fuzz_broker(Path(tmp), ns.inputs, connections=ns.connections, timeout=ns.timeout,
                             seed=ns.seed, fsync=ns.fsync, progress=progress)
    out = asdict(report)
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if ns.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{report.inputs:,} inputs ({report.frames:,} frames, {report.raw_inputs:,} raw) in "
              f"{report.seconds} s: {report.replies:,} replies, {report.errors:,} errors, "
              f"{report.closes:,} closes, {report.resets:,} resets, {report.health_checks} health checks")
        print(f"broker RSS: start {report.rss_start_kib / 1024:.1f} MiB, peak {report.rss_peak_kib / 1024:.1f} MiB, "
              f"end {report.rss_end_kib / 1024:.1f} MiB; exit status {report.exit_status}")
        print("error codes: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.codes.items())))
        for f in report.findings:
            print(f"FINDING {f.kind} op={f.op} {f.detail}\n  input {f.input_hex[:400]}")
        print("no findings" if report.ok else f"{len(report.findings)} findings")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
