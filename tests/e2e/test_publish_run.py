"""Requests pipelined in one write get exactly the replies they get one at a time.

The broker applies a run of plain single-message publishes from one read as one
publish, and runs at most ``ROUND_REQUESTS`` requests of a connection per round; this
checks that nothing a client can see depends on either.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import server
from broker.config import ROUND_REQUESTS, BrokerConfig
from broker.mutations import Publish
from broker.server import Broker
from broker.wal import replay
from protocol import Reply

from .rawclient import RawClient

MAX_MESSAGE = 16

plain = st.tuples(st.just("publish"), st.sampled_from(["a", "a", "a", "a", "b", "missing"]),
                  st.binary(max_size=MAX_MESSAGE + 2).map(lambda b: {"messages": [[b]]}))
#: One message with a dedup id (a few ids, so duplicates within a run and across runs).
deduplicated = st.tuples(
    st.just("publish"), st.sampled_from(["a", "a", "b"]),
    st.tuples(st.binary(max_size=MAX_MESSAGE + 2), st.sampled_from([b"d1", b"d2", b"d3", b"", b"x" * 129])).map(
        lambda e: {"messages": [[e[0], None, None, None, None, e[1]]]}))
other = st.one_of(
    st.tuples(st.just("publish"), st.sampled_from(["a", "b"]),
              st.just({"messages": [[b"k", b"key"]]})),
    st.tuples(st.just("publish"), st.just("a"), st.just({"messages": [[b"x"], [b"y"]]})),
    st.tuples(st.just("publish"), st.just("a"), st.just({"messages": [["text"]]})),
    st.tuples(st.just("publish"), st.just("a"), st.just({"messages": [[b"x"]], "extra": 1})),
    st.tuples(st.just("queue_stats"), st.sampled_from(["a", "b"]), st.just({})),
    st.tuples(st.just("consume"), st.sampled_from(["a", "b"]), st.just({"max": 2})),
    st.tuples(st.just("ack"), st.sampled_from(["a", "b"]), st.just({"ids": [1, 2]})),
)
#: Blocks of one request repeated, so that runs of publishes to one queue are common.
requests = st.lists(st.tuples(st.one_of(plain, plain, deduplicated, other), st.integers(1, 8)),
                    min_size=1, max_size=12).map(lambda blocks: [r for r, n in blocks for _ in range(n)])


async def start(nursery: trio.Nursery, data: Path) -> RawClient:
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=data, max_message=MAX_MESSAGE))
    await nursery.start(broker.serve)
    host, port = broker.addr.rsplit(":", 1)
    c = await RawClient.open((host, int(port)))
    for name in ("a", "b"):
        assert isinstance(await c.call("queue_create", {"queue": name, "max_messages": 10}), Reply)
    return c


def request_args(queue: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"queue": queue, **extra}


def timeless(result: Any) -> Any:
    """A reply's result with each delivery's ``published_at`` (its broker's clock) checked
    and left out, so the replies of two brokers compare."""
    if isinstance(result, dict) and isinstance(result.get("messages"), list):
        assert all(d[5] > 0 for d in result["messages"])
        return {**result, "messages": [d[:5] for d in result["messages"]]}
    if isinstance(result, dict) and "oldest_ready_at" in result:  # queue_stats
        assert (result["oldest_ready_at"] > 0) == (result["ready"] > 0)
        return {k: v for k, v in result.items() if k != "oldest_ready_at"}
    return result


async def replies(c: RawClient, count: int) -> list[tuple[Any, ...]]:
    out = []
    for _ in range(count):
        f = await c.frame()
        out.append((type(f).__name__, f.id, timeless(getattr(f, "result", None)), getattr(f, "code", None),
                    getattr(f, "details", None)))
    return out


@pytest.fixture(params=[ROUND_REQUESTS, 5])
def round_requests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The default bound on a round, and one small enough to cut runs and blocks."""
    monkeypatch.setattr(server, "ROUND_REQUESTS", request.param)
    return int(request.param)


# The fixture's setting holds for every example: that is what it is for.
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=requests)
async def test_one_write_or_one_at_a_time_gives_the_same_replies(
        round_requests: int, reqs: list[tuple[str, str, dict[str, Any]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            together = await start(nursery, Path(tmp) / "together")
            alone = await start(nursery, Path(tmp) / "alone")
            frames = []
            for op, queue, extra in reqs:
                rid = together.next_id
                together.next_id += 1
                frames.append(together.enc.request(rid, op, request_args(queue, extra)))
            await together.send_raw(b"".join(frames))
            got_together = await replies(together, len(reqs))
            got_alone = []
            for op, queue, extra in reqs:
                alone.next_id = together.next_id - len(reqs) + len(got_alone)
                await alone.request(op, request_args(queue, extra))
                got_alone.extend(await replies(alone, 1))
            assert got_together == got_alone
            for name in ("a", "b"):
                s1 = await together.call("consume", {"queue": name, "max": 100})
                s2 = await alone.call("consume", {"queue": name, "max": 100})
                assert timeless(s1.result) == timeless(s2.result)
            nursery.cancel_scope.cancel()


async def test_a_long_pipeline_is_run_in_bounded_rounds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20 plain publishes in one write, 4 requests a round: five rounds, so five WAL
    records of four messages (one read would have made one record of 20)."""
    monkeypatch.setattr(server, "ROUND_REQUESTS", 4)
    data = tmp_path / "data"
    async with trio.open_nursery() as nursery:
        broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=data))
        await nursery.start(broker.serve)
        host, port = broker.addr.rsplit(":", 1)
        c = await RawClient.open((host, int(port)))
        assert isinstance(await c.call("queue_create", {"queue": "q"}), Reply)
        first = c.next_id
        await c.send_raw(b"".join(
            c.enc.request(first + i, "publish", {"queue": "q", "messages": [[b"%d" % i]]})
            for i in range(20)))
        c.next_id += 20
        got = [await c.frame() for _ in range(20)]
        assert [(f.id, f.result) for f in got] == [
            (first + i, {"first_id": 1 + i, "count": 1}) for i in range(20)]
        nursery.cancel_scope.cancel()
    publishes: list[int] = []
    def count_publish(rtype: int, payload: bytes) -> None:
        if rtype == Publish.TYPE:
            publishes.append(len(msgpack.unpackb(payload)[3]))

    replay(data / "wal", count_publish, truncate=False)
    assert publishes == [4, 4, 4, 4, 4]
