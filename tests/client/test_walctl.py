"""brokerctl wal verify/dump/stats on real WAL directories (no broker needed)."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner, Result

from broker import walctl
from broker.mutations import Ack, Lease, MutationType, Publish, QueueCreate, Release
from broker.records import encode
from broker.state import BrokerState
from broker.wal import SegmentedLog, encode_record, replay
from broker.wal.record import RECORD_HEADER_SIZE
from broker.wal.segment import SEGMENT_HEADER_SIZE
from client.cli import main

SEGMENT_BYTES = 128

BODIES = [b"body-%02d" % i for i in range(12)] + [b"\xff\x00bin"]


def mutations() -> list[Any]:
    return [
        QueueCreate("q", "fifo", 1, 30_000, 0, None, 0),
        Publish("q", 1, 1_000, BODIES[:4]),
        Publish("q", 5, 1_001, BODIES[4:8], keys=[b"k1", None, b"k3", None]),
        Publish("q", 9, 1_002, BODIES[8:]),
        Lease("q", 40_000, [1, 2, 3, 5]),
        Ack("q", [1, 2, 5]),
        QueueCreate("dlq", "fifo", 1, 30_000, 0, None, 0),
        QueueCreate("work", "fifo", 1, 30_000, 1, "dlq", 0),
        Publish("work", 1, 2_000, [b"poison", b"fine"]),
        Lease("work", 50_000, [1]),
        Release("work", [1], 0, False, 3_000),  # attempts used up: moves to dlq
        Ack("q", [9]),
    ]


def write_wal(wal_dir: Path, muts: list[Any], segment_bytes: int = SEGMENT_BYTES) -> None:
    with SegmentedLog.open(wal_dir, segment_bytes=segment_bytes) as log:
        for m in muts:
            log.append(encode(m))
            log.write()


def layout(wal_dir: Path) -> list[tuple[str, int, int]]:
    """(segment name, offset, end offset) of every whole record, in log order."""
    spots = []
    for name in sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal")):
        data = (wal_dir / name).read_bytes()
        off = SEGMENT_HEADER_SIZE
        while off + RECORD_HEADER_SIZE <= len(data):
            end = off + RECORD_HEADER_SIZE + int.from_bytes(data[off:off + 4], "big")
            if end > len(data):
                break
            spots.append((name, off, end))
            off = end
    return spots


def run(*args: str, expect: int = 0) -> Result:
    result = CliRunner().invoke(main, ["wal", *args])
    assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr,
                                        result.exception)
    return result


def verify_json(directory: Path, *extra: str, expect: int = 0) -> dict[str, Any]:
    return json.loads(run("verify", str(directory), "--json", *extra, expect=expect).stdout)


def dump_lines(*args: str, expect: int = 0) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run("dump", *args, expect=expect).stdout.splitlines()]


def files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_wal(tmp_path / "data" / "wal", mutations())
    return tmp_path / "data"


@pytest.fixture
def wal_dir(data_dir: Path) -> Path:
    return data_dir / "wal"


def segments(wal_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal"))


# --- verify ------------------------------------------------------------------------


def test_verify_clean_dir(data_dir: Path, wal_dir: Path) -> None:
    assert len(segments(wal_dir)) >= 3
    report = replay(wal_dir, lambda t, p: None, truncate=False)
    for directory in (data_dir, wal_dir):  # the data dir and its wal/ both work
        out = verify_json(directory)
        assert out["ok"] is True
        assert out["problems"] == []
        assert out["segments"] == len(segments(wal_dir)) == report.segments
        assert out["records"] == len(mutations()) == report.records
        assert out["record_bytes"] == report.bytes
        assert out["end_lsn"] == report.end_lsn
        assert out["records_by_type"] == {
            "ACK": 2, "LEASE": 2, "PUBLISH": 4, "QUEUE_CREATE": 3, "RELEASE": 1}
    result = run("verify", str(data_dir))
    text = result.stdout
    assert f"records: {report.records} ({report.bytes} bytes)" in text
    assert "snapshots: none" in text
    assert "result: ok" in text
    assert result.stderr == ""  # no progress bar in a pipe


def test_verify_shows_progress_on_a_terminal(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(walctl, "_isatty", lambda stream: True)
    assert "verifying" not in run("verify", str(data_dir)).stderr   # below PROGRESS_BYTES
    monkeypatch.setattr(walctl, "PROGRESS_BYTES", 1)
    assert "verifying" in run("verify", str(data_dir)).stderr


def test_verify_empty_dir(tmp_path: Path) -> None:
    out = verify_json(tmp_path)
    assert (out["ok"], out["segments"], out["records"]) == (True, 0, 0)


def test_torn_tail_is_a_warning_and_nothing_changes(wal_dir: Path, data_dir: Path) -> None:
    last = segments(wal_dir)[-1]
    name, off, end = layout(wal_dir)[-1]
    assert name == last
    os.truncate(wal_dir / last, end - 3)  # the last record loses 3 bytes
    before = files(data_dir)

    out = verify_json(data_dir)
    assert out["ok"] is True and out["errors"] == 0 and out["warnings"] == 1
    [problem] = out["problems"]
    assert problem["severity"] == "warning"
    assert (problem["file"], problem["offset"], problem["bytes"]) == (last, off, end - 3 - off)
    # Start-up would agree (and truncate right there).
    report = replay(wal_dir, lambda t, p: None, truncate=False)
    assert report.truncated_at == (last, off)
    assert report.truncated_bytes == end - 3 - off
    assert out["records"] == report.records == len(mutations()) - 1

    text = run("verify", str(data_dir)).stdout
    assert (f"warning: torn tail: {end - 3 - off} bytes at {last}:{off}, "
            "would be truncated on start-up") in text
    strict = verify_json(data_dir, "--strict", expect=1)
    assert strict["ok"] is False
    run("verify", str(data_dir), "--strict", expect=1)

    # None of the tools touched a byte (or a timestamp).
    run("dump", str(data_dir))
    run("stats", str(data_dir))
    assert files(data_dir) == before


def test_flipped_byte_in_sealed_segment(wal_dir: Path) -> None:
    first = segments(wal_dir)[0]
    name, off, end = [spot for spot in layout(wal_dir) if spot[0] == first][1]
    path = wal_dir / name
    data = bytearray(path.read_bytes())
    data[end - 2] ^= 0x40  # inside the payload of the segment's second record
    path.write_bytes(bytes(data))

    out = verify_json(wal_dir, expect=1)
    assert out["ok"] is False and out["errors"] == 1
    [problem] = out["problems"]
    assert (problem["severity"], problem["file"], problem["offset"]) == ("error", name, off)
    assert "CRC mismatch" in problem["reason"] and "sealed segment" in problem["reason"]
    text = run("verify", str(wal_dir), expect=1).stdout
    assert f"error: {name}:{off}: record CRC mismatch" in text
    assert "result: DAMAGED" in text

    # dump prints the records before it, then stops with the error.
    result = run("dump", str(wal_dir), expect=1)
    assert len(result.stdout.splitlines()) == 1
    assert f"error: {name}:{off}:" in result.stderr
    run("stats", str(wal_dir), expect=1)


def test_flipped_bit_in_last_segment_is_damage_not_torn(wal_dir: Path) -> None:
    last = segments(wal_dir)[-1]
    spots = [spot for spot in layout(wal_dir) if spot[0] == last]
    assert len(spots) >= 2
    name, off, _ = spots[0]
    path = wal_dir / name
    data = bytearray(path.read_bytes())
    data[off + 5] ^= 0x01  # one bit of the CRC field; a valid record follows
    path.write_bytes(bytes(data))
    [problem] = verify_json(wal_dir, expect=1)["problems"]
    assert (problem["severity"], problem["file"], problem["offset"]) == ("error", name, off)


def test_gap_between_segments(wal_dir: Path) -> None:
    names = segments(wal_dir)
    os.unlink(wal_dir / names[1])
    out = verify_json(wal_dir, expect=1)
    [problem] = out["problems"]
    assert (problem["file"], problem["offset"]) == (names[2], 0)
    assert "ends at LSN" in problem["reason"]


def test_unknown_record_type_and_a_damaged_snapshot(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    write_wal(wal_dir, mutations()[:2])
    with SegmentedLog.open(wal_dir) as log:
        log.append(encode_record(200, b"\x90"))
    (tmp_path / "state.snap").write_bytes(b"later")
    (wal_dir / "00000000000000000999.wal.tmp").write_bytes(b"")
    out = verify_json(wal_dir, expect=1)  # the wal/ dir: snapshots are looked for in its parent
    assert out["records"] == 3 and out["records_by_type"]["200"] == 1
    severities = {(p["severity"], p["file"]) for p in out["problems"]}
    assert severities == {
        ("error", segments(wal_dir)[-1]), ("error", "state.snap"),
        ("note", "00000000000000000999.wal.tmp")}
    assert out["snapshots"] == 1 and out["snapshots_checked"] == 1


def test_a_real_snapshot_verifies_and_feeds_stats(tmp_path: Path) -> None:
    from broker.state import BrokerState
    from broker.wal.checkpoint import publish_snapshot, remove_obsolete, write_snapshot_tmp
    from broker.wal.fileio import FileIO

    wal_dir = tmp_path / "wal"
    write_wal(wal_dir, mutations())
    state = BrokerState()
    from broker.wal import replay

    report = replay(wal_dir, state.apply_record)
    io = FileIO()
    tmp = write_snapshot_tmp(io, str(wal_dir), report.end_lsn, state.export_records())
    publish_snapshot(io, str(wal_dir), tmp)
    remove_obsolete(io, str(wal_dir), report.end_lsn)
    out = verify_json(tmp_path, expect=0)
    assert out["snapshots"] == 1 and out["snapshots_checked"] == 1
    assert not [p for p in out["problems"] if p["severity"] == "error"]
    stats = json.loads(CliRunner().invoke(main, ["wal", "stats", str(tmp_path), "--json"]).output)
    live = sum(len(q.messages) for q in state.queues.values())
    assert stats["total"]["live_messages"] == live


# --- dump --------------------------------------------------------------------------


def test_dump_records(wal_dir: Path) -> None:
    spots = layout(wal_dir)
    lines = dump_lines(str(wal_dir.parent))
    assert len(lines) == len(mutations())
    lsn = 0
    for line, (name, off, end), m in zip(lines, spots, mutations(), strict=True):
        assert (line["segment"], line["offset"], line["lsn"]) == (name, off, lsn)
        assert line["type"] == MutationType(type(m).TYPE).name
        lsn += end - off
    assert lines[0]["fields"] == {
        "queue": "q", "kind": "fifo", "shards": 1, "visibility_ms": 30_000,
        "max_attempts": 0, "dead_letter": None, "max_messages": 0, "retry_delay_ms": 0,
        "retry_backoff": "exponential", "retry_max_delay_ms": 900_000, "retry_jitter": 0,
        "ttl_ms": 0, "on_expire": "drop", "dedup_window_ms": 300_000, "ordered": False,
        "max_bytes": 0, "overflow": "reject"}
    assert lines[2]["fields"]["keys"] == [{"utf8": "k1"}, None, {"utf8": "k3"}, None]
    bodies = lines[3]["fields"]["bodies"]
    assert bodies[0] == {"utf8": "body-08"}
    assert bodies[-1] == {"base64": base64.b64encode(b"\xff\x00bin").decode()}
    assert lines[5]["fields"] == {"queue": "q", "ids": [1, 2, 5]}

    # --limit, --from-lsn (records starting at or after it), --segment (index or name)
    assert dump_lines(str(wal_dir), "--limit", "2") == lines[:2]
    assert dump_lines(str(wal_dir), "--from-lsn", str(lines[4]["lsn"])) == lines[4:]
    assert dump_lines(str(wal_dir), "--from-lsn", str(lines[4]["lsn"] - 1)) == lines[4:]
    second = segments(wal_dir)[1]
    in_second = [line for line in lines if line["segment"] == second]
    assert in_second
    assert dump_lines(str(wal_dir), "--segment", "1") == in_second
    assert dump_lines(str(wal_dir), "--segment", second) == in_second
    last = [line for line in lines if line["segment"] == segments(wal_dir)[-1]]
    assert dump_lines(str(wal_dir), "--segment", "-1") == last
    run("dump", str(wal_dir), "--segment", "99", expect=2)


def test_dump_torn_tail_warns(wal_dir: Path) -> None:
    name, off, end = layout(wal_dir)[-1]
    os.truncate(wal_dir / name, off + 4)
    result = run("dump", str(wal_dir))
    assert len(result.stdout.splitlines()) == len(mutations()) - 1
    assert f"warning: torn tail: 4 bytes at {name}:{off}" in result.stderr


# --- stats -------------------------------------------------------------------------


def test_stats_live_bytes(wal_dir: Path) -> None:
    state = BrokerState()
    replay(wal_dir, state.apply_record, truncate=False)
    live = [m for q in state.queues.values() for m in q.messages.values()]
    # q: 13 published, 1, 2, 5 and 9 acked (3 stays leased); work: 1 moved to dlq.
    assert len(live) == 13 - 4 + 2
    live_bytes = sum(len(m.body) + len(m.key or b"") for m in live)

    out = json.loads(run("stats", str(wal_dir.parent), "--json").stdout)
    total = out["total"]
    assert total["live_messages"] == len(live)
    assert total["live_bytes"] == live_bytes
    assert total["records"] == len(mutations())
    assert total["file_bytes"] == sum((wal_dir / n).stat().st_size for n in segments(wal_dir))
    assert total["record_bytes"] == total["file_bytes"] - SEGMENT_HEADER_SIZE * len(segments(wal_dir))
    assert total["dead_bytes"] == total["record_bytes"] - live_bytes
    assert total["queues"] == 3 and total["torn_bytes"] == 0

    # Each message's bytes count in the segment holding its publish record: the
    # dead-lettered "poison" in the segment of work's publish, not of the release.
    spots = layout(wal_dir)
    expected: dict[str, tuple[int, int]] = {}
    publishes = [(m, spot) for m, spot in zip(mutations(), spots, strict=True)
                 if isinstance(m, Publish)]
    gone = {("q", 1), ("q", 2), ("q", 5), ("q", 9)}
    for m, (name, _, _) in publishes:
        for i, body in enumerate(m.bodies):
            if (m.queue, m.first_id + i) in gone:
                continue
            key = m.keys[i] if m.keys else None
            count, size = expected.get(name, (0, 0))
            expected[name] = (count + 1, size + len(body) + len(key or b""))
    rows = {row["name"]: row for row in out["segments"]}
    assert list(rows) == segments(wal_dir)
    for name, row in rows.items():
        assert (row["live_messages"], row["live_bytes"]) == expected.get(name, (0, 0))
        assert row["dead_bytes"] == row["record_bytes"] - row["live_bytes"] >= 0

    text = run("stats", str(wal_dir)).stdout
    assert text.splitlines()[0].split() == [
        "SEGMENT", "FILE_BYTES", "RECORDS", "RECORD_BYTES", "LIVE_MESSAGES", "LIVE_BYTES",
        "DEAD_BYTES"]
    assert f"queues: 3, live messages: {len(live)}" in text


def test_brokerctl_json_before_the_command_and_its_variable(data_dir: Path) -> None:
    for runner, args in ((CliRunner(), ["--json", "wal", "stats", str(data_dir)]),
                         (CliRunner(env={"LOCKGATE_JSON": "1"}), ["wal", "verify", str(data_dir)])):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["directory"] == str(data_dir / "wal")
