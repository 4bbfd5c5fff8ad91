"""Lockgate durability benchmark: recovery time, WAL size and publish latency under checkpoints.

Figures (128-byte bodies; each is a subcommand, ``all`` runs them in sequence):

  recovery-live    1,000,000 live messages: recovery after SIGKILL (snapshot + log tail)
                   and after SIGTERM (clean shutdown, snapshot only). Target <= 5 s each.
  recovery-churn   100,000 live messages, then 10,000,000 published, consumed and acked;
                   recovery after SIGKILL. Target <= 2 s.
  wal-size         steady publish+ack at half the measured peak rate for 10 minutes; the
                   WAL directory's size every second. Target: max < 2 x live data + 2 segments.
  checkpoint-p99   sequential-publish latency under a background publish+ack load with
                   1,000,000 live messages, with checkpoints (small --checkpoint-bytes) and
                   without (huge --checkpoint-bytes). Target: p99 ratio <= 3.

Every figure starts its own broker(s) (``python -m broker`` on 127.0.0.1, fsync ``always``
by default) in a temporary data directory, and stops them by PID. Called as functions,
the figures that need checkpoints can be told to wait for some (``min_checkpoints``):
they then run past their length, up to ``CHECKPOINT_WAIT_S``, until that many were
published, so that a slow machine changes the figures, not what they cover. Recovery times are
what the broker logs on start (``recovered: ... in T s``); "listening after" is the wall
time from starting the process to its ``lockgate listening on`` line. Progress goes to
stderr; the exit status is 1 when a figure misses its target.

    python -m tools.durabench all
    python -m tools.durabench recovery-live --messages 200000 --json
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from tools.bench import BODY_SIZE, Wire, _percentiles, batch_publish, consume_ack, machine, sequential_publish
from tools.procs import BrokerProcess

MiB = 1024 * 1024
#: Broker start-up (recovery included) may take this long before it counts as hung.
START_TIMEOUT = 600.0
#: A clean shutdown writes a snapshot; it may take this long.
STOP_TIMEOUT = 600.0
#: ``--checkpoint-bytes`` that no run here reaches: no checkpoints at all.
NO_CHECKPOINTS = 2**40
#: Longest a figure runs past its length waiting for the checkpoints it was asked for.
CHECKPOINT_WAIT_S = 300.0

_RECOVERED = re.compile(
    r"recovered: (?P<records>\d+) records, (?P<bytes>\d+) bytes, (?P<segments>\d+) segments in "
    r"(?P<seconds>[\d.]+) s \([\d.]+ records/s\) after a snapshot at LSN (?P<snapshot_lsn>\d+); "
    r"(?P<queues>\d+) queues, (?P<messages>\d+) messages")
_CHECKPOINT = re.compile(
    r"^(?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*checkpoint at LSN (?P<lsn>\d+) in "
    r"(?P<seconds>[\d.]+) s", re.MULTILINE)


def _progress(message: str) -> None:
    click.echo(f"[durabench {time.strftime('%H:%M:%S')}] {message}", err=True)


# -- brokers, logs and the WAL directory ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recovery:
    """One start-up, as the broker logged it, and what a client then saw."""

    #: The broker's own recovery time (snapshot load + replay + fold).
    seconds: float
    #: Log records replayed after the snapshot, their LSN span and segments read.
    records: int
    bytes: int
    segments: int
    snapshot_lsn: int
    queues: int
    #: Messages in the recovered state (the log line).
    messages: int
    #: Wall time from starting the process to its "listening" line.
    listening_after_s: float
    #: Messages in the benchmark's queue(s) by ``queue_list`` after the start.
    queue_messages: int


def _wal_dir(proc: BrokerProcess) -> Path:
    return proc.data_dir / "wal"


def wal_bytes(wal_dir: Path) -> tuple[int, int]:
    """(disk use, file count) of every file in ``wal_dir`` (files may vanish meanwhile).

    A file's disk use is its allocated blocks (which include the room the broker
    reserves ahead of the active segment), or its size if that is larger (a sparse
    file)."""
    total = count = 0
    try:
        entries = list(os.scandir(wal_dir))
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                total += max(st.st_size, st.st_blocks * 512)
                count += 1
        except FileNotFoundError:
            continue
    return total, count


_SEGMENT = re.compile(r"^(\d{20})\.wal$")


def oldest_segment_lsn(wal_dir: Path) -> int:
    """The base LSN of the oldest segment in ``wal_dir`` (0 if there is none)."""
    try:
        names = os.listdir(wal_dir)
    except FileNotFoundError:
        return 0
    return min((int(m.group(1)) for n in names if (m := _SEGMENT.match(n))), default=0)


def _log_size(proc: BrokerProcess) -> int:
    try:
        return proc.log_path.stat().st_size
    except FileNotFoundError:
        return 0


def _log_since(proc: BrokerProcess, offset: int) -> str:
    try:
        with open(proc.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _live_messages(wire: Wire) -> int:
    return sum(q["messages"] for q in wire.call("queue_list", {})["queues"])


def start_broker(proc: BrokerProcess) -> Recovery:
    """Start ``proc`` and return its start-up figures (from the new part of its log)."""
    offset = _log_size(proc)
    started = time.perf_counter()
    proc.start(timeout=START_TIMEOUT)
    listening = time.perf_counter() - started
    text = _log_since(proc, offset)
    found = list(_RECOVERED.finditer(text))
    if not found:
        proc.kill()
        raise RuntimeError(f"the broker did not log its recovery (start it at --log-level info): {text[-2000:]}")
    m = found[-1]
    wire = Wire(proc.host, proc.port)
    try:
        queue_messages = _live_messages(wire)
    finally:
        wire.close()
    return Recovery(float(m["seconds"]), int(m["records"]), int(m["bytes"]), int(m["segments"]),
                    int(m["snapshot_lsn"]), int(m["queues"]), int(m["messages"]), listening, queue_messages)


def checkpoints_in(text: str) -> list[tuple[float, float]]:
    """``(start, end)`` wall-clock times of each ``checkpoint at LSN`` line in ``text``.

    The line is logged when the checkpoint is published; its duration runs from the fork.
    Times are the log's local timestamps (millisecond resolution).
    """
    spans = []
    for m in _CHECKPOINT.finditer(text):
        end = datetime.strptime(m["when"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        spans.append((end - float(m["seconds"]), end))
    return spans


def _checkpoints_since(proc: BrokerProcess, offset: int) -> list[tuple[float, float]]:
    return checkpoints_in(_log_since(proc, offset))


def wait_for_checkpoints(proc: BrokerProcess, offset: int, count: int,
                         timeout: float = CHECKPOINT_WAIT_S) -> int:
    """Wait (polling the broker's log, bounded by ``timeout``) until it logged ``count``
    checkpoints after ``offset``; returns how many it logged."""
    deadline = time.monotonic() + timeout
    while True:
        done = len(_checkpoints_since(proc, offset))
        if done >= count or time.monotonic() >= deadline:
            return done
        time.sleep(0.02)  # a snapshot child, a real process, is being waited for


def _broker(data_dir: Path, fsync: str, segment_bytes: int | None = None,
            checkpoint_bytes: int | None = None) -> BrokerProcess:
    args: list[str] = []
    if segment_bytes is not None:
        args += ["--segment-bytes", str(segment_bytes)]
    if checkpoint_bytes is not None:
        args += ["--checkpoint-bytes", str(checkpoint_bytes)]
    return BrokerProcess(data_dir, fsync=fsync, log_level="info", args=tuple(args))


@contextmanager
def _running(proc: BrokerProcess) -> Iterator[BrokerProcess]:
    """Whatever happens inside, the broker is killed (by PID) on the way out."""
    try:
        yield proc
    finally:
        proc.kill()


def _connect(proc: BrokerProcess, queue: str | None = None) -> Wire:
    wire = Wire(proc.host, proc.port)
    if queue is not None:
        wire.call("queue_create", {"queue": queue})
    return wire


def load(wire: Wire, queue: str, messages: int, label: str) -> tuple[int, float]:
    """Batch-publish ``messages`` (1000 per frame, pipelined) in chunks, with progress."""
    chunk = 100_000
    done = 0
    seconds = 0.0
    last = time.monotonic()
    while done < messages:
        want = min(chunk, messages - done)
        n, s, _ = batch_publish(wire, queue, want, batch=min(1000, want))
        done += n
        seconds += s
        if time.monotonic() - last >= 5 or done >= messages:
            last = time.monotonic()
            _progress(f"{label}: published {done:,} of {messages:,} ({done / seconds:,.0f} msg/s)")
    return done, seconds


def churn(wire: Wire, queue: str, *, seconds: float, rate: float = 0.0, chunk: int = 2000,
          messages: int | None = None, stop: Callable[[], bool] | None = None,
          progress: Callable[[int, float], None] | None = None) -> tuple[int, float]:
    """Publish ``chunk`` messages (``tools.bench.batch_publish``), then consume and ack them
    (``tools.bench.consume_ack``), repeatedly: at most ``rate`` msg/s (0: as fast as it
    goes), until ``seconds`` pass, ``messages`` went through or ``stop()`` is true, but
    at least one chunk (unless ``messages`` is 0). Returns (messages published and
    acked, seconds).

    The throttle never runs ahead of the rate by more than one chunk: the messages
    returned are at most ``rate * seconds + chunk``."""
    start = time.perf_counter()
    done = 0
    last_progress = start
    while True:
        now = time.perf_counter()
        if messages is not None and done >= messages:
            break
        if done and (now - start >= seconds or (stop and stop())):
            break
        n = chunk if messages is None else min(chunk, messages - done)
        published, _, _ = batch_publish(wire, queue, n, batch=min(1000, n))
        acked, _, _ = consume_ack(wire, queue, published, batch=min(1000, published))
        if acked != published:
            raise RuntimeError(f"published {published} but consumed and acked {acked}")
        done += acked
        now = time.perf_counter()
        if progress and now - last_progress >= 5:
            last_progress = now
            progress(done, now - start)
        if rate > 0:
            ahead = start + done / rate - now
            if ahead > 0:
                time.sleep(min(ahead, max(0.0, start + seconds - now)))
    return done, time.perf_counter() - start


def _load_worker(host: str, port: int, queue: str, seconds: float, rate: float, chunk: int,
                 stop: Any, out: Any) -> None:
    """Background load in its own process (so the foreground client has its own core)."""
    try:
        wire = Wire(host, port)
        try:
            out.put(("ready", 0, 0.0))
            n, s = churn(wire, queue, seconds=seconds, rate=rate, chunk=chunk, stop=stop.is_set)
        finally:
            wire.close()
        out.put(("done", n, s))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        out.put(("error", 0, repr(exc)))


class BackgroundLoad:
    """``churn`` on ``queue`` in a child process, until ``stop`` (or ``seconds`` pass)."""

    def __init__(self, proc: BrokerProcess, queue: str, *, seconds: float, rate: float = 0.0,
                 chunk: int = 2000) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._out = ctx.Queue()
        self._proc = ctx.Process(target=_load_worker, daemon=True,
                                 args=(proc.host, proc.port, queue, seconds, rate, chunk, self._stop, self._out))
        self._timeout = seconds + 120

    def __enter__(self) -> BackgroundLoad:
        self._proc.start()
        try:
            kind, _, detail = self._out.get(timeout=120)
            if kind != "ready":
                raise RuntimeError(f"background load failed to start: {detail}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def finish(self) -> tuple[int, float]:
        """Stop the load; (messages published and acked, seconds)."""
        self._stop.set()
        kind, n, detail = self._out.get(timeout=self._timeout)
        self._proc.join(30)
        if kind != "done":
            raise RuntimeError(f"background load failed: {detail}")
        return n, detail

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._proc.join(60)
        if self._proc.is_alive():  # our own child, by its handle
            self._proc.kill()
            self._proc.join(10)


# -- 1. recovery of live messages -------------------------------------------------------------


@dataclass(slots=True)
class RecoveryLive:
    figure: str
    messages: int
    fsync: str
    segment_bytes: int | None
    checkpoint_bytes: int | None
    publish_seconds: float
    publish_msg_per_s: float
    wal_bytes_before_kill: int
    after_sigkill: Recovery
    sigterm_shutdown_s: float
    sigterm_exit_status: int
    after_sigterm: Recovery
    target_s: float = 5.0
    passed: bool = False

    def __post_init__(self) -> None:
        ok = all(r.seconds <= self.target_s and r.messages == self.messages == r.queue_messages
                 for r in (self.after_sigkill, self.after_sigterm))
        self.passed = ok and self.sigterm_exit_status == 0

    def lines(self) -> list[str]:
        out = [f"recovery-live: {self.messages:,} live {BODY_SIZE}-byte messages, fsync {self.fsync}, "
               f"{_settings(self.segment_bytes, self.checkpoint_bytes)}",
               f"  published in {self.publish_seconds:.1f} s ({self.publish_msg_per_s:,.0f} msg/s); "
               f"WAL directory {_mib(self.wal_bytes_before_kill)} before the kill"]
        for name, r in (("after SIGKILL", self.after_sigkill), ("after SIGTERM", self.after_sigterm)):
            out.append(f"  {name}: {_recovery(r)}  {_verdict(r.seconds <= self.target_s and r.messages == self.messages == r.queue_messages)} (target <= {self.target_s:g} s, all {self.messages:,} messages back)")
        out.append(f"  SIGTERM shutdown (writes a snapshot) took {self.sigterm_shutdown_s:.2f} s, "
                   f"exit status {self.sigterm_exit_status}")
        return out


def recovery_live(workdir: Path, messages: int = 1_000_000, fsync: str = "always",
                  segment_bytes: int | None = None, checkpoint_bytes: int | None = None) -> RecoveryLive:
    """Publish ``messages`` to one queue, SIGKILL and restart, SIGTERM and restart."""
    proc = _broker(workdir / "recovery-live", fsync, segment_bytes, checkpoint_bytes)
    with _running(proc):
        start_broker(proc)
        wire = _connect(proc, "live")
        try:
            published, seconds = load(wire, "live", messages, "recovery-live")
        finally:
            wire.close()
        size, _ = wal_bytes(_wal_dir(proc))
        proc.kill()
        _progress("recovery-live: SIGKILLed; restarting")
        killed = start_broker(proc)
        _progress(f"recovery-live: recovered in {killed.seconds:.2f} s; SIGTERM and restart")
        t = time.perf_counter()
        status = proc.stop(timeout=STOP_TIMEOUT)
        shutdown = time.perf_counter() - t
        termed = start_broker(proc)
        proc.stop(timeout=STOP_TIMEOUT)
    shutil.rmtree(proc.data_dir, ignore_errors=True)
    return RecoveryLive("recovery-live", published, fsync, segment_bytes, checkpoint_bytes, seconds,
                        published / seconds, size, killed, shutdown, status, termed)


# -- 2. recovery after churn ------------------------------------------------------------------


@dataclass(slots=True)
class RecoveryChurn:
    figure: str
    live: int
    churned: int
    fsync: str
    segment_bytes: int | None
    checkpoint_bytes: int | None
    churn_seconds: float
    churn_msg_per_s: float
    checkpoints: int
    wal_bytes_before_kill: int
    wal_files_before_kill: int
    after_sigkill: Recovery
    #: LSN of the oldest segment before the kill: above 0 once a checkpoint removed some.
    oldest_segment_lsn: int = 0
    target_s: float = 2.0
    passed: bool = False

    def __post_init__(self) -> None:
        r = self.after_sigkill
        self.passed = r.seconds <= self.target_s and r.messages == self.live == r.queue_messages

    def lines(self) -> list[str]:
        r = self.after_sigkill
        return [f"recovery-churn: {self.live:,} live + {self.churned:,} published, consumed and acked, "
                f"fsync {self.fsync}, {_settings(self.segment_bytes, self.checkpoint_bytes)}",
                f"  churn: {self.churn_seconds:.1f} s ({self.churn_msg_per_s:,.0f} msg/s), "
                f"{self.checkpoints} checkpoints; WAL directory {_mib(self.wal_bytes_before_kill)} in "
                f"{self.wal_files_before_kill} files before the kill",
                f"  after SIGKILL: {_recovery(r)}  {_verdict(self.passed)} (target <= {self.target_s:g} s, "
                f"all {self.live:,} live messages back)"]


def recovery_churn(workdir: Path, messages: int = 10_000_000, live: int = 100_000, fsync: str = "always",
                   segment_bytes: int | None = None, checkpoint_bytes: int | None = None,
                   time_limit: float = 3600.0, chunk: int = 10_000, min_checkpoints: int = 0) -> RecoveryChurn:
    """``live`` messages that stay in one queue, ``messages`` through another; SIGKILL, restart.

    The kill comes once the broker has logged ``min_checkpoints`` checkpoints since the
    churn began (waiting up to ``CHECKPOINT_WAIT_S`` after it ended)."""
    proc = _broker(workdir / "recovery-churn", fsync, segment_bytes, checkpoint_bytes)
    with _running(proc):
        start_broker(proc)
        log_from = _log_size(proc)
        wire = _connect(proc, "live")
        try:
            load(wire, "live", live, "recovery-churn")
            wire.call("queue_create", {"queue": "churn"})

            def report(done: int, s: float) -> None:
                _progress(f"recovery-churn: {done:,} of {messages:,} published+acked ({done / s:,.0f} msg/s), "
                          f"WAL {_mib(wal_bytes(_wal_dir(proc))[0])}")

            churned, seconds = churn(wire, "churn", seconds=time_limit, messages=messages, chunk=chunk,
                                     progress=report)
            if churned < messages:
                _progress(f"recovery-churn: time limit reached after {churned:,} messages")
        finally:
            wire.close()
        wait_for_checkpoints(proc, log_from, min_checkpoints)
        size, files = wal_bytes(_wal_dir(proc))
        oldest = oldest_segment_lsn(_wal_dir(proc))
        checkpoints = len(_checkpoints_since(proc, log_from))
        proc.kill()
        _progress("recovery-churn: SIGKILLed; restarting")
        recovered = start_broker(proc)
        proc.stop(timeout=STOP_TIMEOUT)
    shutil.rmtree(proc.data_dir, ignore_errors=True)
    return RecoveryChurn("recovery-churn", live, churned, fsync, segment_bytes, checkpoint_bytes, seconds,
                         churned / seconds if seconds else 0.0, checkpoints, size, files, recovered,
                         oldest)


# -- 3. WAL size under steady load ------------------------------------------------------------


@dataclass(slots=True)
class WalSize:
    figure: str
    seconds: float
    fsync: str
    segment_bytes: int
    checkpoint_bytes: int
    peak_msg_per_s: float
    target_msg_per_s: float
    achieved_msg_per_s: float
    messages: int
    checkpoints: int
    samples: int
    max_wal_bytes: int
    mean_wal_bytes: float
    max_live_bytes: int
    #: 2 x the largest sampled live data + 2 segments.
    bound_bytes: int
    #: Samples above 2 x the live data sampled with them + 2 segments.
    samples_over_own_bound: int
    #: How long the steady load was sampled (``seconds``, or more while waiting for
    #: checkpoints), the sampling interval, and the load's own duration and chunk: it
    #: publishes at most ``target_msg_per_s * load_seconds + chunk`` messages.
    elapsed_s: float = 0.0
    interval_s: float = 1.0
    load_seconds: float = 0.0
    chunk: int = 0
    passed: bool = False

    def __post_init__(self) -> None:
        self.passed = self.samples > 0 and self.max_wal_bytes < self.bound_bytes

    def lines(self) -> list[str]:
        return [f"wal-size: publish+ack of {BODY_SIZE}-byte bodies for {self.seconds:.0f} s, fsync {self.fsync}, "
                f"{_settings(self.segment_bytes, self.checkpoint_bytes)}",
                f"  peak {self.peak_msg_per_s:,.0f} msg/s; throttled to {self.target_msg_per_s:,.0f}, achieved "
                f"{self.achieved_msg_per_s:,.0f} msg/s ({self.messages:,} messages), {self.checkpoints} checkpoints",
                f"  WAL directory over {self.samples} samples: max {_mib(self.max_wal_bytes)}, mean "
                f"{_mib(self.mean_wal_bytes)}; live data max {_mib(self.max_live_bytes)}",
                f"  max WAL {_mib(self.max_wal_bytes)} vs bound 2 x live + 2 segments = {_mib(self.bound_bytes)}  "
                f"{_verdict(self.passed)} (samples over their own instant bound: {self.samples_over_own_bound})"]


def wal_size(workdir: Path, seconds: float = 600.0, fsync: str = "always", segment_bytes: int = 4 * MiB,
             checkpoint_bytes: int = 4 * MiB, peak_seconds: float = 10.0, chunk: int = 2000,
             interval: float = 1.0, min_checkpoints: int = 0) -> WalSize:
    """Measure the peak publish+ack rate, then run at half of it for ``seconds``, sampling
    the WAL directory's size and the live data every ``interval`` s (the first sample at
    once). Past ``seconds`` the steady load goes on until the broker logged
    ``min_checkpoints`` checkpoints in it (at most ``CHECKPOINT_WAIT_S`` more)."""
    proc = _broker(workdir / "wal-size", fsync, segment_bytes, checkpoint_bytes)
    with _running(proc):
        start_broker(proc)
        wire = _connect(proc, "churn")
        try:
            with BackgroundLoad(proc, "churn", seconds=peak_seconds, chunk=chunk) as peak_load:
                time.sleep(peak_seconds)
                n, s = peak_load.finish()
            peak = n / s if s else 0.0
            target = peak / 2
            _progress(f"wal-size: peak {peak:,.0f} msg/s; now {target:,.0f} msg/s for {seconds:.0f} s")
            log_from = _log_size(proc)
            sizes: list[int] = []
            lives: list[int] = []
            over = 0
            wal = _wal_dir(proc)
            with BackgroundLoad(proc, "churn", seconds=seconds + CHECKPOINT_WAIT_S, rate=target,
                                chunk=chunk) as steady:
                started = time.monotonic()
                next_sample = started
                last_progress = started
                while True:
                    now = time.monotonic()
                    if now >= next_sample:
                        next_sample += interval
                        size, _ = wal_bytes(wal)
                        live_bytes = _live_messages(wire) * BODY_SIZE
                        sizes.append(size)
                        lives.append(live_bytes)
                        if size >= 2 * live_bytes + 2 * segment_bytes:
                            over += 1
                        if now - last_progress >= 30:
                            last_progress = now
                            _progress(f"wal-size: {now - started:.0f} of {seconds:.0f} s, WAL {_mib(size)}, "
                                      f"max {_mib(max(sizes))}")
                    now = time.monotonic()
                    elapsed = now - started
                    if elapsed >= seconds:
                        if (elapsed >= seconds + CHECKPOINT_WAIT_S
                                or len(_checkpoints_since(proc, log_from)) >= min_checkpoints):
                            break
                        time.sleep(max(0.0, min(next_sample - now, 0.05)))  # for a checkpoint
                    else:
                        time.sleep(max(0.0, min(next_sample - now, seconds - elapsed)))
                messages, load_seconds = steady.finish()
        finally:
            wire.close()
        checkpoints = len(_checkpoints_since(proc, log_from))
        proc.stop(timeout=STOP_TIMEOUT)
    shutil.rmtree(proc.data_dir, ignore_errors=True)
    max_live = max(lives, default=0)
    return WalSize("wal-size", seconds, fsync, segment_bytes, checkpoint_bytes, peak, target,
                   messages / load_seconds if load_seconds else 0.0, messages, checkpoints, len(sizes),
                   max(sizes, default=0), sum(sizes) / len(sizes) if sizes else 0.0, max_live,
                   2 * max_live + 2 * segment_bytes, over, elapsed, interval, load_seconds, chunk)


# -- 4. publish latency during checkpoints ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatencyRun:
    checkpoint_bytes: int
    #: Checkpoints completed while the foreground publisher ran.
    checkpoints: int
    checkpoint_seconds: list[float]
    samples: int
    p50_us: float
    p99_us: float
    #: Samples that overlapped a checkpoint (fork to publish), and their percentiles.
    samples_during_checkpoints: int
    during_p50_us: float
    during_p99_us: float
    #: The other samples' percentiles.
    outside_p50_us: float
    outside_p99_us: float
    #: The background load's target and achieved rates (target 0: unthrottled).
    background_target_msg_per_s: float
    background_msg_per_s: float


@dataclass(slots=True)
class CheckpointP99:
    figure: str
    live: int
    seconds: float
    fsync: str
    segment_bytes: int | None
    #: The unthrottled background rate measured first (0 when --load-rate was given).
    peak_msg_per_s: float
    with_checkpoints: LatencyRun
    without_checkpoints: LatencyRun
    #: p99 of the samples taken during checkpoints / p99 without checkpoints.
    p99_ratio: float
    #: p99 of the whole run with checkpoints / p99 without.
    p99_ratio_whole_run: float
    target_ratio: float = 3.0
    passed: bool = False

    def __post_init__(self) -> None:
        self.passed = (self.with_checkpoints.checkpoints > 0 and self.with_checkpoints.samples_during_checkpoints > 0
                       and self.without_checkpoints.checkpoints == 0 and self.p99_ratio <= self.target_ratio)

    def lines(self) -> list[str]:
        w, wo = self.with_checkpoints, self.without_checkpoints
        return [f"checkpoint-p99: sequential publish for {self.seconds:.0f} s beside a background publish+ack load, "
                f"{self.live:,} live messages, fsync {self.fsync}, --segment-bytes "
                f"{_mib(self.segment_bytes) if self.segment_bytes else 'default (64 MiB)'}",
                f"  background load: {_rate(w.background_target_msg_per_s)}"
                + (f" (half the peak of {self.peak_msg_per_s:,.0f} msg/s)" if self.peak_msg_per_s else ""),
                f"  --checkpoint-bytes {_mib(w.checkpoint_bytes)}: {w.checkpoints} checkpoints "
                f"({', '.join(f'{s:.2f}' for s in w.checkpoint_seconds) or '-'} s), background "
                f"{w.background_msg_per_s:,.0f} msg/s; p50 {w.p50_us:,.0f} µs, p99 {w.p99_us:,.0f} µs over "
                f"{w.samples:,}; during checkpoints p50 {w.during_p50_us:,.0f} µs, p99 {w.during_p99_us:,.0f} µs "
                f"over {w.samples_during_checkpoints:,}; outside them p50 {w.outside_p50_us:,.0f} µs, "
                f"p99 {w.outside_p99_us:,.0f} µs",
                f"  --checkpoint-bytes {_mib(wo.checkpoint_bytes)}: {wo.checkpoints} checkpoints, background "
                f"{wo.background_msg_per_s:,.0f} msg/s; p50 {wo.p50_us:,.0f} µs, p99 {wo.p99_us:,.0f} µs over "
                f"{wo.samples:,}",
                f"  p99 during checkpoints / p99 without: {self.p99_ratio:.2f}  {_verdict(self.passed)} "
                f"(target <= {self.target_ratio:g}; whole run with / without: {self.p99_ratio_whole_run:.2f})"]


def _overlapping(samples: list[tuple[float, float]], spans: list[tuple[float, float]]
                 ) -> tuple[list[tuple[float, float]], list[float], list[float]]:
    """The checkpoint spans that overlap the samples (start wall time, latency), and
    the latencies of the samples taken during one of them and outside all."""
    t_first = samples[0][0] if samples else 0.0
    t_end = samples[-1][0] + samples[-1][1] if samples else 0.0
    spans = [(a, b) for a, b in spans if a <= t_end and b >= t_first]
    during: list[float] = []
    outside: list[float] = []
    for t, lat in samples:
        (during if any(t <= b and t + lat >= a for a, b in spans) else outside).append(lat)
    return spans, during, outside


def _latency_run(workdir: Path, name: str, live: int, seconds: float, fsync: str, segment_bytes: int | None,
                 checkpoint_bytes: int, load_rate: float | None, chunk: int,
                 peak_seconds: float, min_checkpoints: int = 0) -> tuple[LatencyRun, float]:
    """One run; with ``load_rate`` None the background runs at half the peak it measures
    first. Returns the run and that peak (0 when not measured). The foreground publishes
    at least one batch of 50, for ``seconds``, and on (at most ``CHECKPOINT_WAIT_S``) until
    ``min_checkpoints`` checkpoints overlapped its samples, each with a sample during it."""
    proc = _broker(workdir / name, fsync, segment_bytes, checkpoint_bytes)
    with _running(proc):
        start_broker(proc)
        wire = _connect(proc, "live")
        try:
            load(wire, "live", live, f"checkpoint-p99 ({name})")
            wire.call("queue_create", {"queue": "churn"})
            wire.call("queue_create", {"queue": "fg"})
            # Both runs start with the same unthrottled phase; the first measures the peak
            # there when no rate is given.
            peak = 0.0
            if peak_seconds > 0:
                with BackgroundLoad(proc, "churn", seconds=peak_seconds, chunk=chunk) as peak_load:
                    time.sleep(peak_seconds)
                    n, s = peak_load.finish()
                peak = n / s if s else 0.0
            if load_rate is None:
                if not peak:
                    raise ValueError("no --load-rate and no peak measured")
                load_rate = peak / 2
            _progress(f"checkpoint-p99 ({name}): peak {peak:,.0f} msg/s; background at {_rate(load_rate)}")
            with BackgroundLoad(proc, "churn", seconds=seconds + CHECKPOINT_WAIT_S + 60, rate=load_rate,
                                chunk=chunk) as bg:
                time.sleep(0.5)  # let the load get going
                log_from = _log_size(proc)
                _progress(f"checkpoint-p99 ({name}): measuring for {seconds:.0f} s")
                samples: list[tuple[float, float]] = []  # (start wall time, latency)
                started = time.monotonic()
                checked = started
                while True:
                    t0 = time.time()
                    _, _, lat = sequential_publish(wire, "fg", 50)
                    for x in lat:
                        samples.append((t0, x))
                        t0 += x
                    now = time.monotonic()
                    if now - started < seconds:
                        continue
                    if not min_checkpoints or now - started >= seconds + CHECKPOINT_WAIT_S:
                        break
                    if now - checked >= 0.1:  # enough checkpoints with samples during them?
                        checked = now
                        spans, _, _ = _overlapping(samples, _checkpoints_since(proc, log_from))
                        if sum(any(t <= b and t + x >= a for t, x in samples) for a, b in spans) \
                                >= min_checkpoints:
                            break
                bg_messages, bg_seconds = bg.finish()
        finally:
            wire.close()
        spans = checkpoints_in(_log_since(proc, log_from))
        proc.stop(timeout=STOP_TIMEOUT)
    shutil.rmtree(proc.data_dir, ignore_errors=True)
    # Only checkpoints that overlap the foreground run count.
    spans, during, outside = _overlapping(samples, spans)
    p50, p99 = _percentiles([lat for _, lat in samples])
    d50, d99 = _percentiles(during)
    o50, o99 = _percentiles(outside)
    return LatencyRun(checkpoint_bytes, len(spans), [round(b - a, 3) for a, b in spans], len(samples), p50, p99,
                      len(during), d50, d99, o50, o99, load_rate, bg_messages / bg_seconds if bg_seconds else 0.0), peak


def checkpoint_p99(workdir: Path, live: int = 1_000_000, seconds: float = 60.0, fsync: str = "always",
                   segment_bytes: int | None = None, checkpoint_bytes: int = 4 * MiB,
                   load_rate: float | None = None, chunk: int = 2000, peak_seconds: float = 5.0,
                   min_checkpoints: int = 0) -> CheckpointP99:
    """The same run twice: with checkpoints every ``checkpoint_bytes`` (or the live data, if
    more) of log, and with none. The background publish+ack load runs at ``load_rate``
    msg/s (0: unthrottled; None: half the peak measured in the first run, the same rate
    in both runs). The run with checkpoints measures until ``min_checkpoints`` of them
    had samples during them (see ``_latency_run``)."""
    with_cp, peak = _latency_run(workdir, "checkpoint-p99-with", live, seconds, fsync, segment_bytes,
                                 checkpoint_bytes, load_rate, chunk, peak_seconds, min_checkpoints)
    without, _ = _latency_run(workdir, "checkpoint-p99-without", live, seconds, fsync, segment_bytes,
                              NO_CHECKPOINTS, with_cp.background_target_msg_per_s, chunk, peak_seconds)
    if load_rate is not None:
        peak = 0.0  # measured, but not what the rate came from
    ratio = with_cp.during_p99_us / without.p99_us if without.p99_us else float("inf")
    whole = with_cp.p99_us / without.p99_us if without.p99_us else float("inf")
    return CheckpointP99("checkpoint-p99", live, seconds, fsync, segment_bytes, peak, with_cp, without, ratio, whole)


# -- output and CLI ---------------------------------------------------------------------------


def _mib(n: float | None) -> str:
    if n is None:
        return "default"
    if n >= 2**40:
        return f"{n / 2**40:g} TiB"
    return f"{n / MiB:,.1f} MiB"


def _rate(target: float) -> str:
    return f"{target:,.0f} msg/s" if target else "unthrottled"


def _settings(segment_bytes: int | None, checkpoint_bytes: int | None) -> str:
    return (f"--segment-bytes {_mib(segment_bytes) if segment_bytes else 'default (64 MiB)'}, "
            f"--checkpoint-bytes {_mib(checkpoint_bytes) if checkpoint_bytes else 'default (64 MiB)'}")


def _recovery(r: Recovery) -> str:
    return (f"recovered {r.messages:,} messages in {r.seconds:.2f} s (snapshot at LSN {r.snapshot_lsn:,}, then "
            f"{r.records:,} records / {_mib(r.bytes)} from {r.segments} segment(s)); listening after "
            f"{r.listening_after_s:.2f} s; queues hold {r.queue_messages:,}")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


Figure = RecoveryLive | RecoveryChurn | WalSize | CheckpointP99


def _report(results: list[Figure], as_json: bool) -> None:
    command = " ".join(["python -m tools.durabench", *sys.argv[1:]])
    if as_json:
        print(json.dumps({"command": command, "machine": machine(),
                          "results": [asdict(r) for r in results],
                          "passed": all(r.passed for r in results)}, indent=2))
    else:
        print(f"command: {command}")
        print(f"machine: {machine()}")
        for r in results:
            print()
            print("\n".join(r.lines()))
    if not all(r.passed for r in results):
        sys.exit(1)


@contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="lockgate-durabench-") as tmp:
        yield Path(tmp)


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)
    fn = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
                      help="Where the data directories go (default: a temporary directory, removed after).")(fn)
    fn = click.option("--fsync", type=click.Choice(["always", "interval", "never"]), default="always",
                      show_default=True, help="The brokers' fsync policy.")(fn)
    return fn


_MIB_OPT = click.IntRange(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Lockgate durability figures: recovery time, WAL size bound, p99 during checkpoints."""


