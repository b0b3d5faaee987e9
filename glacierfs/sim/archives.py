"""Archive operations: UploadArchive, DeleteArchive and the multipart upload family.

Bodies stream to disk while their SHA-256 and tree hash are computed; the client's
``x-amz-content-sha256`` and ``x-amz-sha256-tree-hash`` are checked against them before anything
becomes visible. A multipart upload is one file written at each part's offset, plus its leaf
digests; completing it checks the folded part hashes and renames both into place.

Completing is idempotent, as documented: the same upload completed again with the same size and
tree hash within ``COMPLETE_REPLAY_WINDOW`` of its first success answers 201 with the same
archive id (so a client whose first answer was lost, and which retries, learns the archive it
created instead of a 404 while the vault holds it). Anything else about a completed upload
answers 404 as before.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from pathlib import Path

from glacierfs.sim import ids
from glacierfs.sim.bodies import Received, leaves_path_for, receive, write_leaves
from glacierfs.sim.clock import iso
from glacierfs.sim.context import Sim, check_description
from glacierfs.sim.errors import GlacierError, invalid, missing, not_found
from glacierfs.sim.jobs import parse_limit
from glacierfs.sim.messages import Request, Response, empty, json_response
from glacierfs.sim.store import Row, archive_key
from glacierfs.treehash import MIB, fold_hex, is_power_of_two

log = logging.getLogger(__name__)

MAX_SINGLE_UPLOAD = 4 * 1024 * MIB  # Glacier: up to 4 GiB in one UploadArchive
MAX_PART_SIZE = 4 * 1024 * MIB  # part sizes: 1 MiB x 2^n up to 4 GiB
MAX_PARTS = 10_000
LIST_DEFAULT, LIST_MAX = 50, 50  # ListParts / ListMultipartUploads page sizes
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\*|\d+)$")
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
# How long (emulated seconds) a repeated CompleteMultipartUpload returns the same archive id:
# Glacier says "within a short period"; retries come within seconds, an hour leaves room.
COMPLETE_REPLAY_WINDOW = 3600.0
# Completions are serialised: two racing completions of one upload must not make two archives.
_COMPLETE_LOCK = threading.Lock()


def _body_length(req: Request) -> int:
    if req.content_length is None:
        raise GlacierError(411, "MissingParameterValueException",
                           "Content-Length is required for this request")
    return req.content_length


def _receive_checked(req: Request, length: int, out, offset: int | None = None) -> Received:
    """Stream the body and check both client hashes; 400 on any mismatch."""
    tree_header = req.header("x-amz-sha256-tree-hash")
    if not tree_header:
        raise missing("Required header x-amz-sha256-tree-hash is missing")
    if not HEX64.match(tree_header):
        raise invalid(f"Invalid x-amz-sha256-tree-hash: {tree_header}")
    try:
        got = receive(req.rfile, length, out, offset)
    except EOFError as exc:
        req.consumed = req.content_length or 0  # nothing left to drain: the client is gone
        raise GlacierError(408, "RequestTimeoutException", str(exc)) from None
    req.consumed += length
    content = req.header("x-amz-content-sha256")
    if content and content != "UNSIGNED-PAYLOAD" and content.lower() != got.sha256:
        raise invalid(f"Checksum mismatch: x-amz-content-sha256 {content} does not match the "
                      f"payload's SHA-256 {got.sha256}")
    if tree_header.lower() != got.tree_hash:
        raise invalid(f"Checksum mismatch: expected {tree_header}, computed {got.tree_hash}")
    return got


def _archive_headers(sim: Sim, vault: str, archive_id: str, tree_hash: str) -> dict[str, str]:
    return {"Location": f"/{sim.config.account_id}/vaults/{vault}/archives/{archive_id}",
            "x-amz-archive-id": archive_id, "x-amz-sha256-tree-hash": tree_hash}


def _publish(sim: Sim, vault_row: Row, body_tmp: Path, leaves_tmp: Path, description: str,
             size: int, tree_hash: str) -> str:
    """Move a received body into place and record the archive."""
    archive_id = ids.archive_id()
    rel = sim.store.archive_relpath(archive_id)
    final = sim.store.data_dir / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(leaves_tmp, leaves_path_for(final))
    os.replace(body_tmp, final)
    now = sim.clock.now()
    with sim.store.transaction() as db:
        db.execute(
            "INSERT INTO archives (vault_id, archive_key, archive_id, description, size,"
            " tree_hash, created, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (vault_row["id"], archive_key(archive_id), archive_id, description, size, tree_hash,
             now, rel))
        db.execute("UPDATE vaults SET live_count = live_count + 1, live_size = live_size + ? "
                   "WHERE id = ?", (size, vault_row["id"]))
        db.execute("INSERT INTO changes (vault_id, at) VALUES (?, ?)", (vault_row["id"], now))
    return archive_id


def upload_archive(sim: Sim, req: Request, account: str, vault: str) -> Response:
    vault_row = sim.vault(vault)
    description = check_description(req.header("x-amz-archive-description"))
    length = _body_length(req)
    if length > MAX_SINGLE_UPLOAD:
        raise invalid("Archive too large for a single upload; use a multipart upload")
    tmp = sim.store.tmp_path(f"upload-{uuid.uuid4().hex}")
    leaves_tmp = leaves_path_for(tmp)
    try:
        with open(tmp, "wb") as out:
            got = _receive_checked(req, length, out)
        write_leaves(leaves_tmp, got.leaves)
        archive_id = _publish(sim, vault_row, tmp, leaves_tmp, description, length,
                              got.tree_hash)
    finally:
        tmp.unlink(missing_ok=True)
        leaves_tmp.unlink(missing_ok=True)
    return empty(201, _archive_headers(sim, vault, archive_id, got.tree_hash))


def delete_archive(sim: Sim, req: Request, account: str, vault: str, archive_id: str) -> Response:
    vault_row = sim.vault(vault)
    row = sim.store.archive(vault_row["id"], archive_id)
    if row is None:
        raise not_found(f"Archive not found for ArchiveId: {archive_id}")
    now = sim.clock.now()
    with sim.store.transaction() as db:
        db.execute("UPDATE archives SET deleted = ?, body = NULL WHERE id = ?", (now, row["id"]))
        db.execute("UPDATE vaults SET live_count = live_count - 1, live_size = live_size - ? "
                   "WHERE id = ?", (row["size"], vault_row["id"]))
        db.execute("INSERT INTO changes (vault_id, at) VALUES (?, ?)", (vault_row["id"], now))
    if row["body"]:  # jobs hold their own hard links, so their output survives
        path = sim.store.data_dir / row["body"]
        path.unlink(missing_ok=True)
        leaves_path_for(path).unlink(missing_ok=True)
    return empty(204)


# --- multipart ------------------------------------------------------------------------------

def _upload(sim: Sim, vault_row: Row, upload_id: str) -> Row:
    row = sim.store.one("SELECT * FROM uploads WHERE upload_id = ? AND vault_id = ?",
                        (upload_id, vault_row["id"]))
    if row is None:
        raise not_found(f"Multipart upload not found for upload ID: {upload_id}")
    return row


def _upload_file(sim: Sim, upload_id: str) -> Path:
    return sim.store.data_dir / "uploads" / upload_id


def _upload_json(sim: Sim, vault: str, row: Row) -> dict[str, object]:
    return {"ArchiveDescription": row["description"] or None, "CreationDate": iso(row["created"]),
            "MultipartUploadId": row["upload_id"], "PartSizeInBytes": row["part_size"],
            "VaultARN": sim.config.vault_arn(vault)}


def initiate_multipart(sim: Sim, req: Request, account: str, vault: str) -> Response:
    vault_row = sim.vault(vault)
    description = check_description(req.header("x-amz-archive-description"))
    raw = req.header("x-amz-part-size")
    if not raw:
        raise missing("Required header x-amz-part-size is missing")
    try:
        part_size = int(raw)
    except ValueError:
        raise invalid(f"Invalid part size: {raw}") from None
    if part_size % MIB or not is_power_of_two(part_size // MIB) or part_size > MAX_PART_SIZE:
        raise invalid(f"Invalid part size: {raw}. Part size must be a megabyte (1024 KB) "
                      "multiplied by a power of 2, from 1 MB up to 4 GB")
    upload_id = ids.upload_id()
    _upload_file(sim, upload_id).touch()
    sim.store.run("INSERT INTO uploads (vault_id, upload_id, description, part_size, created) "
                  "VALUES (?, ?, ?, ?, ?)",
                  (vault_row["id"], upload_id, description, part_size, sim.clock.now()))
    return empty(201, {
        "Location": f"/{sim.config.account_id}/vaults/{vault}/multipart-uploads/{upload_id}",
        "x-amz-multipart-upload-id": upload_id})


def upload_part(sim: Sim, req: Request, account: str, vault: str, upload_id: str) -> Response:
    vault_row = sim.vault(vault)
    upload = _upload(sim, vault_row, upload_id)
    content_range = req.header("Content-Range")
    if not content_range:
        raise missing("Required header Content-Range is missing")
    match = CONTENT_RANGE.match(content_range.strip())
    if not match:
        raise invalid(f"Invalid Content-Range: {content_range}")
    start, end = int(match.group(1)), int(match.group(2))
    part_size = upload["part_size"]
    length = _body_length(req)
    if end < start or start % part_size or end - start + 1 > part_size:
        raise invalid(f"Invalid Content-Range: {content_range} for part size {part_size}")
    if length != end - start + 1:
        raise invalid(f"Content-Range {content_range} does not match Content-Length {length}")
    if start // part_size >= MAX_PARTS:
        raise invalid(f"Too many parts: at most {MAX_PARTS}")
    path = _upload_file(sim, upload_id)
    try:
        with open(path, "r+b") as out:
            got = _receive_checked(req, length, out, offset=start)
    except GlacierError:
        # The bad bytes overwrote this part's slot: whatever was there before is gone.
        sim.store.run("DELETE FROM parts WHERE upload_id = ? AND start = ?", (upload_id, start))
        raise
    write_leaves(leaves_path_for(path), got.leaves, first_leaf=start // MIB)
    sim.store.run("INSERT INTO parts (upload_id, start, end, tree_hash) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT(upload_id, start) DO UPDATE SET end = excluded.end, "
                  "tree_hash = excluded.tree_hash", (upload_id, start, end, got.tree_hash))
    return empty(204, {"x-amz-sha256-tree-hash": got.tree_hash})


def complete_multipart(sim: Sim, req: Request, account: str, vault: str,
                       upload_id: str) -> Response:
    with _COMPLETE_LOCK:
        return _complete_multipart(sim, req, vault, upload_id)


def _replayed(sim: Sim, vault_row: Row, upload_id: str, size: int,
              tree_hash: str) -> str | None:
    """The archive id of this upload's recent completion with the same size and tree hash."""
    row = sim.store.one("SELECT * FROM completed_uploads WHERE upload_id = ? AND vault_id = ?",
                        (upload_id, vault_row["id"]))
    if row is None or sim.clock.now() - row["completed"] > COMPLETE_REPLAY_WINDOW:
        return None
    if row["size"] != size or row["tree_hash"] != tree_hash.lower():
        return None
    return row["archive_id"]


