"""Fuzzing: a short run of tools/fuzz.py against a broker process, its input stream, the
codec under atheris, and the command validation in-process (tools/fuzzcommands.py)
under atheris and under hypothesis."""
from __future__ import annotations

import os
import random
import re
import socket
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.commands import COMMANDS
from broker.live import Live
from protocol import Encoder, Error, ErrorCode, Op
from tools import fuzz, fuzzcodec, fuzzcommands, fuzzinputs
from tools.procs import ROOT


def test_the_op_table_names_every_op_and_its_arguments() -> None:
    assert set(fuzzinputs.OP_ARGS) == set(Op)
    assert {op: set(names) for op, names in fuzzinputs.OP_ARGS.items()} == {
        op: set(c.fields) for op, c in COMMANDS.items()}


def test_a_short_run_against_a_broker_process_finds_nothing(tmp_path: Path) -> None:
    report = fuzz.fuzz_broker(tmp_path, 2000, connections=4, batch=32, seed=13, timeout=10.0,
                              health_every=500)
    assert report.findings == []
    assert report.inputs >= 2000 and report.health_checks >= 4
    assert report.generated > 0 and report.mutants > report.generated
    assert report.raw_inputs > 0 and report.replies > 0 and report.errors > 0
    assert report.hellos == report.connections  # every connection's hello answered
    assert report.codes.get("INVALID_ARGUMENT", 0) > 0 and report.codes.get("MALFORMED_FRAME", 0) > 0
    assert report.exit_status == 0
    assert report.rss_end_kib < 2 * report.rss_start_kib


def test_a_short_run_requiring_authentication_finds_nothing(tmp_path: Path) -> None:
    report = fuzz.fuzz_broker(tmp_path, 1500, connections=4, batch=32, seed=14, timeout=10.0,
                              health_every=500, auth=True)
    assert report.findings == []
    assert report.inputs >= 1500 and report.health_checks >= 3 and report.exit_status == 0
    # One connection in four sends before authenticating, the others as the limited user.
    assert report.authenticated > 0 and report.codes.get("UNAUTHENTICATED", 0) > 0
    assert report.replies > 0
    with_permission = {op for op, c in COMMANDS.items() if c.permission}
    assert set(report.denied) <= with_permission and len(report.denied) >= 3
    assert sum(report.denied.values()) <= report.codes["PERMISSION_DENIED"]


def test_a_short_run_in_tls_finds_nothing(tmp_path: Path) -> None:
    report = fuzz.fuzz_broker(tmp_path, 1500, connections=4, batch=32, seed=15, timeout=10.0,
                              health_every=500, tls=True)
    assert report.findings == []
    assert report.inputs >= 1500 and report.health_checks >= 3 and report.exit_status == 0
    assert report.replies > 0 and report.errors > 0
    assert report.plain_on_tls > 0 and 0 < report.tls_refusals <= report.plain_on_tls
    assert report.client_hellos > 0


def test_a_plain_client_on_the_tls_port_refused_otherwise_is_a_finding() -> None:
    fuzzer = fuzz.Fuzzer.__new__(fuzz.Fuzzer)
    fuzzer.report = fuzz.Report()
    fuzzer.timeout = 5.0
    enc = Encoder()
    plain = fuzzinputs.Input(fuzz._HELLO, "plain-on-tls")
    for answer in (enc.error(None, ErrorCode.MALFORMED_FRAME, "TLS required", {"tls": "required"}),
                   enc.error(None, ErrorCode.MALFORMED_FRAME, "not a frame", {}), b""):
        ours, theirs = socket.socketpair()
        peer = fuzz._Peer.__new__(fuzz._Peer)
        peer.sock, peer.open = ours, True
        theirs.sendall(answer)
        theirs.close()
        fuzzer._expect_refusal(peer, plain)
    assert fuzzer.report.tls_refusals == 1
    assert [f.kind for f in fuzzer.report.findings] == ["tls_refusal", "tls_refusal"]


