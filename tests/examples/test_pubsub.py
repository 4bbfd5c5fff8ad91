"""examples/pubsub against a real broker process (127.0.0.1, port 0, a temporary data dir).

The program runs as a child process; its events (one line each), its summary line and
the broker's own counters are checked.
"""
from __future__ import annotations

from collections import Counter, defaultdict

from client import SyncClient
from examples.pubsub.orders import make_orders
from examples.pubsub.service import EMAIL_MAX_ATTEMPTS

from ..broker_process import BrokerProcess
from .programs import Event, named, run

PROGRAM = "examples.pubsub"


def of_group(events: list[Event], group: str) -> list[Event]:
    return [e for e in named(events, "handled") if e["group"] == group]


def test_fan_out_retries_a_late_group_reclaiming_and_an_age_limit(broker_process: BrokerProcess) -> None:
    orders, seed, max_age_ms = 60, 1, 500  # long enough for the ack of the first 4 to come first
    unreachable = {o.order for o in make_orders(orders, seed) if o.email.endswith("@unreachable.example")}
    assert len(unreachable) == 1

    events = run(PROGRAM, broker_process.addr, "--orders", str(orders), "--seed", str(seed),
                 "--max-age-ms", str(max_age_ms))
    assert [e["name"] for e in named(events, "step")] == ["setup", "live", "late", "catch-up", "age-limit"]
    assert events[-1].name == "summary"
    summary = events[-1]
    ids = set(range(1, orders + 1))

    # Fan-out: billing, analytics and the late audit group each handled every event once,
    # on its first delivery; email every event but the unreachable customer's.
    for group in ("billing", "analytics", "audit"):
        handled = of_group(events, group)
        assert Counter(e["id"] for e in handled) == Counter(ids), group
        assert {e["attempt"] for e in handled} == {1}, group
        assert summary[group] == orders
    email = of_group(events, "email")
    assert Counter(e["order"] for e in email) == Counter(ids - unreachable)
    assert summary["email"] == orders - 1

    # Every group read each shard in offset order (1, 2, 3, ...), the same event at the
    # same place for all, and one customer's events all in one shard (the key).
    place = {(e["shard"], e["offset"]): e["id"] for e in of_group(events, "billing")}
    for group in ("billing", "analytics", "audit"):
        offsets: dict[int, list[int]] = defaultdict(list)
        for e in of_group(events, group):
            offsets[e["shard"]].append(e["offset"])
            assert place[(e["shard"], e["offset"])] == e["id"]
        assert all(seen == list(range(1, len(seen) + 1)) for seen in offsets.values()), group
    shards_of = defaultdict(set)
    for e in of_group(events, "billing"):
        shards_of[e["customer"]].add(e["shard"])
    assert all(len(s) == 1 for s in shards_of.values())

    # Email failed some sends and retried them after its backoff; the unreachable one
    # failed every attempt and went to the dead-letter queue. Billing saw none of it.
    failed = named(events, "failed")
    assert {e["group"] for e in failed} == {"email"}
    retried = {e["order"] for e in failed if e["next"] == "retry"} - unreachable
    assert retried, "no send failed and was retried: the case was not exercised"
    assert {e["order"]: e["attempt"] for e in email if e["order"] in retried} == dict.fromkeys(retried, 2)
    last = [e for e in failed if e["order"] in unreachable]
    assert [(e["attempt"], e["next"]) for e in last] == [(1, "retry"), (2, "retry"), (3, "dead-letter")]
    assert summary["email_failures"] == len(failed) == len(retried) + EMAIL_MAX_ATTEMPTS
    assert summary["email_dead_letters"] == 1

    # Interest retention: after the live step analytics had read nothing, so the topic
    # still held every event and the late group started with the whole history; once
    # every group was done the topic had reclaimed them all.
    assert (summary["retained_live"], summary["audit_history"]) == (orders, orders)
    (joined,) = named(events, "joined")
    assert joined["to_read"] == orders
    assert (summary["published"], summary["retained"], summary["reclaimed"]) == (orders, 0, orders)

    # The age limit dropped the positions no one read; those read were reclaimed at once.
    assert summary["tracking"] == {"published": 10, "acked": 4, "reclaimed": 4, "expired": 6, "missed": 6,
                                   "retained": 0}

    with SyncClient(broker_process.addr) as lg:
        topic = lg.topic_stats("order-events")
        assert (topic.messages, topic.published, topic.reclaimed, topic.expired) == (0, orders, orders, 0)
        assert topic.groups == ("analytics", "audit", "billing", "email")
        billing = lg.group_stats("order-events", "billing").delivery
        assert (billing.acked, billing.nacked, billing.dead_lettered) == (orders, 0, 0)
        mail = lg.group_stats("order-events", "email").delivery
        assert (mail.acked, mail.nacked, mail.dead_lettered, mail.messages) == (orders - 1, len(failed), 1, 0)
        (dead,) = lg.peek("order-events.email.dlq", max=10)
        assert dead.dead_letter is not None
        assert (dead.dead_letter.queue, dead.dead_letter.reason, dead.dead_letter.attempts) == (
            "order-events/email", "max_attempts", EMAIL_MAX_ATTEMPTS)
        assert (dead.dead_letter.error or "").startswith("NoAnswer: ")
        tracking = lg.topic_stats("order-tracking")
        assert (tracking.retention, tracking.max_age_ms) == ("both", max_age_ms)
        assert (tracking.messages, tracking.reclaimed, tracking.expired) == (0, 4, 6)
        assert lg.group_stats("order-tracking", "map").missed == 6
