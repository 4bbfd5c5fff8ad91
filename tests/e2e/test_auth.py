"""Authentication and permissions over real sockets (SPEC.md §4.2-§4.3, broker/auth.py).

An in-process broker with ``auth = "required"`` on 127.0.0.1 and trio's MockClock, so the
delays of failed attempts and the users file's polling run in virtual time; the client
side is raw frames and ``protocol.scram``, byte for byte what SPEC describes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from broker import auth as broker_auth
from broker.commands import COMMANDS
from broker.config import BrokerConfig
from broker.logs import JsonFormatter
from broker.server import Broker
from protocol import Error, ErrorCode, Reply
from protocol.scram import ClientExchange, ScramSecret
from protocol.users import Patterns, User, Users, dump, new_token, token_hash

from .rawclient import RawClient

PASSWORD = "correct horse battery staple"
TOKEN = new_token()
#: One SCRAM secret for every password user (PBKDF2 once per test run).
SECRET = ScramSecret.from_password(PASSWORD)


def user(name: str, *, publish: tuple[str, ...] = (), consume: tuple[str, ...] = (),
         admin: tuple[str, ...] = (), token: str | None = None) -> User:
    return User(name=name, scram=None if token else SECRET, tokens=(token_hash(token),) if token else (),
                publish=Patterns.of(publish), consume=Patterns.of(consume), admin=Patterns.of(admin))


USERS = Users({u.name: u for u in (
    user("root", publish=("*",), consume=("*",), admin=("*",)),
    user("alice", publish=("orders.*",), consume=("orders.*", "audit"), admin=("orders.eu",)),
    user("bob", consume=("orders.eu",)),
    user("svc", publish=("billing",), token=TOKEN),
)})


def write_users(path: Path, users: Users) -> None:
    """Replace the users file atomically, as brokerctl does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(dump(users))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


async def start(nursery: trio.Nursery, tmp_path: Path, users: Users = USERS,
                **settings: Any) -> tuple[Broker, tuple[str, int]]:
    path = tmp_path / "users.toml"
    write_users(path, users)
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data", fsync="never",
                                 auth="required", users_file=path, **settings))
    await nursery.start(broker.serve)
    host, port = broker.addr.rsplit(":", 1)
    return broker, (host, int(port))


async def frame(c: RawClient) -> Any:
    with trio.fail_after(3600):
        return await c.frame()


async def scram(c: RawClient, name: str, password: str = PASSWORD, *, in_hello: bool = True) -> Reply | Error:
    """SCRAM on a fresh connection; returns the final reply (checked against the client's
    expected server signature when it is one)."""
    exchange = ClientExchange(name, password)
    first = {"mechanism": "SCRAM-SHA-256", "client_first": exchange.first()}
    if in_hello:
        hello = await c.call("hello", {"versions": [1], "auth": first})
        assert isinstance(hello, Reply), hello
        server_first = hello.result["auth"]["server_first"]
    else:
        hello = await c.call("hello", {"versions": [1]})
        assert isinstance(hello, Reply) and hello.result["auth"] == {"mechanisms": ["SCRAM-SHA-256", "TOKEN"]}
        started = await c.call("auth", first)
        assert isinstance(started, Reply), started
        server_first = started.result["server_first"]
    final = await c.call("auth", {"client_final": exchange.final(server_first)})
    if isinstance(final, Reply):
        exchange.verify(final.result["server_final"])  # the server knows the user's ServerKey
    return final


async def login(addr: tuple[str, int], name: str) -> RawClient:
    c = await RawClient.open(addr, hello=False)
    reply = await scram(c, name)
    assert isinstance(reply, Reply), reply
    assert reply.result == {"mechanism": "SCRAM-SHA-256", "user": name, "server_final": reply.result["server_final"]}
    return c


async def ok(c: RawClient, op: str, args: dict[str, Any]) -> dict[str, Any]:
    reply = await c.call(op, args)
    assert isinstance(reply, Reply), reply
    result: dict[str, Any] = reply.result
    return result


