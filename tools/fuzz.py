"""Protocol fuzzing: hostile input to a real broker process, and coverage-guided fuzzing of the codec.

    python -m tools.fuzz --inputs 1000000 --seed 1   # hostile clients against a fresh broker
    python -m tools.fuzz --inputs 200000 --auth --tls  # ... requiring authentication, in TLS
    python -m tools.fuzz codec --runs 100000         # atheris (libFuzzer) on protocol's codec,
                                                     # seeded with SPEC §11's frames and hypothesis inputs
    python -m tools.fuzzcommands --runs 100000       # atheris on the command validation

The broker run starts ``python -m broker`` on 127.0.0.1, port 0, with a temporary data
directory (``tools.procs``). What it sends (made by ``tools.fuzzinputs``; the codec run
is ``tools.fuzzcodec``):

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
import re
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from client import SyncClient
from client.auth import Credentials, Handshake
from protocol import Connection, Encoder, Error, ErrorCode, ProtocolError, Push, Reply
from protocol.scram import ScramSecret
from protocol.users import Patterns, User, Users, dump, token_hash
from tools import fuzzcodec
from tools.fuzzinputs import (
    ADMIN_TOKEN, ADMIN_USER, CLOSING, HEALTH_QUEUE, HOSTILE_SOURCES, Input, InputStream, LIMITED_PERMISSIONS,
    LIMITED_TOKEN, LIMITED_USER, PASSWORD, SENTINEL_BASE, SENTINEL_MASK, framed, pack,
)
from tools.procs import BrokerProcess
from tools.tlscerts import throwaway_tls

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
            sentinel = SENTINEL_BASE | (self._sentinels & SENTINEL_MASK)
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
        return fuzzcodec.main(args[1:])
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

