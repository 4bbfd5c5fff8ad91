"""The timer benchmark (tools.timerbench) at a small count: real brokers, a report whose
figures agree with what was done to them.

Nothing here asserts how late messages may be (the machine decides that), only what
must hold on any machine: every message arrives, none before its time (beyond the
clock's half-millisecond reading error), and the memory figure is the growth it claims."""
from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from tools.timerbench import (BODY_SIZE, DiskProbe, Lateness, body, default_lead_s, due_times, fdatasync_ms, index_of,
                              main, probe_budget_s, run, table)

COUNT = 2_000


def test_lateness_percentiles() -> None:
    late = Lateness.of([float(x) for x in range(100, 0, -1)])
    assert (late.count, late.p50_ms, late.p99_ms, late.max_ms, late.min_ms) == (100, 51.0, 100.0, 100.0, 1.0)
    assert late.over_target == 90  # 11..100 ms
    assert Lateness.of([]).count == 0


def test_due_times_spread_over_the_window() -> None:
    times = list(due_times(1_000, 1_000_000.0, 2.0))
    assert times[0] == 1_000_000 and times[-1] == 1_000_000 + 1_998
    assert times == sorted(times)
    assert index_of(body(123_456)) == 123_456 and len(body(7)) == BODY_SIZE


def test_default_lead_leaves_room_for_a_slow_load() -> None:
    # A shared machine loaded 1,000,000 messages with a delay at 33,000 a second: the
    # default lead must cover loads well below that, so no message falls due unseen.
    for count in (10, 200_000, 1_000_000):
        assert default_lead_s(count) >= 3 + count / 15_000


def test_fdatasync_probes_before_a_window_keep_to_their_budget(tmp_path: Path) -> None:
    assert probe_budget_s(2_000) == 0.5 and probe_budget_s(-5) == 0.0
    t = time.perf_counter()
    p50, p99 = fdatasync_ms(tmp_path, count=1_000_000, budget_s=0.05)
    assert time.perf_counter() - t < 5  # a million would take minutes: the budget stopped them
    assert 0 < p50 <= p99
    assert fdatasync_ms(tmp_path, count=3, budget_s=0.0)[0] > 0  # at least one, whatever the budget
    assert not list(tmp_path.iterdir())


def test_disk_probe_times_fdatasyncs_until_left(tmp_path: Path) -> None:
    with DiskProbe(tmp_path, interval_s=0.01) as probe:
        deadline = time.monotonic() + 30
        while len(probe.samples) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)  # a real thread on a real disk: a bounded poll
    taken = len(probe.samples)
    time.sleep(0.05)
    assert len(probe.samples) == taken  # stopped on leaving
    p50, p99, top = probe.percentiles()
    assert 0 < p50 <= p99 <= top == max(probe.samples)
    assert not list(tmp_path.iterdir())  # its probe file removed
    assert DiskProbe(tmp_path).percentiles() == (0.0, 0.0, 0.0)


def test_report_at_a_small_count(tmp_path: Path) -> None:
    report = run(tmp_path, COUNT, "always", lead_s=2.0, window_s=1.0)
    assert [p.name for p in report.phases] == ["plain", "ttl", "delayed"]
    assert report.count == COUNT and report.fsync == "always"
    for p in report.phases:
        assert p.messages == COUNT and p.load_s > 0
        # The bodies alone grow the heap: at least that much, whatever the rest costs.
        assert p.rss_after - p.rss_before >= COUNT * BODY_SIZE
        assert p.bytes_per_message == (p.rss_after - p.rss_before) / COUNT
    assert report.phase("plain").lateness is None
    for name in ("ttl", "delayed"):
        p = report.phase(name)
        late = p.lateness
        assert late is not None
        assert p.missing == 0 and p.due_before_ready == 0
        assert late.count == COUNT  # every message, each once
        assert -1.5 < late.min_ms <= late.p50_ms <= late.p99_ms <= late.max_ms
        assert 0 <= late.over_target <= COUNT
        assert p.due_per_s == COUNT / report.window_s
        assert abs(p.clock_offset_ms[0] - p.clock_offset_ms[1]) < 5
        assert 0 < p.fdatasync_ms[0] <= p.fdatasync_ms[1]
        assert 0 < p.window_fdatasync_ms[0] <= p.window_fdatasync_ms[1] <= p.window_fdatasync_ms[2]
    broker_side = report.phase("ttl").broker_lateness
    assert broker_side is not None and broker_side.count >= 10
    assert broker_side.min_ms >= 0  # never dead-lettered before its expiry, on the server's own clock
    text = table(report)
    assert "| ttl |" in text and "| delayed |" in text and "broker side" in text


def test_cli_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--count", "200", "--phases", "delayed", "--fsync", "never",
                                       "--lead-s", "1", "--window-s", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [phase] = report["phases"]
    assert phase["name"] == "delayed" and phase["lateness"]["count"] == 200 and phase["missing"] == 0
