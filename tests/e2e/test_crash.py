"""The SIGKILL crash harness (tools.crashtest): a short run must find nothing, and its
checker must be able to find something.

The short run SIGKILLs a real broker child under load a few times with ``--fsync
always``. The other tests feed the verifier a tracker that disagrees with the broker,
and the tracker deliveries that break the rules, and check each is reported. The
power-cut tests run the harness with ``--power-cut``, check what a power cut may
legitimately take under each policy, and check ``tools.powercut.apply_power_cut`` on
files written through ``JournalingFileIO``.

The harness runs are bounded by events, not rates: every load phase runs on until it
has had its minimum progress (``Progress``), so what they cover does not depend on
how busy the machine is.
"""
from __future__ import annotations

import errno
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from broker.config import BrokerConfig
from broker.server import Broker
from broker.wal import SegmentedLog, encode_record, replay
from broker.wal.fileio import OPEN_CREATE, BytesLike, JournalingFileIO, write_all
from broker.wal.segment import SEGMENT_HEADER_SIZE, segment_base
from client import SyncClient
from client.types import Delivery
from protocol import Error, ErrorCode, Reply
from tools.crashtest import (
    LOST,
    OTHER,
    REGRESSION,
    RESURRECTED,
    Progress,
    QueueSpec,
    Tracker,
    create_queues,
    make_specs,
    run,
    verify,
)
from tools.powercut import MAX_GARBAGE, apply_power_cut, read_journal
from tools.procs import BrokerProcess

from .rawclient import RawClient

#: What every load phase of the harness runs below must have had confirmed before
#: the broker is killed or stopped: publishes, acks, and big batches (rounds that the
#: broker's sync helper fdatasyncs, 500-1000 messages of ~150 bytes, over 64 KiB).
PROGRESS = Progress(confirmed=100, acked=20, big=1)


def test_short_crash_run_under_fsync_always_loses_nothing(tmp_path: Path) -> None:
    summary = run(iterations=5, seconds_per_iteration=1.0, producers=2, consumers=2,
                  fsync="always", seed=20240611, data_dir=tmp_path / "data", progress=PROGRESS)
    detail = "\n".join([summary.line(), *summary.violations[:20]])
    assert summary.lost == 0, detail
    assert summary.resurrected == 0, detail
    assert summary.attempt_regressions == 0, detail
    assert summary.other == 0, detail  # a load that stalled short of PROGRESS counts here
    assert summary.ok
    assert summary.iterations == 5 and summary.kills == 5, detail
    # Six load phases (five killed, one stopped), each killed only after its progress.
    assert summary.confirmed >= 6 * PROGRESS.confirmed, detail
    assert summary.acked >= 6 * PROGRESS.acked and summary.big_batches >= 6 * PROGRESS.big, detail
    assert summary.delivered >= summary.acked, detail  # every ack was of a delivery


def test_short_crash_run_with_dedup_ids_stores_every_message_once(tmp_path: Path) -> None:
    """``--dedup``: the publishes in flight at each kill are sent again with their dedup
    ids after the restart, and every body is stored once (one id each)."""
    summary = run(iterations=4, seconds_per_iteration=1.0, producers=2, consumers=2, fsync="always",
                  seed=20261203, data_dir=tmp_path / "data", progress=PROGRESS, dedup=True)
    detail = "\n".join([summary.line(), *summary.violations[:20]])
    assert summary.ok, detail
    assert summary.kills == 4, detail
    assert summary.resent is not None and summary.resent >= 1, detail  # two producers publish all the time


# --- the checker can fail -----------------------------------------------------------------


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[SyncClient, tuple[QueueSpec, ...], Tracker]]:
    """A broker child with the harness's queues declared, and a fresh tracker."""
    with BrokerProcess(tmp_path / "data") as broker, SyncClient(broker.addr, timeout=10) as client:
        specs = make_specs(random.Random(0))
        tracker = Tracker()
        create_queues(client, specs, tracker)
        yield client, specs, tracker


