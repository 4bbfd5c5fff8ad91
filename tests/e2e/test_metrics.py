"""The metrics endpoint (``metrics_addr``) of a real broker on 127.0.0.1: real traffic
through the SDK, scraped over HTTP and parsed with Prometheus' own text parser; the
endpoint's answers to other paths, other methods and garbage."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from broker.config import BrokerConfig
from broker.metrics import Buckets, RoundTimer
from broker.metrics_http import MAX_CONNECTIONS, MAX_HEAD, REQUEST_TIMEOUT_S, parse_addr
from broker.server import Broker
from client import Client

from ..broker_process import BrokerProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def mbroker(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Broker]:
    """A real broker on 127.0.0.1, port 0, with its metrics on 127.0.0.1, port 0."""
    instance = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data",
                                   metrics_addr="127.0.0.1:0"))
    await nursery.start(instance.serve)
    yield instance


async def http(addr: str, request: bytes) -> bytes:
    """Send ``request`` to ``addr``, end the sending side and read the whole answer."""
    host, port = addr.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request)
        await stream.send_eof()
        chunks = []
        while data := await stream.receive_some(65536):
            chunks.append(data)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def scrape(broker: Broker) -> Samples:
    response = await http(broker.metrics_addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Type: text/plain" in head
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def q(samples: Samples, name: str, queue: str, **labels: str) -> float:
    return samples[(name, tuple(sorted({"queue": queue, **labels}.items())))]


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_counters_and_depths_move_by_what_the_traffic_did(mbroker: Broker) -> None:
    before = await scrape(mbroker)
    assert one(before, "lockgate_queues") == 0
    assert one(before, "lockgate_connections") == one(before, "lockgate_connections_accepted_total") == 0
    assert one(before, "lockgate_broker_info", node_id="lockgate-1", fsync="always") == 1
    assert one(before, "process_resident_memory_bytes") > 0
    appended_before = one(before, "lockgate_wal_appended_bytes_total")
    synced_before = one(before, "lockgate_wal_fsync_batch_bytes_sum")

    async with Client.connect(mbroker.addr) as lg:
        await lg.create_queue("jobs-dlq")
        await lg.create_queue("jobs", max_attempts=2, dead_letter="jobs-dlq")
        await lg.publish_batch("jobs", [b"m%d" % i for i in range(6)])
        for i in range(4):
            await lg.publish("jobs", b"single %d" % i)
        first = [d.id for d in await lg.consume("jobs", max=6)]
        await lg.ack("jobs", first[:3])
        await lg.nack("jobs", first[3:])  # ready again, attempt 1 of 2
        second = await lg.consume("jobs", max=10)
        assert len(second) == 7
        again = [d.id for d in second if d.attempt == 2]
        fresh = [d.id for d in second if d.attempt == 1]
        assert sorted(again) == sorted(first[3:])
        await lg.nack("jobs", again)  # the second attempt of 2: dead-lettered
        await lg.nack("jobs", fresh[:1], delay_ms=600_000)  # delayed
        during = await scrape(mbroker)

    assert q(during, "lockgate_queue_published_total", "jobs") == 10
    assert q(during, "lockgate_queue_delivered_total", "jobs") == 6 + 7
    assert q(during, "lockgate_queue_acked_total", "jobs") == 3
    assert q(during, "lockgate_queue_nacked_total", "jobs") == 3 + 3 + 1
    assert q(during, "lockgate_queue_dead_lettered_total", "jobs") == 3
    assert q(during, "lockgate_queue_lease_expired_total", "jobs") == 0
    assert q(during, "lockgate_queue_dropped_total", "jobs") == 0
    assert q(during, "lockgate_queue_ttl_expired_total", "jobs") == 0
    assert [q(during, "lockgate_queue_messages", "jobs", state=s) for s in ("ready", "leased", "delayed")] == [0, 3, 1]
    assert q(during, "lockgate_queue_depth", "jobs") == 4
    assert q(during, "lockgate_queue_bytes", "jobs") == 4 * len(b"single 0")  # m0-m5 acked or gone
    # the dead letters arrived in the dead-letter queue
    assert q(during, "lockgate_queue_published_total", "jobs-dlq") == 3
    assert q(during, "lockgate_queue_messages", "jobs-dlq", state="ready") == 3
    assert q(during, "lockgate_queue_depth", "jobs-dlq") == 3
    assert q(during, "lockgate_queue_bytes", "jobs-dlq") == 3 * len(b"m0")
    assert one(during, "lockgate_queues") == 2
    assert one(during, "lockgate_connections") == 1
    assert one(during, "lockgate_connections_accepted_total") == 1

    # requests by op: the latency histogram counts each one once
    ops = {"hello": 1, "queue_create": 2, "publish": 5, "consume": 2, "ack": 1, "nack": 3}
    for op, n in ops.items():
        assert one(during, "lockgate_request_duration_seconds_count", op=op) == n, op
        assert one(during, "lockgate_request_duration_seconds_bucket", op=op, le="+Inf") == n
        assert 0 < one(during, "lockgate_request_duration_seconds_sum", op=op) < 10 * n
    assert not [k for k in during if k[0] == "lockgate_request_duration_seconds_count"
                and dict(k[1])["op"] not in ops]

    # every record appended since the first scrape was made durable by an observed fdatasync
    appended = one(during, "lockgate_wal_appended_bytes_total") - appended_before
    assert appended > 0
    assert one(during, "lockgate_wal_fsync_batch_bytes_sum") - synced_before == appended
    syncs = one(during, "lockgate_wal_fsync_duration_seconds_count")
    assert syncs == one(during, "lockgate_wal_fsync_batch_bytes_count") >= 1
    assert one(during, "lockgate_wal_fsync_duration_seconds_bucket", le="+Inf") == syncs
    assert one(during, "lockgate_wal_segments") == 1
    assert one(during, "lockgate_wal_bytes") == 24 + one(during, "lockgate_wal_appended_bytes_total")

    for _ in range(100):  # the broker sees the client's close at its next read
        after = await scrape(mbroker)
        if one(after, "lockgate_connections") == 0:
            break
        await trio.testing.wait_all_tasks_blocked()
    assert one(after, "lockgate_connections") == 0
    assert one(after, "lockgate_connections_accepted_total") == 1


async def test_queue_bytes_follow_the_bodies_held(mbroker: Broker) -> None:
    async with Client.connect(mbroker.addr) as lg:
        await lg.create_queue("q")
        await lg.publish_batch("q", [b"x" * 100, b"y" * 20])
        [d] = await lg.consume("q", max=1)
        assert q(await scrape(mbroker), "lockgate_queue_bytes", "q") == 120
        await lg.ack("q", [d.id])
    assert q(await scrape(mbroker), "lockgate_queue_bytes", "q") == 20


async def test_other_paths_methods_and_garbage_get_errors_and_the_endpoint_lives_on(
        mbroker: Broker) -> None:
    addr = mbroker.metrics_addr
    assert status_of(await http(addr, b"GET / HTTP/1.1\r\n\r\n")) == 404
    assert status_of(await http(addr, b"GET /metricsx HTTP/1.0\r\n\r\n")) == 404
    assert status_of(await http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")) == 405
    assert status_of(await http(addr, b"\x00\xff garbage\r\n\r\n")) == 400
    assert status_of(await http(addr, b"GET /metrics SPDY/3\r\n\r\n")) == 400
    assert status_of(await http(addr, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n")) == 431
    assert await http(addr, b"GET /metr") == b""  # closed before a whole head: no answer
    assert await http(addr, b"") == b""
    head = await http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status_of(head) == 200 and head.endswith(b"\r\n\r\n")
    ok = await http(addr, b"GET /metrics?x=1 HTTP/1.1\n\n")  # bare newlines, a query string
    assert status_of(ok) == 200 and b"lockgate_queues 0.0" in ok
    # a connection beyond the limit is closed at once; the endpoint serves again after
    host, port = addr.rsplit(":", 1)
    idle = [await trio.open_tcp_stream(host, int(port)) for _ in range(MAX_CONNECTIONS)]
    await trio.testing.wait_all_tasks_blocked()
    async with await trio.open_tcp_stream(host, int(port)) as extra:
        assert await extra.receive_some(100) == b""
    for stream in idle:
        await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert await scrape(mbroker)
    # the broker itself never noticed
    async with Client.connect(mbroker.addr) as lg:
        await lg.ping()


async def test_a_client_too_slow_to_send_its_request_is_closed(
        autojump_clock: trio.testing.MockClock, mbroker: Broker) -> None:
    host, port = mbroker.metrics_addr.rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\n")
        started = trio.current_time()
        assert await stream.receive_some(100) == b""
        assert trio.current_time() - started == pytest.approx(REQUEST_TIMEOUT_S)
    assert await scrape(mbroker)


async def test_metrics_are_off_unless_asked_for(broker: Broker) -> None:
    assert broker.metrics is None and broker.metrics_addr == ""


async def test_the_memory_budget_series(mbroker: Broker) -> None:
    samples = await scrape(mbroker)
    assert one(samples, "lockgate_memory_budget_bytes") == mbroker.memory.limit > 0
    assert 0 <= one(samples, "lockgate_memory_budget_used_bytes") <= mbroker.memory.limit
    assert mbroker.metrics is not None
    mbroker.metrics.memory_budget = lambda: (1234, 1 << 30)
    samples = await scrape(mbroker)
    assert one(samples, "lockgate_memory_budget_used_bytes") == 1234
    assert one(samples, "lockgate_memory_budget_bytes") == 1 << 30

    def broken() -> tuple[int, int]:
        raise RuntimeError("no budget today")

    mbroker.metrics.memory_budget = broken  # a failing scrape answers 500; the next one works
    assert status_of(await http(mbroker.metrics_addr, b"GET /metrics HTTP/1.1\r\n\r\n")) == 500
    mbroker.metrics.memory_budget = None
    assert await scrape(mbroker)


def test_buckets_count_many_observations_at_once() -> None:
    b = Buckets((0.001, 0.01))
    b.observe(0.001, 3)  # on a bound: counted in it (le)
    b.observe(0.005)
    b.observe(5.0, 2)
    assert b.cumulative() == [("0.001", 3), ("0.01", 4), ("+Inf", 6)]
    assert b.count == 6 and b.total == pytest.approx(0.003 + 0.005 + 10.0)


def test_a_round_counts_each_op_of_its_requests_with_the_round_time() -> None:
    timer = RoundTimer(["publish", "ack"])
    timer.ran(["publish"] * 3, time.monotonic())()  # one op
    timer.ran(["ack", "publish", "nonsense", "ack"], time.monotonic() - 1.0)()  # mixed, one unknown
    assert sorted(timer.by_op) == ["ack", "publish"]
    assert timer.by_op["publish"].count == 4 and timer.by_op["ack"].count == 2
    assert timer.by_op["ack"].cumulative()[-2:] == [("10.0", 2), ("+Inf", 2)]
    assert timer.by_op["ack"].total == pytest.approx(2.0, abs=0.5)
    publish = dict(timer.by_op["publish"].cumulative())
    assert (publish["1.0"], publish["2.5"]) == (3, 4)  # the mixed round's one took a second


@pytest.mark.parametrize("addr, parsed", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    ("localhost:0", ("localhost", 0)),
    (":9100", (None, 9100)),
    ("[::1]:9100", ("::1", 9100)),
])
def test_parse_addr(addr: str, parsed: tuple[str | None, int]) -> None:
    assert parse_addr(addr) == parsed


@pytest.mark.parametrize("addr", ["9100", "host:", "host:http", "host:70000", "::1:9100", ""])
def test_parse_addr_refuses(addr: str) -> None:
    with pytest.raises(ValueError):
        parse_addr(addr)


async def test_a_bad_metrics_addr_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    instance = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data", metrics_addr="9100"))
    with pytest.RaisesGroup(pytest.RaisesExc(ValueError, match="metrics_addr '9100': must be HOST:PORT"),
                            flatten_subgroups=True):
        await instance.serve()


def test_brokerd_serves_metrics_at_the_address_it_logs(tmp_path: Path) -> None:
    """``brokerd --metrics-addr 127.0.0.1:0``: the log names the real address; a plain
    HTTP client scrapes it."""
    import re
    import urllib.request

    with BrokerProcess(tmp_path / "data", args=("--metrics-addr", "127.0.0.1:0"), log_level="info") as proc:
        found = re.search(r"metrics at (http://127\.0\.0\.1:(\d+)/metrics)", proc.log_path.read_text())
        assert found is not None and found.group(2) != "0"
        with urllib.request.urlopen(found.group(1), timeout=30) as response:
            assert response.status == 200
            text = response.read().decode()
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"lockgate_queues", "lockgate_wal_fsync_duration_seconds", "process_resident_memory_bytes"} <= families
