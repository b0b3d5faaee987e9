"""Synology Glacier Backup: the mapping database of a backup task, read safely into names.

Synology's "Glacier Backup" keeps no names in archive descriptions. A backup task has a data
vault ``V`` (one archive per file) and a sibling vault ``V_mapping`` holding one archive: a
SQLite database whose ``file_info_tb(key, shareName, basePath, archiveID, lastBkpTime,
fileSize, archiveVersion, current, checksum)`` has one row per path (``shareName/basePath``).
This module owns reading that database and turning it into the rows of ``synology_paths``
(vault, archive id, safe directory and name, mtime) that the namespace places files by, and
the per-vault naming state (``synology_state``) that xattrs and ``glacierfs status`` show.

The database comes from the vault, so it is untrusted input: it is checked to be a SQLite file
of bounded size, opened read-only and immutable, with ``trusted_schema=OFF`` and
``query_only``; only plain SELECTs of the known columns of the known tables run, after
``sqlite_master`` says they are ordinary tables (no view, virtual table or generated column is
ever evaluated; an authorizer refuses reads of anything else and every function); values are
capped in length, rows in number; every path component goes through
``names.safe_parts``. Whatever is wrong gives :class:`MappingError` with one line of reason,
and the vault keeps listing by archive id.

Which row a path shows: its current row (``current`` = 1), else the highest
``archiveVersion``; ties go to the newest ``lastBkpTime``, then the largest archive id, so the
choice is deterministic. One archive on several rows appears at each of its paths.

Blocking; runs in a worker thread on its own ``Store`` (like inventory ingest).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from glacierfs.catalog import names
from glacierfs.catalog.namespace import rebuild_tree
from glacierfs.store import Store

log = logging.getLogger(__name__)

MAPPING_SUFFIX = "_mapping"          # V's mapping vault is V + this
SQLITE_MAGIC = b"SQLite format 3\x00"
# A NAS of millions of files has a mapping of a few hundred MB; far beyond is not Synology's.
MAX_MAPPING_BYTES = 4 << 30
MAX_ROWS = 5_000_000                 # rows of file_info_tb read at most (the rest: truncated)
MAX_FIELD_CHARS = 4096               # shareName/basePath longer than PATH_MAX: row skipped
MAX_ID_CHARS = 1024                  # real archive ids are 138 characters
MAX_VALUE_BYTES = 1 << 20            # SQLITE_LIMIT_LENGTH: no single value above this is loaded
MAX_INFO_ROWS = 100                  # backup_info_tb is a handful of key/value rows
MAX_STEPS = 2_000_000_000            # VM steps for the whole read (a pathological file stops)
BATCH = 5000

FILE_TABLE = "file_info_tb"
INFO_TABLE = "backup_info_tb"
REQUIRED = ("shareName", "basePath", "archiveID")
OPTIONAL = ("lastBkpTime", "archiveVersion", "current")
INFO_KEYS = ("taskName", "hostName", "bkpFolder", "lastBkpTime")

# Naming states (``synology_state.status``; the xattr ``user.glacier.names.status``).
PENDING = "Pending"              # names are on their way: the message says what is awaited
LOADED = "Loaded"                # names from the mapping archive in ``archive_id``
FAILED = "Failed"                # the mapping could not be had or read: the message says why
NOT_REQUESTED = "NotRequested"   # retrieve=manual: restore the mapping archive to get names


class MappingError(Exception):
    """The mapping database cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class MappingResult:
    rows: int            # rows of file_info_tb read
    paths: int           # distinct safe paths kept (one archive each)
    skipped: int         # rows without a usable path or archive id
    truncated: bool      # more than MAX_ROWS rows
    missing: tuple[str, ...]   # optional columns the table lacks
    info: dict[str, str]       # backup_info_tb's known keys

    def summary(self) -> str:
        parts = [f"{self.paths} paths from {self.rows} rows"]
        if self.skipped:
            parts.append(f"{self.skipped} rows without a usable path or archive id skipped")
        if self.truncated:
            parts.append(f"only the first {MAX_ROWS} rows read")
        if self.missing:
            parts.append("no column " + ", ".join(self.missing))
        return "; ".join(parts)