def _publish(client: SyncClient, tracker: Tracker, queue: str, body: bytes) -> int:
    tracker.publish_sent(queue, [body])
    mid = client.publish(queue, body)
    tracker.publish_confirmed(queue, [body], mid)
    return mid


def test_verifier_reports_a_confirmed_message_the_broker_never_had(
    setup: tuple[SyncClient, tuple[QueueSpec, ...], Tracker],
) -> None:
    client, specs, tracker = setup
    queue = specs[0].name
    real = _publish(client, tracker, queue, b"real.")
    # The tracker claims a confirmed publish the broker never saw.
    tracker.publish_sent(queue, [b"ghost."])
    tracker.publish_confirmed(queue, [b"ghost."], real + 1000)

    verify(client, specs, tracker)

    assert tracker.counts == {LOST: 1, RESURRECTED: 0, REGRESSION: 0, OTHER: 0}, tracker.violations
    assert "'ghost'" in tracker.violations[0] and "missing after the restart" in tracker.violations[0]
    # The real message was drained, checked and released again; a second pass agrees.
    assert client.queue_stats(queue).ready == 1
    verify(client, specs, tracker)
    assert tracker.counts[LOST] == 1, tracker.violations


def test_verifier_reports_a_message_whose_ack_was_confirmed_but_comes_back(
    setup: tuple[SyncClient, tuple[QueueSpec, ...], Tracker],
) -> None:
    client, specs, tracker = setup
    queue = specs[0].name
    mid = _publish(client, tracker, queue, b"zombie.")
    sent = time.monotonic()
    got = client.consume(queue)
    tracker.delivered(queue, got, sent, time.monotonic())
    assert [d.id for d in got] == [mid]
    # The tracker believes an ack was confirmed; the broker only had a nack.
    tracker.ack_sent(queue, [mid])
    client.nack(queue, [mid])
    tracker.ack_confirmed(queue, [mid], (), time.monotonic())

    verify(client, specs, tracker)

    assert tracker.counts == {LOST: 0, RESURRECTED: 1, REGRESSION: 0, OTHER: 0}, tracker.violations
    assert "'zombie'" in tracker.violations[0]


def test_verifier_reports_a_message_never_published(
    setup: tuple[SyncClient, tuple[QueueSpec, ...], Tracker],
) -> None:
    client, specs, tracker = setup
    client.publish(specs[1].name, b"stranger.")  # behind the tracker's back

    verify(client, specs, tracker)

    assert tracker.counts[OTHER] == 1 and "never published" in tracker.violations[0], tracker.violations


def test_verifier_reports_changed_queue_settings(
    setup: tuple[SyncClient, tuple[QueueSpec, ...], Tracker],
) -> None:
    client, specs, tracker = setup
    spec = specs[2]
    client.delete_queue(spec.name)
    client.create_queue(spec.name, spec.kind, spec.shards + 1, visibility_ms=spec.visibility_ms)

    verify(client, specs, tracker)

    assert tracker.counts[OTHER] >= 1
    assert any(spec.name in v and "settings" in v for v in tracker.violations), tracker.violations


# --- the tracker's delivery rules ----------------------------------------------------------


def _tracker_with(body: bytes = b"m.", mid: int = 7, queue: str = "q") -> Tracker:
    tracker = Tracker()
    tracker.declare_queue(queue, ())
    tracker.publish_sent(queue, [body])
    tracker.publish_confirmed(queue, [body], mid)
    return tracker


def test_attempt_not_above_one_already_received_is_a_regression() -> None:
    tracker = _tracker_with()
    tracker.delivered("q", [Delivery(7, b"m.", 2, None, 0)], sent=0.0, received=1.0)
    # A consume sent after attempt 2 was received must see attempt 3 or more.
    tracker.delivered("q", [Delivery(7, b"m.", 2, None, 0)], sent=2.0, received=3.0)
    assert tracker.counts[REGRESSION] == 1, tracker.violations
    tracker.delivered("q", [Delivery(7, b"m.", 3, None, 0)], sent=4.0, received=5.0)
    assert tracker.counts[REGRESSION] == 1, tracker.violations


