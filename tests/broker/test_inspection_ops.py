"""``queue_purge``, ``peek`` and ``message_status`` (SPEC.md §5.11-5.13) on the state.

Requests go through ``broker.commands.dispatch`` and their mutations through the real
appliers, as on the live path; restarts go through the WAL codec and snapshots.
"""
from __future__ import annotations

from typing import Any

import pytest

from broker.commands import Context, Session, dispatch
from broker.config import BrokerConfig
from broker.mutations import Mutation, Purge
from broker.records import decode, encode
from broker.state import BrokerState
from broker.wal.record import RECORD_HEADER_SIZE
from protocol import ErrorCode, ProtocolError

CFG = BrokerConfig(max_batch=8)
T0 = 1_700_000_000_000


class World:
    """A state, its log of mutations, and a clock."""

    def __init__(self) -> None:
        self.state = BrokerState()
        self.log: list[Mutation] = []
        self.now = T0
        self.session = Session(ready=True, client_max_frame=16 * 2**20)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        outcome = dispatch(self.session, op, args, Context(self.state, CFG, self.now, "a:1"))
        for m in outcome.mutations:
            self.log.append(m)
            self.state.apply(m)
        assert outcome.result is not None
        return outcome.result

    def refused(self, op: str, code: ErrorCode, field: str | None = None, **args: Any) -> ProtocolError:
        before = self.state.snapshot()
        with pytest.raises(ProtocolError) as info:
            self.call(op, **args)
        assert info.value.code == code, info.value
        if field is not None:
            assert info.value.details["field"] == field
        assert self.state.snapshot() == before
        return info.value

    def advance(self, ms: int) -> None:
        self.now += ms
        for m in self.state.due(self.now):
            self.log.append(m)
            self.state.apply(m)

    def replayed(self) -> BrokerState:
        """The state rebuilt from the log's records."""
        state = BrokerState()
        for m in self.log:
            record = encode(m)
            state.apply_record(m.TYPE, record[RECORD_HEADER_SIZE:])
        return state

    def restored(self) -> BrokerState:
        """The state rebuilt from a snapshot of it."""
        return BrokerState.from_records(list(self.state.export_records(chunk=2)))


@pytest.fixture
def world() -> World:
    """"jobs" (max 2 attempts, dead letters to "dlq"): 1-2 ready, 3 leased, 4 delayed."""
    w = World()
    w.call("queue_create", queue="dlq")
    w.call("queue_create", queue="jobs", max_attempts=2, dead_letter="dlq", visibility_ms=1000)
    w.call("publish", queue="jobs", messages=[[b"a"], [b"b"], [b"c"]])
    w.call("consume", queue="jobs", max=1)  # leases 1
    w.call("publish", queue="jobs", messages=[[b"d", None, None, 5000]])
    w.call("nack", queue="jobs", ids=[1])  # 1 is ready again, attempt 1 spent
    w.call("consume", queue="jobs", max=1)  # leases 2 (1 went back behind 3)
    return w


def states(w: World) -> dict[int, str]:
    return {s["id"]: s["state"] for s in w.call("message_status", queue="jobs", ids=[1, 2, 3, 4])["statuses"]}


def test_fixture_layout(world: World) -> None:
    assert states(world) == {1: "ready", 2: "leased", 3: "ready", 4: "delayed"}


# -- queue_purge ---------------------------------------------------------------------------


def test_purge_drops_ready_and_delayed_and_keeps_leased(world: World) -> None:
    result = world.call("queue_purge", queue="jobs")
    assert result == {"queue": "jobs", "ready": 2, "delayed": 1, "leased": 0, "waiting": 0}
    assert states(world) == {1: "gone", 2: "leased", 3: "gone", 4: "gone"}
    stats = world.call("queue_stats", queue="jobs")
    assert (stats["ready"], stats["leased"], stats["delayed"], stats["messages"]) == (0, 1, 0, 1)
    assert stats["acked"] == 0 and stats["dead_lettered"] == 0  # a purge is neither
    assert world.state.ack_reserve == world.state.count_ack_reserve()
    assert isinstance(world.log[-1], Purge) and world.log[-1] == Purge("jobs", False, world.now)
    # an ack of a purged id reports it missing
    assert world.call("ack", queue="jobs", ids=[1, 2]) == {"acked": 1, "missing": [1]}


def test_purge_with_leased_drops_everything(world: World) -> None:
    result = world.call("queue_purge", queue="jobs", leased=True)
    assert result == {"queue": "jobs", "ready": 2, "delayed": 1, "leased": 1, "waiting": 0}
    assert world.call("queue_stats", queue="jobs")["messages"] == 0
    assert world.call("consume", queue="jobs", max=5) == {"messages": []}
    # the expired lease of a purged message changes nothing
    world.advance(60_000)
    assert world.call("queue_stats", queue="jobs")["messages"] == 0


