"""Coverage-guided fuzzing of the broker's command validation, in-process (atheris).

    python -m tools.fuzzcommands --runs 1000000       # or --max-seconds 600
    python -m tools.fuzzcommands --runs 1000 -- -print_final_stats=1   # libFuzzer flags after --
    python -m tools.fuzzcommands crash-1f2e...      # run one input again, with its traceback

Each input is the bytes a connection would send, run twice: as a connection with auth off,
and as one authenticated as ``tools.fuzzinputs.LIMITED_USER`` (auth on, the broker fuzz's users:
grants on some of the fuzzed names and not others, so ``PERMISSION_DENIED`` comes up on
every op that needs a permission). ``protocol``'s server-side ``Connection`` cuts the
bytes into frames, and they run through the broker's own live path (``broker/live.py``:
``Run`` and ``Live.execute_run`` for the batch fast path, ``Live.execute`` for the rest:
the registry's lookup, the permission check, the argument checks in schema order, the
handler), with a log that keeps the records it is given and admission that has room for
everything, as a round of the server does (``server._run_round``):

- **Time passes.** A request with an odd id ends the round before it and moves the
  broker's clock on by ``(id >> 1) % 65,536`` ms; what fell due then is logged and
  applied by ``Live.run_due`` (``BrokerState.due``: lease expiries, delays, times to
  live), as the timer loop does.
- **Held consumes.** A consume answered with a ``Wait`` is held (it counts in the
  session's waiters, at most ``max_waiters``); after each request and each passing of
  time it looks again through ``Live.retry``, as ``waiting.Holds`` does when woken, and is
  answered once it takes messages or its wait is over. At the end (the connection
  closes) the ones still held are dropped, as on EOF.
- **Subscriptions.** A ``Subscribe`` is registered as ``subscriptions.Subscription`` in
  the session (so ``unsubscribe`` finds it) and watched by ``Subscriptions.changed``
  (credit comes back as its messages leave their lease); whenever it has credit it takes
  its next push through ``Subscriptions._take`` and ``Live.push`` (one ``Lease``, or a
  ``Take`` with auto-ack). One whose queue is deleted ends; at the end those left
  release what they hold (``Live.release``), as when a connection closes.

Every record the live path appends is kept; at the end they are replayed into a second
state (``records.fold_records``, ``BrokerState.apply_items``), as recovery does.

A finding (libFuzzer stops and writes the input to ``crash-*``) is any exception other
than a ``ProtocolError`` (which would escape the live path), an ``INTERNAL_ERROR`` reply
(the handler's exception behind it is raised), or the live and replayed states differing
(compared by their snapshot records, ``BrokerState.export_records``).

The state each input starts from is made fresh: queues ``fz`` (two messages, one of them
leased), ``dl`` and ``fzt/g`` (topic ``fzt``, group ``g``). atheris instruments
``protocol`` and ``broker`` as they are imported (the branches taken and the operands
of comparisons guide libFuzzer's byte mutations); the seed corpus is ``SCENARIOS``
(held consumes, subscriptions, time passing) and hypothesis-drawn runs of frames of
every op (``tools.fuzzinputs.frame_runs``), and a libFuzzer dictionary holds the op and
argument names, the fuzzed names and the enumerated values as msgpack strings.

The test suite runs 1,000 inputs under atheris, the scenarios, and 100 hypothesis runs
of frames (after a scenario) through the same target (tests/e2e/test_fuzz.py); the long
run is in docs/operations.md ("Fuzzing").
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

#: When every input starts (ms since the epoch): leases and delays are relative to it.
NOW_MS = 1_700_000_000_000
#: The requests that make the state each input starts from.
SETUP: tuple[tuple[str, dict[str, Any]], ...] = (
    ("queue_create", {"queue": "dl"}),
    ("queue_create", {"queue": "fz", "dead_letter": "dl"}),
    ("topic_create", {"topic": "fzt"}),
    ("group_create", {"topic": "fzt", "group": "g"}),
    ("publish", {"queue": "fz", "messages": [[b"a"], [b"b", b"k"]]}),
    ("consume", {"queue": "fz", "max": 1}),
    ("topic_publish", {"topic": "fzt", "messages": [[b"t"], [b"u", None, None, b"fz-1"]]}),
)


class _Log:
    """The write-ahead log as the live path uses it (``append``, ``appended_lsn``,
    ``failed``): it keeps each record's type and payload (``decode``: the WAL's
    ``decode_record``), for replay."""

    failed = False
    failure = None

    def __init__(self, decode: Callable[[bytes], tuple[int, bytes]]) -> None:
        self.decode = decode
        self.types = bytearray()
        self.payloads: list[bytes] = []
        self.appended_lsn = 0

    def append(self, record: bytes) -> int:
        rtype, payload = self.decode(record)
        self.types.append(rtype)
        self.payloads.append(payload)
        self.appended_lsn += len(record)
        return self.appended_lsn


class _Room:
    """Admission with room for everything (the disk is not what is fuzzed)."""

    def admit(self, *args: Any) -> None:
        pass

    def flushed(self) -> None:
        pass


class _Clock:
    """The broker's clock, moved by the input (``now_ms``)."""

    def __init__(self, now_ms: int) -> None:
        self.ms = now_ms

    def now_ms(self) -> int:
        return self.ms


