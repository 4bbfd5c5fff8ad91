"""Coverage-guided fuzzing of the broker's command validation, in-process (atheris).

    python -m tools.fuzzcommands --runs 1000000       # or --max-seconds 600
    python -m tools.fuzzcommands --runs 1000 -- -print_final_stats=1   # libFuzzer flags after --
    python -m tools.fuzzcommands crash-1f2e...      # run one input again, with its traceback

Each input is the bytes a connection would send. ``protocol``'s server-side
``Connection`` cuts them into frames; each request then runs as the broker's live path
runs it (``broker/live.py``), without the log and without sockets: a run of requests
that the batch fast path takes (``live.Run``, e.g. single-message publishes) is built as
one change; any other request goes through ``commands.dispatch`` (the registry's lookup,
the argument checks in schema order, the handler). Every mutation a request yields is
encoded to its WAL record (``records.encode``) and applied to the state; the record,
decoded again (``records.decode``), is applied to a second state, as replay would.

A finding (libFuzzer stops and writes the input to ``crash-*``) is any exception other
than a ``ProtocolError`` (which the broker would answer with ``INTERNAL_ERROR``, or which
would escape the live path while logging), a ``ProtocolError`` with ``INTERNAL_ERROR``,
or the two states differing afterwards (compared by their snapshot records,
``BrokerState.export_records``).

The state each input starts from is made fresh: queues ``fz`` (two messages, one of them
leased), ``dl`` and ``fzt/g`` (topic ``fzt``, group ``g``). atheris instruments
``protocol`` and ``broker`` as they are imported (the branches taken and the operands
of comparisons guide libFuzzer's byte mutations); the seed corpus is hypothesis-drawn
runs of frames of every op (``tools.fuzz.frame_runs``), and a libFuzzer dictionary
holds the op and argument names, the fuzzed names and the enumerated values as msgpack
strings.

The test suite runs 1,000 inputs under atheris and 100 hypothesis runs of frames
through the same target (tests/e2e/test_fuzz.py); the long run is in docs/operations.md
("Fuzzing").
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
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
    ("topic_publish", {"topic": "fzt", "messages": [[b"t"]]}),
)


def build_target() -> Callable[[bytes], None]:
    """Import ``protocol`` and ``broker`` (instrumented when atheris is active) and return
    the function that runs one input; see the module docs."""
    from broker.commands import Context, Session, dispatch
    from broker.config import BrokerConfig
    from broker.live import Run
    from broker.records import decode, encode
    from broker.state import BrokerState
    from broker.wal import decode_record
    from protocol import NEED_DATA, Connection, Encoder, ErrorCode, ProtocolError

    config = BrokerConfig()
    encoder = Encoder()

    def session() -> Any:
        return Session(peer="127.0.0.1:1", ready=True, version=1, client="fuzz", client_max_frame=16 * 2**20)

    setup = BrokerState()
    ctx = Context(setup, config, NOW_MS, "127.0.0.1:7878")
    base: list[Any] = []  # the setup's mutations
    for op, args in SETUP:
        for m in dispatch(session(), op, args, ctx).mutations:
            base.append(m)
            setup.apply(m)

    def fresh() -> Any:
        state = BrokerState()
        for m in base:
            state.apply(m)
        return state

    def one(data: bytes) -> None:
        live, replay = fresh(), fresh()
        ctx = Context(live, config, NOW_MS, "127.0.0.1:7878")
        sess = session()
        conn = Connection("server", max_frame=1 << 20, encoder=encoder)
        conn.receive_data(data)
        run = Run()

        def commit(mutations: Any) -> None:
            for m in mutations:
                record = encode(m)
                live.apply(m)
                replay.apply(decode(*decode_record(record)))

        def flush() -> None:
            if run.frames and run.command is not None and run.command.batch is not None:
                mutations, _ = run.command.batch.build(run.key, run.items, ctx)
                commit(mutations)
            run.clear()

        while True:
            try:
                frame = conn.next_frame()
            except ProtocolError as exc:
                if exc.code == ErrorCode.INTERNAL_ERROR:
                    raise
                flush()  # the run before a bad frame is built first, as the live path does
                if exc.fatal:
                    break
                continue
            if frame is NEED_DATA:
                break
            if run.take(sess, frame, ctx):
                continue
            if run.frames:
                flush()
                if run.take(sess, frame, ctx):
                    continue
            try:
                outcome = dispatch(sess, frame.op, frame.args, ctx)
            except ProtocolError as exc:
                if exc.code == ErrorCode.INTERNAL_ERROR:
                    raise
                continue
            commit(outcome.mutations)
        flush()
        if list(live.export_records()) != list(replay.export_records()):
            raise AssertionError("the state applied live differs from the state replayed from its records")

    return one


# -- seeds and the dictionary -------------------------------------------------------------

def write_seeds(corpus: Path, dictionary: Path, examples: int = 300, seed: int = 0) -> int:
    """Write ``examples`` hypothesis-generated inputs (runs of frames) into ``corpus`` and
    the libFuzzer dictionary to ``dictionary``; returns how many files were written."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as with_seed

    from tools import fuzz

    corpus.mkdir(parents=True, exist_ok=True)
    written = 0

    @with_seed(seed)
    @settings(max_examples=examples, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzz.frame_runs)
    def one(run: list[Any]) -> None:
        nonlocal written
        (corpus / f"seed-{written:05d}").write_bytes(b"".join(x.data for x in run))
        written += 1

    one()
    words = {*fuzz.OP_ARGS, *(n for names in fuzz.OP_ARGS.values() for n in names), *fuzz.NAMES,
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

    with atheris.instrument_imports(include=["protocol", "broker"]):
        target = build_target()
    atheris.Setup([sys.argv[0], *flags, f"-dict={work / 'ops.dict'}", "-max_len=4096",
                   f"-artifact_prefix={Path.cwd()}/", str(corpus)], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
