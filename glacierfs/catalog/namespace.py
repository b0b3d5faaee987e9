"""The namespace: vaults, directories and files as stored in the state database.

Owns the mapping inventory → tree: every archive row becomes a file (or, for a folder marker,
a directory) under a name decoded from its description by ``names``. Inode numbers are
AUTOINCREMENT ids bound to a stable key (the archive id for files, the path for directories),
so they survive remounts and inventory refreshes, and are never reused.

Reads (``lookup``, ``get``, ``children``) run inline on the trio thread. ``ingest_inventory``
is blocking and runs in a worker thread on its own ``Store``; it replaces a vault's tree in
one transaction, so a listing sees the old tree or the new one, never a mix.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO, NamedTuple
from collections.abc import Collection, Iterable, Iterator

from glacierfs.catalog import inventory as inventory_mod
from glacierfs.catalog import names
from glacierfs.store import KIND_BY_ID, KIND_DIR, KIND_FILE, KIND_VAULT, ROOT_INODE, Store

log = logging.getLogger(__name__)

BY_ID_DIR = ".by-id"
BY_ID_ONLY = "\x00by-id"  # staged "directory" of archives that appear only under .by-id
INGEST_BATCH = 5000  # rows per executemany: large enough to amortise, small enough for flat memory
_ENTRY_COLUMNS = ("inode, parent, name, kind, vault, archive_id, size, mtime_ns, tree_hash, "
                  "creation_ns, description")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Entry(NamedTuple):
    """One row of the tree. A tuple, not a dataclass: a listing builds one per entry, and a
    frozen dataclass costs several times more to construct."""

    inode: int
    parent: int
    name: str
    kind: int
    vault: str
    archive_id: str | None
    size: int
    mtime_ns: int
    tree_hash: str | None
    creation_ns: int | None
    description: str | None

    @property
    def is_dir(self) -> bool:
        return self.kind != KIND_FILE

    @property
    def creation_date(self) -> str | None:
        """Glacier's CreationDate as Glacier writes it (``2012-05-15T17:19:46.700Z``)."""
        if self.creation_ns is None:
            return None
        when = _EPOCH + (self.creation_ns // 1000) * _MICROSECOND
        return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class VaultInfo:
    name: str
    arn: str | None
    inode: int
    inventory_date: str | None
    inventory_job_id: str | None
    inventory_status: str | None
    inventory_message: str | None
    inventory_loaded_at: float | None
    number_of_archives: int | None
    last_inventory_date: str | None


@dataclass(frozen=True)
class IngestResult:
    archives: int
    skipped_rows: int
    truncated: bool
    problems: tuple[str, ...]
    inventory_date: str | None


_entry = Entry._make


class Namespace:
    """Read side of the tree plus vault bookkeeping, on the trio thread's Store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    # --- vaults -------------------------------------------------------------------------
    def set_vaults(self, vaults: Iterable[tuple[str, str | None]]) -> None:
        """Make the root list exactly these vaults (name, ARN); trees of others are kept on
        disk but hidden, so a vault filtered out by ``vaults=`` comes back instantly."""
        wanted = dict(vaults)
        with self.store.transaction() as db:
            for name, arn in wanted.items():
                db.execute("INSERT INTO vaults(name, arn) VALUES (?, ?) ON CONFLICT(name) DO "
                           "UPDATE SET arn = COALESCE(excluded.arn, arn), present = 1",
                           (name, arn))
                _ensure_vault_entries(db, name)
            for (name,) in db.execute("SELECT name FROM vaults").fetchall():
                if name not in wanted:
                    db.execute("UPDATE vaults SET present = 0 WHERE name = ?", (name,))
                    db.execute("UPDATE entries SET parent = -inode WHERE key = ?",
                               (f"v:{name}",))

    _VAULT_QUERY = (
        "SELECT v.name, v.arn, e.inode, v.inventory_date, v.inventory_job_id, "
        "v.inventory_status, v.inventory_message, v.inventory_loaded_at, "
        "v.number_of_archives, v.last_inventory_date FROM vaults v "
        "JOIN entries e ON e.key = 'v:' || v.name WHERE v.present = 1")

    def vaults(self) -> list[VaultInfo]:
        rows = self.db.execute(self._VAULT_QUERY + " ORDER BY v.name").fetchall()
        return [VaultInfo(*r) for r in rows]

    def vault(self, name: str) -> VaultInfo | None:
        """One vault by name (asked on every lookup in a vault's top directory: one row)."""
        row = self.db.execute(self._VAULT_QUERY + " AND v.name = ?", (name,)).fetchone()
        return VaultInfo(*row) if row else None

    def update_vault(self, name: str, **fields: object) -> None:
        if not fields:
            return
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE vaults SET {cols} WHERE name = ?", (*fields.values(), name))

    # --- tree reads ---------------------------------------------------------------------
    def get(self, inode: int) -> Entry | None:
        row = self.db.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE inode = ?",
                              (inode,)).fetchone()
        return _entry(row) if row else None

    def lookup(self, parent: Entry, name: str) -> Entry | None:
        if parent.kind == KIND_BY_ID:
            row = self.db.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE archive_id = ? AND vault = ? "
                "AND kind = ? AND key IS NULL", (name, parent.vault, KIND_FILE)).fetchone()
        else:
            row = self.db.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE parent = ? AND name = ?",
                (parent.inode, name)).fetchone()
        return _entry(row) if row else None

    def children(self, parent: Entry, after_inode: int, limit: int = 1000) -> list[Entry]:
        """Entries of a directory with inode > ``after_inode``, in inode order: a readdir
        position that stays valid while the directory changes."""
        if parent.kind == KIND_BY_ID:
            rows = self.db.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE vault = ? AND kind = ? "
                "AND key IS NULL AND inode > ? ORDER BY inode LIMIT ?",
                (parent.vault, KIND_FILE, after_inode, limit)).fetchall()
            return [_entry((*r[:2], r[5], *r[3:])) for r in rows]  # named by archive id
        rows = self.db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE parent = ? AND inode > ? "
            "ORDER BY inode LIMIT ?", (parent.inode, after_inode, limit)).fetchall()
        return [_entry(r) for r in rows]

    def count_children(self, parent: Entry) -> int:
        if parent.kind == KIND_BY_ID:
            sql, args = "SELECT count(*) FROM entries WHERE vault = ? AND kind = ? " \
                        "AND key IS NULL", \
                (parent.vault, KIND_FILE)
        else:
            sql, args = "SELECT count(*) FROM entries WHERE parent = ?", (parent.inode,)
        return int(self.db.execute(sql, args).fetchone()[0])

    def files_under(self, entry: Entry) -> Iterator[Entry]:
        """Every file at or below ``entry`` (for ``glacierfs restore -r``)."""
        if entry.kind == KIND_FILE:
            yield entry
            return
        stack = [entry]
        while stack:
            d = stack.pop()
            after = 0
            while True:
                batch = self.children(d, after)
                if not batch:
                    break
                after = batch[-1].inode
                for child in batch:
                    if child.kind == KIND_FILE:
                        yield child
                    elif child.kind == KIND_DIR:
                        stack.append(child)

    def path_of(self, entry: Entry) -> str:
        """Path relative to the mount point, for status output and logs."""
        parts: list[str] = []
        cur: Entry | None = entry
        while cur is not None and cur.inode != ROOT_INODE and len(parts) < 4096:
            parts.append(cur.name)
            cur = self.get(cur.parent) if cur.parent > 0 else None
        return "/".join(reversed(parts))

    def file_by_archive(self, archive_id: str) -> Entry | None:
        row = self.db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE archive_id = ? AND kind = ? "
            "AND key IS NULL", (archive_id, KIND_FILE)).fetchone()
        return _entry(row) if row else None


