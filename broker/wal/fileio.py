"""The fault seam: every file-system call the WAL makes goes through a ``FileIO``.

The default implementation is the plain ``os`` call. Tests subclass it to count calls
or to make one of them fail (``EIO`` from ``fdatasync``, ``ENOSPC`` from ``write``)
while the data still goes to real files. ``JournalingFileIO`` (test only) records
what every fsync made durable, so a harness can simulate a power cut afterwards.

Everything the broker creates is private to its user, whatever the umask: a file
``open`` creates is ``FILE_MODE`` (0600) and a directory ``makedirs`` creates is
``DIR_MODE`` (0700). The files hold message bodies in clear; encryption at rest is the
file system's job (docs/wal.md, "Private data").
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import time
from typing import Any, TypeAlias

#: What ``FileIO.write`` accepts.
BytesLike: TypeAlias = bytes | bytearray | memoryview

__all__ = [
    "BytesLike", "DIR_MODE", "FILE_MODE", "FileIO", "JournalingFileIO", "NO_SPACE_ERRNOS", "OPEN_APPEND",
    "OPEN_CREATE", "OPEN_READ", "OPEN_WRITE", "read_all", "write_all",
]

#: Permission bits of every file the broker creates: read and write for its user only.
FILE_MODE = 0o600
#: Permission bits of every directory the broker creates.
DIR_MODE = 0o700

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Flags for reading a segment.
OPEN_READ = os.O_RDONLY | _CLOEXEC
#: Flags for rewriting an existing file in place (truncating a torn tail).
OPEN_WRITE = os.O_WRONLY | _CLOEXEC
#: Flags for continuing a segment: every write goes to the end of the file.
OPEN_APPEND = os.O_RDWR | os.O_APPEND | _CLOEXEC
#: Flags for creating a fresh temp file (a new segment before its rename).
OPEN_CREATE = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | _CLOEXEC

#: errno values that mean "the file system has no room": the log refuses new work
#: instead of failing (see ``SegmentedLog.ensure_room``).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

# fallocate(2) modes.
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _load_fallocate() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


def _fallocate_or_raise(fd: int, mode: int, offset: int, length: int) -> None:
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available on this platform")
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class FileIO:
    """Real file-system calls; subclass and override to inject faults or count calls.

    Paths are ``str``. Methods raise ``OSError`` exactly as the ``os`` functions do.
    """

    #: Whether the broker may use the sync helper with this FileIO: the helper's
    #: fdatasyncs bypass it, so only a FileIO that is told of them (``synced_elsewhere``)
    #: sees every sync. The broker uses the helper with its own FileIO regardless.
    reports_outside_syncs: bool = False

    def open(self, path: str, flags: int, mode: int = FILE_MODE) -> int:
        """``os.open``; with ``O_CREAT`` the file ends up with exactly ``mode``, whatever
        the umask, also when it already existed (a temp file left by a crash)."""
        fd = os.open(path, flags, mode)
        if flags & os.O_CREAT:
            try:
                os.fchmod(fd, mode)
            except BaseException:
                os.close(fd)
                raise
        return fd

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: BytesLike) -> int:
        """Write once; may write fewer bytes than given (the caller loops)."""
        return os.write(fd, data)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Read once; may return fewer bytes than asked (the caller loops)."""
        return os.pread(fd, size, offset)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def synced_elsewhere(self, fd: int, size: int, started: float) -> None:
        """An fdatasync of ``fd`` that another process made (the sync helper, see
        ``reports_outside_syncs``) returned: the file's first ``size`` bytes are durable.
        ``size`` was its size at ``started`` (``time.monotonic()``), no later than that
        fdatasync began. ``SegmentedLog.end_sync`` calls it while ``fd`` is still open on
        that file. Nothing to do here."""

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def preallocate(self, fd: int, offset: int, length: int) -> None:
        """Reserve disk blocks for ``[offset, offset + length)`` without changing the
        file's size (``fallocate`` with ``FALLOC_FL_KEEP_SIZE``): later writes there
        cannot fail for lack of space. ``OSError`` (``ENOSPC``, ``EOPNOTSUPP``) if not."""
        _fallocate_or_raise(fd, _FALLOC_FL_KEEP_SIZE, offset, length)

    def release(self, fd: int, offset: int, length: int) -> None:
        """Give back the blocks reserved past the end of the file, which is at ``offset``:
        the unused reservation of a sealed segment. An ``ftruncate`` to the same size
        frees them on ext4; a hole punch (size kept) on tmpfs and others."""
        os.ftruncate(fd, offset)
        try:
            _fallocate_or_raise(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError:
            pass

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def makedirs(self, path: str) -> bool:
        """Create ``path`` and missing parents, each ``DIR_MODE`` whatever the umask;
        return whether ``path`` was created. Existing directories keep their mode."""
        path = os.path.abspath(path)
        if os.path.isdir(path):
            return False
        parent = os.path.dirname(path)
        if parent != path:
            self.makedirs(parent)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            if os.path.isdir(path):
                return False  # made meanwhile by someone else
            raise
        os.chmod(path, DIR_MODE)
        return True

    def fsync_dir(self, path: str) -> None:
        """Make the directory's entries (creates, renames, unlinks) durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class JournalingFileIO(FileIO):
    """Test only: real file calls, plus a journal of what each fsync made durable.

    Every line of the journal (at ``journal_path``) is one JSON object with ``op``,
    ``pid`` and ``t`` (``time.monotonic()``, which on Linux is one clock for all
    processes, so a harness can compare it with its own timestamps). Lines:

    - ``open``: a file opened for writing: ``path``, ``ino``, ``size``, ``created``.
    - ``sync``: an ``fsync``/``fdatasync`` (``call``) returned: the file's ``path``,
      ``ino`` and ``size``, taken just before the call (bytes written before it
      started are covered; bytes written by another thread during it may not be), and
      ``t0``, when the call started. ``size`` bytes of that inode are durable.
      ``call`` ``elsewhere``: an fdatasync the sync helper process made, which the log
      reported when it returned (``synced_elsewhere``); ``size`` and ``t0`` are from
      when the log handed the file over. Such a line can come after a later sync of
      the same file with a larger size; the larger one counts.
    - ``truncate``: ``ftruncate`` (``path``, ``ino``, ``length``); durable only once a
      later ``sync`` of the inode records it.
    - ``rename`` (``src``, ``dst``, ``ino``) and ``unlink`` (``path``, ``ino``,
      ``saved``): not durable until a later ``dirsync`` of the directory. Before an
      unlink the file is hard-linked to ``saved`` (under ``journal_path + ".unlinked"``,
      ``null`` if that failed), so a simulated power cut can bring it back.
    - ``dirsync``: ``fsync_dir(path)`` returned: ``entries`` maps each regular file's
      name to its inode as listed just before the call (these names are durable),
      ``made_durable`` lists the creates, renames and unlinks in that directory since
      its previous ``dirsync``, and ``t0`` is when the call started.

    Lines are written with one ``os.write`` on an ``O_APPEND`` descriptor, after the
    call they describe succeeded: a SIGKILL of the broker loses none of them, and a
    forked snapshot writer (which inherits this object) appends to the same journal.
    ``tools.powercut.apply_power_cut`` reads the journal. Not for production use: it
    costs a ``fstat`` and a ``write`` per fsync and keeps unlinked files around.
    """

    reports_outside_syncs = True

    def __init__(self, journal_path: str | os.PathLike[str]) -> None:
        self.journal_path = os.path.abspath(os.fspath(journal_path))
        self.graveyard = self.journal_path + ".unlinked"
        self._journal = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _CLOEXEC, 0o644)
        #: fd -> absolute path, for the files opened through this object.
        self._paths: dict[int, str] = {}
        #: directory -> metadata changes since its last ``fsync_dir``.
        self._pending: dict[str, list[str]] = {}

    def _record(self, op: str, **fields: Any) -> None:
        line = json.dumps({"op": op, "pid": os.getpid(), "t": time.monotonic(), **fields},
                          separators=(",", ":"))
        data = (line + "\n").encode()
        if os.write(self._journal, data) != len(data):
            raise OSError(f"short write to the power journal {self.journal_path}")

    def _pend(self, path: str, what: str) -> None:
        self._pending.setdefault(os.path.dirname(path), []).append(what)

    def open(self, path: str, flags: int, mode: int = FILE_MODE) -> int:
        path = os.path.abspath(path)
        existed = bool(flags & os.O_CREAT) and os.path.lexists(path)
        fd = super().open(path, flags, mode)
        self._paths[fd] = path
        if flags & (os.O_WRONLY | os.O_RDWR):
            st = os.fstat(fd)
            created = bool(flags & os.O_CREAT) and not existed
            if created:
                self._pend(path, f"create {os.path.basename(path)}")
            self._record("open", path=path, ino=st.st_ino, size=st.st_size, created=created)
        return fd

    def close(self, fd: int) -> None:
        self._paths.pop(fd, None)
        super().close(fd)

    def _synced(self, fd: int, call: str) -> None:
        st = os.fstat(fd)
        t0 = time.monotonic()
        if call == "fsync":
            super().fsync(fd)
        else:
            super().fdatasync(fd)
        self._record("sync", call=call, path=self._paths.get(fd), ino=st.st_ino, size=st.st_size, t0=t0)

    def fsync(self, fd: int) -> None:
        self._synced(fd, "fsync")

    def fdatasync(self, fd: int) -> None:
        self._synced(fd, "fdatasync")

    def synced_elsewhere(self, fd: int, size: int, started: float) -> None:
        self._record("sync", call="elsewhere", path=self._paths.get(fd), ino=os.fstat(fd).st_ino,
                     size=size, t0=started)

    def ftruncate(self, fd: int, length: int) -> None:
        super().ftruncate(fd, length)
        self._record("truncate", path=self._paths.get(fd), ino=os.fstat(fd).st_ino, length=length)

    def rename(self, src: str, dst: str) -> None:
        src, dst = os.path.abspath(src), os.path.abspath(dst)
        ino = os.lstat(src).st_ino
        super().rename(src, dst)
        for fd, p in self._paths.items():
            if p == src:
                self._paths[fd] = dst
        what = f"rename {os.path.basename(src)} -> {os.path.basename(dst)}"
        self._pend(src, what)
        if os.path.dirname(dst) != os.path.dirname(src):
            self._pend(dst, what)
        self._record("rename", src=src, dst=dst, ino=ino)

    def unlink(self, path: str) -> None:
        path = os.path.abspath(path)
        ino = os.lstat(path).st_ino
        link = os.path.join(self.graveyard, f"{ino}.{time.monotonic_ns()}")
        saved: str | None = link
        try:
            os.makedirs(self.graveyard, exist_ok=True)
            os.link(path, link)
        except OSError:
            saved = None  # e.g. another file system: this unlink cannot be undone
        super().unlink(path)
        self._pend(path, f"unlink {os.path.basename(path)}")
        self._record("unlink", path=path, ino=ino, saved=saved)

    def fsync_dir(self, path: str) -> None:
        path = os.path.abspath(path)
        with os.scandir(path) as it:
            entries = {e.name: e.stat(follow_symlinks=False).st_ino
                       for e in it if e.is_file(follow_symlinks=False)}
        t0 = time.monotonic()
        super().fsync_dir(path)
        self._record("dirsync", path=path, entries=entries, made_durable=self._pending.pop(path, []), t0=t0)


def write_all(io: FileIO, fd: int, data: BytesLike) -> None:
    """Write every byte of ``data``, looping over short writes."""
    written = io.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)
    while written < len(view):
        n = io.write(fd, view[written:])
        if n <= 0:
            raise OSError(f"write returned {n}")
        written += n


def read_all(io: FileIO, fd: int, size: int, offset: int = 0) -> bytes:
    """Read ``size`` bytes from ``offset`` (fewer only at end of file)."""
    data = io.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = io.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
