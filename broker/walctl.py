"""``brokerctl wal``: offline tools for a broker's write-ahead log.

``verify`` checks every segment and reports damage, ``dump`` prints records as JSON
lines, ``stats`` shows sizes, record counts and how many bytes are still live. They
read a stopped broker's directory (or a copy of it) and never change it: files are
only opened for reading, and a torn tail is reported, not truncated. The on-disk
format is specified in docs/wal.md; the section "Offline tools" describes these
commands.

A torn tail is classified exactly as ``broker.wal.replay`` does at start-up (the
same helper decides), so "would be truncated on start-up" means what it says.
It joins ``brokerctl`` through the ``lockgate.brokerctl`` entry point ``wal`` (the
SDK's command line never imports the broker) and must not import ``broker.server``.
"""
from __future__ import annotations

import base64
import bisect
import dataclasses
import gc
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import click
import msgpack

from broker.mutations import MUTATIONS, MutationType
from broker.records import decode
from broker.state import BrokerState
from broker.wal.checkpoint import list_snapshots, read_snapshot
from broker.wal.fileio import FileIO
from broker.wal.record import RECORD_HEADER, RECORD_HEADER_SIZE, record_problem
from broker.wal.replay import not_torn_proof  # the start-up torn-tail rule (replay rule 4)
from broker.wal.segment import (
    SEGMENT_HEADER_SIZE,
    SEGMENT_SUFFIX,
    TEMP_SUFFIX,
    WalCorruption,
    decode_header,
    segment_base,
)

__all__ = [
    "Problem",
    "Record",
    "SegmentFile",
    "WalLocation",
    "check_snapshot",
    "decode_mutation",
    "iter_log",
    "locate",
    "scan_segment",
    "wal",
]

EXIT_DAMAGED = 1

#: Snapshot files (a later feature): found and listed, not yet checked.
SNAPSHOT_SUFFIX = ".snap"
#: From this many bytes on, ``verify`` shows a progress bar (only when stderr is a terminal).
PROGRESS_BYTES = 1024 * 1024
#: The progress bar advances at least this many bytes at a time.
_PROGRESS_STEP = 1024 * 1024

ERROR, WARNING, NOTE = "error", "warning", "note"


# --- the read-only scanner -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentFile:
    """One ``{base:020d}.wal`` file; ``index`` is its position in name (= log) order."""

    index: int
    name: str
    path: str
    base: int
    size: int

    @property
    def end_lsn(self) -> int:
        """The LSN where the next segment must start (base + file size - header)."""
        return self.base + max(self.size - SEGMENT_HEADER_SIZE, 0)


@dataclass(frozen=True, slots=True)
class Problem:
    """Damage (``error``), a torn tail (``warning``) or something skipped (``note``)."""

    severity: str
    file: str
    offset: int
    reason: str
    #: Bytes a torn tail would drop (warnings only).
    bytes: int | None = None

    def text(self) -> str:
        if self.severity == WARNING and self.bytes is not None:
            return (f"warning: torn tail: {self.bytes} bytes at {self.file}:{self.offset}, "
                    f"would be truncated on start-up ({self.reason})")
        return f"{self.severity}: {self.file}:{self.offset}: {self.reason}"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "file": self.file,
                               "offset": self.offset, "reason": self.reason}
        if self.bytes is not None:
            out["bytes"] = self.bytes
        return out


@dataclass(frozen=True, slots=True)
class Record:
    """A valid record (length, type and CRC check out) at ``offset`` in ``segment``."""

    segment: SegmentFile
    offset: int
    lsn: int
    rtype: int
    payload: bytes

    @property
    def size(self) -> int:
        return RECORD_HEADER_SIZE + len(self.payload)


@dataclass(frozen=True, slots=True)
class WalLocation:
    """Where the segments are, and where snapshots may be."""

    given: str
    wal_dir: str
    #: The broker's data directory when known (DIR itself, or the parent of DIR/wal).
    data_dir: str | None
    segments: list[SegmentFile]
    #: Leftover ``*.wal.tmp`` files (ignored by replay, removed on start-up).
    temp_files: list[str]


