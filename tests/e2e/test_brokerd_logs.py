"""A real ``brokerd --log-format json``: one JSON object per line, with one line for each
connection open and close, queue create and delete, the recovery summary and the
checkpoint, and never a message body, key or dedup id."""
from __future__ import annotations

import json
import socket
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from client import SyncClient

from ..broker_process import BrokerProcess


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be a JSON object with the four keys."""
    out = []
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict) and {"ts", "level", "logger", "msg"} <= obj.keys(), line
        assert obj["logger"].startswith("lockgate"), line
        datetime.fromisoformat(obj["ts"])
        out.append(obj)
    return out


def events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [ln for ln in lines if ln.get("event") == name]


def wait_for(path: Path, count: int, event: str, timeout: float = 30.0) -> None:
    """Wait (bounded) until the broker has logged ``count`` lines of ``event``."""
    deadline = time.monotonic() + timeout
    while len(events(read_lines(path), event)) < count:
        assert time.monotonic() < deadline, f"no {count} {event} lines in {path.read_text()}"
        time.sleep(0.05)  # a real process is being waited for


def test_json_lines_for_connections_queues_recovery_and_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    proc = BrokerProcess(tmp_path / "data", args=("--log-format", "json"), log_level="info", log_path=log)
    secret = uuid.uuid4().hex
    body, key, dedup = f"BODY-{secret}".encode(), f"KEY-{secret}".encode(), f"DEDUP-{secret}".encode()
    with proc:
        with SyncClient(proc.addr, client_name="log-test/1.0", timeout=30) as c:
            c.create_queue("jobs", shards=2)
            c.create_queue("jobs", shards=2)  # exists already: nothing changes, nothing logged
            c.publish("jobs", body, key=key, dedup_id=dedup)
            (got,) = c.consume("jobs", max=1)
            assert got.body == body
            c.ack("jobs", [got.id])
            c.publish("jobs", body)
            c.delete_queue("jobs")
        # A frame longer than max_frame ends a connection with a fatal protocol error.
        with socket.create_connection((proc.host, proc.port), timeout=30) as raw:
            raw.sendall(b"\xff\xff\xff\xff")
            while raw.recv(4096):
                pass
        wait_for(log, 2, "connection_close")
        assert proc.stop() == 0

    text = log.read_text()
    assert secret not in text, "a body, key or dedup id was logged"
    lines = read_lines(log)

    (recovered,) = events(lines, "recovered")
    assert recovered["level"] == "info" and recovered["records"] == 0 and recovered["queues"] == 0
    (listening,) = events(lines, "listening")
    assert listening["addr"] == proc.addr

    opened = events(lines, "connection_open")
    closed = events(lines, "connection_close")
    assert len(opened) == 2 and len(closed) == 2
    assert all(ln["level"] == "info" and ln["peer"].startswith("127.0.0.1:") for ln in opened)
    sdk, bad = closed
    assert (sdk["level"], sdk["client"], sdk["reason"], sdk["peer"]) == (
        "info", "log-test/1.0", "closed by the client", opened[0]["peer"])
    assert (bad["level"], bad["client"], bad["reason"]) == ("warning", "", "protocol error FRAME_TOO_LARGE")

    (created,) = events(lines, "queue_create")
    assert {k: created[k] for k in ("level", "queue", "kind", "shards", "client", "peer")} == {
        "level": "info", "queue": "jobs", "kind": "fifo", "shards": 2, "client": "log-test/1.0",
        "peer": sdk["peer"]}
    (deleted,) = events(lines, "queue_delete")
    assert (deleted["queue"], deleted["messages"], deleted["client"]) == ("jobs", 1, "log-test/1.0")

    (shutdown,) = events(lines, "shutdown")
    assert shutdown["signal"] == "SIGTERM"
    (checkpoint,) = events(lines, "checkpoint")
    assert checkpoint["level"] == "info" and checkpoint["lsn"] > 0 and checkpoint["removed"] >= 0

    order = [ln["event"] for ln in lines if ln.get("event") in (
        "recovered", "listening", "queue_create", "queue_delete", "shutdown", "checkpoint")]
    assert order == ["recovered", "listening", "queue_create", "queue_delete", "shutdown", "checkpoint"]
    assert not [ln for ln in lines if ln["level"] in ("error", "critical")]

    # The next start replays nothing and says so in its summary.
    with BrokerProcess(tmp_path / "data", args=("--log-format", "json"), log_level="info",
                       log_path=tmp_path / "again.log") as again:
        assert again.stop() == 0
    (recovered,) = events(read_lines(tmp_path / "again.log"), "recovered")
    assert recovered["snapshot_lsn"] == checkpoint["lsn"] and recovered["queues"] == 0


def test_text_lines_by_default(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    with BrokerProcess(tmp_path / "data", log_level="info", log_path=log) as proc:
        with SyncClient(proc.addr, client_name="text-test", timeout=30):
            pass
        wait = time.monotonic() + 30
        while "closed" not in log.read_text():
            assert time.monotonic() < wait, log.read_text()
            time.sleep(0.05)  # a real process is being waited for
        assert proc.stop() == 0
    lines = log.read_text().splitlines()
    assert not any(ln.startswith("{") for ln in lines)
    assert any(" INFO lockgate.server: connection from 127.0.0.1:" in ln and
               "closed ('text-test'): closed by the client" in ln for ln in lines)
