"""The open-file table of the read path, and what keeps a read from ever meeting a changing
byte: claims of writers and deferred hole punches.

Owns reading. Each chunk grid (archive, chunk size) has one sparse file (``layout.archive_file``)
and, once read, one handle here: the open descriptor and the set of its chunks the index lists as
verified. A read checks that set and does one ``os.pread`` on the file; it does no SQLite work
(diskcache's LRU ``get`` would run a write transaction per call). Each read stamps the chunks it
touched with the time; ``take_touches`` hands those stamps to the index, which writes them to
``access_time`` before every eviction decision (and at close), so eviction still sees true
recency. A handle is re-read from the index at most once per ``RECHECK_INTERVAL`` (one read-only
SELECT), which notices chunks removed behind our back; a read that meets a chunk missing from
the set asks the index once more before answering ``NotCached``.

Bytes of a chunk change only where nobody can read them:
  * a writer ``claim``s a chunk before writing into the file and keeps the claim until its row
    is committed or its bytes are punched out again; a chunk in the set is never claimed;
  * a chunk whose row is dropped (``chunk_dropped``) leaves the set at once, and its hole is
    punched only once no read that started before is still running (the last such read punches
    it on release). Until then the chunk counts as claimed, so no writer rewrites it early.
When the last row of a grid is gone and nothing is claimed, its file is removed.

Threading: ``_lock`` guards the table, the claims and each handle's counters; handles are
reference-counted so one thread never closes a descriptor another is reading.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import suppress

from glacierfs.cache import sparse
from glacierfs.cache.errors import NotCached
from glacierfs.cache.layout import ArchiveLayout, archive_file, chunk_key, grid_prefix, held_key, \
    parse_key, prefix_bounds

log = logging.getLogger(__name__)

# How long a handle's set of chunks is trusted before the index is asked again (one read-only
# SELECT): bounds how long a chunk removed outside this process is still served, at a cost far
# below one query per read.
RECHECK_INTERVAL = 10.0
# Open archive files kept for reading. Readers are sequential or random within a few files;
# 64 descriptors cover that with room to spare and stay far below any fd limit.
HANDLE_CACHE_SIZE = 64

Slot = tuple[str, int]  # (archive id, chunk size): one grid, one file


class _Handle:
    """An open archive file and its verified chunks, shared by readers."""

    __slots__ = ("slot", "fd", "chunks", "checked_at", "touched", "users", "retired")

    def __init__(self, slot: Slot, fd: int, chunks: set[int], now: float) -> None:
        self.slot = slot
        self.fd = fd
        self.chunks = chunks  # indexes the index lists as verified
        self.checked_at = now  # last time the index confirmed the set
        self.touched: dict[int, float] = {}  # chunk → last read, not yet given to the index
        self.users = 0
        self.retired = False


def _prefix(slot: Slot) -> str:
    return f"{len(slot[0])}:{slot[0]}/{slot[1]}/"


class HandleTable:
    """Open archive files by (archive id, chunk size), least recently used closed first."""

    def __init__(self, directory: str, query: Callable[[str, tuple], list[tuple]],
                 delete_rows: Callable[[list[str]], None], barrier: Callable[[], None],
                 prepare: Callable[[ArchiveLayout, range], None]) -> None:
        """``query`` runs a read-only statement on the index; ``delete_rows(keys)`` drops rows
        (chunks whose bytes were found damaged); ``barrier()`` makes the index's committed
        deletes durable, called before any byte is freed (see ``_free_bytes``);
        ``prepare(layout, chunks)`` runs before an archive's chunks are read from the index (it
        moves the chunks a read needs that are still in the previous release's layout)."""
        self._dir_str = directory  # joined as a str on the open path: pathlib costs µs
        self._query = query
        self._delete_rows = delete_rows
        self._barrier = barrier
        self._prepare = prepare
        self._lock = threading.Lock()
        self._free = threading.Condition(self._lock)  # a claim was given back
        self._handles: OrderedDict[Slot, _Handle] = OrderedDict()
        self._touched: dict[str, float] = {}  # read times of retired handles, not yet flushed
        self._busy: dict[Slot, set[int]] = {}  # claimed by a writer, or waiting to be punched
        # Reads running per grid (over all its handles, retired ones too), and the chunks to
        # punch when that drops to zero.
        self._readers: dict[Slot, int] = {}
        self._pending: dict[Slot, set[int]] = {}
        self._after: dict[Slot, set[int]] = {}  # dropped while busy: punch when released
        self._drops = 0  # counts chunk_dropped calls: a handle built across one is rebuilt

    def path(self, archive_id: str, chunk_size: int) -> str:
        return os.path.join(self._dir_str, archive_file(archive_id, chunk_size))

    # --- reading -----------------------------------------------------------------------------

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
        first, last = offset // chunk_size, (end - 1) // chunk_size
        slot = (layout.archive_id, chunk_size)
        now = time.time()
        with self._lock:
            handle = self._handles.get(slot)
            if handle is not None and 0 <= now - handle.checked_at < RECHECK_INTERVAL:
                self._handles.move_to_end(slot)
                handle.users += 1
                self._readers[slot] = self._readers.get(slot, 0) + 1
            else:
                handle = None
        fresh = handle is None
        if fresh:
            handle = self._open(layout, range(first, last + 1))
        while True:
            if handle is None:
                raise NotCached(list(range(first, last + 1)), layout.archive_id)
            # Checked with a use counted: a chunk dropped from now on is punched only after
            # this read ends (see chunk_dropped).
            chunks = handle.chunks
            if first == last:
                missing = None if first in chunks else [first]
            else:
                missing = [i for i in range(first, last + 1) if i not in chunks] or None
            if missing is None or fresh:
                break
            self._release(handle)  # the set may be behind a commit: ask the index once
            handle, fresh = self._open(layout, range(first, last + 1)), True
        try:
            if missing:
                raise NotCached(missing, layout.archive_id)
            data = os.pread(handle.fd, end - offset, offset)
            touched = handle.touched
            for index in range(first, last + 1):
                touched[index] = now
        finally:
            self._release(handle)
        if len(data) != end - offset:
            self._truncated(layout, range((offset + len(data)) // chunk_size, last + 1))
        return data

    def _truncated(self, layout: ArchiveLayout, indexes: Iterable[int]) -> None:
        """The archive file ends inside verified chunks: damaged outside our control. Drop
        them, never serve them."""
        indexes = list(indexes)
        log.warning("archive %s: file shorter than chunks %s; dropping them",
                    layout.archive_id, indexes)
        self._delete_rows([chunk_key(layout, i) for i in indexes])
        raise NotCached(indexes, layout.archive_id)

    def _verified(self, layout: ArchiveLayout) -> set[int]:
        low, high = prefix_bounds(grid_prefix(layout))
        rows = self._query("SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1 "
                           "AND filename IS NULL", (low, high))
        cut = len(low)
        return {int(key[cut:]) for (key,) in rows if key[cut:].isdigit()}

    def _open(self, layout: ArchiveLayout, chunks: range) -> _Handle | None:
        """Open the archive's file with its set of verified chunks read from the index (or
        refresh a handle that is due). Returns it with one use counted, or None if the index
        lists no chunk of it."""
        slot = (layout.archive_id, layout.chunk_size)
        self._prepare(layout, chunks)
        while True:
            now = time.time()
            drops = self._drops
            chunks = self._verified(layout)
            fd = None
            if chunks:
                try:
                    fd = os.open(self.path(*slot), os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:  # removed behind our back: its rows mean nothing
                    self._delete_rows([chunk_key(layout, i) for i in chunks])
            with self._lock:
                if drops != self._drops:  # a chunk may have left between query and now
                    if fd is not None:
                        os.close(fd)
                    continue
                old = self._handles.pop(slot, None)
                if old is not None:
                    self._retire_locked(old)
                if fd is None:
                    return None
                handle = _Handle(slot, fd, chunks, now)
                handle.users = 1
                self._readers[slot] = self._readers.get(slot, 0) + 1
                self._handles[slot] = handle
                while len(self._handles) > HANDLE_CACHE_SIZE:
                    _, oldest = self._handles.popitem(last=False)
                    self._retire_locked(oldest)
                return handle

    def _release(self, handle: _Handle) -> None:
        slot = handle.slot
        with self._lock:
            readers = self._readers[slot] - 1
            if readers:
                self._readers[slot] = readers
                pending = None
            else:
                del self._readers[slot]
                pending = self._pending.pop(slot, None)  # the last reader punches
            if pending is None:
                handle.users -= 1
                if handle.retired and handle.users == 0:
                    os.close(handle.fd)
                return
        try:
            self._punch(slot, pending, handle.fd)
        finally:
            with self._lock:
                handle.users -= 1
                if handle.retired and handle.users == 0:
                    os.close(handle.fd)
        self._remove_if_empty(slot)

    def _retire_locked(self, handle: _Handle) -> None:
        prefix = _prefix(handle.slot)
        for index, when in handle.touched.items():
            key = prefix + str(index)
            self._touched[key] = max(when, self._touched.get(key, 0.0))
        handle.touched = {}
        handle.retired = True
        if handle.users == 0:
            os.close(handle.fd)

    def take_touches(self) -> dict[str, float]:
        """Read times collected since the last call (key → time), for the index's access_time."""
        with self._lock:
            pending, self._touched = self._touched, {}
            for handle in self._handles.values():
                if handle.touched:
                    touched, handle.touched = handle.touched, {}
                    prefix = _prefix(handle.slot)
                    for index, when in touched.items():
                        key = prefix + str(index)
                        pending[key] = max(when, pending.get(key, 0.0))
        return pending

    # --- changes -----------------------------------------------------------------------------

    def claim(self, layout: ArchiveLayout, index: int, wait: bool) -> bool:
        """Take chunk ``index`` for writing into the file. Without ``wait``, False if a writer
        or a pending punch has it; with ``wait``, until they are done."""
        slot = (layout.archive_id, layout.chunk_size)
        with self._lock:
            while index in self._busy.get(slot, ()):
                if not wait:
                    return False
                self._free.wait()
            self._busy.setdefault(slot, set()).add(index)
            return True

    def unclaim(self, layout: ArchiveLayout, index: int) -> None:
        slot = (layout.archive_id, layout.chunk_size)
        with self._lock:
            again = self._give_back_locked(slot, {index})
        if again:
            self._punch(slot, again, None)
            self._remove_if_empty(slot)

    def _give_back_locked(self, slot: Slot, indexes: set[int]) -> set[int]:
        """Release claims or punches. Returns those whose rows were dropped meanwhile: still
        held, for the caller to punch (or left to the last reader)."""
        after = self._after.get(slot)
        again = indexes & after if after else set()
        if after is not None:
            after -= again
            if not after:
                del self._after[slot]
        self._unbusy_locked(slot, indexes - again)
        if again and self._readers.get(slot):
            self._pending.setdefault(slot, set()).update(again)
            return set()
        return again

    def _unbusy_locked(self, slot: Slot, indexes: Iterable[int]) -> None:
        busy = self._busy.get(slot)
        if busy is not None:
            busy.difference_update(indexes)
            if not busy:
                del self._busy[slot]
        self._free.notify_all()

    def chunk_added(self, layout: ArchiveLayout, index: int) -> None:
        """A verified row of chunk ``index`` has committed: readers may have it now."""
        with self._lock:
            handle = self._handles.get((layout.archive_id, layout.chunk_size))
            if handle is not None:
                handle.chunks.add(index)

    def chunk_dropped(self, keys: Iterable[str]) -> None:
        """Rows of these chunks are deleted: no read starting now serves them, and their bytes
        are punched out once the reads already running are done (and no other row of the same
        chunk, verified or held, still needs them)."""
        now: dict[Slot, set[int]] = {}
        for key in keys:
            archive_id, chunk_size, index, held = parse_key(key)
            slot = (archive_id, chunk_size)
            with self._lock:
                self._drops += 1
                handle = self._handles.get(slot)
                if handle is not None and not held:
                    handle.chunks.discard(index)
                busy = self._busy.setdefault(slot, set())
                if index in busy:  # a writer holds it, or a punch is due or running
                    if index not in self._pending.get(slot, ()):
                        self._after.setdefault(slot, set()).add(index)  # punch when released
                    continue
                busy.add(index)
                if self._readers.get(slot):
                    self._pending.setdefault(slot, set()).add(index)
                    continue
            now.setdefault(slot, set()).add(index)
        for slot, indexes in now.items():
            try:
                self._punch(slot, indexes, None)
            finally:
                self._remove_if_empty(slot)

    def _punch(self, slot: Slot, indexes: set[int], fd: int | None) -> None:
        """Free the chunks' bytes unless a row needs them again; then give the claims back
        (and punch again those dropped while this ran)."""
        while indexes:
            try:
                self._punch_once(slot, indexes, fd)
            finally:
                with self._lock:
                    indexes = self._give_back_locked(slot, indexes)

    def _punch_once(self, slot: Slot, indexes: set[int], fd: int | None) -> None:
        archive_id, chunk_size = slot
        layout = ArchiveLayout(archive_id, 0, chunk_size)
        with self._lock:
            if not (self._busy.get(slot, set()) - indexes) and not self._readers.get(slot) \
                    and self._remove_locked(slot):
                return  # the whole grid went: its file is removed (an open one reads on)
        keep = set()
        for index in indexes:
            if self._query("SELECT 1 FROM Cache WHERE key IN (?, ?) AND raw = 1",
                           (chunk_key(layout, index), held_key(layout, index))):
                keep.add(index)
        if not indexes - keep or not self._free_bytes():
            return
        own = None
        if fd is None:
            try:
                fd = own = os.open(self.path(*slot), os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return
        try:
            for index in sorted(indexes - keep):
                if not sparse.punch_hole(fd, index * chunk_size, chunk_size):
                    break
        finally:
            if own is not None:
                os.close(own)

    def _free_bytes(self) -> bool:
        """May bytes of dropped rows be freed now? Only once the deletes are durable: after a
        power cut a row whose delete was lost would otherwise list a hole, and read as zeros.
        If the index cannot be made durable the bytes stay (listed by nothing, swept later)."""
        try:
            self._barrier()
        except OSError as exc:
            log.warning("cache index not made durable (%s): freeing no space now", exc)
            return False
        return True

    def _remove_if_empty(self, slot: Slot) -> None:
        """Remove the grid's file once no row lists any chunk of it and nothing is claimed."""
        with self._lock:
            if not self._busy.get(slot) and not self._readers.get(slot):
                self._remove_locked(slot)

    def _remove_locked(self, slot: Slot) -> bool:
        """Remove the file if no row lists a chunk of it (caller made sure nothing is claimed
        and nobody reads)."""
        low, high = prefix_bounds(_prefix(slot))
        if self._query("SELECT 1 FROM Cache WHERE key >= ? AND key < ? AND raw = 1 LIMIT 1",
                       (low, high)):
            return False
        if not self._free_bytes():
            return False
        with suppress(FileNotFoundError):
            os.unlink(self.path(*slot))
        handle = self._handles.pop(slot, None)
        if handle is not None:
            self._retire_locked(handle)
        return True

    def close(self) -> None:
        with self._lock:
            while self._handles:
                _, handle = self._handles.popitem()
                self._retire_locked(handle)
