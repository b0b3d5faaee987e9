"""Extended attribute values: what ``getfattr -d -m user.glacier`` shows (the contract).

Pure functions of an entry and the retrieval state; all values are UTF-8 text. Job
attributes are absent when there is no job.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from glacierfs.catalog.namespace import Entry, VaultInfo
from glacierfs.catalog.synology import NamesState

if TYPE_CHECKING:
    from glacierfs.catalog.namespace import Namespace
    from glacierfs.options import MountOptions
    from glacierfs.jobs.retrieval import Retrieval
    from glacierfs.jobs.selectjobs import SelectJobs

PREFIX = "user.glacier."
STATUS_XATTR = "user.glacier.status"   # on the mount root: JSON for ``glacierfs status``
RANGES_XATTR = "user.glacier.ranges"   # on files retrieved in ranges: JSON (ranges.summary)
MAX_STATUS_JOBS = 200                    # keeps the JSON well under the 64 KiB xattr limit


def file_attributes(entry: Entry, retrieval: Retrieval) -> dict[str, str]:
    values = {
        "user.glacier.vault": entry.vault,
        "user.glacier.archive_id": entry.archive_id or "",
        "user.glacier.size": str(entry.size),
        "user.glacier.tree_hash": entry.tree_hash or "",
        "user.glacier.creation_date": entry.creation_date or "",
        "user.glacier.description": entry.description or "",
    }
    state, held = retrieval.cache_state(entry)
    values["user.glacier.cache"] = state
    values["user.glacier.cache.bytes"] = str(held)
    ranges = retrieval.ranges.summary(entry, retrieval.layout(entry))
    if ranges is not None:  # ranged retrievals: counts and ranges, JSON for scripts
        values[RANGES_XATTR] = json.dumps(ranges, separators=(",", ":"))
    if retrieval.room.is_pinned(entry.archive_id or ""):
        values["user.glacier.cache.pinned"] = "held" if retrieval.room.is_held(
            entry.archive_id or "") else "wanted"
    rec = retrieval.record(entry.archive_id or "")
    if rec is not None:
        values["user.glacier.job.status"] = rec.public_status
        values["user.glacier.job.tier"] = rec.tier
        if rec.job_id:
            values["user.glacier.job.id"] = rec.job_id
        message = retrieval.shown_message(rec, state)
        if message:
            values["user.glacier.job.status_message"] = message
        if rec.creation_date:
            values["user.glacier.job.creation_date"] = rec.creation_date
        if rec.completion_date:
            values["user.glacier.job.completion_date"] = rec.completion_date
    return values


def vault_attributes(info: VaultInfo, names: NamesState | None = None) -> dict[str, str]:
    values = {"user.glacier.vault_arn": info.arn or ""}
    if names is not None:  # a Synology backup task's data vault: where its names come from
        values["user.glacier.names.format"] = "synology"
        values["user.glacier.names.status"] = names.status
        values["user.glacier.names.mapping_vault"] = names.mapping_vault
        if names.archive_id:
            values["user.glacier.names.mapping_archive_id"] = names.archive_id
        if names.message:
            values["user.glacier.names.message"] = names.message
        if names.paths is not None:
            values["user.glacier.names.paths"] = str(names.paths)
    if info.inventory_date:
        values["user.glacier.inventory.date"] = info.inventory_date
    if info.inventory_job_id:
        values["user.glacier.inventory.job.id"] = info.inventory_job_id
    values["user.glacier.inventory.job.status"] = _inventory_status(info)
    if info.inventory_message:
        values["user.glacier.inventory.message"] = info.inventory_message
    if info.number_of_archives is not None:
        values["user.glacier.number_of_archives"] = str(info.number_of_archives)
    return values


def _inventory_status(info: VaultInfo) -> str:
    if info.inventory_status in ("InProgress", "Succeeded", "Failed"):
        return info.inventory_status
    if info.inventory_status == "Ingesting":
        return "Succeeded"
    return "None"


def root_attributes(ns: Namespace, retrieval: Retrieval, options: MountOptions,
                    selects: SelectJobs | None = None) -> dict[str, str]:
    from glacierfs.fuse.status import status_document
    doc = status_document(ns, retrieval, options, max_jobs=MAX_STATUS_JOBS, selects=selects)
    return {STATUS_XATTR: json.dumps(doc, separators=(",", ":"))}
