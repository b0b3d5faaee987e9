"""Cache room: a limit like ``max_jobs`` and ``budget``, for the bytes the cache can hold.

Owns the *pins*: archives restored on purpose (``user.glacier.restore``, ``glacierfs restore``,
``glacierfs copy``) whose bytes have not yet been read through the mount. Two rules follow:

* a pinned archive's chunks are never evicted to make room for other downloads (the chunk
  store asks ``evictable``), so a restore is not paid for and then thrown away unread;
* a retrieval starts only when its bytes fit beside the pinned ones (``refuses``); until then
  it stays Queued, "waiting for cache room". It is never started only to be evicted.

A pin is *wanted* from the explicit request on, and *held* (counted against the room) from
the moment its job starts, or at once when its job already exists. It ends when every chunk of
the archive has been read through the mount (``note_read``; ``glacierfs copy``, ``cp`` and
``rsync`` read files whole), which is what frees room for the next files.

A foreground reader of an archive that was not restored explicitly gets no pin: its chunks may
be evicted (least recently used, among unpinned chunks only). It never evicts restored data
that is unread. How held restores yield to readers instead:

* a request waiting for room holds back no other request (the start queue): whatever fits
  beside the held bytes starts, in request order among those that fit, so a small read or a
  ``glacierfs copy`` is never queued behind restores that wait for room;
* when held bytes leave no room for a reader's archive, its retrieval waits for room and the
  read answers "not ready" (EREMOTE) only while that room is changing hands: a held restore
  was started, downloaded or read within ROOM_IDLE seconds (``idle``). Once every held restore
  sits unread, nothing will serve the read, and it fails at once with the reason and the way out
  (ENOSPC: read or copy the restored files, or raise cache_size). The request stays queued and
  starts by itself as soon as room is freed.

An archive larger than the whole room cannot be held: it is not pinned (``too_large``), and it
starts only when nothing is held, so it is read as it is downloaded (ranged retrievals serve it
better); ``glacierfs restore`` and ``wait`` say so at once.

Pins persist in the state database (table ``pins``), so a remount keeps restored data. The
chunks read of each pinned archive are kept in memory only: after a restart a file must be read
again (whole) to release its pin. Runs on the trio thread; ``evictable`` is also called from the
chunk store's worker threads (a set lookup, safe under the GIL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from glacierfs.formatting import human
from glacierfs.diskfull import LOCAL_ERRORS
from glacierfs.store import Store

log = logging.getLogger(__name__)

# Part of ``cache_size`` kept out of the room: the chunk index's own pages (SQLite) count
# against the cache's size limit too, and a pinned archive must fit whole beside them.
MARGIN_FRACTION = 1 / 64
MIN_MARGIN = 4 * 1024 * 1024
ROOM_REASON = "waiting for cache room"   # prefix of the Queued message; `glacierfs wait` reads it
# Held restores that nobody started, downloaded or read for this long are taken as sitting
# unread: a reader waiting for their room is then answered at once (see the module doc).
ROOM_IDLE = 15.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pins (
    archive_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    held INTEGER NOT NULL DEFAULT 0
);
"""


def capacity_of(cache_limit: int) -> int:
    """Bytes of archives the cache can hold whole: its limit less the index's margin."""
    return max(0, cache_limit - max(MIN_MARGIN, int(cache_limit * MARGIN_FRACTION)))


