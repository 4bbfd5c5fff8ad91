"""Connection limits and timeouts (SPEC.md §10, ``broker/connlimits.py``) over real sockets.

The timeouts run on trio's MockClock (an in-process broker on real sockets, so virtual
time jumps to each deadline); the connection limit and the clean close run on the real
clock. Each over-the-limit case must end with a typed error frame, then EOF, never a
reset.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from broker import connlimits
from broker.config import BrokerConfig
from broker.server import Broker
from client import Client, ConnectionClosed, ConnectionTimeout, SyncClient, TooManyConnections
from protocol import Encoder, Error, ErrorCode, Reply

from ..broker_process import BrokerProcess
from .rawclient import RawClient

HANDSHAKE_S = 10.0
IDLE_S = 300.0
FRAME_S = 30.0


async def start(nursery: trio.Nursery, tmp_path: Path, **settings: Any) -> tuple[Broker, tuple[str, int]]:
    settings.setdefault("fsync", "never")
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data", **settings))
    await nursery.start(broker.serve)
    host, port = broker.addr.rsplit(":", 1)
    return broker, (host, int(port))


#: Longest a test waits for a frame (virtual time on the MockClock): far past every
#: deadline here, so a broker that never times out fails the test instead of hanging it.
WAIT_S = 24 * 3600


async def next_frame(c: RawClient) -> Any:
    with trio.fail_after(WAIT_S):
        return await c.frame()


async def closing_error(c: RawClient) -> Error:
    """The connection's next frame, which must be an error with id nil; then EOF, not a reset."""
    frame = await next_frame(c)
    assert isinstance(frame, Error) and frame.id is None, frame
    assert await next_frame(c) is None  # EOF: a clean close (a reset raises here)
    return frame


def assert_timeout(frame: Error, kind: str, limit_ms: int) -> None:
    assert frame.code == ErrorCode.CONNECTION_TIMEOUT
    assert frame.details == {"timeout": kind, "limit_ms": limit_ms}


# -- the handshake timeout -----------------------------------------------------------------


async def test_no_hello_in_time_gets_connection_timeout_then_a_clean_close(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)
    c = await RawClient.open(addr, hello=False)
    t0 = trio.current_time()
    # A request before hello is answered (HANDSHAKE_REQUIRED), but does not stop the clock.
    await trio.sleep(4)
    rid = await c.request("ping", {})
    frame = await next_frame(c)
    assert isinstance(frame, Error) and frame.id == rid and frame.code == ErrorCode.HANDSHAKE_REQUIRED
    assert_timeout(await closing_error(c), "handshake", 10_000)
    assert trio.current_time() - t0 == pytest.approx(HANDSHAKE_S)


async def test_hello_just_in_time_is_kept(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)
    c = await RawClient.open(addr, hello=False)
    await trio.sleep(HANDSHAKE_S - 0.01)
    assert isinstance(await c.call("hello", {"versions": [1]}), Reply)
    await trio.sleep(HANDSHAKE_S * 5)  # past the handshake deadline: only the idle one counts
    assert isinstance(await c.call("ping", {}), Reply)


async def test_a_failed_hello_does_not_count(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path, handshake_timeout_ms=2_000)
    c = await RawClient.open(addr, hello=False)
    t0 = trio.current_time()
    frame = await c.call("hello", {"versions": [99]})
    assert isinstance(frame, Error) and frame.code == ErrorCode.UNSUPPORTED_VERSION
    assert_timeout(await closing_error(c), "handshake", 2_000)
    assert trio.current_time() - t0 == pytest.approx(2.0)


# -- the idle timeout ------------------------------------------------------------------------


async def test_an_idle_connection_is_closed_and_a_pinging_one_is_kept(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)
    idle = await RawClient.open(addr)
    pinging = await RawClient.open(addr)
    t0 = trio.current_time()

    async def ping_every(seconds: float, times: int) -> None:
        for _ in range(times):
            await trio.sleep(seconds)
            assert isinstance(await pinging.call("ping", {}), Reply)

    async with trio.open_nursery() as inner:
        inner.start_soon(ping_every, IDLE_S - 1, 5)
        assert_timeout(await closing_error(idle), "idle", 300_000)
        assert trio.current_time() - t0 == pytest.approx(IDLE_S)
    assert trio.current_time() - t0 == pytest.approx(5 * (IDLE_S - 1))
    assert isinstance(await pinging.call("ping", {}), Reply)  # kept alive throughout


async def test_the_sdk_sees_connection_timeout_as_the_cause_of_its_close(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)
    async with Client.connect(addr, keepalive_s=None) as client:  # no keepalive pings: idle
        await trio.sleep(IDLE_S + 1)
        with pytest.raises(ConnectionClosed) as info:
            await client.ping()
    cause = info.value.__cause__
    assert isinstance(cause, ConnectionTimeout) and cause.timeout == "idle"
    assert cause.details["limit_ms"] == 300_000


async def test_idle_timeout_zero_keeps_connections_forever(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path, idle_timeout_ms=0)
    c = await RawClient.open(addr)
    await trio.sleep(30 * 24 * 3600)
    assert isinstance(await c.call("ping", {}), Reply)


