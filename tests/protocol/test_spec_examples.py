"""The byte-exact examples in SPEC.md must agree with the codec, both ways, and with a
live broker: sent each example's request, in the order of §11, it must answer with the
example's reply bytes (the clock and the address aside, which §11 says vary).

SPEC.md holds fenced blocks marked ``spec-example``. Each block is a list of
``key: value`` lines; a line that does not start a new key continues the previous one
(so long hex strings and values can wrap), and lines starting with ``#`` are comments.

    name:          a unique name for the example
    request:       hex of the bytes the client sends (length prefix included)
    request-value: the decoded request body (absent when the bytes are not a whole frame)
    reply:         hex of the frame the server answers with
    reply-value:   the decoded reply body

Hex may contain whitespace. Values are written like msgpack values: ``nil``, ``true``,
``false``, integers, ``"str"``, ``b"bin"``, ``[arrays]`` and ``{maps}`` (Python literal
syntax otherwise). Comparison is strict: str is not bin, true is not 1, and map keys must
appear in the same order, since the order decides the bytes.

There are also ``spec-hash`` blocks (key, crc32c, shards, shard) for the shard-hash
worked example.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from enum import IntEnum
from pathlib import Path
from typing import Any

import crc32c
import msgpack
import pytest
import trio
import trio.testing

from protocol import (
    Connection,
    Encoder,
    Error,
    ErrorCode,
    ProtocolError,
    Request,
    decode_frame,
    encode_frame,
    frame_bytes,
    frame_to_obj,
    parse_request,
    parse_server_frame,
    shard_for_key,
    unpack_body,
)

SPEC = Path(__file__).resolve().parents[2] / "SPEC.md"
MIN_EXAMPLES = 8

_BLOCK = re.compile(r"^```(spec-example|spec-hash)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_KEY = re.compile(r"^([a-z][a-z0-9-]*):(.*)$")
_WORDS = {"nil": "None", "true": "True", "false": "False"}
#: Errors the sans-IO layer itself produces (before any handler runs).
_CODEC_ERRORS = {ErrorCode.MALFORMED_FRAME, ErrorCode.FRAME_TOO_LARGE, ErrorCode.MALFORMED_REQUEST}


def _fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _KEY.match(line)
        if m:
            last = m.group(1)
            if last in fields:
                raise ValueError(f"duplicate key {last!r} in block:\n{text}")
            fields[last] = m.group(2).strip()
        elif last is None:
            raise ValueError(f"continuation line before any key: {line!r}")
        else:
            fields[last] += " " + line.strip()
    return fields


def _blocks(kind: str) -> list[dict[str, str]]:
    if not SPEC.exists():
        return []
    return [_fields(body) for k, body in _BLOCK.findall(SPEC.read_text(encoding="utf-8")) if k == kind]


def parse_value(text: str) -> Any:
    """A value line -> Python value (nil/true/false become None/True/False)."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME:
            if tok.string not in _WORDS:
                raise ValueError(f"unknown word {tok.string!r} in value {text!r}")
            tok = tok._replace(string=_WORDS[tok.string])
        out.append((tok.type, tok.string))
    return ast.literal_eval(tokenize.untokenize(out).strip())


