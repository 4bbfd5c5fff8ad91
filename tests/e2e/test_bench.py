"""The topic, fan-out, transaction and topic-recovery scenarios of tools.bench at a tiny
scale, against real broker processes: each does what it claims to the broker, and the
report's figures agree with that.

Nothing here asserts a rate or a duration (the machine decides those), only what must
hold on any machine: the counts, what the broker holds afterwards, and that the log
grows by the same bytes per message however many groups a topic has."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from protocol import GROUP_WINDOW
from tests.broker_process import BrokerProcess
from tools.bench import (
    BODY_SIZE,
    SCENARIOS,
    TOPIC_GROUPS,
    Wire,
    cleanup,
    cpu_seconds,
    main,
    measure_topic_replay,
    prepare,
    wal_end,
)

MESSAGES = 2_000


def _run(wire: Wire, data: Path, scenario: str, name: str) -> tuple[int, int]:
    """``scenario`` on ``name`` as the bench runs it: (messages it counts, log growth)."""
    prepare(wire, scenario, name, MESSAGES)
    before = wal_end(data)
    n, seconds, latencies = SCENARIOS[scenario](wire, name, MESSAGES)
    assert seconds > 0 and latencies
    return n, wal_end(data) - before


def test_topic_publish_logs_each_message_once_whatever_the_groups(broker_process: BrokerProcess) -> None:
    wire = Wire(broker_process.host, broker_process.port)
    growth = {}
    for scenario in ("topic-publish-1", "topic-publish-4", "topic-publish-16"):
        groups = TOPIC_GROUPS[scenario]
        name = f"t{groups:02d}"  # names of one length: records of one size
        n, growth[groups] = _run(wire, broker_process.data_dir, scenario, name)
        assert n == MESSAGES
        stats = wire.call("topic_stats", {"topic": name})
        assert stats["messages"] == stats["published"] == MESSAGES
        assert stats["groups"] == sorted(f"g{g}" for g in range(groups))
        for g in range(groups):  # nobody consumed: each holds its window, the rest is lag
            group = wire.call("group_stats", {"topic": name, "group": f"g{g}"})
            assert GROUP_WINDOW // 2 < group["ready"] <= GROUP_WINDOW
            assert group["ready"] + group["lag"] == MESSAGES and group["acked"] == 0
        cleanup(wire, scenario, name)
        assert name not in {t["topic"] for t in wire.call("topic_list", {})["topics"]}
    # Bodies and their framing, nothing per group.
    assert growth[1] == growth[4] == growth[16]
    assert MESSAGES * BODY_SIZE < growth[1] < MESSAGES * (BODY_SIZE + 8)
    wire.close()


def test_fanout_delivers_every_message_to_every_group(broker_process: BrokerProcess) -> None:
    wire = Wire(broker_process.host, broker_process.port)
    n, _ = _run(wire, broker_process.data_dir, "fanout-4", "fan")
    assert n == 4 * MESSAGES
    for g in range(4):
        group = wire.call("group_stats", {"topic": "fan", "group": f"g{g}"})
        assert (group["acked"], group["messages"], group["lag"]) == (MESSAGES, 0, 0)
    stats = wire.call("topic_stats", {"topic": "fan"})
    assert stats["messages"] == 0 and stats["reclaimed"] == MESSAGES  # every group acked every one
    cleanup(wire, "fanout-4", "fan")
    wire.close()


def test_txn_acks_each_input_and_publishes_its_output(broker_process: BrokerProcess) -> None:
    wire = Wire(broker_process.host, broker_process.port)
    n, logged = _run(wire, broker_process.data_dir, "txn", "work")
    assert n == MESSAGES
    inputs = wire.call("queue_stats", {"queue": "work"})
    assert (inputs["messages"], inputs["acked"]) == (0, MESSAGES)
    assert wire.call("queue_stats", {"queue": "work-out"})["ready"] == MESSAGES
    assert logged > MESSAGES * BODY_SIZE  # one record per transaction: its ack and its body
    cleanup(wire, "txn", "work")
    assert not {"work", "work-out"} & {q["queue"] for q in wire.call("queue_list", {})["queues"]}
    wire.close()


def test_cpu_seconds_counts_this_process() -> None:
    import os

    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn 50 ms of CPU
        pass
    assert cpu_seconds(os.getpid()) - before >= 0.03  # 10 ms clock ticks


def test_topic_recovery_from_the_log_and_from_the_snapshot(tmp_path: Path) -> None:
    one = measure_topic_replay(3_000, tmp_path / "one", groups=4)
    assert one["log_records"] == 1 + 4 + 3_000  # the topic, its groups, a record per message
    assert one["snapshot_records"] < one["log_records"]  # the clean stop left a snapshot
    for label in ("log", "snapshot"):
        assert 0 < one[f"{label}_seconds"] < one[f"{label}_listening_s"]
    batched = measure_topic_replay(2_500, tmp_path / "batched", groups=2, per_record=1_000)
    assert batched["log_records"] == 1 + 2 + 3


def test_the_command_reports_the_new_scenarios(tmp_path: Path) -> None:
    only = "topic-publish-1,fanout-4,txn"
    result = CliRunner().invoke(main, ["--only", only, "--runs", "1", "--scale", "0.01", "--policies", "never",
                                       "--replay-records", "0", "--topic-replay", "1000", "--json"])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.output)
    rows = {r["scenario"]: r for r in report["results"]}
    assert list(rows) == only.split(",")
    assert rows["topic-publish-1"]["messages"] == 3_000 and rows["fanout-4"]["messages"] == 4_000
    for row in rows.values():
        assert row["msg_per_s"] > 0 and row["wal_bytes_per_msg"] > 0
        assert row["broker_cpu_us_per_msg"] >= 0
    # Publishing and delivering cost the broker CPU (clock ticks of 10 ms: summed over the runs).
    assert sum(row["broker_cpu_us_per_msg"] for row in rows.values()) > 0
    assert rows["topic-publish-1"]["wal_bytes_per_msg"] > BODY_SIZE
    assert report["topic_replay"]["messages"] == 1_000 and report["topic_replay"]["groups"] == 16
    bad = CliRunner().invoke(main, ["--only", "topic-publish-2"])
    assert bad.exit_code != 0 and "unknown scenarios" in bad.output


def test_tls_runs_each_scenario_on_a_plain_and_a_tls_broker(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--tls", "--only", "batch-publish,push-ack-4", "--runs", "2", "--scale",
                                       "0.01", "--policies", "never", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["scenario"]: r for r in json.loads(result.output)["tls"]}
    assert list(rows) == ["batch-publish", "push-ack-4"]
    for row in rows.values():
        assert row["runs"] == 2 and row["off_msg_per_s"] > 0 and row["on_msg_per_s"] > 0
        assert row["ratio"] == row["on_msg_per_s"] / row["off_msg_per_s"]
    bad = CliRunner().invoke(main, ["--tls", "--addr", "127.0.0.1:1"])
    assert bad.exit_code != 0 and "--tls starts brokers of its own" in bad.output
