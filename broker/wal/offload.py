"""Reading a long log in a helper process while this one applies its records.

Replay spends its time per record in three parts of about equal cost: finding and
checking the record (header, slice, CRC), folding it (decoding the payload, merging
runs of publishes) and applying what the fold gives. For a long log ``replay`` forks
a helper that does the first part for each segment and ships the valid records over a
pipe in batches; whoever has the time folds them. The two processes run on two cores
at once.

Rules:
1. The helper reads the same segments in the same order and finds their records with
   the same ``_batches`` as an in-process replay. It stops after the first segment it
   cannot scan to the end, and before any segment whose header it cannot read: the
   parent makes every decision about damage itself.
2. For each batch (about ``BATCH_BYTES`` of log) the helper sends either the records
   (their types and payloads), which the parent folds, or ``Offload.fold`` of them,
   folded in the helper. It folds a batch itself when at least ``FOLD_AHEAD_BYTES``
   it sent are still unread in the pipe: the parent is busy, so the helper takes the
   work. Either way the parent calls ``Offload.apply`` on the same items, in log order.
3. At the end of each segment the helper sends where the scan stopped and how many
   records it read. The batches of a segment always arrive before its end.
4. An exception in the helper is sent as text and raised here as ``ReplayHelperError``;
   a helper that dies without a word is ``ReplayHelperError`` too. The parent kills and
   reaps the helper when replay ends, whichever way it ends.
"""
from __future__ import annotations

import array
import fcntl
import os
import signal
import termios
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgpack

__all__ = ["FOLD_AHEAD_BYTES", "OFFLOAD_MIN_BYTES", "Offload", "ReplayHelperError"]

#: Logs shorter than this (bytes from the start LSN) are read in-process: a small
#: replay is over before a helper would pay for its fork.
OFFLOAD_MIN_BYTES = 16 << 20
#: The helper folds a batch itself while at least this much it sent is unread (rule 2).
FOLD_AHEAD_BYTES = 128 << 10

_RECORDS = 0
_FOLDED = 1
_DONE = 2
_FAILED = 3
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 1 << 20


class ReplayHelperError(RuntimeError):
    """The replay helper process failed or died; the message says how."""


@dataclass(frozen=True, slots=True)
class Offload:
    """What ``replay`` hands each batch of valid records to, instead of an ``apply``
    per record: ``apply(fold(types, payloads))``, batches in log order."""

    #: ``fold(types, payloads) -> items``: ``types[i]`` is the type of ``payloads[i]``.
    #: Runs in this process or in the helper, so it must read nothing but its
    #: arguments, and its items must be msgpack values.
    fold: Callable[[bytes, list[bytes]], list[Any]]
    #: ``apply(items)``: called here, never in the helper.
    apply: Callable[[list[Any]], object]
    #: Use a helper only when at least this many log bytes are to be replayed.
    min_bytes: int = OFFLOAD_MIN_BYTES


#: ``read(i)``: segment ``i``'s bytes and the offset of its first record to read, or
#: None where the helper must stop (rule 1).
ReadSegment = Callable[[int], "tuple[bytes, int] | None"]
#: ``batches(data, offset)``: replay's ``_batches``, ``(start, stop, types, payloads)``.
Batches = Callable[[bytes, int], Iterator[tuple[int, int, bytes, list[bytes]]]]


class Helper:
    """The parent's end of one helper process."""

    def __init__(self, pid: int, stream: BinaryIO, offload: Offload) -> None:
        self._pid = pid
        self._stream = stream
        # The helper is this program's own child: its messages need no size limit.
        self._unpacker = msgpack.Unpacker(stream, read_size=_PIPE_BYTES, max_buffer_size=0)
        self._offload = offload

    @classmethod
    def start(cls, segments: int, read: ReadSegment, batches: Batches, offload: Offload) -> Helper:
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
                _helper_main(w, segments, read, batches, offload.fold)
            except BaseException:  # noqa: BLE001 - it must never return into the parent's code
                status = 1
            finally:
                os._exit(status)
        os.close(w)
        return cls(pid, os.fdopen(r, "rb", buffering=0), offload)

    @property
    def pid(self) -> int:
        return self._pid

    def scan(self, apply_note: Callable[[int, int], str]) -> tuple[int, int]:
        """Apply the batches of the next segment; return (stop offset, records read)."""
        unpacker = self._unpacker
        fold, apply = self._offload.fold, self._offload.apply
        while True:
            try:
                message = next(unpacker)
            except StopIteration:
                raise ReplayHelperError("the replay helper process exited early") from None
            kind = message[0]
            if kind <= _FOLDED:
                try:
                    apply(message[3] if kind == _FOLDED else fold(message[3], message[4]))
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


def _unread(w: int, buf: array.array[int]) -> int:
    """Bytes written to the pipe ``w`` and not yet read (0 where that cannot be told)."""
    try:
        fcntl.ioctl(w, termios.FIONREAD, buf)
    except OSError:
        return 0
    return buf[0]


def _helper_main(w: int, segments: int, read: ReadSegment, batches: Batches,
                 fold: Callable[[bytes, list[bytes]], list[Any]]) -> None:
    pack = msgpack.Packer(use_bin_type=True).pack
    unread = array.array("i", [0])

    def send(message: list[Any]) -> None:
        body = memoryview(pack(message))
        while body:
            body = body[os.write(w, body):]

    try:
        for i in range(segments):
            got = read(i)
            if got is None:
                return
            data, stop = got
            count = 0
            for start, stop, types, payloads in batches(data, stop):
                count += len(payloads)
                if _unread(w, unread) >= FOLD_AHEAD_BYTES:  # rule 2: the parent is busy
                    send([_FOLDED, start, stop, fold(types, payloads)])
                else:
                    send([_RECORDS, start, stop, types, payloads])
            send([_DONE, stop, count])
            if stop != len(data):
                return
    except BrokenPipeError:
        raise
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        text = "".join(traceback.format_exception_only(exc)).strip()
        notes = getattr(exc, "__notes__", [])
        send([_FAILED, "; ".join([f"the replay helper failed: {text}", *notes])])