def locate(path: str) -> WalLocation:
    """Find the WAL for DIR: DIR itself if it holds segments, else DIR/wal if present."""
    wal_dir = path
    if not _has_segments(path) and os.path.isdir(os.path.join(path, "wal")):
        wal_dir = os.path.join(path, "wal")
    if wal_dir != path:
        data_dir: str | None = path
    elif os.path.basename(os.path.normpath(os.path.abspath(path))) == "wal":
        data_dir = os.path.dirname(os.path.normpath(os.path.abspath(path)))
    else:
        data_dir = None
    names = sorted(os.listdir(wal_dir))
    found = []
    for name in names:
        base = segment_base(name)
        full = os.path.join(wal_dir, name)
        if base is not None and os.path.isfile(full):
            found.append((base, name, full, os.stat(full).st_size))
    found.sort()
    segments = [SegmentFile(i, name, full, base, size)
                for i, (base, name, full, size) in enumerate(found)]
    temp = [n for n in names if n.endswith(SEGMENT_SUFFIX + TEMP_SUFFIX)]
    return WalLocation(path, wal_dir, data_dir, segments, temp)


def _has_segments(path: str) -> bool:
    return any(segment_base(n) is not None for n in os.listdir(path))


def read_segment(seg: SegmentFile) -> bytes:
    """The whole file, opened read-only (never for writing)."""
    with open(seg.path, "rb") as f:
        return f.read()


def scan_segment(seg: SegmentFile, data: bytes, *, last: bool) -> Iterator[Record | Problem]:
    """Yield the segment's valid records, then at most one ``Problem`` where they stop.

    Mirrors ``broker.wal.replay``: a bad header or a bad record in a sealed segment is
    an error; in the last segment a bad record is a torn tail (warning) unless replay
    would call it corruption, and a file shorter than its header is a torn tail at 0.
    """
    n = len(data)
    if n < SEGMENT_HEADER_SIZE:
        reason = f"segment header cut short ({n} of {SEGMENT_HEADER_SIZE} bytes)"
        if last:
            yield Problem(WARNING, seg.name, 0,
                          reason + "; replaced by an empty segment on start-up", n)
        else:
            yield Problem(ERROR, seg.name, 0, reason + " in a sealed segment")
        return
    try:
        decode_header(data, seg.name, seg.base)
    except WalCorruption as exc:
        yield Problem(ERROR, seg.name, exc.offset, exc.reason)
        return
    unpack = RECORD_HEADER.unpack_from
    off = SEGMENT_HEADER_SIZE
    while off < n:
        problem = record_problem(data, off)
        if problem is not None:
            yield _stop_problem(seg, data, off, problem, last)
            return
        length, _, rtype = unpack(data, off)
        start = off + RECORD_HEADER_SIZE
        yield Record(seg, off, seg.base + off - SEGMENT_HEADER_SIZE, rtype,
                     data[start:start + length])
        off = start + length


def _stop_problem(seg: SegmentFile, data: bytes, off: int, problem: str, last: bool) -> Problem:
    rest = len(data) - off
    if not last:
        return Problem(ERROR, seg.name, off,
                       f"{problem} in a sealed segment ({rest} bytes from here not checked)")
    proof = not_torn_proof(data, off)
    if proof is not None:
        return Problem(ERROR, seg.name, off, f"{problem}; {proof}")
    return Problem(WARNING, seg.name, off, problem, rest)


def gap_problem(prev: SegmentFile, seg: SegmentFile) -> Problem | None:
    """An error when ``seg`` does not start where ``prev`` ends."""
    if seg.base == prev.end_lsn:
        return None
    return Problem(ERROR, seg.name, 0,
                   f"segment starts at LSN {seg.base} but {prev.name} ends at LSN {prev.end_lsn}")