@main.command("recovery-live")
@click.option("--messages", default=1_000_000, show_default=True, type=click.IntRange(1000),
              help="Live messages (published 1000 per frame).")
@_common
def recovery_live_cmd(messages: int, as_json: bool, workdir: Path | None, fsync: str) -> None:
    """Recovery of live messages after SIGKILL and after SIGTERM (target <= 5 s)."""
    with _workdir(workdir) as wd:
        _report([recovery_live(wd, messages, fsync)], as_json)


@main.command("recovery-churn")
@click.option("--messages", default=10_000_000, show_default=True, type=click.IntRange(1000),
              help="Messages published, consumed and acked.")
@click.option("--live", default=100_000, show_default=True, type=click.IntRange(1000),
              help="Messages published first that stay.")
@click.option("--time-limit", default=3600.0, show_default=True, type=click.FloatRange(1),
              help="Stop the churn after this many seconds even if --messages is not reached.")
@_common
def recovery_churn_cmd(messages: int, live: int, time_limit: float, as_json: bool, workdir: Path | None,
                       fsync: str) -> None:
    """Recovery after SIGKILL when most of the log is acked messages (target <= 2 s)."""
    with _workdir(workdir) as wd:
        _report([recovery_churn(wd, messages, live, fsync, time_limit=time_limit)], as_json)


