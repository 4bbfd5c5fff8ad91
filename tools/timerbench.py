"""Lockgate timer benchmark: memory per message and punctuality of delays and times to live.

One run starts three brokers in turn (``python -m broker`` on 127.0.0.1, port 0, a
temporary data directory, fsync ``always`` unless ``--fsync`` says otherwise), each
loaded with ``--count`` messages of 128 bytes through the SDK (``SyncClient.publish_many``,
batches of the server's ``max_batch``, four in flight):

  plain    no delay, no time to live: the baseline of the memory figure.
  ttl      each message with its own ``ttl_ms``, on a queue with ``on_expire`` ``dead_letter``;
           the expiry times are spread evenly over ``--window-s`` seconds starting
           ``--lead-s`` seconds after the load began, so none expires while loading.
  delayed  each message with its own ``deliver_at`` (absolute, on the server's clock),
           spread over the same window.

Memory: the broker's resident set (``VmRSS`` of ``/proc/PID/status``) after the queues are
created and after the load; the growth over ``--count`` is the bytes per message, body
included, with the plain figure of the same run beside it.

Lateness: once loaded, one push subscription (``auto_ack``, credit ``max_batch``) on the
dead-letter queue (ttl) or the queue itself (delayed) receives the messages as they fall
due; each message's lateness is the time the subscriber took it from the client's buffer
(the monotonic clock, moved onto the server's clock by ``ping``) minus its due time: its
``deliver_at``, or its expiry, the ``published_at`` the broker gave it plus its ``ttl_ms``.
Messages due before the subscriber was ready (a load slower than ``--lead-s``) are
counted apart and left out. The figure includes the push and the subscriber's own receive cost, on a machine whose cores the
broker and the subscriber share. Beside it, the ttl phase measures the broker alone on a
small side queue expiring over the same window into a dead-letter queue nobody reads:
``peek`` shows when each was dead-lettered (``at_ms``, whole ms), minus its expiry. The
subscriber's own garbage collector is paused while it measures. Under fsync ``always`` a
message is pushed only once the log covers its promotion or expiry and its deletion, so
its lateness includes fdatasyncs: each phase reports the disk's fdatasync time just
before the window and, timed every 0.1 s on a thread, during it.

    python -m tools.timerbench                     # 1,000,000 messages per phase
    python -m tools.timerbench --count 200000 --json

This tool talks to the broker only through the SDK (``client``); it never imports ``broker``.
"""
from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import struct
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from client import SyncClient
from client.types import Message
from tools.procs import BrokerProcess

BODY_SIZE = 128
#: Batches of one publish request in flight while loading.
LOAD_WINDOW = 4
#: How long past the last due time the subscriber waits for stragglers.
GRACE_S = 30.0
#: The figure the delivery issue asks for: p99 within this many ms of the due time.
TARGET_P99_MS = 10.0
#: fdatasyncs timed on the data directory's disk before each window (fewer if the
#: disk is too slow for them to fit in ``probe_budget_s``).
FSYNC_PROBES = 200
#: Seconds between the fdatasyncs timed while messages fall due (``DiskProbe``).
WINDOW_PROBE_INTERVAL_S = 0.1
#: Largest side queue of the broker-only ttl figure (one ``peek`` shows them all).
PROBES_MAX = 2_000


