"""Simulate a power cut on a stopped broker's data directory, from its fsync journal.

A SIGKILL loses nothing the broker handed to the OS; a power cut loses everything no
fsync made durable. A broker started with ``--test-power-journal JOURNAL`` (test only;
see ``broker.wal.fileio.JournalingFileIO``) appends a line to JOURNAL after every
fsync, fdatasync and directory fsync, saying what is now durable. After the broker
is dead, ``apply_power_cut(data_dir, journal, rng, mode)`` rewrites the data directory
to what the disk could hold after losing power at this moment:

- A regular file whose name is not durable (created, or renamed into place, after the
  last fsync of its directory) disappears.
- A file renamed or unlinked since its directory's last fsync is back under its
  durable name (an unlinked file comes back from the hard link the journal kept).
- Every file that stays is cut back to its durable size, the largest size recorded by
  an fsync/fdatasync of its inode since it was last truncated (0 if none); syncs the
  broker's sync helper process made count too, as the log reported them (a report
  can come after a later, larger sync of the same file). Mode ``drop`` drops the whole
  non-durable tail. Mode ``garbage`` keeps a random part of it (possibly none, possibly
  all) and overwrites the end of what is kept, up to 4 KiB, with random bytes or zeros,
  as a disk may leave a half-written sector. Durable bytes are never changed.

It then appends a ``cut`` line recording the directory as it now is: that is the
durable state the next epoch of the journal starts from. Lines of an earlier epoch
that arrive after it (a writer that outlived the broker) are ignored; before cutting,
it waits (bounded) for processes that wrote journal lines, such as the forked snapshot
writer, to exit.

Simplifications, and why they do not matter for the broker's write order:

- Directories are never removed or restored; only regular files are. The broker
  creates its directories once and fsyncs their parent right away.
- The model is the strict POSIX one: metadata is durable only through a directory
  fsync, data only through a file fsync. Real file systems (ext4 ``data=ordered``)
  persist more, never less; so this is the harder case.
- All of a directory's non-durable metadata changes are undone together, as if the
  last directory fsync were the last metadata the disk saw. A real disk may keep some
  of them; every one the broker makes is either followed by a directory fsync before
  anything depends on it (segment creation, snapshot publication) or is a deletion of
  something already obsolete (old segments, old snapshots, ``*.tmp`` leftovers), so
  keeping or undoing each of them alone leaves an equally valid directory.
- A file shortened (``ftruncate``) after its last fsync cannot get the cut bytes back;
  it keeps its current length. The broker only truncates a torn tail, which replay
  finds again.
- Files are matched by inode number. An inode freed and reused within one epoch (a
  file replaced by a rename over it, or an unlink whose hard link failed) could be
  confused with its successor; the broker never renames over a file, and the
  journal's hard links keep unlinked inodes allocated until the cut.
- Non-durable data is lost or garbled at byte granularity, not in whole sectors: a
  superset of what a disk does.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MODES", "PowerCut", "apply_power_cut", "read_journal"]

#: Power-cut modes: what happens to bytes written after the last fsync.
MODES = ("drop", "garbage")
#: At most this many bytes at the end of a kept tail are garbled.
MAX_GARBAGE = 4096
#: Seconds to wait for processes that wrote journal lines to exit before the cut.
WRITERS_TIMEOUT = 10.0
#: Suffix of the files ``JournalingFileIO`` syncs that count as the log.
LOG_SUFFIX = ".wal"


@dataclass(slots=True)
class PowerCut:
    """What one simulated power cut did."""

    mode: str
    #: ``time.monotonic()`` of the cut; the journal's next epoch starts here.
    at: float
    #: Start of the previous epoch (the previous cut), or ``None`` for the first.
    epoch_start: float | None
    #: When the last fsync/fdatasync of a ``*.wal`` file in this epoch started (its
    #: ``t0``): everything written to the log before then is durable. ``None`` if none.
    last_log_sync: float | None
    #: Of this epoch's syncs of ``*.wal`` files, those the sync helper process made.
    helper_log_syncs: int = 0
    files_cut: int = 0
    bytes_dropped: int = 0
    bytes_garbled: int = 0
    #: Names (relative to the data directory) that disappeared: never made durable.
    removed: list[str] = field(default_factory=list)
    #: ``(name it had, durable name it is back under)``.
    renames_undone: list[tuple[str, str]] = field(default_factory=list)
    #: Names brought back from the journal's hard links.
    unlinks_undone: list[str] = field(default_factory=list)
    #: What could not be modelled exactly (see the module docstring).
    notes: list[str] = field(default_factory=list)

    @property
    def boundary(self) -> float:
        """Log records written before this time survived the cut; later ones may not.

        The start of the last log fsync of the epoch, else the epoch's start (what
        was on disk after the previous cut is durable), else 0.
        """
        if self.last_log_sync is not None:
            return self.last_log_sync
        return self.epoch_start if self.epoch_start is not None else 0.0

    def describe(self) -> str:
        return (f"power cut ({self.mode}): {self.files_cut} files cut, {self.bytes_dropped} bytes dropped, "
                f"{self.bytes_garbled} garbled, {len(self.removed)} files gone, "
                f"{self.helper_log_syncs} log syncs by the sync helper, "
                f"{len(self.renames_undone)} renames and {len(self.unlinks_undone)} unlinks undone"
                + (f"; notes: {'; '.join(self.notes)}" if self.notes else ""))


def read_journal(journal_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every line of the journal, parsed (a missing journal is empty)."""
    try:
        text = Path(journal_path).read_text()
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        if raw.strip():
            lines.append(json.loads(raw))
    return lines


