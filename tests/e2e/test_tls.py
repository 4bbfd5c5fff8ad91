"""TLS on the client port (``broker/tls.py``, SPEC.md §1.3) over real sockets.

Certificates come from ``trustme`` (``tests/tlsfiles.py``). In-process brokers serve the
timeout and limit cases on trio's MockClock; the SDK on both backends, the blocking
client and reconnects talk to a broker process started with the ``--tls-*`` flags.
"""
from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing

from broker.config import BrokerConfig
from broker.server import Broker
from client import Client, ConnectionClosed, MalformedFrame, Message, SyncClient, TooManyConnections
from client import AuthFailed, ConnectionTimeout
from protocol import Connection, Encoder, Error, ErrorCode, Push, Reply

from ..broker_process import ROOT, BrokerProcess
from ..tlsfiles import Pki, make_pki
from .rawclient import RawClient
from .test_auth import TOKEN, USERS, write_users

HANDSHAKE_S = 10.0
#: Longest a test waits (virtual time on the MockClock; real time elsewhere).
WAIT_S = 24 * 3600


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def start(nursery: trio.Nursery, tmp_path: Path, pki: Pki, *, client_ca: bool = False,
                **settings: Any) -> tuple[Broker, tuple[str, int]]:
    settings.setdefault("fsync", "never")
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data", tls_cert=pki.cert,
                                 tls_key=pki.key, tls_client_ca=pki.ca if client_ca else None, **settings))
    await nursery.start(broker.serve)
    host, port = broker.addr.rsplit(":", 1)
    return broker, (host, int(port))


