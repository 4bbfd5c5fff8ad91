"""Run a real broker as a child process (for sync-client, CLI and crash tests).

The one implementation lives in :mod:`tools.procs`; this module re-exports it so tests
and tools start brokers the same way.
"""
from __future__ import annotations

from tools.procs import ROOT, BrokerProcess

__all__ = ["ROOT", "BrokerProcess"]
