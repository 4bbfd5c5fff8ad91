"""Clean shutdown (SPEC.md §3.3): SIGTERM under load answers what the broker has read.

A real broker process gets SIGTERM while several raw-socket publishers pipeline publishes
at it, beside a held consume and a subscription. Each connection must get the replies to
the requests the broker read (in order), then the ``notice`` push, then EOF: never a
reset. After a restart, every publish answered ok is there, and no publish without a
reply is (the broker read nothing it did not answer). The broker exits 0.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from broker.config import ROUND_REQUESTS, BrokerConfig
from broker.server import Broker
from protocol import Connection, Encoder, Error, ErrorCode, Push, PushName, Reply

from ..broker_process import BrokerProcess

PUBLISHERS = 4
#: Requests each publisher keeps in flight.
IN_FLIGHT = 32
#: Replies each publisher has had before the broker gets SIGTERM.
WARM_UP = 200
#: Bound on every wait for the real process (it normally takes well under a second).
LIMIT_S = 60.0


@dataclass
class Peer:
    """One connection's view of the shutdown."""

    stream: trio.SocketStream
    name: str
    conn: Connection = field(default_factory=lambda: Connection("client"))
    enc: Encoder = field(default_factory=Encoder)
    sent: int = 0
    #: Replies and errors in arrival order, as (id, frame).
    answers: list[tuple[int | None, Reply | Error]] = field(default_factory=list)
    pushes: list[Push] = field(default_factory=list)
    notice: Push | None = None
    #: Frames after the notice (there must be none), and a reset (there must be none).
    after_notice: list[Any] = field(default_factory=list)
    reset: BaseException | None = None
    eof = False

    @classmethod
    async def open(cls, addr: tuple[str, int], name: str) -> Peer:
        peer = cls(await trio.open_tcp_stream(*addr), name)
        await peer.send("hello", {"versions": [1], "client": name})
        return peer

    async def send(self, op: str, args: dict[str, Any]) -> int:
        self.sent += 1
        await self.stream.send_all(self.enc.request(self.sent, op, args))
        return self.sent

    async def read_until_eof(self, on_answer: Callable[[], None] = lambda: None) -> None:
        """Read every frame until EOF (or a reset, which is recorded)."""
        try:
            while True:
                data = await self.stream.receive_some(1 << 16)
                if not data:
                    self.eof = True
                    return
                self.conn.receive_data(data)
                for frame in self.conn.frames():
                    if self.notice is not None:
                        self.after_notice.append(frame)
                    elif isinstance(frame, Push):
                        if frame.name == PushName.NOTICE:
                            self.notice = frame
                        else:
                            self.pushes.append(frame)
                    else:
                        assert isinstance(frame, (Reply, Error)), frame
                        self.answers.append((frame.id, frame))
                        on_answer()
        except (trio.BrokenResourceError, OSError) as exc:
            self.reset = exc

    async def read_and_close(self) -> None:
        """``read_until_eof``, then close, as a client should once it has the notice."""
        await self.read_until_eof()
        await self.stream.aclose()

    def check_clean_end(self) -> None:
        assert self.reset is None, f"{self.name}: {self.reset!r} (cause {self.reset.__cause__!r})"
        assert self.notice is not None, f"{self.name}: no notice"
        assert self.notice.payload == {"reason": "shutdown"}
        assert self.after_notice == [], self.after_notice
        assert self.eof


async def publisher(peer: Peer, warmed: Callable[[], None]) -> None:
    """Pipeline publishes (at most ``IN_FLIGHT`` unanswered) until the notice and EOF."""
    room = trio.Semaphore(IN_FLIGHT)
    answered = 0

    def on_answer() -> None:
        nonlocal answered
        answered += 1
        if answered == WARM_UP:
            warmed()
        room.release()

    async with trio.open_nursery() as nursery:

        async def write() -> None:
            try:
                while True:
                    await room.acquire()
                    rid = peer.sent + 1
                    await peer.send("publish", {"queue": "q", "messages": [[f"{peer.name}:{rid}".encode()]]})
            except (trio.BrokenResourceError, OSError) as exc:
                peer.reset = exc

        await room.acquire()  # the hello's reply releases it
        nursery.start_soon(write)
        await peer.read_until_eof(on_answer)
        nursery.cancel_scope.cancel()  # the notice came: write nothing more
    await peer.stream.aclose()


async def consume_all(addr: tuple[str, int], queue: str) -> list[bytes]:
    """Every message of ``queue``, consumed from a restarted broker."""
    peer = await Peer.open(addr, "check")
    bodies: list[bytes] = []
    while rows := (await call(peer, "consume", {"queue": queue, "max": 1000})).result["messages"]:
        bodies.extend(row[1] for row in rows)
    await peer.stream.aclose()
    return bodies


async def call(peer: Peer, op: str, args: dict[str, Any]) -> Reply:
    """Send one request and read until its reply (nothing else may be in flight)."""
    rid = await peer.send(op, args)
    with trio.fail_after(LIMIT_S):
        while True:
            data = await peer.stream.receive_some(1 << 16)
            assert data, "EOF"
            peer.conn.receive_data(data)
            for frame in peer.conn.frames():
                assert isinstance(frame, Reply) and frame.id in (rid, rid - 1), frame
                if frame.id == rid:
                    return frame