async def denied(c: RawClient, op: str, args: dict[str, Any], permission: str, resource: str) -> Error:
    reply = await c.call(op, args)
    assert isinstance(reply, Error) and reply.code == ErrorCode.PERMISSION_DENIED, reply
    assert reply.details["permission"] == permission and reply.details["resource"] == resource, reply.details
    return reply


async def closed_after(c: RawClient, reply: Reply | Error) -> Error:
    """``reply`` is AUTH_FAILED, and the connection then ends cleanly (EOF, no reset)."""
    assert isinstance(reply, Error) and reply.code == ErrorCode.AUTH_FAILED, reply
    assert await frame(c) is None
    return reply


# -- before authentication ---------------------------------------------------------------------

#: A request per op, each of which the broker would accept from root.
REQUESTS: dict[str, dict[str, Any]] = {
    "ping": {}, "broker_info": {}, "queue_create": {"queue": "q"}, "queue_delete": {"queue": "q"}, "queue_list": {},
    "queue_stats": {"queue": "q"}, "publish": {"queue": "q", "messages": [[b"x"]]}, "consume": {"queue": "q"},
    "ack": {"queue": "q", "ids": [1]}, "nack": {"queue": "q", "ids": [1]}, "queue_purge": {"queue": "q"},
    "peek": {"queue": "q"}, "message_status": {"queue": "q", "ids": [1]}, "extend": {"queue": "q", "ids": [1]},
    "reject": {"queue": "q", "ids": [1]}, "redrive": {"queue": "q"}, "subscribe": {"queue": "q"},
    "unsubscribe": {"subscription": 1}, "topic_create": {"topic": "t"}, "topic_delete": {"topic": "t"},
    "topic_list": {}, "topic_stats": {"topic": "t"}, "topic_publish": {"topic": "t", "messages": [[b"x"]]},
    "group_create": {"topic": "t", "group": "g"}, "group_delete": {"topic": "t", "group": "g"},
    "group_stats": {"topic": "t", "group": "g"}, "group_seek": {"topic": "t", "group": "g", "to": "earliest"},
    "txn": {"steps": [{"op": "publish", "queue": "q", "messages": [[b"y"]]}]},
}