def test_overlapping_consumes_are_not_ordered() -> None:
    tracker = _tracker_with()
    tracker.delivered("q", [Delivery(7, b"m.", 2, None, 0)], sent=0.0, received=3.0)
    # Sent before the first reply arrived: no order between the two.
    tracker.delivered("q", [Delivery(7, b"m.", 1, None, 0)], sent=1.0, received=2.0)
    tracker.full_check()
    assert tracker.counts == {LOST: 0, RESURRECTED: 0, REGRESSION: 0, OTHER: 0}, tracker.violations


def test_full_check_catches_a_delivery_recorded_late() -> None:
    tracker = _tracker_with()
    # Recorded first, but its consume was sent after the next one's reply arrived.
    tracker.delivered("q", [Delivery(7, b"m.", 1, None, 0)], sent=5.0, received=6.0)
    tracker.delivered("q", [Delivery(7, b"m.", 1, None, 0)], sent=1.0, received=2.0)
    assert tracker.counts[REGRESSION] == 0
    tracker.full_check()
    assert tracker.counts[REGRESSION] == 1, tracker.violations


def test_delivery_by_a_consume_sent_after_the_ack_confirmed_is_a_resurrection() -> None:
    tracker = _tracker_with()
    tracker.delivered("q", [Delivery(7, b"m.", 1, None, 0)], sent=0.0, received=1.0)
    tracker.ack_sent("q", [7])
    tracker.ack_confirmed("q", [7], (), at=2.0)
    # Sent before the ack was confirmed: the broker may have served it first.
    tracker.delivered("q", [Delivery(7, b"m.", 2, None, 0)], sent=1.5, received=2.5)
    assert tracker.counts[RESURRECTED] == 0
    tracker.delivered("q", [Delivery(7, b"m.", 3, None, 0)], sent=3.0, received=3.5)
    assert tracker.counts[RESURRECTED] == 1, tracker.violations


def test_unconfirmed_publishes_and_acks_are_resolved_by_the_drain() -> None:
    tracker = Tracker()
    tracker.declare_queue("q", ())
    tracker.publish_sent("q", [b"kept.", b"gone."])  # in flight at a kill
    tracker.publish_sent("q", [b"acked."])
    tracker.publish_confirmed("q", [b"acked."], 3)
    tracker.delivered("q", [Delivery(3, b"acked.", 1, None, 0)], sent=0.0, received=1.0)
    tracker.ack_sent("q", [3])  # in flight at a kill, and it did happen

    tracker.reconcile("q", {1: b"kept."}, at=2.0)

    assert tracker.counts == {LOST: 0, RESURRECTED: 0, REGRESSION: 0, OTHER: 0}, tracker.violations
    assert tracker.adopted == 1
    # The acked message must stay gone; the dropped publish must not turn up.
    tracker.delivered("q", [Delivery(3, b"acked.", 2, None, 0)], sent=3.0, received=4.0)
    tracker.delivered("q", [Delivery(2, b"gone.", 1, None, 0)], sent=3.0, received=4.0)
    assert tracker.counts[RESURRECTED] == 1 and tracker.counts[OTHER] == 1, tracker.violations
    # The adopted message is now expected after every restart.
    tracker.reconcile("q", {}, at=5.0)
    assert tracker.counts[LOST] == 1, tracker.violations


def test_a_publish_sent_again_with_dedup_ids_must_give_each_body_its_one_id() -> None:
    tracker = Tracker()
    tracker.declare_queue("q", ())
    tracker.publish_sent("q", [b"stored.", b"not-stored."])  # in flight at a kill
    tracker.reconcile("q", {1: b"stored."}, at=2.0)  # the drain adopts one, forgets the other

    # Sent again (--dedup): the stored one is a duplicate of itself, the other is published now.
    tracker.publish_confirmed_ids("q", [(b"stored.", 1), (b"not-stored.", 2)])
    assert tracker.counts == {LOST: 0, RESURRECTED: 0, REGRESSION: 0, OTHER: 0}, tracker.violations
    tracker.reconcile("q", {1: b"stored."}, at=3.0)  # now it must be there after a restart
    assert tracker.counts[LOST] == 1, tracker.violations
    # A second copy of a body (a publish sent again without its dedup ids) is caught.
    tracker.publish_confirmed_ids("q", [(b"stored.", 7)])
    assert tracker.counts[OTHER] == 1, tracker.violations


