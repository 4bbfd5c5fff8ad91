"""How long the broker's cyclic-collector pauses are when many objects outlive a young
collection (as the objects of 10,000 new connections do), for the broker's generation
thresholds (``broker/gcpolicy.py``) and others given for comparison.

    python -m tools.gcpause                          # the broker's policy, and CPython's defaults
    python -m tools.gcpause --thresholds 50000,20,100 --runs 5

Each run is a fresh process: it makes 10,000 holders of about 100 container objects each
(a million objects that survive), with short-lived garbage between them, then 200
bursts of short-lived objects, and times every collection with ``gc.callbacks``. It
prints, per generation, the collections, the longest pause and their total (ms).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from typing import Any

import click

#: Stands for the broker's own policy: the child applies ``broker.gcpolicy.tune()``.
BROKER = "broker"

_CHILD = r"""
import gc, json, sys, time
if sys.argv[1] == "broker":
    from broker import gcpolicy
    gcpolicy.tune()
else:
    gc.set_threshold(*json.loads(sys.argv[1]))
label = ",".join(map(str, gc.get_threshold()))
pauses = {0: [], 1: [], 2: []}
started = [0.0]
def timed(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses[info["generation"]].append(time.perf_counter() - started[0])
gc.callbacks.append(timed)
class Holder:
    __slots__ = ("a", "b", "c")
    def __init__(self):
        self.a = [None] * 4
        self.b = {"x": [1]}
        self.c = [[] for _ in range(20)]
kept = []
for i in range(10_000):
    kept.append([Holder() for _ in range(4)])
    garbage = [{"k": [i]} for _ in range(200)]
for r in range(200):
    garbage = [{"k": [r, [1, 2]]} for _ in range(5_000)]
print(json.dumps({"thresholds": label,
                  **{g: [len(p), 1000 * max(p, default=0.0), 1000 * sum(p)] for g, p in pauses.items()}}))
"""


def run_once(setting: str) -> dict[str, Any]:
    """One fresh process's collections under ``setting`` (``BROKER``, or thresholds as
    JSON): the thresholds, and {generation: [count, longest ms, total ms]}."""
    out = subprocess.run([sys.executable, "-c", _CHILD, setting], capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


@click.command()
@click.option("--thresholds", "extra", multiple=True, help="Other thresholds to compare (a,b,c).")
@click.option("--runs", type=click.IntRange(1), default=3, show_default=True, help="Runs per setting (medians).")
def main(extra: tuple[str, ...], runs: int) -> None:
    """Collector pauses under the broker's thresholds and others."""
    settings = [BROKER, "[700, 10, 10]"] + [json.dumps([int(x) for x in t.split(",")]) for t in extra]
    click.echo("| thresholds | generation | collections | longest ms (median) | total ms (median) |")
    click.echo("|---|---|---:|---:|---:|")
    for setting in settings:
        results = [run_once(setting) for _ in range(runs)]
        label = results[0]["thresholds"] + (" (the broker's)" if setting == BROKER else "")
        for gen in ("0", "1", "2"):
            count = statistics.median(r[gen][0] for r in results)
            longest = statistics.median(r[gen][1] for r in results)
            total = statistics.median(r[gen][2] for r in results)
            click.echo(f"| {label} | {gen} | {count:g} | {longest:.1f} | {total:.0f} |")


if __name__ == "__main__":
    main()
