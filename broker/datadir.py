"""The data directory is private to the broker's user.

The broker creates DATA and DATA/wal with mode 0700 and every file in them 0600,
whatever the umask (``wal.fileio.FileIO``): the files hold message bodies in clear.

A data directory from an older version (0755, files 0644) or one loosened by hand is
tightened when the broker starts: ``make_private`` takes group and other access away
from DATA, DATA/wal and the files in DATA/wal, and logs a warning naming what it
changed. It never loosens a mode. Tightening rather than refusing to start (as some
databases do) means an upgraded broker closes the hole itself, and the modes it sets are
the ones it would have created. What it may not change (another user owns the file) is
logged as a warning, and the broker starts anyway.

Encryption at rest is the file system's job (dm-crypt/LUKS, an encrypted volume), see
docs/wal.md, "Private data".
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

logger = logging.getLogger("lockgate.datadir")

#: Permission bits that give anyone but the owner access.
_SHARED = stat.S_IRWXG | stat.S_IRWXO


def make_private(data_dir: Path, wal_dir: Path) -> None:
    """Take group and other access away from ``data_dir``, ``wal_dir`` and the files in
    ``wal_dir``, if they exist; log a warning for every change (files summed up)."""
    for directory in (data_dir, wal_dir):
        _tighten(directory, "directory")
    try:
        entries = list(os.scandir(wal_dir))
    except FileNotFoundError:
        return
    changed = 0
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and _tighten(Path(entry.path), "file", quiet=True):
            changed += 1
    if changed:
        logger.warning("%d file(s) in %s were readable by other users; made them private (group "
                       "and other access removed)", changed, wal_dir)


def _tighten(path: Path, what: str, *, quiet: bool = False) -> bool:
    """Remove group and other bits from ``path``; whether its mode changed."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    if not mode & _SHARED:
        return False
    private = mode & ~_SHARED
    try:
        os.chmod(path, private)
    except OSError as exc:
        logger.warning("%s %s is mode %04o, open to other users, and could not be made private: %s",
                       what, path, mode, exc)
        return False
    if not quiet:
        logger.warning("%s %s was mode %04o, open to other users; made it %04o", what, path, mode, private)
    return True
