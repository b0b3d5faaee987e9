"""What opening the store does to a directory left by a crash or by the previous release.

Owns two passes, both run by ``ChunkCache`` before anything else touches the directory:

``migrate_value_files``: the previous release kept each chunk in its own diskcache value file
(``??/??/*.val``, its row's ``filename``). Each is checked against its row (size and tree hash),
copied into its archive file at its own offset, the archive files made durable, and then the rows
switched to the new layout in one transaction per batch; only then are the value files removed.
Nothing is downloaded again. A mount interrupted half-way finds the rows not yet switched still
pointing at their value files and copies them again (the same bytes to the same place); value
files whose rows were switched are removed by ``sweep``. A chunk that fails its check is dropped.
If the disk is too full for a copy, the chunks not yet moved are dropped (said in the log).

``sweep``: bytes written by a crash between write and commit are listed by no row, so never
readable; once older than ``ORPHAN_GRACE`` they are punched out, and archive files no row lists
are removed, as are value files no row points at.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import suppress
from pathlib import Path

import diskcache

from glacierfs import treehash
from glacierfs.cache import sparse
from glacierfs.cache.layout import ARCHIVE_DIR, archive_file, parse_key
from glacierfs.cache.writer import FILE_MODE
from glacierfs.diskfull import is_disk_full
from glacierfs.treehash import MIB

log = logging.getLogger(__name__)

# A file no row lists may be a write in flight in another process sharing the directory while
# it is younger than this.
ORPHAN_GRACE = 60.0
# Chunks copied between two syncs and commits: bounds both the extra disk space a migration
# needs (the copies exist beside their value files until the commit) and the work redone when
# it is interrupted.
MIGRATE_BATCH = 256 * MIB
BLOCK = 4096


def migrate_value_files(cache: diskcache.Cache, directory: str) -> None:
    """Move every chunk kept in a value file into its archive file (see the module doc)."""
    rows = cache._sql("SELECT rowid, key, size, tag, filename FROM Cache "
                      "WHERE raw = 1 AND filename IS NOT NULL ORDER BY key").fetchall()
    if not rows:
        return
    log.info("moving %d chunk(s) of the previous cache layout into archive files", len(rows))
    batch = _Batch(cache, directory)
    moved = dropped = 0
    try:
        for done, (rowid, key, size, tag, filename) in enumerate(rows):
            try:
                archive_id, chunk_size, index, _ = parse_key(key)
                with open(os.path.join(directory, filename), "rb") as src:
                    data = src.read()
            except (ValueError, OSError) as exc:
                if is_disk_full(exc):
                    raise
                data = None
            if data is None or len(data) != size or tag is None \
                    or treehash.tree_hash(data) != bytes(tag):
                log.warning("cache chunk %s: its file is missing or damaged; dropped", key)
                cache.delete(key, retry=True)
                dropped += 1
                continue
            try:
                batch.add(rowid, os.path.join(directory, filename),
                          archive_file(archive_id, chunk_size), index * chunk_size, data)
                if batch.size >= MIGRATE_BATCH:
                    moved += batch.commit()
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                batch.undo()
                left = [row[1] for row in rows[done:]]
                log.warning("the disk is too full to move %d chunk(s) of the previous cache "
                            "layout: dropped (read again, they are downloaded again)", len(left))
                for old in left:
                    cache.delete(old, retry=True)
                return
        moved += batch.commit()
    finally:
        batch.close()
    log.info("moved %d chunk(s) into archive files%s", moved,
             f", dropped {dropped} damaged" if dropped else "")


class _Batch:
    """Chunks copied into archive files, waiting for one sync and one commit."""

    def __init__(self, cache: diskcache.Cache, directory: str) -> None:
        self._cache = cache
        self._dir = directory
        self._fds: dict[str, int] = {}
        self._rows: list[tuple[int, str]] = []  # (rowid, value file)
        self._written: list[tuple[int, int, int]] = []  # (fd, offset, length)
        self.size = 0

    def add(self, rowid: int, value_file: str, target: str, offset: int, data: bytes) -> None:
        fd = self._fds.get(target)
        if fd is None:
            fd = self._fds[target] = os.open(os.path.join(self._dir, target),
                                             os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        self._written.append((fd, offset, len(data)))
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        self._rows.append((rowid, value_file))
        self.size += len(data)

    def commit(self) -> int:
        """Sync the copies, switch their rows in one transaction, remove the value files."""
        if not self._rows:
            return 0
        for fd in self._fds.values():
            os.fdatasync(fd)
        parent = os.open(os.path.join(self._dir, ARCHIVE_DIR), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(parent)
        finally:
            os.close(parent)
        with self._cache.transact(retry=True):
            self._cache._con.executemany(
                "UPDATE Cache SET filename = NULL, mode = ?, value = ? WHERE rowid = ?",
                [(diskcache.core.MODE_RAW, b"", rowid) for rowid, _ in self._rows])
        index_barrier(self._dir)  # the switch is durable before the old copies go
        for _, value_file in self._rows:
            with suppress(FileNotFoundError):
                os.unlink(value_file)
        count = len(self._rows)
        self._rows, self._written, self.size = [], [], 0
        return count

    def undo(self) -> None:
        """Punch out the copies of a batch that will not commit."""
        for fd, offset, length in self._written:
            with suppress(OSError):
                sparse.punch_hole(fd, offset, length)
        self._rows, self._written, self.size = [], [], 0

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def index_barrier(directory: str) -> None:
    """Make every committed transaction of the index durable: an fsync of its write-ahead log.
    diskcache runs SQLite in WAL mode with synchronous=NORMAL, so commits are atomic but not
    synced; frames already checkpointed into the database were synced by SQLite."""
    try:
        fd = os.open(os.path.join(directory, diskcache.core.DBNAME + "-wal"),
                     os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep(cache: diskcache.Cache, directory: str) -> None:
    """Punch out bytes no row lists and remove files no row needs (older than the grace)."""
    cutoff = time.time() - ORPHAN_GRACE
    root = Path(directory)
    known = {row[0] for row in cache._sql(
        "SELECT filename FROM Cache WHERE filename IS NOT NULL").fetchall()}
    removed = 0
    for path in root.glob("*/*/*.val"):
        if str(path.relative_to(root)) in known:
            continue
        with suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
                for parent in (path.parent, path.parent.parent):
                    with suppress(OSError):
                        parent.rmdir()  # only if empty
    covered: dict[str, list[tuple[int, int]]] = {}
    for key, size in cache._sql(
            "SELECT key, size FROM Cache WHERE raw = 1 AND filename IS NULL").fetchall():
        with suppress(ValueError):
            archive_id, chunk_size, index, _ = parse_key(key)
            start = index * chunk_size
            covered.setdefault(archive_file(archive_id, chunk_size), []).append(
                (start, start + size))
    punched = 0
    for path in (root / ARCHIVE_DIR).glob("*.arc"):
        name = f"{ARCHIVE_DIR}/{path.name}"
        with suppress(FileNotFoundError):
            if path.stat().st_mtime >= cutoff:
                continue
            if name not in covered:
                path.unlink()
                removed += 1
                continue
            punched += _punch_uncovered(str(path), sorted(covered[name]))
    if removed or punched:
        log.info("cache: removed %d unfinished file(s), freed %d unlisted byte(s) in %s",
                 removed, punched, directory)


def _punch_uncovered(path: str, ranges: list[tuple[int, int]]) -> int:
    """Punch every data range of the file that no row's chunk covers; bytes freed."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    freed = 0
    try:
        size = os.fstat(fd).st_size
        for start, end in list(sparse.data_ranges(fd)):
            if end == size:  # a partial last block is freed only when punched whole
                end = -(-end // BLOCK) * BLOCK
            cursor = start
            for low, high in ranges:
                if high <= cursor:
                    continue
                if low >= end:
                    break
                if low > cursor and sparse.punch_hole(fd, cursor, low - cursor):
                    freed += low - cursor
                cursor = max(cursor, high)
            if cursor < end and sparse.punch_hole(fd, cursor, end - cursor):
                freed += end - cursor
    finally:
        os.close(fd)
    return freed
