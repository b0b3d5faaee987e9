"""The local store of verified archive bytes: one sparse file per archive, indexed by
``diskcache``.

Owns one directory (mode 0700): ``cache.db`` (diskcache's SQLite index and LRU bookkeeping) and
``archives/`` with one sparse file (mode 0600) per archive and chunk size, holding chunk *i* at
byte *i* × ``chunk_size``. Nothing else writes there. ``ChunkCache`` is the store's face; its
parts are ``layout`` (the chunk grid, the keys, the file names), ``writer`` (writing chunks and
committing their rows), ``handles`` (the read path, claims, hole punching), ``index`` (queries,
room and eviction), ``recovery`` (what an open finds left by a crash or the previous release),
``sparse`` and ``errors``.

What it guarantees
  * Only verified bytes: a chunk is readable only once its row is in the index, and a row is
    written only for bytes whose tree hash was checked (``put_chunk`` hashes the data itself).
    The verified hash is the row's ``tag`` so a resumed download can fold the archive root from
    stored hashes without rereading data.
  * Durable before listed: the archive file is fdatasynced before the rows of its chunks commit
    (one sync for the chunks that finish together). A kill in between leaves bytes no row lists:
    never readable, and punched out by a later open once older than ``ORPHAN_GRACE``. Disk full
    (ENOSPC/EDQUOT, from the file or from SQLite) raises ``CacheFullError`` with the written
    range punched out again and the index untouched.
  * Size limit: least-recently-used chunks are evicted before a chunk is written (``index``),
    their bytes freed by punching holes, a file removed with its last chunk.
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
from glacierfs.cache import recovery
from glacierfs.cache.errors import CacheError, CacheFullError, ChunkVerificationError, NotCached
from glacierfs.cache.handles import HandleTable
from glacierfs.cache.index import ChunkIndex
from glacierfs.cache.layout import (ARCHIVE_DIR, HELD_MARK, ArchiveLayout, chunk_key, grid_prefix,
                                    held_key, key_prefix, parse_key, prefix_bounds)
from glacierfs.cache.writer import DIR_MODE, FILE_MODE, ChunkDisk, ChunkWriter, GroupCommit, InPlace, Row
from glacierfs.diskfull import LOCAL_ERRORS, is_disk_full

log = logging.getLogger(__name__)

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
            statistics=0,  # a hit counter would be one more SQLite write per read
            tag_index=0,
        )
        self._chmod_db_files()
        self._migration = recovery.Migration(self._cache, self._dir_str, self._moved)
        self._handles = HandleTable(self._dir_str, self._query, self._delete_rows,
                                    lambda: recovery.index_barrier(self._dir_str),
                                    self._prepare_read)
        self._index = ChunkIndex(self._cache, size_limit, self._handles, evictable)
        self._group = GroupCommit(self._apply_rows)
        self._migration.run(time.monotonic() + recovery.MIGRATE_AT_OPEN)
        recovery.sweep(self._cache, self._dir_str)  # before the migration goes on beside it
        self._migration.background()
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
        archives = self._dir / ARCHIVE_DIR
        with suppress(FileExistsError):
            archives.mkdir(mode=DIR_MODE)
        if archives.stat().st_mode & 0o777 != DIR_MODE:
            os.chmod(archives, DIR_MODE)
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
        writer = ChunkWriter(layout, index, memoryview(data), store=self, direct=False)
        writer.commit(actual)
        log.debug("cached archive %s chunk %d (%d bytes)", layout.archive_id, index, len(data))

    def chunk_writer(self, layout: ArchiveLayout, index: int, buffer: memoryview) -> ChunkWriter:
        """A writer that stores chunk ``index`` as its bytes arrive in ``buffer`` (at least the
        chunk's length): leaves are hashed and written on the hashing pool as the caller marks
        them filled, so network, hashing and disk overlap and each byte is touched once after
        it lands. ``commit`` checks the tree hash; nothing is readable before. Room for the
        chunk is made now (CacheFullError if there is none)."""
        return ChunkWriter(layout, index, buffer, store=self)

    # --- what writers use (writer.Store) -----------------------------------------------------

    def reserve(self, size: int) -> None:
        self._index.reserve(size)

    def unreserve(self, size: int) -> None:
        self._index.unreserve(size)

    def claim(self, layout: ArchiveLayout, index: int, wait: bool) -> bool:
        return self._handles.claim(layout, index, wait)

    def unclaim(self, layout: ArchiveLayout, index: int) -> None:
        self._handles.unclaim(layout, index)

    def rows_of(self, layout: ArchiveLayout, index: int) -> tuple[bool, bool]:
        """(verified, held): which rows of chunk ``index`` exist."""
        keys = {key for (key,) in self._query(
            "SELECT key FROM Cache WHERE key IN (?, ?) AND raw = 1",
            (chunk_key(layout, index), held_key(layout, index)))}
        return chunk_key(layout, index) in keys, held_key(layout, index) in keys

    def drop_held(self, layout: ArchiveLayout, index: int) -> None:
        """Delete the held row of chunk ``index`` if there is one (without touching bytes: the
        caller writes or has written the verified chunk there)."""
        key = held_key(layout, index)
        if self._query("SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (key,)):
            self._cache.delete(key, retry=True)

    def archive_path(self, layout: ArchiveLayout) -> str:
        return self._handles.path(layout.archive_id, layout.chunk_size)

    def commit_durable(self, path: str, fd: int, row: Row) -> None:
        self._group.commit(path, fd, row)

    def _apply_rows(self, rows: list[Row]) -> None:
        """Commit rows of chunks already durable in their file, all in one transaction."""
        try:
            with self._cache.transact(retry=True):
                for row in rows:
                    self._cache.set(row.key, InPlace(row.layout.chunk_length(row.index)),
                                    tag=row.tag, retry=True)
        except BaseException as exc:
            con = self._cache._con
            if con.in_transaction:  # SQLITE_FULL on COMMIT may leave it open
                with suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
            if not all(self._query("SELECT 1 FROM Cache WHERE key = ?", (row.key,))
                       for row in rows):
                if is_disk_full(exc):
                    raise CacheFullError(f"no room to index {len(rows)} chunk(s): {exc}") from exc
                raise
            # committed after all (interrupted just after COMMIT): the rows stand
        # the rows are counted in the volume now: their writers' reservations end here
        self._index.unreserve(sum(row.layout.chunk_length(row.index) for row in rows))
        for row in rows:
            if not row.held:
                self._handles.chunk_added(row.layout, row.index)
        try:
            with self._index.room_lock:  # the rows are counted now: trim back under the limit
                self._index.make_room_locked(0, keep=rows[-1].key)
        except LOCAL_ERRORS as exc:
            log.warning("could not trim the cache after storing a chunk: %s", exc)

    def _prepare_read(self, layout: ArchiveLayout, chunks: range) -> None:
        """Chunks a read needs that are still in the previous release's layout move first."""
        if self._migration.pending:
            self._migration.keys([key for i in chunks for key in
                                  (chunk_key(layout, i), held_key(layout, i))])

    def _moved(self, keys: list[str]) -> None:
        """Rows of the previous layout now point into archive files: readers may have them."""
        for key in keys:
            archive_id, chunk_size, index, held = parse_key(key)
            if not held:
                self._handles.chunk_added(ArchiveLayout(archive_id, 0, chunk_size), index)

    def _delete_rows(self, keys: list[str]) -> None:
        for key in keys:
            self._cache.delete(key, retry=True)
        self._handles.chunk_dropped(keys)

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
            self._delete_rows([held_key(layout, index) for index in held])
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
            else:
                self._handles.chunk_added(layout, index)
        log.debug("archive %s: %d held chunk(s) verified as a whole", layout.archive_id,
                  len(held))

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
        self._delete_rows(keys)
        if keys:
            log.debug("discarded %d chunk(s) of archive %s", len(keys), archive_id)

    def volume(self) -> int:
        """Bytes counted against the limit: the chunks the index lists plus the index itself."""
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

    def close(self) -> None:
        self._migration.stop()
        self._handles.close()
        with suppress(sqlite3.Error):  # recency only: never worth failing a close for
            self._index.flush_touches()
        self._cache.close()

    def __enter__(self) -> ChunkCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