class TlsRaw:
    """Raw frames inside a TLS session (the broker's view of a client, byte for byte)."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.conn = Connection("client")
        self.enc = Encoder()
        self.pending: list[Any] = []

    @classmethod
    async def open(cls, addr: tuple[str, int], context: ssl.SSLContext, hello: bool = True) -> TlsRaw:
        tcp = await trio.open_tcp_stream(*addr)
        raw = cls(trio.SSLStream(tcp, context, server_hostname=addr[0], https_compatible=True))
        await raw.stream.do_handshake()
        if hello:
            assert isinstance(await raw.call(1, "hello", {"versions": [1]}), Reply)
        return raw

    async def frame(self) -> Any:
        """The next frame, or None at EOF (a reset raises)."""
        with trio.fail_after(WAIT_S):
            while not self.pending:
                data = await self.stream.receive_some(1 << 16)
                if not data:
                    return None
                self.conn.receive_data(data)
                self.pending = list(self.conn.frames())
            return self.pending.pop(0)

    async def call(self, rid: int, op: str, args: dict[str, Any]) -> Any:
        await self.stream.send_all(self.enc.request(rid, op, args))
        return await self.frame()


async def closing_error(frame_source: Any) -> Error:
    frame = await frame_source.frame()
    assert isinstance(frame, Error) and frame.id is None, frame
    assert await frame_source.frame() is None  # EOF: a clean close
    return frame


# -- the SDK over TLS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("tls") / "data", fsync="never", log_level="info",
                       args=pki.broker_args()) as proc:
        yield proc


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_async_client_publishes_and_consumes_over_tls(backend: str, pki: Pki,
                                                          tls_broker: BrokerProcess) -> None:
    async def main() -> None:
        queue = f"tls-{backend}"
        async with Client.connect(tls_broker.addr, tls=pki.client()) as lg:
            await lg.create_queue(queue)
            big = bytes(range(256)) * 1024  # 256 KiB: many TLS records each way
            ids = (await lg.publish_batch(queue, [Message(b"one", key=b"k"), big])).ids
            got = await lg.consume(queue, max=10)
            assert [d.body for d in got] == [b"one", big] and [d.id for d in got] == list(ids)
            assert (await lg.ack(queue, list(ids))).acked == 2
            async with lg.subscribe(queue, credit=4) as sub:  # pushes come through TLS too
                await lg.publish(queue, b"pushed")
                with anyio.fail_after(30):
                    async for msg in sub:
                        assert msg.body == b"pushed"
                        await msg.ack()
                        break

    anyio.run(main, backend=backend)


def test_the_blocking_client_over_tls_and_the_host_name_it_checks(pki: Pki, tls_broker: BrokerProcess) -> None:
    with SyncClient(tls_broker.addr, tls=pki.client()) as lg:
        lg.create_queue("tls-sync")
        one = {"queue": "tls-sync", "messages": [[b"x" * 100_000]]}  # past one TLS record
        results = lg.request_many([("publish", one)] * 40)  # pipelined
        assert all(isinstance(r, dict) for r in results) and len(results) == 40
        assert [len(d.body) for d in lg.consume("tls-sync", max=100)] == [100_000] * 40
    # The certificate names 127.0.0.1 and localhost: a name it does not have is refused.
    with SyncClient(f"localhost:{tls_broker.port}", tls=pki.client()) as lg:
        assert lg.ping() is not None
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        SyncClient(tls_broker.addr, tls=pki.client(), server_hostname="mq.example.com")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_certificate_from_another_ca_is_a_clear_error(backend: str, pki: Pki,
                                                         tls_broker: BrokerProcess) -> None:
    async def main() -> None:
        for context in (ssl.create_default_context(cafile=str(pki.other_ca)), True):
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                async with Client.connect(tls_broker.addr, tls=context):
                    pass
            assert "certificate verify failed" in str(info.value)
            assert f"the broker at {tls_broker.addr}" in " ".join(getattr(info.value, "__notes__", []))

    anyio.run(main, backend=backend)
    with pytest.raises(ssl.SSLCertVerificationError):
        SyncClient(tls_broker.addr, tls=True)


def test_a_plain_client_on_the_tls_port_is_told_and_closed(tls_broker: BrokerProcess) -> None:
    with pytest.raises(ConnectionClosed) as info:
        SyncClient(tls_broker.addr, timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, MalformedFrame) and cause.details == {"tls": "required"}
    assert "connect with TLS" in str(info.value)


def test_a_client_that_half_closes_gets_every_reply_then_a_clean_end(pki: Pki, tls_broker: BrokerProcess) -> None:
    """SPEC §3.3: after the client's EOF the broker sends the replies to what it has read,
    then closes; in TLS too, where that EOF is a TCP half-close without close_notify
    (§1.3). OpenSSL 3 takes such an EOF for an error: without the context's
    OP_IGNORE_UNEXPECTED_EOF the broker sent a fatal decode_error alert, and the replies
    still to come were lost behind it."""
    enc = Encoder()
    sent = [enc.request(1, "hello", {"versions": [1]}), enc.request(2, "queue_create", {"queue": "tls-eof"})]
    sent += [enc.request(3 + i, "publish", {"queue": "tls-eof", "messages": [[b"x" * 4000]]}) for i in range(200)]
    got: list[Any] = []
    with socket.create_connection((tls_broker.host, tls_broker.port), timeout=30) as tcp, \
            pki.client().wrap_socket(tcp, server_hostname=tls_broker.host) as tls:
        tls.sendall(b"".join(sent))
        socket.socket.shutdown(tls, socket.SHUT_WR)  # SSLSocket.shutdown would end the TLS reads too
        conn = Connection("client")
        while data := tls.recv(1 << 16):  # an alert raises ssl.SSLError here
            conn.receive_data(data)
            got += conn.frames()
    assert [type(f) for f in got] == [Reply] * len(sent)
    assert [f.id for f in got] == list(range(1, len(sent) + 1))


def test_a_reconnecting_client_connects_again_in_tls(pki: Pki, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port to come back on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with BrokerProcess(tmp_path / "data", fsync="always",
                       args=(*pki.broker_args(), "--port", str(port))) as proc:

        async def main() -> None:
            async with Client.connect(proc.addr, tls=pki.client(), reconnect=True) as lg:
                await lg.create_queue("again")
                await lg.publish("again", b"before")
                await anyio.to_thread.run_sync(proc.kill)
                await anyio.to_thread.run_sync(proc.start)
                with anyio.fail_after(60):
                    await lg.publish("again", b"after")
                assert lg.reconnects >= 1
                assert [d.body for d in await lg.consume("again", max=10)] == [b"before", b"after"]

        anyio.run(main, backend="trio")


# -- the TLS handshake: plain clients, stalls, failures ------------------------------------------


async def test_a_plain_client_gets_malformed_frame_in_plain_text_then_a_clean_close(
        nursery: trio.Nursery, tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    broker, addr = await start(nursery, tmp_path, pki)
    with trio.fail_after(30), caplog.at_level(logging.INFO, logger="lockgate.server"):
        plain = RawClient(await trio.open_tcp_stream(*addr))
        await plain.send_raw(Encoder().request(1, "hello", {"versions": [1]}))
        frame = await closing_error(plain)
        assert frame.code == ErrorCode.MALFORMED_FRAME and frame.details == {"tls": "required"}
        while broker.connections:  # the broker closes its side: poll, bounded
            await trio.sleep(0.01)
    events = [r for r in caplog.records if getattr(r, "event", "") == "tls_handshake_failed"]
    assert len(events) == 1 and events[0].reason == "plain client"  # type: ignore[attr-defined]
    assert "a plain (not TLS) client on the TLS port" in caplog.text


async def test_a_stalled_tls_handshake_is_closed_at_the_handshake_timeout(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path, pki: Pki,
        caplog: pytest.LogCaptureFixture) -> None:
    broker, addr = await start(nursery, tmp_path, pki)
    with caplog.at_level(logging.INFO, logger="lockgate.server"):
        silent = await trio.open_tcp_stream(*addr)  # sends nothing at all
        stalled = await trio.open_tcp_stream(*addr)
        await stalled.send_all(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
        t0 = trio.current_time()
        with trio.fail_after(WAIT_S):
            assert await silent.receive_some(100) == b""  # EOF, no reset
            assert await stalled.receive_some(100) == b""
        assert trio.current_time() - t0 == pytest.approx(HANDSHAKE_S)
        await silent.aclose()
        await stalled.aclose()
        await trio.sleep(1)
    assert broker.connections == 0
    timeouts = [r for r in caplog.records if getattr(r, "event", "") == "connection_timeout"]
    assert timeouts and timeouts[0].timeout == "handshake" and timeouts[0].tls  # type: ignore[attr-defined]
    assert "no TLS handshake within 10000 ms of connecting" in caplog.text


async def test_tls_and_hello_share_the_handshake_timeout(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path, pki: Pki) -> None:
    _, addr = await start(nursery, tmp_path, pki)
    t0 = trio.current_time()
    c = await TlsRaw.open(addr, pki.client(), hello=False)
    await trio.sleep(4)
    frame = await closing_error(c)  # no hello: CONNECTION_TIMEOUT inside the TLS session
    assert frame.code == ErrorCode.CONNECTION_TIMEOUT and frame.details["timeout"] == "handshake"
    assert trio.current_time() - t0 == pytest.approx(HANDSHAKE_S)


async def test_a_client_that_rejects_the_certificate_is_logged(
        nursery: trio.Nursery, tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    broker, addr = await start(nursery, tmp_path, pki)
    with trio.fail_after(30), caplog.at_level(logging.INFO, logger="lockgate.server"):
        with pytest.raises(ssl.SSLCertVerificationError):
            async with Client.connect(addr, tls=True):
                pass
        while broker.connections:
            await trio.sleep(0.01)
    events = [r for r in caplog.records if getattr(r, "event", "") == "tls_handshake_failed"]
    assert len(events) == 1, caplog.text


# -- client certificates -----------------------------------------------------------------------


async def test_a_client_certificate_is_required_and_verified(
        nursery: trio.Nursery, tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    broker, addr = await start(nursery, tmp_path, pki, client_ca=True)
    with trio.fail_after(30), caplog.at_level(logging.INFO, logger="lockgate.server"):
        async with Client.connect(addr, tls=pki.client(cert=True)) as lg:
            await lg.ping()
        opened = [r for r in caplog.records if getattr(r, "event", "") == "connection_open"]
        assert opened[-1].client_cert == "worker-7" and opened[-1].tls.startswith("TLSv1.")  # type: ignore[attr-defined]
        from client import tls_context
        for context in (pki.client(), tls_context(ca=pki.ca, cert=pki.other_client_cert)):
            # TLS 1.3: the client's handshake ends before the server checks its
            # certificate, so the refusal arrives as the connection ends.
            with pytest.raises((ConnectionClosed, ssl.SSLError)) as info:
                async with Client.connect(addr, tls=context) as lg:
                    await lg.ping()
            said = " ".join([str(info.value), *getattr(info.value, "__notes__", [])])
            assert "client certificate" in said or "alert" in said.lower(), said
        while broker.connections:
            await trio.sleep(0.01)
    failed = [r.reason for r in caplog.records if getattr(r, "event", "") == "tls_handshake_failed"]  # type: ignore[attr-defined]
    assert failed and "CERTIFICATE" in failed[0].upper(), failed


def test_the_blocking_client_with_a_client_certificate(pki: Pki, tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", fsync="never", args=pki.broker_args(client_ca=True)) as proc:
        with SyncClient(proc.addr, tls=pki.client(cert=True)) as lg:
            assert lg.ping() is not None
        with pytest.raises((ConnectionClosed, ssl.SSLError)):
            SyncClient(proc.addr, tls=pki.client()).ping()


# -- limits, timeouts, auth and shutdown inside TLS ----------------------------------------------


async def test_the_connection_limit_refuses_inside_tls(
        nursery: trio.Nursery, tmp_path: Path, pki: Pki) -> None:
    broker, addr = await start(nursery, tmp_path, pki, max_connections=1)
    with trio.fail_after(30):
        async with Client.connect(addr, tls=pki.client()) as first:
            with pytest.raises(ConnectionClosed) as info:
                async with Client.connect(addr, tls=pki.client()):
                    pass
            assert isinstance(info.value.__cause__, TooManyConnections)
            await first.ping()


async def test_the_idle_timeout_closes_a_tls_connection_cleanly(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path, pki: Pki) -> None:
    _, addr = await start(nursery, tmp_path, pki, idle_timeout_ms=60_000)
    async with Client.connect(addr, tls=pki.client(), keepalive_s=None) as lg:
        await trio.sleep(61)
        with pytest.raises(ConnectionClosed) as info:
            await lg.ping()
    cause = info.value.__cause__
    assert isinstance(cause, ConnectionTimeout) and cause.timeout == "idle"
    async with Client.connect(addr, tls=pki.client(), keepalive_s=20) as lg:  # pings keep it open
        await trio.sleep(300)
        await lg.ping()


async def test_authentication_inside_tls(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path, pki: Pki) -> None:
    users = tmp_path / "users.toml"
    write_users(users, USERS)
    _, addr = await start(nursery, tmp_path, pki, auth="required", users_file=users)
    async with Client.connect(addr, tls=pki.client(), token=TOKEN) as lg:
        assert lg.connection.user == "svc"
        await lg.ping()
    with pytest.raises(AuthFailed):
        async with Client.connect(addr, tls=pki.client(), token="x" * 32):
            pass


async def test_a_shutdown_sends_the_notice_inside_tls_then_closes(
        nursery: trio.Nursery, tmp_path: Path, pki: Pki) -> None:
    broker, addr = await start(nursery, tmp_path, pki)
    with trio.fail_after(30):
        c = await TlsRaw.open(addr, pki.client())
        assert isinstance(await c.call(2, "ping", {}), Reply)
        broker.shutdown()
        notice = await c.frame()
        assert isinstance(notice, Push) and (notice.name, notice.payload) == ("notice", {"reason": "shutdown"})
        assert await c.frame() is None  # EOF after the notice, no reset


# -- settings ------------------------------------------------------------------------------------


def brokerd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", "--port", "0", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_bad_tls_files_stop_the_start_naming_the_setting(pki: Pki, tmp_path: Path) -> None:
    data = ("--data", str(tmp_path / "data"))
    missing = brokerd(*data, "--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", str(pki.key))
    assert missing.returncode == 78
    assert "tls_cert (from flag --tls-cert)" in missing.stderr and "cannot read it" in missing.stderr
    swapped = brokerd(*data, "--tls-cert", str(pki.key), "--tls-key", str(pki.cert))
    assert swapped.returncode == 78 and "tls_cert (from flag --tls-cert)" in swapped.stderr
    wrong_key = tmp_path / "other.key"
    wrong_key.write_bytes(pki.other_client_cert.read_bytes())  # a key, but not the certificate's
    mismatch = brokerd(*data, "--tls-cert", str(pki.cert), "--tls-key", str(wrong_key))
    assert mismatch.returncode == 78
    assert "tls_cert and tls_key cannot be used together" in mismatch.stderr, mismatch.stderr
    alone = brokerd(*data, "--tls-cert", str(pki.cert))
    assert alone.returncode == 78 and "tls_cert and tls_key go together" in alone.stderr
    shown = brokerd("--print-config", "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    assert shown.returncode == 0 and f'tls_cert = "{pki.cert}"' in shown.stdout
    assert "# tls_client_ca is not set" in shown.stdout