#: Runs of requests that random frames seldom make: held consumes answered by a publish
#: or at the end of their wait, subscriptions (credit returned by acks, unsubscribed, of
#: a group, auto-acked, of a queue deleted under them, open when the connection closes),
#: leases running out, delays and times to live. Seeds of the corpus, and the start of
#: the hypothesis runs of the test suite. An odd id lets (id >> 1) % 65,536 ms pass.
SCENARIOS: tuple[tuple[tuple[int, str, dict[str, Any]], ...], ...] = (
    ((2, "consume", {"queue": "dl", "wait_ms": 5000}), (4, "publish", {"queue": "dl", "messages": [[b"x"]]}),
     (6, "ping", {})),
    ((2, "consume", {"queue": "dl", "wait_ms": 1000}), (20001, "ping", {})),
    ((2, "subscribe", {"queue": "fz", "credit": 1}), (4, "publish", {"queue": "fz", "messages": [[b"x"], [b"y"]]}),
     (6, "ack", {"queue": "fz", "ids": [2]}), (8, "unsubscribe", {"subscription": 1}), (10, "ping", {})),
    ((2, "subscribe", {"queue": "fzt/g", "credit": 5, "auto_ack": True}),
     (4, "topic_publish", {"topic": "fzt", "messages": [[b"t2"]]}), (6, "ping", {})),
    ((2, "subscribe", {"queues": ["fz", "dl"], "credit": 3}), (4, "consume", {"prefix": "d", "wait_ms": 100}),
     (6, "publish", {"queue": "dl", "messages": [[b"p"]]}), (201, "ping", {})),
    ((2, "consume", {"queue": "fz", "max": 5, "visibility_ms": 1000}),
     (4, "publish", {"queue": "fz", "messages": [[b"d", None, 0, 500], [b"t", None, 0, None, 1500]]}),
     (3001, "ping", {}), (131071, "ping", {})),
    ((2, "subscribe", {"queue": "dl"}), (4, "publish", {"queue": "dl", "messages": [[b"q"]]}),
     (7, "queue_delete", {"queue": "dl"}), (8, "ping", {})),
    ((2, "subscribe", {"queue": "fz", "credit": 2}), (4, "nack", {"queue": "fz", "ids": [1, 2], "delay_ms": 1000}),
     (2001, "ping", {})),
    ((2, "subscribe", {"queue": "fz", "credit": 5}), (4, "ping", {})),
)


