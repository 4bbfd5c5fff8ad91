"""The SDK and brokerctl against a real broker process with ``auth = "required"``, whose
users file brokerctl writes: SCRAM and tokens in both clients, typed errors, the
credentials from the environment, a grant taking effect while the broker runs, and a
server that does not know the user's secret caught by the client."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from client import AuthFailed, Client, Message, PermissionDenied, QueueNotFound, SyncClient, Unauthenticated
from client.cli import main
from client.reconnect import Reconnect
from protocol import Connection, Encoder, Request

from ..broker_process import BrokerProcess
from .cutproxy import cut_proxy

PASSWORD = "open sesame 42"


def ctl(*args: str, env: dict[str, str] | None = None, input: str | None = None, expect: int = 0) -> Any:
    result = CliRunner(env=env).invoke(main, list(args), input=input)
    assert result.exit_code == expect, (result.exit_code, result.output, result.exception)
    return result


class AuthBroker:
    def __init__(self, proc: BrokerProcess, users: Path, token: str) -> None:
        self.proc, self.users, self.token = proc, users, token

    @property
    def addr(self) -> str:
        return self.proc.addr


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[AuthBroker]:
    users = tmp_path / "users.toml"
    ctl("user", "add", "alice", "--password-stdin", "--publish", "orders.*", "--consume", "orders.*",
        "--admin", "orders.*", "--file", str(users), input=PASSWORD + "\n")
    ctl("user", "add", "bob", "--password-stdin", "--consume", "orders.eu", "--file", str(users), input=PASSWORD + "\n")
    token = json.loads(ctl("user", "add", "svc", "--token", "--publish", "billing", "--json",
                           "--file", str(users)).stdout)["token"]
    with BrokerProcess(tmp_path / "data", fsync="never", log_level="info",
                       args=("--auth", "required", "--users-file", str(users))) as proc:
        yield AuthBroker(proc, users, token)


def test_sync_client_with_a_password(auth_broker: AuthBroker) -> None:
    with SyncClient(auth_broker.addr, user="alice", password=PASSWORD) as alice:
        assert alice.user == "alice"
        alice.create_queue("orders.eu")
        alice.publish("orders.eu", b"x")
        assert [d.body for d in alice.consume("orders.eu")] == [b"x"]
        with pytest.raises(PermissionDenied) as info:
            alice.create_queue("billing")
        assert (info.value.permission, info.value.resource) == ("admin", "billing")
        assert info.value.details["user"] == "alice"
    with SyncClient(auth_broker.addr, user="bob", password=PASSWORD) as bob:
        with pytest.raises(PermissionDenied) as info:
            bob.publish("orders.eu", b"y")
        assert (info.value.permission, info.value.resource) == ("publish", "orders.eu")
        assert [q.name for q in bob.list_queues()] == ["orders.eu"]


def test_queue_groups_read_only_what_the_user_may_consume(auth_broker: AuthBroker) -> None:
    with SyncClient(auth_broker.addr, user="alice", password=PASSWORD) as alice:
        for name in ("orders.eu", "orders.us"):
            alice.create_queue(name)
            alice.publish(name, name.encode())
    with SyncClient(auth_broker.addr, user="bob", password=PASSWORD) as bob:
        with pytest.raises(PermissionDenied) as info:
            bob.consume_group(["orders.eu", "orders.us"], max=10)
        assert (info.value.permission, info.value.resource) == ("consume", "orders.us")
        got = bob.consume_group(prefix="orders.", max=10)    # orders.us is left out
        assert [(d.queue, d.body) for d in got] == [("orders.eu", b"orders.eu")]


def test_a_dependency_needs_consume_on_its_queue(auth_broker: AuthBroker) -> None:
    with SyncClient(auth_broker.addr, user="alice", password=PASSWORD) as alice:
        alice.create_queue("orders.eu")
        first = alice.publish("orders.eu", b"parent")
        # alice may consume orders.eu: her dependent publish goes through.
        alice.publish_batch("orders.eu", [Message(b"child", after=[("orders.eu", first)])])
    with SyncClient(auth_broker.addr, token=auth_broker.token) as svc:   # publish on billing only
        with pytest.raises(PermissionDenied) as info:
            svc.publish_batch("billing", [Message(b"x", after=[("orders.eu", first)])])
        assert (info.value.permission, info.value.resource) == ("consume", "orders.eu")
        with pytest.raises(PermissionDenied) as info:
            svc.txn([{"op": "publish", "queue": "billing", "messages": [[b"x", None, None, None, None, None, None,
                                                                          [["orders.eu", first]]]]}])
        assert (info.value.permission, info.value.resource) == ("consume", "orders.eu")
        with pytest.raises(QueueNotFound):                  # allowed; billing does not exist
            svc.publish("billing", b"x")


def test_sync_client_with_a_token(auth_broker: AuthBroker) -> None:
    with SyncClient(auth_broker.addr, token=auth_broker.token) as svc:
        assert svc.user == "svc"
        with pytest.raises(PermissionDenied):
            svc.create_queue("billing")


def test_wrong_and_missing_credentials(auth_broker: AuthBroker) -> None:
    with pytest.raises(AuthFailed):
        SyncClient(auth_broker.addr, user="alice", password="not it")
    with pytest.raises(AuthFailed):
        SyncClient(auth_broker.addr, token="lgt_" + "0" * 43)
    with pytest.raises(Unauthenticated, match="requires authentication"):
        SyncClient(auth_broker.addr)
    with pytest.raises(ValueError):
        SyncClient(auth_broker.addr, user="alice")
    with pytest.raises(ValueError):
        SyncClient(auth_broker.addr, user="alice", password=PASSWORD, token=auth_broker.token)


def test_credentials_for_a_broker_without_auth_are_refused(sync_broker_addr: tuple[str, int]) -> None:
    """It could not tell that broker from an impostor."""
    with pytest.raises(AuthFailed, match="does not authenticate"):
        SyncClient(sync_broker_addr, user="alice", password=PASSWORD)
    with SyncClient(sync_broker_addr) as anyone:
        assert anyone.user is None


def test_brokerctl_takes_credentials_from_the_environment(auth_broker: AuthBroker) -> None:
    addr = ["--addr", auth_broker.addr]
    alice = {"LOCKGATE_USER": "alice", "LOCKGATE_PASSWORD": PASSWORD}
    ctl("create-queue", "orders.eu", *addr, env=alice)
    assert [q["name"] for q in json.loads(ctl("queues", "--json", *addr, env=alice).stdout)] == ["orders.eu"]
    svc = {"LOCKGATE_TOKEN": auth_broker.token}
    denied = ctl("publish", "orders.eu", "x", *addr, env=svc, expect=4)
    assert "error: PERMISSION_DENIED: user 'svc' may not publish 'orders.eu'" in denied.stderr
    # svc may publish to billing, which does not exist; to orders.us (which does not exist
    # either) it may not, and is told only that.
    assert "QUEUE_NOT_FOUND" in ctl("publish", "billing", "x", *addr, env=svc, expect=5).stderr
    assert "PERMISSION_DENIED" in ctl("publish", "orders.us", "x", *addr, env=svc, expect=4).stderr
    wrong = ctl("queues", *addr, env={"LOCKGATE_USER": "alice", "LOCKGATE_PASSWORD": "nope"}, expect=4)
    assert "handshake with" in wrong.stderr and "AUTH_FAILED" in wrong.stderr
    nobody = ctl("queues", *addr, env={"LOCKGATE_USER": "", "LOCKGATE_TOKEN": ""}, expect=4)
    assert "UNAUTHENTICATED" in nobody.stderr
    no_password = ctl("queues", *addr, env={"LOCKGATE_USER": "alice", "LOCKGATE_PASSWORD": ""}, expect=2)
    assert "user 'alice' is given but $LOCKGATE_PASSWORD is not set" in no_password.stderr
    both = ctl("queues", *addr, env={"LOCKGATE_USER": "alice", "LOCKGATE_TOKEN": auth_broker.token}, expect=2)
    assert "not both" in both.stderr
    # The options, before or after the command, instead of the variables.
    as_alice = {"LOCKGATE_PASSWORD": PASSWORD}
    assert json.loads(ctl("--user", "alice", "queues", "--json", *addr, env=as_alice).stdout)[0]["name"] == "orders.eu"
    assert json.loads(ctl("queues", "--user", "alice", "--json", *addr, env=as_alice).stdout)[0]["name"] == "orders.eu"
    assert "PERMISSION_DENIED" in ctl("--token", auth_broker.token, "publish", "orders.eu", "x", *addr,
                                      expect=4).stderr


def test_a_grant_with_brokerctl_applies_to_an_open_connection(auth_broker: AuthBroker) -> None:
    with SyncClient(auth_broker.addr, user="alice", password=PASSWORD) as alice:
        alice.create_queue("orders.eu")
    with SyncClient(auth_broker.addr, user="bob", password=PASSWORD) as bob:
        with pytest.raises(PermissionDenied):
            bob.publish("orders.eu", b"1")
        ctl("user", "grant", "bob", "publish", "orders.eu", "--file", str(auth_broker.users))
        deadline = time.monotonic() + 10  # the broker polls the file every second
        while True:
            try:
                bob.publish("orders.eu", b"1")
                break
            except PermissionDenied:
                assert time.monotonic() < deadline, "the grant did not take effect"
                time.sleep(0.05)
        ctl("user", "delete", "bob", "--file", str(auth_broker.users))
        deadline = time.monotonic() + 10
        while True:
            try:
                bob.publish("orders.eu", b"2")
            except PermissionDenied:
                break
            assert time.monotonic() < deadline, "the deletion did not take effect"
            time.sleep(0.05)
    log = auth_broker.proc.log_tail(1_000_000)
    assert '"event"' not in log  # text lines; the JSON form is tested in tests/e2e/test_auth.py
    assert "authenticated as 'bob' (SCRAM-SHA-256)" in log and "users file" in log
    for secret in (PASSWORD, auth_broker.token):
        assert secret not in log


# -- a server that does not know the secret -----------------------------------------------------

def impostor(server: socket.socket, server_final: str) -> None:
    """Accept one connection; answer hello with a plausible SCRAM server-first, and auth
    with ``server_final``, as a server would that does not hold the user's ServerKey."""
    conn, _ = server.accept()
    with conn:
        proto, enc = Connection("server"), Encoder()
        while True:
            data = conn.recv(65536)
            if not data:
                return
            proto.receive_data(data)
            for frame in proto.frames():
                assert isinstance(frame, Request)
                if frame.op == "hello":
                    nonce = frame.args["auth"]["client_first"].split("r=", 1)[1]
                    result: dict[str, Any] = {
                        "version": 1, "max_frame": 1 << 24, "max_message": 1 << 20, "max_batch": 10000,
                        "server": "impostor", "node": "x", "shards": [],
                        "auth": {"mechanism": "SCRAM-SHA-256",
                                 "server_first": f"r={nonce}abcdefgh,s=AAAAAAAAAAAAAAAAAAAAAA==,i=4096"}}
                else:
                    result = {"mechanism": "SCRAM-SHA-256", "user": "alice", "server_final": server_final}
                conn.sendall(enc.reply(frame.id, result))


