"""The status document the daemon publishes (root xattr ``user.glacier.status``) and
``glacierfs status`` renders: vaults, jobs, downloads, cache, limits. Plain data, gathered from
the daemon's parts (the only I/O is theirs: the cache's size and its disk's free space)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from glacierfs.aws import glacier
from glacierfs.catalog import synology
from glacierfs.jobs import spenders
from glacierfs.jobs.jobstore import FAILED, IN_PROGRESS, INITIATING, QUEUED, SUCCEEDED, JobRecord
from glacierfs.options import is_loopback_url

if TYPE_CHECKING:
    from glacierfs.catalog.namespace import Namespace
    from glacierfs.options import MountOptions
    from glacierfs.jobs.retrieval import Retrieval
    from glacierfs.jobs.selectjobs import SelectJobs

# Typical completion time by tier (the middle of Glacier's documented range), for estimates.
TYPICAL_DURATION = {"Expedited": 3 * 60, "Standard": 4 * 3600, "Bulk": 8 * 3600}
_ORDER = {INITIATING: 0, IN_PROGRESS: 1, QUEUED: 2, SUCCEEDED: 3, FAILED: 4}


def observed_durations(records: Iterable[JobRecord]) -> dict[str, float]:
    """Median seconds from start to completion of this account's finished jobs, by tier: a
    better estimate than Glacier's documented range once a few jobs have finished (and the
    only right one against an emulator)."""
    by_tier: dict[str, list[float]] = {}
    for rec in records:
        start, end = glacier.parse_date(rec.creation_date), glacier.parse_date(rec.completion_date)
        if rec.state == SUCCEEDED and start and end and end >= start:
            by_tier.setdefault(rec.tier, []).append((end - start).total_seconds())
    return {tier: statistics.median(values) for tier, values in by_tier.items()}


def expected_duration(tier: str, observed: dict[str, float],
                      endpoint_url: str | None) -> float | None:
    """Seconds a job of ``tier`` is expected to take: this account's observed median, else
    Glacier's typical time, except against a loopback endpoint (an emulator, whose delays are
    its own: an AWS estimate of hours there would mislead), where it is unknown (None)."""
    if tier in observed:
        return observed[tier]
    if is_loopback_url(endpoint_url):
        return None
    return TYPICAL_DURATION.get(tier, 4 * 3600)


def status_document(ns: Namespace, retrieval: Retrieval, options: MountOptions,
                    max_jobs: int = 200, selects: SelectJobs | None = None) -> dict[str, Any]:
    now = time.time()
    vaults = [{
        "name": v.name,
        "archives": v.number_of_archives,
        "inventory_date": v.inventory_date,
        "inventory_status": v.inventory_status or "None",
        "inventory_message": v.inventory_message,
        **_names(ns, v.name),
    } for v in ns.vaults()]
    observed = observed_durations(retrieval.records.values())
    records = sorted(retrieval.records.values(),
                     key=lambda r: (_ORDER.get(r.state, 9), r.requested_at))
    jobs = []
    counts: dict[str, int] = {}
    ranged: dict[str, None] = {}   # archives with ranged jobs: one line each, in order
    for rec in records:
        if rec.ranged:
            ranged.setdefault(rec.archive_id)
            continue
        entry = ns.file_by_archive(rec.archive_id)
        state, cached = retrieval.cache_state(entry) if entry else ("absent", 0)
        if state == "cached" and rec.state == SUCCEEDED:
            counts["cached"] = counts.get("cached", 0) + 1
            continue
        counts[rec.public_status] = counts.get(rec.public_status, 0) + 1
        if len(jobs) >= max_jobs:
            continue
        started = rec.initiated_at or rec.requested_at
        expected = None
        if rec.state in (IN_PROGRESS, INITIATING):
            duration = expected_duration(rec.tier, observed, options.endpoint_url)
            expected = None if duration is None else started + duration
        jobs.append({
            "path": ns.path_of(entry) if entry else None,
            "archive_id": rec.archive_id,
            "vault": rec.vault,
            "status": rec.public_status,
            "tier": rec.tier,
            "job_id": rec.job_id,
            "age": round(now - rec.requested_at),
            "expected_completion": expected,
            "message": retrieval.shown_message(rec, state),
            "size": rec.size,
            "cached_bytes": cached,
            "downloading": retrieval.downloader.is_downloading(rec.archive_id),
            "requested_by": spenders.of_record(rec).as_dict(),
        })
    for archive_id in ranged:
        _ranged_job(ns, retrieval, archive_id, jobs, counts, now, max_jobs)
    cache = retrieval.cache
    return {
        "time": now,
        "vaults": vaults,
        "jobs": jobs,
        "job_counts": counts,
        "cache": {"used": cache.volume(), "limit": cache.size_limit,
                  "disk_free": cache.disk_free(),
                  "unsaved_job_changes": retrieval.jobs.unsaved,
                  # cache room: bytes held for restored files not yet read, and what is left
                  "pinned": retrieval.room.held_bytes, "capacity": retrieval.room.capacity,
                  "room": retrieval.room.free},
        "limits": {
            "max_jobs": options.max_jobs,
            "budget": options.budget,
            "budget_used": retrieval.jobs.spent_in_window(),
            "tier": options.tier,
            "retrieve": options.retrieve,
            "retrieve_users": [p.name for p in options.retrieve_users],
        },
        "select": {"s3_endpoint_url": options.s3_endpoint_url, "region": options.region,
                   "profile": options.profile,
                   "jobs": _select_jobs(ns, selects, max_jobs)},
        "downloads": dict(retrieval.downloader.stats),
        "api_calls": dict(retrieval.client.client.calls),
        "notifications": (retrieval.notices.status() if retrieval.notices is not None
                          else {"sns_topic": options.sns_topic, "queue_url": None}),
    }


def _names(ns: Namespace, vault: str) -> dict[str, Any]:
    """Where a Synology data vault's names come from, under ``names`` (other vaults: none)."""
    state = synology.vault_names(ns.db, vault)
    if state is None:
        return {}
    return {"names": {"format": "synology", "status": state.status, "message": state.message,
                      "mapping_vault": state.mapping_vault,
                      "mapping_archive_id": state.archive_id, "paths": state.paths}}


