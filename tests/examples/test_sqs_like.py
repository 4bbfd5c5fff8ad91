"""examples/sqs_like against a real broker process (127.0.0.1, port 0, a temporary data dir).

The program runs as a child process, as a user would run it; its events (one line each)
and the broker's own counters are checked.
"""
from __future__ import annotations

import time
from collections import Counter

from client import SyncClient
from examples.sqs_like.jobs import Job, make_jobs
from examples.sqs_like.service import MAX_ATTEMPTS

from ..broker_process import BrokerProcess
from .programs import Running, named, run

PROGRAM = "examples.sqs_like"


def test_demo_runs_every_job_once_dead_letters_alarms_and_redrives(broker_process: BrokerProcess) -> None:
    count, seed, threshold = 40, 1, 3
    jobs = make_jobs(count, seed)
    webp = {j.number for j in jobs if j.format == "webp"}
    large = {j.number for j in jobs if j.large}
    assert len(webp) >= threshold and large - webp  # the seed gives the story all its parts

    events = run(PROGRAM, broker_process.addr, "demo", "--count", str(count), "--seed", str(seed),
                 "--alarm-threshold", str(threshold))
    names = [e.name for e in events]

    # Every job succeeded exactly once, across retries, the dead-letter queue and the redrive.
    assert Counter(e["job"] for e in named(events, "done")) == Counter(range(1, count + 1))
    # The jobs the first renderer could not decode used up their attempts and were
    # dead-lettered, each once; no other job was (the transient failures were retried).
    last_failures = [e for e in named(events, "failed") if e["next"] == "dead-letter"]
    assert Counter(e["job"] for e in last_failures) == Counter(webp)
    assert all(e["attempt"] == MAX_ATTEMPTS and "UnsupportedFormat" in e["error"] for e in last_failures)
    retried = {e["job"] for e in named(events, "failed") if e["next"] == "retry"}
    assert retried - webp, "no transient failure was retried"

    # The alarm went off once, for the dead letters, before the redrive; it cleared after it.
    (alarm,) = named(events, "ALARM")
    assert alarm["depth"] >= threshold and alarm["causes"].get("UnsupportedFormat", 0) >= threshold
    (redrive,) = named(events, "redrive")
    assert redrive["redriven"] == len(webp) and redrive["queues"] == {"jobs": len(webp)}
    assert names.index("ALARM") < names.index("redrive") < names.index("alarm-ok")

    # Long jobs kept their leases by extending them: no lease ran out, so none ran twice.
    assert large <= {e["job"] for e in named(events, "extended")}
    (summary,) = named(events, "summary")
    assert summary["lease_expiries"] == 0 and summary["alarm"] == "OK"

    with SyncClient(broker_process.addr) as lg:
        main, dlq = lg.queue_stats("jobs"), lg.queue_stats("jobs.dlq")
    assert (main.messages, main.acked, main.expired) == (0, count, 0)
    assert (main.published, main.dead_lettered) == (count + len(webp), len(webp))
    assert (dlq.messages, dlq.published) == (0, len(webp))


def test_graceful_shutdown_loses_nothing_and_a_restart_finds_the_rest(broker_process: BrokerProcess) -> None:
    count, seed = 40, 1
    large = {j.number for j in make_jobs(count, seed) if j.large}
    run(PROGRAM, broker_process.addr, "produce", "--count", str(count), "--seed", str(seed))

    # Consumers with a short grace period: stop them while a long job is half done.
    worker = Running(PROGRAM, broker_process.addr, "work", "--seed", str(seed), "--grace-ms", "200")
    try:
        worker.wait_for(lambda ev: len(named(ev, "done")) >= 10 and bool(named(ev, "extended")))
        assert worker.interrupt() == 0, worker.stderr()
    finally:
        worker.kill()
    events = worker.events
    done = Counter(e["job"] for e in named(events, "done"))
    released = named(events, "released")
    assert set(done.values()) == {1}
    assert released and {e["job"] for e in released} <= large  # long jobs were cut short ...
    assert not {e["job"] for e in released} & set(done)         # ... and not counted as done
    assert [e.name for e in events][-2:] == ["stopped", "left"]

    # Right after the shutdown nothing is leased: the cut-short jobs were given back, not
    # left to time out, and every job is either acked or still in the queue.
    with SyncClient(broker_process.addr) as lg:
        stats = lg.queue_stats("jobs")
        assert (stats.leased, stats.acked, stats.messages) == (0, len(done), count - len(done))
        assert {s.state for s in lg.message_status("jobs", [e["id"] for e in released])} <= {"ready", "delayed"}

    # A restart finds exactly the jobs that were not done.
    assert broker_process.stop() == 0
    broker_process.start()
    with SyncClient(broker_process.addr) as lg:
        left = list(lg.peek("jobs", max=count))
    assert len(left) == count - len(done)
    assert {Job.from_bytes(m.body).number for m in left} == set(range(1, count + 1)) - set(done)

    # Previews published while no consumer runs, with a time to live of their own, expire:
    # the queue dead-letters them with reason "expired" (waited for with a long poll).
    previews = range(count + 1, count + 6)
    run(PROGRAM, broker_process.addr, "produce", "--first", str(previews[0]), "--count", str(len(previews)),
        "--seed", str(seed), "--ttl-ms", "300")
    with SyncClient(broker_process.addr) as lg:
        arrived = 0
        deadline = time.monotonic() + 15
        while arrived < len(previews) and time.monotonic() < deadline:
            arrived += len(lg.consume("jobs.dlq", max=len(previews), wait_ms=2_000))
        assert arrived == len(previews)
        dead = list(lg.peek("jobs", max=100, dead_letter=True))
        assert lg.queue_stats("jobs").ttl_expired == len(previews)
    assert {Job.from_bytes(m.body).number for m in dead} == set(previews)
    assert all(m.dead_letter is not None and m.dead_letter.reason == "expired" for m in dead)

    # Consumers started again finish the rest, each once, and never see an expired preview.
    rest = run(PROGRAM, broker_process.addr, "work", "--seed", str(seed), "--until-empty")
    again = Counter(e["job"] for e in named(rest, "done"))
    assert done + again == Counter(range(1, count + 1))