def _ensure_vault_entries(db: sqlite3.Connection, vault: str) -> int:
    db.execute("INSERT INTO entries(key, parent, name, kind, vault) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT(key) WHERE key IS NOT NULL "
               "DO UPDATE SET parent = excluded.parent, name = excluded.name",
               (f"v:{vault}", ROOT_INODE, vault, KIND_VAULT, vault))
    vault_inode = db.execute("SELECT inode FROM entries WHERE key = ?",
                             (f"v:{vault}",)).fetchone()[0]
    db.execute("INSERT INTO entries(key, parent, name, kind, vault) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT(key) WHERE key IS NOT NULL DO UPDATE SET parent = excluded.parent",
               (f"b:{vault}", vault_inode, BY_ID_DIR, KIND_BY_ID, vault))
    return int(vault_inode)


# --- ingest ---------------------------------------------------------------------------------

def _rows_for_staging(rows: Iterator[inventory_mod.InventoryArchive],
                      dirs: dict[str, int]) -> Iterator[tuple]:  # type: ignore[type-arg]
    """Rows for the staging table; fills ``dirs`` (every directory path → the newest mtime of
    the files directly in it) on the way. A folder marker makes its directories, and is itself
    a file only under ``.by-id`` (it is an archive, so that is where it can be read)."""
    for row in rows:
        decoded = names.decode_description(row.description)
        parts = decoded.parts
        created_ns = _to_ns(row.creation_date)
        if decoded.is_folder:
            for i in range(1, len(parts) + 1):
                dirs.setdefault("/".join(parts[:i]), 0)
            yield (row.archive_id, BY_ID_ONLY, row.archive_id, row.size, created_ns,
                   row.tree_hash, created_ns, row.description)
            continue
        if parts:
            directory, name = "/".join(parts[:-1]), parts[-1]
        else:
            directory, name = "", names.archive_id_name(row.archive_id)
        mtime_ns = _to_ns(decoded.mtime) if decoded.mtime else created_ns
        if directory:
            newest = dirs.get(directory)
            if newest is None:  # a new directory: its parents may be new too
                for i in range(1, len(parts) - 1):
                    dirs.setdefault("/".join(parts[:i]), 0)
                dirs[directory] = mtime_ns
            elif mtime_ns > newest:
                dirs[directory] = mtime_ns
        yield (row.archive_id, directory, name, row.size, mtime_ns, row.tree_hash, created_ns,
               row.description)


