"""Lockgate benchmark: throughput and latency of the hot paths, per fsync policy.

Scenarios (128-byte bodies by default):
  batch-publish      publish frames of 1000 messages, a few frames in flight
  pipelined-publish  one message per frame, up to 256 frames in flight
  consume-ack        consume up to 1000 under lease, ack them in one frame
  push-ack           one subscription (credit 256) pushes; each push is acked in one frame
  push-ack-4         four subscriptions on four connections share the queue
  sequential-publish one message per frame, one at a time (latency)
  topic-publish-N    topic_publish frames of 1000 messages to a topic with N groups (1, 4, 16)
                     that consume nothing, a few frames in flight
  fanout-4           four groups of one topic, each drained by its own connection in
                     consume+ack batches of 1000 (deliveries/s in total)
  txn                one txn per frame (ack one leased message, publish one), 256 in flight
plus ``fdatasync`` (one 4 KiB write + fdatasync on the data directory's disk),
``replay`` (records/s a broker replays from its WAL at start-up) and, when asked,
``topic-replay`` (start-up recovery of a topic retaining messages for 16 groups).
With a broker of its own the bench also reports the WAL bytes each scenario logged per
message (``wal_bytes_per_msg``) and the CPU the broker process spent per message
(``broker_cpu_us_per_msg``, from ``/proc/PID/stat``): on a machine shared with other work
the rate swings with the neighbours' load, the CPU per message much less.

Each figure is the median of ``--runs`` runs. By default the bench starts a fresh broker
for each policy and scenario on 127.0.0.1 with a temporary data directory; ``--addr`` measures
a running broker instead (its policy is whatever it was started with). ``--metrics``
measures what the metrics endpoint costs: each scenario runs on two brokers, one with
``--metrics-addr 127.0.0.1:0``, their runs alternating, and the ratio is reported.
``--tls`` measures what TLS costs the same way: the second broker serves TLS with a
throwaway certificate (made with ``trustme``: ``pip install -e '.[bench]'``) and the
bench's connections speak TLS 1.3 to it.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from client.cli.common import Progress
from protocol import GROUP_SEPARATOR, GROUP_WINDOW, Connection, Encoder, Error, Push, Reply
from tools import tlscerts

BODY_SIZE = 128
#: What ``--metrics`` adds to the command line of the second broker.
METRICS_ARGS = ("--metrics-addr", "127.0.0.1:0")


@dataclass(frozen=True, slots=True)
class Result:
    """One scenario's median figures."""

    scenario: str
    policy: str
    messages: int
    msg_per_s: float
    p50_us: float
    p99_us: float
    runs: int
    #: Median bytes the broker's log grew by per message (None when the bench did not
    #: start the broker: its data directory is unknown).
    wal_bytes_per_msg: float | None = None
    #: Median µs of CPU (user + system) the broker process spent per message during a
    #: run, which other load on the machine disturbs much less than the rate (None when
    #: the bench did not start the broker). Its fsync helper process is not counted.
    broker_cpu_us_per_msg: float | None = None


class Wire:
    """A blocking, pipelining connection speaking raw frames (the lightest client path),
    in TLS with ``tls`` (a client context)."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.conn = Connection("client")
        self.enc = Encoder()
        self.call("hello", {"versions": [1], "client": "lockgate-bench"})

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> list[Reply]:
        """At least one frame; raises on an ERROR frame."""
        while True:
            frames = self.conn.frames()
            if frames:
                for f in frames:
                    if isinstance(f, Error):
                        raise RuntimeError(f"{f.code.name}: {f.message}")
                return frames  # type: ignore[return-value]
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("broker closed the connection")
            self.conn.receive_data(data)

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.send(self.enc.request(0, op, args))
        return self.receive()[0].result

    def close(self) -> None:
        self.sock.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(samples: list[float]) -> tuple[float, float]:
    if not samples:
        return 0.0, 0.0
    s = sorted(samples)
    return s[len(s) // 2] * 1e6, s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6


def _pipeline(wire: Wire, frames: list[bytes], per_frame: int, window: int) -> tuple[float, list[float]]:
    """Send ``frames`` keeping at most ``window`` unanswered; returns (seconds, latencies).

    Refills in bursts once an eighth of the window is free, as a real pipelining client does.
    """
    sent_at: list[float] = []
    latencies: list[float] = []
    total = len(frames)
    sent = done = 0
    start = time.perf_counter()
    refill = max(1, window // 8)
    while done < total:
        free = window - (sent - done)
        if sent < total and (free >= refill or sent == done):
            burst = min(free, total - sent)
            now = time.perf_counter()
            wire.send(b"".join(frames[sent : sent + burst]))
            sent_at.extend([now] * burst)
            sent += burst
        replies = wire.receive()
        now = time.perf_counter()
        for frame in replies:
            if isinstance(frame, Push):
                continue  # e.g. the end of a subscription an earlier scenario left
            latencies.append(now - sent_at[done])
            done += 1
    return time.perf_counter() - start, latencies


#: ``--dedup-ids``: every published message carries its own dedup id (SPEC §8.9).
DEDUP_IDS = False


def _entry(body: bytes, n: int) -> list[Any]:
    """A publish entry; with ``DEDUP_IDS`` the ``n``-th message's own dedup id."""
    return [body, None, None, None, None, b"bench-%d" % n] if DEDUP_IDS else [body]


