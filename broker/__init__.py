"""Lockgate broker: the trio server, command registry, queues and write-ahead log.

Import the server from ``broker.server`` and settings from ``broker.config``; this
package root stays light so offline tools can import ``broker.wal`` alone.
"""
