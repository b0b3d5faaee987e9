"""The open-file table of the read path: chunk files kept open and read with ``os.pread``.

Owns reading. A read does no SQLite write (diskcache's LRU ``get`` would run a write
transaction per call). Chunk files stay open in a small LRU of handles; each read just stamps
its handle with the time, and ``take_touches`` hands those stamps to the index, which writes
them to ``access_time`` right before every eviction decision (and at close), so eviction still
sees true recency. An open handle is re-checked against the index at most once per
``RECHECK_INTERVAL``, which notices chunks removed behind our back (another process, a hand
``rm``). A chunk evicted by this process loses its handle at once (``forget``), so it reads as
``NotCached``; a handle opened just before another thread's eviction may serve the old
(verified) bytes until its next re-check, which is harmless: Linux keeps an unlinked file
readable.

Threading: ``_lock`` guards the table; handles are reference-counted so one thread never closes
a descriptor another is reading (a reused descriptor number would otherwise read some other
file).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from typing import BinaryIO

from glacierfs.cache.errors import NotCached
from glacierfs.cache.layout import ArchiveLayout, chunk_key, slot_of

log = logging.getLogger(__name__)

# How long a chunk's open handle is trusted before the index is asked again (one read-only
# SELECT): bounds how long a chunk removed outside this process is still served from an open
# handle, at a cost far below one query per read.
RECHECK_INTERVAL = 10.0
# Open chunk files kept for reading. Readers are sequential or random within a few files;
# 64 descriptors cover that with room to spare and stay far below any fd limit.
HANDLE_CACHE_SIZE = 64
# Opening a chunk races with its replacement or eviction (query, then open): retry a little.
OPEN_ATTEMPTS = 3


class _Handle:
    """An open chunk file, shared by readers; closed when retired and no reader holds it."""

    __slots__ = ("key", "file", "fd", "checked_at", "used_at", "flushed_at", "users", "retired")

    def __init__(self, key: str, file: BinaryIO, now: float) -> None:
        self.key = key
        self.file = file
        self.fd = file.fileno()
        self.checked_at = now  # last time the index confirmed this chunk
        self.used_at = now  # last read (wall clock, as diskcache's access_time)
        self.flushed_at = 0.0  # used_at last written to the index
        self.users = 0
        self.retired = False


class HandleTable:
    """Open chunk files by (archive id, chunk size, index), least recently used closed first."""

    def __init__(self, directory: str, query: Callable[[str, tuple], list[tuple]],
                 delete_row: Callable[[str], object]) -> None:
        """``query`` runs a read-only statement on the index; ``delete_row(key)`` drops a row
        (a chunk file found damaged)."""
        self._dir_str = directory  # joined as a str on the open path: pathlib costs µs
        self._query = query
        self._delete_row = delete_row
        self._lock = threading.Lock()
        # A tuple key, because building the index's string key costs more per read than the
        # rest of the bookkeeping together.
        self._handles: OrderedDict[tuple[str, int, int], _Handle] = OrderedDict()
        self._touched: dict[str, float] = {}  # read times of retired handles, not yet flushed

    def read(self, layout: ArchiveLayout, offset: int, length: int) -> bytes:
        """Bytes ``offset``..``offset+length`` clamped to the archive size, all or nothing.

        Raises NotCached with every missing chunk index if any chunk the range needs is absent.
        """
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = offset + length
        if end > layout.size:
            end = layout.size
        if end <= offset:
            return b""
        chunk_size = layout.chunk_size
        index = offset // chunk_size
        if (end - 1) // chunk_size != index:
            return self._read_span(layout, offset, end)
        # Fast path, the common case (a 128 KiB-1 MiB request inside one chunk): written out
        # inline because per-call overhead is what separates us from a bare pread.
        slot = (layout.archive_id, chunk_size, index)
        lock = self._lock
        now = time.time()
        with lock:
            handle = self._handles.get(slot)
            if handle is not None and 0 <= now - handle.checked_at < RECHECK_INTERVAL:
                self._handles.move_to_end(slot)
                handle.users += 1
                handle.used_at = now
            else:
                handle = None
        if handle is None:
            handle = self._open(layout, index)
            if handle is None:
                raise NotCached([index], layout.archive_id)
        try:
            data = os.pread(handle.fd, end - offset, offset - index * chunk_size)
        finally:
            with lock:
                handle.users -= 1
                if handle.retired and handle.users == 0:
                    handle.file.close()
        if len(data) != end - offset:
            self._truncated(layout, index)
        return data

    def _read_span(self, layout: ArchiveLayout, offset: int, end: int) -> bytes:
        """A read crossing chunk boundaries: every chunk held open before any byte is read."""
        chunks = range(offset // layout.chunk_size, (end - 1) // layout.chunk_size + 1)
        handles: list[_Handle] = []
        missing: list[int] = []
        try:
            for index in chunks:
                handle = self._acquire(layout, index)
                if handle is None:
                    missing.append(index)
                else:
                    handles.append(handle)
            if missing:
                raise NotCached(missing, layout.archive_id)
            parts = []
            for index, handle in zip(chunks, handles, strict=True):
                c_start, c_end = layout.chunk_range(index)
                lo, hi = max(offset, c_start), min(end - 1, c_end)
                part = os.pread(handle.fd, hi - lo + 1, lo - c_start)
                if len(part) != hi - lo + 1:
                    self._truncated(layout, index)
                parts.append(part)
            return b"".join(parts)
        finally:
            if handles:
                self._release(handles)

    def _truncated(self, layout: ArchiveLayout, index: int) -> None:
        """A chunk file shorter than its chunk: damaged outside our control. Drop, never serve."""
        key = chunk_key(layout, index)
        log.warning("archive %s chunk %d: file shorter than the chunk; dropping it",
                    layout.archive_id, index)
        self._delete_row(key)
        self.forget(key)
        raise NotCached([index], layout.archive_id)

    def _acquire(self, layout: ArchiveLayout, index: int) -> _Handle | None:
        """An open handle on chunk ``index`` with one use counted, or None if not cached."""
        slot = (layout.archive_id, layout.chunk_size, index)
        now = time.time()
        with self._lock:
            handle = self._handles.get(slot)
            if handle is not None and 0 <= now - handle.checked_at < RECHECK_INTERVAL:
                self._handles.move_to_end(slot)
                handle.users += 1
                handle.used_at = now
                return handle
        return self._open(layout, index)

    def _open(self, layout: ArchiveLayout, index: int) -> _Handle | None:
        """Open chunk ``index``, or re-check a handle that is due, with one read-only query.

        Returns the handle with one use counted, or None if the chunk is not cached.
        """
        key = chunk_key(layout, index)
        slot = (layout.archive_id, layout.chunk_size, index)
        now = time.time()
        file = None
        for _ in range(OPEN_ATTEMPTS):
            rows = self._query("SELECT filename FROM Cache WHERE key = ? AND raw = 1", (key,))
            if not rows or rows[0][0] is None:
                break
            try:
                # Stays open as the handle; closed when retired and unused.
                file = open(os.path.join(self._dir_str, rows[0][0]), "rb", buffering=0)  # noqa: SIM115
                break
            except FileNotFoundError:
                continue  # replaced or evicted between the query and the open: ask again
        if file is not None and os.fstat(file.fileno()).st_size != layout.chunk_length(index):
            file.close()
            self._truncated_quietly(layout, index)
            file = None
        with self._lock:
            old = self._handles.pop(slot, None)
            if old is not None:
                self._retire_locked(old)
            if file is None:
                return None
            handle = _Handle(key, file, now)
            handle.users = 1
            self._handles[slot] = handle
            while len(self._handles) > HANDLE_CACHE_SIZE:
                _, oldest = self._handles.popitem(last=False)
                self._retire_locked(oldest)
            return handle

    def _truncated_quietly(self, layout: ArchiveLayout, index: int) -> None:
        with suppress(NotCached):
            self._truncated(layout, index)

    def _release(self, handles: list[_Handle]) -> None:
        with self._lock:
            for handle in handles:
                handle.users -= 1
                if handle.retired and handle.users == 0:
                    handle.file.close()

    def _retire_locked(self, handle: _Handle) -> None:
        if handle.used_at > handle.flushed_at:
            self._touched[handle.key] = max(handle.used_at, self._touched.get(handle.key, 0.0))
        handle.retired = True
        if handle.users == 0:
            handle.file.close()

    def forget(self, key: str) -> None:
        slot = slot_of(key)
        with self._lock:
            handle = self._handles.pop(slot, None)
            if handle is not None:
                self._retire_locked(handle)
    def take_touches(self) -> dict[str, float]:
        """Read times collected since the last call (key → time), for the index's access_time."""
        with self._lock:
            pending, self._touched = self._touched, {}
            for handle in self._handles.values():
                if handle.used_at > handle.flushed_at:
                    pending[handle.key] = max(handle.used_at, pending.get(handle.key, 0.0))
                    handle.flushed_at = handle.used_at
        return pending

    def close(self) -> None:
        with self._lock:
            while self._handles:
                _, handle = self._handles.popitem()
                self._retire_locked(handle)
