"""Start-up recovery: the newest snapshot, then the log after it, into a fresh state.

Rules:
1. The newest ``*.snap`` is loaded whole (every record checked first) or not at all;
   damage in it is ``WalCorruption`` naming the file and offset.
2. The log is replayed from the snapshot's LSN through ``ReplayLoader`` (the same
   appliers as the live path). A torn tail of the last segment is truncated and
   reported; any other damage is ``WalCorruption``.
3. Nothing here changes a file except the torn-tail truncation of rule 2.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import gcpolicy
from .state import BrokerState
from .wal import FileIO, ReplayReport, replay
from .wal.checkpoint import list_snapshots, read_snapshot

log = logging.getLogger("lockgate.recovery")


@dataclass(frozen=True, slots=True)
class Recovered:
    """What start-up recovery produced."""

    state: BrokerState
    #: LSN of the snapshot loaded (0 when there was none).
    snapshot_lsn: int
    replay: ReplayReport
    #: Wall time of the whole recovery: snapshot load, replay and the final fold.
    seconds: float


def recover(wal_dir: Path, io: FileIO | None = None) -> Recovered:
    """Rebuild the state from ``wal_dir`` (see the rules above)."""
    fio = io if io is not None else FileIO()
    directory = str(wal_dir)
    snapshot_lsn = 0
    state = BrokerState()
    started = time.perf_counter()
    with gcpolicy.bulk_load():
        snapshots = list_snapshots(fio, directory)
        if snapshots:
            snapshot_lsn, records = read_snapshot(fio, os.path.join(directory, snapshots[-1][1]))
            state = BrokerState.from_records(records)
        loader = state.replay_loader()
        report = replay(wal_dir, loader.apply_record, io=io, from_lsn=snapshot_lsn)
        loader.flush()
    seconds = time.perf_counter() - started
    rate = report.records / seconds if seconds > 0 else 0.0
    log.info("recovered: %d records, %d bytes, %d segments in %.3f s (%.0f records/s) "
             "after a snapshot at LSN %d; %d queues, %d messages",
             report.records, report.bytes, report.segments, seconds, rate, snapshot_lsn,
             len(state.queues), sum(len(q) for q in state.queues.values()))
    return Recovered(state, snapshot_lsn, report, seconds)
