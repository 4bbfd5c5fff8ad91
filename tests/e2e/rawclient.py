"""A minimal trio client speaking raw frames, for tests that send bad bytes on purpose."""
from __future__ import annotations

import struct
from typing import Any

import msgpack
import trio

from protocol import Connection, Encoder, Error, Reply


class RawClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection("client")
        self.enc = Encoder()
        self.next_id = 1

    @classmethod
    async def open(cls, addr: tuple[str, int], hello: bool = True) -> "RawClient":
        client = cls(await trio.open_tcp_stream(*addr))
        if hello:
            reply = await client.call("hello", {"versions": [1]})
            assert isinstance(reply, Reply), reply
        return client

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_body(self, value: Any) -> None:
        body = msgpack.packb(value, use_bin_type=True)
        await self.send_raw(struct.pack(">I", len(body)) + body)

    async def request(self, op: str, args: dict[str, Any]) -> int:
        rid = self.next_id
        self.next_id += 1
        await self.send_raw(self.enc.request(rid, op, args))
        return rid

    async def frame(self) -> Any:
        """The next frame from the server, or None at EOF."""
        while True:
            frames = self.conn.frames()
            if frames:
                first, rest = frames[0], frames[1:]
                if rest:  # put the others back in order
                    self.conn = _Prefilled(self.conn, rest)  # type: ignore[assignment]
                return first
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return None
            self.conn.receive_data(data)

    async def call(self, op: str, args: dict[str, Any]) -> Reply | Error:
        rid = await self.request(op, args)
        frame = await self.frame()
        assert frame.id == rid, (frame, rid)
        return frame

    async def aclose(self) -> None:
        await self.stream.aclose()


class _Prefilled:
    """A Connection wrapper that returns already-decoded frames first."""

    def __init__(self, inner: Connection, pending: list[Any]) -> None:
        self.inner = inner
        self.pending = list(pending)

    def frames(self) -> list[Any]:
        out, self.pending = self.pending, []
        return out + self.inner.frames()

    def receive_data(self, data: bytes) -> None:
        self.inner.receive_data(data)
