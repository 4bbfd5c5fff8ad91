"""The broker's log lines: text or one JSON object per line (the ``log_format`` setting).

Every broker module logs through ``logger = logging.getLogger("lockgate.<room>")``, a
child of ``lockgate``. A line that marks an event passes its fields as ``extra``, always
with ``event``, e.g. ``logger.info("queue %s created", name, extra={"event":
"queue_create", "queue": name})``. The text format writes the message; the JSON format
writes ``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``msg`` and every
``extra`` field, plus ``exc`` with the traceback if there is one.

Levels: ``info`` for the normal life of the broker (start, recovery, checkpoints,
connections, queues), ``warning`` for a fault it works around (a client's protocol
error, a full disk, a lost sync helper), ``error`` for a fault that loses or refuses
work (a failed log, a failed checkpoint, recovery that dropped data). The events and
their fields are listed in docs/operations.md ("Logs").

Rules: no message body, key or dedup id is ever logged, nor is any other client data but
a queue name and the client name from ``hello`` (JSON-escaped, or ``repr`` in text).
Only connection open and close and queue create and delete are logged per client
action: the request path logs nothing else.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

#: The text format (as before JSON lines existed).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes every LogRecord has; any other attribute came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the ``extra`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr unless ``stream``) writing ``log_format``: text or json."""
    out = logging.StreamHandler(sys.stderr if stream is None else stream)
    out.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return out


def configure(level: str, log_format: str) -> None:
    """Send every log line at ``level`` or above to stderr in ``log_format``
    (``brokerd``; does nothing if the root logger already has handlers)."""
    logging.basicConfig(level=level.upper(), handlers=[handler(log_format)])
