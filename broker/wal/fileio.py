"""The fault seam: every file-system call the WAL makes goes through a ``FileIO``.

The default implementation is the plain ``os`` call. Tests subclass it to count calls
or to make one of them fail (``EIO`` from ``fdatasync``, ``ENOSPC`` from ``write``)
while the data still goes to real files.
"""
from __future__ import annotations

import os
from typing import TypeAlias

#: What ``FileIO.write`` accepts.
BytesLike: TypeAlias = bytes | bytearray | memoryview

__all__ = [
    "BytesLike", "FileIO", "OPEN_APPEND", "OPEN_CREATE", "OPEN_READ", "OPEN_WRITE",
    "read_all", "write_all",
]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Flags for reading a segment.
OPEN_READ = os.O_RDONLY | _CLOEXEC
#: Flags for rewriting an existing file in place (truncating a torn tail).
OPEN_WRITE = os.O_WRONLY | _CLOEXEC
#: Flags for continuing a segment: every write goes to the end of the file.
OPEN_APPEND = os.O_RDWR | os.O_APPEND | _CLOEXEC
#: Flags for creating a fresh temp file (a new segment before its rename).
OPEN_CREATE = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | _CLOEXEC


class FileIO:
    """Real file-system calls; subclass and override to inject faults or count calls.

    Paths are ``str``. Methods raise ``OSError`` exactly as the ``os`` functions do.
    """

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

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

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def makedirs(self, path: str) -> bool:
        """Create ``path`` and missing parents; return whether it was created."""
        if os.path.isdir(path):
            return False
        os.makedirs(path, exist_ok=True)
        return True

    def fsync_dir(self, path: str) -> None:
        """Make the directory's entries (creates, renames, unlinks) durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
