"""tools/loadtest: a small run (200 authenticated connections, a few seconds) shows every
phase answering the pinger, the buffer fill refused with MEMORY_LIMIT and the broker's
memory bounded by its budget."""
from __future__ import annotations

from tools import loadtest

MIB = 1024 * 1024


def test_a_small_run_keeps_pinging_and_stays_within_the_budget() -> None:
    budget = 16 * MIB
    plan = loadtest.Plan(connections=200, producers=2, consumers=2, slowloris=50, fillers=6, amplifiers=2,
                         queues=300, phase_s=1.0, budget=budget, auth=True, fill_mib_s=50)
    phases = {p.name: p for p in loadtest.run(plan)}
    assert list(phases) == ["baseline", "idle", "load", "slowloris", "buffer-fill", "amplification", "after"]
    assert phases["idle"].notes["idle_open"] == 200
    for phase in phases.values():
        assert phase.pings > 0 and phase.ping_failures == 0, phase
        assert phase.budget_used_max <= budget + 6 * 64 * 1024 + MIB, phase
    fill = phases["buffer-fill"]
    assert fill.notes["fill_refused"] >= 1, fill
    # Six fillers of 16 MiB frames would pin 96 MiB without the budget.
    assert fill.rss_max_kib - phases["baseline"].rss_end_kib <= 4 * budget // 1024, fill
    assert phases["amplification"].notes["amp_requests_sent"] > 0