def _complete_multipart(sim: Sim, req: Request, vault: str, upload_id: str) -> Response:
    vault_row = sim.vault(vault)
    pending = sim.store.one("SELECT * FROM uploads WHERE upload_id = ? AND vault_id = ?",
                            (upload_id, vault_row["id"]))
    raw_size = req.header("x-amz-archive-size")
    tree_header = req.header("x-amz-sha256-tree-hash")
    if pending is None and not (raw_size and tree_header and raw_size.isdigit()):
        raise not_found(f"Multipart upload not found for upload ID: {upload_id}")
    if not raw_size:
        raise missing("Required header x-amz-archive-size is missing")
    if not tree_header:
        raise missing("Required header x-amz-sha256-tree-hash is missing")
    try:
        size = int(raw_size)
    except ValueError:
        raise invalid(f"Invalid archive size: {raw_size}") from None
    if pending is None:
        archive_id = _replayed(sim, vault_row, upload_id, size, tree_header)
        if archive_id is None:
            raise not_found(f"Multipart upload not found for upload ID: {upload_id}")
        log.info("upload %s… completed again: same archive %s…", upload_id[:12], archive_id[:12])
        return empty(201, _archive_headers(sim, vault, archive_id, tree_header.lower()))
    upload = pending
    parts = sim.store.all("SELECT * FROM parts WHERE upload_id = ? ORDER BY start", (upload_id,))
    if not parts:
        raise invalid("No parts were uploaded for this multipart upload")
    part_size = upload["part_size"]
    expected = 0
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        length = part["end"] - part["start"] + 1
        if part["start"] != expected or (not last and length != part_size):
            raise invalid(f"Parts are missing or have the wrong size near byte {expected}")
        expected = part["end"] + 1
    if expected != size:
        raise invalid(f"The archive size {size} does not match the uploaded parts ({expected} "
                      "bytes)")
    computed = fold_hex(p["tree_hash"] for p in parts)
    if tree_header.lower() != computed:
        raise invalid(f"Checksum mismatch: expected {tree_header}, computed {computed}")
    path = _upload_file(sim, upload_id)
    os.truncate(path, size)
    os.truncate(leaves_path_for(path), 32 * -(-size // MIB))
    archive_id = _publish(sim, vault_row, path, leaves_path_for(path), upload["description"],
                          size, computed)
    now = sim.clock.now()
    with sim.store.transaction() as db:
        db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
        db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
        db.execute("DELETE FROM completed_uploads WHERE completed < ?",
                   (now - COMPLETE_REPLAY_WINDOW,))
        db.execute("INSERT OR REPLACE INTO completed_uploads (upload_id, vault_id, size, "
                   "tree_hash, archive_id, completed) VALUES (?, ?, ?, ?, ?, ?)",
                   (upload_id, vault_row["id"], size, computed, archive_id, now))
    return empty(201, _archive_headers(sim, vault, archive_id, computed))


def abort_multipart(sim: Sim, req: Request, account: str, vault: str, upload_id: str) -> Response:
    vault_row = sim.vault(vault)
    _upload(sim, vault_row, upload_id)
    with sim.store.transaction() as db:
        db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
        db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
    path = _upload_file(sim, upload_id)
    path.unlink(missing_ok=True)
    leaves_path_for(path).unlink(missing_ok=True)
    return empty(204)


def list_parts(sim: Sim, req: Request, account: str, vault: str, upload_id: str) -> Response:
    vault_row = sim.vault(vault)
    upload = _upload(sim, vault_row, upload_id)
    limit = parse_limit(req.query.get("limit"), LIST_DEFAULT, LIST_MAX)
    marker = req.query.get("marker")
    start = 0
    if marker:
        if not marker.isdigit():
            raise invalid(f"Invalid marker: {marker}")
        start = int(marker)
    rows = sim.store.all("SELECT * FROM parts WHERE upload_id = ? AND start >= ? ORDER BY start "
                         "LIMIT ?", (upload_id, start, limit + 1))
    out = _upload_json(sim, vault, upload)
    out["Parts"] = [{"RangeInBytes": f"{p['start']}-{p['end']}", "SHA256TreeHash": p["tree_hash"]}
                    for p in rows[:limit]]
    out["Marker"] = str(rows[limit]["start"]) if len(rows) > limit else None
    return json_response(200, out)


def list_multipart_uploads(sim: Sim, req: Request, account: str, vault: str) -> Response:
    vault_row = sim.vault(vault)
    limit = parse_limit(req.query.get("limit"), LIST_DEFAULT, LIST_MAX)
    marker = req.query.get("marker")
    first = 0
    if marker:
        row = sim.store.one("SELECT id FROM uploads WHERE upload_id = ? AND vault_id = ?",
                            (marker, vault_row["id"]))
        if row is None:
            raise invalid(f"Invalid marker: {marker}")
        first = row["id"]
    rows = sim.store.all("SELECT * FROM uploads WHERE vault_id = ? AND id >= ? ORDER BY id "
                         "LIMIT ?", (vault_row["id"], first, limit + 1))
    return json_response(200, {
        "UploadsList": [_upload_json(sim, vault, r) for r in rows[:limit]],
        "Marker": rows[limit]["upload_id"] if len(rows) > limit else None})