def iter_log(segments: list[SegmentFile], *,
             wanted: Callable[[SegmentFile], bool] = lambda seg: True,
             ) -> Iterator[Record | Problem]:
    """Records of every wanted segment in log order, with gaps and damage as Problems.

    Unwanted segments are not read; a wanted segment that does not start where the
    one before it ends yields an error first. Callers that stop at the first error
    may simply stop iterating.
    """
    for seg in segments:
        if not wanted(seg):
            continue
        if seg.index:
            gap = gap_problem(segments[seg.index - 1], seg)
            if gap is not None:
                yield gap
        yield from scan_segment(seg, read_segment(seg), last=seg.index == len(segments) - 1)


def type_name(rtype: int) -> str:
    """``MutationType`` name, or the number as a string for a type this build lacks."""
    try:
        return MutationType(rtype).name
    except ValueError:
        return str(rtype)


def decode_mutation(rtype: int, payload: bytes) -> tuple[Any, str | None]:
    """``(mutation, None)``, or ``(None, why)`` when the broker could not apply it."""
    if rtype not in MUTATIONS:
        return None, f"unknown record type {rtype}"
    try:
        fields = msgpack.unpackb(payload, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        return None, f"{type_name(rtype)} payload is not valid msgpack ({exc})"
    if not isinstance(fields, list):
        return None, f"{type_name(rtype)} payload is not a msgpack array"
    try:
        return decode(rtype, payload), None
    except TypeError as exc:
        return None, f"{type_name(rtype)} payload has the wrong fields ({exc})"


# --- snapshots (hook) ----------------------------------------------------------------


def find_snapshots(loc: WalLocation) -> list[str]:
    """Paths of ``*.snap`` files in the data directory and the WAL directory."""
    dirs = dict.fromkeys(d for d in (loc.data_dir, loc.wal_dir) if d is not None)
    found = []
    for d in dirs:
        for name in sorted(os.listdir(d)):
            full = os.path.join(d, name)
            if name.endswith(SNAPSHOT_SUFFIX) and os.path.isfile(full):
                found.append(full)
    return found


def check_snapshot(path: str, shown: str) -> tuple[bool, list[Problem]]:
    """Check one snapshot file read-only: ``(checked, problems)``.

    Every record's CRC, the header and the end record are checked, as at start-up.
    """
    try:
        read_snapshot(FileIO(), path)
    except WalCorruption as exc:
        return True, [Problem(ERROR, shown, exc.offset, exc.reason)]
    except OSError as exc:
        return True, [Problem(ERROR, shown, 0, f"cannot read: {exc}")]
    return True, []


def newest_snapshot(loc: WalLocation) -> tuple[int, str] | None:
    """``(lsn, path)`` of the snapshot start-up would load, if any."""
    found = list_snapshots(FileIO(), loc.wal_dir)
    if not found:
        return None
    lsn, name = found[-1]
    return lsn, os.path.join(loc.wal_dir, name)


# --- verify --------------------------------------------------------------------------


@dataclass
class VerifyReport:
    directory: str
    segments: int = 0
    records: int = 0
    record_bytes: int = 0
    file_bytes: int = 0
    first_lsn: int = 0
    end_lsn: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    snapshots: int = 0
    snapshots_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    def count(self, severity: str) -> int:
        return sum(p.severity == severity for p in self.problems)

    def exit_code(self, strict: bool) -> int:
        if self.count(ERROR) or (strict and self.count(WARNING)):
            return EXIT_DAMAGED
        return 0

    def as_json(self, strict: bool) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "ok": self.exit_code(strict) == 0,
            "segments": self.segments,
            "records": self.records,
            "record_bytes": self.record_bytes,
            "file_bytes": self.file_bytes,
            "first_lsn": self.first_lsn,
            "end_lsn": self.end_lsn,
            "records_by_type": dict(sorted(self.by_type.items())),
            "snapshots": self.snapshots,
            "snapshots_checked": self.snapshots_checked,
            "errors": self.count(ERROR),
            "warnings": self.count(WARNING),
            "problems": [p.as_json() for p in self.problems],
        }