def batch_publish(wire: Wire, queue: str, messages: int, batch: int = 1000, window: int = 4) -> tuple[int, float, list[float]]:
    body = os.urandom(BODY_SIZE)
    n = max(1, messages // batch)
    if DEDUP_IDS:
        frames = [wire.enc.request(1, "publish", {"queue": queue, "messages": [
            _entry(body, f * batch + i) for i in range(batch)]}) for f in range(n)]
    else:
        frames = [wire.enc.request(1, "publish", {"queue": queue, "messages": [[body]] * batch})] * n
    seconds, lat = _pipeline(wire, frames, batch, window)
    return n * batch, seconds, lat


def pipelined_publish(wire: Wire, queue: str, messages: int, window: int = 256) -> tuple[int, float, list[float]]:
    body = os.urandom(BODY_SIZE)
    frames = [wire.enc.request(i, "publish", {"queue": queue, "messages": [_entry(body, i)]})
              for i in range(messages)]
    seconds, lat = _pipeline(wire, frames, 1, window)
    return messages, seconds, lat


def consume_ack(wire: Wire, queue: str, messages: int, batch: int = 1000) -> tuple[int, float, list[float]]:
    """Consume in batches and ack each batch; the ack goes out with the next consume."""
    enc = wire.enc
    consume = enc.request(1, "consume", {"queue": queue, "max": batch})
    done = 0
    latencies: list[float] = []
    start = time.perf_counter()
    pending_ack = b""
    while done < messages:
        t = time.perf_counter()
        wire.send(pending_ack + consume)
        replies: list[Reply] = []
        want = 2 if pending_ack else 1
        while len(replies) < want:
            replies.extend(wire.receive())
        latencies.append(time.perf_counter() - t)
        got = replies[-1].result["messages"]
        if not got:
            break
        done += len(got)
        pending_ack = enc.request(2, "ack", {"queue": queue, "ids": [m[0] for m in got]})
    if pending_ack:
        wire.send(pending_ack)
        wire.receive()
    return done, time.perf_counter() - start, latencies


def push_ack(wire: Wire, queue: str, messages: int, credit: int = 256) -> tuple[int, float, list[float]]:
    """Subscribe with ``credit`` and ack each push's messages in one ack as it arrives
    (acks are not waited for); latency: push to push."""
    enc = wire.enc
    wire.send(enc.request(1, "subscribe", {"queue": queue, "credit": credit}))
    done = 0
    latencies: list[float] = []
    start = last = time.perf_counter()
    subscription = 0
    while done < messages:
        for frame in wire.receive():
            if isinstance(frame, Push):
                if frame.name != "deliver":
                    continue
                got = frame.payload["messages"]
                done += len(got)
                wire.send(enc.request(2, "ack", {"queue": queue, "ids": [m[0] for m in got]}))
                now = time.perf_counter()
                latencies.append(now - last)
                last = now
            elif frame.id == 1:
                subscription = frame.result["subscription"]
    seconds = time.perf_counter() - start
    wire.send(enc.request(3, "unsubscribe", {"subscription": subscription}))
    while not any(isinstance(f, Reply) and f.id == 3 for f in wire.receive()):
        pass  # pushes and ack replies still on their way
    return done, seconds, latencies


def push_ack_4(wire: Wire, queue: str, messages: int) -> tuple[int, float, list[float]]:
    """Four subscribers on four connections (one thread each) share the queue, each
    acking every push as it arrives; the total rate until all ``messages`` are acked."""
    import threading

    wires = [Wire(wire.host, wire.port, wire.tls) for _ in range(4)]
    lock = threading.Lock()
    total = [0]
    latencies: list[float] = []

    def one(w: Wire) -> None:
        enc = w.enc
        w.send(enc.request(1, "subscribe", {"queue": queue, "credit": 256}))
        w.sock.settimeout(0.2)
        last = time.perf_counter()
        while total[0] < messages:
            try:
                frames = w.receive()
            except (TimeoutError, socket.timeout):
                continue
            for frame in frames:
                if isinstance(frame, Push) and frame.name == "deliver":
                    got = frame.payload["messages"]
                    w.send(enc.request(2, "ack", {"queue": queue, "ids": [m[0] for m in got]}))
                    now = time.perf_counter()
                    with lock:
                        total[0] += len(got)
                        latencies.append(now - last)
                    last = now

    threads = [threading.Thread(target=one, args=(w,)) for w in wires]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for w in wires:
        w.close()
    return total[0], seconds, latencies


def sequential_publish(wire: Wire, queue: str, messages: int) -> tuple[int, float, list[float]]:
    body = os.urandom(BODY_SIZE)
    frame = wire.enc.request(1, "publish", {"queue": queue, "messages": [[body]]})
    latencies = []
    start = time.perf_counter()
    for _ in range(messages):
        t = time.perf_counter()
        wire.send(frame)
        wire.receive()
        latencies.append(time.perf_counter() - t)
    return messages, time.perf_counter() - start, latencies


def _fill(wire: Wire, op: str, field: str, name: str, messages: int, batch: int = 1000,
          window: int = 4) -> None:
    """Publish exactly ``messages`` 128-byte bodies to ``name`` (``op`` publish or
    topic_publish, ``field`` queue or topic) in frames of at most ``batch``, untimed."""
    body = os.urandom(BODY_SIZE)
    sizes = [batch] * (messages // batch) + ([messages % batch] if messages % batch else [])
    frames = [wire.enc.request(1, op, {field: name, "messages": [[body]] * n}) for n in sizes]
    _pipeline(wire, frames, batch, window)


def topic_publish(wire: Wire, topic: str, messages: int, batch: int = 1000,
                  window: int = 4) -> tuple[int, float, list[float]]:
    """``batch_publish`` to a topic: frames of ``batch`` messages, ``window`` in flight."""
    body = os.urandom(BODY_SIZE)
    batch = min(batch, messages)
    n = max(1, messages // batch)
    frames = [wire.enc.request(1, "topic_publish", {"topic": topic, "messages": [[body]] * batch})] * n
    seconds, lat = _pipeline(wire, frames, batch, window)
    return n * batch, seconds, lat


def fanout(wire: Wire, topic: str, messages: int, groups: int) -> tuple[int, float, list[float]]:
    """Groups ``g0``.. of ``topic`` (each holding ``messages``, see ``prepare``) drained
    at once, each by its own connection and thread as ``consume_ack`` does; the
    deliveries of all of them (each consumed and acked) over the time until the last
    group is empty. Latency: one consume (with the previous batch's ack) round trip."""
    import threading

    wires = [Wire(wire.host, wire.port, wire.tls) for _ in range(groups)]
    outcomes: list[tuple[int, float, list[float]] | BaseException | None] = [None] * groups

    def one(i: int) -> None:
        try:
            outcomes[i] = consume_ack(wires[i], f"{topic}{GROUP_SEPARATOR}g{i}", messages)
        except BaseException as exc:  # handed to the main thread below
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(groups)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for w in wires:
        w.close()
    total = 0
    latencies: list[float] = []
    for outcome in outcomes:
        if not isinstance(outcome, tuple):
            raise RuntimeError(f"a fan-out consumer failed: {outcome!r}") from (
                outcome if isinstance(outcome, BaseException) else None)
        total += outcome[0]
        latencies += outcome[2]
    return total, seconds, latencies


def fanout_4(wire: Wire, topic: str, messages: int) -> tuple[int, float, list[float]]:
    return fanout(wire, topic, messages, 4)


#: The lease ``prepare`` takes on the messages the ``txn`` scenario acks: longer than any run.
TXN_LEASE_MS = 3_600_000


def txn_ack_publish(wire: Wire, queue: str, messages: int, window: int = 256) -> tuple[int, float, list[float]]:
    """One ``txn`` per frame, up to ``window`` in flight: ack message ``i`` of ``queue``
    (ids 1..``messages``, all leased by ``prepare``) and publish one 128-byte message to
    ``queue-out``. A lease that was lost would fail the run (``TXN_CONFLICT``)."""
    body = os.urandom(BODY_SIZE)
    out = f"{queue}-out"
    frames = [wire.enc.request(i, "txn", {"steps": [
        {"op": "ack", "queue": queue, "ids": [i]},
        {"op": "publish", "queue": out, "messages": [[body]]}]}) for i in range(1, messages + 1)]
    seconds, lat = _pipeline(wire, frames, 1, window)
    return messages, seconds, lat


#: Groups of the topic of each topic scenario, created before the run (start ``latest``).
TOPIC_GROUPS = {"topic-publish-1": 1, "topic-publish-4": 4, "topic-publish-16": 16, "fanout-4": 4}
#: Scenarios that read a queue ``prepare`` fills first.
FILLED = ("consume-ack", "push-ack", "push-ack-4")


def prepare(wire: Wire, scenario: str, name: str, messages: int) -> None:
    """Create what one run of ``scenario`` works on, named ``name``, untimed: a queue
    (filled for the consuming scenarios); a topic with its groups (each holding
    ``messages`` for ``fanout-4``); or, for ``txn``, ``messages`` messages leased in
    ``name`` (ids 1..``messages``) and an empty queue ``name-out``."""
    groups = TOPIC_GROUPS.get(scenario)
    if groups is not None:
        wire.call("topic_create", {"topic": name})
        for g in range(groups):
            wire.call("group_create", {"topic": name, "group": f"g{g}"})
        if scenario.startswith("fanout"):
            _fill(wire, "topic_publish", "topic", name, messages)
        return
    wire.call("queue_create", {"queue": name})
    if scenario in FILLED:
        batch_publish(wire, name, messages)
    elif scenario == "txn":
        wire.call("queue_create", {"queue": f"{name}-out"})
        _fill(wire, "publish", "queue", name, messages)
        leased = 0
        while leased < messages:
            got = wire.call("consume", {"queue": name, "max": min(1000, messages - leased),
                                        "visibility_ms": TXN_LEASE_MS})["messages"]
            if not got:
                raise RuntimeError(f"only {leased} of {messages} messages to lease in {name!r}")
            leased += len(got)


def cleanup(wire: Wire, scenario: str, name: str) -> None:
    """Delete what ``prepare`` created."""
    if scenario in TOPIC_GROUPS:
        wire.call("topic_delete", {"topic": name})
        return
    wire.call("queue_delete", {"queue": name})
    if scenario == "txn":
        wire.call("queue_delete", {"queue": f"{name}-out"})


def wal_end(data: Path) -> int:
    """The LSN just past the last record the broker with data directory ``data`` wrote
    (its last segment's base plus the record bytes in it): the log's growth between two
    readings, whatever checkpoints removed meanwhile."""
    from broker.wal.segment import SEGMENT_HEADER_SIZE, segment_base

    bases = [(base, p) for p in (data / "wal").iterdir() if (base := segment_base(p.name)) is not None]
    if not bases:
        return 0
    base, last = max(bases)
    return base + max(0, last.stat().st_size - SEGMENT_HEADER_SIZE)


def measure_fdatasync(directory: Path, count: int = 300) -> float:
    """Median µs of one 4 KiB append + fdatasync in ``directory``."""
    path = directory / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    block = os.urandom(4096)
    samples = []
    try:
        for _ in range(count):
            t = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(samples) * 1e6


def write_replay_wal(data: Path, records: int) -> None:
    """A WAL in ``data`` with a queue and ``records`` single-message publish records."""
    import msgpack

    from broker.mutations import Publish, QueueCreate
    from broker.records import encode
    from broker.wal import SegmentedLog

    log = SegmentedLog.open(data / "wal")
    log.append(encode(QueueCreate("replay", "fifo", 1, 30_000, 0, None, 10**9)))
    body = os.urandom(BODY_SIZE)
    now = int(time.time() * 1000)
    for i in range(1, records + 1):
        log.append(encode(Publish("replay", i, now, [body])))
        if i % 100_000 == 0:
            log.write()
    log.close()


def measure_replay(records: int, workdir: Path) -> tuple[float, float]:
    """Write ``records`` single-message publish records, start a broker on them, and
    return (records/s, seconds) of its start-up replay as it reports it."""
    from tools.procs import BrokerProcess

    data = workdir / "replay-data"
    write_replay_wal(data, records)
    proc = BrokerProcess(data, args=("--log-level", "info")).start(timeout=300)
    try:
        for line in proc.log_tail(100_000).splitlines():
            if "recovered:" in line:
                seconds = float(line.split(" in ")[1].split(" s")[0])
                got = int(line.split("recovered: ")[1].split(" records")[0])
                return got / seconds, seconds
    finally:
        proc.stop()
    raise RuntimeError("the broker did not report its replay")


#: Groups of the ``topic-replay`` figure's topic.
TOPIC_REPLAY_GROUPS = 16


def write_topic_wal(data: Path, messages: int, groups: int = TOPIC_REPLAY_GROUPS, per_record: int = 1) -> None:
    """A WAL in ``data`` as a broker logs it for a topic ``replay`` (one shard,
    ``interest`` retention) with ``groups`` groups (default delivery settings) that read
    from its start and consumed nothing, then ``messages`` published to it in topic
    publish records of ``per_record`` messages each (1: the most records)."""
    from broker.mutations import GroupCreate, TopicCreate, TopicPublish
    from broker.records import encode
    from broker.wal import SegmentedLog
    from protocol import (DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_BACKOFF, DEFAULT_RETRY_MAX_DELAY_MS,
                          DEFAULT_VISIBILITY_MS, Retention)

    log = SegmentedLog.open(data / "wal")
    log.append(encode(TopicCreate("replay", 1, str(Retention.INTEREST), 0, 0, 0)))
    for g in range(groups):
        log.append(encode(GroupCreate("replay", f"g{g}", [1], None, DEFAULT_VISIBILITY_MS, DEFAULT_MAX_ATTEMPTS,
                                      None, 0, str(DEFAULT_RETRY_BACKOFF), DEFAULT_RETRY_MAX_DELAY_MS, 0, False)))
    body = os.urandom(BODY_SIZE)
    now = int(time.time() * 1000)
    first = 1
    written = 0
    while first <= messages:
        n = min(per_record, messages - first + 1)
        log.append(encode(TopicPublish("replay", first, now, [body] * n)))
        first += n
        if first - written > 100_000:
            log.write()
            written = first
    log.close()


def _recovered_line(log_text: str) -> tuple[int, float]:
    """(records, seconds) of the last ``recovered:`` line a broker logged."""
    line = [x for x in log_text.splitlines() if "recovered:" in x][-1]
    return int(line.split("recovered: ")[1].split(" records")[0]), float(line.split(" in ")[1].split(" s")[0])


def measure_topic_replay(messages: int, workdir: Path, groups: int = TOPIC_REPLAY_GROUPS,
                         per_record: int = 1) -> dict[str, float]:
    """Start a broker on ``write_topic_wal``'s log (recovery replays it), check what it
    holds, stop it cleanly (it writes a snapshot) and start it again (recovery loads the
    snapshot). For each start: the recovery's own seconds from its ``recovered:`` line,
    and the seconds from spawning the process to its listening line."""
    from tools.procs import BrokerProcess

    data = workdir / "topic-replay-data"
    write_topic_wal(data, messages, groups, per_record)
    proc = BrokerProcess(data, log_level="info")
    out: dict[str, float] = {"messages": messages, "groups": groups, "per_record": per_record}
    try:
        for label in ("log", "snapshot"):
            t = time.perf_counter()
            proc.start(timeout=600)
            out[f"{label}_listening_s"] = time.perf_counter() - t
            records, seconds = _recovered_line(proc.log_path.read_text(errors="replace"))
            out[f"{label}_records"] = records
            out[f"{label}_seconds"] = seconds
            wire = Wire(proc.host, proc.port)
            stats = wire.call("topic_stats", {"topic": "replay"})
            window = wire.call("group_stats", {"topic": "replay", "group": f"g{groups - 1}"})["ready"]
            wire.close()
            if stats["messages"] != messages or len(stats["groups"]) != groups \
                    or not min(messages, GROUP_WINDOW // 2 + 1) <= window <= GROUP_WINDOW:
                raise RuntimeError(f"after recovery from the {label} the topic holds {stats['messages']} messages "
                                   f"and {len(stats['groups'])} groups, the last group {window} ready")
            if proc.stop(timeout=600) != 0:
                raise RuntimeError(f"the broker did not stop cleanly: {proc.log_tail()}")
    finally:
        proc.kill()
    return out


def broker_instructions(workdir: Path, scenario: str, messages: int, args: tuple[str, ...] = ()) -> int:
    """Instructions a broker process (``--fsync never``) executes from start to a clean
    stop, under ``valgrind --tool=callgrind``, serving ``messages`` of ``scenario``
    (``replay``: starting on a log of that many records; ``topic-replay-G``: on
    ``write_topic_wal``'s log of that many messages for G groups), started with ``args`` more.
    Deterministic for a given build and machine, whatever else the machine is doing."""
    import re
    import signal
    import subprocess

    data = workdir / f"instr-{scenario}-{messages}{'-x' if args else ''}"
    replaying = scenario == "replay" or scenario.startswith("topic-replay-")
    if scenario == "replay":
        write_replay_wal(data, messages)
    elif replaying:
        write_topic_wal(data, messages, int(scenario.rsplit("-", 1)[1]))
    out = data.parent / f"{data.name}.callgrind"
    root = Path(__file__).resolve().parents[1]
    errors = data.parent / f"{data.name}.stderr"
    with open(errors, "wb") as stderr:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m", "broker",
             "--host", "127.0.0.1", "--port", "0", "--data", str(data), "--fsync", "never", *args],
            stdout=subprocess.PIPE, stderr=stderr, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert proc.stdout is not None
        found = None
        while found is None:
            line = proc.stdout.readline().decode()
            if not line:
                tail = errors.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the broker under valgrind did not start:\n{tail}")
            found = re.search(r"listening on (\S+):(\d+)", line)
        if not replaying:
            wire = Wire(found.group(1), int(found.group(2)))
            prepare(wire, scenario, "q", messages)
            SCENARIOS[scenario](wire, "q", messages)
            wire.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=900)
    totals = [int(line.split()[1]) for line in out.read_text().splitlines()
              if line.startswith(("summary:", "totals:"))]
    return max(totals)


def parked(workdir: Path, waiters: int = 10_000, publishes: int = 200,
           idle_s: float = 5.0) -> dict[str, float]:
    """``waiters`` long-poll consumes held on one queue (over connections of at most
    1,000 each): the broker's CPU while they wait, and how long after a publish the
    first of them has its message (one publish at a time)."""
    import selectors

    from tools.procs import BrokerProcess

    proc = BrokerProcess(workdir / "parked", fsync="always").start()
    try:
        assert proc.pid is not None
        producer = Wire(proc.host, proc.port)
        producer.call("queue_create", {"queue": "q"})
        held: list[Wire] = []
        per = 1000
        for start in range(0, waiters, per):
            w = Wire(proc.host, proc.port)
            w.send(b"".join(w.enc.request(i, "consume", {"queue": "q", "wait_ms": 1_200_000})
                            for i in range(1, min(per, waiters - start) + 1)))
            held.append(w)
        time.sleep(1.0)  # a real process settles: let it take every consume into its lines
        before = cpu_seconds(proc.pid)
        time.sleep(idle_s)
        idle_cpu = (cpu_seconds(proc.pid) - before) / idle_s
        selector = selectors.DefaultSelector()
        for w in held:
            selector.register(w.sock, selectors.EVENT_READ, w)
        latencies: list[float] = []
        publish = producer.enc.request(0, "publish", {"queue": "q", "messages": [[b"x"]]})
        for _ in range(publishes):
            t = time.perf_counter()
            producer.send(publish)
            got = False
            while not got:
                for key, _ in selector.select(timeout=10):
                    frames = key.data.receive()
                    got = got or any(isinstance(f, Reply) and f.result.get("messages") for f in frames)
            latencies.append(time.perf_counter() - t)
            producer.receive()  # the publish's own reply
        p50, p99 = _percentiles(latencies)
        for w in held:
            w.close()
        producer.close()
        return {"waiters": waiters, "idle_cpu_percent": idle_cpu * 100, "wake_p50_us": p50, "wake_p99_us": p99}
    finally:
        proc.stop()


#: Message counts of the two sizes ``--instructions`` runs each figure at.
INSTRUCTION_SIZES = {"pipelined-publish": 2_000, "batch-publish": 20_000, "consume-ack": 20_000,
                     "push-ack": 20_000, "push-ack-4": 20_000,
                     "replay": 30_000, "sequential-publish": 1_000,
                     "topic-publish-1": 20_000, "topic-publish-4": 20_000, "topic-publish-16": 20_000,
                     "fanout-4": 10_000, "txn": 2_000, "topic-replay-1": 30_000, "topic-replay-16": 30_000}
#: The figures ``--instructions`` counts unless ``--only`` names others.
DEFAULT_INSTRUCTION_FIGURES = ("pipelined-publish", "batch-publish", "consume-ack", "replay",
                               "sequential-publish")


def instructions_per_message(workdir: Path, args: tuple[str, ...] = (),
                             only: tuple[str, ...] | None = None) -> dict[str, float]:
    """Broker instructions per message of each figure (those in ``only``, else the
    default ones): the difference between a run of N and of 3N messages over 2N, so
    start-up and shutdown cancel out. A message is what the scenario counts per
    ``messages`` (``fanout-4``: one topic message, delivered to four groups; ``txn``:
    one transaction, after its input was published and leased; ``consume-ack``,
    ``push-ack`` and ``push-ack-4``: one message published in a batch, delivered and acked)."""
    out: dict[str, float] = {}
    for scenario in only if only is not None else DEFAULT_INSTRUCTION_FIGURES:
        n = INSTRUCTION_SIZES[scenario]
        small = broker_instructions(workdir, scenario, n, args)
        large = broker_instructions(workdir, scenario, 3 * n, args)
        out[scenario] = (large - small) / (2 * n)
    return out


def throwaway_tls(workdir: Path) -> tuple[tuple[str, ...], ssl.SSLContext]:
    """``--tls``: brokerd's TLS flags for a fresh CA's certificate for 127.0.0.1, and a
    client context trusting that CA (``tools.tlscerts``)."""
    try:
        return tlscerts.throwaway_tls(workdir)
    except ImportError:
        raise click.UsageError("--tls makes its certificate with trustme: pip install -e '.[bench]'") from None


def compare_metrics(workdir: Path, policies: list[str], sizes: dict[str, int], runs: int,
                    only: tuple[str, ...] | None, on_args: tuple[str, ...] = METRICS_ARGS,
                    on_tls: ssl.SSLContext | None = None) -> list[dict[str, Any]]:
    """Each scenario on two fresh brokers, one with ``on_args`` (and reached in TLS with
    ``on_tls``), their runs alternating (which goes first swaps every run): the medians
    and their ratio."""
    from tools.procs import BrokerProcess

    rows: list[dict[str, Any]] = []
    for policy in policies:
        for name in SCENARIOS:
            if only is not None and name not in only:
                continue
            procs = {label: BrokerProcess(workdir / f"data-{policy}-{name}-{label}", fsync=policy,
                                          args=args).start()
                     for label, args in (("off", ()), ("on", on_args))}
            figures: dict[str, list[Result]] = {"off": [], "on": []}
            try:
                for r in range(runs):
                    for label in ("off", "on") if r % 2 == 0 else ("on", "off"):
                        proc = procs[label]
                        figures[label] += run_scenarios(proc.host, proc.port, policy, sizes, 1,
                                                        f"{policy}-{label}-{r}", (name,),
                                                        tls=on_tls if label == "on" else None)
            finally:
                for proc in procs.values():
                    proc.stop()
            off = statistics.median(f.msg_per_s for f in figures["off"])
            on = statistics.median(f.msg_per_s for f in figures["on"])
            rows.append({"scenario": name, "policy": policy, "runs": runs, "off_msg_per_s": off,
                         "on_msg_per_s": on, "ratio": on / off,
                         "off_p50_us": statistics.median(f.p50_us for f in figures["off"]),
                         "on_p50_us": statistics.median(f.p50_us for f in figures["on"])})
    return rows


SCENARIOS: dict[str, Callable[[Wire, str, int], tuple[int, float, list[float]]]] = {
    "batch-publish": batch_publish,
    "pipelined-publish": pipelined_publish,
    "consume-ack": consume_ack,
    "push-ack": push_ack,
    "push-ack-4": push_ack_4,
    "sequential-publish": sequential_publish,
    "topic-publish-1": topic_publish,
    "topic-publish-4": topic_publish,
    "topic-publish-16": topic_publish,
    "fanout-4": fanout_4,
    "txn": txn_ack_publish,
}


def run_scenarios(host: str, port: int, policy: str, sizes: dict[str, int], runs: int,
                  tag: str, only: tuple[str, ...] | None = None, data: Path | None = None,
                  pid: int | None = None, tls: ssl.SSLContext | None = None) -> list[Result]:
    """Run every scenario (or those in ``only``) ``runs`` times against one broker (in TLS
    with ``tls``); given the broker's data directory ``data``, also how much it logged per
    message, and given its process id ``pid``, the CPU it spent per message."""
    results = []
    wire = Wire(host, port, tls)
    try:
        for name, fn in SCENARIOS.items():
            if only is not None and name not in only:
                continue
            rates, p50s, p99s, counts, wal, cpu = [], [], [], [], [], []
            for r in range(runs):
                queue = f"bench-{tag}-{name}-{r}"
                prepare(wire, name, queue, sizes[name])
                before = wal_end(data) if data is not None else 0
                cpu_before = cpu_seconds(pid) if pid is not None else 0.0
                n, seconds, lat = fn(wire, queue, sizes[name])
                if pid is not None:
                    cpu.append((cpu_seconds(pid) - cpu_before) / n * 1e6)
                if data is not None:
                    wal.append((wal_end(data) - before) / n)
                p50, p99 = _percentiles(lat)
                rates.append(n / seconds)
                p50s.append(p50)
                p99s.append(p99)
                counts.append(n)
                cleanup(wire, name, queue)
            results.append(Result(name, policy, int(statistics.median(counts)), statistics.median(rates),
                                  statistics.median(p50s), statistics.median(p99s), runs,
                                  statistics.median(wal) if wal else None,
                                  statistics.median(cpu) if cpu else None))
    finally:
        wire.close()
    return results


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--addr", default=None, help="Measure a running broker at host:port instead of starting one.")
@click.option("--policies", default="always,never", show_default=True,
              help="Fsync policies to start brokers with (ignored with --addr).")
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1), help="Runs per figure (median).")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(0.01),
              help="Multiply message counts (use < 1 for a quick look).")
