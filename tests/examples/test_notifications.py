"""examples/notifications against a real broker process (127.0.0.1, port 0, a temporary data dir).

The program runs as a child process; the fake gateway's outbox (every email that went
out, one JSON line each) and the broker's queues are checked afterwards.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from client import SyncClient
from examples.notifications.gateway import Email

from ..broker_process import BrokerProcess
from .programs import Event, named, run

PROGRAM = "examples.notifications"


def section(events: list[Event], step: str) -> list[Event]:
    """The events printed during one step of the run (between its ``step`` line and the next)."""
    start = next(i for i, e in enumerate(events) if e.name == "step" and e["name"] == step)
    end = next((i for i, e in enumerate(events) if i > start and e.name == "step"), len(events))
    return events[start + 1:end]


def test_every_email_is_sent_once_or_dead_lettered_and_replay_recovers_the_rest(
        broker_process: BrokerProcess, tmp_path: Path) -> None:
    orders, workers, seed = 40, 4, 3
    outbox = tmp_path / "outbox.jsonl"
    events = run(PROGRAM, broker_process.addr, "--orders", str(orders), "--workers", str(workers),
                 "--seed", str(seed), "--outbox", str(outbox))
    steps = [e["name"] for e in named(events, "step")]
    assert steps == ["orders", "send", "inspect", "replay", "left"]

    emails = {e["email"] for e in named(events, "published")}
    assert len(emails) == 2 * orders
    # Orders published twice (as after a lost reply) were stored once: the second publish
    # of each was all duplicates, and the queue took in each email once (plus the replay).
    republished = named(events, "republished")
    assert republished and all((e["stored"], e["duplicates"]) == (0, 2) for e in republished)

    # No email went out twice, although deliveries were repeated: sends that timed out
    # after the gateway had sent them were retried, and the retry found them sent.
    sent = Counter(json.loads(line)["dedup_id"] for line in outbox.read_text().splitlines())
    assert set(sent.values()) == {1}
    assert named(events, "already-sent"), "no delivery found its email already sent: the case was not exercised"
    timed_out = {e["email"] for e in named(events, "failed") if "no answer" in e["error"]}
    assert timed_out and timed_out <= set(sent)

    # Every email is either sent, or in the dead-letter queue at the end; never both.
    with SyncClient(broker_process.addr) as lg:
        dead = list(lg.peek("emails", max=1000, dead_letter=True))
        stats = lg.queue_stats("emails")
    dead_emails = {Email.from_bytes(m.body).dedup_id: m for m in dead}
    assert set(sent) | set(dead_emails) == emails and not set(sent) & set(dead_emails)
    assert stats.messages == 0
    assert stats.published == 2 * orders + named(events, "replay")[0]["redriven"]
    # What is left are the bounced addresses, rejected at once with the gateway's answer.
    assert dead_emails, "no address bounced: the case was not exercised"
    for dedup_id, m in dead_emails.items():
        assert Email.from_bytes(m.body).to.endswith(".invalid")
        assert m.dead_letter is not None and m.dead_letter.reason == "rejected"
        assert m.dead_letter.attempts == 1 and (m.dead_letter.error or "").startswith("550 ")

    # The inspection listed every dead letter with its record and its source's status;
    # the replay redrove exactly those that ran out of attempts, and they then went out.
    inspected = named(section(events, "inspect"), "dead-letter")
    out_of_attempts = [e for e in inspected if e["reason"] == "max_attempts"]
    assert out_of_attempts, "no email ran out of attempts: replay was not exercised"
    for e in inspected:
        assert e["source_status"] == f"dead_lettered:emails.dlq#{e['id']}"
    (replay,) = named(events, "replay")
    assert replay["redriven"] == len(out_of_attempts)
    assert {e["email"] for e in out_of_attempts} <= set(sent)

    # Priority: the first deliveries of the transactional emails all came before those of
    # the marketing ones, give or take one per worker (workers race for the last ones);
    # a fifo queue would have interleaved them order by order.
    firsts = [e for e in named(section(events, "send"), "received") if e["attempt"] == 1]
    assert len(firsts) == 2 * orders
    last_transactional = max(i for i, e in enumerate(firsts) if e["priority"] == 9)
    early_marketing = sum(1 for e in firsts[:last_transactional] if e["priority"] == 1)
    assert early_marketing < workers