@main.command("wal-size")
@click.option("--minutes", default=10.0, show_default=True, type=click.FloatRange(0.05),
              help="Length of the steady load.")
@click.option("--peak-seconds", default=10.0, show_default=True, type=click.FloatRange(0.5),
              help="Length of the unthrottled run that measures the peak rate.")
@click.option("--segment-mib", default=4, show_default=True, type=_MIB_OPT, help="--segment-bytes, in MiB.")
@click.option("--checkpoint-mib", default=4, show_default=True, type=_MIB_OPT, help="--checkpoint-bytes, in MiB.")
@_common
def wal_size_cmd(minutes: float, peak_seconds: float, segment_mib: int, checkpoint_mib: int, as_json: bool,
                 workdir: Path | None, fsync: str) -> None:
    """Max WAL directory size under steady publish+ack at half the peak rate."""
    with _workdir(workdir) as wd:
        _report([wal_size(wd, minutes * 60, fsync, segment_mib * MiB, checkpoint_mib * MiB, peak_seconds)], as_json)


@main.command("checkpoint-p99")
@click.option("--live", default=1_000_000, show_default=True, type=click.IntRange(0),
              help="Live messages in the broker (the snapshot's size).")
@click.option("--seconds", default=60.0, show_default=True, type=click.FloatRange(1),
              help="Length of each of the two measured runs.")
