"""Record framing: layout, CRC, limits, and what counts as a valid record."""
from __future__ import annotations

import struct

import pytest
from crc32c import crc32c
from hypothesis import given
from hypothesis import strategies as st

from broker.wal.record import (
    MAX_PAYLOAD,
    RECORD_HEADER_SIZE,
    decode_record,
    encode_record,
    record_problem,
)


def test_layout_is_length_crc_type_payload() -> None:
    rec = encode_record(3, b"hello")
    assert RECORD_HEADER_SIZE == 9
    assert rec[:4] == struct.pack(">I", 5)
    assert rec[4:8] == struct.pack(">I", crc32c(b"\x03hello"))
    assert rec[8] == 3
    assert rec[9:] == b"hello"


def test_known_vector() -> None:
    # Fixed bytes, so an offline reader in another language can check itself.
    assert encode_record(1, b"123456789").hex() == "00000009706871ee01313233343536373839"


@given(st.integers(1, 255), st.binary(max_size=2000))
def test_round_trip(rtype: int, payload: bytes) -> None:
    rec = encode_record(rtype, payload)
    assert len(rec) == RECORD_HEADER_SIZE + len(payload)
    assert record_problem(rec, 0) is None
    assert decode_record(rec) == (rtype, payload)


@given(st.integers(1, 255), st.binary(min_size=1, max_size=200), st.data())
def test_any_single_bit_flip_is_detected(rtype: int, payload: bytes, data: st.DataObject) -> None:
    rec = bytearray(encode_record(rtype, payload))
    bit = data.draw(st.integers(0, len(rec) * 8 - 1))
    rec[bit // 8] ^= 1 << (bit % 8)
    assert record_problem(bytes(rec), 0) is not None


@given(st.integers(1, 255), st.binary(max_size=100), st.data())
def test_any_cut_is_detected(rtype: int, payload: bytes, data: st.DataObject) -> None:
    rec = encode_record(rtype, payload)
    cut = data.draw(st.integers(0, len(rec) - 1))
    assert record_problem(rec[:cut], 0) is not None


def test_empty_payload() -> None:
    assert encode_record(7, b"") == struct.pack(">IIB", 0, crc32c(b"\x07"), 7)
    assert decode_record(encode_record(7, b"")) == (7, b"")


@pytest.mark.parametrize("rtype", [0, 256, -1])
def test_type_out_of_range_is_refused(rtype: int) -> None:
    with pytest.raises(ValueError, match="type"):
        encode_record(rtype, b"x")


def test_oversized_payload_is_refused() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return MAX_PAYLOAD + 1

    with pytest.raises(ValueError, match="MAX_PAYLOAD"):
        encode_record(1, Huge(b""))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\0" * 9, "zero-filled"),
        (b"\0" * 5, "header cut short"),
        (struct.pack(">IIB", 0, 0, 0) + b"", "zero-filled"),
        (struct.pack(">IIB", 1, 0, 0) + b"x", "type 0"),
        (struct.pack(">IIB", MAX_PAYLOAD + 1, 0, 1), "exceeds MAX_PAYLOAD"),
        (struct.pack(">IIB", 10, 0, 1) + b"abc", "cut short"),
        (struct.pack(">IIB", 3, 12345, 1) + b"abc", "CRC mismatch"),
    ],
)
def test_problems_are_named(data: bytes, match: str) -> None:
    problem = record_problem(data, 0)
    assert problem is not None and match in problem


def test_problem_at_an_offset() -> None:
    buf = encode_record(1, b"a") + encode_record(2, b"bc")
    assert record_problem(buf, 10) is None
    assert record_problem(buf + b"\0", len(buf)) is not None


def test_decode_refuses_trailing_bytes() -> None:
    with pytest.raises(ValueError, match="after the record"):
        decode_record(encode_record(1, b"a") + b"x")