def _to_ns(when: datetime) -> int:
    """Exact nanoseconds since the epoch (float timestamps lose sub-microsecond digits)."""
    return (when - _EPOCH) // _MICROSECOND * 1000


def ingest_inventory(store: Store, vault: str, stream: BinaryIO, fmt: str,
                     job_id: str | None = None) -> IngestResult:
    """Replace ``vault``'s tree with the archives of an inventory document (blocking).

    Duplicate archive ids keep the last row. Names: a directory keeps its name over a file;
    among files of one name the newest archive keeps it, older ones get
    ``names.duplicate_name``. Rows the parser rejects are counted, never fatal; a truncated
    document still replaces the tree with what it held, and says so in the result. A vault
    with Synology mapping names (``synology_paths``) takes its paths from them.
    """
    report = inventory_mod.InventoryReport(vault_arn=None, inventory_date=None, rows_ok=0,
                                           rows_skipped=0, problems=[], truncated=False)
    db = store.db
    with store.transaction():
        count = _replace_tree(db, vault, inventory_mod.iter_inventory(stream, fmt, report))
        inv_date = report.inventory_date.strftime("%Y-%m-%dT%H:%M:%SZ") \
            if report.inventory_date else None
        message = None
        if report.truncated:
            message = "inventory document was truncated; showing the archives it held"
        elif report.rows_skipped:
            message = f"{report.rows_skipped} malformed inventory rows were skipped"
        db.execute("INSERT INTO vaults(name) VALUES (?) ON CONFLICT(name) DO NOTHING", (vault,))
        db.execute(
            "UPDATE vaults SET inventory_date = ?, inventory_job_id = COALESCE(?, "
            "inventory_job_id), inventory_status = 'Succeeded', inventory_message = ?, "
            "inventory_loaded_at = strftime('%s','now'), number_of_archives = ?, "
            "arn = COALESCE(arn, ?) WHERE name = ?",
            (inv_date, job_id, message, count, report.vault_arn, vault))
    if report.problems:
        log.warning("vault %s: inventory problems: %s", vault, "; ".join(report.problems[:5]))
    return IngestResult(count, report.rows_skipped, report.truncated, tuple(report.problems),
                        inv_date)


class _StoredArchive(NamedTuple):
    """An archive as the tree holds it, in the shape of an inventory row (for re-naming)."""
    archive_id: str
    description: str
    creation_date: datetime
    size: int
    tree_hash: str


