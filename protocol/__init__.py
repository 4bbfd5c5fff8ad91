"""Lockgate wire protocol: sans-IO framing and codec. See SPEC.md."""
from .codec import Encoder, decode_frame, encode_frame, frame_to_obj, parse_request, parse_server_frame, unpack_body
from .connection import NEED_DATA, Connection
from .errors import FATAL_CODES, ErrorCode, ProtocolError
from .frames import MAX_REQUEST_ID, Error, Frame, FrameKind, Push, Reply, Request
from .framing import ABSOLUTE_MAX_FRAME, DEFAULT_MAX_FRAME, HEADER_SIZE, MIN_MAX_FRAME, FrameDecoder, frame_bytes
from .ops import (
    DEDUP_MAX_IDS,
    DEFAULT_CREDIT,
    DEFAULT_DEDUP_WINDOW_MS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_MESSAGE,
    DEFAULT_PRIORITY,
    DEFAULT_RETRY_BACKOFF,
    DEFAULT_RETRY_MAX_DELAY_MS,
    DEFAULT_VISIBILITY_MS,
    MAX_DEDUP_ID,
    MAX_DEDUP_WINDOW_MS,
    MAX_DELAY_MS,
    MAX_ERROR_TEXT,
    MAX_KEY,
    MAX_PRIORITY,
    MAX_RETRY_DELAY_MS,
    MAX_RETRY_JITTER,
    MAX_SHARDS,
    MAX_SUBSCRIPTIONS,
    MAX_TTL_MS,
    MAX_VISIBILITY_MS,
    MAX_WAIT_MS,
    MIN_PRIORITY,
    MIN_SHARDS,
    PROTOCOL_VERSION,
    PROTOCOL_VERSIONS,
    QUEUE_NAME_MAX,
    OnExpire,
    Op,
    PushName,
    QueueKind,
    RetryBackoff,
    retry_delay,
    shard_for_key,
    valid_queue_name,
)

__all__ = [
    "ABSOLUTE_MAX_FRAME", "DEDUP_MAX_IDS", "DEFAULT_CREDIT", "DEFAULT_DEDUP_WINDOW_MS", "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_BATCH", "DEFAULT_MAX_FRAME", "DEFAULT_MAX_MESSAGE",
    "DEFAULT_PRIORITY", "DEFAULT_RETRY_BACKOFF", "DEFAULT_RETRY_MAX_DELAY_MS", "DEFAULT_VISIBILITY_MS",
    "FATAL_CODES", "HEADER_SIZE", "MAX_DEDUP_ID", "MAX_DEDUP_WINDOW_MS", "MAX_DELAY_MS", "MAX_ERROR_TEXT",
    "MAX_KEY",
    "MAX_PRIORITY", "MAX_REQUEST_ID", "MAX_RETRY_DELAY_MS", "MAX_RETRY_JITTER", "MAX_SHARDS",
    "MAX_SUBSCRIPTIONS", "MAX_TTL_MS", "MAX_VISIBILITY_MS", "MAX_WAIT_MS",
    "MIN_MAX_FRAME", "MIN_PRIORITY", "MIN_SHARDS", "NEED_DATA", "PROTOCOL_VERSION",
    "PROTOCOL_VERSIONS", "QUEUE_NAME_MAX", "Connection", "Encoder", "Error", "ErrorCode", "Frame",
    "FrameDecoder", "FrameKind", "OnExpire", "Op", "ProtocolError", "Push", "PushName", "QueueKind", "Reply", "RetryBackoff",
    "Request", "decode_frame", "encode_frame", "frame_bytes", "frame_to_obj", "parse_request",
    "parse_server_frame", "retry_delay", "shard_for_key", "unpack_body", "valid_queue_name",
]