async def test_a_held_consume_is_not_idle(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)
    c = await RawClient.open(addr)
    await c.call("queue_create", {"queue": "q"})
    t0 = trio.current_time()
    rid = await c.request("consume", {"queue": "q", "wait_ms": 1_200_000})  # 20 minutes
    reply = await next_frame(c)
    assert isinstance(reply, Reply) and reply.id == rid and reply.result["messages"] == []
    assert trio.current_time() - t0 == pytest.approx(1200.0)  # held for all 20 minutes
    # Idle from now on: closed less than one idle time after the consume ended.
    assert_timeout(await closing_error(c), "idle", 300_000)
    assert 1200.0 < trio.current_time() - t0 <= 1200.0 + IDLE_S


async def test_a_subscription_is_not_idle(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)
    c = await RawClient.open(addr)
    await c.call("queue_create", {"queue": "q"})
    assert isinstance(await c.call("subscribe", {"queue": "q", "credit": 1}), Reply)
    await trio.sleep(10 * IDLE_S)
    other = await RawClient.open(addr)
    await other.call("publish", {"queue": "q", "messages": [[b"late"]]})
    push = await next_frame(c)
    assert push.name == "deliver" and push.payload["messages"][0][1] == b"late"


async def test_a_request_waiting_for_its_fsync_is_not_idle(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    """A big round is fdatasynced by the sync helper, a real process, while the connection
    waits to read on: trio's clock jumps meanwhile, past the idle deadline."""
    _, addr = await start(nursery, tmp_path, fsync="always", idle_timeout_ms=1_000)
    c = await RawClient.open(addr)
    await c.call("queue_create", {"queue": "q"})
    for _ in range(3):
        reply = await c.call("publish", {"queue": "q", "messages": [[b"x" * 100_000]] * 20})
        assert isinstance(reply, Reply), reply


# -- the slow-sender timeout -----------------------------------------------------------------


async def test_an_unfinished_frame_gets_its_earlier_replies_then_connection_timeout(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)
    c = await RawClient.open(addr)
    ping = Encoder().request(7, "ping", {})
    t0 = trio.current_time()
    await c.send_raw(ping + ping[:6])  # one whole ping, then the start of another
    for _ in range(3):  # a byte now and then does not help: the frame must finish in time
        await trio.sleep(9)
        await c.send_raw(ping[6:7])
    reply = await next_frame(c)
    assert isinstance(reply, Reply) and reply.id == 7
    assert_timeout(await closing_error(c), "frame", 30_000)
    assert trio.current_time() - t0 == pytest.approx(FRAME_S)


async def test_a_steady_stream_of_frames_split_across_reads_is_not_slow(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    """Each frame completes within the limit, though a frame is always partly buffered."""
    _, addr = await start(nursery, tmp_path)
    c = await RawClient.open(addr)
    enc = Encoder()
    stream = b"".join(enc.request(i, "ping", {}) for i in range(10, 20))
    half = len(enc.request(10, "ping", {})) // 2
    # Every 20 s one frame's second half and the next frame's first half: 40 s per frame
    # from the first byte of the stream, but never more than 20 s for any one frame.
    chunks = [stream[:half]] + [stream[i:i + 2 * half + 1] for i in range(half, len(stream), 2 * half + 1)]
    for chunk in chunks:
        await c.send_raw(chunk)
        await trio.sleep(20)
    got = []
    while len(got) < 10:
        frame = await next_frame(c)
        assert isinstance(frame, Reply), frame
        got.append(frame.id)
    assert got == list(range(10, 20))


async def test_a_partial_length_prefix_is_a_started_frame(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path, frame_timeout_ms=5_000)
    c = await RawClient.open(addr)
    await c.send_raw(b"\x00\x00")
    assert_timeout(await closing_error(c), "frame", 5_000)


# -- the connection limit (real clock) ------------------------------------------------------


async def test_one_connection_over_the_limit_gets_too_many_connections_and_the_rest_work(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    broker, addr = await start(nursery, tmp_path, max_connections=3)
    with trio.fail_after(30):
        clients = [await RawClient.open(addr) for _ in range(3)]
        # The fourth says hello at once, as every client does; it is read and thrown away.
        extra = RawClient(await trio.open_tcp_stream(*addr))
        await extra.send_raw(Encoder().request(1, "hello", {"versions": [1]}))
        frame = await closing_error(extra)
        assert frame.code == ErrorCode.TOO_MANY_CONNECTIONS and frame.details == {"limit": 3}
        for c in clients:
            assert isinstance(await c.call("ping", {}), Reply)
        assert broker.connections == 3
        await clients[0].aclose()
        while broker.connections > 2:  # the broker sees the close: poll, bounded
            await trio.sleep(0.01)
        again = await RawClient.open(addr)  # room again
        assert isinstance(await again.call("ping", {}), Reply)


async def test_the_sdk_sees_too_many_connections_as_the_cause_of_its_close(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path, max_connections=1)
    with trio.fail_after(30):
        async with Client.connect(addr) as first:
            with pytest.raises(ConnectionClosed) as info:
                async with Client.connect(addr):
                    pass
            assert isinstance(info.value.__cause__, TooManyConnections)
            assert info.value.__cause__.limit == 1
            assert "TOO_MANY_CONNECTIONS" in str(info.value)
            await first.ping()


def test_brokerd_takes_the_limits_as_flags_and_the_sync_client_sees_the_refusal(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", args=("--max-connections", "1", "--idle-timeout-ms", "0")) as proc:
        with SyncClient(proc.addr) as first:
            with pytest.raises(ConnectionClosed) as info:
                SyncClient(proc.addr).ping()
            assert isinstance(info.value.__cause__, TooManyConnections)
            assert info.value.__cause__.details == {"limit": 1}
            first.ping()


async def test_refusals_are_logged_at_most_once_a_second(
        nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, addr = await start(nursery, tmp_path, max_connections=1)
    with trio.fail_after(30), caplog.at_level(logging.WARNING, logger="lockgate.server"):
        kept = await RawClient.open(addr)
        for _ in range(5):
            extra = RawClient(await trio.open_tcp_stream(*addr))
            assert (await closing_error(extra)).code == ErrorCode.TOO_MANY_CONNECTIONS
        await kept.call("ping", {})
    lines = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(lines) == 1, lines  # five refusals well within a second
    assert "refused a connection from 127.0.0.1:" in lines[0]


def test_the_rate_limited_log_counts_what_it_held_back(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    monkeypatch.setattr(connlimits.time, "monotonic", lambda: now[0])
    log = connlimits.RateLimitedLog(logging.getLogger("lockgate.test"), interval_s=1.0)
    with caplog.at_level(logging.INFO, logger="lockgate.test"):
        for i in range(4):
            log.log(logging.INFO, "idle", "connection %d", i)
        log.log(logging.INFO, "frame", "another kind")  # its own budget
        now[0] += 1.0
        log.log(logging.INFO, "idle", "connection %d", 9)
    assert [r.getMessage() for r in caplog.records] == [
        "connection 0", "another kind", "connection 9 (and 3 more since the last such line)"]
    assert [r.held_back for r in caplog.records] == [0, 0, 3]  # type: ignore[attr-defined]


def test_max_connections_is_fitted_to_the_open_file_limit(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import resource

    limits = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limits["soft"], limits["hard"]))

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        limits["soft"] = value[0]

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    assert connlimits.fit_fd_limit(2000) == 2000  # raised to fit
    assert limits["soft"] == 2000 + connlimits.FD_RESERVE
    with caplog.at_level(logging.WARNING, logger="lockgate.server"):
        assert connlimits.fit_fd_limit(10_000) == 4096 - connlimits.FD_RESERVE
    assert limits["soft"] == 4096
    assert "serving at most 4032 connections" in caplog.text


async def test_timeouts_are_logged_with_the_peer_address(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    _, addr = await start(nursery, tmp_path)
    with caplog.at_level(logging.INFO, logger="lockgate.server"):
        slow = await RawClient.open(addr, hello=False)
        quiet = await RawClient.open(addr)
        slow_peer = "127.0.0.1:%d" % slow.stream.socket.getsockname()[1]
        quiet_peer = "127.0.0.1:%d" % quiet.stream.socket.getsockname()[1]
        await closing_error(slow)
        await slow.aclose()
        await closing_error(quiet)
        await quiet.aclose()
        await trio.sleep(1)  # the broker logs each close once the client has closed too
    events = [(r.event, r.peer, getattr(r, "timeout", None) or getattr(r, "reason", None))  # type: ignore[attr-defined]
              for r in caplog.records if hasattr(r, "event") and r.event != "connection_open"]  # type: ignore[attr-defined]
    assert events == [("connection_timeout", slow_peer, "handshake"),  # a warning, rate-limited
                      ("connection_close", slow_peer, "handshake timeout"),
                      ("connection_close", quiet_peer, "idle timeout")]  # a quiet client: only its close
    assert f"connection {slow_peer}: no successful hello within 10000 ms" in caplog.text


async def test_a_hello_frame_cut_short_is_a_slow_sender_before_the_handshake_ends(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    """Both clocks run before hello: the earlier deadline wins."""
    _, addr = await start(nursery, tmp_path, handshake_timeout_ms=60_000, frame_timeout_ms=1_000)
    c = await RawClient.open(addr, hello=False)
    await c.send_raw(Encoder().request(1, "hello", {"versions": [1]})[:2])
    assert_timeout(await closing_error(c), "frame", 1_000)


def test_idlebench_measures_what_idle_connections_cost(tmp_path: Path) -> None:
    """The tool behind the figure in docs/benchmarks.md, on a few connections: the
    broker's RSS grows with them, by far less than a receive buffer (1 MiB) each."""
    from tools.idlebench import measure

    run = measure(50)
    assert run.connections == 50 and run.rss_open_kib > run.rss_before_kib
    assert 0 < run.per_connection_kib < 64
