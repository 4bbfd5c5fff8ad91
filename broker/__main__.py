"""``brokerd`` / ``python -m broker``: run a Lockgate broker."""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click
import trio

from protocol import DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE

from .config import DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SEGMENT_BYTES, BrokerConfig
from .server import Broker


async def run(config: BrokerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully; a second signal forces it."""
    broker = Broker(config)
    logger = logging.getLogger("lockgate")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def serve(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
                await broker.serve(task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped: end the signal watcher too

            addr = await nursery.start(serve)
            print(f"lockgate listening on {addr}", flush=True)
            signalled = 0
            async for signum in signals:
                signalled += 1
                if signalled == 1:
                    logger.info("signal %s: shutting down gracefully", signum)
                    broker.shutdown()
                else:
                    logger.warning("signal %s again: stopping now", signum)
                    nursery.cancel_scope.cancel()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int,
              help="TCP port; 0 picks a free one (printed on start).")
@click.option("--data", "data_dir", default=DEFAULT_DATA_DIR, show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Data directory (the WAL lives in DATA/wal).")
@click.option("--fsync", type=click.Choice(["always", "interval", "never"]), default="always",
              show_default=True, help="When a confirm is sent: after fdatasync (always), or after the write "
              "to the OS with fdatasync every --fsync-interval-ms (interval) or never.")
@click.option("--fsync-interval-ms", default=100, show_default=True, type=click.IntRange(1),
              help="fdatasync period for --fsync interval.")
@click.option("--segment-bytes", default=DEFAULT_SEGMENT_BYTES, show_default=True,
              type=click.IntRange(1024 * 1024), help="Roll WAL segments at this size.")
@click.option("--checkpoint-bytes", default=DEFAULT_SEGMENT_BYTES, show_default=True,
              type=click.IntRange(1024 * 1024),
              help="Checkpoint once the WAL grows this much (or by the live data, if more) "
              "since the last snapshot; obsolete segments are then deleted.")
@click.option("--max-frame", default=DEFAULT_MAX_FRAME, show_default=True, type=click.IntRange(64 * 1024, 2**32 - 1),
              help="Largest frame body accepted; a larger length prefix gets FRAME_TOO_LARGE and a close.")
@click.option("--max-message", default=DEFAULT_MAX_MESSAGE, show_default=True, type=click.IntRange(1),
              help="Largest message body accepted (MESSAGE_TOO_LARGE beyond).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def main(host: str, port: int, data_dir: Path, fsync: str, fsync_interval_ms: int, segment_bytes: int,
         checkpoint_bytes: int, max_frame: int, max_message: int, log_level: str) -> None:
    """Run a Lockgate broker."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = BrokerConfig(host=host, port=port, data_dir=data_dir, fsync=fsync,
                              fsync_interval_ms=fsync_interval_ms, segment_bytes=segment_bytes,
                              checkpoint_bytes=checkpoint_bytes,
                              max_frame=max_frame, max_message=max_message)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    trio.run(run, config)


if __name__ == "__main__":
    main()