def scenario_bytes(scenario: tuple[tuple[int, str, dict[str, Any]], ...]) -> bytes:
    """A scenario's requests as one connection sends them."""
    return b"".join(_framed(msgpack.packb([0, rid, op, args], use_bin_type=True)) for rid, op, args in scenario)


def _framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def build_target(stats: Counter[str] | None = None) -> Callable[[bytes], None]:
    """Import ``protocol`` and ``broker`` (instrumented when atheris is active) and return
    the function that runs one input; see the module docs. ``stats`` (if given) counts
    what the inputs reached: ``held`` consumes and those ``answered``, ``subscriptions``,
    ``pushes`` that carried messages, ``timers`` (runs of ``Live.run_due`` that changed
    something), ``released`` (subscriptions that gave back messages at the close), and
    the errors by code (``PERMISSION_DENIED``, ``INVALID_ARGUMENT``, ...)."""
    counts: Counter[str] = stats if stats is not None else Counter()
    from broker.auth import Authenticator
    from broker.commands import Context, Session, Subscribe, dispatch
    from broker.config import BrokerConfig
    from broker.live import Live, Run, RoundOut
    from broker.records import fold_records
    from broker.state import BrokerState
    from broker.subscriptions import Subscription, Subscriptions
    from broker.waiting import Holds
    from broker.wal import decode_record
    from protocol import NEED_DATA, Connection, Encoder, ErrorCode, ProtocolError, Request

    from tools import fuzz, fuzzinputs

    config = BrokerConfig()
    encoder = Encoder()
    authenticator = Authenticator(Path("users.toml"), clock=lambda: 0.0)
    authenticator.users = fuzz.run_users()

    def session(user: str) -> Any:
        return Session(peer="127.0.0.1:1", ready=True, version=1, client="fuzz", client_max_frame=16 * 2**20,
                       auth=authenticator if user else None, user=user)

    setup = BrokerState()
    ctx = Context(setup, config, NOW_MS, "127.0.0.1:7878")
    base: list[Any] = []  # the setup's mutations
    for op, args in SETUP:
        for m in dispatch(session(""), op, args, ctx).mutations:
            base.append(m)
            setup.apply(m)

    def fresh() -> Any:
        state = BrokerState()
        for m in base:
            state.apply(m)
        return state

    class Replies(RoundOut):
        """A round's replies; an ``INTERNAL_ERROR`` is the finding: the fault behind it
        (the handler's exception, which the live path logs and hides) is raised."""

        __slots__ = ()

        def error(self, exc: ProtocolError) -> None:
            if exc.code == ErrorCode.INTERNAL_ERROR:
                raise exc.__context__ or exc
            counts[exc.code.name] += 1
            super().error(exc)

    def one_session(data: bytes, user: str) -> None:
        """``data`` as one connection of ``user`` ("": auth off) sends it (the module docs)."""
        sess = session(user)
        clock = _Clock(NOW_MS)
        log = _Log(decode_record)
        woken: list[bool] = [False]
        live = Live(fresh(), log, config, clock, _Room(), None,  # type: ignore[arg-type]
                    lambda queues: woken.__setitem__(0, True), lambda: None)
        live.addr = "127.0.0.1:7878"
        pushing = Subscriptions(live, Holds(), None)  # type: ignore[arg-type]
        subs: list[Any] = []
        holds: list[tuple[Request, int]] = []  # held consumes, and when each one's wait ends
        out = Replies(encoder)
        conn = Connection("server", max_frame=1 << 20, encoder=encoder)
        conn.receive_data(data)
        run = Run()
        ctx = live.context()

        def look() -> None:
            """What the broker's tasks do once messages are ready or time passed: held
            consumes look again (``Live.retry``; answered once they take messages or
            their wait is over), subscriptions with credit push (``Live.push``)."""
            woken[0] = False
            for held in list(holds):
                req, until = held
                if live.retry(sess, req, out, final=clock.ms >= until) is not None:
                    holds.remove(held)
                    sess.waiters -= 1
                    counts["answered"] += 1
            for sub in list(subs):
                if sub.stopped:  # unsubscribed: what it pushed stays leased
                    pushing._forget(sub)
                    subs.remove(sub)
                    continue
                room = sub.credit - sub.unacked
                if room <= 0:
                    continue
                try:
                    taken = pushing._take(sess, sub, room, [])
                except ProtocolError as exc:
                    if exc.code == ErrorCode.INTERNAL_ERROR:
                        raise
                    continue
                if taken is None:  # its queue is gone: it ends, releasing what it holds
                    sess.subscriptions.pop(sub.sid, None)
                    end(sub)
                    continue
                queue, rows, ids = taken
                counts["pushes"] += bool(rows)
                if rows and not sub.auto_ack:
                    if queue not in sub.unacked_ids:
                        sub.unacked_ids[queue] = set()
                        if sub.group is not None:
                            live.watched.setdefault(queue, []).append(sub)
                    sub.unacked_ids[queue].update(ids)

        def end(sub: Any) -> None:
            pushing._forget(sub)
            subs.remove(sub)
            if sub.release:
                for queue, unacked in sub.unacked_ids.items():
                    if unacked:
                        live.release(queue, sorted(unacked), delivered=True)
                        counts["released"] += 1

        while True:
            try:
                frame = conn.next_frame()
            except ProtocolError as exc:
                if exc.code == ErrorCode.INTERNAL_ERROR:
                    raise
                live.execute_run(run, sess, ctx, out)  # the run before a bad frame first
                if exc.fatal:
                    break
                continue
            if frame is NEED_DATA:
                break
            if frame.id & 1:  # the round ends, and time passes
                live.execute_run(run, sess, ctx, out)
                clock.ms += (frame.id >> 1) & 0xFFFF
                counts["timers"] += live.run_due()
                look()
                ctx = live.context()
            if run.take(sess, frame, ctx):
                continue
            if run.frames:
                live.execute_run(run, sess, ctx, out)
                if run.take(sess, frame, ctx):
                    continue
            wait = live.execute(sess, frame, ctx, out)
            if sess.auth_delay or sess.close_after:  # nothing after it is read
                break
            if isinstance(wait, Subscribe):
                counts["subscriptions"] += 1
                sub = Subscription(wait)
                sess.subscriptions[sub.sid] = sub
                subs.append(sub)
                if sub.group is None:
                    live.watched.setdefault(sub.queue, []).append(sub)
                woken[0] = True
            elif wait is not None:
                counts["held"] += 1
                sess.waiters += 1
                holds.append((frame, clock.ms + wait.wait_ms))
            if subs or woken[0]:  # (a subscription may have had credit back)
                look()
        live.execute_run(run, sess, ctx, out)
        if subs or woken[0]:
            look()
        # The connection closes: held consumes are dropped, subscriptions release what they hold.
        for sub in list(subs):
            end(sub)
        live.durable_lsn()  # the pending run of folded publishes is written out
        replay = fresh()
        replay.apply_items(fold_records(bytes(log.types), log.payloads))
        if list(live.state.export_records()) != list(replay.export_records()):
            raise AssertionError(f"the state applied live differs from the state replayed from its records "
                                 f"({'as ' + user if user else 'auth off'})")

    def one(data: bytes) -> None:
        one_session(data, "")
        one_session(data, fuzzinputs.LIMITED_USER)

    return one