async def test_every_op_before_authentication_is_refused(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    assert set(REQUESTS) == set(COMMANDS) - {"hello", "auth"}
    broker, addr = await start(nursery, tmp_path)
    c = await RawClient.open(addr, hello=False)
    for op, args in REQUESTS.items():
        reply = await c.call(op, args)
        assert isinstance(reply, Error) and reply.code == ErrorCode.HANDSHAKE_REQUIRED, (op, reply)
    hello = await ok(c, "hello", {"versions": [1]})
    assert hello["auth"] == {"mechanisms": ["SCRAM-SHA-256", "TOKEN"]}
    for op, args in REQUESTS.items():
        reply = await c.call(op, args)
        assert isinstance(reply, Error) and reply.code == ErrorCode.UNAUTHENTICATED and reply.details == {}, (op, reply)
    # Refusals change nothing, and the connection stays open for the handshake.
    assert broker.state.queues == {} and broker.state.topics == {}
    reply = await scram(c, "root", in_hello=False)
    assert isinstance(reply, Reply)
    for op in ("queue_create", "publish", "queue_stats"):
        await ok(c, op, REQUESTS[op])


async def test_auth_is_refused_once_authenticated_and_a_later_hello_keeps_the_user(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)
    c = await login(addr, "alice")
    again = await c.call("auth", {"mechanism": "TOKEN", "token": TOKEN})
    assert isinstance(again, Error) and again.code == ErrorCode.INVALID_ARGUMENT
    hello = await ok(c, "hello", {"versions": [1], "auth": {"mechanism": "TOKEN", "token": TOKEN}})
    assert hello["auth"] == {"user": "alice"}
    await denied(c, "publish", {"queue": "billing", "messages": [[b"x"]]}, "publish", "billing")


# -- failures ----------------------------------------------------------------------------------------

async def test_a_wrong_password_fails_late_and_closes(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)
    delays = []
    for attempt in range(3):
        c = await RawClient.open(addr, hello=False)
        t0 = trio.current_time()
        reply = await closed_after(c, await scram(c, "alice", "wrong password"))
        delays.append(round(trio.current_time() - t0, 3))
        assert reply.details == {"mechanism": "SCRAM-SHA-256"} and reply.message == "authentication failed"
    assert delays == [0.1, 0.2, 0.4]  # per address: 0.1 s doubling per failure


async def test_an_unknown_user_looks_like_a_wrong_password(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)
    a, b = await RawClient.open(addr, hello=False), await RawClient.open(addr, hello=False)
    ha = await ok(a, "hello", {"versions": [1], "auth": {"mechanism": "SCRAM-SHA-256", "client_first": "n,,n=nobody,r=abc"}})
    hb = await ok(b, "hello", {"versions": [1], "auth": {"mechanism": "SCRAM-SHA-256", "client_first": "n,,n=alice,r=abc"}})
    fa, fb = ha["auth"]["server_first"].split(","), hb["auth"]["server_first"].split(",")
    assert [p[:2] for p in fa] == [p[:2] for p in fb] == ["r=", "s=", "i="]
    assert len(fa[1]) == len(fb[1]) and fa[2] == fb[2] == "i=4096"
    # The same fake salt every time for the same unknown name.
    c = await RawClient.open(addr, hello=False)
    hc = await ok(c, "hello", {"versions": [1], "auth": {"mechanism": "SCRAM-SHA-256", "client_first": "n,,n=nobody,r=xyz"}})
    assert hc["auth"]["server_first"].split(",")[1] == fa[1]
    d = await RawClient.open(addr, hello=False)
    await closed_after(d, await scram(d, "nobody"))


async def test_a_wrong_token_fails_and_a_good_one_authenticates(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)
    c = await RawClient.open(addr, hello=False)
    await closed_after(c, await c.call("hello", {"versions": [1], "auth": {"mechanism": "TOKEN", "token": "lgt_" + "x" * 40}}))
    c = await RawClient.open(addr, hello=False)
    hello = await ok(c, "hello", {"versions": [1], "auth": {"mechanism": "TOKEN", "token": TOKEN}})
    assert hello["auth"] == {"mechanism": "TOKEN", "user": "svc"}
    await denied(c, "queue_create", {"queue": "billing"}, "admin", "billing")
    # Malformed auth is an argument error, not a failed attempt: the connection stays.
    d = await RawClient.open(addr, hello=False)
    for auth, field in [({"mechanism": "PLAIN"}, "auth.mechanism"), ({"mechanism": "TOKEN", "token": 5}, "auth.token"),
                        ({"mechanism": "SCRAM-SHA-256", "client_first": "y,,n=a,r=b"}, "auth.client_first"),
                        ("TOKEN", "auth"), ({"mechanism": "TOKEN", "password": "x"}, "auth.password")]:
        reply = await d.call("hello", {"versions": [1], "auth": auth})
        assert isinstance(reply, Error) and reply.code == ErrorCode.INVALID_ARGUMENT, reply
        assert reply.details == {"field": field}
    reply = await d.call("auth", {"client_final": "c=biws,r=abc,p=AAAA"})
    assert isinstance(reply, Error) and reply.details == {"field": "client_final"}


async def test_an_address_over_its_failures_is_refused_unchecked(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path)

    async def guess() -> None:
        c = await RawClient.open(addr, hello=False)
        await closed_after(c, await scram(c, "alice", "guess"))

    # One after another, the growing delays keep an address within its budget; at once,
    # the guesses spend it.
    async with trio.open_nursery() as guessing:
        for _ in range(broker_auth.AUTH_FAILURE_BURST):
            guessing.start_soon(guess)
    # The right password now gets AUTH_FAILED too, after the longest delay, with when to retry.
    c = await RawClient.open(addr, hello=False)
    t0 = trio.current_time()
    reply = await closed_after(c, await c.call("hello", {"versions": [1], "auth": {"mechanism": "TOKEN", "token": TOKEN}}))
    assert trio.current_time() - t0 == pytest.approx(broker_auth.AUTH_DELAY_MAX_S)
    assert 0 < reply.details["retry_after_ms"] <= broker_auth.AUTH_FAILURE_REFILL_S * 1000
    await trio.sleep(reply.details["retry_after_ms"] / 1000)
    c = await RawClient.open(addr, hello=False)
    hello = await ok(c, "hello", {"versions": [1], "auth": {"mechanism": "TOKEN", "token": TOKEN}})
    assert hello["auth"]["user"] == "svc"


# -- permissions -------------------------------------------------------------------------------------

async def test_a_user_at_its_connection_limit_is_refused_cleanly_and_others_are_not(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    broker, addr = await start(nursery, tmp_path, max_connections_per_user=2)
    first, second = await login(addr, "alice"), await login(addr, "alice")
    third = await RawClient.open(addr, hello=False)
    with caplog.at_level(logging.WARNING, logger="lockgate.auth"):
        refused = await scram(third, "alice")
    assert isinstance(refused, Error) and refused.code == ErrorCode.TOO_MANY_CONNECTIONS, refused
    assert refused.id is not None and refused.details == {"limit": 2, "user": "alice"}
    assert await frame(third) is None  # then a clean close (EOF, not a reset)
    [line] = [r for r in caplog.records if "user 'alice' has 2 connections" in r.getMessage()]
    assert (line.event, line.peer, line.user, line.limit) == (  # type: ignore[attr-defined]
        "connection_refused", refused_peer(third), "alice", 2)
    # Other users are not limited by alice's count.
    bob = await login(addr, "bob")
    await ok(bob, "ping", {})
    await ok(first, "ping", {})
    # Once one of alice's connections ends, she may connect again.
    await second.aclose()
    with trio.fail_after(60):
        while broker.auth is not None and broker.auth.connected.get("alice", 0) > 1:
            await trio.sleep(0.01)
    await ok(await login(addr, "alice"), "ping", {})
    assert broker.auth is not None and broker.auth.connected == {"alice": 2, "bob": 1}


def refused_peer(c: RawClient) -> str:
    return "%s:%s" % c.stream.socket.getsockname()[:2]


async def test_a_token_over_the_per_user_limit_is_refused_in_hello(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    _, addr = await start(nursery, tmp_path, max_connections_per_user=1)
    held = await RawClient.open(addr, hello=False)
    assert isinstance(await held.call("hello", {"versions": [1], "auth": {"mechanism": "TOKEN", "token": TOKEN}}),
                      Reply)
    c = await RawClient.open(addr, hello=False)
    refused = await c.call("hello", {"versions": [1], "auth": {"mechanism": "TOKEN", "token": TOKEN}})
    assert isinstance(refused, Error) and refused.code == ErrorCode.TOO_MANY_CONNECTIONS
    assert refused.details == {"limit": 1, "user": "svc"}
    assert await frame(c) is None
    await ok(held, "ping", {})


async def test_permissions_by_name_and_prefix(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    broker, addr = await start(nursery, tmp_path)
    root = await login(addr, "root")
    for q in ("orders.eu", "orders.us", "audit", "billing", "ordersx"):
        await ok(root, "queue_create", {"queue": q})
    await ok(root, "topic_create", {"topic": "orders.events"})
    await ok(root, "group_create", {"topic": "orders.events", "group": "g"})
    await ok(root, "topic_create", {"topic": "payments"})
    await ok(root, "group_create", {"topic": "payments", "group": "g"})

    alice = await login(addr, "alice")
    # publish: orders.* (a prefix), not ordersx, not audit (consume only)
    await ok(alice, "publish", {"queue": "orders.us", "messages": [[b"x"]]})
    await denied(alice, "publish", {"queue": "ordersx", "messages": [[b"x"]]}, "publish", "ordersx")
    await denied(alice, "publish", {"queue": "audit", "messages": [[b"x"]]}, "publish", "audit")
    # consume: every op that reads or settles a queue
    for op, args in [("consume", {"queue": "audit"}), ("peek", {"queue": "audit"}),
                     ("queue_stats", {"queue": "audit"}), ("message_status", {"queue": "audit", "ids": [1]})]:
        await ok(alice, op, args)
    for op, args in [("consume", {"queue": "billing"}), ("ack", {"queue": "billing", "ids": [1]}),
                     ("nack", {"queue": "billing", "ids": [1]}), ("extend", {"queue": "billing", "ids": [1]}),
                     ("reject", {"queue": "billing", "ids": [1]}), ("peek", {"queue": "billing"}),
                     ("message_status", {"queue": "billing", "ids": [1]}), ("subscribe", {"queue": "billing"}),
                     ("queue_stats", {"queue": "billing"})]:
        await denied(alice, op, args, "consume", "billing")
    # admin: exactly orders.eu
    await ok(alice, "queue_purge", {"queue": "orders.eu"})
    for op, args in [("queue_purge", {"queue": "orders.us"}), ("queue_delete", {"queue": "orders.us"}),
                     ("redrive", {"queue": "orders.us"}), ("queue_create", {"queue": "orders.new"})]:
        await denied(alice, op, args, "admin", "orders.us" if op != "queue_create" else "orders.new")
    # A dead-letter queue named at creation needs publish on it.
    await denied(alice, "queue_create", {"queue": "orders.eu", "dead_letter": "billing"},
                 "publish", "billing")
    # Topics and groups: TOPIC/GROUP is the topic's.
    await ok(alice, "topic_publish", {"topic": "orders.events", "messages": [[b"e"]]})
    await ok(alice, "consume", {"queue": "orders.events/g"})
    await ok(alice, "group_stats", {"topic": "orders.events", "group": "g"})
    await denied(alice, "consume", {"queue": "payments/g"}, "consume", "payments")
    await denied(alice, "group_seek", {"topic": "orders.events", "group": "g", "to": "earliest"}, "admin", "orders.events")
    await denied(alice, "topic_delete", {"topic": "orders.events"}, "admin", "orders.events")
    # A transaction needs what each step needs.
    await denied(alice, "txn", {"steps": [{"op": "publish", "queue": "orders.eu", "messages": [[b"a"]]},
                                          {"op": "publish", "queue": "billing", "messages": [[b"b"]]}]},
                 "publish", "billing")
    await ok(alice, "txn", {"steps": [{"op": "publish", "queue": "orders.eu", "messages": [[b"a"]]},
                                      {"op": "topic_publish", "topic": "orders.events", "messages": [[b"b"]]}]})
    # The lists show only what the user holds a permission on.
    assert [q["queue"] for q in (await ok(alice, "queue_list", {}))["queues"]] == ["audit", "orders.eu", "orders.us"]
    assert [t["topic"] for t in (await ok(alice, "topic_list", {}))["topics"]] == ["orders.events"]
    assert len((await ok(root, "queue_list", {}))["queues"]) == 5
    # A denied request names the user, and changed nothing.
    err = await denied(alice, "queue_delete", {"queue": "billing"}, "admin", "billing")
    assert err.details["user"] == "alice"
    assert "billing" in broker.state.queues


async def test_pipelined_publishes_are_checked_one_by_one(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    """Plain publishes of one read run together (the batch fast path): each still needs publish."""
    broker, addr = await start(nursery, tmp_path)
    root = await login(addr, "root")
    for q in ("orders.eu", "billing"):
        await ok(root, "queue_create", {"queue": q})
    alice = await login(addr, "alice")
    queues = ["orders.eu", "orders.eu", "billing", "orders.eu", "billing"]
    await alice.send_raw(b"".join(alice.enc.request(100 + i, "publish", {"queue": q, "messages": [[b"m"]]})
                                  for i, q in enumerate(queues)))
    replies = [await frame(alice) for _ in queues]
    assert [type(r).__name__ for r in replies] == ["Reply", "Reply", "Error", "Reply", "Error"]
    assert all(r.code == ErrorCode.PERMISSION_DENIED for r in replies if isinstance(r, Error))
    assert len(broker.state.queues["orders.eu"].messages) == 3 and not broker.state.queues["billing"].messages


async def test_a_changed_users_file_takes_effect_without_a_restart(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path) -> None:
    broker, addr = await start(nursery, tmp_path)
    root = await login(addr, "root")
    await ok(root, "queue_create", {"queue": "billing"})
    bob = await login(addr, "bob")
    await denied(bob, "publish", {"queue": "billing", "messages": [[b"x"]]}, "publish", "billing")
    path = tmp_path / "users.toml"
    bob_user = USERS.get("bob")
    assert bob_user is not None
    write_users(path, USERS.with_user(bob_user.granted("publish", ["billing"])))  # type: ignore[arg-type]
    await trio.sleep(broker_auth.USERS_POLL_S * 1.5)
    # The same connection, still bob, now may.
    await ok(bob, "publish", {"queue": "billing", "messages": [[b"x"]]})
    # A file that does not parse is reported and changes nothing.
    path.write_text("this is not toml [")
    await trio.sleep(broker_auth.USERS_POLL_S * 1.5)
    await ok(bob, "publish", {"queue": "billing", "messages": [[b"x"]]})
    # Bob deleted: his connection holds no permission any more; a new one cannot log in.
    write_users(path, USERS.without("bob"))
    await trio.sleep(broker_auth.USERS_POLL_S * 1.5)
    err = await denied(bob, "publish", {"queue": "billing", "messages": [[b"x"]]}, "publish", "billing")
    assert err.details["user"] == "bob"
    c = await RawClient.open(addr, hello=False)
    await closed_after(c, await scram(c, "bob"))
    assert broker.auth is not None and broker.auth.users.get("bob") is None


# -- audit lines --------------------------------------------------------------------------------------

async def test_audit_lines_name_user_and_peer_and_never_a_secret(
        autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lockgate")
    _, addr = await start(nursery, tmp_path)
    root = await login(addr, "root")
    await ok(root, "queue_create", {"queue": "orders.eu"})
    await ok(root, "queue_purge", {"queue": "orders.eu"})
    await ok(root, "topic_create", {"topic": "t"})
    await ok(root, "group_create", {"topic": "t", "group": "g"})
    bad = await RawClient.open(addr, hello=False)
    await closed_after(bad, await scram(bad, "alice", "hunter2-wrong"))
    tok = await RawClient.open(addr, hello=False)
    await ok(tok, "hello", {"versions": [1], "client": "billing-job", "auth": {"mechanism": "TOKEN", "token": TOKEN}})
    await denied(tok, "queue_delete", {"queue": "orders.eu"}, "admin", "orders.eu")
    peer = f"127.0.0.1:{root.stream.socket.getsockname()[1]}"
    await root.aclose()
    await trio.sleep(1)

    events = [r.__dict__ for r in caplog.records if hasattr(r, "event")]
    by_event: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_event.setdefault(e["event"], []).append(e)
    assert {(e["user"], e["mechanism"]) for e in by_event["auth_ok"]} == {("root", "SCRAM-SHA-256"), ("svc", "TOKEN")}
    assert any(e["peer"] == peer for e in by_event["auth_ok"])
    (failed,) = by_event["auth_failed"]
    assert failed["user"] == "alice" and failed["reason"] == "the proof does not match" and failed["peer"]
    assert [(e["queue"], e["user"], e["peer"]) for e in by_event["queue_create"]] == [("orders.eu", "root", peer)]
    admin = {(e["op"], e["user"], e["peer"]) for e in by_event["admin_op"]}
    assert admin == {("queue_purge", "root", peer), ("topic_create", "root", peer), ("group_create", "root", peer)}
    assert [(e["user"], e["op"], e["permission"]) for e in by_event["permission_denied"]] == [
        ("svc", "queue_delete", "admin")]
    assert any(e["user"] == "root" and e["peer"] == peer for e in by_event["connection_close"])
    # Every line as JSON, and no secret anywhere in it.
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for secret in (PASSWORD, "hunter2-wrong", TOKEN, "p=", "client_final", SECRET.stored_key.hex()):
        assert secret not in text
    for line in text.splitlines():
        json.loads(line)


def test_a_loud_warning_when_listening_beyond_loopback_without_auth(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = Broker(BrokerConfig(data_dir=tmp_path / "data"))
    broker._log_auth(["127.0.0.1", "::1"])
    assert not caplog.records
    broker._log_auth(["0.0.0.0"])
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.__dict__["event"] == "auth_off_exposed"
    assert "AUTHENTICATION IS OFF" in record.getMessage()
