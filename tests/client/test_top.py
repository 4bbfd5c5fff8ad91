"""brokerctl top (client/cli/top.py).

- ``--once`` through click's runner against a real broker: one row per queue and group,
  with its counts, its dead-letter queue's depth and the oldest ready message's wait;
  ``--json`` the same rows parsed; ``--sort``.
- The rates from two samples, and the sort keys, without a broker.
- The live view in a pseudo-terminal: it draws, a key changes the sort column, ``q``
  quits with status 0.
"""
from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid
from dataclasses import replace

import pytest
from click.testing import CliRunner

from client import SyncClient
from client.cli import main
from client.cli.top import Row, Sample, Sort, make_rows
from client.types import BrokerInfo, QueueStats
from tests.broker_process import ROOT


def qname() -> str:
    return f"top-{uuid.uuid4().hex[:8]}"


def top(addr: tuple[str, int], *args: str) -> str:
    result = CliRunner().invoke(main, ["top", *args, "--addr", f"{addr[0]}:{addr[1]}"])
    assert result.exit_code == 0, result.output
    return result.output


def row_of(output: str, name: str) -> list[str]:
    """The cells of the line for ``name`` (the name itself may hold a space: `(group)`)."""
    line = next(line for line in output.splitlines() if line.startswith(name + " "))
    return line[len(name):].replace("(group)", "").split()


def test_once_shows_each_queue_and_group(sync_broker_addr: tuple[str, int]) -> None:
    jobs, dlq, topic = qname(), qname(), qname()
    with SyncClient(sync_broker_addr) as lg:
        lg.create_queue(dlq)
        lg.create_queue(jobs, dead_letter=dlq, max_attempts=1)
        lg.publish_batch(jobs, [b"a", b"b", b"c", b"d"])
        lg.publish(jobs, b"later", delay_ms=3_600_000)
        lg.consume(jobs, max=1)                                         # a leased
        lg.publish_batch(dlq, [b"x", b"y"])
        lg.create_topic(topic)
        lg.create_group(topic, "billing")
        lg.publish_topic(topic, [b"o1", b"o2", b"o3"])
    output = top(sync_broker_addr, "--once")
    assert re.search(r"\d+ connections?, \d+ queues?", output.splitlines()[0])
    #                              DEPTH READY LEASED DELAYED DEAD PUB/S DEL/S
    assert row_of(output, jobs)[:7] == ["5", "3", "1", "1", "2", "-", "-"]
    assert row_of(output, dlq)[:7] == ["2", "2", "0", "0", "-", "-", "-"]
    assert row_of(output, f"{topic}/billing")[:5] == ["3", "3", "0", "0", "-"]
    assert re.fullmatch(r"\d+\.\ds", row_of(output, jobs)[7])          # b has waited a while
    names = [line.split()[0] for line in output.splitlines() if line.startswith("top-")]
    assert names.index(jobs) < names.index(dlq)                          # deepest first

    by_name = top(sync_broker_addr, "--once", "--sort", "name")
    ordered = [line.split()[0] for line in by_name.splitlines() if line.startswith("top-")]
    assert ordered == sorted(ordered) and "NAME↑" in by_name


def test_json_rows(sync_broker_addr: tuple[str, int]) -> None:
    q = qname()
    with SyncClient(sync_broker_addr) as lg:
        lg.create_queue(q)
        lg.publish_batch(q, [b"1", b"2"])
        lg.consume(q, max=2)
        lg.nack(q, [1])
    doc = json.loads(top(sync_broker_addr, "--json"))
    row = next(r for r in doc["rows"] if r["name"] == q)
    assert row == {"name": q, "kind": "queue", "depth": 2, "ready": 1, "leased": 1, "delayed": 0, "dead": None,
                   "publish_rate": None, "deliver_rate": None, "oldest_age_s": row["oldest_age_s"]}
    assert row["oldest_age_s"] >= 0 and doc["broker"]["connections"] >= 1


# --- without a broker ---------------------------------------------------------------


def stats(name: str, *, published: int, delivered: int, ready: int = 0, oldest: int = 0) -> QueueStats:
    return QueueStats(name, "fifo", 1, 30000, 0, None, 10_000_000, ready, 0, 0, ready, published, 0, 0, 0, 0, 0,
                      delivered=delivered, oldest_ready_at=oldest)


def sample(at: float, now_ms: int, *queues: QueueStats) -> Sample:
    info = BrokerInfo("lockgate/test", "n", now_ms, 0, now_ms, "always", 100, "/d", 1, 0, 1, len(queues), 0, 0, "off")
    return Sample(at, info, queues, ())


def test_rates_are_counter_differences_over_the_time_between_samples() -> None:
    first = sample(10.0, 1_000_000, stats("a", published=100, delivered=40), stats("b", published=5, delivered=5))
    second = sample(12.0, 1_002_000, stats("a", published=300, delivered=90, ready=3, oldest=995_500),
                    stats("b", published=2, delivered=0), stats("c", published=7, delivered=0))
    rows = {r.name: r for r in make_rows(second, first)}
    assert (rows["a"].publish_rate, rows["a"].deliver_rate, rows["a"].oldest_age_s) == (100.0, 25.0, 6.5)
    assert rows["b"].publish_rate is None                             # counters went back: made anew
    assert rows["c"].publish_rate is None and rows["c"].oldest_age_s is None   # new; nothing ready
    assert all(r.publish_rate is None for r in make_rows(second))     # one sample: no rates


def test_sort_keys() -> None:
    rows = [Row("b", "queue", 5, 5, 0, 0, None, 1.0, None, 9.0), Row("a", "queue", 1, 1, 0, 0, None, 3.0, None, None),
            Row("c", "queue", 9, 0, 9, 0, None, None, None, 2.0)]
    names = lambda s: [r.name for r in s.apply(rows)]  # noqa: E731
    assert names(Sort()) == ["c", "b", "a"]                           # depth, largest first
    assert names(Sort().pressed("d")) == ["a", "b", "c"]              # again: reversed
    assert names(Sort().pressed("p")) == ["a", "b", "c"]              # rate; none ("-") last
    assert names(Sort().pressed("a")) == ["b", "c", "a"]
    assert names(Sort().pressed("n")) == ["a", "b", "c"] and names(Sort("name", True)) == ["c", "b", "a"]
    assert Sort().pressed("?") == Sort()
    assert replace(Sort(), column="age").pressed("a") == Sort("age", True)


# --- the live view ---------------------------------------------------------------------


def test_live_view_sorts_by_key_and_quits_on_q(sync_broker_addr: tuple[str, int]) -> None:
    q = qname()
    with SyncClient(sync_broker_addr) as lg:
        lg.create_queue(q)
        lg.publish(q, b"m")
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "150", "LINES": "40", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from client.cli import main; main()", "top", "--interval", "0.5",
         "--addr", f"{sync_broker_addr[0]}:{sync_broker_addr[1]}"],
        stdin=follower, stdout=follower, stderr=follower, cwd=ROOT, env=env, close_fds=True)
    os.close(follower)
    seen = b""

    def read_until(pattern: bytes, timeout: float = 30) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout                           # a real process: bounded poll
        while pattern not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                pytest.fail(f"no {pattern!r} from brokerctl top: {seen[-2000:]!r}")
            if select.select([leader], [], [], min(left, 0.5))[0]:
                try:
                    seen += os.read(leader, 65536)
                except OSError:
                    break

    try:
        read_until(q.encode())
        assert "DEPTH↓".encode() in seen
        os.write(leader, b"p")                                          # sort by PUB/S
        read_until("PUB/S↓".encode())
        os.write(leader, b"q")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
