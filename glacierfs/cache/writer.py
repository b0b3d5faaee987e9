"""Writing chunks into their archive's sparse file: ``ChunkWriter`` (one chunk as its bytes
arrive), ``GroupCommit`` (one fdatasync for the chunks that finish together, then their rows in
one transaction) and the diskcache ``Disk`` whose rows point at no value file.

Owns the write discipline: a chunk's bytes go to the file at their own offset only while the
writer holds the chunk's claim (``handles``), are made durable (fdatasync of the file) before the
row saying so commits, and are punched out again when anything fails, so ENOSPC or an exception
never leaves bytes that count for nothing. Knows nothing of eviction or reading.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import diskcache

from glacierfs import treehash
from glacierfs.cache import sparse
from glacierfs.cache.errors import CacheFullError, ChunkVerificationError
from glacierfs.cache.layout import ArchiveLayout, chunk_key, held_key
from glacierfs.diskfull import is_disk_full
from glacierfs.treehash import MIB

# Data made durable before its row commits, so a power loss cannot leave a committed row
# pointing at blocks that never reached the disk.
FSYNC_CHUNKS = True
DIR_MODE = 0o700
FILE_MODE = 0o600
# Commits of different files run in parallel, up to this many at once (striped by path).
COMMIT_STRIPES = 16


@dataclass(frozen=True)
class InPlace:
    """A row's value: the chunk lives in its archive file, ``size`` bytes at its offset."""

    size: int


class ChunkDisk(diskcache.Disk):
    """diskcache's Disk for rows whose bytes live in the archive files (``InPlace``): the row
    carries the chunk's size, so diskcache's volume counts it, and no value file."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if type(value) is InPlace:
            return value.size, diskcache.core.MODE_RAW, None, b""
        return super().store(value, read, key=key)


@dataclass
class Row:
    """An index row to commit: the chunk's key, size and tree hash."""

    layout: ArchiveLayout
    index: int
    held: bool
    tag: bytes
    key: str = ""
    done: bool = field(default=False, repr=False)
    error: BaseException | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.key = (held_key if self.held else chunk_key)(self.layout, self.index)


class GroupCommit:
    """Chunks of one file that finish together share one fdatasync and one transaction.

    Each committer queues its row and takes its file's stripe lock; whoever gets it first syncs
    the file (covering every chunk written so far, whoever wrote it) and commits every row
    queued by then. The others find their row done when the lock comes to them.
    """

    def __init__(self, apply: Any) -> None:
        """``apply(rows)`` commits the rows in one transaction (raises if it cannot)."""
        self._apply = apply
        self._lock = threading.Lock()
        self._queues: dict[str, list[Row]] = {}
        self._stripes = [threading.Lock() for _ in range(COMMIT_STRIPES)]

    def commit(self, path: str, fd: int, row: Row) -> None:
        with self._lock:
            self._queues.setdefault(path, []).append(row)
        with self._stripes[hash(path) % COMMIT_STRIPES]:
            if not row.done:
                with self._lock:
                    batch = self._queues.pop(path, [])
                error: BaseException | None = None
                try:
                    if FSYNC_CHUNKS:
                        os.fdatasync(fd)
                    self._apply(batch)
                except BaseException as exc:
                    error = exc
                for queued in batch:
                    queued.error, queued.done = error, True
                if error is not None:
                    raise error
        if row.error is not None:  # failed in another thread's batch
            if is_disk_full(row.error):
                raise CacheFullError(str(row.error)) from row.error
            raise row.error


class Store(Protocol):
    """What a writer needs of the store (``ChunkCache``)."""

    def reserve(self, size: int) -> None: ...

    def unreserve(self, size: int) -> None: ...

    def claim(self, layout: ArchiveLayout, index: int, wait: bool) -> bool: ...

    def unclaim(self, layout: ArchiveLayout, index: int) -> None: ...

    def rows_of(self, layout: ArchiveLayout, index: int) -> tuple[bool, bool]: ...

    def drop_held(self, layout: ArchiveLayout, index: int) -> None: ...

    def archive_path(self, layout: ArchiveLayout) -> str: ...

    def commit_durable(self, path: str, fd: int, row: Row) -> None:
        """Make the file durable and commit the row (whose reservation it then releases)."""