@dataclass(frozen=True, slots=True)
class Lateness:
    """How late messages were taken, ms after their due time (negative: early)."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    min_ms: float
    #: Messages more than ``TARGET_P99_MS`` late.
    over_target: int

    @classmethod
    def of(cls, samples: list[float]) -> Lateness:
        if not samples:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0)
        s = sorted(samples)
        n = len(s)
        return cls(n, s[n // 2], s[min(n - 1, int(n * 0.99))], s[-1], s[0],
                   sum(1 for x in s if x > TARGET_P99_MS))


@dataclass(frozen=True, slots=True)
class Phase:
    """One broker, loaded with ``messages`` of one kind."""

    name: str
    messages: int
    load_s: float
    rss_before: int
    rss_after: int
    #: (rss_after - rss_before) / messages.
    bytes_per_message: float
    #: Subscriber-side lateness (None for the plain phase).
    lateness: Lateness | None = None
    #: Broker-side lateness of the side queue (ttl only).
    broker_lateness: Lateness | None = None
    #: Messages that never arrived within ``GRACE_S`` after the last was due.
    missing: int = 0
    #: Messages due before the subscriber was ready (the lead was too short); not in ``lateness``.
    due_before_ready: int = 0
    #: Messages that came through the window at this rate (per second, on average).
    due_per_s: float = 0.0
    #: The broker's CPU (one core = 100) while messages fell due.
    broker_cpu_percent: float = 0.0
    #: Server clock minus ``client_ms`` (ms), before and after the window.
    clock_offset_ms: tuple[float, float] = (0.0, 0.0)
    #: One 4 KiB append + fdatasync on the data directory's disk, just before the
    #: window (ms, p50 and p99 of ``FSYNC_PROBES``): what ``always`` waits for.
    fdatasync_ms: tuple[float, float] = (0.0, 0.0)
    #: The same timed every ``WINDOW_PROBE_INTERVAL_S`` while messages fell due (ms, p50,
    #: p99 and max): a busy disk during the window makes ``always`` late.
    window_fdatasync_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Report:
    machine: str
    fsync: str
    count: int
    lead_s: float
    window_s: float
    phases: tuple[Phase, ...]

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)


# -- measuring ---------------------------------------------------------------------------


def say(text: str) -> None:
    """Progress, on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def rss_bytes(pid: int) -> int:
    """The resident set of process ``pid`` (``VmRSS``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: A ``ping`` round trip short enough for ``clock_offset_ms`` to stop at ``tries`` (s): the
#: offset it gives is within half of it.
GOOD_PING_S = 0.002
#: How long ``clock_offset_ms`` goes on pinging for a round trip that short (s).
PING_BUDGET_S = 0.5


def client_ms() -> float:
    """This process's clock for due times and arrivals, in ms: ``CLOCK_MONOTONIC``, which
    the broker's clock also follows (its start's wall time plus trio's monotonic clock),
    so that a wall clock being slewed (0.5%, 5 ms a second, was seen on the project's
    machine) moves neither against the other."""
    return time.monotonic() * 1000


def clock_offset_ms(client: SyncClient, tries: int = 20) -> float:
    """The server's clock minus ``client_ms``, in ms, from the ``ping`` with
    the shortest round trip (the server reads whole ms: half a ms is added back): at
    least ``tries`` pings, more while none came back within ``GOOD_PING_S`` and
    ``PING_BUDGET_S`` lasts (on a busy machine every one of 20 can take 20 ms)."""
    best: tuple[float, float] | None = None
    deadline = time.monotonic() + PING_BUDGET_S
    done = 0
    while done < tries or (best is not None and best[0] > GOOD_PING_S and time.monotonic() < deadline):
        t0 = time.monotonic()
        now_ms = client.request("ping", {})["now_ms"]
        t1 = time.monotonic()
        done += 1
        if best is None or t1 - t0 < best[0]:
            best = (t1 - t0, now_ms + 0.5 - (t0 + t1) * 500)
    assert best is not None
    return best[1]


def fdatasync_ms(directory: Path, count: int = FSYNC_PROBES, budget_s: float = math.inf) -> tuple[float, float]:
    """p50 and p99 ms of one 4 KiB append + fdatasync in ``directory``: ``count`` of
    them, or as many as ``budget_s`` seconds allow (at least one)."""
    path = directory / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    block = os.urandom(4096)
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    try:
        for _ in range(count):
            t = time.perf_counter()
            if samples and t >= deadline:
                break
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


class DiskProbe:
    """Times one 4 KiB append + fdatasync in ``directory`` every ``interval_s`` on a
    thread, from entering to leaving: what the disk did while messages fell due."""

    def __init__(self, directory: Path, interval_s: float = WINDOW_PROBE_INTERVAL_S) -> None:
        self.path = directory / "fdatasync-window-probe"
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-probe", daemon=True)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        block = os.urandom(4096)
        try:
            while not self._stop.wait(self.interval_s):
                t = time.perf_counter()
                os.write(fd, block)
                os.fdatasync(fd)
                self.samples.append((time.perf_counter() - t) * 1000)
        finally:
            os.close(fd)
            self.path.unlink()

    def __enter__(self) -> DiskProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def percentiles(self) -> tuple[float, float, float]:
        """p50, p99 and max ms of the samples (zeros if there were none)."""
        if not self.samples:
            return 0.0, 0.0, 0.0
        s = sorted(self.samples)
        return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))], s[-1]


def probe_budget_s(ms_to_first_due: float) -> float:
    """Seconds the fdatasyncs before a window may take: a quarter of the time left until
    its first due time, so that on a slow disk they never delay the subscription."""
    return max(0.0, ms_to_first_due / 4000)


def body(i: int) -> bytes:
    """Message ``i``'s body: its index, padded to ``BODY_SIZE``."""
    return struct.pack(">Q", i).ljust(BODY_SIZE, b".")


