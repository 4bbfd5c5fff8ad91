"""The durability benchmark (tools.durabench) at tiny scale: every figure runs against real
broker processes and reports numbers that agree with what was done to the broker.

Nothing here asserts a rate or a duration: how fast the machine is changes the figures,
not whether they agree. The figures that need checkpoints wait for them
(``min_checkpoints``), and rates are checked only against the throttle's own rule."""
from __future__ import annotations

import re
from pathlib import Path

from tools.durabench import (
    MiB,
    NO_CHECKPOINTS,
    checkpoint_p99,
    checkpoints_in,
    recovery_churn,
    recovery_live,
    wal_size,
)


def test_checkpoint_log_lines_parse() -> None:
    text = ("2024-06-11 10:00:05,500 INFO lockgate.checkpoint: checkpoint at LSN 123 in 0.250 s; removed 2 files\n"
            "2024-06-11 10:00:06,000 INFO lockgate: something else\n")
    [(start, end)] = checkpoints_in(text)
    assert abs((end - start) - 0.25) < 1e-6


def test_every_figure_at_tiny_scale(tmp_path: Path) -> None:
    # 1. Live messages: all of them come back after SIGKILL and after SIGTERM; the clean
    # shutdown left a snapshot, so the second start replays nothing.
    live = recovery_live(tmp_path, messages=20_000)
    assert live.messages == 20_000
    for r in (live.after_sigkill, live.after_sigterm):
        assert r.messages == r.queue_messages == 20_000
        assert r.queues == 1
        assert 0 < r.seconds < r.listening_after_s
    assert live.after_sigkill.records >= 2  # the queue's creation and its (folded) publish records
    assert live.sigterm_exit_status == 0
    assert live.after_sigterm.snapshot_lsn > 0 and live.after_sigterm.records == 0
    assert live.wal_bytes_before_kill > 20_000 * 128
    assert live.passed

    # 2. Churn with small checkpoints: the acked messages are gone, the live ones stay,
    # and recovery started from a snapshot.
    churn = recovery_churn(tmp_path, messages=50_000, live=5_000, segment_bytes=MiB, checkpoint_bytes=MiB,
                           chunk=5_000, min_checkpoints=1)
    assert churn.churned == 50_000
    assert churn.checkpoints >= 1
    r = churn.after_sigkill
    assert r.messages == r.queue_messages == 5_000
    assert r.queues == 2
    assert r.snapshot_lsn > 0
    # Checkpoints removed segments. (How much of the log they removed by the kill
    # depends on how fast their children ran beside the churn.)
    assert churn.oldest_segment_lsn > 0 and churn.wal_bytes_before_kill > 0
    assert churn.passed == (r.seconds <= 2.0)

    # 3. WAL size: sampled at most once a second, throttled to half the measured peak.
    ws = wal_size(tmp_path, seconds=3.0, segment_bytes=MiB, checkpoint_bytes=MiB, peak_seconds=1.0,
                  min_checkpoints=1)
    assert ws.elapsed_s >= 3.0 and ws.interval_s == 1.0
    assert 1 <= ws.samples <= ws.elapsed_s / ws.interval_s + 1
    assert ws.peak_msg_per_s > 0 and ws.target_msg_per_s == ws.peak_msg_per_s / 2
    # The throttle is at most one chunk ahead of the target rate, however fast it runs.
    assert 0 < ws.messages <= ws.target_msg_per_s * ws.load_seconds + ws.chunk
    assert ws.achieved_msg_per_s == ws.messages / ws.load_seconds
    assert ws.checkpoints >= 1
    assert 0 < ws.mean_wal_bytes <= ws.max_wal_bytes
    assert ws.bound_bytes == 2 * ws.max_live_bytes + 2 * MiB
    assert ws.max_live_bytes % 128 == 0
    assert ws.passed == (ws.max_wal_bytes < ws.bound_bytes)

    # 4. Latency: checkpoints happen in the first run and never in the second.
    cp = checkpoint_p99(tmp_path, live=5_000, seconds=2.0, checkpoint_bytes=MiB, peak_seconds=1.0,
                        min_checkpoints=1)
    w, wo = cp.with_checkpoints, cp.without_checkpoints
    assert w.checkpoints >= 1 and len(w.checkpoint_seconds) == w.checkpoints
    assert 1 <= w.samples_during_checkpoints <= w.samples
    assert wo.checkpoints == 0 and wo.samples_during_checkpoints == 0
    assert wo.checkpoint_bytes == NO_CHECKPOINTS
    for run in (w, wo):
        assert run.samples >= 50  # one batch of sequential publishes at least
        assert 0 < run.p50_us <= run.p99_us
        assert run.background_msg_per_s > 0
        assert run.background_target_msg_per_s == cp.peak_msg_per_s / 2
    assert cp.p99_ratio == w.during_p99_us / wo.p99_us
    assert cp.passed == (cp.p99_ratio <= 3.0)

    # Every broker was stopped and every data directory removed.
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]
    assert all(re.search(r"-broker\.log$", p.name) for p in tmp_path.iterdir())
