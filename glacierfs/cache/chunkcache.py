"""The local store of verified archive bytes: tree-hash-aligned chunks on ``diskcache``.

Owns one directory (mode 0700) holding a ``diskcache.Cache``: an SQLite index plus one value
file (mode 0600) per chunk. Nothing else writes there. ``ChunkCache`` is the store's face; its
parts are ``layout`` (the chunk grid and the index keys), ``writer`` (chunk files),
``handles`` (the read path), ``index`` (queries, room and eviction) and ``errors``.

What it guarantees
  * Only verified bytes: ``put_chunk`` hashes the data itself and refuses it unless its tree hash
    is the expected one, so no caller can store unverified bytes. The verified hash is kept
    beside the chunk (diskcache ``tag``) so a resumed download can fold the archive root from
    stored hashes without rereading data.
  * Whole chunks or nothing: a value file is written and fsynced before its row is committed; a
    kill in between leaves an unreferenced file (never readable; removed by a later open once
    older than ``ORPHAN_GRACE``). Disk full (ENOSPC/EDQUOT, from the file or from SQLite)
    raises ``CacheFullError`` with the partial file removed and the index untouched.
  * Size limit: least-recently-used chunks are evicted before a chunk is written (``index``).
  * Reads are all or nothing: a range touching a missing chunk raises ``NotCached`` naming every
    missing chunk, before any byte is read (``handles``).

Threading: every method may be called from any thread (the trio thread and worker threads) at
the same time. diskcache keeps one SQLite connection per thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import diskcache

from glacierfs import treehash
from glacierfs.cache.errors import CacheError, CacheFullError, ChunkVerificationError, NotCached
from glacierfs.cache.handles import HandleTable
from glacierfs.cache.index import ChunkIndex
from glacierfs.cache.layout import (HELD_MARK, ArchiveLayout, chunk_key, grid_prefix, held_key,
                                    key_prefix, prefix_bounds)
from glacierfs.cache.writer import DIR_MODE, FILE_MODE, ChunkDisk, ChunkWriter, Prewritten
from glacierfs.diskfull import LOCAL_ERRORS, is_disk_full

log = logging.getLogger(__name__)

# A value file with no index row is a write that never committed (a crash). Files younger
# than this may still be a write in flight in another process sharing the directory.
ORPHAN_GRACE = 60.0
DB_NAME = diskcache.core.DBNAME


class ChunkCache:
    """Verified archive chunks on disk, size-limited, least recently used out first."""

    def __init__(self, directory: str | Path, size_limit: int,
                 evictable: Callable[[str], bool] | None = None) -> None:
        """``evictable(archive_id)`` says whether an archive's chunks may be evicted now (the
        cache-room policy, which lives with the other limits); by default all may."""
        if size_limit <= 0:
            raise ValueError(f"size limit must be positive, got {size_limit}")
        self._dir = Path(directory)
        self._dir_str = str(self._dir)
        self._prepare_directory()
        self._cache = diskcache.Cache(
            str(self._dir),
            disk=ChunkDisk,
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            cull_limit=0,  # we evict ourselves, exactly enough and before writing: see ChunkIndex
            disk_min_file_size=0,  # every chunk in its own file: readable with pread
            statistics=0,  # a hit counter would be one more SQLite write per read
            tag_index=0,
        )
        self._disk: ChunkDisk = self._cache.disk
        self._chmod_db_files()
        self._handles = HandleTable(self._dir_str, self._query,
                                    lambda key: self._cache.delete(key, retry=True))
        self._index = ChunkIndex(self._cache, size_limit, self._handles, evictable)
        self._sweep_orphans()
        with self._index.room_lock:
            self._index.make_room_locked(0)

    @property
    def evictable(self) -> Callable[[str], bool] | None:
        return self._index.evictable

    @evictable.setter
    def evictable(self, policy: Callable[[str], bool] | None) -> None:
        self._index.evictable = policy

    # --- setup -------------------------------------------------------------------------------

    def _prepare_directory(self) -> None:
        """Create the directory 0700, or tighten it; refuse one owned by someone else."""
        self._dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        st = self._dir.stat()
        if st.st_uid != os.geteuid():
            raise CacheError(f"cache directory {self._dir} is owned by uid {st.st_uid}, not us")
        if st.st_mode & 0o777 != DIR_MODE:
            os.chmod(self._dir, DIR_MODE)
        db = self._dir / DB_NAME
        if not db.exists():
            # SQLite accepts an empty file as an empty database and gives its -wal and -shm
            # files the database's mode: creating it 0600 here keeps the index private without
            # touching the process-wide umask.
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))

    def _chmod_db_files(self) -> None:
        for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
            with suppress(FileNotFoundError):
                path = self._dir / name
                if path.stat().st_mode & 0o777 != FILE_MODE:
                    os.chmod(path, FILE_MODE)

    def _sweep_orphans(self) -> None:
        """Remove value files no row points at: writes a crash interrupted before the commit."""
        known = {row[0] for row in self._query("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
        cutoff = time.time() - ORPHAN_GRACE
        removed = 0
        for path in self._dir.glob("*/*/*.val"):
            rel = str(path.relative_to(self._dir))
            if rel in known:
                continue
            with suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        if removed:
            log.info("removed %d unfinished chunk file(s) from %s", removed, self._dir)

    # --- index queries -----------------------------------------------------------------------
    def _query(self, statement: str, args: tuple = ()) -> list[tuple]:
        return self._cache._sql(statement, args).fetchall()

    def _present(self, layout: ArchiveLayout) -> dict[int, bytes]:
        return self._index.present(layout)

    # --- writing -----------------------------------------------------------------------------

    def put_chunk(self, layout: ArchiveLayout, index: int, data: bytes, tree_hash: bytes) -> None:
        """Store chunk ``index`` if and only if ``data`` has the expected length and tree hash.

        Raises ChunkVerificationError (cache unchanged) or CacheFullError (nothing stored,
        nothing half-written left). Storing a chunk that is already there is a no-op.
        """
        expected_length = layout.chunk_length(index)
        if len(data) != expected_length:
            raise ChunkVerificationError(
                f"archive {layout.archive_id} chunk {index}: {len(data)} bytes, "
                f"expected {expected_length}"
            )
        actual = treehash.tree_hash(data)
        if actual != bytes(tree_hash):
            raise ChunkVerificationError(
                f"archive {layout.archive_id} chunk {index}: tree hash {actual.hex()} "
                f"!= expected {bytes(tree_hash).hex()}"
            )
        if self.chunk_tree_hash(layout, index) == actual:
            return
        key = chunk_key(layout, index)
        self._disk.take_written()  # nothing of an earlier put may be taken for ours below
        try:
            with self._index.reservation(len(data)):  # evicting needs SQLite writes: may hit ENOSPC too
                self._cache.set(key, data, tag=actual, retry=True)
        except BaseException as exc:
            self._undo_failed_set()
            if is_disk_full(exc):  # file or index: both become CacheFullError
                raise CacheFullError(
                    f"no room to cache archive {layout.archive_id} chunk {index}: {exc}"
                ) from exc
            raise
        self._disk.take_written()  # committed: from now on that file belongs to the index
        self._forget_handle(key)
        try:
            with self._index.room_lock:  # the index grew a little too: trim back under the limit
                self._index.make_room_locked(0, keep=key)
        except LOCAL_ERRORS as exc:
            log.warning("could not trim the cache after storing a chunk: %s", exc)
        log.debug("cached archive %s chunk %d (%d bytes)", layout.archive_id, index, len(data))

    def chunk_writer(self, layout: ArchiveLayout, index: int, buffer: memoryview) -> ChunkWriter:
        """A writer that stores chunk ``index`` as its bytes arrive in ``buffer`` (at least the
        chunk's length): leaves are hashed and written on the hashing pool as the caller marks
        them filled, so network, hashing and disk overlap and each byte is touched once after
        it lands. ``commit`` checks the tree hash; nothing is readable before. Room for the
        chunk is made now (CacheFullError if there is none)."""
        return ChunkWriter(layout, index, buffer, room=self._index, disk=self._disk,
                           commit=self._commit_prewritten)

    def _commit_prewritten(self, key: str, written: Prewritten, tag: bytes) -> None:
        """Commit a value file already written and made durable under ``key``; if that
        fails the file is removed (unless the row did commit after all)."""
        self._disk.take_written()
        self._disk._written.path = written.full_path
        try:
            self._cache.set(key, written, tag=tag, retry=True)
        except BaseException as exc:
            self._undo_failed_set()
            if is_disk_full(exc):
                raise CacheFullError(f"no room to index {key}: {exc}") from exc
            raise
        self._disk.take_written()
        self._forget_handle(key)
        try:
            with self._index.room_lock:
                self._index.make_room_locked(0, keep=key)
        except LOCAL_ERRORS as exc:
            log.warning("could not trim the cache after storing a chunk: %s", exc)


    # --- chunks held unverified ----------------------------------------------------------------

    def has_held_chunk(self, layout: ArchiveLayout, index: int) -> bool:
        return bool(self._query(
            "SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (held_key(layout, index),)
        ))

    def held_tree_hashes(self, layout: ArchiveLayout) -> dict[int, bytes]:
        """Chunks stored but held unverified: index → the tree hash computed from their bytes."""
        prefix = grid_prefix(layout) + HELD_MARK
        low, high = prefix, prefix[:-1] + chr(ord(HELD_MARK) + 1)
        found: dict[int, bytes] = {}
        for key, tag in self._query(
                "SELECT key, tag FROM Cache WHERE key >= ? AND key < ? AND raw = 1", (low, high)):
            suffix = key[len(prefix):]
            if suffix.isdigit() and int(suffix) < layout.chunk_count:
                found[int(suffix)] = bytes(tag)
        return found

    def promote_held(self, layout: ArchiveLayout, expected_root: bytes) -> None:
        """Make held chunks readable if, with the verified ones, they cover the archive and
        their folded root is ``expected_root`` (the archive's tree hash from the inventory).

        Raises NotCached (nothing changed) if a chunk is neither held nor verified, and
        ChunkVerificationError if the root differs; then every held chunk is dropped.
        """
        held = self.held_tree_hashes(layout)
        present = self._present(layout)
        hashes = {**held, **present}
        missing = [i for i in range(layout.chunk_count) if i not in hashes]
        if missing:
            raise NotCached(missing, layout.archive_id)
        root = treehash.fold([hashes[i] for i in range(layout.chunk_count)])
        if root != bytes(expected_root):
            for index in held:
                self._cache.delete(held_key(layout, index), retry=True)
            raise ChunkVerificationError(
                f"archive {layout.archive_id}: tree hash {root.hex()} of the downloaded bytes "
                f"!= the inventory's {bytes(expected_root).hex()}")
        with self._cache.transact(retry=True):  # all readable at once, or none
            con = self._cache._con
            for index in held:
                if index not in present:
                    con.execute("UPDATE Cache SET key = ? WHERE key = ? AND raw = 1",
                                (chunk_key(layout, index), held_key(layout, index)))
        for index in held:
            if index in present:  # verified meanwhile: the held copy is redundant
                self._cache.delete(held_key(layout, index), retry=True)
            self._forget_handle(chunk_key(layout, index))
        log.debug("archive %s: %d held chunk(s) verified as a whole", layout.archive_id,
                  len(held))

    def _undo_failed_set(self) -> None:
        """After a failed set: end any transaction SQLite left open, remove the orphan file.

        SQLite may or may not roll back by itself after SQLITE_FULL on COMMIT; a transaction left
        open would make every later write on this thread fail.
        """
        con = self._cache._con
        if con.in_transaction:
            with suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        written = self._disk.take_written()
        if written is None:
            return
        filename = os.path.relpath(written, self._dir_str)
        if self._query("SELECT 1 FROM Cache WHERE filename = ?", (filename,)):
            return  # committed after all (interrupted just after COMMIT): it is the chunk now
        with suppress(OSError):
            os.unlink(written)

    # --- state -------------------------------------------------------------------------------

    def has_chunk(self, layout: ArchiveLayout, index: int) -> bool:
        return bool(self._query(
            "SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (chunk_key(layout, index),)
        ))

    def missing_chunks(self, layout: ArchiveLayout) -> list[int]:
        present = self._present(layout)
        return [i for i in range(layout.chunk_count) if i not in present]

    def cached_bytes(self, layout: ArchiveLayout) -> int:
        """Verified bytes held for this archive (shown in ``user.glacier.cache.bytes``)."""
        return sum(layout.chunk_length(i) for i in self._present(layout))

    def state(self, layout: ArchiveLayout) -> str:
        """"absent", "partial" or "cached" (shown in ``user.glacier.cache``)."""
        present = len(self._present(layout))
        if present == 0:
            return "absent"
        return "cached" if present == layout.chunk_count else "partial"

    def chunk_tree_hash(self, layout: ArchiveLayout, index: int) -> bytes | None:
        """The verified tree hash stored with chunk ``index``, or None if it is not cached."""
        rows = self._query(
            "SELECT tag FROM Cache WHERE key = ? AND raw = 1", (chunk_key(layout, index),)
        )
        return bytes(rows[0][0]) if rows else None

    def chunk_tree_hashes(self, layout: ArchiveLayout) -> dict[int, bytes]:
        """Every stored chunk's verified tree hash, for folding the root on resume."""
        return self._present(layout)

    def discard_archive(self, archive_id: str) -> None:
        """Drop every chunk of an archive, whatever chunk size it was cached with."""
        low, high = prefix_bounds(key_prefix(archive_id))
        keys = [row[0] for row in self._query(
            "SELECT key FROM Cache WHERE key >= ? AND key < ? AND raw = 1", (low, high)
        )]
        for key in keys:
            self._cache.delete(key, retry=True)
            self._forget_handle(key)
        if keys:
            log.debug("discarded %d chunk(s) of archive %s", len(keys), archive_id)

    def volume(self) -> int:
        """Bytes on disk: chunk files plus the index."""
        return self._cache.volume()

    def disk_free(self) -> int | None:
        """Bytes free for glacierfs on the cache's filesystem (None if it cannot be asked):
        the limit is ``cache_size``, but a disk shared with other data may run out first."""
        try:
            st = os.statvfs(self._dir)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    @property
    def size_limit(self) -> int:
        return self._index.size_limit

    @property
    def directory(self) -> Path:
        return self._dir

    # --- reading -----------------------------------------------------------------------------

    def read(self, layout: ArchiveLayout, offset: int, length: int) -> bytes:
        """Bytes ``offset``..``offset+length`` clamped to the archive size, all or nothing.

        Raises NotCached with every missing chunk index if any chunk the range needs is absent.
        """
        return self._handles.read(layout, offset, length)

    def _forget_handle(self, key: str) -> None:
        self._handles.forget(key)

    def close(self) -> None:
        self._handles.close()
        with suppress(sqlite3.Error):  # recency only: never worth failing a close for
            self._index.flush_touches()
        self._cache.close()

    def __enter__(self) -> ChunkCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