@pytest.mark.parametrize("fsync", ["always", "never"])
async def test_sigterm_under_load_answers_what_it_read_then_notices_and_closes_cleanly(
        tmp_path: Path, fsync: str) -> None:
    broker = BrokerProcess(tmp_path / "data", fsync=fsync).start()
    try:
        addr = (broker.host, broker.port)
        admin = await Peer.open(addr, "admin")
        for queue in ("q", "idle", "s"):
            await call(admin, "queue_create", {"queue": queue})
        await call(admin, "publish", {"queue": "s", "messages": [[b"s1"], [b"s2"], [b"s3"]]})
        await admin.stream.aclose()

        # A held consume on an empty queue, and a subscription holding unacked messages.
        waiter = await Peer.open(addr, "waiter")
        await waiter.send("consume", {"queue": "idle", "wait_ms": 600_000})
        subscriber = await Peer.open(addr, "subscriber")
        await subscriber.send("subscribe", {"queue": "s", "credit": 2})

        publishers = [await Peer.open(addr, f"p{i}") for i in range(PUBLISHERS)]
        warm = trio.Semaphore(0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter.read_and_close)
            nursery.start_soon(subscriber.read_and_close)
            for peer in publishers:
                nursery.start_soon(publisher, peer, warm.release)
            with trio.fail_after(LIMIT_S):
                for _ in publishers:
                    await warm.acquire()
                while len(subscriber.pushes) < 1:  # the subscription holds its 2 messages
                    await trio.sleep(0.01)
                signalled = time.monotonic()
                status = await trio.to_thread.run_sync(broker.stop, LIMIT_S)  # SIGTERM, by PID
                stopped = time.monotonic() - signalled
        assert status == 0, broker.log_tail()

        # The held consume: answered with no messages, then the notice.
        waiter.check_clean_end()
        assert [rid for rid, _ in waiter.answers] == [1, 2]
        consume = waiter.answers[1][1]
        assert isinstance(consume, Reply) and consume.result == {"messages": []}, consume
        # The subscription: its deliveries, then subscription_end (shutdown), then the notice.
        subscriber.check_clean_end()
        assert {p.name for p in subscriber.pushes[:-1]} == {PushName.DELIVER}
        assert subscriber.pushes[-1].name == PushName.SUBSCRIPTION_END
        assert subscriber.pushes[-1].payload == {"subscription": 1, "reason": "shutdown"}

        ok: set[bytes] = set()
        refused = 0
        unanswered: set[bytes] = set()
        for peer in publishers:
            peer.check_clean_end()
            ids = [rid for rid, _ in peer.answers]
            # Replies in request order, each request read answered: a prefix of what was sent.
            assert ids == list(range(1, len(ids) + 1)), (peer.name, ids[:5], len(ids))
            assert len(ids) > WARM_UP
            for rid, frame in peer.answers[1:]:
                if isinstance(frame, Error):
                    assert frame.code == ErrorCode.SHUTTING_DOWN, frame
                    refused += 1
                else:
                    ok.add(f"{peer.name}:{rid}".encode())
            unanswered.update(f"{peer.name}:{rid}".encode() for rid in range(len(ids) + 1, peer.sent + 1))

        broker.start()
        stored = await consume_all((broker.host, broker.port), "q")
        assert len(stored) == len(set(stored))
        assert ok <= set(stored), sorted(ok - set(stored))[:5]  # every ok publish is kept
        assert not (unanswered & set(stored)), sorted(unanswered & set(stored))[:5]  # none unread ran
        assert broker.stop(LIMIT_S) == 0
        print(f"\nSIGTERM under load (fsync {fsync}, {PUBLISHERS} publishers x {IN_FLIGHT} in flight): "
              f"{len(ok)} publishes answered ok, {refused} SHUTTING_DOWN, {len(unanswered)} sent but not read "
              f"(none stored), 0 read and unanswered, 0 resets, exit 0, {stopped:.2f} s from SIGTERM to exit")
    finally:
        broker.kill()



async def test_a_subscribe_read_during_the_shutdown_gets_shutting_down(tmp_path: Path) -> None:
    """A request read before the shutdown but run during it is answered; a ``subscribe``
    (which would end at once) gets SHUTTING_DOWN, and the notice follows it."""
    config = BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data", fsync="never")
    broker = Broker(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)
        host, port = broker.addr.rsplit(":", 1)
        peer = await Peer.open((host, int(port)), "c")
        await call(peer, "queue_create", {"queue": "q"})
        await call(peer, "publish", {"queue": "q", "messages": [[b"x" * (512 * 1024)]]})
        # A full round whose replies (32 MiB of peeks) fill the socket while the client
        # reads nothing, then a subscribe left buffered for the next round.
        frames = [peer.enc.request(peer.sent + 1 + i, "peek", {"queue": "q", "max": 1}) if i % 2 else
                  peer.enc.request(peer.sent + 1 + i, "ping", {}) for i in range(ROUND_REQUESTS)]
        frames.append(peer.enc.request(peer.sent + 1 + ROUND_REQUESTS, "subscribe", {"queue": "q"}))
        first = peer.sent + 1
        peer.sent += len(frames)
        peer.answers.clear()
        await peer.stream.send_all(b"".join(frames))
        await trio.testing.wait_all_tasks_blocked()  # the broker is stuck writing the round's replies
        broker.shutdown()
        await trio.testing.wait_all_tasks_blocked()  # it drains: the connection reads nothing more
        with trio.fail_after(LIMIT_S):
            await peer.read_until_eof()
    peer.check_clean_end()
    assert [rid for rid, _ in peer.answers] == list(range(first, peer.sent + 1))
    assert all(isinstance(frame, Reply) for _, frame in peer.answers[:-1])
    refused = peer.answers[-1][1]
    assert isinstance(refused, Error) and refused.code == ErrorCode.SHUTTING_DOWN, refused