# --- power cuts -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["drop", "garbage"])
def test_short_power_cut_run_under_fsync_always_loses_nothing(tmp_path: Path, mode: str) -> None:
    # Small segments and checkpoints, so cuts also meet rolls, snapshots and deletions.
    # Every phase confirms a big batch: a round the sync helper fdatasyncs, which the
    # journal learns of from the log (FileIO.synced_elsewhere) and the cut honours.
    summary = run(iterations=3, seconds_per_iteration=1.0, producers=2, consumers=2,
                  fsync="always", power_cut=mode, seed=20240612, data_dir=tmp_path / "data",
                  broker_args=("--segment-bytes", "1048576", "--checkpoint-bytes", "1048576"),
                  progress=PROGRESS)
    detail = "\n".join([summary.line(), *summary.violations[:20]])
    assert summary.ok, detail
    assert summary.lost == 0 and summary.resurrected == 0, detail
    assert summary.lost_allowed == summary.resurrected_allowed == summary.attempt_regressions_allowed == 0
    assert summary.kills == 3 and summary.power_cuts == 4, detail  # each kill and the clean stop
    assert summary.confirmed >= 4 * PROGRESS.confirmed, detail
    assert summary.big_batches >= 4 * PROGRESS.big, detail
    assert summary.helper_syncs > 0, detail  # helper-synced rounds were journaled, and cut
    assert summary.line().endswith(f"power_cut={mode} power_cuts=4 helper_syncs={summary.helper_syncs} "
                                   "lost_allowed=0 resurrected_allowed=0 attempt_regressions_allowed=0")


def test_short_power_cut_run_under_fsync_never_loses_only_unsynced_data(tmp_path: Path) -> None:
    summary = run(iterations=3, seconds_per_iteration=1.0, producers=2, consumers=2,
                  fsync="never", power_cut="drop", seed=20240613, data_dir=tmp_path / "data",
                  progress=Progress(confirmed=100, acked=20))
    detail = "\n".join([summary.line(), *summary.violations[:20]])
    assert summary.lost == 0 and summary.resurrected == 0 and summary.attempt_regressions == 0, detail
    assert summary.ok, detail
    # "never" fdatasyncs only at start-up: each cut takes that iteration's messages.
    assert summary.lost_allowed > 0, detail


def test_power_cut_allowances_cover_only_what_came_after_the_last_log_fsync() -> None:
    tracker = Tracker()
    tracker.declare_queue("q", (), at=0.0)
    tracker.publish_sent("q", [b"old.", b"new."])
    tracker.publish_confirmed("q", [b"old."], 1, at=1.0)
    tracker.publish_confirmed("q", [b"new."], 2, at=3.0)
    tracker.power_cut(boundary=2.0, at=4.0)  # the log's last fsync started at 2.0

    tracker.reconcile("q", {}, at=5.0)

    assert tracker.counts == {LOST: 1, RESURRECTED: 0, REGRESSION: 0, OTHER: 0}, tracker.violations
    assert "'old'" in tracker.violations[0]
    assert tracker.allowed == {LOST: 1, RESURRECTED: 0, REGRESSION: 0}
    # The broker lost id 2 with the cut and may hand it out again.
    tracker.publish_sent("q", [b"next."])
    tracker.publish_confirmed("q", [b"next."], 2, at=6.0)
    assert tracker.counts[OTHER] == 0, tracker.violations