def _epoch(lines: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The last ``cut`` line and the lines of the epoch after it."""
    last = None
    for i, line in enumerate(lines):
        if line["op"] == "cut":
            last = i
    if last is None:
        return None, lines
    cut = lines[last]
    # A line whose call started before the cut belongs to the epoch before it.
    return cut, [ln for ln in lines[last + 1:] if ln.get("t0", ln["t"]) > cut["t"]]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not); False where /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat.rsplit(b")", 1)[-1].split()
    return bool(fields) and fields[0] not in (b"Z", b"X")


def _wait_for_writers(lines: list[dict[str, Any]], timeout: float) -> list[int]:
    """Wait until the processes that wrote ``lines`` (other than this one) are gone;
    returns those still alive at the timeout."""
    pids = {ln["pid"] for ln in lines if "pid" in ln} - {os.getpid()}
    deadline = time.monotonic() + timeout
    while True:
        alive = sorted(p for p in pids if _alive(p))
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _regular_files(directory: str) -> dict[str, os.stat_result]:
    out = {}
    with os.scandir(directory) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                out[e.name] = e.stat(follow_symlinks=False)
    return out


def _cut_file(path: str, size: int, durable: int, rng: random.Random, mode: str, cut: PowerCut,
              name: str) -> None:
    """Cut ``path`` (``size`` bytes now) back to its ``durable`` size, per ``mode``."""
    if size < durable:
        cut.notes.append(f"{name} is {size} bytes, shorter than its durable {durable} (truncated "
                         "after its last fsync); kept as is")
        return
    if size == durable:
        return
    keep = rng.randint(0, size - durable) if mode == "garbage" else 0
    length = durable + keep
    with open(path, "r+b") as f:
        f.truncate(length)
        if keep:
            n = rng.randint(1, min(keep, MAX_GARBAGE))
            f.seek(length - n)
            f.write(rng.randbytes(n) if rng.random() < 0.5 else bytes(n))
            cut.bytes_garbled += n
    cut.files_cut += 1
    cut.bytes_dropped += size - length


def apply_power_cut(data_dir: str | os.PathLike[str], journal_path: str | os.PathLike[str],
                    rng: random.Random, mode: str = "drop", *,
                    writers_timeout: float = WRITERS_TIMEOUT) -> PowerCut:
    """Rewrite ``data_dir`` as the disk would be after a power cut now (module docstring).

    The broker writing it must be dead. ``mode`` is ``"drop"`` or ``"garbage"``.
    Returns what was done; appends a ``cut`` line to the journal.
    """
    if mode not in MODES:
        raise ValueError(f"unknown power-cut mode {mode!r}; expected one of {MODES}")
    root = os.path.realpath(data_dir)
    prev, epoch = _epoch(read_journal(journal_path))
    alive = _wait_for_writers(epoch, writers_timeout)
    prev, epoch = _epoch(read_journal(journal_path))  # the writers may have added lines
    cut = PowerCut(mode=mode, at=time.monotonic(), epoch_start=prev["t"] if prev else None,
                   last_log_sync=None)
    if alive:
        cut.notes.append(f"processes {alive} that wrote to the journal still run")

    # The durable state: the previous cut's picture, updated by this epoch's lines.
    durable_names: dict[str, dict[str, int]] = {}
    durable_size: dict[int, int] = {}
    truncated: set[int] = set()  # inodes truncated since their last sync
    saved: dict[int, str] = {}
    stray: list[str] = []  # hard links kept for unlinks, all removed at the end
    if prev is not None:
        for d, entries in prev["dirs"].items():
            durable_names[os.path.realpath(d)] = {n: ino for n, (ino, _) in entries.items()}
            durable_size.update({ino: size for ino, size in entries.values()})
    for line in epoch:
        op = line["op"]
        if op == "sync":
            ino = line["ino"]
            if ino in truncated:  # the sync made the shorter length durable
                truncated.discard(ino)
                durable_size[ino] = line["size"]
            else:  # a helper's sync can be reported after a later, larger one
                durable_size[ino] = max(durable_size.get(ino, 0), line["size"])
            if (line.get("path") or "").endswith(LOG_SUFFIX):
                t0 = line["t0"]
                cut.last_log_sync = t0 if cut.last_log_sync is None else max(cut.last_log_sync, t0)
                cut.helper_log_syncs += line.get("call") == "elsewhere"
        elif op == "truncate":
            truncated.add(line["ino"])
        elif op == "dirsync":
            durable_names[os.path.realpath(line["path"])] = dict(line["entries"])
        elif op == "unlink" and line.get("saved"):
            saved[line["ino"]] = line["saved"]
            stray.append(line["saved"])

    directories = [os.path.realpath(d) for d, _, _ in os.walk(root)] if os.path.isdir(root) else []
    picture: dict[str, dict[str, tuple[int, int]]] = {}
    for d in directories:
        rel = os.path.relpath(d, root)
        current = _regular_files(d)
        durable = durable_names.get(d, {})
        if not current and not durable:
            continue
        name_of = {st.st_ino: name for name, st in current.items()}
        # Move every file aside (renames keep inodes), then put the durable names back.
        staging = os.path.join(d, f".powercut-{uuid.uuid4().hex}")
        os.mkdir(staging)
        try:
            for name, st in current.items():
                os.rename(os.path.join(d, name), os.path.join(staging, str(st.st_ino)))
            for name, ino in sorted(durable.items()):
                shown = os.path.normpath(os.path.join(rel, name))
                if ino in name_of:
                    src = os.path.join(staging, str(ino))
                    if not os.path.exists(src):
                        cut.notes.append(f"{shown}: inode {ino} is also under another durable name")
                        continue
                    if name_of[ino] != name:
                        cut.renames_undone.append((os.path.normpath(os.path.join(rel, name_of[ino])), shown))
                elif ino in saved and os.path.exists(saved[ino]):
                    src = saved[ino]
                    cut.unlinks_undone.append(shown)
                else:
                    cut.notes.append(f"{shown} was durable but is gone and cannot be restored")
                    continue
                dst = os.path.join(d, name)
                os.rename(src, dst)
                _cut_file(dst, os.lstat(dst).st_size, durable_size.get(ino, 0), rng, mode, cut, shown)
            for ino_name in os.listdir(staging):  # never made durable
                cut.removed.append(os.path.normpath(os.path.join(rel, name_of[int(ino_name)])))
                os.unlink(os.path.join(staging, ino_name))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        picture[d] = {name: (st.st_ino, st.st_size) for name, st in _regular_files(d).items()}

    for path in stray:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    record = json.dumps({"op": "cut", "pid": os.getpid(), "t": cut.at, "mode": mode, "dirs": picture},
                        separators=(",", ":")) + "\n"
    fd = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, record.encode())
    finally:
        os.close(fd)
    return cut
