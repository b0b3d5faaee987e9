"""Persistent state: one SQLite database in the data directory, bodies as files beside it.

One connection guarded by a lock: every statement is short, so serialising them is simpler than
juggling per-thread connections and costs nothing measurable. The long jobs (rendering an
inventory of a million archives) read through their own connection (``reader()``), which WAL mode
lets run beside the writers.

Archives are deleted softly (a ``deleted`` timestamp), which makes "the vault as it was at time T"
a query: that is how an inventory reflects the vault at its job's completion time, or at a daily
snapshot, however late the emulator gets round to rendering it.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vaults (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS archives (
    id INTEGER PRIMARY KEY, vault_id INTEGER NOT NULL, archive_id TEXT UNIQUE NOT NULL,
    description TEXT NOT NULL, size INTEGER NOT NULL, tree_hash TEXT NOT NULL,
    created REAL NOT NULL, deleted REAL, body TEXT);
CREATE INDEX IF NOT EXISTS archives_by_vault ON archives(vault_id, id);
CREATE INDEX IF NOT EXISTS archives_by_vault_created ON archives(vault_id, created);
CREATE INDEX IF NOT EXISTS archives_by_vault_deleted ON archives(vault_id, deleted);
CREATE TABLE IF NOT EXISTS uploads (
    id INTEGER PRIMARY KEY, vault_id INTEGER NOT NULL, upload_id TEXT UNIQUE NOT NULL,
    description TEXT NOT NULL, part_size INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
    tree_hash TEXT NOT NULL, PRIMARY KEY (upload_id, start));
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


class Store:
    """The database and the directory layout of one emulator data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        for sub in ("archives", "uploads", "jobs", "tmp"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "glacier.sqlite3"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = _dict_row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
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

    # --- vaults -----------------------------------------------------------------------------
    def vault(self, name: str) -> Row | None:
        return self.one("SELECT * FROM vaults WHERE name = ?", (name,))


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> Row:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}