class _Progress:
    """A click progress bar over bytes on stderr, or nothing."""

    def __init__(self, total: int) -> None:
        stream = sys.stderr
        show = total >= PROGRESS_BYTES and _isatty(stream)
        self._bar = click.progressbar(length=total, label="verifying", file=stream) if show else None
        self._pending = 0

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self.flush()
            self._bar.__exit__(exc_type, exc, tb)

    def add(self, n: int) -> None:
        if self._bar is None:
            return
        self._pending += n
        if self._pending >= _PROGRESS_STEP:
            self.flush()

    def flush(self) -> None:
        if self._bar is not None and self._pending:
            self._bar.update(self._pending)
            self._pending = 0


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def verify_wal(loc: WalLocation) -> VerifyReport:
    """Check every segment and snapshot; collect every problem (never stops early)."""
    report = VerifyReport(loc.wal_dir, segments=len(loc.segments))
    segments = loc.segments
    report.file_bytes = sum(s.size for s in segments)
    if segments:
        report.first_lsn = report.end_lsn = segments[0].base
    with _Progress(report.file_bytes) as progress:
        for seg in segments:
            if seg.index:
                gap = gap_problem(segments[seg.index - 1], seg)
                if gap is not None:
                    report.problems.append(gap)
            data = read_segment(seg)
            done = 0
            for item in scan_segment(seg, data, last=seg.index == len(segments) - 1):
                if isinstance(item, Problem):
                    report.problems.append(item)
                    continue
                report.records += 1
                report.record_bytes += item.size
                report.end_lsn = item.lsn + item.size
                report.by_type[type_name(item.rtype)] += 1
                _, why = decode_mutation(item.rtype, item.payload)
                if why is not None:
                    report.problems.append(Problem(ERROR, seg.name, item.offset, why))
                progress.add(item.offset + item.size - done)
                done = item.offset + item.size
            progress.add(seg.size - done)
    for name in loc.temp_files:
        report.problems.append(Problem(
            NOTE, name, 0, "unfinished segment; ignored by replay, removed on start-up"))
    snapshot = newest_snapshot(loc)
    if segments and segments[0].base and (snapshot is None or segments[0].base > snapshot[0]):
        report.problems.append(Problem(
            ERROR, segments[0].name, 0, f"the log starts at LSN {segments[0].base} but no snapshot "
            "holds the state before it"))
    root = loc.data_dir or loc.wal_dir
    for path in find_snapshots(loc):
        report.snapshots += 1
        checked, problems = check_snapshot(path, os.path.relpath(path, root))
        report.snapshots_checked += checked
        report.problems.extend(problems)
    return report


def _print_verify(report: VerifyReport, strict: bool) -> None:
    click.echo(f"wal: {report.directory}")
    if not report.segments:
        click.echo("segments: none (an empty log)")
    else:
        click.echo(f"segments: {report.segments} (LSN {report.first_lsn} to {report.end_lsn}), "
                   f"{report.file_bytes} bytes on disk")
    click.echo(f"records: {report.records} ({report.record_bytes} bytes)")
    if report.by_type:
        width = max(map(len, report.by_type))
        for name, count in sorted(report.by_type.items()):
            click.echo(f"  {name.ljust(width)}  {count}")
    if not report.snapshots:
        click.echo("snapshots: none")
    else:
        click.echo(f"snapshots: {report.snapshots} ({report.snapshots_checked} checked)")
    for problem in report.problems:
        click.echo(problem.text())
    errors, warnings = report.count(ERROR), report.count(WARNING)
    if report.exit_code(strict):
        verdict = "DAMAGED"
    elif warnings:
        verdict = "ok (torn tail only)"
    else:
        verdict = "ok"
    click.echo(f"result: {verdict}: {errors} error(s), {warnings} warning(s)")


# --- stats ---------------------------------------------------------------------------


