"""Command-line tools built on the client SDK (``brokerctl``)."""