@dataclass(frozen=True)
class NamesState:
    """What a Synology vault's names are waiting for, or where they came from."""

    vault: str
    mapping_vault: str
    status: str
    message: str | None
    archive_id: str | None       # the mapping archive loaded (LOADED) or awaited
    paths: int | None
    updated_at: float | None


def mapping_vault_of(vault: str) -> str:
    return vault + MAPPING_SUFFIX


# --- reading the untrusted database ----------------------------------------------------------

def _authorizer(tables: frozenset[str]):  # type: ignore[no-untyped-def]
    """Allow SELECT and reads of the known tables (and ``sqlite_master``); no function."""
    allowed_tables = tables | {"sqlite_master", "sqlite_schema"}

    def check(action: int, arg1: str | None, arg2: str | None, db: str | None,
              trigger: str | None) -> int:
        if action == sqlite3.SQLITE_SELECT:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            if trigger is None and (arg1 or "").lower() in allowed_tables:
                return sqlite3.SQLITE_OK
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in ("table_xinfo",):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
    return check


def open_untrusted(path: Path) -> sqlite3.Connection:
    """The mapping file opened so that nothing in it can act: read-only, immutable (no journal
    or WAL of its own is looked at), schema untrusted, no writes, bounded values and work."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise MappingError(f"cannot read the mapping file: {exc.strerror}") from None
    if magic != SQLITE_MAGIC:
        raise MappingError("the mapping archive is not a SQLite database")
    if size > MAX_MAPPING_BYTES:
        raise MappingError(f"the mapping database is {size} bytes, more than "
                           f"{MAX_MAPPING_BYTES} (not Synology's)")
    uri = "file:" + urllib.parse.quote(os.fspath(path.absolute())) + "?mode=ro&immutable=1"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise MappingError(f"the mapping database cannot be opened: {exc}") from None
    db.execute("PRAGMA trusted_schema=OFF")
    db.execute("PRAGMA query_only=ON")
    db.execute("PRAGMA cell_size_check=ON")
    db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    steps = [0]

    def progress() -> int:   # a non-zero answer interrupts the statement
        steps[0] += 1
        return 1 if steps[0] > MAX_STEPS // 1000 else 0
    db.set_progress_handler(progress, 1000)
    return db


def _tables(db: sqlite3.Connection) -> dict[str, tuple[str, str]]:
    """Known tables by lower-case name → (real name, type): read from ``sqlite_master``."""
    db.set_authorizer(_authorizer(frozenset()))
    try:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master LIMIT 10000").fetchall()
    except sqlite3.Error as exc:
        raise MappingError(f"the mapping database is damaged: {exc}") from None
    found: dict[str, tuple[str, str]] = {}
    for kind, name, sql in rows:
        if not isinstance(name, str) or name.lower() not in (FILE_TABLE, INFO_TABLE):
            continue
        if kind == "table" and isinstance(sql, str) and \
                sql.lstrip().upper().startswith("CREATE VIRTUAL"):
            kind = "virtual table"
        found[name.lower()] = (name, str(kind))
    return found


def _columns(db: sqlite3.Connection, table: str, wanted: tuple[str, ...]) -> dict[str, str]:
    """``wanted`` columns that are plain stored columns of ``table``: lower name → real name.
    Generated columns (hidden 2 or 3) are expressions from the file: never evaluated."""
    out: dict[str, str] = {}
    rows = db.execute(f"PRAGMA table_xinfo({_quoted(table)})").fetchall()
    lower = {w.lower(): w for w in wanted}
    for row in rows:
        name, hidden = row[1], row[6] if len(row) > 6 else 0
        if isinstance(name, str) and name.lower() in lower and hidden == 0:
            out[name.lower()] = name
    return out


def _text(value: object, limit: int) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > limit:
        return None
    return value


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if -(1 << 62) < value < (1 << 62) else None
    if isinstance(value, float) and value == value and abs(value) < 1e18:
        return int(value)
    if isinstance(value, (str, bytes)) and len(value) < 32:
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class ReadReport:
    """What ``read_rows`` saw; filled in while reading."""
    rows: int = 0
    skipped: int = 0
    truncated: bool = False
    missing: tuple[str, ...] = ()
    info: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MappingRow:
    parts: tuple[str, ...]     # safe components of SHARENAME/BASEPATH
    archive_id: str
    backup_time: int | None    # lastBkpTime, epoch seconds
    version: int
    current: bool


def read_rows(db: sqlite3.Connection, report: ReadReport) -> Iterator[MappingRow]:
    """The usable rows of ``file_info_tb``, made safe, counted in ``report``. Raises
    MappingError for a missing table or a missing required column."""
    tables = _tables(db)
    if FILE_TABLE not in tables:
        raise MappingError(f"the mapping database has no table {FILE_TABLE}")
    real, kind = tables[FILE_TABLE]
    if kind != "table":
        raise MappingError(f"{FILE_TABLE} in the mapping database is a {kind}, not a table; "
                           "not read")
    allowed = frozenset(n.lower() for n in (real, tables.get(INFO_TABLE, ("", ""))[0]) if n)
    db.set_authorizer(_authorizer(allowed))
    try:
        cols = _columns(db, real, REQUIRED + OPTIONAL)
    except sqlite3.Error as exc:
        raise MappingError(f"the mapping database is damaged: {exc}") from None
    missing = [c for c in REQUIRED if c.lower() not in cols]
    if missing:
        raise MappingError(f"{FILE_TABLE} in the mapping database has no column "
                           f"{', '.join(missing)}")
    report.missing = tuple(c for c in OPTIONAL if c.lower() not in cols)
    report.info = _info(db, tables)
    # Plain columns (a value over MAX_VALUE_BYTES stops the read: SQLITE_LIMIT_LENGTH).
    select = ", ".join(_quoted(cols[c.lower()]) if c.lower() in cols else "NULL"
                       for c in REQUIRED + OPTIONAL)
    # Plain scan: no WHERE or ORDER BY, so no index (and no expression in one) is consulted.
    cursor = db.execute(f"SELECT {select} FROM {_quoted(real)} LIMIT {MAX_ROWS + 1}")
    rows = skipped = 0
    try:
        for share, base, archive_id, bkp, version, current in cursor:
            rows += 1
            if rows > MAX_ROWS:
                report.truncated = True
                rows -= 1
                break
            share_t, base_t = _text(share, MAX_FIELD_CHARS), _text(base, MAX_FIELD_CHARS)
            aid = _text(archive_id, MAX_ID_CHARS)
            if share_t is None and base_t is None or not aid or not aid.strip():
                skipped += 1
                continue
            parts = names.safe_parts("/".join(p for p in (share_t, base_t) if p))
            if not parts:
                skipped += 1
                continue
            when = _int(bkp)
            if when is not None and not 0 <= when < (1 << 34):
                when = None
            yield MappingRow(parts, aid.strip(), when, _int(version) or 0, _int(current) == 1)
    except sqlite3.Error as exc:
        raise MappingError(f"the mapping database could not be read to the end: {exc}") \
            from None
    finally:
        report.rows = rows
        report.skipped = skipped


def _info(db: sqlite3.Connection, tables: dict[str, tuple[str, str]]) -> dict[str, str]:
    """backup_info_tb's known keys (task, host, folder, time), when it is a plain table."""
    if INFO_TABLE not in tables or tables[INFO_TABLE][1] != "table":
        return {}
    real = tables[INFO_TABLE][0]
    try:
        cols = _columns(db, real, ("key", "value"))
        if len(cols) < 2:
            return {}
        rows = db.execute(f"SELECT {_quoted(cols['key'])}, {_quoted(cols['value'])} "
                          f"FROM {_quoted(real)} LIMIT {MAX_INFO_ROWS}").fetchall()
    except sqlite3.Error:
        return {}
    out = {}
    for key, value in rows:
        key_t, value_t = _text(key, 64), _text(value, 256)
        if key_t in INFO_KEYS and value_t is not None:
            out[key_t] = "".join(c if c.isprintable() else "_" for c in value_t)
    return out


