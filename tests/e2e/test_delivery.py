"""Leases, nack, delays, expiry, dead-lettering and long-poll over real sockets, on trio's MockClock."""
from __future__ import annotations

import trio

from protocol import Error, ErrorCode, Reply

from .rawclient import RawClient


async def _setup(addr: tuple[str, int], **queue: object) -> RawClient:
    c = await RawClient.open(addr)
    reply = await c.call("queue_create", {"queue": "q", **queue})
    assert isinstance(reply, Reply), reply
    return c


async def test_lease_expires_and_redelivers_with_higher_attempt(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await _setup(broker_addr, visibility_ms=5000)
    await c.call("publish", {"queue": "q", "messages": [[b"m"]]})
    first = (await c.call("consume", {"queue": "q"})).result["messages"]
    assert [(m[1], m[2]) for m in first] == [(b"m", 1)]
    assert (await c.call("consume", {"queue": "q"})).result["messages"] == []
    await trio.sleep(4.9)
    assert (await c.call("consume", {"queue": "q"})).result["messages"] == []
    await trio.sleep(0.2)
    again = (await c.call("consume", {"queue": "q"})).result["messages"]
    assert [(m[0], m[2]) for m in again] == [(first[0][0], 2)]
    stats = (await c.call("queue_stats", {"queue": "q"})).result
    assert stats["expired"] == 1 and stats["leased"] == 1


async def test_ack_deletes_and_reports_missing(broker_addr: tuple[str, int]) -> None:
    c = await _setup(broker_addr)
    await c.call("publish", {"queue": "q", "messages": [[b"a"], [b"b"]]})
    got = (await c.call("consume", {"queue": "q", "max": 5})).result["messages"]
    ids = [m[0] for m in got]
    reply = await c.call("ack", {"queue": "q", "ids": ids + [999]})
    assert reply.result == {"acked": 2, "missing": [999]}
    stats = (await c.call("queue_stats", {"queue": "q"})).result
    assert stats["messages"] == 0 and stats["acked"] == 2


async def test_nack_with_delay(autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    c = await _setup(broker_addr)
    await c.call("publish", {"queue": "q", "messages": [[b"a"]]})
    [msg] = (await c.call("consume", {"queue": "q"})).result["messages"]
    reply = await c.call("nack", {"queue": "q", "ids": [msg[0], 12345], "delay_ms": 2000})
    assert reply.result == {"released": 1, "missing": [12345]}
    assert (await c.call("queue_stats", {"queue": "q"})).result["delayed"] == 1
    assert (await c.call("consume", {"queue": "q"})).result["messages"] == []
    await trio.sleep(2.01)
    [again] = (await c.call("consume", {"queue": "q"})).result["messages"]
    assert again[0] == msg[0] and again[2] == 2


async def test_delayed_publish(autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    c = await _setup(broker_addr)
    await c.call("publish", {"queue": "q", "messages": [[b"later", None, None, 3000], [b"now"]]})
    now = (await c.call("consume", {"queue": "q", "max": 10})).result["messages"]
    assert [m[1] for m in now] == [b"now"]
    await trio.sleep(3.01)
    later = (await c.call("consume", {"queue": "q", "max": 10})).result["messages"]
    assert [m[1] for m in later] == [b"later"]


async def test_max_attempts_moves_to_dead_letter(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await RawClient.open(broker_addr)
    await c.call("queue_create", {"queue": "dlq"})
    await c.call("queue_create", {"queue": "q", "max_attempts": 2, "dead_letter": "dlq", "visibility_ms": 1000})
    await c.call("publish", {"queue": "q", "messages": [[b"poison"]]})
    [m] = (await c.call("consume", {"queue": "q"})).result["messages"]
    await c.call("nack", {"queue": "q", "ids": [m[0]]})
    [m] = (await c.call("consume", {"queue": "q"})).result["messages"]
    assert m[2] == 2
    await trio.sleep(1.5)  # the second lease expires: attempts exhausted
    await trio.sleep(0)
    stats = (await c.call("queue_stats", {"queue": "q"})).result
    assert stats["messages"] == 0 and stats["dead_lettered"] == 1
    [dead] = (await c.call("consume", {"queue": "dlq"})).result["messages"]
    assert dead[1] == b"poison" and dead[2] == 1


async def test_long_poll_consume_is_answered_when_a_message_arrives(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    waiter = await _setup(broker_addr)
    producer = await RawClient.open(broker_addr)
    rid = await waiter.request("consume", {"queue": "q", "wait_ms": 60_000})
    # Requests after the held one are answered first: replies match by id.
    assert isinstance(await waiter.call("ping", {}), Reply)
    await trio.sleep(10)
    start = trio.current_time()
    await producer.call("publish", {"queue": "q", "messages": [[b"hi"]]})
    reply = await waiter.frame()
    assert reply.id == rid and [m[1] for m in reply.result["messages"]] == [b"hi"]
    assert trio.current_time() - start < 1


async def test_long_poll_times_out_empty(autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]) -> None:
    c = await _setup(broker_addr)
    start = trio.current_time()
    reply = await c.call("consume", {"queue": "q", "wait_ms": 5000})
    assert isinstance(reply, Reply) and reply.result["messages"] == []
    assert 5 <= trio.current_time() - start < 6


async def test_long_poll_on_deleted_queue_gets_not_found(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await _setup(broker_addr)
    other = await RawClient.open(broker_addr)
    rid = await c.request("consume", {"queue": "q", "wait_ms": 60_000})
    await trio.sleep(1)
    await other.call("queue_delete", {"queue": "q"})
    err = await c.frame()
    assert isinstance(err, Error) and err.id == rid and err.code == ErrorCode.QUEUE_NOT_FOUND


async def test_fifo_order_and_priority_order(broker_addr: tuple[str, int]) -> None:
    c = await RawClient.open(broker_addr)
    await c.call("queue_create", {"queue": "f"})
    await c.call("queue_create", {"queue": "l", "kind": "lifo"})
    await c.call("queue_create", {"queue": "p", "kind": "priority"})
    for q in ("f", "l"):
        await c.call("publish", {"queue": q, "messages": [[b"1"], [b"2"], [b"3"]]})
    await c.call("publish", {"queue": "p", "messages": [[b"lo", None, 1], [b"hi", None, 9], [b"lo2", None, 1]]})
    bodies = {}
    for q in ("f", "l", "p"):
        bodies[q] = [m[1] for m in (await c.call("consume", {"queue": q, "max": 10})).result["messages"]]
    assert bodies == {"f": [b"1", b"2", b"3"], "l": [b"3", b"2", b"1"], "p": [b"hi", b"lo", b"lo2"]}


async def test_keyed_messages_keep_order_per_shard(broker_addr: tuple[str, int]) -> None:
    from protocol import shard_for_key

    c = await RawClient.open(broker_addr)
    await c.call("queue_create", {"queue": "s", "shards": 4})
    msgs = [[f"{k}-{i}".encode(), k.encode()] for i in range(5) for k in ("a", "b", "c")]
    await c.call("publish", {"queue": "s", "messages": msgs})
    got = (await c.call("consume", {"queue": "s", "max": 100})).result["messages"]
    assert sorted(m[1] for m in got) == sorted(m[0] for m in msgs)
    for key in (b"a", b"b", b"c"):
        seq = [m[1] for m in got if m[3] == key]
        assert seq == [f"{key.decode()}-{i}".encode() for i in range(5)]
        assert shard_for_key(key, 4) in range(4)


async def test_long_poll_on_dead_letter_queue_wakes_on_dead_lettering(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await RawClient.open(broker_addr)
    await c.call("queue_create", {"queue": "dlq"})
    await c.call("queue_create", {"queue": "q", "max_attempts": 1, "dead_letter": "dlq"})
    watcher = await RawClient.open(broker_addr)
    rid = await watcher.request("consume", {"queue": "dlq", "wait_ms": 600_000})
    await c.call("publish", {"queue": "q", "messages": [[b"bad"]]})
    [m] = (await c.call("consume", {"queue": "q"})).result["messages"]
    start = trio.current_time()
    await c.call("nack", {"queue": "q", "ids": [m[0]]})
    reply = await watcher.frame()
    assert reply.id == rid and [x[1] for x in reply.result["messages"]] == [b"bad"]
    assert trio.current_time() - start < 1


async def test_held_consume_sees_a_publish_pipelined_behind_it(
    autojump_clock: trio.testing.MockClock, broker_addr: tuple[str, int]
) -> None:
    c = await _setup(broker_addr)
    start = trio.current_time()
    held = c.enc.request(100, "consume", {"queue": "q", "wait_ms": 600_000})
    pub = c.enc.request(101, "publish", {"queue": "q", "messages": [[b"x"]]})
    await c.send_raw(held + pub)  # one write: both decoded from one read
    frames = {f.id: f for f in [await c.frame(), await c.frame()]}
    assert [m[1] for m in frames[100].result["messages"]] == [b"x"]
    assert trio.current_time() - start < 1
