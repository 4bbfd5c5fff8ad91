"""brokerctl's topic and group commands, and the queue commands on a group (TOPIC/GROUP),
through click's CliRunner against a real broker (``sync_broker_addr``)."""
from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner

from client.cli import main
from client.cli.topics import GROUP_SETTINGS
from client.ops import OPS
from protocol import shard_for_key

from .test_brokerctl import Ctl, ctl, json_lines, qname  # noqa: F401  (ctl: the fixture)

TOPIC_COMMANDS = ["create", "list", "stats", "publish", "delete"]
GROUP_COMMANDS = ["create", "list", "stats", "seek", "delete"]
BROKER_COMMANDS = [["topic", c] for c in TOPIC_COMMANDS] + [["group", c] for c in GROUP_COMMANDS]


# --- no broker needed ----------------------------------------------------------------------


def test_help_names_the_topic_and_group_commands() -> None:
    text = CliRunner().invoke(main, ["--help"]).stdout
    assert "topic " in text and "group " in text and "TOPIC/GROUP" in text
    for words, commands in ((["topic"], TOPIC_COMMANDS), (["group"], GROUP_COMMANDS)):
        result = CliRunner().invoke(main, [*words, "--help"])
        assert result.exit_code == 0
        listed = result.stdout.split("Commands:")[1].split()
        assert set(commands) <= set(listed)


