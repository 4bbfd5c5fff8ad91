"""A bounded load harness: many connections, producers, slow consumers and hostile
clients against one broker, with the broker's memory and a small client's ping latency
measured throughout.

    python -m tools.loadtest                         # 10,000 idle connections, 64 MiB budget
    python -m tools.loadtest --connections 200 --phase-s 2 --json

Starts a broker (``python -m broker`` on 127.0.0.1, a temporary data directory, ``auth =
"required"`` with a token user unless ``--no-auth``, ``--memory-budget``, the metrics
endpoint on a loopback port) and runs these phases in turn, each ``--phase-s`` seconds:

1. ``baseline``: the broker alone (and the pinger).
2. ``idle``: ``--connections`` connections that complete ``hello`` (authenticated with
   the token) and then send nothing, opened before the phase starts; they stay open to
   the end. Its RSS is the figure for idle connections.
3. ``load``: ``--producers`` connections publish batches of 10 messages of 256 bytes
   every 10 ms, and ``--consumers`` slow consumers take up to 10, hold them 200 ms and
   ack; both run to the end.
4. ``slowloris``: ``--slowloris`` connections each start a 1 KiB frame and send one more
   byte a second.
5. ``buffer-fill``: ``--fillers`` connections each announce a frame of the broker's
   ``max_frame`` and send its body at ``--fill-mib-s`` each (2 MiB/s: pinning memory needs
   no bandwidth), 64 KiB at a time; when the broker closes one (``MEMORY_LIMIT``), it
   connects and starts again at once.
6. ``amplification``: with ``--queues`` queues, ``--amplifiers`` connections pipeline
   ``queue_list`` requests and never read the replies.

A separate pinger process (``--pinger``) pings over its own connection every 20 ms and
logs each latency; the harness samples the broker's RSS (``/proc/PID/status``) every
250 ms and the budget's use (``broker_info``) every second. Per phase it reports the
broker's RSS (start, max, end), the budget's most used, the ping p50/p99/max and the
pings that failed, and what the attackers saw (frames refused, connections closed).

Loopback only and bounded: every connection goes to the broker this harness started on
127.0.0.1; at most the counts given (each bounded below) and ``--phase-s`` per phase. It
raises its own open-file limit to the hard limit; the broker raises its own. The broker
and the pinger are stopped by their PIDs.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import trio

from protocol import NEED_DATA, Connection, Encoder, Error, ErrorCode, Reply
from protocol.users import Patterns, User, Users, dump, new_token, token_hash
from tools.idlebench import machine, rss_kib
from tools.procs import BrokerProcess

PING_INTERVAL_S = 0.02
RSS_EVERY_S = 0.25
BUDGET_EVERY_S = 1.0
OPEN_AT_ONCE = 200
#: Longest a phase's setup (opening the idle connections) may take, in seconds.
SETUP_S = 300.0
FILL_CHUNK = 64 * 1024
MIB = 1024 * 1024


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    started: float = 0.0
    ended: float = 0.0
    rss_start_kib: int = 0
    rss_max_kib: int = 0
    rss_end_kib: int = 0
    budget_used_max: int = 0
    pings: int = 0
    ping_p50_ms: float = 0.0
    ping_p99_ms: float = 0.0
    ping_max_ms: float = 0.0
    ping_failures: int = 0
    notes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    connections: int
    producers: int
    consumers: int
    slowloris: int
    fillers: int
    amplifiers: int
    queues: int
    phase_s: float
    budget: int
    auth: bool
    fill_mib_s: float = 2.0


# -- raw connections ----------------------------------------------------------------------


class Raw:
    """One connection speaking frames (hostile ones send raw bytes too)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection("client", max_frame=2**32 - 1)
        self.enc = Encoder()
        self.next_id = 1

    @classmethod
    async def open(cls, addr: tuple[str, int], token: str | None) -> Raw:
        raw = cls(await trio.open_tcp_stream(*addr))
        args: dict[str, Any] = {"versions": [1]}
        if token is not None:
            args["auth"] = {"mechanism": "TOKEN", "token": token}
        reply = await raw.call("hello", args)
        if not isinstance(reply, Reply):
            raise RuntimeError(f"hello failed: {reply}")
        return raw

    async def send(self, op: str, args: dict[str, Any]) -> int:
        rid = self.next_id
        self.next_id += 1
        await self.stream.send_all(self.enc.request(rid, op, args))
        return rid

    async def frame(self) -> Any:
        """The next frame, or None at EOF."""
        while True:
            frame = self.conn.next_frame()
            if frame is not NEED_DATA:
                return frame
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return None
            self.conn.receive_data(data)

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        await self.send(op, args)
        return await self.frame()


