"""Synology Glacier Backup mapping databases built like the real ones, for tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

FILE_INFO = ("CREATE TABLE file_info_tb (key INTEGER PRIMARY KEY, shareName TEXT, basePath TEXT, "
             "archiveID TEXT, lastBkpTime INTEGER, fileSize INTEGER, archiveVersion INTEGER, "
             "current INTEGER, checksum TEXT)")
BACKUP_INFO = "CREATE TABLE backup_info_tb (key TEXT, value TEXT)"


def mapping_db(path: Path, rows: Iterable[tuple], info: dict[str, str] | None = None,
               extra_sql: Iterable[str] = (), file_info: str = FILE_INFO) -> Path:
    """``rows``: (shareName, basePath, archiveID, lastBkpTime, archiveVersion, current)."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute(file_info)
    db.execute(BACKUP_INFO)
    cols = [r[1] for r in db.execute("PRAGMA table_info(file_info_tb)")]
    wanted = [c for c in ("shareName", "basePath", "archiveID", "lastBkpTime", "archiveVersion",
                          "current") if c in cols]
    db.executemany(f"INSERT INTO file_info_tb({', '.join(wanted)}) VALUES "
                   f"({', '.join('?' * len(wanted))})",
                   (r[:len(wanted)] for r in rows))
    db.executemany("INSERT INTO backup_info_tb VALUES (?, ?)", (info or {
        "taskName": "nas-backup", "hostName": "DiskStation", "bkpFolder": "photo",
        "lastBkpTime": "1431027000"}).items())
    for sql in extra_sql:
        db.execute(sql)
    db.commit()
    db.close()
    return path
