"""The write-ahead log: CRC32C records in segment files, group commit, replay.

The on-disk format and the durability policies are specified in docs/wal.md.
"""
from .commit import FsyncPolicy, GroupCommitter
from .fileio import FileIO
from .log import DEFAULT_SEGMENT_BYTES, SegmentedLog, LogFailedError
from .record import MAX_PAYLOAD, RECORD_HEADER_SIZE, decode_record, encode_record
from .replay import ReplayReport, replay
from .segment import WAL_VERSION, WalCorruption, WalVersionError, segment_name

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "MAX_PAYLOAD",
    "RECORD_HEADER_SIZE",
    "WAL_VERSION",
    "FileIO",
    "FsyncPolicy",
    "GroupCommitter",
    "ReplayReport",
    "SegmentedLog",
    "LogFailedError",
    "WalCorruption",
    "WalVersionError",
    "decode_record",
    "encode_record",
    "replay",
    "segment_name",
]