def test_power_cut_may_undo_acks_and_leases_confirmed_after_the_last_log_fsync() -> None:
    tracker = Tracker()
    tracker.declare_queue("q", (), at=0.0)
    tracker.publish_sent("q", [b"a.", b"b."])
    tracker.publish_confirmed("q", [b"a.", b"b."], 1, at=0.5)
    tracker.delivered("q", [Delivery(1, b"a.", 1, None, 0)], sent=0.6, received=0.7)
    tracker.ack_sent("q", [1])
    tracker.ack_confirmed("q", [1], (), at=1.0)
    tracker.delivered("q", [Delivery(2, b"b.", 1, None, 0)], sent=2.4, received=2.5)
    tracker.ack_sent("q", [2])
    tracker.ack_confirmed("q", [2], (), at=3.0)
    tracker.power_cut(boundary=2.0, at=4.0)

    # Both come back; b with its lease undone too.
    tracker.delivered("q", [Delivery(1, b"a.", 2, None, 0), Delivery(2, b"b.", 1, None, 0)],
                      sent=5.0, received=5.1, phase="drain")
    tracker.reconcile("q", {1: b"a.", 2: b"b."}, at=5.2)
    tracker.full_check()

    assert tracker.counts == {LOST: 0, RESURRECTED: 1, REGRESSION: 0, OTHER: 0}, tracker.violations
    assert "'a'" in tracker.violations[0]
    assert tracker.allowed == {LOST: 0, RESURRECTED: 1, REGRESSION: 1}


# --- apply_power_cut ------------------------------------------------------------------------


def _write_file(io: JournalingFileIO, path: Path, data: bytes, *, sync: bool = True) -> None:
    fd = io.open(str(path), OPEN_CREATE)
    try:
        write_all(io, fd, data)
        if sync:
            io.fsync(fd)
    finally:
        io.close(fd)


def test_apply_power_cut_keeps_only_what_fsyncs_made_durable(tmp_path: Path) -> None:
    wal = tmp_path / "data" / "wal"
    wal.mkdir(parents=True)
    journal = tmp_path / "journal"
    io = JournalingFileIO(journal)
    seg = wal / "00000000000000000000.wal"
    fd = io.open(str(seg), OPEN_CREATE)
    write_all(io, fd, b"s" * 100)
    io.fdatasync(fd)
    write_all(io, fd, b"u" * 50)  # written, never synced
    _write_file(io, wal / "renamed", b"r" * 10)
    _write_file(io, wal / "unlinked", b"d" * 20)
    _write_file(io, wal / "deleted", b"e" * 30)
    _write_file(io, wal / "unsynced", b"n" * 40, sync=False)
    io.unlink(str(wal / "deleted"))
    io.fsync_dir(str(wal))  # durable: the segment, renamed, unlinked, unsynced (empty)
    io.rename(str(wal / "renamed"), str(wal / "renamed.new"))
    io.unlink(str(wal / "unlinked"))
    _write_file(io, wal / "created", b"c" * 5)  # synced, but its name never was

    cut = apply_power_cut(tmp_path / "data", journal, random.Random(1), "drop")

    assert sorted(p.name for p in wal.iterdir()) == [seg.name, "renamed", "unlinked", "unsynced"]
    assert seg.read_bytes() == b"s" * 100
    assert (wal / "renamed").read_bytes() == b"r" * 10
    assert (wal / "unlinked").read_bytes() == b"d" * 20
    assert (wal / "unsynced").read_bytes() == b""
    assert cut.renames_undone == [("wal/renamed.new", "wal/renamed")]
    assert cut.unlinks_undone == ["wal/unlinked"]
    assert cut.removed == ["wal/created"]
    assert cut.files_cut == 2 and cut.bytes_dropped == 50 + 40 and not cut.notes
    assert cut.last_log_sync is not None and cut.boundary == cut.last_log_sync
    assert not any(Path(f"{journal}.unlinked").iterdir())
    os.close(fd)

    # The cut is the new durable state: a second one finds nothing to take.
    again = apply_power_cut(tmp_path / "data", journal, random.Random(2), "garbage")
    assert (again.files_cut, again.removed, again.renames_undone, again.unlinks_undone) == (0, [], [], [])
    assert again.epoch_start == cut.at and again.last_log_sync is None and again.boundary == cut.at
    assert seg.read_bytes() == b"s" * 100