def index_of(data: bytes) -> int:
    return int(struct.unpack_from(">Q", data)[0])


def due_times(count: int, start_ms: float, window_s: float) -> Iterator[int]:
    """``count`` times spread evenly over ``window_s`` seconds from ``start_ms``."""
    step = window_s * 1000 / count
    for i in range(count):
        yield int(start_ms + i * step)


def load(client: SyncClient, queue: str, messages: list[Message] | list[bytes]) -> float:
    """Publish ``messages`` in batches; returns the seconds it took."""
    t = time.perf_counter()
    client.publish_many(queue, messages, window=LOAD_WINDOW)
    return time.perf_counter() - t


def collect(client: SyncClient, queue: str, count: int, due_of: Callable[[int, int], int],
            last_due_ms: int, pid: int) -> tuple[list[float], int, int, float, tuple[float, float]]:
    """Subscribe to ``queue`` and take messages until ``count`` came or ``GRACE_S``
    passed after ``last_due_ms``; ``due_of(index, published_at)`` is a message's due
    time. Returns (lateness ms of each message due after the subscription began,
    messages missing, messages due before it began, the broker's CPU percent meanwhile,
    clock offsets before and after).

    The arrival times go into flat arrays and this process's cyclic garbage collector
    is paused meanwhile, so that its own pauses are not counted as the broker's."""
    before = clock_offset_ms(client)
    say(f"subscribed to {queue}; the last message is due in {(last_due_ms - client_ms() - before) / 1000:.1f} s")
    walls = array("d")
    dues = array("q")
    seen = bytearray(count)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with client.subscribe(queue, credit=client.server_info.max_batch, auto_ack=True) as sub:
            ready_ms = client_ms() + before
            deadline = time.monotonic() + max(0.0, (last_due_ms - ready_ms) / 1000) + GRACE_S
            clock, add_wall, add_due = time.monotonic, walls.append, dues.append
            while len(walls) < count:
                left = deadline - time.monotonic()
                msg = sub.get(left) if left > 0 else None
                if msg is None:
                    break
                add_wall(clock())
                i = index_of(msg.body)
                seen[i] = 1
                add_due(due_of(i, msg.published_at))
    finally:
        if gc_was_enabled:
            gc.enable()
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
    after = clock_offset_ms(client)
    offset = (before + after) / 2
    lateness = [wall * 1000 + offset - d for wall, d in zip(walls, dues) if d >= ready_ms]
    return lateness, count - sum(seen), len(walls) - len(lateness), cpu, (before, after)


# -- the phases -----------------------------------------------------------------------------


def plain_phase(workdir: Path, count: int, fsync: str) -> Phase:
    with BrokerProcess(workdir / "plain", fsync=fsync) as proc, SyncClient(proc.addr, timeout=300) as client:
        assert proc.pid is not None
        client.create_queue("plain")
        rss0 = rss_bytes(proc.pid)
        seconds = load(client, "plain", [body(i) for i in range(count)])
        rss1 = rss_bytes(proc.pid)
        proc.stop()
    return Phase("plain", count, seconds, rss0, rss1, (rss1 - rss0) / count)


