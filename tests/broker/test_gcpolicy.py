"""The running broker's collector settings (broker/gcpolicy.py): many objects that
outlive a young collection, as 10,000 new connections make, go through the middle
generation in small batches, and full collections stay rare."""
from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from broker import gcpolicy


@pytest.fixture
def tuned() -> Iterator[list[int]]:
    """The broker's thresholds for the test; the generation of each collection meanwhile."""
    before = gc.get_threshold()
    collections: list[int] = []

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gcpolicy.tune()
    gc.callbacks.append(seen)
    try:
        yield collections
    finally:
        gc.callbacks.remove(seen)
        gc.set_threshold(*before)


class Held:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[object] = [[], {}]


def test_survivors_go_through_the_middle_generation_in_small_batches(tuned: list[int]) -> None:
    kept = [Held() for _ in range(400_000)]  # 1,200,000 tracked objects that all survive
    young_before_each_middle: list[int] = []
    young = 0
    for generation in tuned:
        if generation == 0:
            young += 1
        else:
            young_before_each_middle.append(young)
            young = 0
    assert len(young_before_each_middle) >= 5, tuned  # many middle collections,
    # each taking what survived a few young ones (CPython: threshold + 1 of them)
    assert max(young_before_each_middle) <= gcpolicy.THRESHOLDS[1] + 1, tuned
    assert 2 not in tuned  # and no full collection
    assert len(kept) == 400_000


def test_the_pause_tool_measures_the_brokers_policy() -> None:
    from tools import gcpause

    broker = gcpause.run_once(gcpause.BROKER)
    assert broker["thresholds"] == ",".join(map(str, gcpolicy.THRESHOLDS))
    count, longest, total = broker["1"]
    assert count >= 3 and 0 < longest <= total
    assert broker["2"][0] == 0
