"""Sparse-file primitives of the store: freeing a byte range (hole punching) and finding the
ranges that hold data.

Owns the one call Python does not offer: ``fallocate(FALLOC_FL_PUNCH_HOLE |
FALLOC_FL_KEEP_SIZE)``, through ctypes on libc. Where the filesystem cannot punch holes
(``EOPNOTSUPP``), ``punch_hole`` says so and the bytes stay allocated (never readable: the
index no longer lists them) until their whole file is removed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int
_unsupported_logged = False


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free ``length`` bytes at ``offset`` of the file (they read as zeros, the size stays).

    Returns False if the filesystem cannot punch holes (the bytes stay allocated); other errors
    raise OSError.
    """
    global _unsupported_logged
    if length <= 0:
        return True
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        if not _unsupported_logged:
            _unsupported_logged = True
            log.warning("the cache's filesystem cannot punch holes: evicted chunks give their "
                        "space back only when their whole archive leaves the cache")
        return False
    raise OSError(err, os.strerror(err))


def data_ranges(fd: int) -> Iterator[tuple[int, int]]:
    """[start, end) of every range of the file that holds data (holes skipped)."""
    size = os.fstat(fd).st_size
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        offset = end