@pytest.mark.parametrize("command", BROKER_COMMANDS, ids=" ".join)
def test_every_topic_and_group_command_takes_addr_and_json(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "--addr" in result.stdout and "--json" in result.stdout and "LOCKGATE_ADDR" in result.stdout


def test_create_commands_offer_every_setting_of_the_op_table() -> None:
    topic_help = CliRunner().invoke(main, ["topic", "create", "--help"]).stdout
    for setting in OPS["create_topic"].params[1:]:
        assert f"--{setting.name.replace('_', '-')}" in topic_help
    group_help = CliRunner().invoke(main, ["group", "create", "--help"]).stdout
    delivery = {"visibility_ms", "max_attempts", "dead_letter", "retry_delay_ms", "retry_backoff",
                "retry_max_delay_ms", "retry_jitter", "ordered"}
    assert {s.name for s in GROUP_SETTINGS} == delivery
    assert all(s.doc for s in GROUP_SETTINGS)
    for name in [*delivery, "start", "filter"]:
        assert f"--{name.replace('_', '-')}" in group_help


@pytest.mark.parametrize("args, message", [
    (["group", "create", "t", "g", "--start", "soon"], "expected earliest, latest"),
    (["group", "create", "t", "g", "--start", "1,x"], "expected earliest, latest"),
    (["group", "create", "t", "g", "--start", "-5"], "expected earliest, latest"),
    (["group", "create", "t", "g", "--filter", "region"], "expected KEY=VALUE"),
    (["group", "create", "t", "g", "--filter", "a=1", "--filter", "a=2"], "'a' is given twice"),
    (["group", "seek", "t", "g"], "Missing option '--to'"),
    (["topic", "publish", "t", "x", "--header", "=v"], "expected KEY=VALUE"),
    (["topic", "create", "t", "--retention", "forever"], "'forever' is not one of"),
    (["topic", "create", "t", "--shards", "0"], "--shards"),
])
def test_bad_usage_exits_2_before_connecting(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, [*args, "--addr", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stdout == ""


# --- topics ----------------------------------------------------------------------------------


def test_topic_create_list_stats_and_delete(ctl: Ctl) -> None:
    name, limited = qname(), qname()
    assert ctl.run("topic", "create", name, "--shards", "2").stdout == f"created topic {name}\n"
    assert "already exists with these settings" in ctl.run("topic", "create", name, "--shards", "2").stdout
    assert ctl.json("topic", "create", name, "--shards", "2") == {"topic": name, "created": False}
    result = ctl.run("topic", "create", name, "--shards", "3", expect=1)
    assert result.stderr.startswith("error: QUEUE_EXISTS: ") and result.stderr.count("\n") == 1
    assert ctl.json("topic", "create", limited, "--retention", "both", "--max-age-ms", "60000",
                    "--max-messages", "5", "--dedup-window-ms", "1000") == {"topic": limited, "created": True}
    ctl.run("group", "create", name, "audit")

    stats = ctl.json("topic", "stats", limited)
    assert stats == {
        "name": limited, "shards": 1, "retention": "both", "max_age_ms": 60000, "max_bytes": 0, "max_messages": 5,
        "dedup_window_ms": 1000, "messages": 0, "bytes": 0, "first_offsets": [1], "next_offsets": [1], "published": 0, "reclaimed": 0,
        "expired": 0, "groups": [], "group_count": 0,
    }
    lines = ctl.run("topic", "stats", name).stdout.splitlines()
    assert [line.split() for line in lines if line.split()[0] in ("shards", "first_offsets", "groups")] == [
        ["shards", "2"], ["first_offsets", "1,1"], ["groups", "audit"],
    ]

    lines = ctl.run("topic", "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "SHARDS", "RETENTION", "MESSAGES", "BYTES", "PUBLISHED", "RECLAIMED",
                                "EXPIRED", "GROUPS", "LIMITS"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[name] == [name, "2", "interest", "0", "0", "0", "0", "0", "audit", "-"]
    assert rows[limited] == [limited, "1", "both", "0", "0", "0", "0", "0", "-", "max_age_ms=60000",
                             "max_messages=5"]
    assert {t["name"] for t in ctl.json("topic", "list")} >= {name, limited}

    ctl.run("topic", "publish", name, "m", "--count", "3")
    ctl.run("topic", "delete", name, input="n\n", expect=1)
    assert ctl.json("topic", "stats", name)["messages"] == 3
    result = ctl.run("topic", "delete", name, input="y\n")
    assert result.stdout.endswith(f"deleted topic {name} (3 messages dropped)\n")
    result = ctl.run("topic", "stats", name, expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ") and result.stdout == ""
    assert ctl.json("topic", "delete", limited, "--yes") == {"topic": limited, "messages": 0}


def test_no_topics_and_no_groups(ctl: Ctl) -> None:
    assert ctl.run("topic", "list").stdout == "no topics\n"
    assert ctl.json("topic", "list") == []
    name = qname()
    ctl.run("topic", "create", name)
    assert ctl.run("group", "list", name).stdout == f"no groups of topic {name}\n"
    assert ctl.json("group", "list", name) == []
    result = ctl.run("group", "list", qname(), expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ")


def test_topic_publish_key_headers_stdin_and_count(ctl: Ctl) -> None:
    name = qname()
    ctl.run("topic", "create", name, "--shards", "4")
    ctl.run("group", "create", name, "all", "--start", "earliest")
    result = ctl.run("topic", "publish", name, "order 1", "--key", "c-7", "--header", "type=paid",
                     "--header", "region=eu")
    assert result.stdout == f"published 1 message to topic {name}: id 1\n"
    ctl.run("topic", "publish", name, "-", input=b"\xff\x00")
    doc = ctl.json("topic", "publish", name, "same", "--count", "5")
    assert doc == {"topic": name, "count": 5, "batches": [{"first_id": 3, "count": 5}]}
    assert ctl.run("topic", "publish", name, "x", "--count", "2").stdout == \
        f"published 2 messages to topic {name}: ids 8-9\n"

    out = ctl.json("consume", f"{name}/all", "--max", "20")
    assert out["queue"] == f"{name}/all" and len(out["messages"]) == 9
    first = next(m for m in out["messages"] if m["id"] == 1)
    assert first == {
        "id": 1, "attempt": 1, "priority": 0, "published_at": first["published_at"], "key": "c-7",
        "key_encoding": "utf-8", "body": "order 1", "body_encoding": "utf-8",
        "shard": shard_for_key(b"c-7", 4), "offset": 1, "headers": {"type": "paid", "region": "eu"},
    }
    binary = next(m for m in out["messages"] if m["id"] == 2)
    assert binary["body_encoding"] == "base64" and base64.b64decode(binary["body"]) == b"\xff\x00"
    assert binary["headers"] is None
    by_shard: dict[int, list[int]] = {}
    for m in out["messages"]:                      # per shard, offsets 1, 2, ... in id order
        by_shard.setdefault(m["shard"], []).append(m["offset"])
    assert all(offsets == list(range(1, len(offsets) + 1)) for offsets in by_shard.values())

    result = ctl.run("topic", "publish", qname(), "x", expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ")


def test_topic_publish_lines_from_stdin(ctl: Ctl) -> None:
    name = qname()
    ctl.run("topic", "create", name)
    ctl.run("group", "create", name, "all", "--start", "earliest")
    lines = [f"event {i}" for i in range(12)]
    doc = ctl.json("topic", "publish", name, "--file", "-", "--header", "src=file",
                   input="\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")
    assert doc["count"] == 12 and sum(b["count"] for b in doc["batches"]) == 12
    out = ctl.json("consume", f"{name}/all", "--max", "20")
    assert [m["body"] for m in out["messages"]] == lines and {m["headers"]["src"] for m in out["messages"]} == {"file"}
    assert "BODY or --file" in ctl.run("topic", "publish", name, expect=2).stderr
    assert "--count" in ctl.run("topic", "publish", name, "-f", "-", "-n", "2", input="x", expect=2).stderr


# --- groups ----------------------------------------------------------------------------------


def test_group_create_with_delivery_settings_filter_and_start(ctl: Ctl) -> None:
    name, dlq = qname(), qname()
    ctl.run("topic", "create", name, "--shards", "2")
    ctl.run("create-queue", dlq)
    ctl.run("group", "create", name, "keeper")                    # keeps what is published (interest)
    ctl.run("topic", "publish", name, "before", "--count", "2")   # id 1 in shard 1, id 2 in shard 0
    args = ["group", "create", name, "billing", "--start", "earliest", "--filter", "type=paid",
            "--visibility-ms", "5000", "--max-attempts", "2", "--dead-letter", dlq, "--retry-delay-ms", "10",
            "--retry-backoff", "fixed", "--retry-jitter", "5", "--ordered", "true"]
    result = ctl.run(*args)
    assert result.stdout == f"created group billing of topic {name} (read it as {name}/billing)\n"
    assert ctl.json(*args) == {"topic": name, "group": "billing", "queue": f"{name}/billing", "created": False}
    result = ctl.run("group", "create", name, "billing", "--max-attempts", "3", expect=1)
    assert result.stderr.startswith("error: QUEUE_EXISTS: ")

    stats = ctl.json("group", "stats", name, "billing")
    assert {k: stats[k] for k in ("topic", "group", "queue", "cursors", "lag", "missed", "filtered", "filter")} == {
        "topic": name, "group": "billing", "queue": f"{name}/billing", "cursors": [2, 2], "lag": 0,
        "missed": 0, "filtered": 2, "filter": {"type": "paid"},
    }  # started at the earliest, skipped both earlier messages (no header)
    assert {k: stats[k] for k in ("visibility_ms", "max_attempts", "dead_letter", "retry_delay_ms", "retry_backoff",
                                  "retry_jitter", "ordered")} == {
        "visibility_ms": 5000, "max_attempts": 2, "dead_letter": dlq, "retry_delay_ms": 10,
        "retry_backoff": "fixed", "retry_jitter": 5, "ordered": True,
    }
    assert "name" not in stats
    lines = ctl.run("group", "stats", name, "billing").stdout.splitlines()
    fields = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines}
    assert (fields["cursors"], fields["filter"], fields["dead_letter"]) == ("2,2", '{"type":"paid"}', dlq)

    ctl.run("group", "create", name, "late")                       # latest: from now on
    ctl.run("group", "create", name, "offsets", "--start", "2,1")
    ctl.run("topic", "publish", name, "paid", "--header", "type=paid")
    groups = {g["group"]: g for g in ctl.json("group", "list", name)}
    assert list(groups) == ["billing", "keeper", "late", "offsets"]
    # Still to deliver (taken or not): late only the new one (id 3, shard 1); offsets
    # starts at offset 2 of shard 0 (nothing yet) and 1 of shard 1: ids 1 and 3.
    assert {g: s["lag"] + s["ready"] for g, s in groups.items()} == {"billing": 1, "keeper": 3, "late": 1,
                                                                       "offsets": 2}
    result = ctl.run("group", "create", qname(), "g", expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ")
    result = ctl.run("group", "create", name, "g2", "--dead-letter", qname(), expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ")


def test_group_list_shows_progress(ctl: Ctl) -> None:
    name = qname()
    ctl.run("topic", "create", name, "--retention", "both", "--max-messages", "4")
    for group in ("fast", "slow", "idle"):
        ctl.run("group", "create", name, group)
    ctl.run("topic", "publish", name, "m", "--count", "3")
    ctl.run("consume", f"{name}/fast", "--max", "3", "--ack")
    ctl.json("consume", f"{name}/slow", "--max", "2")          # 2 leased
    ctl.run("topic", "publish", name, "n", "--count", "3")     # past max_messages: ids 1, 2 dropped
    lines = ctl.run("group", "list", name).stdout.splitlines()
    assert lines[0].split() == ["GROUP", "LAG", "READY", "LEASED", "DELAYED", "ACKED", "DEAD_LETTERED", "MISSED",
                                "FILTERED", "CURSORS"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    # LAG + READY is what each group still has to take; which of the two depends on
    # when the group last topped up its delivery queue.
    counts = {g: (int(r[1]) + int(r[2]), *r[3:]) for g, r in rows.items()}
    assert counts == {
        "fast": (3, "0", "0", "3", "0", "0", "0", "7"),
        "idle": (4, "0", "0", "0", "0", "2", "0", "7"),
        "slow": (4, "0", "0", "0", "0", "2", "0", "7"),   # the 2 it had leased were dropped by the limit
    }
    slow = next(g for g in ctl.json("group", "list", name) if g["group"] == "slow")
    assert (slow["missed"], slow["leased"], slow["cursors"]) == (2, 0, [7])


def test_group_seek_and_delete(ctl: Ctl) -> None:
    name = qname()
    ctl.run("topic", "create", name, "--retention", "limits")
    ctl.run("group", "create", name, "g", "--start", "earliest")
    ctl.run("topic", "publish", name, "m", "--count", "4")
    out = ctl.json("consume", f"{name}/g", "--max", "4", "--ack")
    assert out["acked"] == 4
    assert ctl.run("group", "seek", name, "g", "--to", "2,").stdout == f"moved group g of topic {name}: cursors 2\n"
    assert [m["offset"] for m in ctl.json("consume", f"{name}/g", "--max", "10")["messages"]] == [2, 3, 4]
    assert ctl.json("group", "seek", name, "g", "--to", "latest") == {"topic": name, "group": "g", "cursors": [5]}
    assert ctl.json("group", "seek", name, "g", "--to", "earliest") == {"topic": name, "group": "g", "cursors": [1]}
    assert ctl.json("group", "seek", name, "g", "--to", "0")["cursors"] == [1]   # a time: from the first
    result = ctl.run("group", "seek", name, "nope", "--to", "latest", expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ")

    # Back at the start: offset 1 is taken again; 2-4 are still leased and not taken twice.
    stats = ctl.json("group", "stats", name, "g")
    assert (stats["lag"] + stats["ready"], stats["leased"], stats["messages"]) == (1, 3, stats["ready"] + 3)

    ctl.run("group", "delete", name, "g", input="n\n", expect=1)
    dropped = ctl.json("group", "stats", name, "g")["messages"]
    result = ctl.run("group", "delete", name, "g", input="y\n")
    assert result.stdout.endswith(f"deleted group g of topic {name} ({dropped} messages dropped)\n")
    assert ctl.json("topic", "stats", name)["groups"] == []
    ctl.run("group", "create", name, "h")
    assert ctl.json("group", "delete", name, "h", "--yes") == {"topic": name, "group": "h", "messages": 0}
    result = ctl.run("group", "delete", name, "h", "--yes", expect=5)
    assert result.stderr.startswith("error: QUEUE_NOT_FOUND: ")


# --- the queue commands on a group -------------------------------------------------------------


def test_queue_commands_read_a_group_as_topic_slash_group(ctl: Ctl) -> None:
    name, dlq = qname(), qname()
    ctl.run("create-queue", dlq)
    ctl.run("topic", "create", name)
    ctl.run("group", "create", name, "billing", "--max-attempts", "2", "--dead-letter", dlq)
    ctl.run("group", "create", name, "email")
    ctl.run("topic", "publish", name, "o1", "--key", "c-1", "--header", "type=paid")
    ctl.run("topic", "publish", name, "o2", "--count", "3")
    billing, email = f"{name}/billing", f"{name}/email"

    # consume (text) shows the shard, offset and headers of a group's messages.
    lines = ctl.run("consume", billing, "--max", "2").stdout.splitlines()
    assert lines == ['1\tattempt=1 priority=0 key=c-1 shard=0 offset=1 headers={"type":"paid"}\to1',
                     "2\tattempt=1 priority=0 shard=0 offset=2\to2"]
    assert ctl.run("ack", billing, "1", "99").stdout == "acked 1 of 2\n"
    assert ctl.json("nack", billing, "2", "--error", "declined") == {"queue": billing, "released": 1, "missing": []}
    peeked = ctl.json("peek", billing)
    assert peeked["queue"] == billing and [m["id"] for m in peeked["messages"]] == [3, 4, 2]
    assert ctl.run("status", billing, "1", "2").stdout.splitlines()[0] == "1\tgone"

    # subscribe with ack: pushes from the group, in order, with the group's fields.
    result = ctl.run("subscribe", billing, "--count", "3", "--ack", "--json")
    pushed = json_lines(result.stdout)
    assert [(m["queue"], m["id"], m["offset"], m["attempt"]) for m in pushed] == [
        (billing, 3, 3, 1), (billing, 4, 4, 1), (billing, 2, 2, 2),
    ]
    assert result.stderr == "received 3 messages, acked 3\n"

    # stats of the group's delivery queue; the other group did not move.
    stats = ctl.json("stats", billing)
    assert (stats["name"], stats["acked"], stats["nacked"], stats["messages"]) == (billing, 4, 1, 0)
    assert ctl.json("stats", email)["acked"] == 0
    assert ctl.json("topic", "stats", name)["messages"] == 4   # email still wants them all
    out = ctl.json("consume", email, "--max", "10", "--ack")
    assert (out["acked"], [m["headers"] for m in out["messages"]]) == (4, [{"type": "paid"}, None, None, None])
    assert ctl.json("topic", "stats", name)["messages"] == 0   # interest: reclaimed once both were done

    # What the queue ops refuse on a group is refused with one line.
    result = ctl.run("publish", billing, "x", expect=1)
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ") and result.stderr.count("\n") == 1
    result = ctl.run("purge", billing, "--yes", expect=1)
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ")
    result = ctl.run("consume", f"{name}/nope", expect=5)   # no such group
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and result.stdout == ""


def test_reject_from_a_group_reaches_its_dead_letter_queue(ctl: Ctl) -> None:
    name, dlq = qname(), qname()
    ctl.run("create-queue", dlq)
    ctl.run("topic", "create", name)
    ctl.run("group", "create", name, "g", "--dead-letter", dlq)
    ctl.run("topic", "publish", name, "bad")
    (m,) = ctl.json("consume", f"{name}/g")["messages"]
    assert ctl.run("reject", f"{name}/g", str(m["id"]), "--error", "bad json").stdout == "rejected 1 of 1\n"
    dead = ctl.json("peek", f"{name}/g", "--dead-letter")
    assert dead["queue"] == dlq
    assert [(d["dead_letter"]["queue"], d["dead_letter"]["reason"], d["body"]) for d in dead["messages"]] == [
        (f"{name}/g", "rejected", "bad"),
    ]
    groups = ctl.json("group", "list", name)
    assert [(g["group"], g["dead_lettered"]) for g in groups] == [("g", 1)]
    assert json.loads(ctl.run("topic", "stats", name, "--json").stdout)["messages"] == 0


def test_topic_publish_with_a_dedup_id(ctl: Ctl) -> None:
    name = qname()
    ctl.run("topic", "create", name, "--dedup-window-ms", "600000")
    assert ctl.run("topic", "publish", name, "order 1", "--dedup-id", "order-1").stdout == \
        f"published 1 message to topic {name}: id 1\n"
    assert ctl.run("topic", "publish", name, "order 1 again", "--dedup-id", "order-1").stdout == \
        f"duplicate in topic {name}: nothing stored; the message published first is id 1\n"
    assert ctl.json("topic", "publish", name, "again", "--dedup-id", "order-1") == {
        "topic": name, "count": 1, "batches": [{"first_id": 2, "count": 0, "duplicates": [[0, 1]]}]}
    assert ctl.json("topic", "publish", name, "order 2", "--dedup-id", "order-2") == {
        "topic": name, "count": 1, "batches": [{"first_id": 2, "count": 1}]}
    assert ctl.json("topic", "stats", name)["published"] == 2
    for extra in (["--count", "2"], ["--file", "-"]):
        args = ["topic", "publish", name, *(["x"] if extra[0] == "--count" else []), "--dedup-id", "d", *extra]
        assert "--dedup-id cannot be used" in ctl.run(*args, input="x\n", expect=2).stderr
    assert "--dedup-window-ms" in ctl.run("topic", "create", "--help").stdout
    assert "--dedup-id" in ctl.run("topic", "publish", "--help").stdout
    result = ctl.run("topic", "create", qname(), "--dedup-window-ms", "86400001", expect=2)
    assert "dedup-window-ms" in result.stderr