def ttl_phase(workdir: Path, count: int, fsync: str, lead_s: float, window_s: float) -> Phase:
    """Messages expire (``ttl_ms`` from their publish) into a dead-letter queue; a
    message's expiry is its ``published_at`` + its ``ttl_ms`` (SPEC §8.8), both as the
    broker saw them."""
    probes = min(PROBES_MAX, max(10, count // 100))
    with BrokerProcess(workdir / "ttl", fsync=fsync) as proc, SyncClient(proc.addr, timeout=300) as client:
        assert proc.pid is not None
        for name in ("ttl", "probe"):
            client.create_queue(f"{name}-dlq")
            client.create_queue(name, dead_letter=f"{name}-dlq", on_expire="dead_letter")
        offset = clock_offset_ms(client)
        start_ms = client_ms() + lead_s * 1000
        now_ms = int(client_ms())
        probe_ttls = array("q", (max(1, at - now_ms) for at in due_times(probes, start_ms, window_s)))
        client.publish_many("probe", [Message(body(i), ttl_ms=ttl) for i, ttl in enumerate(probe_ttls)])
        rss0 = rss_bytes(proc.pid)
        now_ms = int(client_ms())
        ttls = array("q", (max(1, at - now_ms) for at in due_times(count, start_ms, window_s)))
        seconds = load(client, "ttl", [Message(body(i), ttl_ms=ttl) for i, ttl in enumerate(ttls)])
        rss1 = rss_bytes(proc.pid)
        say(f"loaded in {seconds:.1f} s; the first expires in {(start_ms - client_ms()) / 1000:.1f} s")
        disk = fdatasync_ms(workdir, budget_s=probe_budget_s(start_ms - client_ms()))
        with DiskProbe(workdir) as probe:
            lateness, missing, early, cpu, offsets = collect(
                client, "ttl-dlq", count, lambda i, published_at: published_at + ttls[i],
                int(start_ms + offset + window_s * 1000) + 1000, proc.pid)  # + 1 s: a publish's time is the broker's
        rows = client.peek("probe-dlq", max=probes).messages
        broker_side = [float(r.dead_letter.at_ms - (r.published_at + probe_ttls[index_of(r.body)])) for r in rows
                       if r.dead_letter is not None]
        proc.stop()
    return Phase("ttl", count, seconds, rss0, rss1, (rss1 - rss0) / count, Lateness.of(lateness),
                 Lateness.of(broker_side), missing, early, count / window_s, cpu, offsets, disk,
                 probe.percentiles())


def delayed_phase(workdir: Path, count: int, fsync: str, lead_s: float, window_s: float) -> Phase:
    with BrokerProcess(workdir / "delayed", fsync=fsync) as proc, SyncClient(proc.addr, timeout=300) as client:
        assert proc.pid is not None
        client.create_queue("delayed")
        rss0 = rss_bytes(proc.pid)
        offset = clock_offset_ms(client)
        start_ms = client_ms() + offset + lead_s * 1000
        due = array("q", due_times(count, start_ms, window_s))
        seconds = load(client, "delayed", [Message(body(i), deliver_at=at) for i, at in enumerate(due)])
        rss1 = rss_bytes(proc.pid)
        say(f"loaded in {seconds:.1f} s; the first is due in {(start_ms - client_ms() - offset) / 1000:.1f} s")
        disk = fdatasync_ms(workdir, budget_s=probe_budget_s(start_ms - client_ms() - offset))
        with DiskProbe(workdir) as probe:
            lateness, missing, early, cpu, offsets = collect(
                client, "delayed", count, lambda i, published_at: due[i], due[-1], proc.pid)
        proc.stop()
    return Phase("delayed", count, seconds, rss0, rss1, (rss1 - rss0) / count, Lateness.of(lateness),
                 None, missing, early, count / window_s, cpu, offsets, disk, probe.percentiles())


def default_lead_s(count: int) -> float:
    """Seconds from the start of a load to the first due time: room for loading
    ``count`` messages at 15,000 a second. A quiet 2-core machine loads 1,000,000 with
    times to live in about 7 s, the same machine shared with test runs in 18 to 31 s:
    messages due before the subscriber is ready are left out of the lateness figures."""
    return 3.0 + count / 15_000


def default_window_s(count: int) -> float:
    """Seconds the due times are spread over: 20,000 a second, at least 2 s."""
    return max(2.0, count / 20_000)


def run(workdir: Path, count: int, fsync: str = "always", lead_s: float | None = None,
        window_s: float | None = None, phases: tuple[str, ...] = ("plain", "ttl", "delayed")) -> Report:
    """One run of the chosen phases (each on a fresh broker in ``workdir``)."""
    lead = default_lead_s(count) if lead_s is None else lead_s
    window = default_window_s(count) if window_s is None else window_s
    out: list[Phase] = []
    for name in phases:
        say(f"{name}: {count:,} messages, fsync {fsync}")
        if name == "plain":
            out.append(plain_phase(workdir, count, fsync))
        elif name == "ttl":
            out.append(ttl_phase(workdir, count, fsync, lead, window))
        elif name == "delayed":
            out.append(delayed_phase(workdir, count, fsync, lead, window))
        else:
            raise ValueError(f"unknown phase {name!r}")
    return Report(machine(), fsync, count, lead, window, tuple(out))


def _median(values: list[float]) -> float:
    return statistics.median(values)


def median_report(reports: list[Report]) -> Report:
    """Each figure of each phase the median over ``reports`` (runs of the same settings)."""
    first = reports[0]
    phases: list[Phase] = []
    for i, p in enumerate(first.phases):
        runs = [r.phases[i] for r in reports]

        def late(get: Callable[[Phase], Lateness | None]) -> Lateness | None:
            got = [x for x in map(get, runs) if x is not None]
            if not got:
                return None
            return Lateness(int(_median([x.count for x in got])), _median([x.p50_ms for x in got]),
                            _median([x.p99_ms for x in got]), _median([x.max_ms for x in got]),
                            _median([x.min_ms for x in got]), int(_median([x.over_target for x in got])))

        phases.append(Phase(
            p.name, p.messages, _median([x.load_s for x in runs]), int(_median([x.rss_before for x in runs])),
            int(_median([x.rss_after for x in runs])), _median([x.bytes_per_message for x in runs]),
            late(lambda x: x.lateness), late(lambda x: x.broker_lateness),
            max(x.missing for x in runs), max(x.due_before_ready for x in runs), p.due_per_s,
            _median([x.broker_cpu_percent for x in runs]), p.clock_offset_ms,
            (_median([x.fdatasync_ms[0] for x in runs]), _median([x.fdatasync_ms[1] for x in runs])),
            (_median([x.window_fdatasync_ms[0] for x in runs]), _median([x.window_fdatasync_ms[1] for x in runs]),
             _median([x.window_fdatasync_ms[2] for x in runs]))))
    return Report(first.machine, first.fsync, first.count, first.lead_s, first.window_s, tuple(phases))


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def table(report: Report) -> str:
    lines = [
        f"machine: {report.machine}",
        f"fsync {report.fsync}; {report.count:,} messages per phase; due over {report.window_s:g} s "
        f"starting {report.lead_s:g} s after the load began",
        "",
        "| phase | load s | RSS before MiB | RSS after MiB | bytes/msg | lateness p50 ms | p99 ms | max ms "
        "| > 10 ms | missing | broker CPU % | fdatasync p50/p99 ms | in the window p50/p99/max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in report.phases:
        late = p.lateness
        cols = ([f"{late.p50_ms:.2f}", f"{late.p99_ms:.2f}", f"{late.max_ms:.2f}", f"{late.over_target:,}",
                 f"{p.missing:,}", f"{p.broker_cpu_percent:.0f}",
                 f"{p.fdatasync_ms[0]:.2f} / {p.fdatasync_ms[1]:.2f}",
                 " / ".join(f"{x:.2f}" for x in p.window_fdatasync_ms)] if late else [""] * 8)
        lines.append(f"| {p.name} | {p.load_s:.1f} | {p.rss_before / 2**20:.1f} | {p.rss_after / 2**20:.1f} | "
                     f"{p.bytes_per_message:.0f} | " + " | ".join(cols) + " |")
    for p in report.phases:
        if p.broker_lateness is not None:
            b = p.broker_lateness
            lines.append(f"\n{p.name}, broker side ({b.count:,} messages on a side queue, whole ms): "
                         f"p50 {b.p50_ms:.0f}, p99 {b.p99_ms:.0f}, max {b.max_ms:.0f}")
        if p.due_before_ready:
            lines.append(f"\n{p.name}: {p.due_before_ready:,} messages were due before the subscriber was "
                         "ready (raise --lead-s); they are not in the lateness figures")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--count", default=1_000_000, show_default=True, type=click.IntRange(10),
              help="Messages per phase.")
@click.option("--fsync", default="always", show_default=True, type=click.Choice(["always", "interval", "never"]),
              help="The brokers' fsync policy.")
@click.option("--lead-s", type=click.FloatRange(0.5), default=None,
              help="Seconds from the start of a load to the first due time [3 + count/15,000].")
@click.option("--window-s", type=click.FloatRange(0.1), default=None,
              help="Seconds the due times are spread over [count/20,000, at least 2].")
@click.option("--phases", default="plain,ttl,delayed", show_default=True, help="Which phases to run.")
@click.option("--runs", default=1, show_default=True, type=click.IntRange(1),
              help="Runs (each on fresh brokers); with more than one, each figure is the median.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def main(count: int, fsync: str, lead_s: float | None, window_s: float | None, phases: str,
         runs: int, as_json: bool) -> None:
    """Memory per message, and how late delayed and expiring messages arrive."""
    reports: list[Report] = []
    for r in range(runs):
        with tempfile.TemporaryDirectory(prefix="lockgate-timerbench-") as tmp:
            reports.append(run(Path(tmp), count, fsync, lead_s, window_s, tuple(phases.split(","))))
        if runs > 1 and not as_json:
            print(f"run {r + 1} of {runs}:\n{table(reports[-1])}\n", flush=True)
    report = median_report(reports) if runs > 1 else reports[0]
    if as_json:
        print(json.dumps({**asdict(report), "runs": [asdict(r) for r in reports]} if runs > 1 else asdict(report),
                         indent=2))
    else:
        print(f"command: {' '.join(['python -m tools.timerbench'] + sys.argv[1:])}")
        print(("median of %d runs:\n" % runs if runs > 1 else "") + table(report))


if __name__ == "__main__":
    main()
