"""Persistent state: one SQLite database in the data directory, bodies as files beside it.

One connection guarded by a lock: every statement is short, so serialising them is simpler than
juggling per-thread connections and costs nothing measurable. The long jobs (rendering an
inventory of a million archives) read through their own connection (``reader()``), which WAL mode
lets run beside the writers.

Every upload, deletion or synthesis also appends to ``changes`` (one row per event, not per
archive), which is all the daily inventory schedule needs to know, without indexing a million
archive rows by date.

Archives are found by ``archive_key``, an integer taken from the first characters of the
random id, under a plain index: a unique index on the 138-character ids themselves made bulk
inserts of a million random keys several times slower. Vaults keep live counters so
DescribeVault need not count a million rows.

Archives are deleted softly (a ``deleted`` timestamp), which makes "the vault as it was at time T"
a query: that is how an inventory reflects the vault at its job's completion time, or at a daily
snapshot, however late the emulator gets round to rendering it.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vaults (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, created REAL NOT NULL,
    live_count INTEGER NOT NULL DEFAULT 0, live_size INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS archives (
    id INTEGER PRIMARY KEY, vault_id INTEGER NOT NULL, archive_key INTEGER NOT NULL,
    archive_id TEXT NOT NULL,
    description TEXT NOT NULL, size INTEGER NOT NULL, tree_hash TEXT NOT NULL,
    created REAL NOT NULL, deleted REAL, body TEXT);
CREATE INDEX IF NOT EXISTS archives_by_vault ON archives(vault_id, id);
CREATE INDEX IF NOT EXISTS archives_by_key ON archives(archive_key);
CREATE TABLE IF NOT EXISTS changes (vault_id INTEGER NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS changes_by_vault ON changes(vault_id, at);
CREATE TABLE IF NOT EXISTS uploads (
    id INTEGER PRIMARY KEY, vault_id INTEGER NOT NULL, upload_id TEXT UNIQUE NOT NULL,
    description TEXT NOT NULL, part_size INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
    tree_hash TEXT NOT NULL, PRIMARY KEY (upload_id, start));
CREATE TABLE IF NOT EXISTS vault_policies (vault_id INTEGER PRIMARY KEY, policy TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vault_tags (
    vault_id INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (vault_id, key));
CREATE TABLE IF NOT EXISTS completed_uploads (
    upload_id TEXT PRIMARY KEY, vault_id INTEGER NOT NULL, size INTEGER NOT NULL,
    tree_hash TEXT NOT NULL, archive_id TEXT NOT NULL, completed REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, vault_id INTEGER NOT NULL, job_id TEXT UNIQUE NOT NULL,
    action TEXT NOT NULL, archive_id TEXT, archive_size INTEGER, archive_tree_hash TEXT,
    archive_description TEXT, body TEXT, range_start INTEGER, range_end INTEGER,
    tier TEXT, description TEXT, sns_topic TEXT, format TEXT,
    inv_start TEXT, inv_end TEXT, inv_limit TEXT, inv_marker TEXT,
    created REAL NOT NULL, forced_at REAL, completed REAL, status TEXT NOT NULL,
    status_message TEXT, fail_message TEXT, expired INTEGER NOT NULL DEFAULT 0,
    output TEXT, output_size INTEGER, output_tree_hash TEXT, next_marker TEXT,
    inventory_date REAL);
CREATE INDEX IF NOT EXISTS jobs_by_vault ON jobs(vault_id, id);
"""

Row = dict[str, Any]
# SQLite page cache: enough for the archive-key index of a million archives to stay in memory
# while they are synthesized in one transaction, small beside the emulator's other memory.
CACHE_KIB = 32 * 1024


class Store:
    """The database and the directory layout of one emulator data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        for sub in ("archives", "uploads", "jobs", "tmp"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        for stale in (self.data_dir / "tmp").iterdir():  # half-received uploads of a crash
            stale.unlink(missing_ok=True)
        self.db_path = self.data_dir / "glacier.sqlite3"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = _dict_row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- plumbing ---------------------------------------------------------------------------
    def one(self, sql: str, args: tuple = ()) -> Row | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def all(self, sql: str, args: tuple = ()) -> list[Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def run(self, sql: str, args: tuple = ()) -> int:
        """Execute a write; returns lastrowid (inserts) or rowcount (updates)."""
        with self._lock:
            cur = self._db.execute(sql, args)
            return cur.lastrowid if sql.lstrip().upper().startswith("INSERT") else cur.rowcount

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def reader(self) -> sqlite3.Connection:
        """A separate read-only connection for long scans (WAL lets it run beside writers)."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, check_same_thread=False)
        return conn

    # --- meta -------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return default if row is None else row["value"]

    def set_meta(self, key: str, value: str) -> None:
        self.run("INSERT INTO meta (key, value) VALUES (?, ?) "
                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # --- paths ------------------------------------------------------------------------------
    def path(self, relative: str | None) -> Path | None:
        return None if relative is None else self.data_dir / relative

    def archive_relpath(self, archive_id: str) -> str:
        return f"archives/{archive_id[:2]}/{archive_id}"

    def tmp_path(self, name: str) -> Path:
        return self.data_dir / "tmp" / name

    def record_change(self, vault_id: int, at: float) -> None:
        self.run("INSERT INTO changes (vault_id, at) VALUES (?, ?)", (vault_id, at))

    def last_change(self, vault_id: int, before: float) -> float | None:
        """Time of the last upload or deletion in a vault strictly before ``before``."""
        row = self.one("SELECT max(at) AS t FROM changes WHERE vault_id = ? AND at < ?",
                       (vault_id, before))
        return row["t"] if row else None

    # --- vaults -----------------------------------------------------------------------------
    def vault(self, name: str) -> Row | None:
        return self.one("SELECT * FROM vaults WHERE name = ?", (name,))

    def archive(self, vault_id: int, archive_id: str) -> Row | None:
        """A live (not deleted) archive of a vault."""
        return self.one("SELECT * FROM archives WHERE archive_key = ? AND archive_id = ? AND "
                        "vault_id = ? AND deleted IS NULL",
                        (archive_key(archive_id), archive_id, vault_id))


def archive_key(archive_id: str) -> int:
    """Index key of an archive id: its first 48 bits (ids are random, so this spreads well)."""
    try:
        return int.from_bytes(base64.urlsafe_b64decode(archive_id[:8].encode()), "big")
    except (binascii.Error, ValueError):
        return -1


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> Row:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}
