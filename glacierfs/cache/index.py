"""The index side of the store: queries on diskcache's table, space reservations and eviction.

Owns the size limit. Before a chunk is written, least-recently-used chunks are evicted one at
a time until it fits (diskcache's own culling is disabled: it removes ``cull_limit`` entries at
once whatever their size, and only after the new value is already on disk). Writes in flight
hold a reservation, so concurrent writers together still respect the limit. The cache-room
policy (``evictable``) says which archives may lose chunks now.

Threading: ``room_lock`` serialises eviction decisions and the reservations.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import diskcache

from glacierfs.cache.errors import CacheFullError, NoRoomError
from glacierfs.cache.handles import HandleTable
from glacierfs.cache.layout import ArchiveLayout, grid_prefix, prefix_bounds, slot_of

log = logging.getLogger(__name__)

# Eviction candidates are read in this many rows at a time, oldest first, skipping those the
# cache-room policy keeps.
EVICTION_BATCH = 64


class ChunkIndex:
    """diskcache's index of chunks, with the size limit kept by least-recently-used eviction."""

    def __init__(self, cache: diskcache.Cache, size_limit: int, handles: HandleTable,
                 evictable: Callable[[str], bool] | None = None) -> None:
        self.cache = cache
        self.size_limit = size_limit
        self.handles = handles
        self.evictable = evictable
        self.room_lock = threading.Lock()
        self._reserved = 0

    def query(self, statement: str, args: tuple = ()) -> list[tuple]:
        """Run a read-only query on diskcache's index.

        diskcache has no range query; its Cache table (key, raw, tag, size, filename,
        access_time) has been stable since 4.0. Going through its per-thread connection keeps
        us inside its transactions' view.
        """
        return self.cache._sql(statement, args).fetchall()

    def present(self, layout: ArchiveLayout) -> dict[int, bytes]:
        """Stored chunks of this layout: index → verified tree hash, in one indexed range scan."""
        prefix = grid_prefix(layout)
        low, high = prefix_bounds(prefix)
        rows = self.query(
            "SELECT key, tag FROM Cache WHERE key >= ? AND key < ? AND raw = 1", (low, high)
        )
        found: dict[int, bytes] = {}
        for key, tag in rows:
            suffix = key[len(prefix):]
            if suffix.isdigit():
                index = int(suffix)
                if index < layout.chunk_count:
                    found[index] = bytes(tag)
        return found

    def delete(self, key: str) -> None:
        """Drop a chunk's row; its bytes are punched out once no read needs them."""
        self.cache.delete(key, retry=True)
        self.handles.chunk_dropped([key])

    # --- room --------------------------------------------------------------------------------

    def reserve(self, size: int) -> None:
        """Make room for ``size`` bytes and hold it while they are written (not yet counted in
        diskcache's volume), so concurrent writers cannot overshoot the limit together."""
        with self.room_lock:
            if size > self.size_limit:
                raise CacheFullError(
                    f"a {size}-byte chunk cannot fit a {self.size_limit}-byte cache"
                )
            self.make_room_locked(size)
            self._reserved += size

    def unreserve(self, size: int) -> None:
        with self.room_lock:
            self._reserved -= size

    @contextmanager
    def reservation(self, size: int) -> Iterator[None]:
        self.reserve(size)
        try:
            yield
        finally:
            self.unreserve(size)

    def make_room_locked(self, incoming: int, keep: str | None = None) -> None:
        """Evict least-recently-used chunks, one at a time, until ``incoming`` more bytes fit.

        Caller holds ``room_lock``. Raises CacheFullError if even an empty cache (only the
        index left) cannot take them.
        """
        evicted = 0
        if self.cache.volume() + self._reserved + incoming > self.size_limit:
            self.flush_touches()
        while self.cache.volume() + self._reserved + incoming > self.size_limit:
            victim = self._eviction_candidate(keep)
            if victim is None:
                if incoming and self.evictable is not None:
                    raise NoRoomError(f"{incoming} bytes do not fit a {self.size_limit}-byte "
                                      "cache beside the restored files not yet read")
                if incoming:
                    raise CacheFullError(
                        f"{incoming} bytes do not fit a {self.size_limit}-byte cache")
                break
            self.delete(victim)
            evicted += 1
        if evicted:
            log.debug("evicted %d chunk(s) to stay under %d bytes", evicted, self.size_limit)

    def _eviction_candidate(self, keep: str | None) -> str | None:
        """The least recently used chunk that may go (not ``keep``, not of a kept archive)."""
        offset = 0
        while True:
            rows = self.query(
                "SELECT key FROM Cache WHERE key != ? ORDER BY access_time LIMIT ? OFFSET ?",
                (keep or "", EVICTION_BATCH, offset))
            for (key,) in rows:
                if self.evictable is None or self.evictable(slot_of(key)[0]):
                    return key
            if len(rows) < EVICTION_BATCH:
                return None
            offset += EVICTION_BATCH

    def flush_touches(self) -> None:
        """Write the read times collected since the last flush to the index's access_time, in
        one transaction, so least-recently-used eviction sees reads that did no SQLite write."""
        pending = self.handles.take_touches()
        if not pending:
            return
        with self.cache.transact(retry=True):
            self.cache._con.executemany(
                "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1 AND access_time < ?",
                [(when, key, when) for key, when in pending.items()],
            )