class CacheRoom:
    def __init__(self, store: Store, cache_limit: int) -> None:
        self._store = store
        self.capacity = capacity_of(cache_limit)
        store.db.executescript(_SCHEMA)
        rows = store.db.execute("SELECT archive_id, size, held FROM pins").fetchall()
        self._wanted: dict[str, int] = {a: s for a, s, held in rows if not held}
        self._held: dict[str, int] = {a: s for a, s, held in rows if held}
        self._read: dict[str, set[int]] = {}       # chunks read since the pin, per archive
        self.on_release: Callable[[], None] = lambda: None   # room appeared
        self.active_at = time.monotonic()   # a held restore last started, landed or was read

    # --- queries ---------------------------------------------------------------------------
    def evictable(self, archive_id: str) -> bool:
        """May the chunk store evict this archive's chunks now?"""
        return archive_id not in self._held

    def is_pinned(self, archive_id: str) -> bool:
        return archive_id in self._held or archive_id in self._wanted

    def is_held(self, archive_id: str) -> bool:
        return archive_id in self._held

    def too_large(self, size: int) -> bool:
        """Can an archive of ``size`` bytes never be held whole?"""
        return size > self.capacity

    def touch(self) -> None:
        """A held restore moved (started, downloaded a chunk, was read)."""
        self.active_at = time.monotonic()

    def idle(self, busy: Callable[[str], bool] = lambda a: False) -> bool:
        """Do held restores sit unread: none ``busy`` (downloading) and none started,
        downloaded or read for ROOM_IDLE seconds? Then room will not be freed by itself."""
        if not self._held or any(busy(a) for a in self._held):
            return False
        return time.monotonic() - self.active_at >= ROOM_IDLE

    @property
    def held_bytes(self) -> int:
        return sum(self._held.values())

    @property
    def free(self) -> int:
        """Room left for new retrievals."""
        return max(0, self.capacity - self.held_bytes)

    def refuses(self, archive_id: str, size: int) -> str | None:
        """None when a retrieval of ``size`` bytes may start now, else why it waits."""
        if archive_id in self._held or size <= 0:
            return None
        held = self.held_bytes
        if size > self.capacity:
            if held == 0:
                return None
            return (f"{ROOM_REASON}: larger than the cache ({human(size)} of "
                    f"{human(self.capacity)}); starts once the {human(held)} held for restored "
                    "files are read")
        if held + size > self.capacity:
            return (f"{ROOM_REASON}: {human(held)} of {human(self.capacity)} are held for "
                    "restored files not yet read; read or copy them (glacierfs copy), or raise "
                    "cache_size")
        return None

    # --- changes ---------------------------------------------------------------------------
    def want(self, archive_id: str, size: int) -> None:
        """An explicit restore: the archive is kept once its retrieval starts."""
        if archive_id in self._held or archive_id in self._wanted:
            return
        self._wanted[archive_id] = size
        self._write("INSERT OR REPLACE INTO pins(archive_id, size, held) VALUES (?, ?, 0)",
                    (archive_id, size))

    def hold(self, archive_id: str) -> None:
        """Its retrieval starts (or already exists): count it against the room, from now on
        never evicted. An archive larger than the room is read as it comes, not held."""
        size = self._wanted.pop(archive_id, None)
        if size is None:
            return
        if size > self.capacity:
            self._write("DELETE FROM pins WHERE archive_id = ?", (archive_id,))
            return
        self._held[archive_id] = size
        self._read.pop(archive_id, None)
        self.touch()
        self._write("UPDATE pins SET held = 1 WHERE archive_id = ?", (archive_id,))

    def unhold(self, archive_id: str) -> None:
        """Its start was put off (throttled, no answer): it waits for room again."""
        size = self._held.pop(archive_id, None)
        if size is None:
            return
        self._wanted[archive_id] = size
        self._write("UPDATE pins SET held = 0 WHERE archive_id = ?", (archive_id,))
        self.on_release()

    def note_read(self, archive_id: str, chunks: range, chunk_count: int) -> None:
        """Chunks served to a reader; the pin ends once every chunk was read."""
        if archive_id not in self._held:
            return
        seen = self._read.setdefault(archive_id, set())
        seen.update(chunks)
        self.touch()
        if len(seen) >= chunk_count:
            self.release(archive_id)

    def release(self, archive_id: str) -> None:
        """The archive no longer needs keeping (read, failed, or forgotten)."""
        self._read.pop(archive_id, None)
        was_held = self._held.pop(archive_id, None) is not None
        if self._wanted.pop(archive_id, None) is not None or was_held:
            self._write("DELETE FROM pins WHERE archive_id = ?", (archive_id,))
        if was_held:
            log.debug("archive %s read whole: its cache room is free", archive_id[:16])
            self.on_release()

    def _write(self, statement: str, args: tuple[object, ...]) -> None:
        """Pins are a courtesy kept across remounts: a full disk only loses that."""
        try:
            self._store.db.execute(statement, args)
        except LOCAL_ERRORS as exc:
            log.info("cache room pins not saved: %s", exc)