def test_purge_of_an_empty_queue_logs_nothing(world: World) -> None:
    n = len(world.log)
    assert world.call("queue_purge", queue="dlq") == {"queue": "dlq", "ready": 0, "delayed": 0, "leased": 0, "waiting": 0}
    assert len(world.log) == n


def test_purge_replays_and_restores_to_the_same_state(world: World) -> None:
    world.call("queue_purge", queue="jobs")
    assert world.replayed().snapshot() == world.state.snapshot()
    assert world.restored().snapshot() == world.state.snapshot()
    record = encode(Purge("jobs", True))
    assert decode(Purge.TYPE, record[RECORD_HEADER_SIZE:]) == Purge("jobs", True)


@pytest.mark.parametrize("leased", [1, "yes", b"", [True]])
def test_purge_leased_must_be_a_bool(world: World, leased: Any) -> None:
    world.refused("queue_purge", ErrorCode.INVALID_ARGUMENT, "leased", queue="jobs", leased=leased)


def test_purge_checks_the_queue_first(world: World) -> None:
    world.refused("queue_purge", ErrorCode.QUEUE_NOT_FOUND, "queue", queue="nope", leased=3)
    world.refused("queue_purge", ErrorCode.INVALID_ARGUMENT, "queue", queue="bad name")


# -- peek ------------------------------------------------------------------------------------


def test_peek_lists_every_state_in_order_without_leasing(world: World) -> None:
    before = world.state.snapshot()
    result = world.call("peek", queue="jobs")
    assert world.state.snapshot() == before and len(world.log) == 7  # read only
    rows = result["messages"]
    assert result["queue"] == "jobs"
    # ready in delivery order (3 was published before 1 came back), leased, delayed
    assert [(r[0], r[5]) for r in rows] == [(3, "ready"), (1, "ready"), (2, "leased"), (4, "delayed")]
    by_id = {r[0]: r for r in rows}
    assert by_id[1] == [1, b"a", 1, None, 0, "ready", 0, None, T0]  # attempts so far, not the next one
    assert by_id[2][2] == 1 and by_id[2][6] == world.now + 1000  # leased until
    assert by_id[4][2] == 0 and by_id[4][6] == T0 + 5000  # delayed until
    # the next consume still takes what peek showed first
    assert world.call("consume", queue="jobs")["messages"][0][0] == 3


@pytest.mark.parametrize(("state", "ids"), [("ready", [3, 1]), ("leased", [2]), ("delayed", [4])])
def test_peek_filters_by_state(world: World, state: str, ids: list[int]) -> None:
    rows = world.call("peek", queue="jobs", state=state)["messages"]
    assert [r[0] for r in rows] == ids and {r[5] for r in rows} == {state}


def test_peek_max_and_reply_budget(world: World) -> None:
    assert [r[0] for r in world.call("peek", queue="jobs", max=2)["messages"]] == [3, 1]
    small = Session(ready=True, client_max_frame=1024 + 40)  # room for one message
    outcome = dispatch(small, "peek", {"queue": "jobs"}, Context(world.state, CFG, world.now, "a:1"))
    assert outcome.result is not None and len(outcome.result["messages"]) == 1


def test_peek_the_dead_letter_queue(world: World) -> None:
    world.advance(1000)  # 2's lease expires (attempt 1 of 2): ready again
    world.call("consume", queue="jobs", max=3)  # 3, 1, 2 leased; 1 and 2 on attempt 2
    world.call("nack", queue="jobs", ids=[1, 2])  # out of attempts: dead-lettered
    result = world.call("peek", queue="jobs", dead_letter=True)
    assert result["queue"] == "dlq"
    assert [(r[0], r[1], r[5]) for r in result["messages"]] == [(1, b"a", "ready"), (2, b"b", "ready")]


def test_peek_refusals(world: World) -> None:
    world.refused("peek", ErrorCode.INVALID_ARGUMENT, "max", queue="jobs", max=0)
    world.refused("peek", ErrorCode.INVALID_ARGUMENT, "max", queue="jobs", max=CFG.max_batch + 1)
    world.refused("peek", ErrorCode.INVALID_ARGUMENT, "state", queue="jobs", state="acked")
    world.refused("peek", ErrorCode.INVALID_ARGUMENT, "state", queue="jobs", state=b"ready")
    world.refused("peek", ErrorCode.INVALID_ARGUMENT, "dead_letter", queue="jobs", dead_letter=1)
    world.refused("peek", ErrorCode.INVALID_ARGUMENT, "dead_letter", queue="dlq", dead_letter=True)
    world.call("queue_delete", queue="dlq")
    err = world.refused("peek", ErrorCode.QUEUE_NOT_FOUND, "dead_letter", queue="jobs", dead_letter=True)
    assert err.details["queue"] == "dlq"


