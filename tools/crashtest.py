"""crashtest: SIGKILL a loaded broker over and over and check that nothing confirmed is lost.

    python -m tools.crashtest [--iterations N] [--seconds-per-iteration S] [--producers P]
                              [--consumers C] [--fsync always|interval|never]
                              [--power-cut none|drop|garbage] [--min-confirmed N]
                              [--min-acked N] [--min-big N] [--dedup] [--seed N] [--data DIR] [--keep]

One data directory serves the whole run, so state carries across crashes. Each
iteration starts the broker on it, verifies everything the run has confirmed so far
(see "Verification"), then runs P producer and C consumer threads, each on its own
``SyncClient`` connection, and SIGKILLs the broker at a random moment while they run:
after 30-100% of S seconds, and not before the iteration's load has had the minimum
progress asked for (``--min-confirmed`` messages confirmed, ``--min-acked`` acked,
``--min-big`` big batches confirmed; a load that cannot get there within
``PROGRESS_TIMEOUT`` seconds is a stall), so that every kill meets a broker with work
done and in flight however slow the machine is.
After the last iteration the broker is started and verified once more, loaded again
and stopped with SIGTERM (it must exit 0 and lose nothing), then started and verified a
final time and stopped with SIGTERM again.

Workload. Three queues, created once, all with ``max_attempts`` 0 (no dead-lettering,
so every message stays accounted for) and a short visibility (300-800 ms) so leases
really expire: a fifo queue, a priority queue and a 4-shard fifo queue published to
with keys. Producers publish single messages and atomic batches of 2-200, and now and
then one of 500-1000 (a big batch: big enough for the broker to fdatasync it in its
sync helper); every body starts with a unique tag. Consumers consume 1-100 at a time
and ack most deliveries, nack some (sometimes with a delay) and ignore the rest,
letting their leases expire.

What is checked (violations; each must be zero):

- ``lost``: a message whose publish was confirmed (or that was seen, so it existed) is
  not in the queue after a restart, and no ack for it was sent.
- ``resurrected``: a message whose ack was confirmed is delivered by a consume that was
  sent after that confirmation (under load or by the drain).
- ``attempt_regressions``: a delivery whose attempt is not greater than the attempt of
  a delivery of the same message received before this consume was sent.
- other: queue metadata changed across a restart, a message the run never published,
  one id for two bodies or two ids for one body, a drain that does not finish or
  disagrees with ``queue_stats``, a broker that does not restart, a non-zero exit after
  SIGTERM, an unexpected error reply or a stalled request.

Publishes in flight at a kill (never confirmed) may or may not have happened; messages
of theirs that show up are adopted as published, those that do not are forgotten.
Acks in flight at a kill are resolved the same way.

Idempotent publishing (``--dedup``). Every message carries its tag as its dedup id
(SPEC §8.9), and a publish in flight at a kill is not left to chance: once the restart
is verified (its drain adopted the messages of it that were stored and forgot the
others), it is sent again with the same dedup ids. Its reply gives each message the id
it got, or, for one the broker already had, the id of that first copy (``duplicates``):
an adopted message must come back as a duplicate of itself, a forgotten one is
published now; from then on the rules above hold for them as for any confirmed
message. A body stored twice shows up as one body with two ids (``other``). The
summary adds ``resent`` (publishes sent again) and ``duplicates`` (messages of theirs
the broker already had).

Verification (after every start): check each queue's settings and that re-declaring it
is a no-op, then drain it: consume everything with a long visibility and ``wait_ms`` 0
until nothing is ready or delayed, check the drained set against the tracker (the
``lost`` rule, adoption, acks in flight), and nack every drained message back so the
load continues. Every drain delivery is also a delivery and obeys the rules above.
Delivery rules are also checked as deliveries arrive, and all deliveries again after
each restart (a delivery can be recorded after a later one that it constrains).

Expectation: ``lost == 0`` under every ``--fsync`` policy. ``interval`` and ``never``
confirm after the record is written to the OS, which a SIGKILL does not undo; they
may lose confirmed data only on a power cut or OS crash.

Power cuts (``--power-cut drop|garbage``). The broker runs with the test-only
``--test-power-journal`` (``broker.wal.fileio.JournalingFileIO``), which journals what
each fsync made durable, to ``DIR-power.journal`` next to the data directory. After
every SIGKILL, and after the graceful stop under load, ``tools.powercut.apply_power_cut``
rewrites the data directory as a disk would be after losing power then: files cut back
to their last fsynced size (``drop``), or keeping a random part of the unsynced tail
with random bytes or zeros at its end (``garbage``); names not made durable by a
directory fsync gone, unsynced renames and unlinks undone. Under ``always``, and after
the graceful stop under every policy, the rules above hold unchanged. Under
``interval`` and ``never``, a cut after a SIGKILL may undo what the log wrote after its
last fsync (of a ``*.wal`` file) before the cut started, so it may lose
(``lost_allowed``) a message the run learnt of (publish reply or delivery) after that
moment, bring back (``resurrected_allowed``) a message whose ack reply arrived after
it, let a consume after the restart reuse the attempt (``attempt_regressions_allowed``)
of a delivery received after it, and lose a queue created after it (created again).
These are counted, not violations; anything older must survive as after a SIGKILL.
The journal's timestamps are ``time.monotonic()``, one clock for every process on
Linux, compared with the tracker's.

Prints violations (at most 20 lines) and one summary line::

    iterations=N kills=K confirmed=C acked=A delivered=D big_batches=B lost=L resurrected=R attempt_regressions=G elapsed=Ts

(with ``--power-cut``, ``power_cut=MODE power_cuts=P helper_syncs=H lost_allowed=N
resurrected_allowed=N attempt_regressions_allowed=N`` follow on the same line; H counts
the log syncs the broker's sync helper process made, as the journal reported them),
and exits 1 on any violation.
Every wait is bounded, only the broker this tool started is signalled (by PID), and
everything runs on 127.0.0.1.
"""
from __future__ import annotations

import dataclasses
import math
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

from client.errors import ConnectionClosed, LockgateError, QueueNotFound, ShuttingDown
from client.sync import SyncClient
from client.types import Delivery, Message, QueueStats

from .powercut import MODES as POWER_CUT_MODES
from .powercut import apply_power_cut
from .procs import BrokerProcess

