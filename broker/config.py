"""Broker settings, with the documented defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from protocol import DEFAULT_MAX_BATCH, DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE

from .metrics_http import parse_addr
from .recovery import RecoverMode
from .wal import DEFAULT_SEGMENT_BYTES, FsyncPolicy

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7878
DEFAULT_DATA_DIR = "./lockgate-data"
DEFAULT_MAX_QUEUE_MESSAGES = 10_000_000
DEFAULT_MAX_QUEUES = 10_000
#: Consume requests one connection may have waiting at once.
DEFAULT_MAX_WAITERS = 1024
#: Largest read from a socket at once; bounds a connection's input buffer with max_frame.
RECV_BYTES = 1024 * 1024
#: Requests one connection runs per round (one group commit and one reply write);
#: the rest of what it sent wait in its buffer for the next round.
ROUND_REQUESTS = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerConfig:
    """Everything the broker can be told at start-up."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    fsync_interval_ms: int = 100
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    #: A checkpoint is due when the log has grown this much (or by the live data, if
    #: more) since the last snapshot.
    checkpoint_bytes: int = DEFAULT_SEGMENT_BYTES
    max_frame: int = DEFAULT_MAX_FRAME
    max_message: int = DEFAULT_MAX_MESSAGE
    max_batch: int = DEFAULT_MAX_BATCH
    max_queues: int = DEFAULT_MAX_QUEUES
    max_queue_messages: int = DEFAULT_MAX_QUEUE_MESSAGES
    max_waiters: int = DEFAULT_MAX_WAITERS
    node_id: str = "lockgate-1"
    #: What start-up does about damage in the log or a snapshot: ``refuse`` stops with
    #: an error naming the file and offset; ``truncate`` keeps everything before the
    #: damage and moves the damaged files aside (``broker/recovery.py``).
    recover: RecoverMode = RecoverMode.REFUSE
    metrics_addr: str | None = field(default=None, metadata={
        "help": "Serve Prometheus metrics over HTTP at HOST:PORT (GET /metrics; port 0 picks a free "
                "one; an empty HOST: every interface; [::1]:PORT for IPv6). Off unless set.",
        "check": parse_addr})

    def __post_init__(self) -> None:
        # A plain string names a member (``BrokerConfig(fsync="never")``).
        if self.fsync not in tuple(FsyncPolicy):
            raise ValueError("fsync must be always, interval or never")
        if self.recover not in tuple(RecoverMode):
            raise ValueError("recover must be refuse or truncate")
        object.__setattr__(self, "fsync", FsyncPolicy(self.fsync))
        object.__setattr__(self, "recover", RecoverMode(self.recover))
        if self.max_message + 4096 > self.max_frame:
            raise ValueError("max_frame must exceed max_message by at least 4096 bytes")
        if self.fsync_interval_ms < 1:
            raise ValueError("fsync_interval_ms must be at least 1")
