"""Idempotent publish over real sockets on trio's MockClock (SPEC §8.9): the dedup window
counts from the first publish with an id, and the reply names duplicates."""
from __future__ import annotations

import trio
import trio.testing

from protocol import Reply

from .rawclient import RawClient


async def test_the_dedup_window_on_the_broker_clock(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await RawClient.open(broker_addr)
    assert isinstance(await c.call("queue_create", {"queue": "q", "dedup_window_ms": 10_000}), Reply)

    async def publish(*entries: list[object]) -> dict[str, object]:
        reply = await c.call("publish", {"queue": "q", "messages": list(entries)})
        assert isinstance(reply, Reply), reply
        result: dict[str, object] = reply.result
        return result

    assert await publish([b"a", None, None, None, None, b"id-1"]) == {"first_id": 1, "count": 1}
    await trio.sleep(9.999)
    assert await publish([b"a", None, None, None, None, b"id-1"], [b"b"]) == {
        "first_id": 2, "count": 1, "duplicates": [[0, 1]]}
    await trio.sleep(0.001)  # 10 s after the first publish: forgotten
    assert await publish([b"a", None, None, None, None, b"id-1"]) == {"first_id": 3, "count": 1}
    # all duplicates: nothing stored, first_id is the queue's next id
    assert await publish([b"a", None, None, None, None, b"id-1"], [b"c", None, None, None, None, b"id-1"]) == {
        "first_id": 4, "count": 0, "duplicates": [[0, 3], [1, 3]]}
    stats = (await c.call("queue_stats", {"queue": "q"})).result
    assert (stats["published"], stats["messages"]) == (3, 3)