def test_apply_power_cut_keeps_the_largest_synced_size_until_a_truncation(tmp_path: Path) -> None:
    """The log reports a sync the helper made when it returns: after a later, larger
    sync of the same file, perhaps. Only a truncation makes a smaller size durable."""
    wal = tmp_path / "data" / "wal"
    wal.mkdir(parents=True)
    journal = tmp_path / "journal"
    io = JournalingFileIO(journal)
    seg = wal / "00000000000000000000.wal"
    fd = io.open(str(seg), OPEN_CREATE)
    io.fsync_dir(str(wal))
    write_all(io, fd, b"h" * 100)
    handed_over = time.monotonic()  # the helper is to sync these 100 bytes
    write_all(io, fd, b"i" * 50)
    io.fdatasync(fd)  # an inline round covers all 150 first
    io.synced_elsewhere(fd, 100, handed_over)  # then the helper's round is reported
    write_all(io, fd, b"u" * 25)  # never synced
    other = wal / "00000000000000000175.wal"
    _write_file(io, other, b"t" * 80)
    io.fsync_dir(str(wal))
    tfd = io.open(str(other), os.O_WRONLY)
    io.ftruncate(tfd, 30)  # (recovery cutting a torn tail) and making it durable
    io.fsync(tfd)
    io.close(tfd)

    cut = apply_power_cut(tmp_path / "data", journal, random.Random(0), "drop")

    assert seg.read_bytes() == b"h" * 100 + b"i" * 50
    assert other.read_bytes() == b"t" * 30
    assert cut.helper_log_syncs == 1 and cut.bytes_dropped == 25 and not cut.notes
    os.close(fd)


@pytest.mark.parametrize("seed", range(6))
def test_garbage_mode_keeps_durable_bytes_and_garbles_only_the_end_of_the_kept_tail(
    tmp_path: Path, seed: int,
) -> None:
    wal = tmp_path / "data" / "wal"
    wal.mkdir(parents=True)
    io = JournalingFileIO(tmp_path / "journal")
    seg = wal / "00000000000000000000.wal"
    durable, tail = random.Random(seed).randbytes(1000), random.Random(-seed).randbytes(20_000)
    fd = io.open(str(seg), OPEN_CREATE)
    write_all(io, fd, durable)
    io.fdatasync(fd)
    io.fsync_dir(str(wal))
    write_all(io, fd, tail)
    os.close(fd)

    cut = apply_power_cut(tmp_path / "data", tmp_path / "journal", random.Random(seed), "garbage")

    data = seg.read_bytes()
    assert 1000 <= len(data) <= 21_000
    assert data[:1000] == durable
    kept = len(data) - 1000
    assert cut.bytes_dropped == 20_000 - kept
    assert cut.bytes_garbled <= min(kept, MAX_GARBAGE)
    assert data[1000:len(data) - cut.bytes_garbled] == tail[:kept - cut.bytes_garbled]


@pytest.mark.parametrize("mode", ["drop", "garbage"])
@pytest.mark.parametrize("seed", range(3))
def test_a_log_keeps_every_synced_record_through_apply_power_cut(tmp_path: Path, mode: str,
                                                                 seed: int) -> None:
    rng = random.Random(seed)
    wal = tmp_path / "data" / "wal"
    io = JournalingFileIO(tmp_path / "journal")
    log = SegmentedLog.open(wal, segment_bytes=rng.choice([300, 900]), io=io)
    records: list[bytes] = []
    confirmed = 0
    for _ in range(rng.randint(5, 40)):
        for _ in range(rng.randint(1, 6)):
            payload = len(records).to_bytes(4, "big") + rng.randbytes(rng.randint(0, 90))
            records.append(encode_record(1, payload))
            log.append(records[-1])
        action = rng.random()
        if action < 0.4:
            log.sync()
            confirmed = len(records)
        elif action < 0.8:
            log.write()

    apply_power_cut(tmp_path / "data", tmp_path / "journal", rng, mode)
    for fd in list(io._paths):  # the "crashed" log's descriptors
        os.close(fd)

    got: list[bytes] = []
    replay(wal, lambda rtype, payload: got.append(payload))
    assert len(got) >= confirmed
    assert got == [r[9:] for r in records[:len(got)]]


