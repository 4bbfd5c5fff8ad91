"""The ``brokerctl`` command group: the online commands of this package, and the command
groups other installed packages register under the entry-point group
``lockgate.brokerctl`` (the broker's offline ``wal`` and ``user`` commands).

The SDK never imports the broker: an entry point names a click command by module and
attribute, and it is imported only when that command runs (or ``--help`` lists it with
its one-line help).
"""
from __future__ import annotations

import os
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

from client.cli import messages, queues, server, top, topics, txn
from client.cli.common import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_STATUS_HELP, group_options, remember_globals

#: Set to show the traceback of an unexpected failure instead of one line.
DEBUG_ENV = "LOCKGATE_DEBUG"
#: The entry-point group whose entries (``name = "module:command"``) become subcommands.
PLUGIN_GROUP = "lockgate.brokerctl"

#: The online commands, by family (one module each).
BUILTIN_COMMANDS: tuple[click.Command, ...] = (
    *server.COMMANDS, *queues.COMMANDS, *messages.COMMANDS, *topics.COMMANDS, *txn.COMMANDS, *top.COMMANDS,
)


class BrokerctlGroup(click.Group):
    """A group that also offers the commands registered under :data:`PLUGIN_GROUP`,
    loaded when first asked for; a built-in command of the same name wins."""

    def _plugins(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP) if ep.name not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.commands.get(cmd_name)
        if command is not None:
            return command
        entry = self._plugins().get(cmd_name)
        if entry is None:
            return None
        loaded = entry.load()
        if not isinstance(loaded, click.Command):
            raise click.ClickException(f"entry point {entry.value!r} ({PLUGIN_GROUP}) is not a click command")
        return loaded

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; Ctrl-C and unexpected failures end in one line on stderr."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            click.echo(f"error: internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the "
                       "traceback)", err=True)
            ctx.exit(EXIT_INTERNAL)


EPILOG = f"""{EXIT_STATUS_HELP}

\b
Shell completion (bash; for zsh use zsh_source, for fish fish_source):
  eval "$(_BROKERCTL_COMPLETE=bash_source brokerctl)"    # in ~/.bashrc
"""


@click.group("brokerctl", cls=BrokerctlGroup, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@group_options
@click.pass_context
def main(ctx: click.Context, /, **options: Any) -> None:
    """Inspect and drive a Lockgate broker.

    Queues: create-queue, publish, consume, subscribe, ack, stats, ... Topics and
    consumer groups: `brokerctl topic ...` (create, list, stats, publish, delete) and
    `brokerctl group ...` (create, list, stats, seek, delete); a group's messages are
    read with the queue commands under the name TOPIC/GROUP (`brokerctl consume
    orders/billing`). `brokerctl txn FILE` runs acks and publishes from a JSON file
    as one transaction: all of them or none. `brokerctl info` shows the broker itself,
    `brokerctl top` is a live view of the queues and groups (depths, rates, the oldest
    message's wait), sortable by key.

    The options below apply to every command that talks to a broker, given before the
    command or after it (after wins), else from their LOCKGATE_* variables. For a broker
    that speaks TLS: --tls (its certificate verified against the system's CAs), --tls-ca
    FILE (against your own CA), and --tls-cert FILE [--tls-key FILE] when it requires a
    client certificate. `brokerctl
    wal ...` reads a data directory offline (never modifying it); `brokerctl user ...`
    edits a users file offline.
    """
    remember_globals(ctx, options)


for _command in BUILTIN_COMMANDS:
    main.add_command(_command)