@click.option("--replay-records", default=1_000_000, show_default=True, type=click.IntRange(0),
              help="Records for the start-up replay figure (0 skips it).")
@click.option("--instructions", is_flag=True,
              help="Instead: count the broker's instructions per message of each figure under "
              "valgrind (deterministic; for comparing builds on a busy machine).")
@click.option("--parked", "parked_waiters", type=click.IntRange(1), default=None,
              help="Instead: hold this many long-poll consumes on one queue; report the broker's "
              "idle CPU and how soon a publish wakes one of them.")
@click.option("--dedup-ids", is_flag=True,
              help="Every message published by the publish scenarios carries its own dedup id.")
@click.option("--metrics", is_flag=True,
              help="Instead: the cost of the metrics endpoint. Each scenario on two brokers, one "
              "with --metrics-addr, runs alternating; with --instructions, both counted.")
@click.option("--tls", is_flag=True,
              help="Instead: the cost of TLS. Each scenario on two brokers, one serving TLS with a "
              "throwaway certificate (trustme), runs alternating.")
@click.option("--topic-replay", "topic_replay", default=0, show_default=True, type=click.IntRange(0),
              help=f"Messages for the topic start-up recovery figure ({TOPIC_REPLAY_GROUPS} groups that "
              "consumed nothing; 0 skips it): from the log, then from the snapshot of a clean stop.")
