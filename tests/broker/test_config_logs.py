"""The log formats of ``log_format``: text as before, JSON one object per line."""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import logs


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, io.StringIO]]:
    """A logger writing to one JSON stream and one text stream."""
    logger = logging.getLogger("lockgate.test-logs")
    json_out, text_out = io.StringIO(), io.StringIO()
    handlers = [logs.handler("json", json_out), logs.handler("text", text_out)]
    for h in handlers:
        logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, json_out, text_out
    finally:
        for h in handlers:
            logger.removeHandler(h)


def test_a_json_line_has_ts_level_logger_msg_and_the_event_fields(
        captured: tuple[logging.Logger, io.StringIO, io.StringIO]) -> None:
    logger, json_out, text_out = captured
    logger.info("queue %s created", "jobs", extra={"event": "queue_create", "queue": "jobs", "shards": 2,
                                                  "path": Path("/x"), "dead_letter": None})
    (line,) = json_out.getvalue().splitlines()
    obj = json.loads(line)
    assert obj.pop("ts").endswith("Z")
    assert obj == {"level": "info", "logger": "lockgate.test-logs", "msg": "queue jobs created",
                   "event": "queue_create", "queue": "jobs", "shards": 2, "path": "/x", "dead_letter": None}
    (text,) = text_out.getvalue().splitlines()
    assert text.endswith(" INFO lockgate.test-logs: queue jobs created")


def test_a_traceback_stays_inside_its_json_line(captured: tuple[logging.Logger, io.StringIO, io.StringIO]) -> None:
    logger, json_out, _ = captured
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception("connection %s failed", "127.0.0.1:1", extra={"event": "connection_failed"})
    (line,) = json_out.getvalue().splitlines()
    obj = json.loads(line)
    assert obj["level"] == "error" and obj["event"] == "connection_failed"
    assert "RuntimeError: boom\nsecond line" in obj["exc"]


def test_a_client_name_cannot_forge_lines(captured: tuple[logging.Logger, io.StringIO, io.StringIO]) -> None:
    logger, json_out, _ = captured
    name = 'evil\n{"level": "error"}'
    logger.info("connection closed (%r)", name, extra={"event": "connection_close", "client": name})
    (line,) = json_out.getvalue().splitlines()
    assert json.loads(line)["client"] == name
