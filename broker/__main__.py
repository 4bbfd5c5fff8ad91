"""``brokerd`` / ``python -m broker``: run a Lockgate broker."""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from protocol import DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE

from .config import DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_SEGMENT_BYTES, BrokerConfig
from .server import Broker
from .recovery import RecoverMode
from .wal import FsyncPolicy, WalCorruption, WalVersionError
from .wal.fileio import JournalingFileIO

#: Exit status when start-up finds damage it may not repair (``--recover refuse``).
EXIT_DAMAGED = 2
#: Exit status when start-up fails on the file system or network (no room, port in use).
EXIT_OS_ERROR = 3

_E = TypeVar("_E", bound=BaseException)


async def run(config: BrokerConfig, power_journal: Path | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully; a second signal forces it.

    ``power_journal`` (test only) journals every fsync there, see ``JournalingFileIO``.
    """
    broker = Broker(config) if power_journal is None else Broker(config, io=JournalingFileIO(power_journal))
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
@click.option("--fsync", type=click.Choice([p.value for p in FsyncPolicy]), default="always",
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
@click.option("--recover", type=click.Choice([m.value for m in RecoverMode]), default="refuse",
              show_default=True,
              help="On damage in the WAL or a snapshot: stop with an error naming the file and "
              "offset (refuse), or keep everything before the damage, move the damaged files "
              "aside as *.damaged and report what was lost (truncate).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--test-power-journal", type=click.Path(dir_okay=False, path_type=Path), default=None,
              hidden=True, help="Test only: journal what every fsync made durable (tools/powercut.py).")
def main(host: str, port: int, data_dir: Path, fsync: str, fsync_interval_ms: int, segment_bytes: int,
         checkpoint_bytes: int, max_frame: int, max_message: int, recover: str, log_level: str,
         test_power_journal: Path | None) -> None:
    """Run a Lockgate broker."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = BrokerConfig(host=host, port=port, data_dir=data_dir, fsync=FsyncPolicy(fsync),
                              fsync_interval_ms=fsync_interval_ms, segment_bytes=segment_bytes,
                              checkpoint_bytes=checkpoint_bytes,
                              max_frame=max_frame, max_message=max_message,
                              recover=RecoverMode(recover))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    damage: WalCorruption | None = None
    failure: OSError | None = None
    try:
        trio.run(run, config, test_power_journal)
    except* WalCorruption as group:
        damage = _first(group, WalCorruption)
    except* OSError as group:  # e.g. no room for the first segment, port in use
        failure = _first(group, OSError)
    if failure is not None:
        click.echo(f"brokerd: cannot start with data in {config.data_dir}: {failure}", err=True)
        sys.exit(EXIT_OS_ERROR)
    if damage is not None:
        if isinstance(damage, WalVersionError):
            hint = "run a build that reads this version"
        else:
            hint = "start with --recover=truncate to keep what precedes the damage"
        click.echo(f"brokerd: cannot start: {damage.path}: offset {damage.offset}: "
                   f"{damage.reason}; {hint}", err=True)
        sys.exit(EXIT_DAMAGED)


def _first(group: BaseExceptionGroup[Any], kind: type[_E]) -> _E:
    """The first exception of ``kind`` in a (possibly nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, kind)
    return exc


if __name__ == "__main__":
    main()