def rebuild_tree(store: Store, vault: str) -> int:
    """Place ``vault``'s archives again from what the tree holds (no inventory needed): after
    its Synology names arrived or changed. Inode numbers of archives stay theirs. Returns the
    number of archives (blocking)."""
    db = store.db

    def stored() -> Iterator[_StoredArchive]:  # read while staging: memory stays flat
        for a, d, c, n, t in db.execute(
                "SELECT archive_id, COALESCE(description, ''), creation_ns, size, "
                "COALESCE(tree_hash, '') FROM entries WHERE vault = ? AND kind = ? AND "
                "key IS NULL AND archive_id IS NOT NULL AND parent > 0", (vault, KIND_FILE)):
            yield _StoredArchive(a, d, _EPOCH + ((c or 0) // 1000) * _MICROSECOND, n, t)

    with store.transaction():
        return _replace_tree(db, vault, stored())


def _replace_tree(db: sqlite3.Connection, vault: str,
                  rows: Iterator[inventory_mod.InventoryArchive] | Iterator[_StoredArchive]) -> int:
    """The vault's tree made exactly ``rows`` (inside the caller's transaction); returns the
    number of archives."""
    dirs: dict[str, int] = {}
    vault_inode = _ensure_vault_entries(db, vault)
    db.execute("DROP TABLE IF EXISTS temp.staged")
    db.execute("CREATE TEMP TABLE staged (archive_id TEXT, dir TEXT, name TEXT, "
               "size INTEGER, mtime_ns INTEGER, tree_hash TEXT, creation_ns INTEGER, "
               "description TEXT, alias INTEGER NOT NULL DEFAULT 0)")
    staged = _rows_for_staging(rows, dirs)  # type: ignore[arg-type]
    # No index while loading (random-order index inserts dominated); indexes are built
    # by sorting afterwards, and duplicate archive ids resolved then.
    insert = ("INSERT INTO temp.staged(archive_id, dir, name, size, mtime_ns, tree_hash, "
              "creation_ns, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    batch: list[tuple] = []  # type: ignore[type-arg]
    for item in staged:
        batch.append(item)
        if len(batch) >= INGEST_BATCH:
            db.executemany(insert, batch)
            batch.clear()
    if batch:
        db.executemany(insert, batch)
    db.execute("CREATE INDEX temp.staged_id ON staged(archive_id)")
    _drop_duplicate_ids(db)
    count = db.execute("SELECT count(*) FROM temp.staged").fetchone()[0]
    _apply_mapped_names(db, vault, dirs)
    db.execute("CREATE INDEX temp.staged_name ON staged(dir, name)")
    _resolve_name_clashes(db, dirs)

    # Park the vault's current entries out of the way of the unique (parent, name) index;
    # whatever the new inventory does not bring back is deleted at the end.
    db.execute("UPDATE entries SET parent = -inode WHERE vault = ? AND kind IN (?, ?)",
               (vault, KIND_DIR, KIND_FILE))
    for path in sorted(dirs, key=lambda p: (p.count("/"), p)):
        head, _, name = path.rpartition("/")
        parent_key = f"d:{vault}/{head}" if head else None
        db.execute(
            "INSERT INTO entries(key, parent, name, kind, vault) VALUES (?, "
            "COALESCE((SELECT inode FROM entries WHERE key = ?), ?), ?, ?, ?) "
            "ON CONFLICT(key) WHERE key IS NOT NULL "
            "DO UPDATE SET parent = excluded.parent, name = excluded.name",
            (f"d:{vault}/{path}", parent_key, vault_inode, name, KIND_DIR, vault))
    parent_sql = ("CASE WHEN s.dir = '' THEN ? WHEN s.dir = ? THEN (SELECT inode FROM entries "
                  "WHERE key = 'b:' || ?) ELSE (SELECT inode FROM entries WHERE key = "
                  "'d:' || ? || '/' || s.dir) END")
    db.execute(
        "INSERT INTO entries(parent, name, kind, vault, archive_id, size, mtime_ns, "
        f"tree_hash, creation_ns, description) SELECT {parent_sql}, s.name, ?, ?, "
        "s.archive_id, s.size, s.mtime_ns, s.tree_hash, s.creation_ns, s.description "
        "FROM temp.staged s WHERE s.alias = 0 "
        "ORDER BY s.dir, s.name "  # a directory's files get neighbouring rows and inodes
        "ON CONFLICT(archive_id, vault) WHERE archive_id IS NOT NULL AND key IS NULL "
        "DO UPDATE SET parent = excluded.parent, name = excluded.name, "
        "size = excluded.size, mtime_ns = excluded.mtime_ns, tree_hash = excluded.tree_hash, "
        "creation_ns = excluded.creation_ns, description = excluded.description",
        (vault_inode, BY_ID_ONLY, vault, vault, KIND_FILE, vault))
    # More paths of one archive (a Synology mapping's deduplicated files): entries of their
    # own, keyed by vault, archive and path, so a path keeps its inode while it keeps its archive.
    db.execute(
        "INSERT INTO entries(key, parent, name, kind, vault, archive_id, size, mtime_ns, "
        "tree_hash, creation_ns, description) SELECT 'l:' || ? || ':' || s.archive_id || ':' "
        f"|| s.dir || '/' || s.name, {parent_sql}, s.name, ?, ?, s.archive_id, s.size, "
        "s.mtime_ns, s.tree_hash, s.creation_ns, s.description FROM temp.staged s "
        "WHERE s.alias = 1 ORDER BY s.dir, s.name "
        "ON CONFLICT(key) WHERE key IS NOT NULL "
        "DO UPDATE SET parent = excluded.parent, name = excluded.name, "
        "size = excluded.size, mtime_ns = excluded.mtime_ns, tree_hash = excluded.tree_hash, "
        "creation_ns = excluded.creation_ns, description = excluded.description",
        (vault, vault_inode, BY_ID_ONLY, vault, vault, KIND_FILE, vault))
    db.execute("DELETE FROM entries WHERE vault = ? AND parent < 0 AND kind IN (?, ?)",
               (vault, KIND_DIR, KIND_FILE))
    # A directory's mtime is its newest member's: rolled up from the deepest level.
    vault_mtime = db.execute("SELECT COALESCE(MAX(mtime_ns), 0) FROM temp.staged "
                             "WHERE dir = ''").fetchone()[0]
    for path in sorted(dirs, key=lambda p: -p.count("/")):
        head = path.rpartition("/")[0]
        if head:
            dirs[head] = max(dirs[head], dirs[path])
        else:
            vault_mtime = max(vault_mtime, dirs[path])
    db.executemany("UPDATE entries SET mtime_ns = ? WHERE key = ?",
                   [(t, f"d:{vault}/{p}") for p, t in dirs.items()])
    db.execute("UPDATE entries SET mtime_ns = ? WHERE key = ?", (vault_mtime, f"v:{vault}"))
    db.execute("DROP TABLE temp.staged")
    return int(count)


def _apply_mapped_names(db: sqlite3.Connection, vault: str, dirs: dict[str, int]) -> None:
    """Synology names (``synology_paths``, filled by ``catalog.synology``) for the staged
    archives that have any: an archive's first path (in path order) is its own file, every
    further path an alias row; archives without a path keep the names they were staged with.
    ``dirs`` is rebuilt from the staged paths (directories decoded from descriptions of
    renamed archives must not linger)."""
    if not db.execute("SELECT EXISTS(SELECT 1 FROM synology_paths WHERE vault = ?)",
                      (vault,)).fetchone()[0]:
        return
    db.execute("DROP TABLE IF EXISTS temp.mapped")
    db.execute(
        "CREATE TEMP TABLE mapped AS SELECT p.archive_id, p.dir, p.name, p.mtime_ns, "
        "row_number() OVER (PARTITION BY p.archive_id ORDER BY p.dir, p.name) AS n "
        "FROM synology_paths p JOIN temp.staged s ON s.archive_id = p.archive_id "
        "AND s.dir != ? WHERE p.vault = ?", (BY_ID_ONLY, vault))
    db.execute("CREATE INDEX temp.mapped_id ON mapped(archive_id, n)")
    db.execute(
        "INSERT INTO temp.staged(archive_id, dir, name, size, mtime_ns, tree_hash, creation_ns, "
        "description, alias) SELECT s.archive_id, m.dir, m.name, s.size, "
        "COALESCE(m.mtime_ns, s.creation_ns), s.tree_hash, s.creation_ns, s.description, 1 "
        "FROM temp.mapped m JOIN temp.staged s ON s.archive_id = m.archive_id AND s.alias = 0 "
        "WHERE m.n > 1")
    db.execute(
        "UPDATE temp.staged SET dir = m.dir, name = m.name, "
        "mtime_ns = COALESCE(m.mtime_ns, staged.creation_ns) FROM temp.mapped m "
        "WHERE m.archive_id = staged.archive_id AND m.n = 1 AND staged.alias = 0")
    db.execute("DROP TABLE temp.mapped")
    dirs.clear()
    for (description,) in db.execute("SELECT description FROM temp.staged WHERE dir = ?",
                                     (BY_ID_ONLY,)).fetchall():
        parts = names.decode_description(description or "").parts
        for i in range(1, len(parts) + 1):
            dirs.setdefault("/".join(parts[:i]), 0)
    for directory, newest in db.execute(
            "SELECT dir, MAX(mtime_ns) FROM temp.staged WHERE dir NOT IN ('', ?) GROUP BY dir",
            (BY_ID_ONLY,)).fetchall():
        parts = directory.split("/")
        for i in range(1, len(parts)):
            dirs.setdefault("/".join(parts[:i]), 0)
        dirs[directory] = max(dirs.get(directory, 0), newest or 0)


def _drop_duplicate_ids(db: sqlite3.Connection) -> None:
    """An archive listed twice keeps its last row (the inventory's latest word on it)."""
    for (archive_id,) in db.execute("SELECT archive_id FROM temp.staged GROUP BY archive_id "
                                    "HAVING count(*) > 1").fetchall():
        db.execute("DELETE FROM temp.staged WHERE archive_id = ? AND rowid < (SELECT MAX(rowid) "
                   "FROM temp.staged WHERE archive_id = ?)", (archive_id, archive_id))


def _resolve_name_clashes(db: sqlite3.Connection, dirs: Collection[str]) -> None:
    """Give every staged file a name unique in its directory (deterministically)."""
    db.execute("CREATE TEMP TABLE staged_dirs (path TEXT PRIMARY KEY)")
    db.executemany("INSERT INTO temp.staged_dirs VALUES (?)", ((d,) for d in dirs))

    def taken(directory: str, name: str) -> bool:
        path = f"{directory}/{name}" if directory else name
        return db.execute(
            "SELECT EXISTS(SELECT 1 FROM temp.staged WHERE dir = ? AND name = ?) OR "
            "EXISTS(SELECT 1 FROM temp.staged_dirs WHERE path = ?)",
            (directory, name, path)).fetchone()[0] == 1

    def rename(rowid: int, archive_id: str, directory: str, name: str) -> None:
        new = names.duplicate_name(name, archive_id)
        while taken(directory, new):
            new = names.duplicate_name(new, archive_id)
        db.execute("UPDATE temp.staged SET name = ? WHERE rowid = ?", (new, rowid))

    # A file whose path is also a directory's: the directory keeps the name.
    for rowid, archive_id, directory, name in db.execute(
            "SELECT rowid, archive_id, dir, name FROM temp.staged WHERE "
            "(CASE WHEN dir = '' THEN name ELSE dir || '/' || name END) IN "
            "(SELECT path FROM temp.staged_dirs)").fetchall():
        rename(rowid, archive_id, directory, name)
    # Files sharing a name: the newest keeps it, the others move aside in a fixed order.
    for directory, name in db.execute("SELECT dir, name FROM temp.staged GROUP BY dir, name "
                                      "HAVING count(*) > 1").fetchall():
        members = db.execute(
            "SELECT rowid, archive_id FROM temp.staged WHERE dir = ? AND name = ? "
            "ORDER BY creation_ns DESC, archive_id, alias, rowid", (directory, name)).fetchall()
        for rowid, archive_id in members[1:]:
            rename(rowid, archive_id, directory, name)
    db.execute("DROP TABLE temp.staged_dirs")