class _Origins:
    """Which segment holds the Publish record of each message (for live bytes).

    Per queue, ranges of message ids: ``starts[i]`` is the first id of a run whose
    bodies lie in segment ``segs[i]``. Ids only grow within a queue's lifetime.
    Dead-lettered messages get new ids in the target queue but keep their origin.
    """

    def __init__(self) -> None:
        self._ranges: dict[str, tuple[list[int], list[int]]] = {}

    def reset(self, queue: str) -> None:
        self._ranges[queue] = ([], [])

    def drop(self, queue: str) -> None:
        self._ranges.pop(queue, None)

    def add(self, queue: str, first_id: int, seg: int) -> None:
        starts, segs = self._ranges.setdefault(queue, ([], []))
        if starts and starts[-1] >= first_id:  # ids reused: the newest record wins
            cut = bisect.bisect_left(starts, first_id)
            del starts[cut:], segs[cut:]
        if segs and segs[-1] == seg:
            return
        starts.append(first_id)
        segs.append(seg)

    def of(self, queue: str, msg_id: int) -> int | None:
        ranges = self._ranges.get(queue)
        if ranges is None:
            return None
        i = bisect.bisect_right(ranges[0], msg_id) - 1
        return ranges[1][i] if i >= 0 else None


class _StatsApplier:
    """Applies mutations to a ``BrokerState`` with the broker's own appliers, told by
    them (as the state's ``StateObserver``) which segment each live message's body is in."""

    def __init__(self) -> None:
        self.origins = _Origins()
        self._segment = 0
        self.state = BrokerState()

    @property
    def state(self) -> BrokerState:
        return self._state

    @state.setter
    def state(self, state: BrokerState) -> None:
        self._state = state
        state.observer = self

    def apply(self, mutation: Any, seg: int) -> None:
        self._segment = seg
        self._state.apply(mutation)

    # -- StateObserver ------------------------------------------------------------------

    def queue_created(self, queue: str) -> None:
        self.origins.reset(queue)

    def queue_deleted(self, queue: str) -> None:
        self.origins.drop(queue)

    def published(self, queue: str, first_id: int, count: int) -> None:
        self.origins.add(queue, first_id, self._segment)

    def moved(self, queue: str, ids: list[int], target: str, first_id: int) -> None:
        for offset, mid in enumerate(ids):  # the target took them in this order
            origin = self.origins.of(queue, mid)
            if origin is not None:
                self.origins.add(target, first_id + offset, origin)


@dataclass
class SegmentStats:
    name: str
    base: int
    file_bytes: int
    records: int = 0
    record_bytes: int = 0
    live_messages: int = 0
    live_bytes: int = 0

    @property
    def dead_bytes(self) -> int:
        return self.record_bytes - self.live_bytes

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["dead_bytes"] = self.dead_bytes
        return out


