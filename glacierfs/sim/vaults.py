"""Vault operations: CreateVault, DescribeVault, ListVaults, DeleteVault."""

from __future__ import annotations

import re

from glacierfs.sim.bodies import leaves_path_for
from glacierfs.sim.clock import iso
from glacierfs.sim.context import Sim
from glacierfs.sim.errors import invalid
from glacierfs.sim.inventory import daily_snapshot
from glacierfs.sim.jobs import parse_limit
from glacierfs.sim.messages import Request, Response, empty, json_response
from glacierfs.sim.store import Row

VAULT_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")
# Glacier lists vaults 10 at a time unless told otherwise; we accept up to 1000 (its old cap).
LIST_VAULTS_DEFAULT, LIST_VAULTS_MAX = 10, 1000


def inventory_date(sim: Sim, vault: Row) -> float | None:
    """LastInventoryDate. Daily mode: the latest daily snapshot. Live mode: the inventory is
    always current, so its date is the last change (upload or delete), None for a vault never
    written to; comparing it with a cached InventoryDate says whether a newer inventory exists."""
    now = sim.clock.now()
    if sim.config.inventory_mode == "daily":
        return daily_snapshot(sim.store, vault["id"], now)
    return sim.store.last_change(vault["id"], now + 1e-3)


def describe(sim: Sim, vault: Row) -> dict[str, object]:
    """NumberOfArchives and SizeInBytes are as of the last inventory, as in Glacier."""
    last = inventory_date(sim, vault)
    counts = {"n": 0, "size": 0}
    if last is not None and sim.store.last_change(vault["id"], sim.clock.now() + 1e-3) == \
            sim.store.last_change(vault["id"], last + 1e-3):
        counts = {"n": vault["live_count"], "size": vault["live_size"]}  # nothing changed since
    elif last is not None:
        counts = sim.store.one(
            "SELECT count(*) AS n, coalesce(sum(size), 0) AS size FROM archives WHERE "
            "vault_id = ? AND created <= ? AND (deleted IS NULL OR deleted > ?)",
            (vault["id"], last, last)) or counts
    return {
        "CreationDate": iso(vault["created"]),
        "LastInventoryDate": iso(last),
        "NumberOfArchives": counts["n"],
        "SizeInBytes": counts["size"],
        "VaultARN": sim.config.vault_arn(vault["name"]),
        "VaultName": vault["name"],
    }


def create_vault(sim: Sim, req: Request, account: str, vault: str) -> Response:
    if not VAULT_NAME.match(vault):
        raise invalid(f"Invalid vault name: {vault}")
    if sim.store.vault(vault) is None:
        try:
            sim.store.run("INSERT INTO vaults (name, created) VALUES (?, ?)",
                          (vault, sim.clock.now()))
        except Exception:  # a concurrent create of the same name: CreateVault is idempotent
            if sim.store.vault(vault) is None:
                raise
    return empty(201, {"Location": f"/{sim.config.account_id}/vaults/{vault}"})


def describe_vault(sim: Sim, req: Request, account: str, vault: str) -> Response:
    return json_response(200, describe(sim, sim.vault(vault)))


def list_vaults(sim: Sim, req: Request, account: str) -> Response:
    limit = parse_limit(req.query.get("limit"), LIST_VAULTS_DEFAULT, LIST_VAULTS_MAX)
    marker = req.query.get("marker")
    start = ""
    if marker:
        prefix = sim.config.vault_arn("")
        if not marker.startswith(prefix):
            raise invalid(f"Invalid marker: {marker}")
        start = marker[len(prefix):]
    rows = sim.store.all("SELECT * FROM vaults WHERE name >= ? ORDER BY name LIMIT ?",
                         (start, limit + 1))
    page = rows[:limit]
    next_marker = sim.config.vault_arn(rows[limit]["name"]) if len(rows) > limit else None
    return json_response(200, {"VaultList": [describe(sim, v) for v in page],
                               "Marker": next_marker})


def delete_vault(sim: Sim, req: Request, account: str, vault: str) -> Response:
    row = sim.vault(vault)
    live = sim.store.one("SELECT count(*) AS n FROM archives WHERE vault_id = ? AND deleted IS NULL",
                         (row["id"],))
    if live and live["n"]:
        raise invalid(f"Vault not empty or recently written to: {sim.config.vault_arn(vault)}")
    files = []
    for job in sim.store.all("SELECT output, body FROM jobs WHERE vault_id = ?", (row["id"],)):
        files += [sim.store.path(rel) for rel in (job["output"], job["body"]) if rel]
    for up in sim.store.all("SELECT upload_id FROM uploads WHERE vault_id = ?", (row["id"],)):
        files.append(sim.store.data_dir / "uploads" / up["upload_id"])
    with sim.store.transaction() as db:
        db.execute("DELETE FROM parts WHERE upload_id IN "
                   "(SELECT upload_id FROM uploads WHERE vault_id = ?)", (row["id"],))
        for table in ("archives", "jobs", "uploads", "changes", "vault_notifications",
                      "completed_uploads", "vault_tags", "vault_policies"):
            db.execute(f"DELETE FROM {table} WHERE vault_id = ?", (row["id"],))
        db.execute("DELETE FROM vaults WHERE id = ?", (row["id"],))
    for path in files:
        for p in (path, leaves_path_for(path)):
            p.unlink(missing_ok=True)
    return empty(204)
