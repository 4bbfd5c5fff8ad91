"""Replay: order, torn tails at every byte, corruption found and named, reopen."""
from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import pytest

from broker.wal.log import SegmentedLog
from broker.wal.record import MAX_PAYLOAD, RECORD_HEADER_SIZE, encode_record
from broker.wal.replay import ReplayReport, WalCorruption, replay
from broker.wal.segment import (
    SEGMENT_HEADER_SIZE,
    WalVersionError,
    encode_header,
    segment_name,
)

Rec = tuple[int, bytes]


def payload(i: int, size: int = 24) -> bytes:
    # Letters only: no byte is zero or one bit away from zero.
    return (b"m%d-" % i + b"abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[:size]


def write_log(path: Path, records: list[Rec], segment_bytes: int = 64 * 1024 * 1024) -> None:
    with SegmentedLog.open(path, segment_bytes=segment_bytes) as log:
        for i, (t, p) in enumerate(records):
            log.append(encode_record(t, p))
            if i % 7 == 6:
                log.write()


def make(n: int, size: int = 24) -> list[Rec]:
    return [(1 + i % 8, payload(i, size)) for i in range(n)]


def collect(path: Path, **kw: object) -> tuple[list[Rec], ReplayReport]:
    out: list[Rec] = []
    report = replay(path, lambda t, p: out.append((t, p)), **kw)  # type: ignore[arg-type]
    return out, report


def layout(path: Path) -> list[tuple[str, int, int]]:
    """(segment name, offset, end offset) of every record, in log order."""
    spots = []
    for name in sorted(n for n in os.listdir(path) if n.endswith(".wal")):
        data = (path / name).read_bytes()
        off = SEGMENT_HEADER_SIZE
        while off < len(data):
            (length,) = struct.unpack_from(">I", data, off)
            end = off + RECORD_HEADER_SIZE + length
            spots.append((name, off, end))
            off = end
    return spots


def flip(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


# -- order and reports ---------------------------------------------------------


def test_missing_and_empty_directories_are_empty_logs(tmp_path: Path) -> None:
    out, report = collect(tmp_path / "nope")
    assert out == [] and report.segments == 0 and report.end_lsn == 0
    out, report = collect(tmp_path)
    assert out == [] and report.records == 0 and report.truncated_at is None


def test_replays_many_segments_in_order(tmp_path: Path) -> None:
    records = make(500, 17) + [(9, b""), (255, b"\x00" * 300)] + make(100, 40)
    write_log(tmp_path, records, segment_bytes=512)
    (tmp_path / "00000000000000000001.wal.tmp").write_bytes(b"ignored")
    (tmp_path / "checkpoint.json").write_bytes(b"ignored")
    out, report = collect(tmp_path)
    assert out == records
    total = sum(RECORD_HEADER_SIZE + len(p) for _, p in records)
    assert report == ReplayReport(
        segments=len(layout_names(tmp_path)), records=len(records), bytes=total,
        truncated_bytes=0, truncated_at=None, seconds=report.seconds, end_lsn=total)
    assert report.segments > 30 and report.seconds >= 0


def layout_names(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".wal"))


def test_apply_errors_propagate_with_the_place(tmp_path: Path) -> None:
    write_log(tmp_path, make(5))

    def apply(t: int, p: bytes) -> None:
        if p.startswith(b"m3-"):
            raise KeyError("boom")

    with pytest.raises(KeyError) as info:
        replay(tmp_path, apply)
    notes = " ".join(info.value.__notes__)
    assert segment_name(0) in notes and "offset" in notes


# -- torn tails ----------------------------------------------------------------


def test_cut_at_every_byte_of_the_last_records(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                               ) -> None:
    src = tmp_path / "src"
    records = make(40, 20)
    write_log(src, records, segment_bytes=400)
    spots = layout(src)
    last = spots[-1][0]
    assert len(layout_names(src)) >= 3
    tail = [s for s in spots if s[0] == last][-3:]  # the last three records
    original = (src / last).read_bytes()
    keep_before = len(spots) - len(tail)
    work = tmp_path / "work"
    work.mkdir()
    for name in layout_names(src):
        if name != last:
            (work / name).write_bytes((src / name).read_bytes())
    caplog.set_level(logging.WARNING, logger="lockgate.wal")
    for cut in range(tail[0][1], len(original) + 1):
        (work / last).write_bytes(original[:cut])
        out, report = collect(work)
        whole = [s for s in tail if s[2] <= cut]
        valid_end = whole[-1][2] if whole else tail[0][1]
        assert out == records[:keep_before + len(whole)], cut
        assert report.truncated_bytes == cut - valid_end
        assert report.truncated_at == (None if cut == valid_end else (last, valid_end))
        assert (work / last).stat().st_size == valid_end
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(last in w for w in warnings)
    assert f"offset {tail[0][1]}" in warnings[0] and "dropping 1 bytes" in warnings[0]


@pytest.mark.parametrize("junk", [b"\0" * 4096, b"\0" * 5, b"\xff" * 30,
                                  struct.pack(">IIB", 10, 0, 1) + b"abc"])
def test_zeros_or_garbage_after_the_last_record(tmp_path: Path, junk: bytes) -> None:
    records = make(10)
    write_log(tmp_path, records)
    seg = tmp_path / segment_name(0)
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(junk)
    out, report = collect(tmp_path)
    assert out == records
    assert report.truncated_at == (segment_name(0), size)
    assert report.truncated_bytes == len(junk)
    assert seg.stat().st_size == size
    assert collect(tmp_path)[1].truncated_bytes == 0


def test_bad_crc_on_the_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    records = make(10)
    write_log(tmp_path, records)
    name, off, end = layout(tmp_path)[-1]
    seg = tmp_path / name
    data = bytearray(seg.read_bytes())
    data[end - 4:end] = b"XYZW"  # a half-written payload
    seg.write_bytes(bytes(data))
    out, report = collect(tmp_path)
    assert out == records[:-1] and report.truncated_at == (name, off)


def test_a_lost_sector_before_surviving_ones_is_a_torn_tail(tmp_path: Path) -> None:
    # A power cut may persist later pages of a write and not earlier ones.
    records = make(20, 1500)
    write_log(tmp_path, records)
    spots = layout(tmp_path)
    name, off, end = spots[10]
    zero_from = (off // 512 + 1) * 512
    seg = tmp_path / name
    data = bytearray(seg.read_bytes())
    data[zero_from:zero_from + 512] = bytes(512)
    seg.write_bytes(bytes(data))
    out, report = collect(tmp_path)
    assert zero_from + 512 <= end
    assert out == records[:10] and report.truncated_at == (name, off)
    assert report.truncated_bytes == len(data) - off


def test_torn_header_of_the_last_segment_is_replaced(tmp_path: Path) -> None:
    records = make(30)
    write_log(tmp_path, records, segment_bytes=300)
    end = sum(RECORD_HEADER_SIZE + len(p) for _, p in records)
    torn = tmp_path / segment_name(end)
    torn.write_bytes(encode_header(end)[:10])
    out, report = collect(tmp_path)
    assert out == records
    assert report.truncated_at == (segment_name(end), 0) and report.truncated_bytes == 10
    assert torn.read_bytes() == encode_header(end)
    with SegmentedLog.open(tmp_path) as log:
        assert log.appended_lsn == end
        log.append(encode_record(1, b"more"))
    assert collect(tmp_path)[0] == records + [(1, b"more")]


def test_truncate_false_reports_but_leaves_the_file(tmp_path: Path) -> None:
    write_log(tmp_path, make(3))
    seg = tmp_path / segment_name(0)
    with open(seg, "ab") as f:
        f.write(b"\0" * 100)
    size = seg.stat().st_size
    out, report = collect(tmp_path, truncate=False)
    assert len(out) == 3 and report.truncated_bytes == 100
    assert seg.stat().st_size == size


# -- corruption ----------------------------------------------------------------


def test_every_bit_flip_mid_last_segment_is_corruption(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_log(src, make(6))
    name, off, end = layout(src)[3]
    original = (src / name).read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    seg = work / name
    for pos in range(off, end):
        for bit in range(8):
            data = bytearray(original)
            data[pos] ^= 1 << bit
            seg.write_bytes(bytes(data))
            with pytest.raises(WalCorruption) as info:
                replay(work, lambda t, p: None)
            assert (info.value.path, info.value.offset) == (str(seg), off), (pos, bit)
            assert f"{seg}: offset {off}:" in str(info.value)


@pytest.mark.parametrize("field", [0, 3, 4, 8])  # length (high, low), crc, type
def test_bit_flip_in_the_last_records_header_is_corruption(tmp_path: Path, field: int) -> None:
    write_log(tmp_path, make(4))
    name, off, _ = layout(tmp_path)[-1]
    flip(tmp_path / name, off + field, 0 if field != 8 else 1)
    with pytest.raises(WalCorruption, match="flipped|damaged") as info:
        replay(tmp_path, lambda t, p: None)
    assert info.value.offset == off


def test_damage_over_several_records_before_a_valid_one(tmp_path: Path) -> None:
    write_log(tmp_path, make(8))
    spots = layout(tmp_path)
    name = spots[0][0]
    data = bytearray((tmp_path / name).read_bytes())
    for _, _, end in spots[2:5]:  # three payloads garbled, lengths intact
        data[end - 6:end] = b"QQQQQQ"
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(WalCorruption, match="valid record follows") as info:
        replay(tmp_path, lambda t, p: None)
    assert info.value.offset == spots[2][1]


def test_every_bit_flip_in_a_sealed_segment_is_corruption(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_log(src, make(30), segment_bytes=200)
    spots = layout(src)
    first_seg = spots[0][0]
    _, off, end = [s for s in spots if s[0] == first_seg][-1]  # its last record
    original = (src / first_seg).read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    for name in layout_names(src):
        (work / name).write_bytes((src / name).read_bytes())
    seg = work / first_seg
    for pos in list(range(0, SEGMENT_HEADER_SIZE)) + list(range(off, end)):
        for bit in (0, 5):
            data = bytearray(original)
            data[pos] ^= 1 << bit
            seg.write_bytes(bytes(data))
            with pytest.raises(WalCorruption) as info:
                replay(work, lambda t, p: None)
            assert info.value.path == str(seg)
            assert info.value.offset == (0 if pos < SEGMENT_HEADER_SIZE else off), pos


def test_a_sealed_segment_cut_short_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, make(30), segment_bytes=200)
    names = layout_names(tmp_path)
    spots = [s for s in layout(tmp_path) if s[0] == names[1]]
    seg = tmp_path / names[1]
    seg.write_bytes(seg.read_bytes()[:spots[-1][2] - 3])
    with pytest.raises(WalCorruption, match="sealed") as info:
        replay(tmp_path, lambda t, p: None)
    assert (info.value.path, info.value.offset) == (str(seg), spots[-1][1])
    # cut at a record boundary: the next segment's base no longer lines up
    seg.write_bytes(seg.read_bytes()[:spots[-1][1]])
    with pytest.raises(WalCorruption, match="starts at LSN") as info:
        replay(tmp_path, lambda t, p: None)
    assert (info.value.path, info.value.offset) == (str(tmp_path / names[2]), 0)


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, make(30), segment_bytes=200)
    names = layout_names(tmp_path)
    (tmp_path / names[2]).unlink()
    with pytest.raises(WalCorruption, match="starts at LSN") as info:
        replay(tmp_path, lambda t, p: None)
    assert info.value.path == str(tmp_path / names[3])


@pytest.mark.parametrize("pos", [0, 7, 8, 12, 19, 20, 23])
def test_a_damaged_last_segment_header_is_corruption(tmp_path: Path, pos: int) -> None:
    write_log(tmp_path, make(3))
    flip(tmp_path / segment_name(0), pos, 2)
    with pytest.raises(WalCorruption) as info:
        replay(tmp_path, lambda t, p: None)
    assert info.value.offset == 0


def test_a_header_naming_another_base_is_corruption(tmp_path: Path) -> None:
    write_log(tmp_path, make(3))
    seg = tmp_path / segment_name(0)
    seg.write_bytes(encode_header(5) + seg.read_bytes()[SEGMENT_HEADER_SIZE:])
    with pytest.raises(WalCorruption, match="does not match the file name"):
        replay(tmp_path, lambda t, p: None)


def test_an_unknown_version_is_refused(tmp_path: Path) -> None:
    write_log(tmp_path, make(3))
    seg = tmp_path / segment_name(0)
    seg.write_bytes(encode_header(0, version=99) + seg.read_bytes()[SEGMENT_HEADER_SIZE:])
    with pytest.raises(WalVersionError, match="version 99"):
        replay(tmp_path, lambda t, p: None)


def test_length_over_the_limit_in_a_sealed_segment(tmp_path: Path) -> None:
    write_log(tmp_path, make(30), segment_bytes=200)
    name, off, _ = layout(tmp_path)[1]
    seg = tmp_path / name
    data = bytearray(seg.read_bytes())
    data[off:off + 4] = struct.pack(">I", MAX_PAYLOAD + 1)
    seg.write_bytes(bytes(data))
    with pytest.raises(WalCorruption, match="MAX_PAYLOAD"):
        replay(tmp_path, lambda t, p: None)


# -- reopen --------------------------------------------------------------------


def test_reopen_after_a_torn_tail_continues_and_replays_everything(tmp_path: Path) -> None:
    first = make(50)
    write_log(tmp_path, first, segment_bytes=500)
    name, off, end = layout(tmp_path)[-1]
    seg = tmp_path / name
    seg.write_bytes(seg.read_bytes()[:end - 5])
    out, report = collect(tmp_path)
    assert out == first[:-1] and report.truncated_at == (name, off)

    second = [(3, b"after %d" % i) for i in range(60)]
    with SegmentedLog.open(tmp_path, segment_bytes=500) as log:
        assert log.appended_lsn == report.end_lsn
        for t, p in second:
            log.append(encode_record(t, p))
    out, report = collect(tmp_path)
    assert out == first[:-1] + second
    assert report.truncated_bytes == 0 and report.end_lsn == report.bytes