@pytest.mark.parametrize("mode", ["drop", "garbage"])
def test_power_cut_keeps_the_rounds_the_sync_helper_synced(tmp_path: Path, mode: str) -> None:
    """Big rounds are fdatasynced by the broker's sync helper process, which the power
    journal cannot see; the log tells it (``FileIO.synced_elsewhere``). Here nothing
    but the helper syncs the batches: were that not journaled, the cut would drop every
    one of them."""
    data, journal = tmp_path / "data", tmp_path / "power.journal"
    broker = BrokerProcess(data, fsync="always", args=("--test-power-journal", str(journal)))
    broker.start()
    try:
        bodies = [b"%06d." % i + b"b" * 150 for i in range(5 * 600)]
        with SyncClient(broker.addr, timeout=10) as c:
            c.create_queue("q")
            for i in range(0, len(bodies), 600):  # 90 KB each: a round for the helper
                c.publish_batch("q", bodies[i:i + 600])
        broker.kill()
        cut = apply_power_cut(data, journal, random.Random(1), mode)
        assert cut.helper_log_syncs >= 1, cut.describe()
        broker.start()
        with SyncClient(broker.addr, timeout=10) as c:
            got = c.consume("q", max=len(bodies) + 1)
        assert sorted(d.body for d in got) == bodies, cut.describe()
    finally:
        broker.kill()


_SNAPSHOT = re.compile(r"^(\d{20})\.snap$")


def snapshots_ahead_of_the_log(journal: Path) -> list[str]:
    """Snapshots the power journal shows published (renamed onto their ``.snap`` name)
    before the log was durable up to their LSN; empty if none.

    The log's durable end is the furthest LSN a sync of a ``*.wal`` file covered (the
    helper's syncs, as reported, included), or after a cut what the cut left on disk.
    """
    ahead: list[str] = []
    durable_end = 0
    for line in read_journal(journal):
        op = line["op"]
        if op == "cut":
            durable_end = max((base + size - SEGMENT_HEADER_SIZE
                               for entries in line["dirs"].values()
                               for name, (_, size) in entries.items()
                               if (base := segment_base(name)) is not None), default=0)
        elif op == "sync":
            base = segment_base(os.path.basename(line.get("path") or ""))
            if base is not None:
                durable_end = max(durable_end, base + line["size"] - SEGMENT_HEADER_SIZE)
        elif op == "rename" and (m := _SNAPSHOT.match(os.path.basename(line["dst"]))):
            if int(m.group(1)) > durable_end:
                ahead.append(f"{os.path.basename(line['dst'])} published while the log was durable "
                             f"only up to LSN {durable_end}")
    return ahead


def test_power_cut_after_a_checkpoint_under_never_restarts(tmp_path: Path) -> None:
    """A snapshot is never published ahead of what the log has fsynced, whatever the policy.

    The restart alone does not show that any more, for two reasons: a checkpoint rolls
    the log first, and the roll fdatasyncs the segment it seals, so on this path the
    log is durable up to the snapshot's LSN before ``Checkpointer.checkpoint`` syncs it
    explicitly; and recovery now continues a log that ends before the newest snapshot
    at the snapshot's LSN (``broker/recovery.py``, rule 6), so a snapshot published
    ahead of the log would not stop the restart either. The rule itself is checked in
    the power journal. Where the explicit sync is the only one (a checkpoint that does
    not roll), see test_a_checkpoint_that_does_not_roll_syncs_the_log_first.
    """
    data, journal = tmp_path / "data", tmp_path / "power.journal"
    broker = BrokerProcess(data, fsync="never", args=(
        "--segment-bytes", "1048576", "--checkpoint-bytes", "1048576",
        "--test-power-journal", str(journal)))
    broker.start()
    try:
        with SyncClient(broker.addr, timeout=10) as c:
            c.create_queue("q")
            for _ in range(1200):  # ~1.2 MiB of log: a checkpoint comes due after 1 MiB
                c.publish("q", b"x" * 1000)
            deadline = time.monotonic() + 60
            while not list((data / "wal").glob("*.snap")):  # its child is a real process
                assert time.monotonic() < deadline, "no checkpoint was published"
                time.sleep(0.01)
        broker.kill()
        assert not snapshots_ahead_of_the_log(journal)
        apply_power_cut(data, journal, random.Random(0), "drop")
        broker.start()
        with SyncClient(broker.addr, timeout=10) as c:
            assert c.queue_stats("q").messages > 0
    finally:
        broker.kill()