# --- into the state database -----------------------------------------------------------------

def load_mapping(store: Store, vault: str, path: Path, mapping_archive_id: str) -> MappingResult:
    """Read the mapping file at ``path`` and make its paths ``vault``'s names (blocking): the
    rows of ``synology_paths`` are replaced in one transaction, then the vault's tree is rebuilt
    with them. Raises MappingError (nothing changed) when the file cannot be used."""
    report = ReadReport()
    src = open_untrusted(path)
    db = store.db
    try:
        with store.transaction():
            db.execute("DROP TABLE IF EXISTS temp.syno_raw")
            db.execute("CREATE TEMP TABLE syno_raw (dir TEXT, name TEXT, archive_id TEXT, "
                       "mtime_ns INTEGER, version INTEGER, current INTEGER)")
            insert = "INSERT INTO temp.syno_raw VALUES (?, ?, ?, ?, ?, ?)"
            batch: list[tuple[object, ...]] = []
            for row in read_rows(src, report):
                batch.append(("/".join(row.parts[:-1]), row.parts[-1], row.archive_id,
                              None if row.backup_time is None else row.backup_time * 10**9,
                              row.version, int(row.current)))
                if len(batch) >= BATCH:
                    db.executemany(insert, batch)
                    batch.clear()
            if batch:
                db.executemany(insert, batch)
            db.execute("DELETE FROM synology_paths WHERE vault = ?", (vault,))
            # One archive per safe path: current first, then the highest version, then the
            # newest backup, then the largest id (deterministic).
            db.execute(
                "INSERT INTO synology_paths(vault, archive_id, dir, name, mtime_ns) "
                "SELECT ?, archive_id, dir, name, mtime_ns FROM (SELECT *, row_number() OVER "
                "(PARTITION BY dir, name ORDER BY current DESC, version DESC, "
                "mtime_ns DESC NULLS LAST, archive_id DESC) AS n FROM temp.syno_raw) "
                "WHERE n = 1", (vault,))
            paths = db.execute("SELECT count(*) FROM synology_paths WHERE vault = ?",
                               (vault,)).fetchone()[0]
            db.execute("DROP TABLE temp.syno_raw")
    finally:
        src.close()
    result = MappingResult(report.rows, int(paths), report.skipped, report.truncated,
                           report.missing, report.info)
    rebuild_tree(store, vault)
    set_state(store.db, vault, LOADED, _loaded_message(result), mapping_archive_id, paths)
    return result