#: Seconds any single client request may take before it counts as a stall.
CLIENT_TIMEOUT = 10.0
#: Seconds to wait for a worker thread to notice its connection is gone.
JOIN_TIMEOUT = CLIENT_TIMEOUT + 5.0
#: Seconds ``BrokerProcess.start`` / ``stop`` may take.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
#: Lease the drain takes, long enough to outlast the drain itself.
DRAIN_VISIBILITY_MS = 120_000
#: Deliveries per drain consume and ids per drain nack.
DRAIN_BATCH = 1000
#: Seconds a queue's drain may take before it counts as stuck.
DRAIN_TIMEOUT = 30.0
#: Producers pause while this many published messages are not yet acked, so the
#: backlog (and each drain) stays bounded.
MAX_BACKLOG = 5000
#: Seconds a load phase may take, beyond its random length, to reach its minimum
#: progress (``Progress``) before it counts as stalled.
PROGRESS_TIMEOUT = 120.0
#: Violation lines printed; the rest are counted.
MAX_REPORTED = 20
#: Violation texts kept in memory.
MAX_KEPT = 1000

LOST = "lost"
RESURRECTED = "resurrected"
REGRESSION = "attempt_regression"
OTHER = "other"


# --- the queues ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue of the workload and how producers publish to it."""

    name: str
    kind: str
    shards: int
    visibility_ms: int
    #: Publish some messages with keys (shard by key) and some without (round robin).
    keyed: bool = False
    #: Publish with random priorities 0..9.
    prioritized: bool = False

    def settings(self) -> tuple[str, int, int, int, str | None]:
        """What must survive a restart (``max_messages`` is compared separately)."""
        return (self.kind, self.shards, self.visibility_ms, 0, None)


def make_specs(rng: random.Random) -> tuple[QueueSpec, ...]:
    return (
        QueueSpec("crash.fifo", "fifo", 1, rng.randint(300, 800)),
        QueueSpec("crash.priority", "priority", 1, rng.randint(300, 800), prioritized=True),
        QueueSpec("crash.sharded", "fifo", 4, rng.randint(300, 800), keyed=True),
    )


def stats_settings(stats: QueueStats) -> tuple[str, int, int, int, str | None]:
    return (stats.kind, stats.shards, stats.visibility_ms, stats.max_attempts, stats.dead_letter)


# --- bookkeeping -----------------------------------------------------------------------


