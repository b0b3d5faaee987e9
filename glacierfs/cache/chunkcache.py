"""The local store of verified archive bytes: tree-hash-aligned chunks on ``diskcache``.

Owns one directory (mode 0700) holding a ``diskcache.Cache``: an SQLite index plus one value
file (mode 0600) per chunk. Nothing else writes there.

What it guarantees
  * Only verified bytes: ``put_chunk`` hashes the data itself and refuses it unless its tree hash
    is the expected one, so no caller can store unverified bytes. The verified hash is kept
    beside the chunk (diskcache ``tag``) so a resumed download can fold the archive root from
    stored hashes without rereading data.
  * Whole chunks or nothing: a value file is written and fsynced before its row is committed; a
    kill in between leaves an unreferenced file (never readable; removed by a later open once
    older than ``ORPHAN_GRACE``). Disk full (ENOSPC/EDQUOT, from the file or from SQLite)
    raises ``CacheFullError`` with the partial file removed and the index untouched.
  * Size limit: before a chunk is written, least-recently-used chunks are evicted one at a time
    until it fits (diskcache's own culling is disabled: it removes ``cull_limit`` entries at once
    whatever their size, and only after the new value is already on disk).
  * Reads are all or nothing: a range touching a missing chunk raises ``NotCached`` naming every
    missing chunk, before any byte is read.

Keys: ``"<len(archive_id)>:<archive_id>/<chunk_size>/<index>"``. The length prefix makes every
archive's prefix unambiguous whatever its id contains, and the chunk size in the key keeps the
chunk grids of one archive apart if the chunk size ever changes.

Read path: a read does no SQLite write (diskcache's LRU ``get`` would run a write transaction
per call). Chunk files stay open in a small LRU of handles and are read with ``os.pread``; each
read just stamps its handle with the time. Those stamps are written to the index's
``access_time`` in one transaction right before every eviction decision (and at close), so
eviction still sees true recency. An open handle is re-checked against the index at most once
per ``RECHECK_INTERVAL``, which notices chunks removed behind our back (another process, a hand
``rm``). A chunk evicted by this process loses its handle at once, so it reads as ``NotCached``;
a handle opened just before another thread's eviction may serve the old (verified) bytes until
its next re-check, which is harmless: Linux keeps an unlinked file readable.

Threading: every method may be called from any thread (the trio thread and worker threads) at
the same time. diskcache keeps one SQLite connection per thread. ``_lock`` guards the handle
table; handles are reference-counted so one thread never closes a descriptor another is reading
(a reused descriptor number would otherwise read some other file). ``_room_lock`` serialises
eviction decisions and the space reservations of writes in flight, so concurrent ``put_chunk``
calls together still respect the size limit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import diskcache

from glacierfs import treehash
from glacierfs.diskfull import LOCAL_ERRORS, is_disk_full
from glacierfs.treehash import MIB, is_power_of_two

log = logging.getLogger(__name__)

# How long a chunk's open handle is trusted before the index is asked again (one read-only
# SELECT): bounds how long a chunk removed outside this process is still served from an open
# handle, at a cost far below one query per read.
RECHECK_INTERVAL = 10.0
# Open chunk files kept for reading. Readers are sequential or random within a few files;
# 64 descriptors cover that with room to spare and stay far below any fd limit.
HANDLE_CACHE_SIZE = 64
# A value file with no index row is a write that never committed (a crash). Files younger
# than this may still be a write in flight in another process sharing the directory.
ORPHAN_GRACE = 60.0
# Data made durable before its row commits, so a power loss cannot leave a committed row
# pointing at a file whose blocks never reached the disk.
FSYNC_CHUNKS = True
DIR_MODE = 0o700
# Opening a chunk races with its replacement or eviction (query, then open): retry a little.
OPEN_ATTEMPTS = 3
# Creating a value file races with diskcache pruning emptied subdirectories; a few retries win.
CREATE_ATTEMPTS = 10
FILE_MODE = 0o600
DB_NAME = diskcache.core.DBNAME
# Eviction candidates are read in this many rows at a time, oldest first, skipping those the
# cache-room policy keeps.
EVICTION_BATCH = 64
# Key suffix of a chunk held unverified (an endpoint that sends no tree hash per range): stored,
# never readable, until the whole archive's root checks out and the rows are renamed.
HELD_MARK = "h"


class CacheError(Exception):
    """Base of the errors the chunk cache raises."""


class NotCached(CacheError):
    """A read touched chunks that are not (or no longer) in the cache."""

    def __init__(self, missing: list[int], archive_id: str = "") -> None:
        super().__init__(f"archive {archive_id}: chunks {missing} not cached")
        self.missing = list(missing)
        self.archive_id = archive_id


class ChunkVerificationError(CacheError):
    """Bytes offered to the cache do not match their expected tree hash (or length)."""


class CacheFullError(CacheError):
    """No room to store a chunk (disk full, quota, or a chunk larger than the whole cache).

    Nothing half-written remains and the cache stays usable.
    """


class NoRoomError(CacheFullError):
    """The size limit is reached and what fills it may not be evicted (restored, unread)."""


@dataclass(frozen=True)
class ArchiveLayout:
    """How one archive is cut into tree-hash-aligned chunks of ``chunk_size`` bytes."""

    archive_id: str
    size: int
    chunk_size: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"negative archive size {self.size}")
        if self.chunk_size % MIB or not is_power_of_two(self.chunk_size // MIB):
            raise ValueError(f"chunk size {self.chunk_size} is not a power-of-two number of MiB")

    @property
    def chunk_count(self) -> int:
        """Number of chunks; a 0-byte archive is one empty chunk, so it can be cached too."""
        return max(1, -(-self.size // self.chunk_size))

    def chunk_range(self, index: int) -> tuple[int, int]:
        """Inclusive (start, end) of chunk ``index``; (0, -1) for the empty archive's chunk."""
        if not 0 <= index < self.chunk_count:
            raise IndexError(f"chunk {index} out of range 0..{self.chunk_count - 1}")
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.size) - 1

    def chunk_length(self, index: int) -> int:
        start, end = self.chunk_range(index)
        return end - start + 1

    def chunks_for(self, offset: int, length: int) -> range:
        """Chunk indexes a read of ``length`` bytes at ``offset`` needs, after clamping to size."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = min(offset + length, self.size)
        if end <= offset:
            return range(0)
        return range(offset // self.chunk_size, (end - 1) // self.chunk_size + 1)


def _key_prefix(archive_id: str) -> str:
    return f"{len(archive_id)}:{archive_id}/"


def _grid_prefix(layout: ArchiveLayout) -> str:
    return f"{_key_prefix(layout.archive_id)}{layout.chunk_size}/"


def _chunk_key(layout: ArchiveLayout, index: int) -> str:
    return f"{_grid_prefix(layout)}{index}"


def _slot(key: str) -> tuple[str, int, int]:
    """The handle-table slot (archive id, chunk size, index) of an index key."""
    length, rest = key.split(":", 1)
    archive_id = rest[:int(length)]
    chunk_size, index = rest[int(length) + 1:].split("/")
    # A held chunk ("h<index>") is never open for reading: a slot no handle has.
    return archive_id, int(chunk_size), int(index) if index.isdigit() else -1


def _held_key(layout: ArchiveLayout, index: int) -> str:
    return f"{_grid_prefix(layout)}{HELD_MARK}{index}"


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    """[low, high) such that exactly the keys starting with ``prefix`` lie in it.

    Every prefix ends in "/", and "0" is the next code point, so ``high`` is the prefix with its
    last character bumped. SQLite compares TEXT bytewise, and UTF-8 byte order is code point order.
    """
    return prefix, prefix[:-1] + "0"


class _ChunkDisk(diskcache.Disk):
    """diskcache's Disk, writing chunk files our way: 0600 from the start, fsynced, and removed
    again if the write fails, so ENOSPC or an exception never leaves a partial file behind.

    The path of the last file written by each thread is remembered, so ``ChunkCache`` can remove
    it when the index update that should have followed fails.
    """

    def __init__(self, directory: str, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self._written = threading.local()

    def take_written(self) -> str | None:
        path = getattr(self._written, "path", None)
        self._written.path = None
        return path

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if type(value) is _Prewritten:
            return value.size, diskcache.core.MODE_BINARY, value.filename, None
        if type(value) not in (bytes, bytearray, memoryview):
            return super().store(value, read, key=key)
        filename, full_path = self.filename(key, value)
        fd = self._create(filename, full_path)
        self._written.path = full_path
        try:
            view = memoryview(value)
            while view:
                view = view[os.write(fd, view):]
            if FSYNC_CHUNKS:
                os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            with suppress(OSError):
                os.unlink(full_path)
            self._written.path = None
            raise
        os.close(fd)
        return len(value), diskcache.core.MODE_BINARY, filename, None

    def create(self) -> tuple[str, str, int]:
        """A new value file (relative name, full path, descriptor open for writing)."""
        filename, full_path = self.filename()
        return filename, full_path, self._create(filename, full_path)

    def _create(self, filename: str, full_path: str) -> int:
        """Create the value file 0600 in 0700 subdirectories.

        Retried because diskcache removes emptied subdirectories when it deletes a value file,
        possibly between our mkdir and our open (diskcache's own writer retries likewise).
        """
        for attempt in range(CREATE_ATTEMPTS):
            parent = self._directory
            for part in os.path.dirname(filename).split(os.sep):
                parent = os.path.join(parent, part)
                with suppress(FileExistsError):
                    os.mkdir(parent, DIR_MODE)
            try:
                return os.open(full_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                               FILE_MODE)
            except FileNotFoundError:
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class _Prewritten:
    """A value file already written and made durable: ``store`` just records it."""

    filename: str
    full_path: str
    size: int


class ChunkWriter:
    """Stores one chunk as it arrives (see ``ChunkCache.chunk_writer``).

    The caller (one thread) fills the buffer front to back and calls ``filled(n)`` with the
    number of bytes in so far; every complete 1 MiB leaf is then hashed and ``pwrite``-n on the
    hashing pool (hashlib and pwrite release the GIL, so this runs beside the next socket
    read). ``commit(expected)`` waits for them, checks the tree hash, makes the file durable
    (fdatasync) and only then commits its index row. ``abort`` removes everything.
    """

    def __init__(self, cache: ChunkCache, layout: ArchiveLayout, index: int,
                 buffer: memoryview) -> None:
        self.cache = cache
        self.layout = layout
        self.index = index
        self.length = layout.chunk_length(index)
        if len(buffer) < self.length:
            raise ValueError(f"buffer of {len(buffer)} bytes for a {self.length}-byte chunk")
        self._view = buffer[:self.length]
        self._leaves: list[Any] = []  # futures of leaf digests, in order
        self._submitted = 0          # bytes handed to the pool
        self._fd: int | None = None
        self._reserved = 0
        self._path = ""
        try:
            cache._reserve(self.length)
            self._reserved = self.length
            self._filename, self._path, self._fd = cache._disk.create()
        except BaseException as exc:
            self._release()
            if is_disk_full(exc):
                raise CacheFullError(f"no room for archive {layout.archive_id} chunk "
                                     f"{index}: {exc}") from exc
            raise

    def _leaf_job(self, start: int, end: int) -> bytes:
        piece = self._view[start:end]
        digest = hashlib.sha256(piece).digest()
        fd = self._fd
        assert fd is not None
        while piece:
            written = os.pwrite(fd, piece, start)
            start += written
            piece = piece[written:]
        return digest

    def filled(self, upto: int) -> None:
        """Bytes ``0..upto`` of the chunk are in the buffer."""
        pool = treehash.executor()
        while self._submitted + MIB <= upto or (upto == self.length
                                                 and self._submitted < upto):
            end = min(self._submitted + MIB, self.length)
            self._leaves.append(pool.submit(self._leaf_job, self._submitted, end))
            self._submitted = end

    def _digests(self) -> list[bytes]:
        digests = []
        error: BaseException | None = None
        for future in self._leaves:
            try:
                digests.append(future.result())
            except BaseException as exc:  # wait for every job before raising the first error
                error = error or exc
        if error is not None:
            raise error
        return digests or [treehash.EMPTY_TREE_HASH]

    def commit(self, expected: bytes | None, hold: bool = False) -> bytes:
        """Store the chunk if its tree hash is ``expected``; with ``hold`` (an endpoint that
        sent no hash) store it unreadable, to be checked with the whole archive by
        ``ChunkCache.promote_held``. Returns the tree hash. Raises ChunkVerificationError or
        CacheFullError, after which nothing of the chunk remains."""
        try:
            self.filled(self.length)
            actual = treehash.fold(self._digests())
            if not hold and (expected is None or actual != bytes(expected)):
                raise ChunkVerificationError(
                    f"archive {self.layout.archive_id} chunk {self.index}: tree hash "
                    f"{actual.hex()} != expected {bytes(expected or b'').hex()}")
            assert self._fd is not None
            if FSYNC_CHUNKS:
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = None
            key = (_held_key if hold else _chunk_key)(self.layout, self.index)
            path, self._path = self._path, ""  # from here the commit owns the file
            # Its row counts the chunk from now on: a reservation still held would count it
            # twice in the trim after the commit, which then evicted a chunk for nothing.
            self._release()
            self.cache._commit_prewritten(
                key, _Prewritten(self._filename, path, self.length), actual)
        except BaseException as exc:
            self.abort()
            if is_disk_full(exc) and not isinstance(exc, CacheFullError):
                raise CacheFullError(f"no room to cache archive {self.layout.archive_id} "
                                     f"chunk {self.index}: {exc}") from exc
            raise
        finally:
            self._release()
        return actual

    def abort(self) -> None:
        for future in self._leaves:
            with suppress(BaseException):
                future.result()
        self._leaves = []
        if self._fd is not None:
            with suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._path:
            with suppress(OSError):
                os.unlink(self._path)
            self._path = ""
        self._release()

    def _release(self) -> None:
        if self._reserved:
            self.cache._unreserve(self._reserved)
            self._reserved = 0


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


class ChunkCache:
    """Verified archive chunks on disk, size-limited, least recently used out first."""

    def __init__(self, directory: str | Path, size_limit: int,
                 evictable: Callable[[str], bool] | None = None) -> None:
        """``evictable(archive_id)`` says whether an archive's chunks may be evicted now (the
        cache-room policy, which lives with the other limits); by default all may."""
        if size_limit <= 0:
            raise ValueError(f"size limit must be positive, got {size_limit}")
        self._dir = Path(directory)
        self._dir_str = str(self._dir)  # joined as a str on the open path: pathlib costs µs
        self._prepare_directory()
        self._size_limit = size_limit
        self.evictable = evictable
        self._cache = diskcache.Cache(
            str(self._dir),
            disk=_ChunkDisk,
            size_limit=size_limit,
            eviction_policy="least-recently-used",
            cull_limit=0,  # we evict ourselves, exactly enough and before writing: see _make_room_locked
            disk_min_file_size=0,  # every chunk in its own file: readable with pread
            statistics=0,  # a hit counter would be one more SQLite write per read
            tag_index=0,
        )
        self._disk: _ChunkDisk = self._cache.disk
        self._chmod_db_files()
        self._lock = threading.Lock()
        # Open chunks by (archive id, chunk size, index): a tuple, because building the index's
        # string key costs more per read than the rest of the bookkeeping together.
        self._handles: OrderedDict[tuple[str, int, int], _Handle] = OrderedDict()
        self._touched: dict[str, float] = {}  # read times of retired handles, not yet flushed
        self._room_lock = threading.Lock()
        self._reserved = 0
        self._sweep_orphans()
        with self._room_lock:
            self._make_room_locked(0)

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
        """Run a read-only query on diskcache's index.

        diskcache has no range query; its Cache table (key, raw, tag, size, filename,
        access_time) has been stable since 4.0. Going through its per-thread connection keeps
        us inside its transactions' view.
        """
        return self._cache._sql(statement, args).fetchall()

    def _present(self, layout: ArchiveLayout) -> dict[int, bytes]:
        """Stored chunks of this layout: index → verified tree hash, in one indexed range scan."""
        prefix = _grid_prefix(layout)
        low, high = _prefix_bounds(prefix)
        rows = self._query(
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
        key = _chunk_key(layout, index)
        self._disk.take_written()  # nothing of an earlier put may be taken for ours below
        try:
            with self._reservation(len(data)):  # evicting needs SQLite writes: may hit ENOSPC too
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
            with self._room_lock:  # the index grew a little too: trim back under the limit
                self._make_room_locked(0, keep=key)
        except LOCAL_ERRORS as exc:
            log.warning("could not trim the cache after storing a chunk: %s", exc)
        log.debug("cached archive %s chunk %d (%d bytes)", layout.archive_id, index, len(data))

    def chunk_writer(self, layout: ArchiveLayout, index: int, buffer: memoryview) -> ChunkWriter:
        """A writer that stores chunk ``index`` as its bytes arrive in ``buffer`` (at least the
        chunk's length): leaves are hashed and written on the hashing pool as the caller marks
        them filled, so network, hashing and disk overlap and each byte is touched once after
        it lands. ``commit`` checks the tree hash; nothing is readable before. Room for the
        chunk is made now (CacheFullError if there is none)."""
        return ChunkWriter(self, layout, index, buffer)

    def _commit_prewritten(self, key: str, written: _Prewritten, tag: bytes) -> None:
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
            with self._room_lock:
                self._make_room_locked(0, keep=key)
        except LOCAL_ERRORS as exc:
            log.warning("could not trim the cache after storing a chunk: %s", exc)

    def _reserve(self, size: int) -> None:
        with self._room_lock:
            if size > self._size_limit:
                raise CacheFullError(
                    f"a {size}-byte chunk cannot fit a {self._size_limit}-byte cache"
                )
            self._make_room_locked(size)
            self._reserved += size

    def _unreserve(self, size: int) -> None:
        with self._room_lock:
            self._reserved -= size

    # --- chunks held unverified ----------------------------------------------------------------

    def has_held_chunk(self, layout: ArchiveLayout, index: int) -> bool:
        return bool(self._query(
            "SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (_held_key(layout, index),)
        ))

    def held_tree_hashes(self, layout: ArchiveLayout) -> dict[int, bytes]:
        """Chunks stored but held unverified: index → the tree hash computed from their bytes."""
        prefix = _grid_prefix(layout) + HELD_MARK
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
                self._cache.delete(_held_key(layout, index), retry=True)
            raise ChunkVerificationError(
                f"archive {layout.archive_id}: tree hash {root.hex()} of the downloaded bytes "
                f"!= the inventory's {bytes(expected_root).hex()}")
        with self._cache.transact(retry=True):  # all readable at once, or none
            con = self._cache._con
            for index in held:
                if index not in present:
                    con.execute("UPDATE Cache SET key = ? WHERE key = ? AND raw = 1",
                                (_chunk_key(layout, index), _held_key(layout, index)))
        for index in held:
            if index in present:  # verified meanwhile: the held copy is redundant
                self._cache.delete(_held_key(layout, index), retry=True)
            self._forget_handle(_chunk_key(layout, index))
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

    @contextmanager
    def _reservation(self, size: int) -> Iterator[None]:
        """Make room for ``size`` bytes and hold it while they are written (not yet counted in
        diskcache's volume), so concurrent writers cannot overshoot the limit together."""
        with self._room_lock:
            if size > self._size_limit:
                raise CacheFullError(
                    f"a {size}-byte chunk cannot fit a {self._size_limit}-byte cache"
                )
            self._make_room_locked(size)
            self._reserved += size
        try:
            yield
        finally:
            with self._room_lock:
                self._reserved -= size

    def _make_room_locked(self, incoming: int, keep: str | None = None) -> None:
        """Evict least-recently-used chunks, one at a time, until ``incoming`` more bytes fit.

        Caller holds ``_room_lock``. Raises CacheFullError if even an empty cache (only the
        index left) cannot take them.
        """
        evicted = 0
        if self._cache.volume() + self._reserved + incoming > self._size_limit:
            self._flush_touches()
        while self._cache.volume() + self._reserved + incoming > self._size_limit:
            victim = self._eviction_candidate(keep)
            if victim is None:
                if incoming and self.evictable is not None:
                    raise NoRoomError(f"{incoming} bytes do not fit a {self._size_limit}-byte "
                                      "cache beside the restored files not yet read")
                if incoming:
                    raise CacheFullError(
                        f"{incoming} bytes do not fit a {self._size_limit}-byte cache")
                break
            self._cache.delete(victim, retry=True)
            self._forget_handle(victim)
            evicted += 1
        if evicted:
            log.debug("evicted %d chunk(s) to stay under %d bytes", evicted, self._size_limit)

    def _eviction_candidate(self, keep: str | None) -> str | None:
        """The least recently used chunk that may go (not ``keep``, not of a kept archive)."""
        offset = 0
        while True:
            rows = self._query(
                "SELECT key FROM Cache WHERE key != ? ORDER BY access_time LIMIT ? OFFSET ?",
                (keep or "", EVICTION_BATCH, offset))
            for (key,) in rows:
                if self.evictable is None or self.evictable(_slot(key)[0]):
                    return key
            if len(rows) < EVICTION_BATCH:
                return None
            offset += EVICTION_BATCH

    # --- state -------------------------------------------------------------------------------

    def has_chunk(self, layout: ArchiveLayout, index: int) -> bool:
        return bool(self._query(
            "SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (_chunk_key(layout, index),)
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
            "SELECT tag FROM Cache WHERE key = ? AND raw = 1", (_chunk_key(layout, index),)
        )
        return bytes(rows[0][0]) if rows else None

    def chunk_tree_hashes(self, layout: ArchiveLayout) -> dict[int, bytes]:
        """Every stored chunk's verified tree hash, for folding the root on resume."""
        return self._present(layout)

    def discard_archive(self, archive_id: str) -> None:
        """Drop every chunk of an archive, whatever chunk size it was cached with."""
        low, high = _prefix_bounds(_key_prefix(archive_id))
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
        return self._size_limit

    @property
    def directory(self) -> Path:
        return self._dir

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
        key = _chunk_key(layout, index)
        log.warning("archive %s chunk %d: file shorter than the chunk; dropping it",
                    layout.archive_id, index)
        self._cache.delete(key, retry=True)
        self._forget_handle(key)
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
        key = _chunk_key(layout, index)
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

    def _forget_handle(self, key: str) -> None:
        slot = _slot(key)
        with self._lock:
            handle = self._handles.pop(slot, None)
            if handle is not None:
                self._retire_locked(handle)

    def _flush_touches(self) -> None:
        """Write the read times collected since the last flush to the index's access_time, in
        one transaction, so least-recently-used eviction sees reads that did no SQLite write."""
        with self._lock:
            pending, self._touched = self._touched, {}
            for handle in self._handles.values():
                if handle.used_at > handle.flushed_at:
                    pending[handle.key] = max(handle.used_at, pending.get(handle.key, 0.0))
                    handle.flushed_at = handle.used_at
        if not pending:
            return
        with self._cache.transact(retry=True):
            self._cache._con.executemany(
                "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1 AND access_time < ?",
                [(when, key, when) for key, when in pending.items()],
            )

    def close(self) -> None:
        with self._lock:
            while self._handles:
                _, handle = self._handles.popitem()
                self._retire_locked(handle)
        with suppress(sqlite3.Error):  # recency only: never worth failing a close for
            self._flush_touches()
        self._cache.close()

    def __enter__(self) -> ChunkCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