class NoRoomForSnapshots(JournalingFileIO):
    """The power journal, and while ``full`` is set, no room for a snapshot: writing one
    fails with ENOSPC (in the forked child, which sees ``full`` as it was at the fork)."""

    full = False

    def __init__(self, journal_path: Path) -> None:
        super().__init__(journal_path)
        self.snapshot_fds: set[int] = set()

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.snapshot_fds.discard(fd)
        if path.endswith(".snap.tmp"):
            self.snapshot_fds.add(fd)
        return fd

    def write(self, fd: int, data: BytesLike) -> int:
        if self.full and fd in self.snapshot_fds:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(fd, data)


async def _until(what: str, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait for ``condition`` about a forked snapshot child, a real process: poll in real
    time (from a thread, so the trio clock meanwhile jumps to the broker's next deadline
    by itself, e.g. a checkpoint's retry), bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await trio.to_thread.run_sync(time.sleep, 0.01)


async def test_a_checkpoint_that_does_not_roll_syncs_the_log_first(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """After a checkpoint failed for lack of room, the next one does not roll the log
    (a new segment costs room): under ``never`` nothing else has synced the records
    appended since, so ``Checkpointer.checkpoint`` must, before it publishes."""
    data, journal = tmp_path / "data", tmp_path / "power.journal"
    io = NoRoomForSnapshots(journal)
    # No idle timeout: trio's clock jumps while the snapshot child works.
    config = BrokerConfig(host="127.0.0.1", port=0, data_dir=data, fsync="never",
                          segment_bytes=1024 * 1024, checkpoint_bytes=64 * 1024, idle_timeout_ms=0)
    async with trio.open_nursery() as nursery:
        broker = Broker(config, io=io)
        await nursery.start(broker.serve)
        checkpointer = broker._checkpointer
        assert checkpointer is not None
        host, port = broker.addr.rsplit(":", 1)
        c = await RawClient.open((host, int(port)))
        await c.call("queue_create", {"queue": "q"})
        io.full = True
        published, acked = 0, []

        async def consume_and_ack(n: int) -> None:
            r = await c.call("consume", {"queue": "q", "max": n})
            assert isinstance(r, Reply), r
            ids = [m[0] for m in r.result["messages"]]
            assert len(ids) == n and isinstance(await c.call("ack", {"queue": "q", "ids": ids}), Reply)
            acked.extend(ids)

        # A checkpoint comes due once the log holds 64 KiB beyond the live data (one
        # message of every five stays), and fails: no room for its snapshot.
        for _ in range(40):  # 200 KiB of log
            r = await c.call("publish", {"queue": "q", "messages": [[b"m" * 1000]] * 5})
            if isinstance(r, Error):  # refused once it failed
                assert r.code == ErrorCode.DISK_FULL, r
                break
            published += 5
            await consume_and_ack(4)
        await _until("a checkpoint failed for lack of room", lambda: checkpointer.starved)
        assert checkpointer.checkpoints == 0
        # Acks are logged on a full disk too: records after the last roll, never synced.
        await consume_and_ack(3)
        assert broker._log.synced_lsn < broker._log.appended_lsn
        io.full = False  # the retry (on the trio clock) finds room
        await _until("the retried checkpoint was published",
                     lambda: checkpointer.checkpoints == 1 and not checkpointer.starved)
        assert checkpointer.snapshot_lsn == broker._log.appended_lsn  # it holds the acks
        nursery.cancel_scope.cancel()  # a stop without the shutdown checkpoint

    assert not snapshots_ahead_of_the_log(journal)
    apply_power_cut(data, journal, random.Random(0), "drop")
    restarted = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=data, fsync="never"))
    restarted.recover()
    try:
        queue = restarted.state.queues["q"]
        assert len(queue) == published - len(acked) and not set(acked) & set(queue.messages)
    finally:
        restarted._log.close()
