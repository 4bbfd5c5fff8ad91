"""Coverage-guided fuzzing of protocol's sans-IO codec, in-process (atheris):
``python -m tools.fuzz codec --runs 100000``. Each input is the bytes a client would
send to the server's ``Connection``; only a ``ProtocolError`` may come out. The seed
corpus is made for each run: SPEC.md §11's byte-exact frames alone and per connection,
and hypothesis-drawn frames and raw inputs (``--corpus DIR`` keeps one between runs).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgpack

from tools.fuzzinputs import decode_body, hypothesis_inputs
from tools.procs import ROOT


# -- coverage-guided: the codec in-process -----------------------------------------------

def codec_target(data: bytes, proto: Any = None) -> None:
    """One input: bytes to the server's sans-IO connection (``proto``: the ``protocol``
    package to use). Only ``ProtocolError`` may come out (a typed refusal); anything
    else is a bug and propagates."""
    proto = proto or sys.modules["protocol"]
    conn = proto.Connection("server", max_frame=1 << 16)
    conn.receive_data(data)
    try:
        conn.frames()
    except proto.ProtocolError:
        pass
    try:
        obj = msgpack.unpackb(data[4:], raw=False)
    except Exception:  # msgpack's own refusals; the codec's are checked above
        return
    try:
        proto.parse_request(obj)
    except proto.ProtocolError:
        pass


#: SPEC.md, whose §11 byte-exact examples seed the codec's corpus.
SPEC = ROOT / "SPEC.md"
_SPEC_EXAMPLE = re.compile(r"^```spec-example[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_SPEC_KEY = re.compile(r"^([a-z][a-z0-9-]*):(.*)$")


def spec_frames(spec: Path = SPEC) -> list[tuple[str, str, bytes]]:
    """The frames of SPEC.md §11's byte-exact examples (the ones
    tests/protocol/test_spec_examples.py checks), in the document's order: (the example's
    ``name``, ``"request"`` or ``"reply"``, the frame's bytes, length prefix included)."""
    out: list[tuple[str, str, bytes]] = []
    for block in _SPEC_EXAMPLE.findall(spec.read_text(encoding="utf-8")):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = _SPEC_KEY.match(line)
            if m:
                last = m.group(1)
                fields[last] = m.group(2).strip()
            elif last:
                fields[last] += " " + line.strip()
        for side in ("request", "reply"):
            if side in fields:
                out.append((fields.get("name", "?"), side, bytes.fromhex(fields[side])))
    return out


def write_codec_seeds(corpus: Path, examples: int = 200, seed: int = 0) -> int:
    """Seed the codec's corpus in ``corpus``: every frame of SPEC.md §11 alone, the
    requests of each run of examples that share a connection as one input, and the
    frames and raw inputs of ``examples`` hypothesis examples (:data:`example_inputs`);
    returns how many files were written. Made by the tool each time, never committed."""
    corpus.mkdir(parents=True, exist_ok=True)
    inputs: list[tuple[str, bytes]] = []
    spec = spec_frames()
    for name, side, data in spec:
        inputs.append((f"spec-{name}-{side}", data))
    # The examples' requests in order, cut before each hello, as connections send them.
    connection: list[bytes] = []
    connections = 0
    for name, side, data in spec:
        if side != "request":
            continue
        body = decode_body(data)
        if type(body) is list and body[2:3] == ["hello"] and connection:
            inputs.append((f"spec-connection-{connections}", b"".join(connection)))
            connections += 1
            connection = []
        connection.append(data)
    if connection:
        inputs.append((f"spec-connection-{connections}", b"".join(connection)))
    frames, raw = hypothesis_inputs(examples, seed)
    inputs += [(f"hypothesis-frame-{i:05d}", x.data) for i, x in enumerate(frames)]
    inputs += [(f"hypothesis-raw-{i:05d}", x.data) for i, x in enumerate(raw)]
    for name, data in inputs:
        (corpus / re.sub(r"[^A-Za-z0-9_.-]", "_", name)).write_bytes(data)
    return len(inputs)


def fuzz_codec(argv: list[str], corpus: Path | None = None) -> None:
    """Run atheris (libFuzzer) on :func:`codec_target`; ``argv`` are libFuzzer's flags
    (``-runs=N``, ``-max_total_time=S``), ``corpus`` the seed corpus directory (libFuzzer
    adds what it finds to it). Never returns: libFuzzer exits the process."""
    import importlib

    import atheris  # type: ignore[import-not-found]

    # protocol is loaded already (above): load a fresh copy with coverage instrumentation.
    for name in [m for m in sys.modules if m == "protocol" or m.startswith("protocol.")]:
        del sys.modules[name]
    with atheris.instrument_imports(include=["protocol"]):
        proto = importlib.import_module("protocol")
    atheris.Setup([sys.argv[0], *argv, *([str(corpus)] if corpus is not None else [])],
                  lambda b: codec_target(b, proto))
    atheris.Fuzz()


def main(args: list[str]) -> int:
    """``python -m tools.fuzz codec [flags]``: flags it does not know go to libFuzzer."""
    p = argparse.ArgumentParser(prog="python -m tools.fuzz codec",
                                description="atheris (libFuzzer) on protocol's sans-IO codec, seeded with "
                                "SPEC.md §11's frames and hypothesis-drawn inputs; other flags go to libFuzzer")
    p.add_argument("--runs", type=int, default=100_000, help="inputs to run (100,000)")
    p.add_argument("--max-seconds", type=int, default=0, help="stop after this many seconds (0: no limit)")
    p.add_argument("--corpus", type=Path, default=None,
                   help="corpus directory, kept between runs (default: a temporary one); seeded when empty")
    p.add_argument("--seeds", type=int, default=200, help="hypothesis examples in a new corpus (200)")
    p.add_argument("--seed", type=int, default=1, help="seed of libFuzzer and of the corpus (1)")
    ns, rest = p.parse_known_args(args)
    flags = [f"-runs={ns.runs}", f"-seed={ns.seed}",
             *([f"-max_total_time={ns.max_seconds}"] if ns.max_seconds else []), *rest]
    if ns.corpus is not None:
        if not ns.corpus.exists() or not any(ns.corpus.iterdir()):
            written = write_codec_seeds(ns.corpus, ns.seeds, ns.seed)
            print(f"seed corpus: {written} inputs in {ns.corpus}", file=sys.stderr, flush=True)
        fuzz_codec(flags, ns.corpus)  # libFuzzer ends the process
    # A temporary corpus: libFuzzer ends its process, so it runs in a child and this
    # one removes the directory after it.
    with tempfile.TemporaryDirectory(prefix="lockgate-fuzz-codec-") as tmp:
        child = [sys.executable, "-m", "tools.fuzz", "codec", "--corpus", str(Path(tmp) / "corpus"),
                 "--seeds", str(ns.seeds), *args]
        return subprocess.run(child, check=False).returncode
