"""Broker settings, with the documented defaults: each declared once, here.

Every field of ``BrokerConfig`` is a setting an operator can give in four ways, the
first found wins: a ``brokerd`` flag, an environment variable ``LOCKGATE_<NAME>``, a key
of the TOML file named by ``--config``, or the default below. ``broker/settings.py``
builds the flags, reads the environment and the file, and checks every value from the
field's declaration alone; ``brokerd --print-config`` shows where each value came from.

Adding a setting:

1. Add a field to ``BrokerConfig`` with its default and ``metadata=setting(HELP, ...)``
   (or a plain dict with the same keys). The field's type is one of ``str``, ``int``,
   ``float``, ``bool``, ``Path`` or a ``StrEnum``, or one of these ``| None`` (then the
   empty string, as a flag or in the environment, means None; a file leaves the key out).
2. Metadata keys: ``help`` (required: one sentence for ``--help`` and the docs), ``min``
   and ``max`` (inclusive bounds of a number), ``choices`` (the values a ``str`` may
   take; a ``StrEnum`` brings its own), ``flag`` (the flag, if not ``--name-with-dashes``),
   ``check`` (a function that raises ``ValueError`` with the reason a value is bad).
   The bounds bind operators only: code (tests) may build a ``BrokerConfig`` with
   smaller values. Checks between settings go in ``__post_init__`` (a ``ValueError``
   naming the settings).
3. Regenerate the table in docs/operations.md with
   ``python -m broker.settings docs/operations.md`` (``tests/broker/test_config.py``
   fails until the docs match).

Nothing else: the flag ``--name``, ``LOCKGATE_NAME``, the TOML key ``name``,
``--print-config`` and the error messages all follow from the field.
"""
from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import ABSOLUTE_MAX_FRAME, DEFAULT_MAX_BATCH, DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE, MIN_MAX_FRAME

from protocol.users import UsersFileError
from protocol.users import parse as parse_users

from .metrics_http import parse_addr
from .recovery import RecoverMode
from .tls import check_ca, check_cert, check_key, server_context
from .wal import DEFAULT_SEGMENT_BYTES, FsyncPolicy

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7878
DEFAULT_DATA_DIR = "./lockgate-data"
DEFAULT_MAX_QUEUE_MESSAGES = 10_000_000
DEFAULT_MAX_QUEUES = 10_000
#: Consume requests one connection may have waiting at once.
DEFAULT_MAX_WAITERS = 1024
#: Connections served at once. 10,000 idle connections take about 100 MB (SPEC.md §10);
#: the broker raises its open-file limit to fit them, or lowers this to what fits.
DEFAULT_MAX_CONNECTIONS = 10_000
#: Largest read from a socket at once; bounds a connection's input buffer with max_frame.
RECV_BYTES = 1024 * 1024
#: Requests one connection runs per round (one group commit and one reply write);
#: the rest of what it sent wait in its buffer for the next round.
ROUND_REQUESTS = 128
#: A round takes no more requests once its replies reach this many bytes: with at most
#: two rounds' replies held per connection (``replies``, rule 3), that bounds them in
#: bytes, not only in rounds.
ROUND_REPLY_BYTES = 1024 * 1024
#: A round takes no more requests once it has run this long (seconds): a pipeline of
#: costly requests (list pages, big peeks) gives other connections a turn this often.
ROUND_BUSY_S = 0.005
#: The smallest WAL segment (and checkpoint distance) an operator may set.
MIN_SEGMENT_BYTES = 1024 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
#: The ``auth`` setting: ``off`` (anyone who reaches the port may do anything) or
#: ``required`` (users from ``users_file``, SPEC.md §4.2).
AUTH_MODES = ("off", "required")
#: The metadata keys a setting may have (see the module docs).
SETTING_KEYS = frozenset({"help", "min", "max", "choices", "flag", "check"})


