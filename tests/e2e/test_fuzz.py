"""Fuzzing (tools/fuzz.py): a short run against a broker process, the codec under atheris,
and the command validation in-process under hypothesis."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.commands import COMMANDS, Context, Session, dispatch
from broker.config import BrokerConfig
from broker.state import BrokerState
from protocol import Error, ErrorCode, Op, ProtocolError
from tools import fuzz
from tools.procs import ROOT


def test_the_op_table_names_every_op_and_its_arguments() -> None:
    assert set(fuzz.OP_ARGS) == set(Op)
    assert {op: set(names) for op, names in fuzz.OP_ARGS.items()} == {
        op: set(c.fields) for op, c in COMMANDS.items()}


def test_a_short_run_against_a_broker_process_finds_nothing(tmp_path: Path) -> None:
    report = fuzz.fuzz_broker(tmp_path, 300, examples_per_batch=30, seed=13, timeout=10.0)
    assert report.findings == []
    assert report.inputs >= 300 and report.health_checks >= 3
    assert report.raw_inputs > 0 and report.replies > 0 and report.errors > 0
    assert report.exit_status == 0
    assert report.rss_end_kib < 2 * report.rss_start_kib


def test_an_internal_error_reply_is_a_finding() -> None:
    fuzzer = fuzz.Fuzzer.__new__(fuzz.Fuzzer)
    fuzzer.report = fuzz.Report()
    culprit = fuzz.Input(b"\x00\x00\x00\x01\xc0", "request", "publish", 9)
    fuzzer._check(Error(id=9, code=ErrorCode.INTERNAL_ERROR, message="internal error in publish", details={}),
                  [fuzz.Input(b"", "request", "ping", 8), culprit])
    assert [(f.kind, f.op, f.input_hex) for f in fuzzer.report.findings] == [
        ("internal_error", "publish", culprit.data.hex())]


def test_the_codec_under_atheris() -> None:
    done = subprocess.run([sys.executable, "-m", "tools.fuzz", "codec", "--runs", "5000"], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"DONE" in done.stderr


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=64) | fuzz.requests().map(lambda x: x.data) | fuzz.shapes().map(lambda x: x.data))
def test_the_server_codec_raises_only_protocol_errors(data: bytes) -> None:
    fuzz.codec_target(data)


def _state() -> tuple[BrokerState, Context]:
    state, cfg = BrokerState(), BrokerConfig()
    ctx = Context(state, cfg, 1_700_000_000_000, "127.0.0.1:7878")
    session = Session(ready=True, version=1, client_max_frame=16 * 2**20)
    for op, args in (("queue_create", {"queue": "fz"}), ("queue_create", {"queue": "dl"}),
                     ("topic_create", {"topic": "fzt"}), ("group_create", {"topic": "fzt", "group": "g"}),
                     ("publish", {"queue": "fz", "messages": [[b"a"], [b"b"]]})):
        for m in dispatch(session, op, args, ctx).mutations:
            state.apply(m)
    return state, ctx


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(fuzz.requests())
def test_command_validation_raises_only_protocol_errors(x: fuzz.Input) -> None:
    """Every request the broker fuzz sends, run in-process: a reply or a typed refusal,
    never another exception (which the broker would answer with INTERNAL_ERROR)."""
    _, rid, op, args = msgpack.unpackb(x.data[4:], raw=False, strict_map_key=False)
    state, ctx = _state()
    session = Session(ready=True, version=1, client_max_frame=16 * 2**20)
    try:
        outcome: Any = dispatch(session, op, args, ctx)
    except ProtocolError as exc:
        assert exc.code != ErrorCode.INTERNAL_ERROR
        return
    for m in outcome.mutations:
        state.apply(m)
