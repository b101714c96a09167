"""Writing the head's files so that a power cut leaves the old version or the
new one, never neither."""
from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path


def disk_full(err: BaseException) -> bool:
    """Whether `err` says the disk (or the database's) is out of space."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(err, sqlite3.OperationalError) and "full" in str(err)


def fsync_dir(path: Path) -> None:
    """Make the renames and new names in `path` durable (a file's own fsync does not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
