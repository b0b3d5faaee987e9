"""Writing chunk files: the diskcache ``Disk`` that creates them and ``ChunkWriter``, which
stores one chunk as its bytes arrive.

Owns the on-disk file discipline: value files are created 0600 (in 0700 subdirectories), made
durable (fdatasync) before their index row is committed, and removed again when anything fails,
so ENOSPC or an exception never leaves a partial file behind. Knows nothing of eviction or
reading: room is asked of a ``Room`` and the row is committed by a callback.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

import diskcache

from glacierfs import treehash
from glacierfs.cache.errors import CacheFullError, ChunkVerificationError
from glacierfs.cache.layout import ArchiveLayout, chunk_key, held_key
from glacierfs.diskfull import is_disk_full
from glacierfs.treehash import MIB

# Data made durable before its row commits, so a power loss cannot leave a committed row
# pointing at a file whose blocks never reached the disk.
FSYNC_CHUNKS = True
DIR_MODE = 0o700
FILE_MODE = 0o600
# Creating a value file races with diskcache pruning emptied subdirectories; a few retries win.
CREATE_ATTEMPTS = 10


class Room(Protocol):
    """Space reservations under the cache's size limit (the index's ``reserve``)."""

    def reserve(self, size: int) -> None: ...

    def unreserve(self, size: int) -> None: ...


class ChunkDisk(diskcache.Disk):
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
        if type(value) is Prewritten:
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
class Prewritten:
    """A value file already written and made durable: ``store`` just records it."""

    filename: str
    full_path: str
    size: int


class ChunkWriter:
    """Stores one chunk as it arrives (made by ``ChunkCache.chunk_writer``).

    The caller (one thread) fills the buffer front to back and calls ``filled(n)`` with the
    number of bytes in so far; every complete 1 MiB leaf is then hashed and ``pwrite``-n on the
    hashing pool (hashlib and pwrite release the GIL, so this runs beside the next socket
    read). ``commit(expected)`` waits for them, checks the tree hash, makes the file durable
    (fdatasync) and only then commits its index row. ``abort`` removes everything.
    """

    def __init__(self, layout: ArchiveLayout, index: int, buffer: memoryview, *, room: Room,
                 disk: ChunkDisk, commit: Callable[[str, Prewritten, bytes], None]) -> None:
        """``commit(key, written, tree_hash)`` records a durable file in the index."""
        self._room = room
        self._commit_row = commit
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
            room.reserve(self.length)
            self._reserved = self.length
            self._filename, self._path, self._fd = disk.create()
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
            key = (held_key if hold else chunk_key)(self.layout, self.index)
            path, self._path = self._path, ""  # from here the commit owns the file
            self._commit_row(
                key, Prewritten(self._filename, path, self.length), actual)
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
            self._room.unreserve(self._reserved)
            self._reserved = 0