def setting(help: str, *, min: float | None = None, max: float | None = None,
            choices: tuple[str, ...] = (), flag: str = "",
            check: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """A field's ``metadata``: how operators set it (see the module docs)."""
    meta: dict[str, Any] = {"help": help}
    for key, value in (("min", min), ("max", max), ("choices", choices), ("flag", flag), ("check", check)):
        if value is not None and value != () and value != "":
            meta[key] = value
    return meta


def _not_empty(value: str) -> None:
    if not value:
        raise ValueError("must not be empty")


def _users_file(path: Path) -> None:
    """The users file must be readable and valid (``protocol/users.py``)."""
    try:
        parse_users(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    except UsersFileError as exc:
        raise ValueError(str(exc)) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerConfig:
    """Everything the broker can be told at start-up."""

    host: str = field(default=DEFAULT_HOST, metadata=setting(
        "Address to listen on (a name or an IP address; 0.0.0.0 for every IPv4 interface).",
        check=_not_empty))
    port: int = field(default=DEFAULT_PORT, metadata=setting(
        "TCP port; 0 picks a free one (printed on start).", min=0, max=65535))
    data_dir: Path = field(default=Path(DEFAULT_DATA_DIR), metadata=setting(
        "Data directory (the WAL lives in DATA/wal); created if missing.", flag="--data"))
    fsync: FsyncPolicy = field(default=FsyncPolicy.ALWAYS, metadata=setting(
        "When a confirm is sent: after fdatasync (always), or after the write to the OS with "
        "fdatasync every fsync_interval_ms (interval) or never."))
    fsync_interval_ms: int = field(default=100, metadata=setting(
        "fdatasync period for fsync interval.", min=1, max=3_600_000))
    segment_bytes: int = field(default=DEFAULT_SEGMENT_BYTES, metadata=setting(
        "Roll WAL segments at this size.", min=MIN_SEGMENT_BYTES))
    #: A checkpoint is due when the log has grown this much (or by the live data, if
    #: more) since the last snapshot.
    checkpoint_bytes: int = field(default=DEFAULT_SEGMENT_BYTES, metadata=setting(
        "Checkpoint once the WAL grows this much (or by the live data, if more) since the "
        "last snapshot; obsolete segments are then deleted.", min=MIN_SEGMENT_BYTES))
    max_frame: int = field(default=DEFAULT_MAX_FRAME, metadata=setting(
        "Largest frame body accepted; a larger length prefix gets FRAME_TOO_LARGE and a close. "
        "At least max_message + 4096.", min=MIN_MAX_FRAME, max=ABSOLUTE_MAX_FRAME))
    max_message: int = field(default=DEFAULT_MAX_MESSAGE, metadata=setting(
        "Largest message body accepted (MESSAGE_TOO_LARGE beyond).", min=1))
    max_batch: int = field(default=DEFAULT_MAX_BATCH, metadata=setting(
        "Most messages in one publish and ids in one ack, nack, extend or reject "
        "(LIMIT_EXCEEDED beyond).", min=1))
    max_queues: int = field(default=DEFAULT_MAX_QUEUES, metadata=setting(
        "Most queues, dead-letter queues included (queue_create gets LIMIT_EXCEEDED beyond).", min=1))
    max_queue_messages: int = field(default=DEFAULT_MAX_QUEUE_MESSAGES, metadata=setting(
        "A queue's max_messages when its queue_create gives none (QUEUE_FULL beyond).", min=1))
    max_waiters: int = field(default=DEFAULT_MAX_WAITERS, metadata=setting(
        "Consumes one connection may have waiting at once (LIMIT_EXCEEDED beyond; 0: none may wait).",
        min=0))
    node_id: str = field(default="lockgate-1", metadata=setting(
        "This broker's name in the hello reply's shard map.", check=_not_empty))
    #: What start-up does about damage in the log or a snapshot: ``refuse`` stops with
    #: an error naming the file and offset; ``truncate`` keeps everything before the
    #: damage and moves the damaged files aside (``broker/recovery.py``).
    recover: RecoverMode = field(default=RecoverMode.REFUSE, metadata=setting(
        "On damage in the WAL or a snapshot: stop with an error naming the file and offset "
        "(refuse), or keep everything before the damage, move the damaged files aside as "
        "*.damaged and report what was lost (truncate)."))
    metrics_addr: str | None = field(default=None, metadata={
        "help": "Serve Prometheus metrics over HTTP at HOST:PORT (GET /metrics; port 0 picks a free "
                "one; an empty HOST: every interface; [::1]:PORT for IPv6). Off unless set.",
        "check": parse_addr})
    log_level: str = field(default="info", metadata=setting(
        "Least severe log lines written to stderr.", choices=LOG_LEVELS))
    log_format: str = field(default="text", metadata=setting(
        "Log lines as text, or as one JSON object per line (ts, level, logger, msg, event "
        "and its fields).", choices=LOG_FORMATS))
    max_connections: int = field(default=DEFAULT_MAX_CONNECTIONS, metadata=setting(
        "Most client connections served at once; one more gets TOO_MANY_CONNECTIONS and is closed. "
        "Lowered, with a warning, to what the open-file limit allows.", min=1))
    max_connections_per_user: int = field(default=0, metadata=setting(
        "With auth = required: most authenticated connections one user may have open; one more "
        "gets TOO_MANY_CONNECTIONS as the reply to its authentication and is closed (0: no limit "
        "but max_connections).", min=0))
    memory_budget: int = field(default=0, metadata=setting(
        "Bytes all connections together may hold in unread input and unsent replies (0: 1 GiB, or a "
        "quarter of the machine's memory if less). From three quarters of it the heaviest connections "
        "stop being read and a frame past a connection's share gets MEMORY_LIMIT (docs/operations.md).",
        min=0))
    handshake_timeout_ms: int = field(default=10_000, metadata=setting(
        "A connection without a successful hello this long after it was accepted gets "
        "CONNECTION_TIMEOUT and is closed.", min=1))
    idle_timeout_ms: int = field(default=300_000, metadata=setting(
        "A connection that sends no request for this long and holds no consume or subscription "
        "gets CONNECTION_TIMEOUT and is closed (0: never). A ping keeps it open.", min=0))
    frame_timeout_ms: int = field(default=30_000, metadata=setting(
        "A frame must arrive whole within this long of its first bytes; a slower one gets "
        "CONNECTION_TIMEOUT and the connection is closed.", min=1))
    auth: str = field(default="off", metadata=setting(
        "Authentication: off (anyone who reaches the port may do anything; a warning at start "
        "unless listening on loopback only), or required (SCRAM-SHA-256 or a bearer token for a "
        "user of users_file, whose permissions every request is checked against).", choices=AUTH_MODES))
    users_file: Path | None = field(default=None, metadata=setting(
        "The users file (TOML; edit it with brokerctl user): users, their SCRAM secrets and token "
        "hashes, and what each may publish, consume and administer. Used with auth = required, "
        "and read again within a second of a change.", check=_users_file))
    tls_cert: Path | None = field(default=None, metadata=setting(
        "TLS on the client port: the server's certificate chain (PEM, the server's certificate "
        "first). Needs tls_key; every connection must then speak TLS 1.2 or later. Read at start.",
        check=check_cert))
    tls_key: Path | None = field(default=None, metadata=setting(
        "The private key (PEM, unencrypted) of tls_cert.", check=check_key))
    tls_client_ca: Path | None = field(default=None, metadata=setting(
        "With TLS: require a client certificate signed by a CA in this PEM file (clients without "
        "one fail the TLS handshake). Off unless set.", check=check_ca))

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
        if self.auth not in AUTH_MODES:
            raise ValueError("auth must be off or required")
        if self.auth == "required" and self.users_file is None:
            raise ValueError("auth = required needs users_file")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")

    def tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (``broker/tls.py``), or None without TLS; a
        ``ValueError`` naming the settings when the files cannot be used together."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return server_context(self.tls_cert, self.tls_key, self.tls_client_ca)
