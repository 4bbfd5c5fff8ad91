"""The spill file (client/spill.py) and a broker restart in the middle of a client's work.

- the file alone: order, confirmation, reopening after a crash, a torn tail, the byte
  bound, compaction, the lock, its mode;
- a client crash between sending a batch and recording it: the resend stores nothing twice;
- a real broker SIGKILLed and restarted on the same port while a client on asyncio or
  trio publishes, spills and consumes: it reconnects, resubscribes, replays the spill
  file in order, and nothing is lost or stored twice.
"""
from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from client import Client, Message, SyncClient
from client.reconnect import DedupIds, Reconnect
from client.spill import HEADER, Spill, SpillFile, SpillFull
from tests.broker_process import BrokerProcess

BACKENDS = ["asyncio", "trio"]
FAST = Reconnect(initial_delay_s=0.02, max_delay_s=0.2)


def qname() -> str:
    return f"sp-{uuid.uuid4().hex[:10]}"


def entry(body: bytes, ids: DedupIds) -> list[Any]:
    e: list[Any] = [body]
    ids.fill([e])
    return e


# --- the file alone ----------------------------------------------------------------------


def test_messages_come_back_in_order_until_confirmed(tmp_path: Path) -> None:
    ids = DedupIds()
    f = SpillFile(Spill(tmp_path / "s"))
    for i in range(5):
        f.append("a" if i < 3 else "b", entry(b"m%d" % i, ids))
    batch = f.batch(max_count=10, max_bytes=1 << 20)
    assert [p.entry[0] for p in batch] == [b"m0", b"m1", b"m2"]          # one queue per batch
    f.confirm(2)
    f.close()
    g = SpillFile(Spill(tmp_path / "s"))                                  # as after a crash
    assert [(p.queue, p.entry[0]) for p in g.pending] == [("a", b"m2"), ("b", b"m3"), ("b", b"m4")]
    assert g.batch(max_count=1, max_bytes=1 << 20)[0].entry == batch[2].entry   # dedup id kept
    g.confirm(3)
    assert os.path.getsize(tmp_path / "s") == HEADER                      # emptied once all went
    g.close()
    assert not SpillFile(Spill(tmp_path / "s")).pending


def test_a_torn_tail_is_dropped_and_what_precedes_it_kept(tmp_path: Path) -> None:
    ids = DedupIds()
    f = SpillFile(Spill(tmp_path / "s", fsync=False))
    f.append("q", entry(b"kept", ids))
    f.append("q", entry(b"torn", ids))
    f.close()
    size = os.path.getsize(tmp_path / "s")
    os.truncate(tmp_path / "s", size - 3)
    g = SpillFile(Spill(tmp_path / "s"))
    assert [p.entry[0] for p in g.pending] == [b"kept"] and g.damaged_bytes > 0
    g.append("q", entry(b"after", ids))
    g.close()
    with open(tmp_path / "s", "r+b") as raw:                              # flip a byte of the last record
        raw.seek(-1, os.SEEK_END)
        last = raw.read(1)
        raw.seek(-1, os.SEEK_END)
        raw.write(bytes([last[0] ^ 0xFF]))
    assert [p.entry[0] for p in SpillFile(Spill(tmp_path / "s")).pending] == [b"kept"]


def test_a_full_file_refuses_and_compacts_what_was_sent(tmp_path: Path) -> None:
    ids = DedupIds()
    f = SpillFile(Spill(tmp_path / "s", max_bytes=4096))
    n = 0
    with pytest.raises(SpillFull, match="full"):
        while True:
            f.append("q", entry(b"x" * 300, ids))
            n += 1
    assert os.path.getsize(tmp_path / "s") <= 4096 and len(f.pending) == n
    first_left = f.pending[2].entry
    f.confirm(2)                                                          # two were sent
    f.append("q", entry(b"y" * 300, ids))                                 # fits once they are cut off
    assert len(f.pending) == n - 1 and f.pending[0].entry == first_left
    f.close()
    g = SpillFile(Spill(tmp_path / "s", max_bytes=4096))
    assert [p.entry[0] for p in g.pending] == [b"x" * 300] * (n - 2) + [b"y" * 300]


def test_one_client_per_file_and_private(tmp_path: Path) -> None:
    f = SpillFile(Spill(tmp_path / "s"))
    with pytest.raises(RuntimeError, match="in use"):
        SpillFile(Spill(tmp_path / "s"))
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o600
    f.close()
    (tmp_path / "other").write_bytes(b"not a spill file at all")
    with pytest.raises(ValueError, match="not a lockgate spill file"):
        SpillFile(Spill(tmp_path / "other"))
    with pytest.raises(ValueError, match="max_bytes"):
        Spill(tmp_path / "s", max_bytes=100)