def wal_stats(loc: WalLocation) -> tuple[list[SegmentStats], BrokerState, list[Problem]]:
    """Replay the log into a fresh state; attribute live message bytes to segments.

    Stops at the first error (returned as the last problem); a torn tail is a warning
    and the records before it count, as at start-up.
    """
    rows = [SegmentStats(s.name, s.base, s.size) for s in loc.segments]
    applier = _StatsApplier()
    problems: list[Problem] = []
    snapshot = newest_snapshot(loc)
    from_lsn = 0
    if snapshot is not None:
        from_lsn, snap_path = snapshot
        try:
            _, records = read_snapshot(FileIO(), snap_path)
            applier.state = BrokerState.from_records(records)
        except WalCorruption as exc:
            problems.append(Problem(ERROR, os.path.basename(snap_path), exc.offset, exc.reason))
            return rows, applier.state, problems
    elif loc.segments and loc.segments[0].base:
        first = loc.segments[0]
        problems.append(Problem(WARNING, first.name, 0, f"the log starts at LSN {first.base}: "
                                "the state before it is not in these segments"))
    was_enabled = gc.isenabled()
    gc.disable()  # millions of long-lived objects: see broker/gcpolicy.py
    try:
        for item in iter_log(loc.segments):
            if isinstance(item, Problem):
                problems.append(item)
                if item.severity == ERROR:
                    return rows, applier.state, problems
                continue
            if item.lsn < from_lsn:
                continue  # held by the snapshot
            row = rows[item.segment.index]
            row.records += 1
            row.record_bytes += item.size
            mutation, why = decode_mutation(item.rtype, item.payload)
            try:
                if why is not None:
                    raise ValueError(why)
                applier.apply(mutation, item.segment.index)
            except Exception as exc:
                why = f"the broker could not apply this record ({type(exc).__name__}: {exc})"
                problems.append(Problem(ERROR, item.segment.name, item.offset, why))
                return rows, applier.state, problems
    finally:
        if was_enabled:
            gc.enable()
    snap_row = None
    if snapshot is not None:
        snap_row = SegmentStats(os.path.basename(snapshot[1]), snapshot[0], os.path.getsize(snapshot[1]))
        rows.insert(0, snap_row)
    for name, queue in applier.state.queues.items():
        for msg in queue.messages.values():
            origin = applier.origins.of(name, msg.id)
            if origin is None:
                if snap_row is None:
                    continue
                row = snap_row  # loaded from the snapshot
            else:
                row = rows[origin + (snap_row is not None)]
            row.live_messages += 1
            row.live_bytes += len(msg.body) + (len(msg.key) if msg.key else 0)
    return rows, applier.state, problems


_STATS_COLUMNS = ("segment", "file_bytes", "records", "record_bytes", "live_messages",
                  "live_bytes", "dead_bytes")


def _print_stats(rows: list[SegmentStats], total: dict[str, Any]) -> None:
    table = [[r.name, *(str(getattr(r, c)) for c in _STATS_COLUMNS[1:])] for r in rows]
    table.append(["total", *(str(total[c]) for c in _STATS_COLUMNS[1:])])
    head = [c.upper() for c in _STATS_COLUMNS]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    click.echo(line(head))
    for row in table:
        click.echo(line(row))
    click.echo(f"queues: {total['queues']}, live messages: {total['live_messages']}")


# --- commands ------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    """JSON form of a mutation field: bytes as {"utf8": text} or {"base64": data}."""
    if isinstance(value, bytes):
        try:
            return {"utf8": value.decode("utf-8")}
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _report(problem: Problem) -> None:
    click.echo(problem.text(), err=True)


_DIR = click.Path(exists=True, file_okay=False, readable=True)


