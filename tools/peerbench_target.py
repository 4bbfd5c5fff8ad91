"""A peerbench target for Lockgate: run Lockgate beside its peers in one benchmark.

Used by ``../shared/peerbench`` (not imported by Lockgate itself)::

    ../shared/peerbench/run.sh \\
      --target "lockgate=$PWD/tools/peerbench_target.py" \\
      --target-cmd "lockgate=$PWD/.venv/bin/python -m broker --host {host} --port {port} --data {dir}" \\
      --target-durability "lockgate=WAL fdatasync (group commit) before the reply" \\
      --ref "redis streams always"

Run the README's install command first: peerbench runs under its own Python, so this
module puts the repository's ``.venv`` packages (msgpack) on its path.
It speaks the wire protocol with raw sockets and pre-encoded frames, as the harness
asks of every adapter: produce pipelines single-message publishes (one confirm each);
consume keeps one consume of up to ``window`` messages in flight and sends each batch's
ack with the next consume, counting only acks the broker has answered.
"""
from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

_VENV = Path(__file__).resolve().parents[1] / ".venv" / "lib"
sys.path.extend(str(p) for p in _VENV.glob("python3*/site-packages"))

import msgpack  # noqa: E402
from peerbench.common import connect, pipelined_requests, recv_some  # noqa: E402
from peerbench.targets.base import Client as BaseClient  # noqa: E402

_LEN = struct.Struct(">I")
_pack = msgpack.Packer(use_bin_type=True).pack


def _frame(rid: int, op: str, args: dict) -> bytes:
    body = _pack([0, rid, op, args])
    return _LEN.pack(len(body)) + body


def _split(buf: bytearray) -> tuple[list[bytes], int]:
    """Whole frame bodies at the front of ``buf`` and the bytes they take."""
    bodies, off, n = [], 0, len(buf)
    while off + 4 <= n:
        (length,) = _LEN.unpack_from(buf, off)
        if off + 4 + length > n:
            break
        bodies.append(bytes(buf[off + 4 : off + 4 + length]))
        off += 4 + length
    return bodies, off


def _count_replies(buf: bytearray) -> tuple[int, int]:
    bodies, used = _split(buf)
    for body in bodies:
        if body[:2] != b"\x93\x01":  # [1, id, result]: anything else is an ERROR frame
            raise RuntimeError(f"error reply: {msgpack.unpackb(body)!r}")
    return len(bodies), used


class Client(BaseClient):
    def __init__(self, host: str, port: int, opts: dict) -> None:
        self.s = connect(host, port)
        self._call("hello", {"versions": [1], "client": "peerbench"})

    def _call(self, op: str, args: dict) -> object:
        self.s.sendall(_frame(1, op, args))
        buf = bytearray()
        while True:
            bodies, _ = _split(buf)
            if bodies:
                reply = msgpack.unpackb(bodies[0], raw=False)
                if reply[0] != 1:
                    raise RuntimeError(f"{op}: {reply!r}")
                return reply[2]
            buf += recv_some(self.s)

    def setup(self, queue: str) -> None:
        self._call("queue_create", {"queue": queue})

    def produce(self, queue: str, n: int, payload: bytes, window: int, deadline: float) -> int:
        one = _frame(1, "publish", {"queue": queue, "messages": [[payload]]})
        return pipelined_requests(self.s, one, n, window, deadline, _count_replies)

    def consume(self, queue: str, n: int, window: int, deadline: float) -> int:
        consume = _frame(2, "consume", {"queue": queue, "max": window})
        acked = 0
        ack = b""
        buf = bytearray()
        while acked < n and time.monotonic() < deadline:
            self.s.sendall(ack + consume)
            want = 2 if ack else 1
            replies: list[list] = []
            while len(replies) < want:
                buf += recv_some(self.s)
                bodies, used = _split(buf)
                del buf[:used]
                replies += [msgpack.unpackb(b, raw=False) for b in bodies]
            if ack:
                acked += replies[0][2]["acked"]
            got = replies[-1][2]["messages"]
            if not got:
                ack = b""
                break
            ack = _frame(3, "ack", {"queue": queue, "ids": [m[0] for m in got]})
        if ack:
            self.s.sendall(ack)
            while True:
                buf += recv_some(self.s)
                bodies, used = _split(buf)
                if bodies:
                    acked += msgpack.unpackb(bodies[0], raw=False)[2]["acked"]
                    break
        return acked

    def publish_sync(self, queue: str, payload: bytes) -> None:
        self._call("publish", {"queue": queue, "messages": [[payload]]})

    def cleanup(self, queue: str) -> None:
        self._call("queue_delete", {"queue": queue})

    def close(self) -> None:
        self.s.close()
