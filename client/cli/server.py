"""brokerctl ping and info: the broker itself."""
from __future__ import annotations

import time
from dataclasses import asdict

import click

from client.cli.common import common_options, connect, emit_json, time_text


@click.command()
@common_options
def ping(addr: str, as_json: bool) -> None:
    """Measure the round-trip time; show the server's info."""
    with connect(addr) as client:
        start = time.perf_counter()
        now_ms = client.ping()
        rtt_ms = (time.perf_counter() - start) * 1000
        info = client.server_info
    if as_json:
        emit_json({"rtt_ms": round(rtt_ms, 3), "server_time_ms": now_ms, "server": asdict(info)})
        return
    click.echo(f"pong from {addr}: time={rtt_ms:.3f} ms")
    click.echo(f"server {info.server} (protocol v{info.version}), node {info.node!r}")
    click.echo(
        f"limits: max_frame={info.max_frame} max_message={info.max_message} max_batch={info.max_batch}"
    )
    for route in info.shards:
        click.echo(f"shards of {route.queue}: node {route.node!r} at {route.addr}")


def duration_text(ms: int) -> str:
    """A duration as ``3d 4h 5m 6s`` (its largest units; ``0s`` for less than a second)."""
    seconds = ms // 1000
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts)


def size_text(n: int) -> str:
    """A byte count as ``512 B``, ``1.5 KiB``, ``12.3 MiB``, ``2.0 GiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


@click.command()
@common_options
def info(addr: str, as_json: bool) -> None:
    """Show the broker's version, uptime, fsync policy, data directory, WAL size and
    connections.

    The data directory is a path on the broker's machine. CONNECTIONS counts this one.
    """
    with connect(addr) as client:
        facts = client.broker_info()
    if as_json:
        emit_json({"addr": addr, **asdict(facts)})
        return
    rows = [
        ("server", f"{facts.server} (node {facts.node!r}) at {addr}"),
        ("uptime", f"{duration_text(facts.uptime_ms)} (since {time_text(facts.started_ms)})"),
        ("fsync", facts.fsync + (f" (every {facts.fsync_interval_ms} ms)" if facts.fsync == "interval" else "")),
        ("data_dir", facts.data_dir),
        ("wal", f"{size_text(facts.wal_bytes)} in {facts.wal_segments} segment"
                f"{'' if facts.wal_segments == 1 else 's'}"),
        ("connections", str(facts.connections)),
        ("queues", str(facts.queues)),
        ("topics", f"{facts.topics} ({facts.groups} consumer group{'' if facts.groups == 1 else 's'})"),
        ("auth", facts.auth),
        ("memory", f"{size_text(facts.memory_used)} of a {size_text(facts.memory_budget)} budget held by connections"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name.ljust(width)}  {value}")


#: The commands of this family, as `brokerctl` offers them.
COMMANDS: tuple[click.Command, ...] = (ping, info)