def json_flag(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """``--json`` here, or brokerctl's own (before the command, or ``$LOCKGATE_JSON``)."""
    return value or bool(ctx.find_root().params.get("as_json"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def wal() -> None:
    """Offline tools for a broker's write-ahead log (see docs/wal.md).

    DIR is the broker's data directory or its wal/ subdirectory. The commands only
    read: run them on a stopped broker's directory or a copy. They need no broker.
    Exit status: 0 ok (a torn tail at the end of the last segment is only a
    warning), 1 the log is damaged, 2 bad usage.
    """


@wal.command()
@click.argument("directory", metavar="DIR", type=_DIR)
@click.option("--strict", is_flag=True, help="Exit 1 on a torn tail too.")
@click.option("--json", "as_json", is_flag=True, callback=json_flag, help="Print one JSON object instead of text.")
def verify(directory: str, strict: bool, as_json: bool) -> None:
    """Check every segment, record and snapshot of the WAL in DIR.

    Checks each segment's header, every record's length, type and CRC, that every
    record decodes as its mutation, and that each segment starts where the one
    before it ends. A torn tail at the end of the last segment (which the broker
    truncates on start-up) is a warning; anything else is damage and exits 1.
    """
    loc = locate(directory)
    report = verify_wal(loc)
    if as_json:
        _emit_json(report.as_json(strict))
    else:
        _print_verify(report, strict)
    sys.exit(report.exit_code(strict))


@wal.command()
@click.argument("directory", metavar="DIR", type=_DIR)
@click.option("--segment", "segment", metavar="N|NAME",
              help="Only this segment: its 0-based index in log order (-1 = the last), "
                   "or its file name.")
@click.option("--from-lsn", type=click.IntRange(0), default=0, metavar="LSN",
              help="Skip records that start before this LSN.")
@click.option("--limit", type=click.IntRange(0), metavar="K", help="Print at most K records.")
def dump(directory: str, segment: str | None, from_lsn: int, limit: int | None) -> None:
    """Print the records of the WAL in DIR as JSON lines, in log order.

    Each line: {"segment", "offset", "lsn", "type", "fields"}; "fields" maps the
    mutation's field names to values, bytes as {"utf8": text} when they are valid
    UTF-8, else {"base64": data}. Stops at the first bad record with an error on
    stderr and exit 1; a torn tail of the last segment is a warning (exit 0).
    """
    loc = locate(directory)
    chosen = _choose_segment(loc, segment) if segment is not None else None

    def wanted(seg: SegmentFile) -> bool:
        return (chosen is None or seg is chosen) and seg.end_lsn > from_lsn

    if limit == 0:
        return
    status = 0
    printed = 0
    for item in iter_log(loc.segments, wanted=wanted):
        if isinstance(item, Problem):
            _report(item)
            if item.severity == ERROR:
                sys.exit(EXIT_DAMAGED)
            continue
        if item.lsn < from_lsn:
            continue
        line: dict[str, Any] = {"segment": item.segment.name, "offset": item.offset,
                                "lsn": item.lsn, "type": type_name(item.rtype)}
        mutation, why = decode_mutation(item.rtype, item.payload)
        if why is None:
            line["fields"] = {f.name: _json_value(getattr(mutation, f.name))
                              for f in dataclasses.fields(mutation)}
        else:
            line["fields"] = None
            line["payload"] = _json_value(item.payload)
            line["error"] = why
            status = EXIT_DAMAGED
        click.echo(json.dumps(line))
        printed += 1
        if limit is not None and printed >= limit:
            break
    sys.exit(status)


def _choose_segment(loc: WalLocation, spec: str) -> SegmentFile:
    for seg in loc.segments:
        if seg.name == spec:
            return seg
    try:
        index = int(spec)
    except ValueError:
        raise click.BadParameter(f"no segment named {spec!r} in {loc.wal_dir}",
                                 param_hint="--segment") from None
    count = len(loc.segments)
    if not -count <= index < count:
        raise click.BadParameter(f"segment index {index} out of range: {loc.wal_dir} has "
                                 f"{count} segment(s)", param_hint="--segment")
    return loc.segments[index]


@wal.command()
@click.argument("directory", metavar="DIR", type=_DIR)
@click.option("--json", "as_json", is_flag=True, callback=json_flag, help="Print one JSON object instead of text.")
def stats(directory: str, as_json: bool) -> None:
    """Show the segments of the WAL in DIR with sizes, records and live bytes.

    Replays the log into a fresh broker state, as start-up does. "Live bytes" are
    the bodies and keys of the messages still present in that state, counted in
    the segment that holds their publish record; "dead bytes" are a segment's
    record bytes minus its live bytes.
    """
    loc = locate(directory)
    rows, state, problems = wal_stats(loc)
    for problem in problems:
        _report(problem)
    if any(p.severity == ERROR for p in problems):
        sys.exit(EXIT_DAMAGED)
    total: dict[str, Any] = {
        key: sum(getattr(r, key) for r in rows)
        for key in ("file_bytes", "records", "record_bytes", "live_messages", "live_bytes")
    }
    total["dead_bytes"] = total["record_bytes"] - total["live_bytes"]
    total["queues"] = len(state.queues)
    total["torn_bytes"] = sum(p.bytes or 0 for p in problems if p.severity == WARNING)
    if as_json:
        _emit_json({"directory": loc.wal_dir, "segments": [r.as_json() for r in rows],
                    "total": total})
    else:
        _print_stats(rows, total)
