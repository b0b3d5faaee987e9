"""The state database: one SQLite file per account and region, in the cache dir.

It holds what must survive a remount: the namespace (inventory rows with their inode numbers),
the vaults' inventory state, and retrieval job records. SQLite keeps memory flat for vaults of
millions of archives and makes each state change atomic, which is what lets a crash never lose
a paid-for job.

Threading model: a ``Store`` wraps one connection and belongs to one thread. The trio thread
has its own (lookups are microseconds, so they run inline like s3ql's); inventory ingest runs in
a worker thread with another ``Store`` on the same file. WAL mode lets readers go on while a
writer works, and a reader never sees half an inventory.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

ROOT_INODE = 1  # pyfuse3.ROOT_INODE, repeated here so this module needs no FUSE
SCHEMA_VERSION = 4
DB_NAME = "state.db"

KIND_DIR = 0
KIND_FILE = 1
KIND_BY_ID = 2   # VAULT/.by-id: lists every archive of the vault by id
KIND_VAULT = 3

_JOBS_TABLE = """
CREATE TABLE IF NOT EXISTS jobs (
    archive_id TEXT NOT NULL,
    vault TEXT NOT NULL,
    state TEXT NOT NULL,              -- Queued | Initiating | InProgress | Succeeded | Failed
    job_id TEXT,
    tier TEXT NOT NULL,
    size INTEGER NOT NULL,            -- bytes this job retrieves (the range's, or the archive's)
    tree_hash TEXT,                   -- the archive's (inventory), or the range's (Glacier's)
    creation_date TEXT,
    completion_date TEXT,
    status_message TEXT,
    requested_at REAL NOT NULL,
    initiated_at REAL,
    next_poll REAL,
    range_start INTEGER NOT NULL DEFAULT 0,   -- RetrievalByteRange (inclusive),
    range_end INTEGER NOT NULL DEFAULT -1,    -- -1: the whole archive
    PRIMARY KEY (archive_id, range_start, range_end)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, requested_at);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS entries (
    inode INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT,                         -- stable identity of a directory: v:VAULT, b:VAULT, d:VAULT/PATH
                                      -- (a file's is its archive id and vault: NULL here)
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    vault TEXT NOT NULL,
    archive_id TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    tree_hash TEXT,
    creation_ns INTEGER,              -- Glacier's CreationDate, ns since the epoch (UTC)
    description TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_key ON entries(key) WHERE key IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS entries_by_name ON entries(parent, name);
CREATE INDEX IF NOT EXISTS entries_by_parent ON entries(parent, inode);
CREATE INDEX IF NOT EXISTS entries_by_archive ON entries(vault, kind, inode);
DROP INDEX IF EXISTS entries_file;
-- An archive's own file (key NULL) is unique per vault; more paths of it (Synology mappings)
-- are entries keyed l:VAULT:ARCHIVE:PATH.
CREATE UNIQUE INDEX IF NOT EXISTS entries_archive ON entries(archive_id, vault)
    WHERE archive_id IS NOT NULL AND key IS NULL;
CREATE TABLE IF NOT EXISTS vaults (
    name TEXT PRIMARY KEY,
    arn TEXT,
    inventory_date TEXT,              -- InventoryDate of the inventory the tree was built from
    inventory_job_id TEXT,            -- the job the tree came from, or the one running now
    inventory_status TEXT,            -- None | InProgress | Succeeded | Failed | Ingesting
    inventory_message TEXT,
    inventory_loaded_at REAL,
    number_of_archives INTEGER,
    last_inventory_date TEXT,         -- DescribeVault's LastInventoryDate
    present INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS spend (ts REAL NOT NULL, bytes INTEGER NOT NULL, archive_id TEXT);
-- Synology Glacier Backup names (catalog/synology.py): one row per safe path of a data vault,
-- from the mapping database in VAULT_mapping, and what the vault's names wait for.
CREATE TABLE IF NOT EXISTS synology_paths (vault TEXT NOT NULL, archive_id TEXT NOT NULL,
    dir TEXT NOT NULL, name TEXT NOT NULL, mtime_ns INTEGER);
CREATE INDEX IF NOT EXISTS synology_paths_by_archive ON synology_paths(vault, archive_id);
CREATE TABLE IF NOT EXISTS synology_state (vault TEXT PRIMARY KEY, mapping_vault TEXT NOT NULL,
    status TEXT NOT NULL, message TEXT, archive_id TEXT, paths INTEGER, updated_at REAL);
"""


# The jobs table's columns before ranged retrievals (schema 3), copied over by the migration.
_V3_JOB_COLUMNS = ("archive_id", "vault", "state", "job_id", "tier", "size", "tree_hash",
                   "creation_date", "completion_date", "status_message", "requested_at",
                   "initiated_at", "next_poll")


class StateDirError(Exception):
    """The state dir cannot be used safely (wrong owner, not a directory)."""


def prepare_state_dir(path: Path) -> Path:
    """Create ``path`` mode 0700, or check that an existing one is ours and private.

    A cache dir owned by someone else could feed us forged "verified" bytes: refuse it.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise StateDirError(f"{path} belongs to uid {st.st_uid}, not to this user; "
                            "refusing to use a cache dir someone else can write")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


class Store:
    """One connection to the state database, with the schema in place."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DB_NAME
        old_umask = os.umask(0o077)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60,
                                      check_same_thread=False)
        finally:
            os.umask(old_umask)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=OFF")
        self.db.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache per connection
        self.db.executescript(_SCHEMA)
        self._migrate_jobs()
        row = self.db.execute(
            "SELECT inode FROM entries WHERE inode = ?", (ROOT_INODE,)).fetchone()
        if row is None:
            self.db.execute(
                "INSERT OR IGNORE INTO entries(inode, key, parent, name, kind, vault) "
                "VALUES (?, 'root', 0, '', ?, '')", (ROOT_INODE, KIND_DIR))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)",
                            (str(SCHEMA_VERSION),))

    def _migrate_jobs(self) -> None:
        """Create the jobs table, or bring a state dir from before ranged retrievals up to date:
        one record per (archive, range) instead of per archive. Each existing record was a
        whole-archive job, and stays one (range 0..-1); nothing is lost, nothing re-requested."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
        if not columns:
            self.db.executescript(_JOBS_TABLE)
            return
        if "range_start" in columns:
            return
        old = ", ".join(c for c in _V3_JOB_COLUMNS if c in columns)
        with self.transaction() as db:
            db.execute("ALTER TABLE jobs RENAME TO jobs_v3")
            db.execute("DROP INDEX IF EXISTS jobs_by_state")
            for statement in _JOBS_TABLE.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"INSERT INTO jobs({old}, range_start, range_end) "
                       f"SELECT {old}, 0, -1 FROM jobs_v3")
            db.execute("DROP TABLE jobs_v3")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    """``with store.transaction():`` — BEGIN IMMEDIATE … COMMIT, ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()  # a failed COMMIT (disk full) must not leave it half-open
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        """SQLite may already have rolled back by itself (after SQLITE_FULL, for one): only
        roll back what is still open, so the original error is the one raised."""
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