# --- with a broker -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_crash_between_send_and_record_duplicates_nothing(
        backend: str, tmp_path: Path, sync_broker_addr: tuple[str, int]) -> None:
    q = qname()
    ids = DedupIds()
    f = SpillFile(Spill(tmp_path / "s"))
    for i in range(5):
        f.append(q, entry(b"m%d" % i, ids))
    with SyncClient(sync_broker_addr) as lg:
        lg.create_queue(q)
        lg.publish_batch(q, [Message(p.entry[0], dedup_id=p.entry[5]) for p in f.batch(100, 1 << 20)])
    f.close()                                                             # crashed before confirm

    async def main() -> None:
        async with Client.connect(sync_broker_addr, reconnect=FAST, spill=Spill(tmp_path / "s")) as c:
            assert c.spill_pending == 5
            with anyio.fail_after(30):
                await c.drain_spill()
            assert c.spill_pending == 0 and c.spill_dropped == 0

    anyio.run(main, backend=backend)
    with SyncClient(sync_broker_addr) as lg:
        assert [m.body for m in lg.peek(q, 100)] == [b"m%d" % i for i in range(5)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_message_refused_for_good_is_dropped_and_the_rest_sent(
        backend: str, tmp_path: Path, sync_broker_addr: tuple[str, int]) -> None:
    q = qname()
    with SyncClient(sync_broker_addr) as lg:
        lg.create_queue(q)
    ids = DedupIds()
    f = SpillFile(Spill(tmp_path / "s"))
    f.append(q, entry(b"first", ids))
    f.append(q, [b"bad priority", None, 999])                             # refused: priority > 255
    f.append(q, entry(b"last", ids))
    f.append("no-such-queue-" + q, entry(b"lost", ids))
    f.close()

    async def main() -> None:
        async with Client.connect(sync_broker_addr, reconnect=FAST, spill=Spill(tmp_path / "s")) as c:
            with anyio.fail_after(30):
                await c.drain_spill()
            assert c.spill_dropped == 2

    anyio.run(main, backend=backend)
    with SyncClient(sync_broker_addr) as lg:
        assert [m.body for m in lg.peek(q, 100)] == [b"first", b"last"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_broker_restart_in_the_middle(backend: str, tmp_path: Path) -> None:
    """SIGKILL the broker while the client publishes and consumes; start it again on the
    same port. The client reconnects and resubscribes; what it spilled meanwhile is
    replayed in order; publishes that waited are sent; nothing is lost or doubled."""
    events, jobs = qname(), qname()
    proc = BrokerProcess(tmp_path / "data").start()
    proc.args = ("--port", str(proc.port))                                 # restarts keep the address

    async def main() -> None:
        spill = Spill(tmp_path / "spill", max_bytes=1 << 20)
        async with Client.connect(proc.addr, reconnect=FAST, spill=spill) as c:
            await c.create_queue(events)
            await c.create_queue(jobs)
            got: list[bytes] = []
            progress = anyio.Event()

            async def consume() -> None:
                nonlocal progress
                async with c.subscribe(events, credit=8) as sub:
                    async for msg in sub:
                        async with msg:
                            pass
                        got.append(msg.body)                              # once its ack is confirmed
                        progress.set()
                        progress = anyio.Event()
                        if len(got) == 40:
                            return

            async def until(n: int) -> None:
                with anyio.fail_after(60):
                    while len(got) < n:
                        await progress.wait()

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                for i in range(10):
                    assert await c.publish_or_spill(events, b"before-%02d" % i) is not None
                await until(10)
                assert (await c.queue_stats(events)).messages == 0        # every ack confirmed

                await anyio.to_thread.run_sync(proc.kill)                 # the broker is gone
                spilled = [await c.publish_or_spill(events, b"during-%02d" % i) for i in range(20)]
                assert spilled == [None] * 20 and c.spill_pending == 20
                waiting: list[int] = []

                async def publish_job(i: int) -> None:
                    waiting.append(await c.publish(jobs, b"job-%d" % i))  # waits for the broker

                for i in range(5):
                    tg.start_soon(publish_job, i)
                await anyio.sleep(0.1)
                assert waiting == []

                await anyio.to_thread.run_sync(proc.start)                # back, same port and data
                with anyio.fail_after(60):
                    await c.drain_spill()
                for i in range(10):                                       # after the spill: in order
                    await c.publish_or_spill(events, b"after-%02d" % i)
                await until(40)

            assert got == ([b"before-%02d" % i for i in range(10)] + [b"during-%02d" % i for i in range(20)]
                           + [b"after-%02d" % i for i in range(10)])
            assert len(waiting) == 5 and c.reconnects == 1 and c.spill_dropped == 0
            stats = await c.queue_stats(jobs)
            assert stats.ready == 5

    try:
        anyio.run(main, backend=backend)
    finally:
        proc.kill()
    with BrokerProcess(tmp_path / "data") as again, SyncClient(again.addr) as lg:
        assert lg.queue_stats(events).messages == 0
        assert sorted(m.body for m in lg.peek(jobs, 100)) == [b"job-%d" % i for i in range(5)]
