"""Requests pipelined in one write get exactly the replies they get one at a time.

The broker applies a run of plain single-message publishes from one read as one
publish; this checks that nothing a client can see depends on it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.config import BrokerConfig
from broker.server import Broker
from protocol import Reply

from .rawclient import RawClient

MAX_MESSAGE = 16

plain = st.tuples(st.just("publish"), st.sampled_from(["a", "a", "a", "a", "b", "missing"]),
                  st.binary(max_size=MAX_MESSAGE + 2).map(lambda b: {"messages": [[b]]}))
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
requests = st.lists(st.tuples(st.one_of(plain, plain, other), st.integers(1, 8)),
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


async def replies(c: RawClient, count: int) -> list[tuple[Any, ...]]:
    out = []
    for _ in range(count):
        f = await c.frame()
        out.append((type(f).__name__, f.id, getattr(f, "result", None), getattr(f, "code", None),
                    getattr(f, "details", None)))
    return out


@settings(max_examples=25, deadline=None)
@given(reqs=requests)
async def test_one_write_or_one_at_a_time_gives_the_same_replies(reqs: list[tuple[str, str, dict[str, Any]]]) -> None:
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
                assert s1.result == s2.result
            nursery.cancel_scope.cancel()