# -- seeds and the dictionary -------------------------------------------------------------

def write_seeds(corpus: Path, dictionary: Path, examples: int = 300, seed: int = 0) -> int:
    """Write ``examples`` hypothesis-generated inputs (runs of frames) and the scenarios
    into ``corpus``, and the libFuzzer dictionary to ``dictionary``; returns how many
    files were written."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as with_seed

    from tools import fuzzinputs

    corpus.mkdir(parents=True, exist_ok=True)
    written = 0

    @with_seed(seed)
    @settings(max_examples=examples, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzzinputs.frame_runs)
    def one(run: list[Any]) -> None:
        nonlocal written
        (corpus / f"seed-{written:05d}").write_bytes(b"".join(x.data for x in run))
        written += 1

    one()
    for i, scenario in enumerate(SCENARIOS):
        (corpus / f"scenario-{i:02d}").write_bytes(scenario_bytes(scenario))
        written += 1
    words = {*fuzzinputs.OP_ARGS, *(n for names in fuzzinputs.OP_ARGS.values() for n in names), *fuzzinputs.NAMES,
             "earliest", "latest", "fifo", "lifo", "priority", "round_robin", "drop", "dead_letter",
             "reject", "fixed", "exponential", "ready", "leased", "delayed", "SCRAM-SHA-256", "TOKEN"}
    lines = []
    for i, word in enumerate(sorted(words)):
        packed = msgpack.packb(word)
        lines.append(f'w{i}="' + "".join(f"\\x{b:02x}" for b in packed) + '"')
    dictionary.write_text("\n".join(lines) + "\n")
    return written


# -- command line ---------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Seed a corpus, then run atheris on the target in a child process (libFuzzer ends
    its process when done); returns its exit status (0: nothing found)."""
    args = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, rest = args[:at], args[at + 1:]
    p = argparse.ArgumentParser(prog="python -m tools.fuzzcommands", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=100_000, help="inputs to run (default 100,000)")
    p.add_argument("--max-seconds", type=int, default=0, help="stop after this many seconds (0: no limit)")
    p.add_argument("--corpus", type=Path, default=None,
                   help="corpus directory, kept between runs (default: a temporary one, seeded)")
    p.add_argument("--seed", type=int, default=1, help="seed of libFuzzer and of the seed corpus (1)")
    p.add_argument("--seeds", type=int, default=200,
                   help="hypothesis examples (runs of frames) in a new corpus (200)")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("inputs", nargs="*", type=Path,
                   help="instead of fuzzing, run these inputs once each (a crash-* file, to see its traceback)")
    ns = p.parse_args(args)
    if ns.inputs:
        target = build_target()
        for path in ns.inputs:
            target(path.read_bytes())
            print(f"{path}: no finding")
        return 0
    if ns.child is not None:
        return _fuzz(ns.child, ns.corpus, [f"-runs={ns.runs}", f"-seed={ns.seed}", *(
            [f"-max_total_time={ns.max_seconds}"] if ns.max_seconds else []), *rest])
    with tempfile.TemporaryDirectory(prefix="lockgate-fuzzcommands-") as tmp:
        work = Path(tmp)
        corpus = ns.corpus or work / "corpus"
        seeds = corpus if not corpus.exists() or not any(corpus.iterdir()) else work / "unused"
        write_seeds(seeds, work / "ops.dict", examples=ns.seeds if seeds == corpus else 1, seed=ns.seed)
        child = [sys.executable, "-m", "tools.fuzzcommands", "--child", str(work), "--corpus", str(corpus),
                 "--runs", str(ns.runs), "--max-seconds", str(ns.max_seconds), "--seed", str(ns.seed),
                 "--", *rest]
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        return subprocess.run(child, env=env, check=False).returncode


def _fuzz(work: Path, corpus: Path, flags: list[str]) -> int:
    """In the child: import protocol and broker instrumented, then hand over to libFuzzer
    (an input that fails is written to ``crash-*`` in the current directory)."""
    import atheris  # type: ignore[import-not-found]

    # The broker's log lines (a permission denied, an internal error) would go to stderr
    # by logging's last resort; a finding shows its own traceback.
    logging.getLogger("lockgate").addHandler(logging.NullHandler())
    with atheris.instrument_imports(include=["protocol", "broker"]):
        target = build_target()
    atheris.Setup([sys.argv[0], *flags, f"-dict={work / 'ops.dict'}", "-max_len=4096",
                   f"-artifact_prefix={Path.cwd()}/", str(corpus)], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
