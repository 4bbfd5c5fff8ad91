"""brokerctl ping."""
from __future__ import annotations

import time
from dataclasses import asdict

import click

from client.cli.common import common_options, connect, emit_json


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


#: The commands of this family, as `brokerctl` offers them.
COMMANDS: tuple[click.Command, ...] = (ping,)
