"""The ``brokerctl`` command group: the online commands of this package, and the command
groups other installed packages register under the entry-point group
``lockgate.brokerctl`` (the broker's offline ``wal`` and ``user`` commands).

The SDK never imports the broker: an entry point names a click command by module and
attribute, and it is imported only when that command runs (or ``--help`` lists it with
its one-line help).
"""
from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import click

from client.cli import messages, queues, server, topics, txn

#: The entry-point group whose entries (``name = "module:command"``) become subcommands.
PLUGIN_GROUP = "lockgate.brokerctl"

#: The online commands, by family (one module each).
BUILTIN_COMMANDS: tuple[click.Command, ...] = (
    *server.COMMANDS, *queues.COMMANDS, *messages.COMMANDS, *topics.COMMANDS, *txn.COMMANDS,
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


@click.group("brokerctl", cls=BrokerctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Inspect and drive a Lockgate broker.

    Queues: create-queue, publish, consume, subscribe, ack, stats, ... Topics and
    consumer groups: `brokerctl topic ...` (create, list, stats, publish, delete) and
    `brokerctl group ...` (create, list, stats, seek, delete); a group's messages are
    read with the queue commands under the name TOPIC/GROUP (`brokerctl consume
    orders/billing`). `brokerctl txn FILE` runs acks and publishes from a JSON file
    as one transaction: all of them or none.

    Commands that talk to a broker accept --addr HOST:PORT (default: $LOCKGATE_ADDR,
    else 127.0.0.1:7878) and authenticate as $LOCKGATE_USER with $LOCKGATE_PASSWORD, or
    with $LOCKGATE_TOKEN, when set; all accept --json. `brokerctl wal ...` reads a data
    directory offline (never modifying it); `brokerctl user ...` edits a users file
    offline. Exit status: 0 ok, 1 the broker refused the request (or, for wal, damage was
    found), 2 the broker could not be reached (or bad usage).
    """


for _command in BUILTIN_COMMANDS:
    main.add_command(_command)
