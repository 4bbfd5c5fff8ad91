"""examples/taskflow against a real broker process (127.0.0.1, port 0, a temporary data dir).

The program runs as a child process; its events (one line each), its summary line and
the broker's own counters are checked against the DAG it submits (:mod:`examples.taskflow.dag`).
"""
from __future__ import annotations

from client import SyncClient
from examples.taskflow.dag import FAULTS, QUEUES, RENDER, make_dag
from examples.taskflow.service import DEAD_LETTER, MAX_ATTEMPTS

from ..broker_process import BrokerProcess
from .programs import Event, named, run

PROGRAM = "examples.taskflow"

#: Status changes a task may show (the tracker polls, so it may miss states between).
ONWARD = {
    "waiting": {"waiting", "ready", "leased", "delayed", "gone", "dead_lettered"},  # waiting on fewer
    "ready": {"leased", "delayed", "gone", "dead_lettered"},
    "leased": {"ready", "delayed", "gone", "dead_lettered"},
    "delayed": {"ready", "leased", "gone", "dead_lettered"},
    "gone": set(),
    "dead_lettered": set(),
}


def of_task(events: list[Event], name: str, task: str) -> list[Event]:
    return [e for e in named(events, name) if e["task"] == task]


def test_a_dag_over_four_kinds_with_a_queue_group_status_and_dependency_dead_letters(
        broker_process: BrokerProcess) -> None:
    dag = {t.name: t for t in make_dag()}
    children = {name: [t.name for t in dag.values() if name in t.after] for name in dag}
    # What the plan says must happen: the tasks that fail, and every task below them.
    failed = {"fetch:initech": "rejected", "render:globex:2": "max_attempts"}
    assert set(failed) == {n for n, f in FAULTS.items() if f != "once"}
    doomed: set[str] = set()
    todo = [c for f in failed for c in children[f]]
    while todo:
        name = todo.pop()
        if name not in doomed:
            doomed.add(name)
            todo += children[name]
    done = set(dag) - set(failed) - doomed
    assert len(dag) == 27 and len(done) == 20 and len(doomed) == 5

    events = run(PROGRAM, broker_process.addr, "--workers", "3")
    assert [e["name"] for e in named(events, "step")] == ["submit", "work", "report"]
    assert events[-1].name == "summary"
    summary = events[-1]
    names = [e.name for e in events]
    work_starts = names.index("step") + names[names.index("step") + 1:].index("step") + 1

    # The summary: every task that could run ran once; the failed ones were rejected or
    # ran out of attempts; the broker dead-lettered everything below them.
    assert (summary["tasks"], summary["done"], summary["runs"], summary["rejected"]) == (27, 20, 20, 1)
    assert summary["dead_lettered"] == {"dependency": 5, "max_attempts": 1, "rejected": 1}
    assert summary["final"] == {"dead_lettered": 7, "gone": 20}
    # acme's page 3 once, globex's page 2 twice before its last attempt.
    assert summary["retried"] == 1 + (MAX_ATTEMPTS - 1)
    assert summary["deliveries"] == {"tasks.fetch": 4, "tasks.render": 13 + 1 + 2, "tasks.thumbs": 3,
                                     "tasks.assemble": 2}
    assert {e["task"] for e in named(events, "done")} == done

    # Dependencies: a task started only after each of its parents was done; a task
    # below a failed one never started.
    position = {}
    for i, e in enumerate(events):
        if e.name == "done":
            position[e["task"]] = i
    for i, e in enumerate(events):
        if e.name == "start":
            task = dag[e["task"]]
            assert all(position.get(p, len(events)) < i for p in task.after), task.name
    assert not {e["task"] for e in named(events, "start")} & doomed

    # Status by id. Right after the submit: the fetches ready, every other task waiting
    # on exactly its parents.
    initial = {e["task"]: e for e in events[:work_starts] if e.name == "status"}
    assert set(initial) == set(dag)
    for name, e in initial.items():
        if dag[name].after:
            assert e["state"] == "waiting" and sorted(e["waits_on"]) == sorted(dag[name].after), name
        else:
            assert e["state"] == "ready" and "waits_on" not in e.fields, name
    # Then only moves forward, and ends gone (done) or dead-lettered with the reason.
    for name in dag:
        states = [e["state"] for e in of_task(events, "status", name)]
        assert all(b in ONWARD[a] for a, b in zip(states, states[1:])), (name, states)
        waits = [set(e["waits_on"]) for e in of_task(events, "status", name) if e["state"] == "waiting"]
        assert all(b < a for a, b in zip(waits, waits[1:])), (name, waits)  # each ack releases one
        last = of_task(events, "status", name)[-1]
        if name in done:
            assert last["state"] == "gone", name
        else:
            assert last["state"] == "dead_lettered", name
            assert last["reason"] == failed.get(name, "dependency"), name

    # The dead-letter queue shows each failed task and each task dead-lettered because
    # of a parent that did not succeed, naming that parent.
    dead = {e["task"]: e for e in named(events, "dead-letter")}
    assert set(dead) == set(failed) | doomed
    source_of = {name: e["source"] for name, e in dead.items()}
    for name, e in dead.items():
        assert e["source"].split("#")[0] == dag[name].queue
        if name in failed:
            assert e["reason"] == failed[name]
        else:
            assert e["reason"] == "dependency" and e["attempts"] == 0
            parent = e["error"].removeprefix("dependency ").removesuffix(" was not acked")
            assert parent in {source_of[p] for p in dag[name].after if p in source_of}, (name, e["error"])
    assert dead["render:globex:2"]["attempts"] == MAX_ATTEMPTS
    assert dead["fetch:initech"]["error"].startswith("403 forbidden")

    # Round robin by tenant: umbrella's pages, ready later, were not left behind all of
    # acme's eight.
    render_starts = [e["task"] for e in named(events, "start") if dag[e["task"]].queue == RENDER]
    last_acme = max(i for i, t in enumerate(render_starts) if t.startswith("render:acme:"))
    assert render_starts.index("render:umbrella:1") < last_acme

    with SyncClient(broker_process.addr) as lg:
        for queue, kind in QUEUES.items():
            st = lg.queue_stats(queue)
            assert (st.kind, st.messages, st.waiting) == (kind, 0, 0), queue
        assert sum(lg.queue_stats(q).dead_lettered for q in QUEUES) == 7
        assert lg.queue_stats(DEAD_LETTER).messages == 7