def test_an_internal_error_reply_is_a_finding() -> None:
    fuzzer = fuzz.Fuzzer.__new__(fuzz.Fuzzer)
    fuzzer.report = fuzz.Report()
    culprit = fuzzinputs.Input(b"\x00\x00\x00\x01\xc0", "request", "publish", 9)
    fuzzer._check(Error(id=9, code=ErrorCode.INTERNAL_ERROR, message="internal error in publish", details={}),
                  [fuzzinputs.Input(b"", "request", "ping", 8), culprit])
    assert [(f.kind, f.op, f.input_hex) for f in fuzzer.report.findings] == [
        ("internal_error", "publish", culprit.data.hex())]


def test_inputs_are_classified_as_the_server_would_read_them() -> None:
    ping = fuzzinputs.framed(fuzzinputs.pack([0, 7, "ping", {}]))
    assert fuzzinputs.classify(ping, "request") == fuzzinputs.Input(ping, "request", "ping", 7)
    held = fuzzinputs.classify(fuzzinputs.framed(fuzzinputs.pack([0, 8, "consume", {"queue": "fz", "wait_ms": 5}])), "request")
    assert held.may_hold and not held.fatal
    assert fuzzinputs.classify(struct.pack(">I", 1) + b"\xc1", "mutant", True).fatal
    shape = fuzzinputs.classify(fuzzinputs.framed(fuzzinputs.pack({"not": "a request"})), "shape")
    assert not shape.fatal and shape.op is None


def test_the_stream_mixes_hypothesis_inputs_and_variations_and_ends_batches_with_a_fatal_frame() -> None:
    stream = fuzzinputs.InputStream(seed=5, mutants=9, chunk=40)
    batches = [stream.frames(20) for _ in range(40)]
    frames = [x for b in batches for x in b]
    assert all(not x.fatal for b in batches for x in b[:-1])
    assert any(b[-1].fatal for b in batches)
    mutants = sum(x.mutant for x in frames)
    assert 0.8 < mutants / len(frames) < 0.97  # about 9 in 10
    assert len({x.data for x in frames}) > 0.8 * len(frames)
    assert {x.op for x in frames if x.op} >= {"publish", "consume", "queue_create", "txn"}
    raws = [stream.raw() for _ in range(50)]
    assert 0 < stream.raw_ratio < 0.5 and any(x.mutant for x in raws)
    again = fuzzinputs.InputStream(seed=5, mutants=9, chunk=40)
    assert [x.data for x in again.frames(20)] == [x.data for x in batches[0]]


def test_variations_keep_requests_mostly_well_formed() -> None:
    mutator = fuzzinputs.Mutator(random.Random(3))
    mutator.feed(*fuzzinputs.hypothesis_inputs(60, 4))
    variations = [mutator.frame() for _ in range(2000)]
    known = sum(x.op in fuzzinputs.OP_ARGS for x in variations)
    assert known > 0.5 * len(variations)
    assert 0 < sum(x.fatal for x in variations) < 0.2 * len(variations)
    # Frames the broker replied to (of ops with arguments) are varied more.
    accepted = fuzzinputs.classify(fuzzinputs.framed(fuzzinputs.pack([0, 5, "redrive", {"queue": "dl"}])), "request")
    mutator.accept(fuzzinputs.classify(fuzzinputs.framed(fuzzinputs.pack([0, 6, "ping", {}])), "request"))
    assert mutator.accepted == {}
    mutator.accept(accepted)
    redrives = sum(mutator.frame().op == "redrive" for _ in range(1000))
    assert redrives > 300