@click.option("--topic-replay-per-record", default=1, show_default=True, type=click.IntRange(1),
              help="Messages per topic publish record of that log.")
@click.option("--only", default=None, help="Comma-separated scenarios to run (default: all; with "
              "--instructions, the figures of INSTRUCTION_SIZES to count instead of the first five).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def main(addr: str | None, policies: str, runs: int, scale: float, replay_records: int,
         instructions: bool, parked_waiters: int | None, dedup_ids: bool, metrics: bool, tls: bool,
         topic_replay: int, topic_replay_per_record: int, only: str | None, as_json: bool) -> None:
    """Measure publish, consume+ack and latency figures, fdatasync and replay speed."""
    global DEDUP_IDS
    DEDUP_IDS = dedup_ids
    chosen = tuple(only.split(",")) if only else None
    known = INSTRUCTION_SIZES if instructions else SCENARIOS
    if chosen is not None and set(chosen) - set(known):
        raise click.BadParameter(f"unknown scenarios {sorted(set(chosen) - set(known))}; "
                                 f"they are {', '.join(known)}", param_hint="--only")
    if tls and (instructions or parked_waiters or addr):
        raise click.UsageError("--tls starts brokers of its own and measures throughput: not with "
                               "--addr, --instructions or --parked")
    if parked_waiters:
        with tempfile.TemporaryDirectory(prefix="lockgate-parked-") as tmp:
            figures = parked(Path(tmp), parked_waiters)
        print(json.dumps({"machine": machine(), **figures}, indent=2) if as_json else
              "\n".join(f"{k}: {v:,.1f}" for k, v in figures.items()))
        return
    if instructions and metrics:
        with tempfile.TemporaryDirectory(prefix="lockgate-instr-") as tmp:
            off = instructions_per_message(Path(tmp), only=chosen)
            on = instructions_per_message(Path(tmp), METRICS_ARGS, chosen)
        if as_json:
            print(json.dumps({"machine": machine(), "instructions_per_message": {"off": off, "on": on}}, indent=2))
        else:
            for scenario in off:
                print(f"{scenario}: {off[scenario]:,.0f} broker instructions per message without metrics, "
                      f"{on[scenario]:,.0f} with (x{on[scenario] / off[scenario]:.4f})")
        return
    if instructions:
        with tempfile.TemporaryDirectory(prefix="lockgate-instr-") as tmp:
            counts = instructions_per_message(Path(tmp), only=chosen)
        if as_json:
            print(json.dumps({"machine": machine(), "instructions_per_message": counts}, indent=2))
        else:
            for scenario, count in counts.items():
                print(f"{scenario}: {count:,.0f} broker instructions per message")
        return
    sizes = {k: max(1000, int(v * scale)) for k, v in {
        "batch-publish": 500_000, "pipelined-publish": 100_000,
        "consume-ack": 300_000, "push-ack": 300_000, "push-ack-4": 300_000,
        "sequential-publish": 3_000, "topic-publish-1": 300_000, "topic-publish-4": 300_000,
        "topic-publish-16": 300_000, "fanout-4": 100_000, "txn": 60_000}.items()}
    if metrics or tls:
        what = "TLS" if tls else "metrics"
        with tempfile.TemporaryDirectory(prefix="lockgate-bench-") as tmp:
            if tls:
                on_args, on_tls = throwaway_tls(Path(tmp))
                rows = compare_metrics(Path(tmp), policies.split(","), sizes, runs, chosen, on_args, on_tls)
            else:
                rows = compare_metrics(Path(tmp), policies.split(","), sizes, runs, chosen)
        if as_json:
            print(json.dumps({"machine": machine(), what.lower(): rows}, indent=2))
            return
        print(f"machine: {machine()}")
        print(f"command: {' '.join(['python -m tools.bench'] + sys.argv[1:])}")
        print()
        print(f"| scenario | policy | msg/s without {what} | with {what} | ratio | p50 µs without | with |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for row in rows:
            print(f"| {row['scenario']} | {row['policy']} | {row['off_msg_per_s']:,.0f} | {row['on_msg_per_s']:,.0f} "
                  f"| {row['ratio']:.3f} | {row['off_p50_us']:,.0f} | {row['on_p50_us']:,.0f} |")
        return
    results: list[Result] = []
    extras: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lockgate-bench-") as tmp:
        workdir = Path(tmp)
        extras["fdatasync_p50_us"] = measure_fdatasync(workdir)
        if addr:
            host, port = addr.rsplit(":", 1)
            results += run_scenarios(host, int(port), "as-running", sizes, runs, "x", chosen)
        else:
            from tools.procs import BrokerProcess

            # A fresh broker per scenario: no carry-over between them.
            plan = [(policy, name) for policy in policies.split(",") for name in SCENARIOS
                    if chosen is None or name in chosen]
            with Progress(len(plan), "scenarios", min_total=2) as progress:
                for policy, name in plan:
                    proc = BrokerProcess(workdir / f"data-{policy}-{name}", fsync=policy).start()
                    try:
                        results += run_scenarios(proc.host, proc.port, policy, sizes, runs, policy, (name,),
                                                 proc.data_dir, proc.pid)
                    finally:
                        proc.stop()
                    progress.add(1)
        if replay_records:
            rate, seconds = measure_replay(replay_records, workdir)
            extras["replay_records"] = replay_records
            extras["replay_records_per_s"] = rate
            extras["replay_seconds"] = seconds
        topic_figures = (measure_topic_replay(topic_replay, workdir, per_record=topic_replay_per_record)
                         if topic_replay else None)
    if as_json:
        print(json.dumps({"machine": machine(), "results": [asdict(r) for r in results], **extras,
                          **({"topic_replay": topic_figures} if topic_figures else {})}, indent=2))
        return
    print(f"machine: {machine()}")
    print(f"command: {' '.join(['python -m tools.bench'] + sys.argv[1:])}")
    print(f"fdatasync (4 KiB append) p50: {extras['fdatasync_p50_us']:.0f} µs")
    print()
    print("| scenario | policy | messages | msg/s | p50 µs | p99 µs | WAL bytes/msg | broker CPU µs/msg |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        wal = "" if r.wal_bytes_per_msg is None else f"{r.wal_bytes_per_msg:,.1f}"
        cpu = "" if r.broker_cpu_us_per_msg is None else f"{r.broker_cpu_us_per_msg:,.2f}"
        print(f"| {r.scenario} | {r.policy} | {r.messages:,} | {r.msg_per_s:,.0f} | {r.p50_us:,.0f} | {r.p99_us:,.0f} "
              f"| {wal} | {cpu} |")
    if "replay_records_per_s" in extras:
        print()
        print(f"replay on start-up: {int(extras['replay_records']):,} records in "
              f"{extras['replay_seconds']:.2f} s = {extras['replay_records_per_s']:,.0f} records/s")
    if topic_figures:
        t = topic_figures
        print()
        print(f"topic recovery on start-up ({int(t['messages']):,} messages, {int(t['groups'])} groups, "
              f"{int(t['per_record'])} per record): from the log {t['log_seconds']:.2f} s "
              f"({int(t['log_records']):,} records; listening after {t['log_listening_s']:.2f} s), "
              f"from the snapshot {t['snapshot_seconds']:.2f} s (listening after {t['snapshot_listening_s']:.2f} s)")


if __name__ == "__main__":
    main()
