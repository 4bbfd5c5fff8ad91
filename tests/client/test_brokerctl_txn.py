"""brokerctl txn: a transaction from a JSON file, through click's CliRunner against a real
broker (``sync_broker_addr``)."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from client import SyncClient, group_queue
from client.cli import main

from .test_brokerctl import Ctl, ctl, qname  # noqa: F401  (ctl: the fixture)

# --- no broker needed ----------------------------------------------------------------------


def test_help_names_txn_and_the_file_format() -> None:
    assert "txn" in CliRunner().invoke(main, ["--help"]).stdout.split("Commands:")[1].split()
    result = CliRunner().invoke(main, ["txn", "--help"])
    assert result.exit_code == 0
    text = result.stdout
    assert "--addr" in text and "--json" in text and "LOCKGATE_ADDR" in text
    for word in ('"op": "ack"', '"op": "publish"', '"op": "topic_publish"', '{"base64": "..."}', "TOPIC/GROUP",
                 "'-': stdin"):
        assert word in text, word


@pytest.mark.parametrize("doc, message", [
    ("{not json", "not JSON"),
    ('{"op": "ack"}', 'expected a JSON array of steps, or an object {"steps": [...]}'),
    ('[["ack", "q", [1]]]', 'step 0: expected an object with "op"'),
    ('[{"op": "ack", "queue": "q", "ids": [1]}, {"op": "nack", "queue": "q"}]',
     'step 1: "op" must be one of ack, publish, topic_publish, got "nack"'),
    ('[{"op": "publish", "queue": "q", "messages": "hello"}]',
     'step 0 (publish): messages: expected an array, got "hello"'),
    ('[{"op": "publish", "queue": "q", "messages": ["a", 7]}]',
     'step 0 (publish): messages[1]: expected a body'),
    ('[{"op": "publish", "queue": "q", "messages": [{"base64": "%%%"}]}]',
     "step 0 (publish): messages[0]: not base64"),
    ('[{"op": "publish", "queue": "q", "messages": [{"body": "a", "headers": {"t": "x"}}]}]',
     "step 0 (publish): messages[0]: unknown field 'headers'"),
    ('[{"op": "topic_publish", "topic": "t", "messages": [{"body": "a", "priority": 3}]}]',
     "step 0 (topic_publish): messages[0]: unknown field 'priority'"),
    ('[{"op": "publish", "queue": "q", "messages": [{"body": "a", "key": 5}]}]',
     'step 0 (publish): messages[0].key: expected a string or {"base64": "..."}, got 5'),
    ('[{"op": "publish", "queue": "q", "messages": [{"body": "a", "after": ["q", 1]}]}]',
     'step 0 (publish): messages[0].after: expected [[queue, id], ...]'),
])
def test_a_file_that_is_not_steps_is_a_usage_error_and_sends_nothing(doc: str, message: str) -> None:
    result = CliRunner().invoke(main, ["txn", "-", "--addr", "127.0.0.1:1"], input=doc)
    assert result.exit_code == 2, result.output
    assert "Invalid value for FILE: " in result.stderr and message in result.stderr, result.stderr
    assert result.stdout == ""


# --- against a broker ------------------------------------------------------------------------


def write(tmp_path: Path, steps: Any) -> str:
    path = tmp_path / f"{qname()}.json"
    path.write_text(json.dumps(steps))
    return str(path)


def leased(ctl: Ctl, queue: str, body: str = "order 7") -> int:
    """Publish ``body`` to ``queue`` and lease it; returns its id."""
    ctl.run("publish", queue, body)
    (d,) = ctl.json("consume", queue)["messages"]
    return int(d["id"])


def test_acks_and_publishes_to_a_queue_and_a_topic_at_once(ctl: Ctl, tmp_path: Path) -> None:
    src, dst, topic = qname(), qname(), qname()
    for queue in (src, dst):
        ctl.run("create-queue", queue)
    ctl.run("topic", "create", topic, "--shards", "2")
    ctl.run("group", "create", topic, "audit")
    taken = leased(ctl, src)
    later = int(ctl.run("publish", src, "order 8").stdout.rsplit(" ", 1)[1])
    steps = [
        {"op": "ack", "queue": src, "ids": [taken]},
        {"op": "publish", "queue": dst, "messages": [
            "invoice 7", {"base64": base64.b64encode(b"\x00\x01").decode()},
            {"body": "urgent", "key": {"base64": "/w=="}, "priority": 9, "dedup_id": "inv-7",
             "after": [[src, later]]},
        ]},
        {"op": "topic_publish", "topic": topic, "messages": [{"body": "billed 7", "key": "c-42",
                                                               "headers": {"type": "billed"}}]},
    ]
    result = ctl.run("txn", write(tmp_path, steps))
    assert result.stdout.splitlines() == [
        f"step 0 ack {src}: acked 1",
        f"step 1 publish {dst}: ids 1-3",
        f"step 2 topic_publish {topic}: ids 1",
    ]
    assert result.stderr == "committed 3 steps\n"

    with SyncClient(ctl.addr) as lg:
        assert [s.state for s in lg.message_status(src, [taken])] == ["gone"]
        peeked = list(lg.peek(dst, max=10))
        assert [(m.body, m.key, m.priority) for m in peeked] == [
            (b"invoice 7", None, 0), (b"\x00\x01", None, 0), (b"urgent", b"\xff", 9)]
        (waiting,) = [s for s in lg.message_status(dst, [3])]
        assert (waiting.state, waiting.waits_on) == ("waiting", ((src, later),))
        (event,) = lg.consume(group_queue(topic, "audit"))
        assert (event.body, event.key, event.headers) == (b"billed 7", b"c-42", {"type": "billed"})


def test_json_output_stdin_and_the_steps_object(ctl: Ctl) -> None:
    src, dst = qname(), qname()
    for queue in (src, dst):
        ctl.run("create-queue", queue, "--dedup-window-ms", "60000")
    taken = leased(ctl, src)
    ctl.run("publish", dst, "first", "--dedup-id", "d1")
    steps = {"steps": [{"op": "ack", "queue": src, "ids": [taken]},
                       {"op": "publish", "queue": dst, "messages": [{"body": "again", "dedup_id": "d1"}, "new"]}]}
    doc = ctl.json("txn", "-", input=json.dumps(steps))
    assert doc == {"results": [
        {"step": 0, "op": "ack", "queue": src, "acked": 1, "missing": []},
        {"step": 1, "op": "publish", "queue": dst, "first_id": 2, "count": 1, "duplicates": [[0, 1]]},
    ]}


def test_a_duplicate_and_a_group_ack_in_text(ctl: Ctl) -> None:
    topic, dst = qname(), qname()
    ctl.run("create-queue", dst)
    ctl.run("publish", dst, "first", "--dedup-id", "d1")
    ctl.run("topic", "create", topic)
    ctl.run("group", "create", topic, "billing")
    ctl.run("topic", "publish", topic, "order 1")
    (d,) = ctl.json("consume", group_queue(topic, "billing"))["messages"]
    steps = [{"op": "ack", "queue": group_queue(topic, "billing"), "ids": [d["id"]]},
             {"op": "publish", "queue": dst, "messages": [{"body": "x", "dedup_id": "d1"}]}]
    result = ctl.run("txn", "-", input=json.dumps(steps))
    assert result.stdout.splitlines() == [
        f"step 0 ack {topic}/billing: acked 1",
        f"step 1 publish {dst}: nothing stored; 1 duplicate of 1",
    ]
    assert ctl.json("group", "stats", topic, "billing")["acked"] == 1


def test_a_topic_publish_step_with_dedup_ids(ctl: Ctl) -> None:
    topic = qname()
    ctl.run("topic", "create", topic)
    ctl.run("topic", "publish", topic, "first", "--dedup-id", "d1")
    steps = [{"op": "topic_publish", "topic": topic,
              "messages": [{"body": "again", "dedup_id": "d1"}, {"body": "new", "dedup_id": {"base64": "AAE="}}]}]
    assert ctl.run("txn", "-", input=json.dumps(steps)).stdout.splitlines() == [
        f"step 0 topic_publish {topic}: ids 2; 1 duplicate of 1"]
    assert ctl.json("txn", "-", input=json.dumps(steps)) == {"results": [
        {"step": 0, "op": "topic_publish", "topic": topic, "first_id": 3, "count": 0,
         "duplicates": [[0, 1], [1, 2]]}]}
    assert ctl.json("topic", "stats", topic)["published"] == 2


def test_a_conflict_names_the_step_and_the_ids_and_applies_nothing(ctl: Ctl) -> None:
    src, dst = qname(), qname()
    for queue in (src, dst):
        ctl.run("create-queue", queue)
    ready = int(ctl.run("publish", src, "not leased").stdout.rsplit(" ", 1)[1])
    steps = [{"op": "publish", "queue": dst, "messages": ["output"]}, {"op": "ack", "queue": src, "ids": [ready]}]
    result = ctl.run("txn", "-", input=json.dumps(steps), expect=1)
    assert result.stdout == ""
    assert result.stderr == (f"error: TXN_CONFLICT: step 1 (ack): 1 of the messages to ack in {src!r} are not "
                             f"leased any more (ids {ready})\n")
    assert ctl.json("stats", dst)["published"] == 0


def test_a_later_step_failing_undoes_the_earlier_ones(ctl: Ctl) -> None:
    src, missing = qname(), qname()
    ctl.run("create-queue", src)
    taken = leased(ctl, src)
    steps = [{"op": "ack", "queue": src, "ids": [taken]}, {"op": "publish", "queue": missing, "messages": ["x"]}]
    result = ctl.run("txn", "-", input=json.dumps(steps), expect=5)
    assert result.stderr == f"error: QUEUE_NOT_FOUND: step 1 (publish): queue {missing!r} does not exist\n"
    assert [s["state"] for s in ctl.json("status", src, str(taken))["statuses"]] == ["leased"]


@pytest.mark.parametrize("step, message", [
    # the broker checks what the file says beyond the messages' shape, and names the step
    ({"op": "publish", "messages": ["x"], "queue": "Q", "extra": 1}, "step 0 (publish): "),
    ({"op": "publish", "queue": "Q", "messages": [{"body": "x", "priority": 300}]}, "step 0 (publish): "),
    ({"op": "ack", "queue": "Q", "ids": "all"}, "step 0 (ack): "),
])
def test_the_broker_refuses_a_bad_argument_naming_the_step(ctl: Ctl, step: dict[str, Any], message: str) -> None:
    queue = qname()
    ctl.run("create-queue", queue)
    step = {k: queue if v == "Q" else v for k, v in step.items()}
    result = ctl.run("txn", "-", input=json.dumps([step]), expect=1)
    assert result.stderr.startswith(f"error: INVALID_ARGUMENT: {message}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert ctl.json("stats", queue)["published"] == 0


def test_the_broker_refuses_an_empty_transaction(ctl: Ctl) -> None:
    result = ctl.run("txn", "-", input="[]", expect=1)
    assert result.stderr.startswith("error: INVALID_ARGUMENT: steps must be")
