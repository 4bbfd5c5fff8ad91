"""What an idle connection costs the broker in memory.

Starts a broker (``python -m broker`` on 127.0.0.1, a temporary data directory), opens N
connections to it from this process, each of which completes ``hello`` and then sends
nothing, and reads the broker's resident set size (``VmRSS`` in ``/proc/PID/status``)
before and with them open. The figure is (RSS with N open − RSS before) / N. Every
connection is closed afterwards and the RSS read again (what the broker keeps of them).
Each count gets a fresh broker per run; the figure is the median of the runs.

    python -m tools.idlebench                     # 1,000 and 5,000 connections, 3 runs each
    python -m tools.idlebench --connections 200 --runs 1 --json

Loopback only and bounded: at most ``--connections`` sockets (plus the broker's), opened
``OPEN_AT_ONCE`` at a time; the broker is stopped by its PID.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import trio

from protocol import NEED_DATA, Connection, Encoder, Reply
from tools.procs import BrokerProcess

#: Connections opened concurrently (the listen backlog is larger).
OPEN_AT_ONCE = 200
#: Seconds to let the broker settle before a reading.
SETTLE_S = 1.0


@dataclass(frozen=True)
class Run:
    connections: int
    rss_before_kib: int
    rss_open_kib: int
    rss_closed_kib: int

    @property
    def per_connection_kib(self) -> float:
        return (self.rss_open_kib - self.rss_before_kib) / self.connections


def machine() -> str:
    """OS, cores, CPU model and Python (tools.bench may not be imported here)."""
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def _open_idle(host: str, port: int, hello: bytes) -> trio.SocketStream:
    """A connection that has completed ``hello``."""
    stream = await trio.open_tcp_stream(host, port)
    conn = Connection("client")
    await stream.send_all(hello)
    while True:
        data = await stream.receive_some(65536)
        if not data:
            raise RuntimeError("the broker closed a connection during hello")
        conn.receive_data(data)
        frame = conn.next_frame()
        if frame is not NEED_DATA:
            if not isinstance(frame, Reply):
                raise RuntimeError(f"hello failed: {frame}")
            return stream


async def _measure(broker: BrokerProcess, count: int) -> Run:
    pid = broker.pid
    assert pid is not None
    hello = Encoder().request(1, "hello", {"versions": [1]})
    # One connection first, so the broker's first-connection costs are in the baseline.
    first = await _open_idle(broker.host, broker.port, hello)
    await first.aclose()
    await trio.sleep(SETTLE_S)
    before = rss_kib(pid)
    streams: list[trio.SocketStream] = []
    limiter = trio.CapacityLimiter(OPEN_AT_ONCE)

    async def one() -> None:
        async with limiter:
            streams.append(await _open_idle(broker.host, broker.port, hello))

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
        await trio.sleep(SETTLE_S)
        opened = rss_kib(pid)
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)
    await trio.sleep(SETTLE_S)
    return Run(count, before, opened, rss_kib(pid))


def measure(count: int, args: tuple[str, ...] = ()) -> Run:
    """One run: a fresh broker, ``count`` idle connections."""
    with tempfile.TemporaryDirectory(prefix="lockgate-idlebench-") as tmp:
        with BrokerProcess(Path(tmp) / "data", fsync="never", args=args) as broker:
            run = trio.run(_measure, broker, count)
            broker.stop()
    return run


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--connections", "counts", multiple=True, type=click.IntRange(1, 15_000),
              default=(1000, 5000), show_default=True, help="Idle connections per run (repeat for several).")
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1), help="Runs per count (median).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run, then the medians.")
def main(counts: tuple[int, ...], runs: int, as_json: bool) -> None:
    """Measure the broker's memory per idle (handshaken) connection."""
    print(f"# {machine()}", file=sys.stderr)
    for count in counts:
        results = []
        for i in range(runs):
            started = time.monotonic()
            run = measure(count)
            results.append(run)
            line = (f"{count} connections, run {i + 1}: RSS {run.rss_before_kib} KiB -> "
                    f"{run.rss_open_kib} KiB open -> {run.rss_closed_kib} KiB closed: "
                    f"{run.per_connection_kib:.1f} KiB each ({time.monotonic() - started:.1f} s)")
            print(json.dumps({**asdict(run), "per_connection_kib": run.per_connection_kib})
                  if as_json else line, file=sys.stdout if as_json else sys.stderr)
        median = statistics.median(r.per_connection_kib for r in results)
        kept = statistics.median(r.rss_closed_kib - r.rss_before_kib for r in results)
        summary = {"connections": count, "runs": runs, "median_per_connection_kib": round(median, 2),
                   "median_kept_after_close_kib": kept}
        print(json.dumps(summary) if as_json else
              f"{count} idle connections: median {median:.1f} KiB each; "
              f"{kept} KiB of RSS kept after closing them all")


if __name__ == "__main__":
    main()