def _tag(body: bytes) -> str:
    """A body's unique tag (what comes before the first "."), for messages."""
    return repr(body.split(b".", 1)[0][:40].decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One delivery of a message: when its consume was sent and its reply received."""

    attempt: int
    sent: float
    received: float
    phase: str  # "load" or "drain"
    #: Set to the time of a power cut that may have undone this delivery (it was
    #: received after the last log fsync before the cut): consumes sent after the cut
    #: are not bound by its attempt.
    voided_at: float | None = None


@dataclass(slots=True, eq=False)
class MessageRecord:
    """What the run knows about one message (all times are ``time.monotonic()``).

    Compared and hashed by identity: there is one record per published body.
    """

    queue: str
    body: bytes
    #: Its id, once a publish reply or a delivery told us.
    id: int | None = None
    #: The publish reply arrived.
    confirmed: bool = False
    #: Known to exist: confirmed, or adopted (delivered / found by a drain).
    published: bool = False
    #: Its unconfirmed publish turned out not to have happened.
    dropped: bool = False
    #: Acks sent for it whose outcome is unknown.
    acks_in_flight: int = 0
    #: When it was known gone: an ack reply covering it arrived, or a drain found it
    #: missing after an ack in flight.
    gone_at: float | None = None
    #: The ack reply that made it gone listed it as missing (already deleted).
    gone_by_missing: bool = False
    deliveries: list[DeliveryRecord] = field(default_factory=list)
    #: Indexes into ``deliveries`` already checked and found in violation.
    flagged: set[int] = field(default_factory=set)
    #: Reported as resurrected (each message counts once however often it comes back).
    resurrected: bool = False
    #: When the run first knew it exists (publish reply or delivery; ``-inf`` when a
    #: drain after a restart found it, i.e. it was on disk). ``None``: not known yet.
    known_at: float | None = None
    #: When the ack reply that made it gone arrived (``None`` if not gone by an ack reply).
    ack_at: float | None = None
    #: A power cut may have undone its publish (known only after the last log fsync).
    maybe_lost: bool = False
    #: A power cut may have undone the confirmed ack that made it gone.
    maybe_unacked: bool = False


class Tracker:
    """Pure, thread-safe bookkeeping of what was published, delivered and acked.

    Workers report what they send and what comes back; ``reconcile`` compares it with
    what a drain found after a restart. Violations are counted by kind and kept as text.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_body: dict[str, dict[bytes, MessageRecord]] = {}
        self._by_id: dict[str, dict[int, MessageRecord]] = {}
        #: Per queue, the records not yet settled (known gone or known never published):
        #: the ones ``reconcile`` has to look at.
        self._open: dict[str, set[MessageRecord]] = {}
        #: Records with deliveries or acks not yet covered by ``full_check``.
        self._dirty: set[MessageRecord] = set()
        self.settings: dict[str, tuple[object, ...]] = {}
        self.counts: dict[str, int] = {LOST: 0, RESURRECTED: 0, REGRESSION: 0, OTHER: 0}
        #: What a power cut under ``interval``/``never`` may legitimately undo (not
        #: violations): confirmed publishes gone, confirmed acks undone, attempts reused.
        self.allowed: dict[str, int] = {LOST: 0, RESURRECTED: 0, REGRESSION: 0}
        self.power_cuts = 0
        #: When each queue's create reply arrived, and the queues a power cut may have undone.
        self._declared_at: dict[str, float] = {}
        self._uncertain_queues: set[str] = set()
        self.violations: list[str] = []
        self.confirmed = 0
        self.adopted = 0
        self.acked = 0
        self.delivery_count = 0
        #: Messages known to exist and not known gone.
        self.backlog = 0

    # -- violations --------------------------------------------------------------------

    def violation(self, kind: str, text: str) -> None:
        with self._lock:
            self._violation(kind, text)

    def _violation(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        if len(self.violations) < MAX_KEPT:
            self.violations.append(f"{kind}: {text}")

    @property
    def total_violations(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    # -- queues --------------------------------------------------------------------------

    def declare_queue(self, name: str, settings: tuple[object, ...], at: float | None = None) -> None:
        """``name`` was created (its create reply arrived at ``at``) with ``settings``."""
        with self._lock:
            self.settings[name] = settings
            self._declared_at[name] = time.monotonic() if at is None else at
            self._by_body.setdefault(name, {})
            self._by_id.setdefault(name, {})
            self._open.setdefault(name, set())

    def queue_may_be_gone(self, name: str) -> bool:
        """A power cut may have undone the creation of ``name`` (see ``power_cut``)."""
        with self._lock:
            return name in self._uncertain_queues

    def queues_checked(self) -> None:
        """The queues were checked after a restart: what exists now is on disk."""
        with self._lock:
            self._uncertain_queues.clear()

    # -- publishing ---------------------------------------------------------------------

    def publish_sent(self, queue: str, bodies: Sequence[bytes]) -> None:
        """Bodies are about to be published (before the request goes out)."""
        with self._lock:
            by_body = self._by_body[queue]
            for body in bodies:
                if body in by_body:
                    raise ValueError(f"body {body[:40]!r} published twice; tags must be unique")
                rec = by_body[body] = MessageRecord(queue, body)
                self._open[queue].add(rec)

    def publish_confirmed(self, queue: str, bodies: Sequence[bytes], first_id: int,
                          at: float | None = None) -> None:
        """The publish reply, arriving at ``at``, gave ``bodies`` the ids ``first_id, first_id + 1, ...``."""
        self.publish_confirmed_ids(queue, [(body, first_id + i) for i, body in enumerate(bodies)], at)

    def publish_confirmed_ids(self, queue: str, ids: Sequence[tuple[bytes, int]], at: float | None = None) -> None:
        """The publish reply, arriving at ``at``, gave each body its id: ``(body, id)``
        (with dedup ids, a duplicate's id is that of the copy the broker already had)."""
        at = time.monotonic() if at is None else at
        with self._lock:
            for body, mid in ids:
                rec = self._by_body[queue][body]
                if rec.dropped:  # found absent after a restart, and now sent again (--dedup)
                    rec.dropped = False
                    self._open[queue].add(rec)
                if self._assign_id(rec, mid, "publish reply") and not rec.published:
                    rec.published = True
                    self.backlog += 1
                if rec.known_at is None or at < rec.known_at:
                    rec.known_at = at
                rec.confirmed = True
                self.confirmed += 1

    def publish_failed(self, queue: str, bodies: Sequence[bytes]) -> None:
        """An error reply: the publish is atomic, so none of ``bodies`` exists."""
        with self._lock:
            for body in bodies:
                self._drop(self._by_body[queue][body])

    def _assign_id(self, rec: MessageRecord, mid: int, source: str) -> bool:
        """Give ``rec`` its id; False (and a violation) if that contradicts what we know."""
        if rec.id is not None:
            if rec.id != mid:
                self._violation(OTHER, f"{rec.queue}: body {_tag(rec.body)} has id {rec.id} "
                                       f"but the {source} says {mid}")
                return False
            return True
        other = self._by_id[rec.queue].get(mid)
        if other is not None and other is not rec:
            self._violation(OTHER, f"{rec.queue}: id {mid} given to {_tag(other.body)} and, by the "
                                   f"{source}, to {_tag(rec.body)}")
            return False
        rec.id = mid
        self._by_id[rec.queue][mid] = rec
        return True

    # -- deliveries -----------------------------------------------------------------------

    def delivered(self, queue: str, deliveries: Iterable[Delivery], sent: float, received: float,
                  phase: str = "load") -> None:
        """A consume sent at ``sent`` returned ``deliveries`` at ``received``."""
        with self._lock:
            for d in deliveries:
                self.delivery_count += 1
                rec = self._identify(queue, d.id, d.body, f"{phase} delivery")
                if rec is None:
                    continue
                # Delivered, so it exists; a drain runs right after a start, so what
                # it finds was on disk.
                known = -math.inf if phase == "drain" else received
                if rec.known_at is None or known < rec.known_at:
                    rec.known_at = known
                rec.deliveries.append(DeliveryRecord(d.attempt, sent, received, phase))
                self._check_delivery(rec, len(rec.deliveries) - 1)
                self._dirty.add(rec)

    def _identify(self, queue: str, mid: int, body: bytes, source: str) -> MessageRecord | None:
        """The record for a message seen in the broker, adopting unconfirmed publishes."""
        rec = self._by_id[queue].get(mid)
        if rec is not None:
            if rec.body != body:
                self._violation(OTHER, f"{queue}: id {mid} is {rec.body[:60]!r} but the {source} "
                                       f"has body {body[:60]!r}")
                return None
            return rec
        rec = self._by_body[queue].get(body)
        if rec is None:
            self._violation(OTHER, f"{queue}: {source} of id {mid} with a body never published: {_tag(body)}")
            return None
        if rec.dropped:
            self._violation(OTHER, f"{queue}: {source} of id {mid}, body {_tag(body)}, whose publish "
                                   "had failed or was found absent after a restart")
            return None
        if not self._assign_id(rec, mid, source):
            return None
        if not rec.published:
            rec.published = True
            self.adopted += 1
            self.backlog += 1
        return rec

    def _check_delivery(self, rec: MessageRecord, index: int) -> None:
        """Apply the resurrection and attempt rules to ``rec.deliveries[index]``."""
        if index in rec.flagged:
            return
        d = rec.deliveries[index]
        if rec.gone_at is not None and d.sent > rec.gone_at:
            rec.flagged.add(index)
            if not rec.resurrected:
                rec.resurrected = True
                how = "reported missing by an ack" if rec.gone_by_missing else "acked"
                self._violation(RESURRECTED, f"{rec.queue}: id {rec.id} ({_tag(rec.body)}) {how} "
                                             f"{d.sent - rec.gone_at:.3f}s before a {d.phase} consume "
                                             f"delivered it (attempt {d.attempt})")
            return
        before = [e.attempt for e in rec.deliveries if e.received < d.sent]
        # Deliveries a power cut may have undone do not bind consumes sent after it.
        kept = [e.attempt for e in rec.deliveries
                if e.received < d.sent and (e.voided_at is None or d.sent < e.voided_at)]
        if d.attempt < 1 or (kept and d.attempt <= max(kept)):
            rec.flagged.add(index)
            self._violation(REGRESSION, f"{rec.queue}: id {rec.id} ({_tag(rec.body)}) delivered "
                                        f"with attempt {d.attempt} by a {d.phase} consume after "
                                        f"attempt {max(kept, default=0)} was received")
        elif before and d.attempt <= max(before):
            rec.flagged.add(index)
            self.allowed[REGRESSION] += 1

    def full_check(self) -> None:
        """Re-check every delivery recorded since the last call against all others."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            for rec in dirty:
                for index in range(len(rec.deliveries)):
                    self._check_delivery(rec, index)

    # -- acks ------------------------------------------------------------------------------

    def ack_sent(self, queue: str, ids: Sequence[int]) -> None:
        """An ack for ``ids`` (delivered ids) is about to be sent."""
        with self._lock:
            for mid in ids:
                rec = self._by_id[queue].get(mid)
                if rec is not None:  # None only after an identity violation
                    rec.acks_in_flight += 1

    def ack_confirmed(self, queue: str, ids: Sequence[int], missing: Iterable[int], at: float) -> None:
        """The ack reply arrived at ``at``; ``missing`` ids were already gone."""
        missing = set(missing)
        with self._lock:
            for mid in ids:
                rec = self._by_id[queue].get(mid)
                if rec is None:
                    continue
                rec.acks_in_flight -= 1
                if rec.gone_at is None:
                    self._gone(rec, at)
                    rec.ack_at = at
                    rec.gone_by_missing = mid in missing
                    if mid not in missing:
                        self.acked += 1
                self._dirty.add(rec)

    def ack_failed(self, queue: str, ids: Sequence[int]) -> None:
        """An error reply: nothing was acked."""
        with self._lock:
            for mid in ids:
                rec = self._by_id[queue].get(mid)
                if rec is not None:
                    rec.acks_in_flight -= 1

    # -- after a restart ----------------------------------------------------------------

    def reconcile(self, queue: str, present: dict[int, bytes], at: float) -> None:
        """Compare what a full drain of ``queue`` found (id -> body) with what we know.

        Call after every delivery of the drain went through ``delivered`` and while no
        worker runs, so nothing is in flight any more.
        """
        with self._lock:
            for mid, body in present.items():
                if mid not in self._by_id[queue] and body in self._by_body[queue]:
                    self._identify(queue, mid, body, "drain")  # normally done by ``delivered``
            for rec in list(self._open[queue]):
                maybe_lost, maybe_unacked = rec.maybe_lost, rec.maybe_unacked
                rec.maybe_lost = rec.maybe_unacked = False
                if rec.id is None or not rec.published:
                    # An unconfirmed publish that is not there: it never happened.
                    self._drop(rec)
                elif present.get(rec.id) == rec.body:
                    rec.acks_in_flight = 0  # acks cut off by the crash did not happen
                    if maybe_unacked:  # a confirmed ack the power cut undid
                        self.allowed[RESURRECTED] += 1
                        rec.ack_at = None
                        if not rec.gone_by_missing:
                            self.acked -= 1
                        rec.gone_by_missing = False
                elif rec.acks_in_flight > 0 or maybe_unacked:
                    # An ack cut off by the crash, or a confirmed one a power cut could
                    # have undone, did happen (or, if ``maybe_lost``, the publish is gone).
                    rec.acks_in_flight = 0
                    self._gone(rec, rec.ack_at if maybe_unacked and rec.ack_at is not None else at)
                    if maybe_lost and self._by_id[queue].get(rec.id) is rec:
                        del self._by_id[queue][rec.id]  # the broker may reuse its id
                elif maybe_lost:
                    # Its publish was confirmed (or it was seen) only after the last log
                    # fsync before a power cut: gone with the cut. Its id may be reused.
                    self.allowed[LOST] += 1
                    self._drop(rec)
                    self.backlog -= 1
                    if self._by_id[queue].get(rec.id) is rec:
                        del self._by_id[queue][rec.id]
                else:
                    what = "confirmed" if rec.confirmed else "delivered"
                    self._violation(LOST, f"{queue}: id {rec.id} ({_tag(rec.body)}), {what} and "
                                          "never acked, is missing after the restart")
                    self._gone(rec, at)  # report it once
            # Messages already gone that the drain found were flagged by ``delivered``.

    def _gone(self, rec: MessageRecord, at: float) -> None:
        rec.gone_at = at
        self._open[rec.queue].discard(rec)
        self.backlog -= 1

    def _drop(self, rec: MessageRecord) -> None:
        rec.dropped = True
        self._open[rec.queue].discard(rec)

    def power_cut(self, boundary: float, at: float) -> None:
        """A power cut at ``at`` kept what the log had written before ``boundary`` (the
        start of its last fsync) and may have lost anything after.

        Call after the workers stopped and before the restart. From then on, until the
        next ``reconcile``: a message the run learnt of at or after ``boundary`` may be
        missing (``lost_allowed``), a message whose ack reply arrived at or after it may
        come back (``resurrected_allowed``), and deliveries received at or after it do
        not bind the attempts of consumes sent after ``at``. Queues created at or after
        it may be gone. Anything older must have survived, as after a SIGKILL.
        """
        with self._lock:
            self.power_cuts += 1
            for queue, by_body in self._by_body.items():
                for rec in by_body.values():
                    if rec.published and not rec.dropped and rec.known_at is not None \
                            and rec.known_at >= boundary and rec.gone_at is None:
                        rec.maybe_lost = True
                    if rec.gone_at is not None and rec.ack_at is not None and rec.ack_at >= boundary:
                        rec.gone_at = None  # as if the ack were in flight at the crash
                        rec.maybe_unacked = True
                        rec.maybe_lost = rec.known_at is not None and rec.known_at >= boundary
                        self._open[queue].add(rec)
                        self.backlog += 1
                    for i, d in enumerate(rec.deliveries):
                        if d.received >= boundary and d.voided_at is None:
                            rec.deliveries[i] = dataclasses.replace(d, voided_at=at)
            self._uncertain_queues |= {q for q, t in self._declared_at.items() if t >= boundary}


# --- the workload ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """What a load phase must have had confirmed before the broker is killed or stopped.

    Counted from the phase's start: messages whose publish reply arrived, messages an
    ack reply deleted, and big batches (500-1000 messages, a round for the sync helper)
    whose publish reply arrived. The phase runs on until it has them, however long its
    random time was, so what a run covers does not depend on the machine's speed.
    """

    confirmed: int = 0
    acked: int = 0
    big: int = 0

    def missing(self, confirmed: int, acked: int, big: int) -> str:
        """What is still short of these minimums ("" when nothing)."""
        short = [f"{name} {have}/{want}" for name, have, want in (
            ("confirmed", confirmed, self.confirmed), ("acked", acked, self.acked),
            ("big batches", big, self.big)) if have < want]
        return ", ".join(short)


@dataclass(slots=True)
class Load:
    """What one iteration's workers share."""

    addr: str
    specs: tuple[QueueSpec, ...]
    tracker: Tracker
    stop: threading.Event
    iteration: int
    #: Big batches confirmed in this phase (producers count them under ``lock``).
    big_confirmed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: With ``--dedup``: the run's publishes in flight at a kill, (queue, bodies,
    #: messages), appended under ``lock``; sent again after the restart (``resend``).
    in_flight: list[tuple[str, list[bytes], list[Message]]] | None = None


def _run_worker(load: Load, name: str, body: Callable[[SyncClient], None]) -> None:
    """Connect and run ``body`` until the connection is lost or ``load.stop`` is set."""
    try:
        with SyncClient(load.addr, timeout=CLIENT_TIMEOUT, client_name=f"crashtest-{name}") as client:
            body(client)
    except (ConnectionClosed, ShuttingDown):
        pass  # the broker was killed or stopped
    except TimeoutError:
        if not load.stop.is_set():
            load.tracker.violation(OTHER, f"{name}: a request took longer than {CLIENT_TIMEOUT}s")
    except OSError:
        pass  # could not connect: the broker is already gone
    except LockgateError as exc:
        load.tracker.violation(OTHER, f"{name}: unexpected error reply {exc}")
    except Exception as exc:  # a harness bug must not pass silently
        load.tracker.violation(OTHER, f"{name}: crashed: {exc!r}")


def producer(load: Load, index: int, rng: random.Random) -> None:
    """Publish single messages and batches of 2-200 until the connection goes."""
    name = f"producer-{index}"
    seq = 0

    def body(client: SyncClient) -> None:
        nonlocal seq
        tracker = load.tracker
        while not load.stop.is_set():
            if tracker.backlog > MAX_BACKLOG:
                time.sleep(0.01)
                continue
            spec = rng.choice(load.specs)
            roll = rng.random()
            big = roll < 0.03  # a round the sync helper fdatasyncs (HELPER_MIN_BYTES)
            count = rng.randint(500, 1000) if big else 1 if roll < 0.4 else rng.randint(2, 200)
            bodies: list[bytes] = []
            messages: list[Message] = []
            for _ in range(count):
                seq += 1
                tag = f"i{load.iteration}-p{index}-{seq:07d}".encode()
                pad = rng.randbytes(128 if big else 4000 if rng.random() < 0.01
                                    else rng.choice((0, 0, 16, 100)))
                key = f"k{rng.randrange(8)}".encode() if spec.keyed and rng.random() < 0.8 else None
                priority = rng.randrange(10) if spec.prioritized else None
                delay = rng.randint(1, 200) if rng.random() < 0.03 else None
                bodies.append(tag + b"." + pad)
                messages.append(Message(bodies[-1], key, priority, delay,
                                        dedup_id=tag if load.in_flight is not None else None))
            if client.closed:
                return
            tracker.publish_sent(spec.name, bodies)
            ids: list[int] | None = None
            try:
                if load.in_flight is not None:
                    ids = client.publish_batch(spec.name, messages).message_ids()
                    first_id = ids[0]
                elif count == 1:
                    m = messages[0]
                    first_id = client.publish(spec.name, m.body, key=m.key, priority=m.priority,
                                              delay_ms=m.delay_ms)
                else:
                    first_id = client.publish_batch(spec.name, messages).first_id
                confirmed_at = time.monotonic()
            except ConnectionClosed:
                if load.in_flight is not None:
                    with load.lock:
                        load.in_flight.append((spec.name, bodies, messages))  # sent again after the restart
                raise  # in flight: it may or may not have happened
            except ShuttingDown:
                tracker.publish_failed(spec.name, bodies)  # refused: it did not happen
                raise
            except LockgateError as exc:
                tracker.publish_failed(spec.name, bodies)
                tracker.violation(OTHER, f"{name}: publish to {spec.name} failed: {exc}")
                continue
            if ids is not None:
                tracker.publish_confirmed_ids(spec.name, list(zip(bodies, ids)), confirmed_at)
            else:
                tracker.publish_confirmed(spec.name, bodies, first_id, confirmed_at)
            if big:
                with load.lock:
                    load.big_confirmed += 1

    _run_worker(load, name, body)


def consumer(load: Load, index: int, rng: random.Random) -> None:
    """Consume, then ack most deliveries, nack some and ignore the rest."""
    name = f"consumer-{index}"

    def body(client: SyncClient) -> None:
        tracker = load.tracker
        while not load.stop.is_set():
            spec = rng.choice(load.specs)
            wait_ms = rng.choice((0, 0, 20, 100))
            sent = time.monotonic()
            deliveries = client.consume(spec.name, rng.randint(1, 100), wait_ms=wait_ms)
            tracker.delivered(spec.name, deliveries, sent, time.monotonic())
            acks: list[int] = []
            nacks: list[int] = []
            delayed: list[int] = []
            for d in deliveries:
                roll = rng.random()
                if roll < 0.75:
                    acks.append(d.id)
                elif roll < 0.83:
                    nacks.append(d.id)
                elif roll < 0.90:
                    delayed.append(d.id)
                # else: ignore it and let the lease expire
            if acks and not client.closed:
                tracker.ack_sent(spec.name, acks)
                try:
                    result = client.ack(spec.name, acks)
                except ConnectionClosed:
                    raise
                except ShuttingDown:
                    tracker.ack_failed(spec.name, acks)
                    raise
                except LockgateError as exc:
                    tracker.ack_failed(spec.name, acks)
                    tracker.violation(OTHER, f"{name}: ack on {spec.name} failed: {exc}")
                else:
                    tracker.ack_confirmed(spec.name, acks, result.missing, time.monotonic())
            if nacks:
                client.nack(spec.name, nacks)
            if delayed:
                client.nack(spec.name, delayed, delay_ms=rng.randint(1, 200))
            if not deliveries and not wait_ms:
                time.sleep(0.005)

    _run_worker(load, name, body)


def run_load(addr: str, specs: tuple[QueueSpec, ...], tracker: Tracker, rng: random.Random,
             producers: int, consumers: int, iteration: int, seconds: float,
             interrupt: Callable[[], object], progress: Progress = Progress(),
             in_flight: list[tuple[str, list[bytes], list[Message]]] | None = None) -> int:
    """Run the workers for ``seconds`` and until they had ``progress`` (bounded by
    ``PROGRESS_TIMEOUT``), call ``interrupt`` (kill or stop the broker) while they run,
    and wait (bounded) for them to finish. Returns the big batches confirmed. With
    ``in_flight`` (``--dedup``), publishes carry dedup ids and those cut off go there."""
    load = Load(addr, specs, tracker, threading.Event(), iteration, in_flight=in_flight)
    confirmed0, acked0 = tracker.confirmed, tracker.acked
    threads = [
        threading.Thread(target=producer, args=(load, i, random.Random(rng.random())),
                         name=f"crashtest-producer-{i}", daemon=True)
        for i in range(producers)
    ] + [
        threading.Thread(target=consumer, args=(load, i, random.Random(rng.random())),
                         name=f"crashtest-consumer-{i}", daemon=True)
        for i in range(consumers)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(seconds)
        deadline = time.monotonic() + PROGRESS_TIMEOUT
        while short := progress.missing(tracker.confirmed - confirmed0, tracker.acked - acked0,
                                        load.big_confirmed):
            if time.monotonic() > deadline or not any(t.is_alive() for t in threads):
                tracker.violation(OTHER, f"iteration {iteration}: the load stalled short of its minimum "
                                         f"progress ({short}) after {seconds + PROGRESS_TIMEOUT:.0f}s or "
                                         "with every worker gone")
                break
            time.sleep(0.01)  # the broker and the workers are a real process and threads
        interrupt()
    finally:
        load.stop.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread in threads:
            if thread.is_alive():
                tracker.violation(OTHER, f"{thread.name} did not finish within {JOIN_TIMEOUT}s")
    return load.big_confirmed


# --- verification ------------------------------------------------------------------------


def create_queues(client: SyncClient, specs: Sequence[QueueSpec], tracker: Tracker) -> None:
    """Declare the workload's queues on a fresh broker and remember their settings."""
    for spec in specs:
        client.create_queue(spec.name, spec.kind, spec.shards, visibility_ms=spec.visibility_ms,
                            max_attempts=0)
        at = time.monotonic()
        stats = client.queue_stats(spec.name)
        tracker.declare_queue(spec.name, (*stats_settings(stats), stats.max_messages), at)


def check_metadata(client: SyncClient, specs: Sequence[QueueSpec], tracker: Tracker) -> None:
    """Every queue exists with the settings it was created with; re-declaring is a no-op.

    A queue whose creation a power cut may have undone (see ``Tracker.power_cut``) may
    be missing: it is created again, and its messages count as ``lost_allowed``.
    """
    names = [q.name for q in client.list_queues()]
    expected = [s.name for s in specs]
    if sorted(names) != sorted(expected) and not (
            set(names) <= set(expected)
            and all(tracker.queue_may_be_gone(n) for n in set(expected) - set(names))):
        tracker.violation(OTHER, f"queues after restart are {names}, expected {expected}")
    for spec in specs:
        try:
            stats = client.queue_stats(spec.name)
            created = client.create_queue(spec.name, spec.kind, spec.shards,
                                          visibility_ms=spec.visibility_ms, max_attempts=0)
        except QueueNotFound:
            if tracker.queue_may_be_gone(spec.name):
                # Created after the last log fsync before a power cut: allowed to be gone.
                create_queues(client, [spec], tracker)
                continue
            # Gone with all its messages (the drain finds it empty, so they count as
            # lost); declare it again so the load can go on.
            tracker.violation(OTHER, f"{spec.name}: the queue is gone after the restart")
            client.create_queue(spec.name, spec.kind, spec.shards, visibility_ms=spec.visibility_ms,
                                max_attempts=0)
            continue
        except ConnectionClosed:
            raise
        except LockgateError as exc:
            tracker.violation(OTHER, f"{spec.name}: after restart: {exc}")
            continue
        now = (*stats_settings(stats), stats.max_messages)
        if now != tracker.settings.get(spec.name) or now[:-1] != spec.settings():
            tracker.violation(OTHER, f"{spec.name}: settings after restart are {now}, "
                                     f"expected {tracker.settings.get(spec.name)}")
        if created:
            tracker.violation(OTHER, f"{spec.name}: re-declaring after restart created it anew")
    tracker.queues_checked()


def drain(client: SyncClient, spec: QueueSpec, tracker: Tracker) -> dict[int, bytes]:
    """Lease everything in the queue (ready now or after a delay); returns id -> body."""
    found: dict[int, bytes] = {}
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        sent = time.monotonic()
        got = client.consume(spec.name, DRAIN_BATCH, visibility_ms=DRAIN_VISIBILITY_MS)
        tracker.delivered(spec.name, got, sent, time.monotonic(), phase="drain")
        for d in got:
            if d.id in found:
                tracker.violation(OTHER, f"{spec.name}: the drain got id {d.id} twice")
            found[d.id] = d.body
        if not got:
            stats = client.queue_stats(spec.name)
            if stats.ready == 0 and stats.delayed == 0:
                break
        if time.monotonic() > deadline:
            stats = client.queue_stats(spec.name)
            tracker.violation(OTHER, f"{spec.name}: drain unfinished after {DRAIN_TIMEOUT}s: {stats}")
            break
        if not got:
            time.sleep(0.02)  # delayed messages: wait for them to become ready
    if stats.leased != len(found) or stats.messages != len(found):
        tracker.violation(OTHER, f"{spec.name}: drained {len(found)} messages but queue_stats says "
                                 f"leased={stats.leased} messages={stats.messages}")
    return found


def release(client: SyncClient, spec: QueueSpec, ids: Sequence[int], tracker: Tracker) -> None:
    """Nack drained messages back so the load can continue with them."""
    for start in range(0, len(ids), DRAIN_BATCH):
        chunk = ids[start:start + DRAIN_BATCH]
        result = client.nack(spec.name, chunk)
        if result.missing:
            tracker.violation(OTHER, f"{spec.name}: nack after the drain missed ids {list(result.missing)[:10]}")


def resend(client: SyncClient, in_flight: list[tuple[str, list[bytes], list[Message]]],
           tracker: Tracker) -> tuple[int, int]:
    """``--dedup``: send the publishes in flight at the kill again, with their dedup ids,
    once the restart is verified, and record the id each message got (a duplicate: the
    first copy's). Returns (the publishes sent, the messages the broker already had).
    Workers must not run."""
    sent = duplicates = 0
    while in_flight:
        queue, bodies, messages = in_flight[0]
        try:
            result = client.publish_batch(queue, messages)
        except LockgateError as exc:  # none of them exists now
            if not (isinstance(exc, QueueNotFound) and tracker.queue_may_be_gone(queue)):
                tracker.violation(OTHER, f"resend to {queue} failed: {exc}")
            tracker.publish_failed(queue, bodies)
        else:
            tracker.publish_confirmed_ids(queue, list(zip(bodies, result.message_ids())))
            sent += 1
            duplicates += len(result.duplicates)
        in_flight.pop(0)
    return sent, duplicates


def verify(client: SyncClient, specs: Sequence[QueueSpec], tracker: Tracker) -> None:
    """The full check after a start; see the module docstring. Workers must not run."""
    check_metadata(client, specs, tracker)
    drained = {spec.name: drain(client, spec, tracker) for spec in specs}
    now = time.monotonic()
    for spec in specs:
        tracker.reconcile(spec.name, drained[spec.name], now)
    tracker.full_check()
    for spec in specs:
        release(client, spec, sorted(drained[spec.name]), tracker)


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    iterations: int
    kills: int
    #: Messages whose publish reply arrived.
    confirmed: int
    #: Messages deleted by an ack whose reply arrived.
    acked: int
    #: Deliveries, under load and by drains.
    delivered: int
    lost: int
    resurrected: int
    attempt_regressions: int
    #: Every other violation (metadata, identity, drains, restarts, errors, stalls).
    other: int
    elapsed: float
    seed: int
    fsync: str
    violations: tuple[str, ...] = ()
    #: Big batches (500-1000 messages: rounds for the sync helper) whose publish reply arrived.
    big_batches: int = 0
    #: ``--power-cut`` mode ("none", "drop" or "garbage") and the cuts applied.
    power_cut: str = "none"
    power_cuts: int = 0
    #: Log syncs the broker's sync helper made in the epochs the cuts ended (big rounds).
    helper_syncs: int = 0
    #: What power cuts undid within the fsync policy's window (not violations).
    lost_allowed: int = 0
    resurrected_allowed: int = 0
    attempt_regressions_allowed: int = 0
    #: ``--dedup``: publishes sent again after a kill, and messages of theirs the broker
    #: already had (None: not asked for).
    resent: int | None = None
    duplicates: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.resurrected or self.attempt_regressions or self.other)

    def line(self) -> str:
        text = (f"iterations={self.iterations} kills={self.kills} confirmed={self.confirmed} "
                f"acked={self.acked} delivered={self.delivered} big_batches={self.big_batches} "
                f"lost={self.lost} "
                f"resurrected={self.resurrected} attempt_regressions={self.attempt_regressions} "
                f"elapsed={self.elapsed:.1f}s")
        if self.power_cut != "none":
            text += (f" power_cut={self.power_cut} power_cuts={self.power_cuts} helper_syncs={self.helper_syncs} "
                     f"lost_allowed={self.lost_allowed} resurrected_allowed={self.resurrected_allowed} "
                     f"attempt_regressions_allowed={self.attempt_regressions_allowed}")
        if self.resent is not None:
            text += f" resent={self.resent} duplicates={self.duplicates}"
        return text


class _Abort(Exception):
    """The broker could not be started or reached: stop the run."""


def run(
    *,
    iterations: int = 10,
    seconds_per_iteration: float = 2.0,
    producers: int = 2,
    consumers: int = 2,
    fsync: str = "always",
    power_cut: str = "none",
    seed: int | None = None,
    data_dir: Path | None = None,
    keep: bool = False,
    dedup: bool = False,
    broker_args: tuple[str, ...] = (),
    progress: Progress = Progress(),
    log: Callable[[str], None] | None = None,
) -> Summary:
    """Run the harness; see the module docstring.

    ``data_dir`` must be missing or empty; without it a temporary directory is used and
    removed afterwards, unless ``keep`` is set or a violation was found. ``broker_args``
    are extra broker flags (e.g. ``("--segment-bytes", "1048576")``). Every load phase
    runs until it had ``progress`` (see ``Progress``), however long it takes. ``power_cut``
    ("drop" or "garbage") simulates a power cut after every SIGKILL and after the
    graceful stop under load (see the module docstring). ``log`` gets progress lines. ``dedup``:
    publishes carry dedup ids, and those in flight at a kill are sent again after the
    restart.
    """
    if power_cut != "none" and power_cut not in POWER_CUT_MODES:
        raise ValueError(f"unknown power-cut mode {power_cut!r}")
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    say = log or (lambda text: None)
    rng = random.Random(seed)
    started = time.monotonic()
    tracker = Tracker()
    specs = make_specs(rng)
    temp = None
    if data_dir is None:
        temp = Path(tempfile.mkdtemp(prefix="lockgate-crashtest-"))
        data_dir = temp / "data"
    # Absolute: the broker runs in the repository root, not in our working directory.
    data_dir = Path(data_dir).absolute()
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ValueError(f"data directory {data_dir} is not empty")
    journal = data_dir.parent / f"{data_dir.name}-power.journal"
    if power_cut != "none":
        journal.unlink(missing_ok=True)  # a stale journal would describe other files
        broker_args = (*broker_args, "--test-power-journal", str(journal))
    broker = BrokerProcess(data_dir, fsync=fsync, args=broker_args)
    say(f"crashtest: seed={seed} fsync={fsync} power_cut={power_cut} data={data_dir} log={broker.log_path}")
    kills = 0
    done = 0
    big_batches = 0
    helper_syncs = 0
    in_flight: list[tuple[str, list[bytes], list[Message]]] | None = [] if dedup else None
    resent = duplicates = 0

    def cut_power(strict: bool = False) -> None:
        """After the broker died or stopped: simulate a power cut, if asked to.

        ``strict``: nothing confirmed may go whatever the policy (after a clean stop).
        """
        nonlocal helper_syncs
        if power_cut == "none":
            return
        cut = apply_power_cut(data_dir, journal, rng, power_cut)
        helper_syncs += cut.helper_log_syncs
        # Under "always" every confirmation waited for an fdatasync: nothing may go.
        tracker.power_cut(math.inf if strict or fsync == "always" else cut.boundary, cut.at)
        say(f"  {cut.describe()}")

    def start_and_verify(first: bool = False) -> str:
        nonlocal resent, duplicates
        try:
            broker.start(timeout=START_TIMEOUT)
        except RuntimeError as exc:
            tracker.violation(OTHER, f"broker did not start: {exc}")
            raise _Abort from exc
        try:
            with SyncClient(broker.addr, timeout=CLIENT_TIMEOUT, client_name="crashtest-verify") as admin:
                if first:
                    create_queues(admin, specs, tracker)
                verify(admin, specs, tracker)
                if in_flight:
                    sent, known = resend(admin, in_flight, tracker)
                    resent, duplicates = resent + sent, duplicates + known
        except (ConnectionClosed, OSError, LockgateError) as exc:
            tracker.violation(OTHER, f"verification could not talk to the broker: {exc!r}; "
                                     f"log: {broker.log_tail(1000)}")
            raise _Abort from exc
        return broker.addr

    def stop_cleanly(what: str) -> None:
        status = broker.stop(timeout=STOP_TIMEOUT)
        if status != 0:
            tracker.violation(OTHER, f"{what}: SIGTERM exit status {status}; log: {broker.log_tail(1000)}")

    try:
        for iteration in range(iterations):
            addr = start_and_verify(first=iteration == 0)
            kill_after = rng.uniform(0.3, 1.0) * seconds_per_iteration
            big_batches += run_load(addr, specs, tracker, rng, producers, consumers, iteration, kill_after,
                                    broker.kill, progress, in_flight)
            kills += 1
            done += 1
            say(f"iteration {iteration + 1}: killed after {kill_after:.2f}s or later; confirmed={tracker.confirmed} "
                f"violations={tracker.total_violations}")
            cut_power()
        # Verify the last crash, then a graceful stop under load, then verify that too.
        addr = start_and_verify(first=iterations == 0)
        big_batches += run_load(addr, specs, tracker, rng, producers, consumers, iterations,
                                rng.uniform(0.3, 1.0) * seconds_per_iteration,
                                lambda: stop_cleanly("stop under load"), progress, in_flight)
        cut_power(strict=True)  # a clean stop synced everything: the cut may take nothing
        start_and_verify()
        stop_cleanly("final stop")
    except _Abort:
        pass
    finally:
        broker.kill()
        shutil.rmtree(f"{journal}.unlinked", ignore_errors=True)
    summary = Summary(
        iterations=done, kills=kills, confirmed=tracker.confirmed, acked=tracker.acked,
        delivered=tracker.delivery_count, lost=tracker.counts[LOST], resurrected=tracker.counts[RESURRECTED],
        attempt_regressions=tracker.counts[REGRESSION], other=tracker.counts[OTHER],
        elapsed=time.monotonic() - started, seed=seed, fsync=fsync, violations=tuple(tracker.violations),
        big_batches=big_batches, power_cut=power_cut, power_cuts=tracker.power_cuts, helper_syncs=helper_syncs,
        lost_allowed=tracker.allowed[LOST], resurrected_allowed=tracker.allowed[RESURRECTED],
        attempt_regressions_allowed=tracker.allowed[REGRESSION],
        resent=resent if dedup else None, duplicates=duplicates,
    )
    if temp is not None:
        if keep or not summary.ok:
            say(f"crashtest: kept {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)
    return summary


def report(summary: Summary, out: Callable[[str], None] = print) -> None:
    """Print at most ``MAX_REPORTED`` violation lines, then the summary line."""
    shown = summary.violations[:MAX_REPORTED]
    for text in shown:
        out(text)
    total = summary.lost + summary.resurrected + summary.attempt_regressions + summary.other
    if total > len(shown):
        out(f"... and {total - len(shown)} more violations")
    out(summary.line())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--iterations", default=10, show_default=True, type=click.IntRange(0),
              help="Kill cycles (start, verify, load, SIGKILL).")
@click.option("--seconds-per-iteration", default=2.0, show_default=True, type=click.FloatRange(0.05),
              help="Longest load per iteration; the kill comes after 30-100% of it.")
@click.option("--producers", default=2, show_default=True, type=click.IntRange(0),
              help="Publishing threads, one connection each.")
@click.option("--consumers", default=2, show_default=True, type=click.IntRange(0),
              help="Consuming threads (ack / nack / let expire), one connection each.")
@click.option("--fsync", type=click.Choice(["always", "interval", "never"]), default="always",
              show_default=True, help="The broker's fsync policy (lost must be 0 under each).")
@click.option("--power-cut", type=click.Choice(["none", *POWER_CUT_MODES]), default="none", show_default=True,
              help="After each SIGKILL, also simulate a power cut: drop what no fsync covered, or keep "
              "a random part of it with garbage at the end.")
@click.option("--min-confirmed", default=0, show_default=True, type=click.IntRange(0),
              help="Messages each load phase must have confirmed before the kill (it runs on until then).")
@click.option("--min-acked", default=0, show_default=True, type=click.IntRange(0),
              help="Messages each load phase must have acked (confirmed) before the kill.")
@click.option("--min-big", default=0, show_default=True, type=click.IntRange(0),
              help="Big batches (rounds for the sync helper) each load phase must have confirmed before the kill.")
@click.option("--dedup", is_flag=True,
              help="Publish with dedup ids and send the publishes in flight at each kill again after the "
              "restart: every message must be stored once.")
@click.option("--seed", type=int, default=None, help="Seed for the random choices (default: random).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Empty or missing data directory to use (default: a temporary one).")
@click.option("--keep", is_flag=True, help="Keep the temporary data directory and broker log.")
def main(iterations: int, seconds_per_iteration: float, producers: int, consumers: int, fsync: str,
         power_cut: str, min_confirmed: int, min_acked: int, min_big: int, dedup: bool, seed: int | None,
         data_dir: Path | None, keep: bool) -> None:
    """SIGKILL a loaded Lockgate broker repeatedly and check that nothing confirmed is lost."""
    try:
        summary = run(iterations=iterations, seconds_per_iteration=seconds_per_iteration,
                      producers=producers, consumers=consumers, fsync=fsync, power_cut=power_cut, seed=seed,
                      data_dir=data_dir, keep=keep, dedup=dedup, progress=Progress(min_confirmed, min_acked, min_big),
                      log=lambda text: click.echo(text, err=True))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    report(summary, click.echo)
    sys.exit(0 if summary.ok else 1)


if __name__ == "__main__":
    main()
