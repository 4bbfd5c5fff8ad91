"""``brokerd`` / ``python -m broker``: run a Lockgate broker."""
from __future__ import annotations

import errno
import json
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from . import logs
from .config import BrokerConfig
from .server import Broker
from .settings import CONFIG_ENV, ConfigError, click_options, load_environment
from .wal import WalCorruption, WalVersionError
from .wal.fileio import JournalingFileIO

#: Exit status when start-up finds damage it may not repair (``--recover refuse``).
EXIT_DAMAGED = 2
#: Exit status when start-up fails on the file system or network (no room, port in use).
EXIT_OS_ERROR = 3
#: Exit status for invalid configuration, from any source (EX_CONFIG of sysexits.h).
EXIT_CONFIG = 78

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
            logger.info("listening on %s (data in %s, fsync %s)", addr, config.data_dir, config.fsync,
                        extra={"event": "listening", "addr": addr, "data_dir": str(config.data_dir),
                               "fsync": str(config.fsync)})
            print(f"lockgate listening on {addr}", flush=True)
            signalled = 0
            async for signum in signals:
                signalled += 1
                name = signal.Signals(signum).name
                if signalled == 1:
                    logger.info("%s: shutting down gracefully", name, extra={"event": "shutdown", "signal": name})
                    broker.shutdown()
                else:
                    logger.warning("%s again: stopping now", name, extra={"event": "shutdown_forced", "signal": name})
                    nursery.cancel_scope.cancel()


class _Command(click.Command):
    """``brokerd``'s command: a bad command line is a configuration error (``EXIT_CONFIG``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            setattr(exc, "exit_code", EXIT_CONFIG)  # a class attribute in click's stubs
            raise


@click.command(cls=_Command, context_settings={"help_option_names": ["-h", "--help"]},
               epilog="Each setting is also read from LOCKGATE_<SETTING> and from the TOML file given by "
               "--config (or LOCKGATE_CONFIG); a flag wins over the environment, which wins over the file. "
               f"Exit status: 0 after a clean shutdown, {EXIT_DAMAGED} damage in the data it may not repair, "
               f"{EXIT_OS_ERROR} a file system or network failure at start (no room, address in use), "
               f"{EXIT_CONFIG} invalid configuration.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Read settings from this TOML file (keys as in --print-config) [env: {CONFIG_ENV}].")
@click.option("--print-config", is_flag=True,
              help="Print the effective configuration and where each value came from, as TOML; then exit.")
@click.option("--json", "as_json", is_flag=True, help="With --print-config: print it as JSON.")
@click_options()
@click.option("--test-power-journal", type=click.Path(dir_okay=False, path_type=Path), default=None,
              hidden=True, help="Test only: journal what every fsync made durable (tools/powercut.py).")
def main(config_path: Path | None, print_config: bool, as_json: bool, test_power_journal: Path | None,
         **flags: Any) -> None:
    """Run a Lockgate broker."""
    if as_json and not print_config:
        usage = click.UsageError("--json goes with --print-config")
        setattr(usage, "exit_code", EXIT_CONFIG)
        raise usage
    try:
        loaded = load_environment(flags, config_path)
    except ConfigError as exc:
        click.echo(f"brokerd: invalid configuration: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    if print_config:
        click.echo(json.dumps(loaded.as_json(), indent=2) if as_json else loaded.toml(), nl=as_json)
        return
    config: BrokerConfig = loaded.config
    try:
        config.tls_context()  # the certificate and key files, together (each alone was checked)
    except ValueError as exc:
        click.echo(f"brokerd: invalid configuration: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    logs.configure(config.log_level, config.log_format)
    damage: WalCorruption | None = None
    failure: OSError | None = None
    try:
        trio.run(run, config, test_power_journal)
    except* WalCorruption as group:
        damage = _first(group, WalCorruption)
    except* OSError as group:  # e.g. no room for the first segment, port in use
        failure = _first(group, OSError)
    if failure is not None:
        click.echo(f"brokerd: {_start_failure(config, failure)}", err=True)
        sys.exit(EXIT_OS_ERROR)
    if damage is not None:
        if isinstance(damage, WalVersionError):
            hint = "run a build that reads this version"
        else:
            hint = "start with --recover=truncate to keep what precedes the damage"
        click.echo(f"brokerd: cannot start: {damage.path}: offset {damage.offset}: "
                   f"{damage.reason}; {hint}", err=True)
        sys.exit(EXIT_DAMAGED)


def _start_failure(config: BrokerConfig, exc: OSError) -> str:
    """The one-line reason start-up failed: the address for listening failures, the data
    directory for everything else (disk errors)."""
    where = f"{config.host}:{config.port}"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: cannot resolve {config.host!r} ({exc.strerror or exc})"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the address is in use (another process listens there)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: the address is not available on this machine"
    return f"cannot start with data in {config.data_dir}: {exc}"


def _first(group: BaseExceptionGroup[Any], kind: type[_E]) -> _E:
    """The first exception of ``kind`` in a (possibly nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, kind)
    return exc


if __name__ == "__main__":
    main()
