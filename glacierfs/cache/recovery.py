"""What opening the store does to a directory left by a crash or by the previous release.

Owns two passes, both run by ``ChunkCache`` before anything else touches the directory:

``Migration``: the previous release kept each chunk in its own diskcache value file
(``??/??/*.val``, its row's ``filename``). Each is checked against its row (size and tree hash),
copied into its archive file at its own offset, the archive files made durable, and then the rows
switched to the new layout in one transaction per batch; only then are the value files removed.
Nothing is downloaded again. An open moves for up to ``MIGRATE_AT_OPEN`` seconds, then a thread
goes on, and a read of chunks not yet moved moves those first. A mount interrupted
half-way finds the rows not yet switched still pointing at their value files and copies them
again (the same bytes to the same place); value files whose rows were switched are removed by
``sweep``. A chunk that fails its check is dropped, as is a held copy of a verified chunk. If
the disk is too full for a copy, the chunks of that round not yet moved are dropped (the log
says how many).

``sweep``: bytes written by a crash between write and commit are listed by no row, so never
readable; once older than ``ORPHAN_GRACE`` they are punched out, and archive files no row lists
are removed, as are value files no row points at.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
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
# Rows moved per round of the migration (a read of an archive not yet moved waits for at most
# one round of the background thread).
MIGRATE_ROWS = 4
# Seconds an open spends moving the previous layout before going on in the background (a
# mount must be ready within its start timeout).
MIGRATE_AT_OPEN = 20.0
BLOCK = 4096


class Migration:
    """Moves the chunks still kept in value files (see the module doc): as much as fits in a
    time budget when the store opens, the rest in a background thread, and the chunks a read
    needs at once (``keys``), so every listed chunk stays readable meanwhile."""

    def __init__(self, cache: diskcache.Cache, directory: str,
                 moved: Callable[[list[str]], None]) -> None:
        """``moved(keys)`` is told the rows that now point into archive files."""
        self._cache = cache
        self._dir = directory
        self._moved = moved
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pending = bool(cache._sql(
            "SELECT 1 FROM Cache WHERE raw = 1 AND filename IS NOT NULL LIMIT 1").fetchall())
        if self.pending:
            log.info("moving the chunks of the previous cache layout into archive files")

    def background(self) -> None:
        """Go on with what is left in a thread (after ``run`` with a deadline and ``sweep``)."""
        if self.pending:
            self._thread = threading.Thread(target=self.run, name="cache-migration",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def keys(self, keys: list[str]) -> None:
        """Move these rows now, if they are still in the previous layout (a read needs them:
        a few chunks, so the caller waits for little more than one round)."""
        if self.pending:
            marks = ", ".join("?" * len(keys))
            self.run(None, f" AND key IN ({marks})", tuple(keys))

    def run(self, deadline: float | None = None, where: str = "", args: tuple = ()) -> bool:
        """Move batches until none is left (True), or the deadline or a stop comes (False)."""
        if not self.pending:
            return True
        with self._lock:
            while not self._stop.is_set():
                rows = self._cache._sql(
                    "SELECT rowid, key, size, tag, filename FROM Cache "  # noqa: S608
                    f"WHERE raw = 1 AND filename IS NOT NULL{where} "
                    f"ORDER BY key LIMIT {MIGRATE_ROWS}", args).fetchall()
                if not rows:
                    if not where and self.pending:
                        self.pending = False
                        log.info("the previous cache layout is moved")
                    return True
                self._batch(rows)
                if deadline is not None and time.monotonic() > deadline:
                    return False
            return False

    def _batch(self, rows: list[tuple]) -> None:
        cache = self._cache
        batch = _Batch(cache, self._dir)
        try:
            for done, (rowid, key, size, tag, filename) in enumerate(rows):
                try:
                    archive_id, chunk_size, index, held = parse_key(key)
                    if held and cache._sql("SELECT 1 FROM Cache WHERE key = ?",
                                           (key.rsplit("/", 1)[0] + f"/{index}",)).fetchall():
                        cache.delete(key, retry=True)  # verified too: the held copy goes
                        continue
                    with open(os.path.join(self._dir, filename), "rb") as src:
                        data = src.read()
                except (ValueError, OSError) as exc:
                    if is_disk_full(exc):
                        raise
                    data = None
                if data is None or len(data) != size or tag is None \
                        or treehash.tree_hash(data) != bytes(tag):
                    log.warning("cache chunk %s: its file is missing or damaged; dropped", key)
                    cache.delete(key, retry=True)
                    continue
                try:
                    batch.add(rowid, key, os.path.join(self._dir, filename),
                              archive_file(archive_id, chunk_size), index * chunk_size, data)
                    if batch.size >= MIGRATE_BATCH:
                        self._moved(batch.commit())
                except OSError as exc:
                    if not is_disk_full(exc):
                        raise
                    batch.undo()
                    left = [row[1] for row in rows[done:]]
                    log.warning("the disk is too full to move %d chunk(s) of the previous "
                                "cache layout: dropped (read again, they are downloaded again)",
                                len(left))
                    for old in left:
                        cache.delete(old, retry=True)
                    return
            self._moved(batch.commit())
        finally:
            batch.close()


class _Batch:
    """Chunks copied into archive files, waiting for one sync and one commit."""

    def __init__(self, cache: diskcache.Cache, directory: str) -> None:
        self._cache = cache
        self._dir = directory
        self._fds: dict[str, int] = {}
        self._rows: list[tuple[int, str, str]] = []  # (rowid, key, value file)
        self._written: list[tuple[int, int, int]] = []  # (fd, offset, length)
        self.size = 0

    def add(self, rowid: int, key: str, value_file: str, target: str, offset: int,
            data: bytes) -> None:
        fd = self._fds.get(target)
        if fd is None:
            fd = self._fds[target] = os.open(os.path.join(self._dir, target),
                                             os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        self._written.append((fd, offset, len(data)))
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        self._rows.append((rowid, key, value_file))
        self.size += len(data)

    def commit(self) -> list[str]:
        """Sync the copies, switch their rows in one transaction, remove the value files.
        Returns the keys moved."""
        if not self._rows:
            return []
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
                [(diskcache.core.MODE_RAW, b"", rowid) for rowid, _, _ in self._rows])
        index_barrier(self._dir)  # the switch is durable before the old copies go
        for _, _, value_file in self._rows:
            with suppress(FileNotFoundError):
                os.unlink(value_file)
        keys = [key for _, key, _ in self._rows]
        self._rows, self._written, self.size = [], [], 0
        return keys

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
