"""Runnable programs built on the Lockgate client SDK (``client``); see examples/README.md."""
