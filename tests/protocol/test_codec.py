"""The sans-IO codec: round trips, arbitrary splits, malformed input."""
from __future__ import annotations

import gc
import struct
import weakref

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    MAX_REQUEST_ID,
    NEED_DATA,
    Connection,
    Error,
    ErrorCode,
    FrameDecoder,
    ProtocolError,
    Push,
    Reply,
    Request,
    decode_frame,
    encode_frame,
)

# msgpack values as the codec maps them: str keys, bytes as bin, ints, floats, nil, bool.
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False), st.text(max_size=20), st.binary(max_size=40),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
args_maps = st.dictionaries(st.text(max_size=12), values, max_size=6)
request_ids = st.integers(min_value=0, max_value=MAX_REQUEST_ID)

requests = st.builds(lambda i, op, a: Request(id=i, op=op, args=a), request_ids, st.text(max_size=16), args_maps)
replies = st.builds(lambda i, r: Reply(id=i, result=r), request_ids, args_maps)
errors = st.builds(
    lambda i, c, m, d: Error(id=i, code=c, message=m, details=d),
    st.one_of(st.none(), request_ids), st.sampled_from(list(ErrorCode)), st.text(max_size=30), args_maps,
)
pushes = st.builds(lambda n, p: Push(name=n, payload=p), st.text(max_size=12), args_maps)
frames = st.one_of(requests, replies, errors, pushes)


@given(frames)
def test_any_frame_round_trips(frame: object) -> None:
    assert decode_frame(encode_frame(frame)) == frame  # type: ignore[arg-type]


@given(st.lists(requests, min_size=1, max_size=8), st.data())
def test_stream_split_anywhere_yields_same_frames(reqs: list[Request], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(r) for r in reqs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    conn = Connection("server")
    got: list[object] = []
    prev = 0
    for cut in cuts + [len(stream)]:
        conn.receive_data(stream[prev:cut])
        prev = cut
        got.extend(conn.frames())
    assert got == reqs
    assert conn.next_frame() is NEED_DATA


@given(st.lists(st.one_of(replies, errors, pushes), min_size=1, max_size=8), st.data())
def test_client_side_split_anywhere(server_frames: list[object], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(f) for f in server_frames)  # type: ignore[arg-type]
    conn = Connection("client")
    got: list[object] = []
    step = data.draw(st.integers(1, 7))
    for i in range(0, len(stream), step):
        conn.receive_data(stream[i : i + step])
        got.extend(conn.frames())
    assert got == server_frames


def test_length_over_limit_is_refused_before_buffering() -> None:
    dec = FrameDecoder(max_frame=1000)
    dec.feed(struct.pack(">I", 1001))
    with pytest.raises(ProtocolError) as info:
        dec.next_body()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE and info.value.fatal
    assert dec.buffered == 4  # nothing of the body was awaited or kept


def test_waiting_says_whether_next_body_needs_more_bytes() -> None:
    frame = struct.pack(">I", 5) + b"hello"
    dec = FrameDecoder(max_frame=1000)
    assert dec.waiting  # nothing yet
    for i in range(1, len(frame)):  # a header, then a body, byte by byte
        dec.feed(frame[i - 1:i])
        assert dec.waiting and dec.next_body() is None
    dec.feed(frame[-1:] + struct.pack(">I", 1001)[:2])  # the frame's last byte and half the next header
    assert not dec.waiting and dec.next_body() == b"hello"
    assert dec.waiting
    dec.feed(struct.pack(">I", 1001)[2:])  # a length over the limit: it raises at once
    assert not dec.waiting


def test_frame_at_the_limit_is_accepted() -> None:
    body = msgpack.packb([0, 1, "ping", {"pad": b"x" * 100}])
    dec = FrameDecoder(max_frame=len(body))
    dec.feed(struct.pack(">I", len(body)) + body)
    assert dec.next_body() == body


def test_undecodable_body_is_fatal_and_sticks() -> None:
    conn = Connection("server")
    conn.receive_data(struct.pack(">I", 1) + b"\xc1")  # 0xc1 is never valid msgpack
    with pytest.raises(ProtocolError) as info:
        conn.next_frame()
    assert info.value.code == ErrorCode.MALFORMED_FRAME and info.value.fatal
    with pytest.raises(ProtocolError):
        conn.next_frame()


def test_a_broken_connection_is_freed_without_the_cyclic_collector() -> None:
    """The error a broken connection keeps holds no traceback: no reference cycle runs
    through the connection (and the frames of its callers), so it goes as soon as its
    last reference does, as a broker's connection closed by a fatal frame must."""
    gc.collect()
    gc.disable()
    try:
        conn = Connection("server")
        conn.receive_data(struct.pack(">I", 1) + b"\xc1")
        for _ in range(2):
            with pytest.raises(ProtocolError) as info:
                conn.next_frame()
            assert info.value.code == ErrorCode.MALFORMED_FRAME
            del info
        gone = weakref.ref(conn)
        del conn
        assert gone() is None
    finally:
        gc.enable()


def test_trailing_bytes_in_body_are_malformed() -> None:
    body = msgpack.packb([0, 1, "ping", {}]) + b"\x00"
    conn = Connection("server")
    conn.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError) as info:
        conn.next_frame()
    assert info.value.code == ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize(
    ("value", "rid", "field"),
    [
        ({"op": "ping"}, None, None),
        ([0, 7, "ping"], 7, None),
        ([1, 7, "ping", {}], 7, None),
        ([0, -1, "ping", {}], None, "id"),
        ([0, "7", "ping", {}], None, "id"),
        ([0, 1.5, "ping", {}], None, "id"),
        ([0, 7, 5, {}], 7, "op"),
        ([0, 7, "ping", []], 7, "args"),
    ],
)
def test_wrong_request_shape_is_not_fatal(value: object, rid: int | None, field: str | None) -> None:
    body = msgpack.packb(value)
    ok = encode_frame(Request(id=9, op="ping", args={}))
    conn = Connection("server")
    conn.receive_data(struct.pack(">I", len(body)) + body + ok)
    with pytest.raises(ProtocolError) as info:
        conn.next_frame()
    assert info.value.code == ErrorCode.MALFORMED_REQUEST and not info.value.fatal
    assert info.value.request_id == rid
    assert info.value.details.get("field") == field
    assert conn.next_frame() == Request(id=9, op="ping", args={})  # the stream goes on


@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_another_exception(junk: bytes) -> None:
    conn = Connection("server", max_frame=64 * 1024)
    conn.receive_data(junk)
    try:
        conn.frames()
    except ProtocolError:
        pass