# -- the pinger (a process of its own, so the harness's own load does not time it) ----------


def ping_loop(addr: str, token: str | None, out: Path) -> None:
    """Ping ``addr`` every ``PING_INTERVAL_S`` until SIGTERM; one line per ping to ``out``:
    ``monotonic_s latency_ms`` (latency -1: the ping failed, then it reconnects)."""
    host, port = addr.rsplit(":", 1)
    enc = Encoder()
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with open(out, "a", buffering=1) as log:
        sock: socket.socket | None = None
        conn = Connection("client")
        rid = 0
        while not stop:
            tick = time.monotonic()
            try:
                if sock is None:
                    sock = socket.create_connection((host, int(port)), timeout=5)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn = Connection("client")
                    args: dict[str, Any] = {"versions": [1]}
                    if token:
                        args["auth"] = {"mechanism": "TOKEN", "token": token}
                    sock.sendall(enc.request(0, "hello", args))
                    _await_reply(sock, conn, 0)
                rid += 1
                t0 = time.monotonic()
                sock.sendall(enc.request(rid, "ping", {}))
                _await_reply(sock, conn, rid)
                log.write(f"{t0:.6f} {(time.monotonic() - t0) * 1000:.3f}\n")
            except (OSError, RuntimeError):
                log.write(f"{tick:.6f} -1\n")
                if sock is not None:
                    sock.close()
                sock = None
            time.sleep(max(0.0, tick + PING_INTERVAL_S - time.monotonic()))


def _await_reply(sock: socket.socket, conn: Connection, rid: int) -> None:
    while True:
        frame = conn.next_frame()
        if frame is NEED_DATA:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("closed")
            conn.receive_data(data)
            continue
        if getattr(frame, "id", None) == rid:
            if not isinstance(frame, Reply):
                raise RuntimeError(f"ping failed: {frame}")
            return


# -- the harness --------------------------------------------------------------------------