class ChunkWriter:
    """Stores one chunk as it arrives (made by ``ChunkCache.chunk_writer``).

    The caller (one thread) fills the buffer front to back and calls ``filled(n)`` with the
    number of bytes in so far; every complete 1 MiB leaf is then hashed and ``pwrite``-n into
    the archive file on the hashing pool (hashlib and pwrite release the GIL, so this runs beside
    the next socket read). ``commit(expected)`` waits for them, checks the tree hash, makes the
    file durable and only then commits the row. ``abort`` punches out whatever was written.

    If the chunk cannot be claimed now (another writer, a punch waiting for readers) or a row of
    it exists, the leaves are only hashed and the bytes written at ``commit``, after they are
    verified, so unverified bytes never land where a reader may look.
    """

    def __init__(self, layout: ArchiveLayout, index: int, buffer: memoryview, *,
                 store: Store, direct: bool = True) -> None:
        self._store = store
        self.layout = layout
        self.index = index
        self.length = layout.chunk_length(index)
        if len(buffer) < self.length:
            raise ValueError(f"buffer of {len(buffer)} bytes for a {self.length}-byte chunk")
        self._view = buffer[:self.length]
        self._base = index * layout.chunk_size
        self._leaves: list[Any] = []  # futures of leaf digests, in order
        self._submitted = 0          # bytes handed to the pool
        self._fd: int | None = None
        self._reserved = 0
        self._claimed = False
        self._written = False  # bytes of ours may be in the file, not committed
        self._path = store.archive_path(layout)
        try:
            store.reserve(self.length)
            self._reserved = self.length
            if direct and not any(store.rows_of(layout, index)) \
                    and store.claim(layout, index, wait=False):
                self._claimed = True
                self._open()
        except BaseException as exc:
            self.abort()
            if is_disk_full(exc) and not isinstance(exc, CacheFullError):
                raise CacheFullError(f"no room for archive {layout.archive_id} chunk "
                                     f"{index}: {exc}") from exc
            raise

    def _open(self) -> None:
        """Open the archive file for writing, creating it (and making its name durable)."""
        try:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                               FILE_MODE)
        except FileExistsError:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CLOEXEC)
            return
        parent = os.open(os.path.dirname(self._path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(parent)
        finally:
            os.close(parent)

    def _leaf_job(self, start: int, end: int) -> bytes:
        piece = self._view[start:end]
        digest = hashlib.sha256(piece).digest()
        fd = self._fd
        if fd is not None:
            self._written = True
            self._pwrite(fd, piece, self._base + start)
        return digest

    @staticmethod
    def _pwrite(fd: int, piece: memoryview, offset: int) -> None:
        while piece:
            written = os.pwrite(fd, piece, offset)
            offset += written
            piece = piece[written:]

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
        store, layout, index = self._store, self.layout, self.index
        try:
            self.filled(self.length)
            actual = treehash.fold(self._digests())
            if not hold and (expected is None or actual != bytes(expected)):
                raise ChunkVerificationError(
                    f"archive {layout.archive_id} chunk {index}: tree hash "
                    f"{actual.hex()} != expected {bytes(expected or b'').hex()}")
            if not self._claimed:  # deferred: write the checked bytes now
                if self._stored(hold):
                    return actual
                store.claim(layout, index, wait=True)
                self._claimed = True
                if self._stored(hold):
                    return actual
                if not hold:
                    store.drop_held(layout, index)  # its bytes are about to be replaced
                self._open()
                assert self._fd is not None
                self._written = True
                self._pwrite(self._fd, self._view, self._base)
            assert self._fd is not None
            store.commit_durable(self._path, self._fd, Row(layout, index, hold, actual))
            # committed: the bytes belong to the row now, and the row took over the reservation
            self._written = False
            self._reserved = 0
            if not hold:
                store.drop_held(layout, index)
        except BaseException as exc:
            self.abort()
            if is_disk_full(exc) and not isinstance(exc, CacheFullError):
                raise CacheFullError(f"no room to cache archive {layout.archive_id} "
                                     f"chunk {index}: {exc}") from exc
            raise
        finally:
            self.abort()  # after a commit: only gives back the fd, claim and reservation
        return actual

    def _stored(self, hold: bool) -> bool:
        verified, held = self._store.rows_of(self.layout, self.index)
        return verified or (hold and held)

    def abort(self) -> None:
        for future in self._leaves:
            try:
                future.result()
            except BaseException:  # noqa: S110 - the first error was raised by commit already
                pass
        self._leaves = []
        if self._fd is not None:
            try:
                if self._written:
                    # the whole grid cell: also frees the last block of a final, short chunk
                    sparse.punch_hole(self._fd, self._base, self.layout.chunk_size)
            except OSError:
                pass  # never readable without a row; the next open sweeps it
            finally:
                os.close(self._fd)
                self._fd = None
                self._written = False
        if self._claimed:
            self._claimed = False
            self._store.unclaim(self.layout, self.index)
        if self._reserved:
            self._store.unreserve(self._reserved)
            self._reserved = 0
