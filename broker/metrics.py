"""What the broker tells Prometheus (``metrics_addr``), kept cheap for the publish path.

Most series are read when a scrape comes, from what the broker keeps anyway: each
queue's depths and lifetime counters from ``BrokerState``, connections from the server,
the log's files from its directory. A scrape copies those numbers in the event loop
(``Reading``) and makes the text in a worker thread, which touches nothing else.

Only two things are observed as they happen, into histograms kept as plain counts
(``Buckets``: a bisect and two additions, no lock, in the event loop's thread):

- each fdatasync of the log (``SegmentedLog.on_sync``): its duration and the record
  bytes it made durable (the group commit's batch);
- each round of requests (``RoundTimer``): the ops it ran (the server lists them as it
  takes each request) and the time from the read that brought them to the write of
  their replies, which all requests of a round share. Per round, not per request: a
  round of 128 publishes costs one clock read and one observation (of 128), plus an
  append per request.

The docs/operations.md "Metrics" section lists every series; keep the two in step.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from operator import attrgetter
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .commands import COMMANDS
from .config import BrokerConfig
from .state import BrokerState
from .wal import SegmentedLog

__all__ = ["BrokerMetrics", "Buckets", "Reading", "RoundTimer", "CONTENT_TYPE_LATEST", "families"]

#: Request latency buckets, seconds: from a round of pipelined requests with no fsync
#: to one stuck behind a slow disk.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: fdatasync duration buckets, seconds.
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                 0.1, 0.25, 0.5, 1.0, 2.5)
#: Bytes one fdatasync made durable: 256 B to 64 MiB, by fours.
SYNC_BYTES_BUCKETS = tuple(float(256 * 4**i) for i in range(10))

#: The per-queue counters: (series name without ``_total``, ``Queue`` attribute, help).
QUEUE_COUNTERS = (
    ("lockgate_queue_published", "published",
     "Messages added to the queue: publishes, and dead letters moved in."),
    ("lockgate_queue_delivered", "delivered",
     "Deliveries: messages leased by a consume or a push (each attempt counts), or taken with auto-ack."),
    ("lockgate_queue_acked", "acked", "Messages acked (or taken with auto-ack)."),
    ("lockgate_queue_nacked", "nacked",
     "Leased messages released before their lease ran out: nacked, or their consumer's connection closed."),
    ("lockgate_queue_lease_expired", "expired", "Leases that ran out before an ack (the message is released)."),
    ("lockgate_queue_dead_lettered", "dead_lettered", "Messages moved to the queue's dead-letter queue."),
    ("lockgate_queue_dropped", "dropped",
     "Messages past max attempts or rejected, dropped because the queue has no dead-letter queue."),
    ("lockgate_queue_ttl_expired", "ttl_expired",
     "Messages whose time to live passed (dropped or dead-lettered)."),
)


class Buckets:
    """A histogram as plain counts: ``observe(value, n)`` counts ``n`` observations of
    ``value`` at once. Not thread-safe: observe and read it in the event loop."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.total += value * n

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, observations <= le)`` for each bound, then ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((floatToGoString(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class RoundTimer:
    """Request latency by op, one round at a time (see the module docs)."""

    def __init__(self, ops: Iterable[str]) -> None:
        #: The ops timed; a request of another op (an unknown name) is not.
        self._known = frozenset(ops)
        #: Latency buckets by op, for the ops seen so far.
        self.by_op: dict[str, Buckets] = {}

    def ran(self, ops: list[str], read_at: float) -> Callable[[], None]:
        """The callback to call once the replies of a round that ran requests of ``ops``
        (one entry each) are written: it counts each as taking the time since
        ``read_at`` (``time.monotonic()``)."""
        def sent() -> None:
            seconds = time.monotonic() - read_at
            first = ops[0]
            n = ops.count(first)
            if n == len(ops):  # the usual round: one op
                self._observe(first, seconds, n)
            else:
                for op in set(ops):
                    self._observe(op, seconds, ops.count(op))

        return sent

    def _observe(self, op: str, seconds: float, n: int) -> None:
        buckets = self.by_op.get(op)
        if buckets is None:
            if op not in self._known:
                return
            buckets = self.by_op[op] = Buckets(LATENCY_BUCKETS)
        buckets.observe(seconds, n)


class Observed(Protocol):
    """What a reading takes from the broker."""

    config: BrokerConfig
    state: BrokerState

    @property
    def connections(self) -> int: ...

    @property
    def connections_accepted(self) -> int: ...


Histogram = tuple[list[tuple[str, float]], float]
"""A histogram's cumulative buckets and sum, as ``HistogramMetricFamily`` takes them."""


@dataclass(frozen=True, slots=True)
class Reading:
    """The broker's numbers for one scrape, copied in the event loop (``BrokerMetrics.read``)
    so that the text can be made in a worker thread that touches no broker state."""

    node_id: str
    fsync: str
    #: Per queue: name, ready, leased, delayed, messages, bytes, then ``QUEUE_COUNTERS``.
    queues: list[tuple[Any, ...]]
    connections: int
    accepted: int
    latency: list[tuple[str, Histogram]]
    wal: tuple[int, int, int, int]  # segments, bytes, allocated bytes, appended bytes
    fsync_seconds: Histogram
    fsync_bytes: Histogram
    memory_budget: tuple[int, int] | None


class BrokerMetrics:
    """The series of one broker (on a registry of its own, not the process-wide default
    one, so that several brokers can run in one process) and the histograms fed as the
    broker runs.

    A scrape is ``scrape()`` in the event loop, which copies the numbers (``read``: a few
    attribute reads per queue and a ``stat`` per WAL segment), then the callable it
    returns, in a worker thread, which makes the text: the longer part, about a
    millisecond per ten queues."""

    def __init__(self, broker: Observed, log: SegmentedLog) -> None:
        self.registry = CollectorRegistry()
        self.rounds = RoundTimer(COMMANDS)
        self.fsync_seconds = Buckets(FSYNC_BUCKETS)
        self.fsync_bytes = Buckets(SYNC_BYTES_BUCKETS)
        #: The memory budget, once the broker has one: a callable returning (bytes in
        #: use, limit). While it is None the two ``lockgate_memory_budget_*`` series are
        #: left out.
        self.memory_budget: Callable[[], tuple[int, int]] | None = None
        self._broker = broker
        self._log = log
        log.on_sync = self._on_sync
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, fds
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def _on_sync(self, seconds: float, nbytes: int) -> None:
        self.fsync_seconds.observe(seconds)
        self.fsync_bytes.observe(nbytes)

    def scrape(self) -> Callable[[], bytes]:
        """Read the numbers now; the callable returned makes every series of them in the
        Prometheus text format, in any thread."""
        return partial(generate_latest, _Scrape(self.read(), self.registry))

    def render(self) -> bytes:
        """``scrape()()``: all at once, in this thread."""
        return self.scrape()()

    def read(self) -> Reading:
        """Copy the numbers of every series (in the event loop)."""
        broker = self._broker
        counters = attrgetter(*(attr for _, attr, _ in QUEUE_COUNTERS))
        queues = [(name, q.ready, q.leased, q.delayed, len(q.messages), q.bytes, *counters(q))
                  for name, q in broker.state.queues.items()]
        log = self._log
        budget = self.memory_budget
        return Reading(
            broker.config.node_id, broker.config.fsync.value, queues, broker.connections,
            broker.connections_accepted,
            [(op, (b.cumulative(), b.total)) for op, b in sorted(self.rounds.by_op.items())],
            (*log.disk_usage(), log.appended_lsn),
            (self.fsync_seconds.cumulative(), self.fsync_seconds.total),
            (self.fsync_bytes.cumulative(), self.fsync_bytes.total),
            budget() if budget is not None else None)


def families(r: Reading) -> Iterator[Metric]:
    """The broker's own series from a reading (docs/operations.md, "Metrics")."""
    info = GaugeMetricFamily("lockgate_broker_info", "The broker's node id and fsync policy (always 1).",
                             labels=["node_id", "fsync"])
    info.add_metric([r.node_id, r.fsync], 1)
    yield info

    yield GaugeMetricFamily("lockgate_queues", "Queues, dead-letter queues included.", len(r.queues))
    messages = GaugeMetricFamily("lockgate_queue_messages", "Messages in the queue by state.",
                                 labels=["queue", "state"])
    depth = GaugeMetricFamily("lockgate_queue_depth",
                              "Messages in the queue, every state (the sum of lockgate_queue_messages).",
                              labels=["queue"])
    body_bytes = GaugeMetricFamily("lockgate_queue_bytes", "Bytes of message bodies in the queue.",
                                   labels=["queue"])
    counters = [CounterMetricFamily(name, text, labels=["queue"]) for name, _, text in QUEUE_COUNTERS]
    for name, ready, leased, delayed, held, nbytes, *counts in r.queues:
        label = [name]
        messages.add_metric([name, "ready"], ready)
        messages.add_metric([name, "leased"], leased)
        messages.add_metric([name, "delayed"], delayed)
        depth.add_metric(label, held)
        body_bytes.add_metric(label, nbytes)
        for family, n in zip(counters, counts):
            family.add_metric(label, n)
    yield messages
    yield depth
    yield body_bytes
    yield from counters

    yield GaugeMetricFamily("lockgate_connections", "Client connections open now.", r.connections)
    yield CounterMetricFamily("lockgate_connections_accepted", "Client connections accepted since start.",
                              r.accepted)
    latency = HistogramMetricFamily(
        "lockgate_request_duration_seconds",
        "Time from reading a request to writing its reply, by op (a held consume: until it is held).",
        labels=["op"])
    for op, (buckets, total) in r.latency:
        latency.add_metric([op], buckets, total)
    yield latency

    segments, size, allocated, appended = r.wal
    yield GaugeMetricFamily("lockgate_wal_segments", "WAL segment files.", segments)
    yield GaugeMetricFamily("lockgate_wal_bytes", "Bytes in WAL segment files.", size)
    yield GaugeMetricFamily("lockgate_wal_allocated_bytes",
                            "Bytes the file system allocated to WAL segments (the reserved room included).",
                            allocated)
    yield CounterMetricFamily("lockgate_wal_appended_bytes",
                              "Record bytes appended to the WAL over its life (the log's end LSN).", appended)
    yield HistogramMetricFamily("lockgate_wal_fsync_duration_seconds", "Duration of each fdatasync of the WAL.",
                                *r.fsync_seconds)
    yield HistogramMetricFamily("lockgate_wal_fsync_batch_bytes",
                                "Record bytes each fdatasync of the WAL made durable (group commit).",
                                *r.fsync_bytes)

    if r.memory_budget is not None:
        used, limit = r.memory_budget
        yield GaugeMetricFamily("lockgate_memory_budget_used_bytes",
                                "Bytes counted against the broker's memory budget.", used)
        yield GaugeMetricFamily("lockgate_memory_budget_bytes", "The broker's memory budget.", limit)


class _Scrape(Collector):
    """One scrape: the series of a reading, then those of the registry's collectors
    (the process, platform and garbage collector ones, which read nothing of ours)."""

    def __init__(self, reading: Reading, registry: CollectorRegistry) -> None:
        self._reading = reading
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        yield from families(self._reading)
        yield from self._registry.collect()
