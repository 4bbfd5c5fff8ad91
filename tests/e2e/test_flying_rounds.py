"""Big rounds are fdatasynced by the sync helper while the connection runs its next
round: the client sees replies in request order, with the state each request saw."""
from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.config import BrokerConfig
from broker.server import Broker
from broker.wal.commit import HELPER_MIN_BYTES
from broker.wal.synchelper import SyncHelper
from protocol import Reply

from .rawclient import RawClient

BODY = b"m" * 150
BATCH = HELPER_MIN_BYTES // len(BODY) + 100  # one batch alone makes a flying round


async def test_pipelined_big_batches_reply_in_order_with_the_state_they_saw(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent_to_helper: list[int] = []
    real_send = SyncHelper.send

    def counting_send(self: SyncHelper, fd: int) -> None:
        sent_to_helper.append(fd)
        real_send(self, fd)

    monkeypatch.setattr(SyncHelper, "send", counting_send)
    async with trio.open_nursery() as nursery:
        broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data"))
        await nursery.start(broker.serve)
        host, port = broker.addr.rsplit(":", 1)
        c = await RawClient.open((host, int(port)))
        assert isinstance(await c.call("queue_create", {"queue": "q"}), Reply)
        plan: list[tuple[str, int]] = []  # (op, messages published by it)
        frames = []
        for i in range(24):
            for op, args, n in (
                    ("publish", {"messages": [[BODY]] * BATCH}, BATCH),
                    ("publish", {"messages": [[b"one"]]}, 1),
                    ("queue_stats", {}, 0),
                    ("publish", {"messages": [[b"two"]]}, 1)):
                frames.append(c.enc.request(c.next_id, op, {"queue": "q", **args}))
                c.next_id += 1
                plan.append((op, n))
        first_rid = c.next_id - len(plan)
        await c.send_raw(b"".join(frames))
        with trio.fail_after(60):
            got = [await c.frame() for _ in plan]
        published = 0
        for k, (f, (op, n)) in enumerate(zip(got, plan)):
            assert isinstance(f, Reply) and f.id == first_rid + k, f
            if op == "publish":
                assert f.result == {"first_id": published + 1, "count": n}
                published += n
            else:
                assert f.result["ready"] == published  # what was applied before it, no more
        assert sent_to_helper, "no round was big enough to fly"
        stats = await c.call("queue_stats", {"queue": "q"})
        assert isinstance(stats, Reply) and stats.result["ready"] == published
        nursery.cancel_scope.cancel()


async def test_a_client_gone_with_replies_pending_is_no_failure(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with trio.open_nursery() as nursery:
        broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data"))
        await nursery.start(broker.serve)
        host, port = broker.addr.rsplit(":", 1)
        for _ in range(3):
            c = await RawClient.open((host, int(port)))
            assert isinstance(await c.call("queue_create", {"queue": "q"}), Reply)
            await c.send_raw(b"".join(
                c.enc.request(100 + i, "publish", {"queue": "q", "messages": [[BODY]] * BATCH})
                for i in range(8)))
            # Reset at once (SO_LINGER 0): the broker's reply writes meet a dead socket.
            c.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            await c.stream.aclose()
        other = await RawClient.open((host, int(port)))
        with trio.fail_after(30):
            stats = await other.call("queue_stats", {"queue": "q"})
        assert isinstance(stats, Reply)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failures == []