def test_the_codec_under_atheris() -> None:
    done = subprocess.run([sys.executable, "-m", "tools.fuzz", "codec", "--runs", "5000", "--seeds", "30"],
                          cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"DONE" in done.stderr


def test_the_codec_corpus_holds_the_spec_examples_and_hypothesis_inputs(tmp_path: Path) -> None:
    frames = fuzzcodec.spec_frames()
    names = {name for name, _, _ in frames}
    assert len(names) >= 20 and {"hello", "ping", "publish-batch", "frame-too-large"} <= names
    assert {side for _, side, _ in frames} == {"request", "reply"}
    for name, _, data in frames:  # whole frames, but the length prefix announcing too large a one
        assert len(data) - 4 == struct.unpack(">I", data[:4])[0] or (name == "frame-too-large" and len(data) == 4)
    corpus = tmp_path / "corpus"
    done = subprocess.run([sys.executable, "-m", "tools.fuzz", "codec", "--runs", "2000", "--seeds", "30",
                           "--corpus", str(corpus)], cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    files = {p.name: p.read_bytes() for p in corpus.iterdir()}
    for name, side, data in frames:
        assert files[f"spec-{name}-{side}"] == data
    assert files["spec-connection-0"].startswith(frames[0][2]) and frames[0][:2] == ("hello", "request")
    hypothesis_files = [n for n in files if n.startswith("hypothesis-")]
    assert len(hypothesis_files) >= 30
    seeded = len(frames) + len(hypothesis_files) + sum(n.startswith("spec-connection-") for n in files)
    assert f"seed corpus: {seeded} inputs".encode() in done.stderr
    assert b"DONE" in done.stderr


def test_the_command_validation_under_atheris(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tools.fuzzcommands", "--runs", "1000", "--seeds", "40"], cwd=tmp_path,
                          capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    runs = re.search(rb"Done (\d+) runs", done.stderr)  # libFuzzer may count a few more
    assert runs is not None and int(runs.group(1)) >= 1000
    assert b"INFO: Instrumenting broker.commands" in done.stderr
    assert list(tmp_path.glob("crash-*")) == []


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=64) | fuzzinputs.requests().map(lambda x: x.data) | fuzzinputs.shapes().map(lambda x: x.data))
def test_the_server_codec_raises_only_protocol_errors(data: bytes) -> None:
    fuzzcodec.codec_target(data)


@pytest.fixture(scope="module")
def command_target() -> Callable[[bytes], None]:
    return fuzzcommands.build_target()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(scenario=st.sampled_from(fuzzcommands.SCENARIOS), run=fuzzinputs.frame_runs)
def test_command_validation_raises_only_protocol_errors(command_target: Callable[[bytes], None],
                                                        scenario: Any, run: list[fuzzinputs.Input]) -> None:
    """The atheris target under hypothesis: a scenario (held consumes, subscriptions, time
    passing), then every frame a run of the broker fuzz sends, through the live path with
    auth off and as the limited user, then replayed: a reply or a typed refusal, never
    another exception, and replay gives the same state."""
    command_target(fuzzcommands.scenario_bytes(scenario) + b"".join(x.data for x in run))


def test_the_scenarios_reach_held_consumes_subscriptions_timers_and_permissions() -> None:
    stats: Counter[str] = Counter()
    target = fuzzcommands.build_target(stats)
    for scenario in fuzzcommands.SCENARIOS:
        target(fuzzcommands.scenario_bytes(scenario))
    # Each scenario runs twice: auth off, and as the limited user (who may not publish to dl).
    assert stats["held"] >= 4 and 0 < stats["answered"] <= stats["held"]
    assert stats["subscriptions"] >= 2 * 6 and stats["pushes"] >= stats["subscriptions"] // 2
    assert stats["timers"] > 0 and stats["released"] > 0
    assert stats["PERMISSION_DENIED"] > 0


@pytest.fixture
def unlogged_timers() -> Iterator[None]:
    """Lease expiries, delays and times to live applied without being logged."""
    run_due = Live.run_due

    def applied_only(self: Live) -> bool:
        changes = self.state.due(self.clock.now_ms())
        for m in changes:
            self.state.apply(m)
        return bool(changes)

    Live.run_due = applied_only  # type: ignore[method-assign]
    try:
        yield
    finally:
        Live.run_due = run_due  # type: ignore[method-assign]


def test_the_command_target_compares_what_time_changed(command_target: Callable[[bytes], None],
                                                       unlogged_timers: None) -> None:
    leases_run_out = next(s for s in fuzzcommands.SCENARIOS if any(rid == 131071 for rid, _, _ in s))
    with pytest.raises(AssertionError, match="differs from the state replayed"):
        command_target(fuzzcommands.scenario_bytes(leases_run_out))


@pytest.fixture
def broken_ping() -> Iterator[None]:
    command = COMMANDS["ping"]
    handler = command.handler

    def fails(*args: Any) -> Any:
        raise KeyError("a fault in the handler")

    command.handler = fails
    try:
        yield
    finally:
        command.handler = handler


def test_the_command_target_reports_a_fault_of_a_handler(command_target: Callable[[bytes], None],
                                                         broken_ping: None) -> None:
    with pytest.raises(KeyError):
        command_target(fuzzinputs.framed(msgpack.packb([0, 1, "ping", {}])))