def _ranged_job(ns: Namespace, retrieval: Retrieval, archive_id: str, jobs: list[dict[str, Any]],
                counts: dict[str, int], now: float, max_jobs: int) -> None:
    """One entry for an archive retrieved in ranges, its ``ranges`` counted (each range counts
    once in ``job_counts``, a cached one as ``cached``)."""
    entry = ns.file_by_archive(archive_id)
    if entry is None:
        return
    summary = retrieval.ranges.summary(entry, retrieval.layout(entry))
    rep = retrieval.record(archive_id)
    if summary is None or rep is None:
        return
    for key, status in (("queued", QUEUED), ("in_progress", IN_PROGRESS),
                        ("succeeded", SUCCEEDED), ("cached", "cached"), ("failed", FAILED)):
        if summary[key]:
            counts[status] = counts.get(status, 0) + summary[key]
    state, cached = retrieval.cache_state(entry)
    if state == "cached" or len(jobs) >= max_jobs:
        return
    jobs.append({
        "path": ns.path_of(entry),
        "archive_id": archive_id,
        "vault": entry.vault,
        "status": rep.public_status,
        "tier": rep.tier,
        "job_id": rep.job_id,
        "age": round(now - rep.requested_at),
        "expected_completion": None,
        "message": rep.status_message,
        "size": entry.size,
        "cached_bytes": cached,
        "downloading": retrieval.downloader.is_downloading(archive_id),
        "ranges": {k: v for k, v in summary.items() if k != "ranges"},
        "requested_by": spenders.of_record(rep).as_dict(),
    })


def _select_jobs(ns: Namespace, selects: SelectJobs | None, limit: int) -> list[dict[str, Any]]:
    if selects is None:
        return []
    out = []
    for job in selects.status_entries()[-limit:] if limit else []:
        entry = ns.file_by_archive(job["archive_id"])
        out.append({**job, "path": ns.path_of(entry) if entry else None})
    return out