class Harness:
    def __init__(self, broker: BrokerProcess, plan: Plan, token: str | None, metrics_port: int) -> None:
        self.broker = broker
        self.plan = plan
        self.token = token
        self.addr = (broker.host, broker.port)
        self.metrics_port = metrics_port
        self._info: Raw | None = None  # the connection budget_used asks on
        self._info_lock = trio.Lock()
        self.phases: list[Phase] = []
        self.phase = Phase("start")
        self.held: list[Raw] = []
        #: The broker's max_frame (from hello), which the buffer-fill connections announce.
        self.max_frame = 16 * MIB

    # measuring

    async def monitor(self) -> None:
        pid = self.broker.pid
        assert pid is not None
        next_budget = 0.0
        while True:
            rss = rss_kib(pid)
            phase = self.phase
            phase.rss_max_kib = max(phase.rss_max_kib, rss)
            now = time.monotonic()
            if now >= next_budget:
                next_budget = now + BUDGET_EVERY_S
                used = await self.budget_used()
                phase.budget_used_max = max(phase.budget_used_max, used)
            await trio.sleep(RSS_EVERY_S)

    async def budget_used(self) -> int:
        """The budget's use (``memory_used`` of ``broker_info``), over one connection kept
        for it. Not from the metrics endpoint: a scrape renders every queue's series,
        which with the amplification phase's 10,000 queues holds the broker for tens of
        milliseconds each time, and a scrape a second would then be what the pinger
        measures."""
        async with self._info_lock:  # the monitor and a phase's end both ask
            with trio.move_on_after(5):
                if self._info is None:
                    self._info = await Raw.open(self.addr, self.token)
                reply = await self._info.call("broker_info", {})
                return int(reply.result.get("memory_used", 0)) if isinstance(reply, Reply) else 0
            self._info = None  # timed out: a late reply would answer the next question
            return 0

    async def run_phase(self, name: str, work: Any = None, setup: Any = None) -> Phase:
        """A phase of ``--phase-s`` while ``work`` runs (cancelled at its end), after
        ``setup`` (at most ``SETUP_S``, not measured but for its notes)."""
        pid = self.broker.pid
        assert pid is not None
        phase = Phase(name)
        if setup is not None:
            self.phase = Phase("setup")  # the monitor's samples meanwhile count for no phase
            with trio.move_on_after(SETUP_S):
                await setup(phase)
        phase.started = time.monotonic()
        phase.rss_start_kib = phase.rss_max_kib = rss_kib(pid)
        self.phase = phase
        with trio.move_on_after(self.plan.phase_s):
            if work is not None:
                await work(phase)
            await trio.sleep_forever()
        phase.ended = time.monotonic()
        phase.rss_end_kib = rss_kib(pid)
        phase.rss_max_kib = max(phase.rss_max_kib, phase.rss_end_kib)
        phase.budget_used_max = max(phase.budget_used_max, await self.budget_used())
        self.phases.append(phase)
        return phase

    # the clients

    async def open_idle(self, phase: Phase) -> None:
        limiter = trio.CapacityLimiter(OPEN_AT_ONCE)

        async def one() -> None:
            async with limiter:
                self.held.append(await Raw.open(self.addr, self.token))

        async with trio.open_nursery() as nursery:
            for _ in range(self.plan.connections):
                nursery.start_soon(one)
        phase.notes["idle_open"] = len(self.held)

    async def producer(self) -> None:
        raw = await Raw.open(self.addr, self.token)
        messages = [[bytes(256)]] * 10
        while True:
            t0 = trio.current_time()
            await raw.call("publish", {"queue": "load", "messages": messages})
            await trio.sleep_until(t0 + 0.01)

    async def consumer(self) -> None:
        raw = await Raw.open(self.addr, self.token)
        while True:
            reply = await raw.call("consume", {"queue": "load", "max": 10, "wait_ms": 1000})
            ids = [m[0] for m in reply.result["messages"]] if isinstance(reply, Reply) else []
            await trio.sleep(0.2)
            if ids:
                await raw.call("ack", {"queue": "load", "ids": ids})

    async def slowloris(self, phase: Phase) -> None:
        async def one() -> None:
            raw = None
            try:
                raw = await Raw.open(self.addr, self.token)
                await raw.stream.send_all(struct.pack(">I", 1024))
                while True:
                    await trio.sleep(1)
                    await raw.stream.send_all(b"\x00")
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                phase.notes["slowloris_closed"] = phase.notes.get("slowloris_closed", 0) + 1
            finally:
                if raw is not None:
                    await trio.aclose_forcefully(raw.stream)

        async with trio.open_nursery() as nursery:
            for _ in range(self.plan.slowloris):
                nursery.start_soon(one)
                await trio.sleep(0)

    async def buffer_fill(self, phase: Phase) -> None:
        chunk = bytes(FILL_CHUNK)

        async def one() -> None:
            while True:
                try:
                    raw = await Raw.open(self.addr, self.token)
                except (OSError, RuntimeError):
                    await trio.sleep(0.1)
                    continue
                phase.notes["fill_connects"] = phase.notes.get("fill_connects", 0) + 1
                async with trio.open_nursery() as inner:
                    inner.start_soon(self._fill, raw, chunk)
                    frame = await self._last_frame(raw)
                    inner.cancel_scope.cancel()
                if isinstance(frame, Error) and frame.code == ErrorCode.MEMORY_LIMIT:
                    phase.notes["fill_refused"] = phase.notes.get("fill_refused", 0) + 1
                else:
                    phase.notes["fill_closed_otherwise"] = phase.notes.get("fill_closed_otherwise", 0) + 1
                await trio.aclose_forcefully(raw.stream)

        async with trio.open_nursery() as nursery:
            for _ in range(self.plan.fillers):
                nursery.start_soon(one)

    async def _fill(self, raw: Raw, chunk: bytes) -> None:
        try:
            await raw.stream.send_all(struct.pack(">I", self.max_frame))
            while True:
                await raw.stream.send_all(chunk)
                await trio.sleep(FILL_CHUNK / (self.plan.fill_mib_s * MIB))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _last_frame(self, raw: Raw) -> Any:
        """The frames until EOF; the last one."""
        last = None
        try:
            while (frame := await raw.frame()) is not None:
                last = frame
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return last

    async def create_queues(self) -> None:
        raw = await Raw.open(self.addr, self.token)
        n = self.plan.queues
        for at in range(0, n, 500):
            names = [f"amp.{i:06d}" for i in range(at, min(n, at + 500))]
            await raw.stream.send_all(b"".join(raw.enc.request(i, "queue_create", {"queue": q})
                                               for i, q in enumerate(names)))
            for _ in names:
                frame = await raw.frame()
                if not isinstance(frame, Reply):
                    raise RuntimeError(f"queue_create failed: {frame}")
        await raw.stream.aclose()

    async def amplify(self, phase: Phase) -> None:
        request = Encoder().request(1, "queue_list", {})
        batch = request * 1000

        async def one() -> None:
            raw = await Raw.open(self.addr, self.token)
            try:
                while True:
                    await raw.stream.send_all(batch)
                    phase.notes["amp_requests_sent"] = phase.notes.get("amp_requests_sent", 0) + 1000
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                phase.notes["amp_closed"] = phase.notes.get("amp_closed", 0) + 1
            finally:
                await trio.aclose_forcefully(raw.stream)

        async with trio.open_nursery() as nursery:
            for _ in range(self.plan.amplifiers):
                nursery.start_soon(one)

    async def run(self) -> list[Phase]:
        plan = self.plan
        setup = await Raw.open(self.addr, self.token)
        reply = await setup.call("queue_create", {"queue": "load"})
        assert isinstance(reply, Reply), reply
        hello = await setup.call("hello", {"versions": [1]})
        self.max_frame = hello.result["max_frame"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.monitor)
            await self.run_phase("baseline")
            await self.run_phase("idle", setup=self.open_idle)
            for _ in range(plan.producers):
                nursery.start_soon(self.producer)
            for _ in range(plan.consumers):
                nursery.start_soon(self.consumer)
            await self.run_phase("load")
            await self.run_phase("slowloris", self.slowloris)
            await self.run_phase("buffer-fill", self.buffer_fill)
            await self.create_queues()
            await self.run_phase("amplification", self.amplify)
            await self.run_phase("after")
            nursery.cancel_scope.cancel()
        return self.phases


