"""tools/authbench: a short run connects with each kind and times every connect."""
from __future__ import annotations

from tools import authbench


def test_a_short_run_times_every_kind() -> None:
    times = authbench.run(connects=5, rounds=1, iterations=4096)
    assert {kind: len(ms) for kind, ms in times.items()} == {"none": 15, "scram": 5, "scram cold": 5, "token": 5}
    assert all(0 < t < 10_000 for ms in times.values() for t in ms)
