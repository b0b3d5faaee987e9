"""Vault inventories: which moment an inventory describes, and rendering it to a file.

Rendering streams rows from SQLite to the output file, so a vault of a million archives costs a
file on disk, not memory.

Formats follow the Glacier documentation: JSON ``{"VaultARN", "InventoryDate", "ArchiveList"}``;
CSV with header ``ArchiveId,ArchiveDescription,CreationDate,Size,SHA256TreeHash`` where the
description is always quoted, a quote inside it is written ``\\"`` and a backslash is written as
is (Glacier's own ambiguity, reproduced on purpose so clients meet it here first).
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from glacierfs.sim.clock import DAY, iso, midnight_at_or_before
from glacierfs.sim.errors import invalid
from glacierfs.sim.store import Store

CSV_HEADER = "ArchiveId,ArchiveDescription,CreationDate,Size,SHA256TreeHash\n"
_PLAIN = re.compile(r'^[ !#-\[\]-~]*$')  # printable ASCII needing no JSON escapes
FETCH_ROWS = 10_000  # rows per fetchmany: big enough to amortise, small enough to stay flat


@dataclass
class InventoryRequest:
    vault_id: int
    vault_arn: str
    fmt: str  # "JSON" or "CSV"
    at: float  # the moment the inventory describes
    start: float | None = None  # CreationDate >= start
    end: float | None = None  # CreationDate < end
    limit: int | None = None
    marker: str | None = None


@dataclass
class Rendered:
    size: int
    count: int
    next_marker: str | None


def encode_marker(vault_id: int, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"inv1:{vault_id}:{row_id}".encode()).decode().rstrip("=")


def decode_marker(marker: str, vault_id: int) -> int:
    """Row id after which the page starts; 400 for a marker this vault never handed out."""
    try:
        padded = marker + "=" * (-len(marker) % 4)
        tag, vault, row = base64.urlsafe_b64decode(padded.encode()).decode().split(":")
        if tag != "inv1" or int(vault) != vault_id:
            raise ValueError
        return int(row)
    except (ValueError, UnicodeDecodeError):
        raise invalid(f"Invalid inventory marker: {marker}") from None


def daily_snapshot(store: Store, vault_id: int, now: float) -> float | None:
    """The date of the latest daily inventory at ``now``, or None when none exists yet.

    Glacier inventories a vault about once a day, and only when archives were added or deleted
    since the previous inventory. Here a snapshot is taken at each emulated midnight (UTC) that
    follows a change, so the latest one is the first midnight after the last change made before
    the most recent midnight.
    """
    change = store.last_change(vault_id, midnight_at_or_before(now))
    if change is None:
        return None
    return midnight_at_or_before(change) + DAY


def _csv_quote(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def _json_string(text: str) -> str:
    if _PLAIN.match(text):
        return f'"{text}"'
    return json.dumps(text)


def render(conn: sqlite3.Connection, req: InventoryRequest, out_path: Path) -> Rendered:
    """Write the inventory described by ``req`` to ``out_path`` (atomically, via a temp file)."""
    where = ["vault_id = ?", "created <= ?", "(deleted IS NULL OR deleted > ?)"]
    args: list[object] = [req.vault_id, req.at, req.at]
    if req.start is not None:
        where.append("created >= ?")
        args.append(req.start)
    if req.end is not None:
        where.append("created < ?")
        args.append(req.end)
    if req.marker:
        where.append("id > ?")
        args.append(decode_marker(req.marker, req.vault_id))
    sql = ("SELECT id, archive_id, description, created, size, tree_hash FROM archives WHERE "
           + " AND ".join(where) + " ORDER BY id")
    if req.limit is not None:
        sql += " LIMIT ?"
        args.append(req.limit + 1)  # one more row tells whether a next page exists
    tmp = out_path.with_name(out_path.name + ".tmp")
    count = 0
    last_id = None
    more = False
    last_created, created_text = None, ""
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        if req.fmt == "CSV":
            out.write(CSV_HEADER)
        else:
            out.write(json.dumps({"VaultARN": req.vault_arn, "InventoryDate": iso(req.at)})[:-1])
            out.write(',"ArchiveList":[')
        cur = conn.execute(sql, args)
        while True:
            rows = cur.fetchmany(FETCH_ROWS)
            if not rows:
                break
            chunk = []
            for row_id, archive_id, description, created, size, tree_hash in rows:
                if req.limit is not None and count == req.limit:
                    more = True
                    break
                if created != last_created:  # synthesized rows share one date: format it once
                    last_created, created_text = created, iso(created)
                if req.fmt == "CSV":
                    chunk.append(f"{archive_id},{_csv_quote(description)},{created_text},"
                                 f"{size},{tree_hash}\n")
                else:
                    chunk.append(f'{"," if count else ""}{{"ArchiveId":"{archive_id}",'
                                 f'"ArchiveDescription":{_json_string(description)},'
                                 f'"CreationDate":"{created_text}","Size":{size},'
                                 f'"SHA256TreeHash":"{tree_hash}"}}')
                count += 1
                last_id = row_id
            out.write("".join(chunk))
            if more:
                break
        cur.close()
        if req.fmt != "CSV":
            out.write("]}")
    tmp.replace(out_path)
    next_marker = encode_marker(req.vault_id, last_id) if more and last_id is not None else None
    return Rendered(size=out_path.stat().st_size, count=count, next_marker=next_marker)
