"""brokerctl through click's CliRunner against a real broker (``sync_broker_addr``)."""
from __future__ import annotations

import re

import base64
import itertools
import json
import socket
import threading
import uuid
from pathlib import Path
from functools import partial
from typing import Any

import pytest
from click.testing import CliRunner, Result

from client import SyncClient
from client.cli import common, main, messages, queues, server
from client.ops import QUEUE_SETTINGS

_names = itertools.count()
COMMANDS = [
    "ping", "info", "queues", "create-queue", "delete-queue", "stats", "publish", "consume", "ack", "nack",
    "purge", "peek", "status", "extend", "reject", "dlq", "subscribe",
]
#: Every command that talks to a broker, as its words on the command line.
BROKER_COMMANDS = [[c] for c in COMMANDS if c != "dlq"] + [["dlq", "redrive"]]


#: The publish time that ``peek`` and ``status`` text lines carry (checked where it matters).
PUBLISHED = re.compile(r" published=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def without_published(lines: list[str]) -> list[str]:
    return [PUBLISHED.sub("", line) for line in lines]


def qname() -> str:
    return f"ctl-{uuid.uuid4().hex[:8]}-{next(_names)}"


class Ctl:
    """Runs brokerctl commands against one broker."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.addr = f"{addr[0]}:{addr[1]}"
        self.runner = CliRunner()

    def run(self, *args: str, input: bytes | str | None = None, expect: int = 0) -> Result:
        result = self.runner.invoke(main, [*args, "--addr", self.addr], input=input)
        assert result.exit_code == expect, (result.exit_code, result.output, result.exception)
        return result

    def json(self, *args: str, input: bytes | str | None = None) -> Any:
        return json.loads(self.run(*args, "--json", input=input).stdout)


@pytest.fixture
def ctl(sync_broker_addr: tuple[str, int]) -> Ctl:
    return Ctl(sync_broker_addr)


@pytest.fixture
def queue(ctl: Ctl) -> str:
    name = qname()
    ctl.run("create-queue", name)
    return name


# --- no broker needed ----------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_dlq_group_lists_redrive() -> None:
    result = CliRunner().invoke(main, ["dlq", "--help"])
    assert result.exit_code == 0 and "redrive" in result.stdout


@pytest.mark.parametrize("command", BROKER_COMMANDS, ids=" ".join)
def test_every_command_takes_addr_and_json(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "--addr" in result.stdout and "--json" in result.stdout and "LOCKGATE_ADDR" in result.stdout


def test_create_queue_offers_every_queue_setting() -> None:
    text = CliRunner().invoke(main, ["create-queue", "--help"]).stdout
    for setting in QUEUE_SETTINGS:
        assert f"--{setting.name.replace('_', '-')}" in text


def test_unreachable_broker_exits_3() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(main, ["ping", "--addr", f"127.0.0.1:{port}"])
    assert result.exit_code == 3
    assert result.stderr.startswith(f"error: cannot connect to 127.0.0.1:{port}")
    assert result.stdout == ""


def test_bad_addr_is_a_usage_error() -> None:
    for args in (["ping", "--addr", "no-port"], ["--addr", "no-port", "ping"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2
        assert "host:port" in result.stderr


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_broker_that_does_not_answer_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        addr = "127.0.0.1:%d" % silent.getsockname()[1]
        result = CliRunner().invoke(main, ["--timeout", "0.2", "ping", "--addr", addr])
        assert result.exit_code == 6, result.output
        assert result.stderr == f"error: timed out connecting to {addr} (--timeout 0.2 s)\n"
        result = CliRunner(env={"LOCKGATE_TIMEOUT": "0.2"}).invoke(main, ["ping", "--addr", addr])
        assert result.exit_code == 6, result.output


def test_credentials_in_conflict_are_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["--user", "alice", "--token", "t", "ping", "--addr", "127.0.0.1:1"])
    assert result.exit_code == 2 and "not both" in result.stderr


def test_an_unexpected_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("something broke")

    monkeypatch.setattr(server, "connect", broken)
    result = CliRunner().invoke(main, ["info"])
    assert (result.exit_code, result.stderr) == (
        70, "error: internal error: RuntimeError: something broke (set LOCKGATE_DEBUG=1 for the traceback)\n")
    assert CliRunner(env={"LOCKGATE_DEBUG": "1"}).invoke(main, ["info"]).exception is not None

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(server, "connect", interrupted)
    result = CliRunner().invoke(main, ["info"])
    assert (result.exit_code, result.stderr) == (130, "error: interrupted\n")


# --- against a broker ------------------------------------------------------------------------


def test_ping(ctl: Ctl) -> None:
    text = ctl.run("ping").stdout
    assert text.startswith(f"pong from {ctl.addr}: time=") and "lockgate/" in text
    doc = ctl.json("ping")
    assert doc["rtt_ms"] >= 0 and doc["server_time_ms"] > 0
    assert doc["server"]["version"] == 1 and doc["server"]["max_batch"] >= 1


def test_info(ctl: Ctl, tmp_path: Path) -> None:
    before = ctl.json("info")
    assert before["addr"] == ctl.addr and before["server"].startswith("lockgate/")
    assert (before["queues"], before["topics"], before["groups"]) == (0, 0, 0) and before["connections"] >= 1
    assert before["fsync"] == "always" and before["auth"] == "off"
    assert before["data_dir"] == str(tmp_path / "data")
    assert before["uptime_ms"] == before["now_ms"] - before["started_ms"] >= 0
    ctl.run("create-queue", qname())
    ctl.run("topic", "create", "t")
    ctl.run("group", "create", "t", "g")
    with SyncClient(ctl.addr):  # a second connection while info runs
        after = ctl.json("info")
    # (a connection closed a moment ago may not be gone from the broker's count yet)
    assert (after["queues"], after["topics"], after["groups"]) == (1, 1, 1) and after["connections"] >= 2
    assert after["wal_bytes"] > before["wal_bytes"] and after["wal_segments"] >= 1
    text = ctl.run("info").stdout
    assert "lockgate/" in text and f" at {ctl.addr}\n" in text
    assert re.search(r"^fsync +always$", text, re.M) and re.search(r"^connections +\d+$", text, re.M)
    assert re.search(r"^topics +1 \(1 consumer group\)$", text, re.M)
    assert re.search(r"^data_dir +" + re.escape(str(tmp_path / "data")) + "$", text, re.M)
    # The broker's default budget: 1 GiB, or a quarter of this machine's memory.
    assert 0 < after["memory_budget"] <= 1 << 30 and 0 <= after["memory_used"] <= after["memory_budget"]
    assert re.search(r"^memory +[\d.]+ [KMG]?i?B of a [\d.]+ [KMG]iB budget held by connections$", text, re.M)


def test_global_options_before_or_after_the_command(ctl: Ctl) -> None:
    runner = CliRunner()
    for args in (["--addr", ctl.addr, "--json", "ping"], ["--addr", ctl.addr, "ping", "--json"],
                 ["ping", "--json", "--addr", ctl.addr], ["--json", "ping", "--addr", ctl.addr]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
        assert json.loads(result.stdout)["server"]["version"] == 1
    # After the command wins over before it, which wins over the variable.
    nowhere = f"127.0.0.1:{unused_port()}"
    env = {"LOCKGATE_ADDR": nowhere}
    assert CliRunner(env=env).invoke(main, ["ping"]).exit_code == 3
    assert CliRunner(env=env).invoke(main, ["--addr", ctl.addr, "ping"]).exit_code == 0
    assert CliRunner(env=env).invoke(main, ["--addr", nowhere, "ping", "--addr", ctl.addr]).exit_code == 0
    assert CliRunner(env=env).invoke(main, ["--addr", ctl.addr, "ping", "--addr", nowhere]).exit_code == 3
    # LOCKGATE_JSON asks every command for JSON.
    result = CliRunner(env={"LOCKGATE_JSON": "1", "LOCKGATE_ADDR": ctl.addr}).invoke(main, ["queues"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []


def test_addr_defaults_to_the_environment(ctl: Ctl) -> None:
    result = ctl.runner.invoke(main, ["ping", "--json"], env={"LOCKGATE_ADDR": ctl.addr})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["server"]["version"] == 1


def test_create_queue_and_stats(ctl: Ctl) -> None:
    name = qname()
    args = ["create-queue", name, "--kind", "priority", "--shards", "2", "--visibility-ms", "5000",
            "--max-attempts", "3", "--max-messages", "99"]
    assert ctl.run(*args).stdout == f"created queue {name}\n"
    assert ctl.json(*args) == {"queue": name, "created": False}
    assert "already exists" in ctl.run(*args).stdout
    stats = ctl.json("stats", name)
    assert {k: stats[k] for k in ("name", "kind", "shards", "visibility_ms", "max_attempts", "max_messages")} == {
        "name": name, "kind": "priority", "shards": 2, "visibility_ms": 5000, "max_attempts": 3, "max_messages": 99,
    }
    text = ctl.run("stats", name).stdout
    assert any(line.split() == ["kind", "priority"] for line in text.splitlines())


def test_broker_errors_exit_1_with_code_name(ctl: Ctl, queue: str) -> None:
    result = ctl.run("create-queue", queue, "--kind", "lifo", expect=1)
    assert result.stderr.startswith("error: QUEUE_EXISTS: ")
    missing = qname()
    result = ctl.run("stats", missing, "--json", expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ") and result.stdout == ""
    result = ctl.run("create-queue", "bad name", expect=1)
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ")


def test_queues_table_and_json(ctl: Ctl, queue: str) -> None:
    ctl.run("publish", queue, "x", "--count", "3")
    dlq, tuned = qname(), qname()
    ctl.run("create-queue", dlq)
    ctl.run("create-queue", tuned, "--max-attempts", "5", "--dead-letter", dlq, "--visibility-ms", "5000",
            "--retry-delay-ms", "250", "--retry-backoff", "fixed")
    lines = ctl.run("queues").stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SHARDS", "READY", "LEASED", "DELAYED", "PUBLISHED", "ACKED",
                                "MAX_ATTEMPTS", "DEAD_LETTER", "SETTINGS"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[queue] == [queue, "fifo", "1", "3", "0", "0", "3", "0", "20", "-",
                           "visibility_ms=30000", "max_messages=10000000"]
    assert rows[tuned][:10] == [tuned, "fifo", "1", "0", "0", "0", "0", "0", "5", dlq]
    assert rows[tuned][10:] == ["visibility_ms=5000", "max_messages=10000000", "retry_delay_ms=250", "retry_backoff=fixed"]
    listed = {q["name"]: q for q in ctl.json("queues")}
    assert listed[queue]["ready"] == 3
    assert (listed[tuned]["max_attempts"], listed[tuned]["dead_letter"]) == (5, dlq)


def test_publish_and_consume_text(ctl: Ctl, queue: str) -> None:
    assert ctl.run("publish", queue, "hello world", "--key", "k1").stdout == f"published 1 message to {queue}: id 1\n"
    lines = ctl.run("consume", queue, "--max", "5").stdout.splitlines()
    assert lines == ["1\tattempt=1 priority=0 key=k1\thello world"]


def test_publish_count_and_consume_with_ack(ctl: Ctl, queue: str) -> None:
    doc = ctl.json("publish", queue, "same", "--count", "4", "--priority", "7")
    assert doc["count"] == 4 and sum(b["count"] for b in doc["batches"]) == 4
    out = ctl.json("consume", queue, "--max", "10", "--ack")
    assert out["acked"] == 4
    assert [(m["body"], m["body_encoding"], m["priority"], m["attempt"]) for m in out["messages"]] == [
        ("same", "utf-8", 7, 1)
    ] * 4
    stats = ctl.json("stats", queue)
    assert (stats["messages"], stats["acked"]) == (0, 4)


def test_binary_body_from_stdin(ctl: Ctl, queue: str) -> None:
    body = b"\xff\x00\xfe"
    ctl.run("publish", queue, "-", input=body)
    (message,) = ctl.json("consume", queue)["messages"]
    assert message["body_encoding"] == "base64" and base64.b64decode(message["body"]) == body
    assert message["key"] is None
    ctl.run("nack", queue, str(message["id"]))
    assert ctl.run("consume", queue).stdout.rstrip().endswith("hex:ff00fe")


def test_consume_nothing(ctl: Ctl, queue: str) -> None:
    result = ctl.run("consume", queue, "--wait-ms", "10")
    assert result.stdout == "" and result.stderr == "no messages\n"
    assert ctl.json("consume", queue) == {"queue": queue, "messages": []}


def test_ack_and_nack(ctl: Ctl, queue: str) -> None:
    ctl.run("publish", queue, "m", "--count", "3")
    ids = [m["id"] for m in ctl.json("consume", queue, "--max", "3")["messages"]]
    assert ctl.json("nack", queue, str(ids[0]), "999") == {"queue": queue, "released": 1, "missing": [999]}
    result = ctl.run("ack", queue, *map(str, ids), "998")
    assert result.stdout == "acked 3 of 4\n" and "998" in result.stderr
    assert ctl.json("ack", queue, str(ids[0])) == {"queue": queue, "acked": 0, "missing": [ids[0]]}
    ctl.run("publish", queue, "again")
    (again,) = ctl.json("consume", queue)["messages"]
    assert ctl.run("nack", queue, str(again["id"]), "--delay-ms", "3600000").stdout == "released 1 of 1\n"
    assert ctl.json("stats", queue)["delayed"] == 1


def test_delete_queue_asks_first(ctl: Ctl, queue: str) -> None:
    ctl.run("publish", queue, "m", "--count", "2")
    ctl.run("delete-queue", queue, input="n\n", expect=1)
    assert ctl.json("stats", queue)["messages"] == 2
    assert ctl.run("delete-queue", queue, input="y\n").stdout.endswith(f"deleted queue {queue} (2 messages dropped)\n")
    ctl.run("stats", queue, expect=5)
    other = qname()
    ctl.run("create-queue", other)
    assert ctl.json("delete-queue", other, "--yes") == {"queue": other, "messages": 0}


def test_purge_asks_first_and_reports_counts(ctl: Ctl, queue: str) -> None:
    ctl.run("publish", queue, "m", "--count", "3")
    ctl.run("publish", queue, "later", "--delay-ms", "3600000")
    ctl.json("consume", queue)                                 # id 1 leased
    ctl.run("purge", queue, input="n\n", expect=1)
    assert ctl.json("stats", queue)["messages"] == 4
    result = ctl.run("purge", queue, input="y\n")
    assert result.stdout == f"purged 3 messages from {queue} (ready 2, delayed 1, leased 0)\n"
    assert ctl.json("purge", queue, "--leased", "--yes") == {"queue": queue, "ready": 0, "delayed": 0, "leased": 1, "waiting": 0}
    assert ctl.json("stats", queue)["messages"] == 0
    result = ctl.run("purge", qname(), "--yes", expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ")


def test_peek_text_and_json(ctl: Ctl, queue: str) -> None:
    ctl.run("publish", queue, "hello", "--key", "k1")
    ctl.run("publish", queue, "-", input=b"\xff\x00")
    ctl.run("publish", queue, "later", "--delay-ms", "3600000", "--priority", "4")
    lines = ctl.run("peek", queue).stdout.splitlines()
    assert all(PUBLISHED.search(line) for line in lines)
    lines = without_published(lines)
    assert lines[:2] == ["1\tready attempts=0 priority=0 key=k1\thello", "2\tready attempts=0 priority=0\thex:ff00"]
    assert lines[2].startswith("3\tdelayed attempts=0 priority=4 until=") and lines[2].endswith("Z\tlater")
    doc = ctl.json("peek", queue, "--max", "2")
    assert doc["queue"] == queue and [m["id"] for m in doc["messages"]] == [1, 2]
    published = doc["messages"][0]["published_at"]
    assert published > 0
    assert doc["messages"][0] == {
        "id": 1, "state": "ready", "attempts": 0, "priority": 0, "until_ms": 0,
        "key": "k1", "key_encoding": "utf-8", "body": "hello", "body_encoding": "utf-8", "dead_letter": None,
        "published_at": published,
    }
    assert doc["messages"][1]["body_encoding"] == "base64"
    delayed = ctl.json("peek", queue, "--state", "delayed")["messages"]
    assert [(m["id"], m["state"]) for m in delayed] == [(3, "delayed")] and delayed[0]["until_ms"] > 0
    result = ctl.run("peek", queue, "--state", "leased")
    assert result.stdout == "" and result.stderr == "no messages\n"
    assert ctl.json("stats", queue)["leased"] == 0              # peeking leased nothing
    result = ctl.run("peek", queue, "--dead-letter", expect=1)  # no dead-letter queue
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ")


def test_peek_dead_letter_names_the_queue(ctl: Ctl) -> None:
    dlq, name = qname(), qname()
    ctl.run("create-queue", dlq)
    ctl.run("create-queue", name, "--max-attempts", "1", "--dead-letter", dlq)
    ctl.run("publish", name, "poison")
    (m,) = ctl.json("consume", name)["messages"]
    ctl.run("nack", name, str(m["id"]))
    result = ctl.run("peek", name, "--dead-letter")
    assert result.stderr == f"dead-letter queue {dlq}\n"
    line = without_published([result.stdout])[0]
    prefix = f"1\tready attempts=0 priority=0 source={name}#1 source_attempts=1 reason=max_attempts dead_lettered_at="
    assert line.startswith(prefix) and line.endswith("Z\tpoison\n") and "error=" not in line
    doc = ctl.json("peek", name, "--dead-letter")
    assert doc["queue"] == dlq
    dead = doc["messages"][0]["dead_letter"]
    assert {k: dead[k] for k in ("queue", "id", "attempts", "reason", "error")} == {
        "queue": name, "id": 1, "attempts": 1, "reason": "max_attempts", "error": None,
    }
    assert dead["at_ms"] > 0


def test_status_text_and_json(ctl: Ctl, queue: str) -> None:
    ctl.run("publish", queue, "m", "--count", "3")
    ctl.json("consume", queue)                                 # id 1 leased
    ctl.run("ack", queue, "2")
    raw = ctl.run("status", queue, "1", "2", "3", "9").stdout.splitlines()
    assert [bool(PUBLISHED.search(line)) for line in raw[1:]] == [False, True, False]  # held ones only
    lines = without_published(raw)
    assert lines[0].startswith("1\tleased\tattempts=1 until=") and lines[0].endswith("Z")
    assert lines[1:] == ["2\tgone", "3\tready\tattempts=0", "9\tunknown"]
    doc = ctl.json("status", queue, "3", "3")
    assert doc == {"queue": queue, "statuses": [
        {"id": 3, "state": "ready", "queue": queue, "attempts": 0, "until_ms": 0, "dead_letter_id": None,
         "reason": None, "error": None, "dead_lettered_at_ms": None, "expires_at_ms": 0,
         "published_at": doc["statuses"][0]["published_at"], "waits_on": []},
    ] * 2}
    assert doc["statuses"][0]["published_at"] > 0
    ctl.run("status", queue, expect=2)                         # ids are required
    result = ctl.run("status", qname(), "1", expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ")


# --- extend, reject, nack --error, dlq redrive ----------------------------------------------


def test_extend(ctl: Ctl, queue: str) -> None:
    ctl.run("publish", queue, "m", "--count", "2")
    (m,) = ctl.json("consume", queue, "--visibility-ms", "1000")["messages"]
    before = ctl.json("peek", queue, "--state", "leased")["messages"][0]["until_ms"]
    result = ctl.run("extend", queue, str(m["id"]), "2", "--visibility-ms", "3600000")
    assert result.stdout == "extended 1 of 2\n" and result.stderr == "not found or not leased: 2\n"
    after = ctl.json("peek", queue, "--state", "leased")["messages"][0]
    assert after["until_ms"] >= before + 3_000_000 and after["attempts"] == 1
    assert ctl.json("extend", queue, str(m["id"])) == {"queue": queue, "extended": 1, "missing": []}
    ctl.run("extend", queue, expect=2)                                # ids are required
    result = ctl.run("extend", queue, "1", "--visibility-ms", "0", expect=2)
    assert "visibility-ms" in result.stderr


def test_reject_and_nack_error_reach_the_dead_letter(ctl: Ctl) -> None:
    dlq, name = qname(), qname()
    ctl.run("create-queue", dlq)
    ctl.run("create-queue", name, "--max-attempts", "1", "--dead-letter", dlq)
    ctl.run("publish", name, "m", "--count", "3")
    ids = [str(m["id"]) for m in ctl.json("consume", name, "--max", "3")["messages"]]
    result = ctl.run("reject", name, ids[0], "99", "--error", 'bad "json"\tline')
    assert result.stdout == "rejected 1 of 2\n" and result.stderr == "not found or not leased: 99\n"
    assert ctl.json("nack", name, ids[1], "--error", "timeout") == {"queue": name, "released": 1, "missing": []}
    assert ctl.json("reject", name, ids[2]) == {"queue": name, "rejected": 1, "missing": []}
    assert ctl.json("reject", name, ids[2]) == {"queue": name, "rejected": 0, "missing": [int(ids[2])]}

    lines = without_published(ctl.run("peek", name, "--dead-letter").stdout.splitlines())
    assert len(lines) == 3
    assert f"source={name}#1 source_attempts=1 reason=rejected dead_lettered_at=" in lines[0]
    assert lines[0].endswith('Z error="bad \\"json\\"\\tline"\tm')         # one line, quoted and escaped
    assert f"source={name}#2 source_attempts=1 reason=max_attempts" in lines[1]
    assert lines[1].endswith('error="timeout"\tm')
    assert "error=" not in lines[2] and "reason=rejected" in lines[2]
    dead = [m["dead_letter"] for m in ctl.json("peek", name, "--dead-letter")["messages"]]
    assert [(d["id"], d["reason"], d["error"]) for d in dead] == [
        (1, "rejected", 'bad "json"\tline'), (2, "max_attempts", "timeout"), (3, "rejected", None),
    ]

    lines = without_published(ctl.run("status", name, *ids).stdout.splitlines())
    assert lines[0].startswith(f"1\tdead_lettered\tqueue={dlq} id=1 attempts=0 reason=rejected dead_lettered_at=")
    assert lines[0].endswith('Z error="bad \\"json\\"\\tline"')
    assert lines[1].endswith('error="timeout"') and "reason=max_attempts" in lines[1]
    assert "error=" not in lines[2]
    (status,) = ctl.json("status", name, ids[1])["statuses"]
    assert (status["state"], status["reason"], status["error"]) == ("dead_lettered", "max_attempts", "timeout")
    assert status["dead_lettered_at_ms"] == dead[1]["at_ms"]
    stats = ctl.json("stats", name)
    assert (stats["dead_lettered"], stats["nacked"]) == (3, 1)


def test_dlq_redrive(ctl: Ctl) -> None:
    dlq, first, second = qname(), qname(), qname()
    ctl.run("create-queue", dlq)
    for name in (first, second):
        ctl.run("create-queue", name, "--dead-letter", dlq)
        ctl.run("publish", name, "m", "--count", "2")
        ids = [str(m["id"]) for m in ctl.json("consume", name, "--max", "2")["messages"]]
        ctl.run("reject", name, *ids)                              # dlq ids 1, 2 (first), 3, 4 (second)
    ctl.run("publish", dlq, "straight in")                         # dlq id 5: no source

    result = ctl.run("dlq", "redrive", dlq, "--ids", "1", "4", "77")
    lines = result.stdout.splitlines()
    assert lines == [f"redrove 2 messages from {dlq}", *sorted([f"  1 to {first}", f"  1 to {second}"])]
    assert result.stderr.startswith("skipped 1 (")
    assert ctl.json("dlq", "redrive", dlq, "--max", "1") == {
        "queue": dlq, "redriven": 1, "queues": {first: 1}, "skipped": 0,
    }
    assert ctl.json("dlq", "redrive", dlq) == {"queue": dlq, "redriven": 1, "queues": {second: 1}, "skipped": 1}
    result = ctl.run("dlq", "redrive", dlq)
    assert result.stdout == f"redrove 0 messages from {dlq}\n" and result.stderr.startswith("skipped 1 (")
    assert [m["id"] for m in ctl.json("peek", first)["messages"]] == [3, 4]     # new ids in the source
    assert ctl.json("peek", first)["messages"][0]["attempts"] == 0

    for args in (["1"], ["--ids"], ["--ids", "1", "--max", "2"]):
        result = ctl.run("dlq", "redrive", dlq, *args, expect=2)
        assert "Usage:" in result.stderr
    result = ctl.run("dlq", "redrive", qname(), expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ")


# --- subscribe -------------------------------------------------------------------------------


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines()]


def test_subscribe_count_with_ack_pushes_no_more_than_the_count(ctl: Ctl, queue: str) -> None:
    ctl.run("publish", queue, "m", "--count", "6", "--key", "k")
    result = ctl.run("subscribe", queue, "--count", "4", "--credit", "2", "--ack", "--json")
    lines = json_lines(result.stdout)
    assert [m["id"] for m in lines] == [1, 2, 3, 4]
    assert lines[0] == {"queue": queue, "id": 1, "attempt": 1, "priority": 0, "key": "k", "key_encoding": "utf-8",
                        "body": "m", "body_encoding": "utf-8", "published_at": lines[0]["published_at"]}
    assert lines[0]["published_at"] > 0
    assert result.stderr == "received 4 messages, acked 4\n"
    stats = ctl.json("stats", queue)
    # The last acks waited for the end, so nothing past the count was pushed (and nacked).
    assert (stats["acked"], stats["leased"], stats["ready"], stats["nacked"]) == (4, 0, 2, 0)


def test_subscribe_without_ack_leaves_the_messages_leased(ctl: Ctl, queue: str) -> None:
    ctl.run("publish", queue, "hello", "--key", "k1")
    ctl.run("publish", queue, "-", input=b"\xff")
    result = ctl.run("subscribe", queue, "--count", "2")
    assert result.stdout.splitlines() == ["1\tattempt=1 priority=0 key=k1\thello", "2\tattempt=1 priority=0\thex:ff"]
    assert result.stderr == "received 2 messages\n"
    stats = ctl.json("stats", queue)
    assert (stats["leased"], stats["ready"], stats["acked"]) == (2, 0, 0)


def test_subscribe_usage_and_broker_errors(ctl: Ctl, queue: str) -> None:
    result = ctl.run("subscribe", queue, "--auto-ack", "--count", "1", expect=2)
    assert "--auto-ack cannot be used with --count" in result.stderr
    result = ctl.run("subscribe", qname(), "--count", "1", expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ")


def test_subscribe_ctrl_c_stops_cleanly(ctl: Ctl, queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl.run("publish", queue, "m", "--count", "5")
    shown = messages._print_pushed

    def interrupt_third(msg: Any, as_json: bool) -> None:
        if msg.id == 3:
            raise KeyboardInterrupt
        shown(msg, as_json)

    monkeypatch.setattr(messages, "_print_pushed", interrupt_third)
    result = ctl.run("subscribe", queue, "--ack", "--credit", "3")
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["1", "2"]
    assert result.stderr == "received 2 messages, acked 2\n"
    stats = ctl.json("stats", queue)
    # The interrupted one and those still buffered were given back at once.
    assert (stats["acked"], stats["leased"], stats["ready"]) == (2, 0, 3)


def test_subscribe_auto_ack_until_ctrl_c(ctl: Ctl, queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl.run("publish", queue, "m", "--count", "3")
    shown = messages._print_pushed
    seen: list[int] = []

    def stop_after_three(msg: Any, as_json: bool) -> None:
        shown(msg, as_json)
        seen.append(msg.id)
        if len(seen) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(messages, "_print_pushed", stop_after_three)
    result = ctl.run("subscribe", queue, "--auto-ack", "--json")
    assert [m["id"] for m in json_lines(result.stdout)] == [1, 2, 3]
    stats = ctl.json("stats", queue)
    assert (stats["messages"], stats["acked"]) == (0, 3)


def test_subscribe_ends_when_the_queue_is_deleted(ctl: Ctl, queue: str, monkeypatch: pytest.MonkeyPatch,
                                                  sync_broker_addr: tuple[str, int]) -> None:
    ctl.run("publish", queue, "only")
    shown = messages._print_pushed

    def then_delete(msg: Any, as_json: bool) -> None:
        shown(msg, as_json)
        with SyncClient(sync_broker_addr) as admin:
            admin.delete_queue(queue)

    monkeypatch.setattr(messages, "_print_pushed", then_delete)
    result = ctl.run("subscribe", queue, "--count", "5", expect=1)
    assert result.stdout == "1\tattempt=1 priority=0\tonly\n"
    assert result.stderr == "error: the broker ended the subscription: queue_deleted\n"


# --- publish --file, consume --follow -------------------------------------------------------


def queued_bodies(addr: str, queue: str) -> list[bytes]:
    with SyncClient(addr) as c:
        return [m.body for m in c.peek(queue, 10_000, state="ready")]


def test_publish_lines_from_stdin_in_batches(ctl: Ctl, queue: str) -> None:
    lines = [f"line {i}" for i in range(25)]
    text = "\n".join(lines[:10]) + "\n\n" + "\r\n".join(lines[10:]) + "\n"   # a blank line, CRLF ends
    doc = ctl.json("publish", queue, "--file", "-", "--batch", "10", input=text)
    assert doc["count"] == 25 and [b["count"] for b in doc["batches"]] == [10, 10, 5]
    assert [b["first_id"] for b in doc["batches"]] == [1, 11, 21]
    assert queued_bodies(ctl.addr, queue) == [line.encode() for line in lines]
    result = ctl.run("publish", queue, "-f", "-", "--key", "k", input="a\nb")   # no final line end
    assert result.stdout == f"published 2 messages to {queue}: ids 26-27\n"
    assert queued_bodies(ctl.addr, queue)[-2:] == [b"a", b"b"]


def test_publish_lines_from_a_file_with_a_progress_bar_on_a_terminal(
        ctl: Ctl, queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lines"
    path.write_bytes(b"".join(b"%05d \xff\n" % i for i in range(3000)))   # not UTF-8: sent as they are
    result = ctl.run("publish", queue, "--file", str(path))
    assert result.stdout == f"published 3000 messages to {queue}: ids 1-3000\n" and result.stderr == ""
    assert queued_bodies(ctl.addr, queue)[2999] == b"02999 \xff"
    monkeypatch.setattr(common, "_isatty", lambda stream: True)
    monkeypatch.setattr(common, "PROGRESS_MIN_BYTES", 1000)
    monkeypatch.setattr(messages, "Progress", partial(common.Progress, min_total=1000))
    assert "publishing" in ctl.run("publish", queue, "--file", str(path)).stderr
    assert "publishing" not in ctl.run("publish", queue, "--file", "-", input=path.read_bytes()).stderr  # a pipe


def test_publish_usage(ctl: Ctl, queue: str) -> None:
    assert "BODY or --file" in ctl.run("publish", queue, expect=2).stderr
    assert "BODY or --file" in ctl.run("publish", queue, "x", "--file", "-", input="y", expect=2).stderr
    assert "--count" in ctl.run("publish", queue, "--file", "-", "--count", "2", input="y", expect=2).stderr
    assert queued_bodies(ctl.addr, queue) == []


def test_consume_follow_prints_and_acks_as_messages_arrive(ctl: Ctl, queue: str) -> None:
    ctl.run("publish", queue, "--file", "-", input="m0\nm1\nm2\n")
    results: list[Result] = []
    follower = threading.Thread(target=lambda: results.append(
        ctl.run("consume", queue, "--follow", "--count", "7", "--max", "2", "--wait-ms", "200", "--json")))
    follower.start()
    # (CliRunner swaps sys.stdout for the whole process: one runner at a time)
    with SyncClient(ctl.addr) as producer:
        producer.publish_batch(queue, [b"m3", b"m4"])
        producer.publish_batch(queue, [b"m5", b"m6", b"m7"])
    follower.join(timeout=60)
    assert not follower.is_alive()
    [result] = results
    got = json_lines(result.stdout)
    assert [m["body"] for m in got] == [f"m{i}" for i in range(7)] and {m["queue"] for m in got} == {queue}
    assert result.stderr == "received 7 messages, acked 7\n"
    assert queued_bodies(ctl.addr, queue) == [b"m7"]                 # the one past --count is untouched
    stats = ctl.json("stats", queue)
    assert (stats["ready"], stats["leased"]) == (1, 0)


def test_consume_follow_without_ack_and_until_ctrl_c(
        ctl: Ctl, queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl.run("publish", queue, "--file", "-", input="a\nb\nc\nd\ne\n")
    result = ctl.run("consume", queue, "--follow", "--no-ack", "--count", "2", "--max", "5")
    assert [line.split("\t")[2] for line in result.stdout.splitlines()] == ["a", "b"]
    assert result.stderr == "received 2 messages\n"
    assert ctl.json("stats", queue)["leased"] == 2
    shown = messages._print_delivery
    calls = []

    def interrupt_third(queue: str, d: Any, as_json: bool) -> None:
        calls.append(d.id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        shown(queue, d, as_json)

    monkeypatch.setattr(messages, "_print_delivery", interrupt_third)
    result = ctl.run("consume", queue, "--follow", "--max", "3")   # c, d printed; e given back by Ctrl-C
    assert [line.split("\t")[2] for line in result.stdout.splitlines()] == ["c", "d"]
    assert result.stderr == "received 2 messages, acked 2\n"
    stats = ctl.json("stats", queue)
    assert (stats["ready"], stats["leased"], stats["acked"]) == (1, 2, 2)
    assert queued_bodies(ctl.addr, queue) == [b"e"]
    assert "--count goes with --follow" in ctl.run("consume", queue, "--count", "1", expect=2).stderr


def complete(words: str) -> list[str]:
    """What bash completion offers for the last of ``words`` (click's protocol)."""
    env = {"_BROKERCTL_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    result = CliRunner(env=env).invoke(main, [], prog_name="brokerctl")
    assert result.exit_code == 0, result.output
    return [line.split(",", 1)[1] for line in result.stdout.splitlines()]


def test_shell_completion() -> None:
    assert complete("brokerctl pu") == ["publish", "purge"]
    assert "wal" in complete("brokerctl w")            # the broker's commands, by entry point
    assert complete("brokerctl ping --ad") == ["--addr"]
    assert complete("brokerctl --ti") == ["--timeout"]
    assert complete("brokerctl topic cr") == ["create"]
    script = CliRunner(env={"_BROKERCTL_COMPLETE": "bash_source"}).invoke(main, [], prog_name="brokerctl")
    assert "_brokerctl_completion" in script.stdout


def test_dlq_redrive_in_batches_with_a_progress_bar(ctl: Ctl, monkeypatch: pytest.MonkeyPatch) -> None:
    dlq, source = qname(), qname()
    ctl.run("create-queue", dlq)
    ctl.run("create-queue", source, "--dead-letter", dlq)
    ctl.run("publish", source, "m", "--count", "7")
    ids = [str(m["id"]) for m in ctl.json("consume", source, "--max", "7")["messages"]]
    ctl.run("reject", source, *ids)
    requests: list[dict[str, Any]] = []
    redrive = SyncClient.redrive

    def counted(self: SyncClient, queue: str, **kwargs: Any) -> Any:
        requests.append(kwargs)
        return redrive(self, queue, **kwargs)

    monkeypatch.setattr(SyncClient, "redrive", counted)
    assert ctl.json("dlq", "redrive", dlq, "--max", "5", "--batch", "2") == {
        "queue": dlq, "redriven": 5, "queues": {source: 5}, "skipped": 0}
    assert requests == [{"max": 2}, {"max": 2}, {"max": 1}]
    requests.clear()
    monkeypatch.setattr(common, "_isatty", lambda stream: True)
    monkeypatch.setattr(queues, "PROGRESS_MIN_MESSAGES", 1)
    result = ctl.run("dlq", "redrive", dlq, "--batch", "3")
    assert result.stdout == f"redrove 2 messages from {dlq}\n  2 to {source}\n" and "redriving" in result.stderr
    assert requests == [{"max": 3}]
    assert ctl.json("stats", source)["ready"] == 7 and ctl.json("stats", dlq)["ready"] == 0
    assert "--batch" in ctl.run("dlq", "redrive", dlq, "--ids", "1", "--batch", "2", expect=2).stderr


def test_publish_count_shows_progress_on_a_terminal(ctl: Ctl, queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ctl.run("publish", queue, "m", "--count", "3").stderr == ""
    monkeypatch.setattr(common, "_isatty", lambda stream: True)
    monkeypatch.setattr(messages, "PROGRESS_MIN_MESSAGES", 3)
    result = ctl.run("publish", queue, "m", "--count", "3", "--batch", "2")
    assert "publishing" in result.stderr and result.stdout == f"published 3 messages to {queue}: ids 4-5, 6\n"
