"""brokerctl: inspect and drive a Lockgate broker from the shell (the ``brokerctl``
console script is :func:`main`).

One module per command family: ``server`` (ping), ``queues``, ``messages``, ``topics``
(topics and consumer groups), ``txn``, ``top`` (the live view); ``common`` holds the connection options, exit
statuses and output helpers, ``output`` how messages are shown. The broker's offline
commands (``brokerctl wal``, ``brokerctl user``) live with the broker and join through
the ``lockgate.brokerctl`` entry points (``app.py``).
"""
from client.cli.app import main

__all__ = ["main"]
