"""``queue_list`` and ``topic_list`` in pages (SPEC §5.5) over real sockets: every name
exactly once, in byte order, each page within ``limit`` and the client's max frame, and
the SDK's ``list_queues``/``list_topics`` following ``next`` to the end."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker.commands import MAX_LIST_PAGE
from broker.config import BrokerConfig
from broker.server import Broker
from client import Client, InvalidArgument
from protocol import Connection, Error, ErrorCode, Reply

from .rawclient import RawClient


async def start(nursery: trio.Nursery, tmp_path: Path, **settings: Any) -> tuple[str, int]:
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data", fsync="never", **settings))
    await nursery.start(broker.serve)
    host, port = broker.addr.rsplit(":", 1)
    return host, int(port)


async def create_many(addr: tuple[str, int], op: str, field: str, names: list[str]) -> None:
    """Create ``names`` pipelined on a connection of their own, 500 requests at a time."""
    c = await RawClient.open(addr)
    conn = Connection("client")
    for at in range(0, len(names), 500):
        chunk = names[at:at + 500]
        await c.send_raw(b"".join(c.enc.request(i, op, {field: name}) for i, name in enumerate(chunk)))
        got = 0
        while got < len(chunk):
            conn.receive_data(await c.stream.receive_some(1 << 16))
            for frame in conn.frames():
                assert isinstance(frame, Reply) and frame.result["created"], frame
                got += 1
    await c.aclose()


async def pages(c: RawClient, op: str, field: str, **args: Any) -> list[list[str]]:
    """Every page of a list op, following ``next``; checks each page's frame."""
    out: list[list[str]] = []
    after = None
    while True:
        reply = await c.call(op, {**args, **({"after": after} if after is not None else {})})
        assert isinstance(reply, Reply), reply
        names = [entry[field] for entry in reply.result[field + "s"]]
        out.append(names)
        after = reply.result["next"]
        if after is None:
            return out
        assert after == names[-1]


def name(i: int, width: int = 6) -> str:
    return f"pg.{i:0{width}d}"


async def test_queue_list_pages_give_every_queue_once_in_order(nursery: trio.Nursery, tmp_path: Path) -> None:
    addr = await start(nursery, tmp_path)
    c = await RawClient.open(addr)
    names = [name(i) for i in range(250)]
    await create_many(addr, "queue_create", "queue", names[::-1])
    got = await pages(c, "queue_list", "queue", limit=100)
    assert [len(p) for p in got] == [100, 100, 50]
    assert [n for p in got for n in p] == names
    # The default page holds up to MAX_LIST_PAGE; the last page's next is nil.
    assert [len(p) for p in await pages(c, "queue_list", "queue")] == [MAX_LIST_PAGE, 250 - MAX_LIST_PAGE]
    # after need not name a queue: the list goes on after it in byte order.
    reply = await c.call("queue_list", {"after": "pg.000199x", "limit": 100})
    assert isinstance(reply, Reply)
    assert [q["queue"] for q in reply.result["queues"]] == names[200:] and reply.result["next"] is None
    reply = await c.call("queue_list", {"after": names[-1]})
    assert isinstance(reply, Reply) and reply.result == {"queues": [], "next": None}


@pytest.mark.parametrize(("args", "field"), [
    ({"limit": 0}, "limit"), ({"limit": MAX_LIST_PAGE + 1}, "limit"), ({"limit": "5"}, "limit"),
    ({"after": "no spaces"}, "after"), ({"after": 5}, "after"), ({"before": "x"}, "before"),
])
async def test_bad_page_arguments(nursery: trio.Nursery, tmp_path: Path, args: dict[str, Any], field: str) -> None:
    c = await RawClient.open(await start(nursery, tmp_path))
    for op in ("queue_list", "topic_list"):
        reply = await c.call(op, args)
        assert isinstance(reply, Error) and reply.code == ErrorCode.INVALID_ARGUMENT, reply
        assert reply.details["field"] == field


async def test_a_page_fits_the_clients_max_frame(nursery: trio.Nursery, tmp_path: Path) -> None:
    small = 65536
    addr = await start(nursery, tmp_path, max_message=small - 4096)  # a client may then ask for 64 KiB
    c = await RawClient.open(addr, hello=False)
    assert isinstance(await c.call("hello", {"versions": [1], "max_frame": small}), Reply)
    c.conn.max_frame = small  # a bigger reply would fail to decode here
    names = [name(i, 196) for i in range(300)]  # 200-character names: about 650 bytes a stats map
    await create_many(addr, "queue_create", "queue", names)
    got = await pages(c, "queue_list", "queue")
    assert len(got) > 2 and all(0 < len(p) < 300 for p in got)
    assert [n for p in got for n in p] == names


async def test_the_sdk_pages_through_queues_and_topics(nursery: trio.Nursery, tmp_path: Path) -> None:
    addr = await start(nursery, tmp_path)
    c = await RawClient.open(addr)
    queues = [name(i) for i in range(MAX_LIST_PAGE * 2 + 17)]
    await create_many(addr, "queue_create", "queue", queues)
    topics = [name(i) for i in range(5)]
    await create_many(addr, "topic_create", "topic", topics)
    assert [len(p) for p in await pages(c, "topic_list", "topic", limit=2)] == [2, 2, 1]
    async with Client.connect(f"{addr[0]}:{addr[1]}") as client:
        assert [q.name for q in await client.list_queues()] == queues
        assert [t.name for t in await client.list_topics()] == topics
        assert [t.name for t in await client.list_topics(page_size=2)] == topics
        with pytest.raises(InvalidArgument):
            await client.request("queue_list", {"limit": -1})