# -- message_status ----------------------------------------------------------------------------


def test_status_of_each_state(world: World) -> None:
    world.call("ack", queue="jobs", ids=[3])
    statuses = world.call("message_status", queue="jobs", ids=[2, 4, 3, 0, 99, 2])["statuses"]
    assert statuses == [
        {"id": 2, "state": "leased", "queue": "jobs", "attempts": 1, "until_ms": T0 + 1000, "expires_at_ms": 0,
         "published_at": T0},
        {"id": 4, "state": "delayed", "queue": "jobs", "attempts": 0, "until_ms": T0 + 5000, "expires_at_ms": 0,
         "published_at": T0},
        {"id": 3, "state": "gone", "queue": "jobs", "attempts": 0, "until_ms": 0, "expires_at_ms": 0,
         "published_at": 0},
        {"id": 0, "state": "unknown", "queue": "jobs", "attempts": 0, "until_ms": 0, "expires_at_ms": 0,
         "published_at": 0},
        {"id": 99, "state": "unknown", "queue": "jobs", "attempts": 0, "until_ms": 0, "expires_at_ms": 0,
         "published_at": 0},
        {"id": 2, "state": "leased", "queue": "jobs", "attempts": 1, "until_ms": T0 + 1000, "expires_at_ms": 0,
         "published_at": T0},
    ]


def dead_letter_two(world: World) -> None:
    """1 and 2 run out of attempts and go to "dlq" as its ids 1 and 2."""
    world.advance(1000)
    world.call("consume", queue="jobs", max=3)
    world.call("nack", queue="jobs", ids=[2, 1])


def test_status_follows_a_dead_letter(world: World) -> None:
    dead_letter_two(world)
    statuses = world.call("message_status", queue="jobs", ids=[1, 2, 3])["statuses"]
    assert statuses[0] == {"id": 1, "state": "dead_lettered", "queue": "dlq", "attempts": 0,
                           "until_ms": 0, "expires_at_ms": 0, "dead_letter_id": 2, "reason": "max_attempts",
                           "error": None, "dead_lettered_at_ms": world.now, "published_at": T0}
    assert world.now > T0  # dead-lettered later: it keeps its first publish time
    assert statuses[1]["dead_letter_id"] == 1 and statuses[1]["queue"] == "dlq"
    assert statuses[2]["state"] == "leased"
    # delivered from the dead-letter queue: its attempts there
    world.call("consume", queue="dlq", max=1)
    assert world.call("message_status", queue="jobs", ids=[2])["statuses"][0]["attempts"] == 1
    # acked in the dead-letter queue: gone
    world.call("ack", queue="dlq", ids=[1, 2])
    assert [s["state"] for s in world.call("message_status", queue="jobs", ids=[1, 2])["statuses"]] \
        == ["gone", "gone"]


def test_dead_letter_sources_survive_replay_and_snapshots(world: World) -> None:
    dead_letter_two(world)
    for rebuilt in (world.replayed(), world.restored()):
        assert rebuilt.snapshot() == world.state.snapshot()
        assert rebuilt.queues["dlq"].dead_letter_of("jobs", 1) == 2


def test_deleting_the_source_forgets_its_dead_letters(world: World) -> None:
    dead_letter_two(world)
    world.call("queue_delete", queue="jobs")
    world.call("queue_create", queue="jobs", max_attempts=2, dead_letter="dlq", visibility_ms=1000)
    assert world.state.queues["dlq"].sources == {}
    assert world.call("message_status", queue="jobs", ids=[1])["statuses"][0]["state"] == "unknown"


def test_status_refusals(world: World) -> None:
    world.refused("message_status", ErrorCode.INVALID_ARGUMENT, "ids", queue="jobs", ids=[])
    world.refused("message_status", ErrorCode.INVALID_ARGUMENT, "ids", queue="jobs", ids=[-1])
    world.refused("message_status", ErrorCode.INVALID_ARGUMENT, "ids", queue="jobs", ids=[True])
    err = world.refused("message_status", ErrorCode.LIMIT_EXCEEDED, queue="jobs", ids=[1] * 9)
    assert err.details == {"field": "ids", "limit": CFG.max_batch}
    world.refused("message_status", ErrorCode.QUEUE_NOT_FOUND, "queue", queue="nope", ids=[1])
