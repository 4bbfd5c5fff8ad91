"""Reading a long log in a helper process while this one applies its records.

A replay spends its time per record in two halves of about equal cost: finding and
checking the record (header, slice, CRC) and applying it (decoding the payload and
changing the state). For a long log ``replay`` forks a helper that does the first half
for each segment and ships the valid records over a pipe, in batches; this process
does the second half. The two run on two cores at once.

Rules:
1. The helper reads the same segments in the same order and scans each with the same
   ``_scan`` as an in-process replay. It stops after the first segment it cannot scan
   to the end, and before any segment whose header it cannot read: the parent makes
   every decision about damage itself.
2. About every ``OFFLOAD_CHUNK_BYTES`` of log it sends the valid records scanned since
   the last batch (their types and payloads), and at the end of a segment where the
   scan stopped and how many records it read. The batches of a segment always arrive
   before its end, and ``Offload.apply_batch`` gets them in log order.
3. An exception in the helper is sent as text and raised here as ``ReplayHelperError``;
   a helper that dies without a word is ``ReplayHelperError`` too. The parent kills and
   reaps the helper when replay ends, whichever way it ends.
"""
from __future__ import annotations

import fcntl
import os
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgpack

__all__ = ["OFFLOAD_CHUNK_BYTES", "OFFLOAD_MIN_BYTES", "Offload", "ReplayHelperError"]

#: Logs shorter than this (bytes from the start LSN) are read in-process: a small
#: replay is over before a helper would pay for its fork.
OFFLOAD_MIN_BYTES = 16 << 20
#: Log bytes the helper scans between two batches (at least one record each).
OFFLOAD_CHUNK_BYTES = 1 << 20

_BATCH = 0
_DONE = 1
_FAILED = 2
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1 << 20


class ReplayHelperError(RuntimeError):
    """The replay helper process failed or died; the message says how."""


@dataclass(frozen=True, slots=True)
class Offload:
    """What ``replay`` calls instead of ``apply`` when a helper reads the log."""

    #: ``apply_batch(types, payloads)``: valid records in log order, ``types[i]`` the
    #: type of ``payloads[i]``; called here, never in the helper.
    apply_batch: Callable[[bytes, list[bytes]], object]
    #: Use a helper only when at least this many log bytes are to be replayed.
    min_bytes: int = OFFLOAD_MIN_BYTES


#: ``read(i)``: segment ``i``'s bytes and the offset of its first record to read, or
#: None where the helper must stop (rule 1).
ReadSegment = Callable[[int], "tuple[bytes, int] | None"]
#: ``scan(data, apply, offset, until) -> (stop offset, records)``: replay's scan.
Scan = Callable[[bytes, Callable[[int, bytes], object], int, int], "tuple[int, int]"]


class Helper:
    """The parent's end of one helper process."""

    def __init__(self, pid: int, stream: BinaryIO, apply_batch: Callable[[bytes, list[bytes]], object]) -> None:
        self._pid = pid
        self._stream = stream
        # The helper is this program's own child: its messages need no size limit.
        self._unpacker = msgpack.Unpacker(stream, read_size=_PIPE_BYTES, max_buffer_size=0)
        self._apply_batch = apply_batch

    @classmethod
    def start(cls, segments: int, read: ReadSegment, scan: Scan, offload: Offload) -> Helper:
        """Fork a helper that scans segments ``0 .. segments - 1`` in order."""
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe only means more wake-ups
        pid = os.fork()
        if pid == 0:  # the helper
            status = 0
            try:
                os.close(r)
                _helper_main(w, segments, read, scan)
            except BaseException:  # noqa: BLE001 - it must never return into the parent's code
                status = 1
            finally:
                os._exit(status)
        os.close(w)
        return cls(pid, os.fdopen(r, "rb", buffering=0), offload.apply_batch)

    @property
    def pid(self) -> int:
        return self._pid

    def scan(self, apply_note: Callable[[int, int], str]) -> tuple[int, int]:
        """Apply the batches of the next segment; return (stop offset, records read)."""
        unpacker = self._unpacker
        apply_batch = self._apply_batch
        while True:
            try:
                message = next(unpacker)
            except StopIteration:
                raise ReplayHelperError("the replay helper process exited early") from None
            kind = message[0]
            if kind == _BATCH:
                try:
                    apply_batch(message[3], message[4])
                except BaseException as exc:
                    exc.add_note(apply_note(message[1], message[2]))
                    raise
            elif kind == _DONE:
                return message[1], message[2]
            else:
                raise ReplayHelperError(message[1])

    def close(self) -> None:
        """Stop the helper if it still runs and reap it."""
        self._stream.close()
        try:
            os.kill(self._pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self._pid, 0)


def _helper_main(w: int, segments: int, read: ReadSegment, scan: Scan) -> None:
    pack = msgpack.Packer(use_bin_type=True).pack
    types = bytearray()
    payloads: list[bytes] = []
    add_type, add_payload = types.append, payloads.append

    def collect(rtype: int, payload: bytes) -> None:
        add_type(rtype)
        add_payload(payload)

    def send(message: list[Any]) -> None:
        body = memoryview(pack(message))
        while body:
            body = body[os.write(w, body):]

    try:
        for i in range(segments):
            got = read(i)
            if got is None:
                return
            data, off = got
            count = 0
            while True:
                start, until = off, off + OFFLOAD_CHUNK_BYTES
                off, k = scan(data, collect, off, until)
                count += k
                if payloads:
                    send([_BATCH, start, off, bytes(types), payloads])
                    types.clear()
                    payloads.clear()
                if off < until:  # a bad record or the end, not the batch's limit
                    break
            send([_DONE, off, count])
            if off != len(data):
                return
    except BrokenPipeError:
        raise
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        text = "".join(traceback.format_exception_only(exc)).strip()
        notes = getattr(exc, "__notes__", [])
        send([_FAILED, "; ".join([f"the replay helper failed: {text}", *notes])])
