"""A helper process that fdatasyncs files for the broker, so the event loop goes on.

An fdatasync in the broker's own thread stops every connection until it returns; in a
worker thread it still needs the GIL to start and to report back, which the busy event
loop holds for milliseconds at a time. The helper is a separate process, so neither
applies: the broker hands it a file (the descriptor itself, over a Unix socket), goes
on serving, and later finds the result waiting on the socket.

Rules:
1. One request at a time: ``send(fd)`` sends the descriptor (``SCM_RIGHTS``; the
   helper gets its own reference, so the broker may close or replace its copy at
   once) and returns; ``receive()`` waits, shielded from cancellation, for the 4-byte
   answer: 0, or the errno of the failed fdatasync (raised as ``OSError``).
2. The helper exits when its socket reaches end of file: when ``close`` is called or
   the broker dies, however it dies. It holds no other file of the broker's.
3. A helper that is gone (exited, killed) makes ``send`` and ``receive`` raise
   ``SyncHelperGone``: the data is still written, and the caller syncs it another way.

This file is also the helper's program: ``python -I -S synchelper.py FD`` imports
nothing but the standard library.
"""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

__all__ = ["SyncHelper", "SyncHelperGone"]

_REPLY_BYTES = 4


class SyncHelperGone(OSError):
    """The helper process exited or stopped answering; nothing it was asked is known."""


class SyncHelper:
    """The broker's end of one helper process; ``start`` it, ``close`` it when done."""

    def __init__(self, sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        self._sock = sock
        self._proc = proc
        self._gone = False

    @classmethod
    def start(cls) -> SyncHelper:
        """Spawn the helper process (a bare interpreter running this file)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(ours, proc)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def gone(self) -> bool:
        """True once the helper was found gone (or closed): ask it nothing more."""
        return self._gone

    def send(self, fd: int) -> None:
        """Ask the helper to fdatasync ``fd`` (it gets its own reference at once); no
        wait. ``receive`` the answer before the next ``send``. Raises ``SyncHelperGone``."""
        if self._gone:
            raise SyncHelperGone(errno.EPIPE, "the sync helper is gone")
        try:
            socket.send_fds(self._sock, [b"s"], [fd])
        except OSError as exc:
            self._gone = True
            raise SyncHelperGone(exc.errno or errno.EPIPE, f"the sync helper is gone: {exc}") from exc

    async def receive(self) -> None:
        """Wait for the answer to ``send``, meanwhile other tasks run; not cancellable.

        Raises ``OSError`` with the errno the fdatasync failed with, or
        ``SyncHelperGone``.
        """
        import trio  # here, not at the top: the helper's program imports no trio

        try:
            with trio.CancelScope(shield=True):
                await trio.lowlevel.wait_readable(self._sock)
            reply = self._sock.recv(_REPLY_BYTES)
        except OSError as exc:
            self._gone = True
            raise SyncHelperGone(exc.errno or errno.EPIPE, f"the sync helper is gone: {exc}") from exc
        if len(reply) != _REPLY_BYTES:
            self._gone = True
            raise SyncHelperGone(errno.EPIPE, "the sync helper exited")
        code = int.from_bytes(reply, "big")
        if code:
            raise OSError(code, os.strerror(code))

    def close(self) -> None:
        """Stop the helper (it exits at end of file) and reap it. Idempotent."""
        self._gone = True
        self._sock.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def serve(sock: socket.socket) -> None:
    """The helper's loop: fdatasync each descriptor received, answer, close it."""
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 16, 1)
        except ConnectionError:
            return
        if not msg:
            return  # rule 2: the broker closed its end or died
        code = errno.EBADF
        for fd in fds:
            try:
                os.fdatasync(fd)
                code = 0
            except OSError as exc:
                code = exc.errno or errno.EIO
            finally:
                os.close(fd)
        try:
            sock.send(code.to_bytes(_REPLY_BYTES, "big"))
        except OSError:
            return  # the broker is gone


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