@click.option("--checkpoint-mib", default=4, show_default=True, type=_MIB_OPT,
              help="--checkpoint-bytes of the run with checkpoints, in MiB.")
@click.option("--load-rate", default=None, type=click.FloatRange(0),
              help="Background publish+ack msg/s (0: as fast as it goes). Default: half the peak, "
              "measured unthrottled first.")
@_common
def checkpoint_p99_cmd(live: int, seconds: float, checkpoint_mib: int, load_rate: float | None, as_json: bool,
                       workdir: Path | None, fsync: str) -> None:
    """Sequential-publish p50/p99 with and without checkpoints (target: p99 ratio <= 3)."""
    with _workdir(workdir) as wd:
        _report([checkpoint_p99(wd, live, seconds, fsync, checkpoint_bytes=checkpoint_mib * MiB,
                                load_rate=load_rate)], as_json)


@main.command("all")
@click.option("--live-messages", default=1_000_000, show_default=True, type=click.IntRange(1000),
              help="recovery-live --messages and checkpoint-p99 --live.")
@click.option("--churn-messages", default=10_000_000, show_default=True, type=click.IntRange(1000),
              help="recovery-churn --messages.")
@click.option("--minutes", default=10.0, show_default=True, type=click.FloatRange(0.05), help="wal-size --minutes.")
@click.option("--p99-seconds", default=60.0, show_default=True, type=click.FloatRange(1),
              help="checkpoint-p99 --seconds.")
@_common
def all_cmd(live_messages: int, churn_messages: int, minutes: float, p99_seconds: float, as_json: bool,
            workdir: Path | None, fsync: str) -> None:
    """All four figures in sequence."""
    results: list[Figure] = []
    with _workdir(workdir) as wd:
        results.append(recovery_live(wd, live_messages, fsync))
        results.append(recovery_churn(wd, churn_messages, fsync=fsync))
        results.append(wal_size(wd, minutes * 60, fsync))
        results.append(checkpoint_p99(wd, live_messages, p99_seconds, fsync))
    _report(results, as_json)


__all__ = ["CheckpointP99", "LatencyRun", "Recovery", "RecoveryChurn", "RecoveryLive", "WalSize",
           "checkpoint_p99", "checkpoints_in", "churn", "recovery_churn", "recovery_live", "start_broker",
           "oldest_segment_lsn", "wait_for_checkpoints", "wal_bytes", "wal_size"]

if __name__ == "__main__":
    main()
