"""Recognising "the local disk is full", whatever form it arrives in.

ENOSPC and EDQUOT come as OSError from files and as SQLITE_FULL from SQLite. Everywhere in
glacierfs a full disk means the same thing: a clear one-line message, nothing half-written kept,
the work retried later, and the mount stays up.
"""

from __future__ import annotations

import errno
import sqlite3

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

# What local storage (files and the state database) can raise; background loops catch these
# so a disk problem never takes the mount down.
LOCAL_ERRORS: tuple[type[Exception], ...] = (OSError, sqlite3.Error)


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return False


def describe(exc: BaseException, where: object) -> str:
    """One line for logs and xattrs: what went wrong on the local disk at ``where``."""
    if is_disk_full(exc):
        return f"the disk holding {where} is full"
    return f"local storage error in {where}: {exc}"