@pytest.mark.parametrize("server_final", ["v=" + "A" * 43 + "=", "v=", "e=other-error"])
def test_the_client_checks_the_server_signature(server_final: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        thread = threading.Thread(target=impostor, args=(server, server_final), daemon=True)
        thread.start()
        with pytest.raises(AuthFailed, match="could not prove it knows this user's secret"):
            SyncClient(server.getsockname(), user="alice", password=PASSWORD, timeout=10)
        thread.join(10)


# -- the async client, on both backends ---------------------------------------------------------

@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_async_client_with_a_password_and_a_token(backend: str, auth_broker: AuthBroker) -> None:
    async def main() -> None:
        async with Client.connect(auth_broker.addr, user="alice", password=PASSWORD) as alice:
            assert alice.connection.user == "alice"
            await alice.create_queue("orders.eu")
            await alice.publish("orders.eu", b"x")
            with pytest.raises(PermissionDenied) as info:
                await alice.publish("billing", b"x")
            assert (info.value.permission, info.value.resource) == ("publish", "billing")
        async with Client.connect(auth_broker.addr, token=auth_broker.token) as svc:
            assert svc.connection.user == "svc"
            with pytest.raises(PermissionDenied):
                await svc.consume("orders.eu")
        with pytest.raises(AuthFailed):
            async with Client.connect(auth_broker.addr, user="alice", password="wrong"):
                pass
        with pytest.raises(Unauthenticated):
            async with Client.connect(auth_broker.addr):
                pass

    anyio.run(main, backend=backend)


def test_a_reconnecting_client_authenticates_again(auth_broker: AuthBroker) -> None:
    """The connection is cut; the client's reconnect runs SCRAM again."""
    host, port = auth_broker.addr.rsplit(":", 1)

    async def main() -> None:
        async with cut_proxy((host, int(port))) as proxy, Client.connect(
                proxy.addr, user="alice", password=PASSWORD,
                reconnect=Reconnect(initial_delay_s=0.01, max_delay_s=0.05)) as alice:
            await alice.create_queue("orders.eu")
            first = alice.connection
            proxy.cut_all()
            with anyio.fail_after(30):
                assert await alice.publish("orders.eu", b"after") >= 1
            assert alice.reconnects == 1 and proxy.accepted == 2
            assert alice.connection is not first and alice.connection.user == "alice"

    anyio.run(main, backend="trio")