def _ping_stats(phases: list[Phase], log: Path) -> None:
    """Assign the pinger's lines to the phases they fall in."""
    lines = [line.split() for line in log.read_text().splitlines() if line.strip()]
    for phase in phases:
        ms = [float(v) for t, v in lines if phase.started <= float(t) < phase.ended]
        ok = sorted(v for v in ms if v >= 0)
        phase.pings = len(ok)
        phase.ping_failures = len(ms) - len(ok)
        if ok:
            phase.ping_p50_ms = round(statistics.median(ok), 2)
            phase.ping_p99_ms = round(ok[min(len(ok) - 1, int(len(ok) * 0.99))], 2)
            phase.ping_max_ms = round(ok[-1], 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_fd_limit() -> int:
    """The soft open-file limit raised to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def run(plan: Plan) -> list[Phase]:
    """Start a broker and the pinger, run every phase, stop both; the phases."""
    fds = raise_fd_limit()
    need = plan.connections + plan.slowloris + plan.fillers + plan.amplifiers + plan.producers + plan.consumers + 64
    if fds != resource.RLIM_INFINITY and need > fds:
        raise click.UsageError(f"{need} connections do not fit the open-file limit of {fds} (ulimit -Hn)")
    token = new_token() if plan.auth else None
    with tempfile.TemporaryDirectory(prefix="lockgate-loadtest-") as tmp:
        work = Path(tmp)
        args = ["--memory-budget", str(plan.budget), "--max-connections", str(need + 100),
                "--max-queues", str(plan.queues + 100), "--metrics-addr", f"127.0.0.1:{(port := _free_port())}"]
        if token is not None:
            every = Patterns.of(["*"])
            users = work / "users.toml"
            users.write_text(dump(Users({"load": User(name="load", tokens=(token_hash(token),), publish=every,
                                                      consume=every, admin=every)})))
            users.chmod(0o600)
            args += ["--auth", "required", "--users-file", str(users)]
        pings = work / "pings.log"
        with BrokerProcess(work / "data", fsync="always", args=tuple(args)) as broker:
            ping = subprocess.Popen([sys.executable, "-m", "tools.loadtest", "--pinger", broker.addr,
                                     "--pinger-token", token or "", "--pinger-log", str(pings)],
                                    cwd=Path(__file__).resolve().parent.parent)
            try:
                phases = trio.run(Harness(broker, plan, token, port).run)
            finally:
                ping.send_signal(signal.SIGTERM)
                try:
                    ping.wait(10)
                except subprocess.TimeoutExpired:
                    ping.kill()
                    ping.wait()
            broker.stop()
        _ping_stats(phases, pings)
    return phases


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--connections", default=10_000, show_default=True, type=click.IntRange(0, 15_000),
              help="Idle (authenticated) connections held open from the idle phase on.")
@click.option("--producers", default=4, show_default=True, type=click.IntRange(0, 100))
@click.option("--consumers", default=4, show_default=True, type=click.IntRange(0, 100), help="Slow consumers.")
@click.option("--slowloris", default=2000, show_default=True, type=click.IntRange(0, 3000))
@click.option("--fillers", default=100, show_default=True, type=click.IntRange(0, 200),
              help="Buffer-fill connections (huge partial frames).")
@click.option("--fill-mib-s", default=2.0, show_default=True, type=click.FloatRange(0.1, 100),
              help="How fast each buffer-fill connection sends.")
@click.option("--amplifiers", default=4, show_default=True, type=click.IntRange(0, 100),
              help="Connections pipelining queue_list without reading.")
@click.option("--queues", default=10_000, show_default=True, type=click.IntRange(1, 10_000),
              help="Queues the amplification phase lists.")
@click.option("--phase-s", default=10.0, show_default=True, type=click.FloatRange(0.5, 120))
@click.option("--memory-budget", "budget", default=64 * MIB, show_default=True, type=click.IntRange(1024 * 1024))
@click.option("--auth/--no-auth", default=True, show_default=True, help="Authenticate every connection (token).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per phase.")
@click.option("--pinger", hidden=True, default=None)
@click.option("--pinger-token", hidden=True, default="")
@click.option("--pinger-log", hidden=True, type=click.Path(path_type=Path), default=None)
def main(connections: int, producers: int, consumers: int, slowloris: int, fillers: int, fill_mib_s: float,
         amplifiers: int,
         queues: int, phase_s: float, budget: int, auth: bool, as_json: bool, pinger: str | None,
         pinger_token: str, pinger_log: Path | None) -> None:
    """Run the load harness against a broker of its own on 127.0.0.1 (see the module docs)."""
    if pinger is not None:
        assert pinger_log is not None
        ping_loop(pinger, pinger_token or None, pinger_log)
        return
    plan = Plan(connections, producers, consumers, slowloris, fillers, amplifiers, queues, phase_s, budget, auth,
                fill_mib_s)
    print(f"# {machine()}; budget {budget / MIB:.0f} MiB", file=sys.stderr)
    for phase in run(plan):
        if as_json:
            print(json.dumps({k: v for k, v in asdict(phase).items() if k not in ("started", "ended")}))
            continue
        notes = ", ".join(f"{k} {v}" for k, v in sorted(phase.notes.items()))
        print(f"{phase.name:>13}: RSS {phase.rss_start_kib / 1024:6.1f} -> max {phase.rss_max_kib / 1024:6.1f} "
              f"-> {phase.rss_end_kib / 1024:6.1f} MiB; budget max {phase.budget_used_max / MIB:6.2f} MiB; "
              f"ping p50 {phase.ping_p50_ms:.2f} p99 {phase.ping_p99_ms:.2f} max {phase.ping_max_ms:.2f} ms "
              f"({phase.pings} ok, {phase.ping_failures} failed){'; ' + notes if notes else ''}")


if __name__ == "__main__":
    main()
