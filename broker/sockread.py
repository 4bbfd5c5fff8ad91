"""Reading a plain TCP connection straight from its socket.

An idle connection spends its life suspended in its read, so the frames suspended there
are most of what it costs. ``trio.SocketStream.receive_some`` waits under four frames of
its own (the stream, its error-translating context manager, the trio socket's ``recv``
and its non-blocking helper); :func:`receive_some` waits under one, with the same rules:
a cancellation point before reading, a checkpoint after a read that did not have to wait,
and a lost connection raised as ``trio.BrokenResourceError``. Measured with
``tools/idlebench``: about 1 KiB less per idle connection.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

import trio

#: What reads up to n bytes of a connection (empty at its end).
Receive = Callable[[int], Awaitable[bytes | bytearray]]


def receiver(stream: trio.abc.ReceiveStream) -> Receive:
    """How to read ``stream``: straight from the socket of a plain ``trio.SocketStream``,
    through the stream itself otherwise (TLS)."""
    if type(stream) is trio.SocketStream:
        fd = stream.socket.fileno()

        async def receive(max_bytes: int) -> bytes:
            return await receive_some(fd, max_bytes)

        return receive
    return stream.receive_some


async def receive_some(fd: int, max_bytes: int) -> bytes:
    """Up to ``max_bytes`` from the socket ``fd`` once some are there (b"": the peer closed it)."""
    await trio.lowlevel.checkpoint_if_cancelled()
    waited = False
    while True:
        try:
            data = os.read(fd, max_bytes)
        except BlockingIOError:
            waited = True
            await trio.lowlevel.wait_readable(fd)
            continue
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("the connection was closed") from exc
            raise trio.BrokenResourceError(f"reading the connection failed: {exc}") from exc
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return data