def _loaded_message(result: MappingResult) -> str:
    task = result.info.get("taskName")
    host = result.info.get("hostName")
    origin = f" (task {task!r} of {host!r})" if task and host else ""
    return f"names from the Synology mapping database{origin}: {result.summary()}"


def set_state(db: sqlite3.Connection, vault: str, status: str, message: str | None,
              archive_id: str | None = None, paths: int | None = None) -> None:
    """Record what the vault's names wait for (keeps the loaded archive and count unless
    given)."""
    db.execute(
        "INSERT INTO synology_state(vault, mapping_vault, status, message, archive_id, paths, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(vault) DO UPDATE SET "
        "status = excluded.status, message = excluded.message, "
        "archive_id = COALESCE(excluded.archive_id, archive_id), "
        "paths = COALESCE(excluded.paths, paths), updated_at = excluded.updated_at",
        (vault, mapping_vault_of(vault), status, message, archive_id, paths, time.time()))


def names_state(db: sqlite3.Connection, vault: str) -> NamesState | None:
    row = db.execute("SELECT vault, mapping_vault, status, message, archive_id, paths, "
                     "updated_at FROM synology_state WHERE vault = ?", (vault,)).fetchone()
    return NamesState(*row) if row else None


def has_names(db: sqlite3.Connection, vault: str) -> bool:
    return db.execute("SELECT EXISTS(SELECT 1 FROM synology_paths WHERE vault = ?)",
                      (vault,)).fetchone()[0] == 1


def vault_names(db: sqlite3.Connection, vault: str) -> NamesState | None:
    """What xattrs and status show for ``vault``: its naming state; for a Synology data vault
    not listed yet, that names come when it is; None for every other vault."""
    state = names_state(db, vault)
    if state is not None:
        return state
    mapping_vault = mapping_vault_of(vault)
    if not db.execute("SELECT EXISTS(SELECT 1 FROM vaults WHERE name = ? AND present = 1)",
                      (mapping_vault,)).fetchone()[0]:
        return None
    return NamesState(vault, mapping_vault, PENDING,
                      f"names come from the Synology mapping database in {mapping_vault}; it "
                      f"is fetched when {vault} is first listed", None, None, None)