def parse_hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def strict_equal(a: Any, b: Any) -> bool:
    """Equality that also compares msgpack types and map key order."""
    if isinstance(a, IntEnum):
        a = int(a)
    if isinstance(b, IntEnum):
        b = int(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(strict_equal(a[k], b[k]) for k in a)
    return a == b


EXAMPLES = _blocks("spec-example")
HASHES = _blocks("spec-hash")


def _ids(blocks: list[dict[str, str]]) -> list[str]:
    return [b.get("name", f"#{i}") for i, b in enumerate(blocks)]


def test_spec_has_enough_examples() -> None:
    assert SPEC.exists(), "SPEC.md is missing"
    assert len(EXAMPLES) >= MIN_EXAMPLES, f"found {len(EXAMPLES)} spec-example blocks, want >= {MIN_EXAMPLES}"
    names = [e.get("name") for e in EXAMPLES]
    assert all(names), "every example needs a name"
    assert len(set(names)) == len(names), "example names must be unique"
    for e in EXAMPLES:
        assert {"request", "reply", "reply-value"} <= set(e), f"{e.get('name')}: missing keys"
        assert set(e) <= {"name", "request", "request-value", "reply", "reply-value"}, e.get("name")
    assert HASHES, "the shard-hash worked example (spec-hash block) is missing"


@pytest.mark.parametrize("ex", EXAMPLES, ids=_ids(EXAMPLES))
def test_reply_bytes_match_value(ex: dict[str, str]) -> None:
    data = parse_hex(ex["reply"])
    value = parse_value(ex["reply-value"])
    frame = decode_frame(data)
    assert strict_equal(frame_to_obj(frame), value), f"decoded {frame_to_obj(frame)!r}"
    rebuilt = parse_server_frame(value)
    assert encode_frame(rebuilt) == data
    assert Encoder().encode(rebuilt) == data
    # A client-side connection reads the same frame from the byte stream.
    client = Connection("client")
    client.receive_data(data)
    assert client.frames() == [frame]


@pytest.mark.parametrize("ex", EXAMPLES, ids=_ids(EXAMPLES))
def test_request_bytes_match_value(ex: dict[str, str]) -> None:
    data = parse_hex(ex["request"])
    if "request-value" not in ex:
        return  # not a whole frame (e.g. an oversized length prefix); see the next test
    value = parse_value(ex["request-value"])
    assert int.from_bytes(data[:4], "big") == len(data) - 4, "length prefix does not match"
    assert strict_equal(unpack_body(data[4:]), value)
    try:
        request = parse_request(value)
    except ProtocolError:
        # Deliberately malformed: the bytes are still exactly what the codec's packer makes.
        assert frame_bytes(msgpack.Packer(use_bin_type=True).pack(value)) == data
        return
    assert decode_frame(data) == request
    assert encode_frame(request) == data
    assert Encoder().request(request.id, request.op, request.args) == data


@pytest.mark.parametrize("ex", EXAMPLES, ids=_ids(EXAMPLES))
def test_request_and_reply_belong_together(ex: dict[str, str]) -> None:
    request_bytes = parse_hex(ex["request"])
    reply_value = parse_value(ex["reply-value"])
    server = Connection("server")
    server.receive_data(request_bytes)
    if reply_value[0] == 2 and reply_value[2] in {int(c) for c in _CODEC_ERRORS}:
        # The server's own sans-IO layer must produce exactly this error frame.
        with pytest.raises(ProtocolError) as info:
            server.next_frame()
        exc = info.value
        produced = Encoder().error(exc.request_id, exc.code, exc.message, exc.details)
        assert produced == parse_hex(ex["reply"])
        return
    frames = server.frames()
    assert len(frames) == 1 and isinstance(frames[0], Request)
    assert reply_value[1] == frames[0].id, "the reply must echo the request id"


@pytest.mark.parametrize("ex", HASHES, ids=[h.get("key", "?") for h in HASHES])
def test_shard_hash_example(ex: dict[str, str]) -> None:
    key = parse_value(ex["key"])
    assert type(key) is bytes
    assert crc32c.crc32c(key) == int(ex["crc32c"], 0)
    shards = int(ex["shards"])
    assert shard_for_key(key, shards) == int(ex["shard"])


def test_the_error_code_table_lists_every_code() -> None:
    rows = re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", SPEC.read_text(encoding="utf-8"), re.M)
    assert {int(n): name for n, name in rows} == {c.value: c.name for c in ErrorCode}


# -- the examples against a live broker ----------------------------------------------------

#: SPEC §11: "the broker's clock reads 1700000000000 and its address is 127.0.0.1:7878".
#: A live broker's differ; everything else in its replies must be SPEC's.
_SPEC_NOW = 1700000000000
_SPEC_ADDR = "127.0.0.1:7878"
_LIVE_ADDR = re.compile(r"127\.0\.0\.1:\d{1,5}")
#: An integer this close to SPEC's clock reading is a time on the broker's clock.
_TIME_WINDOW = 86_400_000
#: SPEC §11: examples 14-17 are a second connection and 18 a third; every other
#: example is on the first one (19 and on continue it after 13).
_CONNECTION_OF = {"handshake-required": 2, "unknown-op": 2, "unsupported-version": 2,
                  "malformed-request": 2, "frame-too-large": 3}


def _mask(live: Any, spec: Any, now: int) -> Any:
    """``live`` with what differs on a live broker taken from ``spec``: its address, and
    each time on its clock, which must lie as far from its ``now`` as SPEC's from
    1700000000000 (the clock stands still during the examples)."""
    if isinstance(live, dict) and isinstance(spec, dict):
        return {key: _mask(value, spec.get(key), now) for key, value in live.items()}
    if isinstance(live, list) and isinstance(spec, list):
        return [_mask(x, y, now) for x, y in zip(live, spec)] + live[len(spec):]
    if type(live) is int and type(spec) is int and abs(spec - _SPEC_NOW) < _TIME_WINDOW:
        assert live - now == spec - _SPEC_NOW, f"{live} is {live - now} ms from now, SPEC's {spec} is " \
                                               f"{spec - _SPEC_NOW}"
        return spec
    if type(live) is str and spec == _SPEC_ADDR and _LIVE_ADDR.fullmatch(live):
        return spec
    return live


class _Frames:
    """Whole frames, as bytes, off one connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def next(self) -> bytes | None:
        """The next frame (length prefix included), or None at end of stream."""
        with trio.fail_after(10):
            while True:
                if len(self.buf) >= 4:
                    end = 4 + int.from_bytes(self.buf[:4], "big")
                    if len(self.buf) >= end:
                        frame = bytes(self.buf[:end])
                        del self.buf[:end]
                        return frame
                data = await self.stream.receive_some(1 << 16)
                if not data:
                    assert not self.buf, f"{len(self.buf)} bytes of a frame, then end of stream"
                    return None
                self.buf += data


async def test_every_example_against_a_live_broker(mock_clock: trio.testing.MockClock,
                                                   tmp_path: Path) -> None:
    """A fresh broker gets each example's request bytes, on the connections and in the
    order of §11, and answers with exactly SPEC's reply bytes, but for its address and
    its clock (times must keep their distance from the clock's reading, though).

    Message 3 of example 5 is delayed by a second and must stay delayed through the
    examples, so the trio clock stands still. (An autojump at 0 could jump it whenever
    every task waits, e.g. for bytes on their way over loopback on a busy machine.) It
    jumps only if every task stays blocked for 5 real seconds: then something waited for
    a timer, and the test fails instead of hanging."""
    from broker.config import BrokerConfig
    from broker.server import Broker

    mock_clock.autojump_threshold = 5.0
    connections: dict[int, _Frames] = {}
    now: int | None = None
    async with trio.open_nursery() as nursery:
        broker = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data"))
        await nursery.start(broker.serve)
        host, port = broker.addr.rsplit(":", 1)
        started = trio.current_time()
        for ex in EXAMPLES:
            which = _CONNECTION_OF.get(ex["name"], 1)
            if which not in connections:
                connections[which] = _Frames(await trio.open_tcp_stream(host, int(port)))
            conn = connections[which]
            await conn.stream.send_all(parse_hex(ex["request"]))
            got = await conn.next()
            assert got is not None, f"{ex['name']}: the connection closed instead of replying"
            live_value = unpack_body(got[4:])
            # The live bytes are the codec's encoding of their value, so the value with
            # the differing fields replaced encodes to what the bytes would be with them.
            assert encode_frame(parse_server_frame(live_value)) == got, ex["name"]
            if now is None and live_value[0] == 1 and "now_ms" in live_value[2]:
                now = live_value[2]["now_ms"]  # ping: the broker's clock
            spec_value = parse_value(ex["reply-value"])
            masked = encode_frame(parse_server_frame(_mask(live_value, spec_value, now or _SPEC_NOW)))
            assert masked == parse_hex(ex["reply"]), (
                f"{ex['name']}: the broker replied {live_value!r}\nSPEC §11 says {spec_value!r}")
            if ex["name"] == "frame-too-large":  # then the server closes the connection
                assert await conn.next() is None
        assert now is not None and trio.current_time() == started  # nothing waited for the clock
        # After the malformed request the second connection is still open (and still
        # has not said hello).
        await connections[2].stream.send_all(Encoder().request(5, "ping", {}))
        reply = decode_frame(await connections[2].next() or b"")
        assert isinstance(reply, Error) and reply.code == ErrorCode.HANDSHAKE_REQUIRED
        for conn in connections.values():
            await conn.stream.aclose()
        nursery.cancel_scope.cancel()
