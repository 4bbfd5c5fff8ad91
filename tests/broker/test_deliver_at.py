"""Publish entry element 6, ``deliver_at``: an absolute time instead of ``delay_ms``."""
from __future__ import annotations

from typing import Any

import pytest

from protocol import MAX_DELAY_MS, ErrorCode

from .test_inspection_ops import T0, World


@pytest.fixture
def world() -> World:
    w = World()
    w.call("queue_create", queue="q")
    return w


def test_a_message_is_invisible_until_its_time(world: World) -> None:
    world.call("publish", queue="q", messages=[[b"later", None, None, None, None, None, T0 + 5000],
                                               [b"past", None, None, None, None, None, T0 - 5000]])
    assert [m[1] for m in world.call("consume", queue="q", max=5)["messages"]] == [b"past"]
    (status,) = world.call("message_status", queue="q", ids=[1])["statuses"]
    assert (status["state"], status["until_ms"]) == ("delayed", T0 + 5000)
    world.advance(4999)
    assert world.call("consume", queue="q")["messages"] == []
    world.advance(1)
    assert [m[1] for m in world.call("consume", queue="q")["messages"]] == [b"later"]
    assert world.replayed().snapshot() == world.state.snapshot()


@pytest.mark.parametrize("entry", [
    [b"x", None, None, 10, None, None, T0 + 5000],          # with delay_ms
    [b"x", None, None, None, None, None, T0 + MAX_DELAY_MS + 1],  # too far ahead
    [b"x", None, None, None, None, None, -1],
    [b"x", None, None, None, None, None, 1.5],
    [b"x", None, None, None, None, None, True],
])
def test_deliver_at_is_checked(world: World, entry: list[Any]) -> None:
    world.refused("publish", ErrorCode.INVALID_ARGUMENT, "messages[0].deliver_at", queue="q", messages=[entry])
