"""Reading an archive's bytes through the mount for ``glacierfs copy``, in order: at once for a
file that is cached (``Reader``), or window by window for one larger than the mount's cache
(``WindowedReader``).

A file larger than the cache cannot be restored whole (a whole job's output would not fit, and
would evict itself). It is read instead, from its first byte to its last, through the mount's
ranged retrievals: a read of an uncached window answers EREMOTE and starts a ranged job for that
window (``retrieve=auto``; the window size is the mount's ``range_size``). The reader waits and
reads again, and asks for the next windows ahead of itself, as many as fit in a quarter of the
cache (touching the first byte of each: a one-byte read that starts its job), so jobs run side
by side while earlier windows are copied. Windows already read are let go as the cache evicts
its least recently used bytes; a window downloaded ahead is older than the windows read since,
so the bytes asked for ahead must stay well under half the cache, or the cache would evict
them before they are read (measured on the emulator: half the cache ahead downloaded 1.5 times
the archive, a quarter 1.005 times). A cache under eight windows gets only the mount's own
read-ahead of one window. The mount's ``max_jobs`` and
``budget`` pace the jobs. Every chunk is checked by the mount against Glacier's tree hashes as it
arrives, and the copy compares the whole archive's tree hash at the end, as for any file.

No new job is started for bytes a job already covers: a window evicted before it was read is
downloaded again from its job's output while that lasts.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Callable

from glacierfs.commands.common import read_xattr
from glacierfs.commands.copyplan import Item, ReadFailed

log = logging.getLogger(__name__)

POLL_MIN = 0.2          # seconds between reads of a window that is not there yet …
POLL_MAX = 10.0         # … growing to this while its job runs
DEFAULT_WINDOW = 32 * 1024 * 1024   # until the mount's user.glacier.ranges says its range_size
MAX_AHEAD = 256         # windows asked for ahead of the reader, at most


class Reader:
    """The bytes of a cached file, in order."""

    def __init__(self, item: Item) -> None:
        self.src = item.src
        self.fd = -1
        if not hasattr(item.src, "pread"):   # else an in-process source (glaciersrc)
            try:
                self.fd = os.open(item.src, os.O_RDONLY)
            except OSError as exc:
                raise ReadFailed(f"open: {exc.strerror}") from None
        self.offset = 0

    def _preadinto(self, buf: bytearray, offset: int) -> int:
        """Bytes at ``offset`` into ``buf``; OSError as the mount answers."""
        if self.fd < 0:
            data = self.src.pread(len(buf), offset)  # type: ignore[attr-defined]
            buf[:len(data)] = data
            return len(data)
        return os.preadv(self.fd, [buf], offset)

    def readinto(self, buf: bytearray) -> int:
        try:
            n = self._preadinto(buf, self.offset)
        except OSError as exc:
            raise ReadFailed(f"read at byte {self.offset}: {exc.strerror}") from None
        self.offset += n
        return n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


class WindowedReader(Reader):
    """The bytes of a file larger than the cache, window by window (module docstring).
    ``ahead_bytes`` is how much may be asked for ahead of the reader; ``waiting`` is told
    what the reader waits for (None when it reads)."""

    def __init__(self, item: Item, ahead_bytes: int,
                 waiting: Callable[[str | None], None]) -> None:
        super().__init__(item)
        self.item = item
        self.ahead_bytes = ahead_bytes
        self.waiting = waiting
        self.window = 0
        self.touched = -1      # the last window asked for

    def _window(self) -> int:
        if not self.window:
            raw = read_xattr(self.item.src, "user.glacier.ranges")
            if raw:
                try:
                    self.window = int(json.loads(raw).get("range_size") or 0)
                except ValueError:
                    pass
        return self.window or DEFAULT_WINDOW

    def _ask_ahead(self) -> None:
        """Touch the first byte of each window ahead that fits ``ahead_bytes``."""
        w = self._window()
        if self.ahead_bytes < 2 * w:
            return   # the mount's own read-ahead (one window) is all that fits
        first = self.offset // w + 1
        last = min((self.offset + self.ahead_bytes) // w, first + MAX_AHEAD - 1,
                   (self.item.size - 1) // w)
        for k in range(max(first, self.touched + 1), last + 1):
            try:
                self._preadinto(bytearray(1), k * w)
            except OSError as exc:
                if exc.errno not in (errno.EREMOTE, errno.EAGAIN):
                    break
            self.touched = k

    def readinto(self, buf: bytearray) -> int:
        delay = POLL_MIN
        while True:
            try:
                n = self._preadinto(buf, self.offset)
            except OSError as exc:
                if exc.errno not in (errno.EREMOTE, errno.EAGAIN):
                    raise ReadFailed(f"read at byte {self.offset}: {exc.strerror}") from None
                if self.touched < 0 and self._window() and self.window:
                    self._ask_ahead()   # the first window's job tells the window size
                self.waiting(f"waiting for the window at byte {self.offset} of "
                             f"{self.item.where}")
                time.sleep(delay)
                delay = min(delay * 1.5, POLL_MAX)
                continue
            self.waiting(None)
            w = self._window()
            before = self.offset // w
            self.offset += n
            if self.window and (self.offset // w != before or self.touched < 0):
                self._ask_ahead()
            return n
