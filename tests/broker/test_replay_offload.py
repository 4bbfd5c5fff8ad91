"""Replay with a helper process: the same records, reports and errors as in-process."""
from __future__ import annotations

import importlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import recovery
from broker.wal import offload as offload_mod
from broker.wal.log import SegmentedLog
from broker.wal.offload import Offload, ReplayHelperError
from broker.wal.record import encode_record
from broker.wal.replay import ReplayReport, WalCorruption, replay
from tests.broker.test_replay_fold import _records as loader_records
from tests.broker.test_wal_replay import collect, flip, layout, make, write_log

Rec = tuple[int, bytes]
replay_mod = importlib.import_module("broker.wal.replay")


@pytest.fixture(autouse=True, params=["parent folds", "helper folds", "mixed"])
def small_batches(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of a few records, so that one segment takes many messages; folded by the
    parent, by the helper, or by whichever the pipe's fill picks (rule 2)."""
    monkeypatch.setattr(replay_mod, "BATCH_BYTES", 100)
    ahead = {"parent folds": 1 << 40, "helper folds": 0, "mixed": 300}[request.param]
    monkeypatch.setattr(offload_mod, "FOLD_AHEAD_BYTES", ahead)


@pytest.fixture
def helper_pids(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the helpers forked during the test."""
    pids: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(offload_mod.os, "fork", fork)
    return pids


def as_items(types: bytes, payloads: list[bytes]) -> list[Any]:
    """A fold that keeps the records as they are, with the pid of who folded them."""
    return [[os.getpid(), t, p] for t, p in zip(types, payloads)]


def passing(out: list[Rec], folders: set[int] | None = None, min_bytes: int = 0) -> Offload:
    """An offload that collects the records it is given (and who folded them)."""
    def apply(items: list[Any]) -> None:
        out.extend((t, p) for _, t, p in items)
        if folders is not None:
            folders.update(pid for pid, _, _ in items)
    return Offload(as_items, apply, min_bytes=min_bytes)


def offloaded(path: Path, **kw: Any) -> tuple[list[Rec], ReplayReport]:
    out: list[Rec] = []
    report = replay(path, offload=passing(out), **kw)
    return out, report


def _fields(r: ReplayReport) -> dict[str, Any]:
    return {f: getattr(r, f) for f in r.__slots__}  # type: ignore[attr-defined]


def assert_same_report(a: ReplayReport, b: ReplayReport) -> None:
    assert _fields(a) | {"seconds": 0} == _fields(b) | {"seconds": 0}


# -- the same records --------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=0, max_size=60),
       segment_bytes=st.sampled_from([256, 1024, 1 << 20]))
def test_the_helper_yields_the_records_of_an_in_process_replay(
        tmp_path_factory: pytest.TempPathFactory, sizes: list[int], segment_bytes: int) -> None:
    path = tmp_path_factory.mktemp("log")
    records = [(1 + i % 8, os.urandom(n)) for i, n in enumerate(sizes)]
    write_log(path, records, segment_bytes=segment_bytes)
    plain, plain_report = collect(path, truncate=False)
    out, report = offloaded(path, truncate=False)
    assert out == plain == records
    assert_same_report(report, plain_report)


def test_from_lsn_starts_both_at_the_same_record(tmp_path: Path) -> None:
    write_log(tmp_path, make(200, 30), segment_bytes=1024)
    spots = layout(tmp_path)
    names = sorted({name for name, _, _ in spots})
    # The third record of the second segment, as an LSN.
    second = [s for s in spots if s[0] == names[1]]
    lsn = int(names[1].split(".")[0]) + second[2][1] - 24
    plain, plain_report = collect(tmp_path, from_lsn=lsn)
    out, report = offloaded(tmp_path, from_lsn=lsn)
    assert out == plain and len(out) < 200
    assert_same_report(report, plain_report)


def test_a_torn_tail_is_cut_the_same_way(tmp_path: Path) -> None:
    write_log(tmp_path, make(40), segment_bytes=512)
    name, off, end = layout(tmp_path)[-1]
    seg = tmp_path / name
    seg.write_bytes(seg.read_bytes()[: end - 5])  # the last record cut short
    out, report = offloaded(tmp_path)
    assert out == make(39)
    assert report.truncated_at == (name, off) and report.truncated_bytes == end - 5 - off
    assert seg.stat().st_size == off


def test_damage_in_a_sealed_segment_is_the_same_corruption(
        tmp_path: Path, helper_pids: list[int]) -> None:
    write_log(tmp_path, make(60), segment_bytes=512)
    name, off, _ = layout(tmp_path)[5]
    flip(tmp_path / name, off + 12, 3)  # a payload bit of a record in the first segment
    with pytest.raises(WalCorruption) as plain:
        collect(tmp_path)
    with pytest.raises(WalCorruption) as info:
        offloaded(tmp_path)
    assert (info.value.path, info.value.offset) == (plain.value.path, plain.value.offset)
    assert helper_pids and _reaped(helper_pids[0])


# -- errors ------------------------------------------------------------------------


def test_an_apply_error_names_the_segment_and_offsets(tmp_path: Path) -> None:
    write_log(tmp_path, make(30))

    def apply(items: list[Any]) -> None:
        if any(p.startswith(b"m20-") for _, _, p in items):
            raise KeyError("boom")

    with pytest.raises(KeyError) as info:
        replay(tmp_path, offload=Offload(as_items, apply, min_bytes=0))
    notes = " ".join(info.value.__notes__)
    assert layout(tmp_path)[0][0] in notes and "offsets" in notes


def _in_helper(monkeypatch: pytest.MonkeyPatch, act: Any) -> None:
    """Make the helper's scan call ``act(offset)`` before each batch it scans."""
    parent, real_scan = os.getpid(), replay_mod._scan

    def scan(data: bytes, off: int, *rest: Any) -> int:
        if os.getpid() != parent:
            act(off)
        return real_scan(data, off, *rest)

    monkeypatch.setattr(replay_mod, "_scan", scan)


def test_a_helper_failure_is_reported_as_such(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_log(tmp_path, make(30))

    def fail(off: int) -> None:
        raise ValueError("unreadable")

    _in_helper(monkeypatch, fail)
    with pytest.raises(ReplayHelperError, match="unreadable"):
        replay(tmp_path, offload=passing([]))


def test_a_helper_that_dies_is_an_error_and_is_reaped(
        tmp_path: Path, helper_pids: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    write_log(tmp_path, make(30))

    def die(off: int) -> None:
        if off > 200:  # after its first batch
            os.kill(os.getpid(), signal.SIGKILL)

    _in_helper(monkeypatch, die)
    got: list[Rec] = []
    with pytest.raises(ReplayHelperError, match="exited early"):
        replay(tmp_path, offload=passing(got))
    assert got == make(len(got)) and 0 < len(got) < 30
    assert len(helper_pids) == 1 and _reaped(helper_pids[0])


def test_small_logs_are_replayed_in_process(tmp_path: Path, helper_pids: list[int]) -> None:
    write_log(tmp_path, make(30))
    out: list[Rec] = []
    folders: set[int] = set()
    replay(tmp_path, offload=passing(out, folders, min_bytes=1 << 30))
    assert out == make(30) and folders == {os.getpid()} and helper_pids == []


def test_who_folds_follows_the_pipe(
        tmp_path: Path, helper_pids: list[int], request: pytest.FixtureRequest) -> None:
    write_log(tmp_path, make(200))
    out: list[Rec] = []
    folders: set[int] = set()
    replay(tmp_path, offload=passing(out, folders))
    assert out == make(200) and len(helper_pids) == 1
    mode = request.node.callspec.params["small_batches"]
    if mode == "parent folds":  # the pipe never holds FOLD_AHEAD_BYTES
        assert folders == {os.getpid()}
    elif mode == "helper folds":  # it always does
        assert folders == {helper_pids[0]}
    else:
        assert folders <= {os.getpid(), helper_pids[0]}


def test_replay_takes_apply_or_offload(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        replay(tmp_path)
    with pytest.raises(TypeError):
        replay(tmp_path, lambda t, p: None, offload=passing([]))


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


# -- recovery through the helper -----------------------------------------------------


def _broker_log(path: Path, ops: list[tuple[str, int]]) -> None:
    with SegmentedLog.open(path, segment_bytes=700) as log:
        for rtype, payload in loader_records(ops):
            log.append(encode_record(rtype, payload))
        log.write()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pub", "pub", "pub", "keyed", "lease", "ack", "release"]),
                          st.integers(0, 1000)), max_size=120))
def test_recovery_through_the_helper_gives_the_same_state(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]) -> None:
    path = tmp_path_factory.mktemp("wal")
    _broker_log(path, ops)
    in_process = recovery.recover(path)
    real = recovery.OFFLOAD_MIN_BYTES
    try:
        recovery.OFFLOAD_MIN_BYTES = 0
        through_helper = recovery.recover(path)
    finally:
        recovery.OFFLOAD_MIN_BYTES = real
    assert through_helper.state.snapshot() == in_process.state.snapshot()
    assert through_helper.state.ack_reserve == in_process.state.ack_reserve
    assert through_helper.replay.records == in_process.replay.records
