"""The broker-wide memory budget (``broker/membudget.py``, SPEC §10) over real sockets:
near the budget a connection in the middle of a frame past its share gets MEMORY_LIMIT
and a clean close, a connection that does not read its replies stops being read, and a
small client's ping is answered throughout; replies held per connection stay bounded in
bytes."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import trio
import trio.testing

from broker.config import ROUND_REPLY_BYTES, BrokerConfig
from broker.membudget import SMALL, MemoryBudget, default_budget
from broker.server import Broker
from protocol import Connection, Error, ErrorCode, ProtocolError, Reply

from .rawclient import RawClient

MIB = 1024 * 1024


async def start(nursery: trio.Nursery, tmp_path: Path, **settings: Any) -> tuple[Broker, tuple[str, int]]:
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data", fsync="never", **settings))
    await nursery.start(broker.serve)
    host, port = broker.addr.rsplit(":", 1)
    return broker, (host, int(port))


async def feed(c: RawClient, data: bytes, chunk: int = 256 * 1024) -> None:
    """Send ``data`` until the broker stops taking it or closes."""
    try:
        for at in range(0, len(data), chunk):
            await c.send_raw(data[at:at + chunk])
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def test_the_default_budget_is_a_gib_or_a_quarter_of_memory() -> None:
    assert default_budget(64 << 30) == 1 << 30
    assert default_budget(2 << 30) == 512 << 20
    assert default_budget(0) == 1 << 30  # unknown
    budget = MemoryBudget(64 * MIB)
    assert (budget.high, budget.share, budget.cap()) == (48 * MIB, 4 * MIB, -1)


async def test_under_pressure_the_heaviest_wait_and_small_ones_read() -> None:
    budget = MemoryBudget(64 * MIB)
    heavy, middle, light = budget.account(), budget.account(), budget.account()
    heavy.hold(40 * MIB)
    middle.set_input(2 * MIB)
    light.set_input(1024)
    assert budget.cap() == -1 and budget.read_size(MIB) == MIB  # below three quarters: as ever
    middle.hold(7 * MIB)  # 49 MiB: pressure; the share is 4 MiB
    assert budget.cap() == 4 * MIB and budget.read_size(MIB) == SMALL
    resumed: list[str] = []

    async def reader(name: str, account: Any) -> None:
        await budget.wait_for_room(account)
        resumed.append(name)

    async with trio.open_nursery() as nursery:
        for name, account in (("heavy", heavy), ("middle", middle), ("light", light)):
            nursery.start_soon(reader, name, account)
        await trio.testing.wait_all_tasks_blocked()
        assert resumed == ["light"] and budget.paused == 2
        middle.release(7 * MIB)  # back under three quarters: everyone reads
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(resumed) == ["heavy", "light", "middle"]
    # A frame that would take a connection past its share is refused under pressure.
    heavy.release(10 * MIB)
    light.set_input(20 * MIB)  # 52 MiB
    budget.check_frame(middle, 1 * MIB)  # 2 + 1 MiB: within its share
    try:
        budget.check_frame(middle, 3 * MIB)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.MEMORY_LIMIT and exc.fatal
        assert exc.details == {"limit": 4 * MIB, "length": 5 * MIB, "held": 2 * MIB, "budget": 64 * MIB}
    else:
        raise AssertionError("not refused")
    light.set_input(40 * MIB)  # past the budget: every share is SMALL
    assert budget.cap() == SMALL
    for account in (heavy, middle, light):
        account.close()
    assert budget.used == 0 and budget.peak == 72 * MIB


async def test_near_the_budget_a_huge_partial_frame_is_refused_and_small_clients_go_on(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    broker, addr = await start(nursery, tmp_path, memory_budget=8 * MIB)
    small = await RawClient.open(addr)
    heavy = [await RawClient.open(addr) for _ in range(3)]
    # Each announces a 15 MiB publish and sends 5 MiB of it: 15 MiB in all, past the budget.
    for c in heavy:
        nursery.start_soon(feed, c, struct.pack(">I", 15 * MIB) + b"\x94\x00\x01\xa7publish" + bytes(5 * MIB))
    refused = 0
    with trio.fail_after(30):
        for c in heavy:
            while (frame := await c.frame()) is not None:
                # Each heavy connection ends with MEMORY_LIMIT and a clean close, or, if it
                # got its 5 MiB in before the pressure, is still being read: it is then
                # refused once it sends more.
                assert isinstance(frame, Error) and frame.id is None and frame.code == ErrorCode.MEMORY_LIMIT, frame
                assert frame.details["budget"] == 8 * MIB and frame.details["length"] > frame.details["limit"]
                refused += 1
                assert await c.frame() is None  # EOF, not a reset
                break
            # the small client is answered at every step
            assert isinstance(await small.call("ping", {}), Reply)
    assert refused == 3 and broker.memory.refused == 3
    assert broker.memory.peak <= 8 * MIB + 3 * SMALL + 4 * MIB  # budget + reads under pressure + one read
    with trio.fail_after(10):
        while broker.memory.used > SMALL:  # what they held is free once they are gone
            await trio.sleep(0.01)
    assert isinstance(await small.call("ping", {}), Reply)


async def test_a_client_that_reads_no_replies_holds_a_bounded_number_of_reply_bytes(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    broker, addr = await start(nursery, tmp_path, memory_budget=4 * MIB)
    setup = await RawClient.open(addr)
    assert isinstance(await setup.call("queue_create", {"queue": "big"}), Reply)
    body = bytes(100_000)
    for _ in range(4):  # 1 MB at a time: a 4 MB frame would be past the budget's three quarters
        assert isinstance(await setup.call("publish", {"queue": "big", "messages": [[body]] * 10}), Reply)
    # 60 peeks of 40 bodies (4 MB of replies each), none read: a reply amplification.
    greedy = await RawClient.open(addr)
    count = 60
    await greedy.send_raw(b"".join(greedy.enc.request(i, "peek", {"queue": "big", "max": 40})
                                   for i in range(1, count + 1)))
    with trio.fail_after(30):
        while broker.memory.used < ROUND_REPLY_BYTES:  # its replies wait for it to read
            await trio.sleep(0.01)
        for _ in range(5):  # while it is stuck, others are answered
            assert isinstance(await setup.call("ping", {}), Reply)
    # Held: at most two rounds' replies, a round stopping once it passes ROUND_REPLY_BYTES.
    one_reply = 40 * (len(body) + 64) + 1024
    assert broker.memory.peak <= 2 * (ROUND_REPLY_BYTES + one_reply) + 2 * MIB
    # Reading them now, every reply arrives, in order.
    conn = Connection("client")
    got = 0
    with trio.fail_after(60):
        while got < count:
            conn.receive_data(await greedy.stream.receive_some(1 << 20))
            for frame in conn.frames():
                got += 1
                assert isinstance(frame, Reply) and frame.id == got and len(frame.result["messages"]) == 40
    with trio.fail_after(10):
        while broker.memory.used > SMALL:
            await trio.sleep(0.01)
