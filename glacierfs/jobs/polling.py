"""Completion polling and job adoption: ListJobs once per vault per round at an interval
chosen by tier, bringing every job of ours there up to date; adopting usable jobs another
machine (or this one before a crash) started; noticing jobs that vanished or expired; checking
finished ranges against their tree hashes. Part of ``Retrieval`` (see lifecycle.py).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, UTC
from typing import Any

import trio

from glacierfs.aws import glacier
from glacierfs.diskfull import LOCAL_ERRORS
from glacierfs.catalog.namespace import Entry
from glacierfs.jobs import lifecycle
from glacierfs.jobs.jobstore import IN_PROGRESS, INITIATING, QUEUED, SUCCEEDED, JobRecord
from glacierfs.jobs.lifecycle import OUTPUT_LIFETIME, Lifecycle

log = logging.getLogger(__name__)

REMOTE_JOBS_FRESH = 60.0     # how long one ListJobs answer is trusted for job reuse
# Every this many polling rounds a vault's jobs are listed whole (the others list only completed
# jobs, far fewer pages when many jobs are in flight), so a job that vanished is still noticed.
FULL_LISTING_EVERY = 10


class Polling(Lifecycle):
    async def _poll_loop(self) -> None:
        while True:
            now = time.time()
            due: set[str] = {r.vault for r in self.records.values()
                             if r.state in (IN_PROGRESS, INITIATING) and (r.next_poll or 0) <= now}
            for vault in sorted(due):
                try:
                    await self.poll_vault(vault)
                except Exception as exc:  # one bad round must not end the mount
                    if isinstance(exc, (glacier.GlacierError, *LOCAL_ERRORS)):
                        log.info("polling %s failed: %s", vault, exc)
                    else:
                        log.exception("polling %s: internal error", vault)
                    for r in self.records.values():
                        if r.vault == vault and r.state in (IN_PROGRESS, INITIATING):
                            r.next_poll = now + min(self._interval(r.tier), lifecycle.START_RETRY)
            try:
                await self._verify_ranges()
            except Exception:  # noqa: BLE001 — logged; the next round checks again
                log.exception("verifying ranges: internal error")
            await trio.sleep(1)

    async def poll_vault(self, vault: str) -> None:
        """One ListJobs round for a vault: every job of ours there is brought up to date.

        Most rounds list only completed jobs (``completed=true``): a job of ours not among them
        is taken to be still running. Such a round costs one page per 50 recently completed jobs
        in the vault, not one per 50 jobs in flight (1,000 jobs waiting for hours: one call per
        round instead of 20). Every ``FULL_LISTING_EVERY``-th round, and whenever a record was
        left in Initiating by a restart (its job id is unknown), the vault is listed whole, so
        a job that vanished is still noticed.
        """
        round_no = self._poll_rounds.get(vault, 0)
        self._poll_rounds[vault] = round_no + 1
        if round_no % FULL_LISTING_EVERY == 0 or any(
                r.vault == vault and r.state == INITIATING for r in self.records.values()):
            jobs = {j["JobId"]: j for j in await self._vault_jobs(vault, fresh=True)}
        else:
            jobs = {j["JobId"]: j for j in await self.client.list_jobs(vault, completed=True)}
            for rec in self.records.values():
                if rec.vault == vault and rec.state == IN_PROGRESS and rec.job_id \
                        and rec.job_id not in jobs:
                    jobs[rec.job_id] = {"JobId": rec.job_id, "StatusCode": "InProgress"}
        by_archive: dict[str, list[dict[str, Any]]] = {}
        for job in jobs.values():
            if job.get("Action") == "ArchiveRetrieval":
                by_archive.setdefault(str(job.get("ArchiveId")), []).append(job)
        now = time.time()
        for rec in [r for r in self.records.values() if r.vault == vault]:
            if rec.state == INITIATING:
                if rec.key not in self._starting:  # left by a crash or a lost answer
                    self._resolve_initiating(rec, [
                        j for j in by_archive.get(rec.archive_id, [])
                        if self.ranges.same_range(j, rec)])
                continue
            if rec.state != IN_PROGRESS or not rec.job_id:
                continue
            job = jobs.get(rec.job_id)
            if job is None:
                await self._job_missing(rec)
                continue
            self._apply_status(rec, job, now)

    def _apply_status(self, rec: JobRecord, job: dict[str, Any], now: float) -> None:
        """What Glacier says of an InProgress job of ours (a ListJobs entry, or DescribeJob
        after a completion notice): download it, fail it, or look again later."""
        assert rec.job_id
        status = job.get("StatusCode")
        if status == "Succeeded":
            rec.state = SUCCEEDED
            rec.completion_date = job.get("CompletionDate")
            rec.status_message = job.get("StatusMessage")
            if rec.ranged:  # the range's own tree hash: its chunks must fold to it
                rec.tree_hash = job.get("SHA256TreeHash") or rec.tree_hash
            self._save(rec)
            log.info("job %s for archive %s succeeded", rec.job_id[:16], rec.archive_id[:16])
            entry = self.entries.file_by_archive(rec.archive_id)
            if entry is not None:
                self._schedule_download(rec, self.layout(entry))
            self._signal(rec.archive_id)
            self._queue_wake.set()
        elif status == "Failed":
            rec.completion_date = job.get("CompletionDate")
            self._fail(rec, f"Glacier: {job.get('StatusMessage') or 'job failed'}")
            self._queue_wake.set()
        else:
            rec.next_poll = now + self._interval(rec.tier)
            self._save(rec)

    # --- completion notices (jobs/notices.py) ---------------------------------------------
    def notice_state(self, job_id: str) -> tuple[str, bool] | None:
        """(vault, still awaited) for a job of ours, None for a job we do not know."""
        known = None
        for rec in self.records.values():
            if rec.job_id == job_id:
                if rec.state == IN_PROGRESS:
                    return rec.vault, True
                known = (rec.vault, False)
        return known

    async def job_completed(self, job: dict[str, Any]) -> None:
        """A completion confirmed by DescribeJob: acted on as a polling round would."""
        now = time.time()
        for rec in [r for r in self.records.values()
                    if r.job_id == job.get("JobId") and r.state == IN_PROGRESS]:
            self._apply_status(rec, job, now)

    async def _job_missing(self, rec: JobRecord) -> None:
        """Our job is not in ListJobs: if Glacier no longer knows it (its output expired while
        we were not looking), request a new one; the verified chunks are kept."""
        assert rec.job_id
        try:
            job: dict[str, Any] | None = await self.client.describe_job(rec.vault, rec.job_id)
        except glacier.NotFound:
            job = None
        except glacier.GlacierError as exc:
            log.info("DescribeJob %s failed: %s", rec.job_id[:16], exc)
            rec.next_poll = time.time() + self._interval(rec.tier)
            self._save(rec)
            return
        if job is not None:  # listed late; the next round sees it
            rec.next_poll = time.time() + self._interval(rec.tier)
            self._save(rec)
            return
        log.info("job %s for archive %s is gone (expired); requesting a new job",
                 rec.job_id[:16], rec.archive_id[:16])
        rec.state = QUEUED
        rec.job_id = None
        rec.requested_at = time.time()
        rec.next_poll = None
        rec.status_message = "the previous job expired before its output was downloaded; " \
                             "a new job was requested (verified chunks kept)"
        self._save(rec)
        self._queue_wake.set()
        self._signal(rec.archive_id)

    def _resolve_initiating(self, rec: JobRecord, candidates: list[dict[str, Any]]) -> None:
        """A record left in Initiating by a crash: adopt the job if Glacier has one."""
        since = datetime.fromtimestamp((rec.initiated_at or 0) - 600, UTC)
        for job in sorted(candidates, key=lambda j: j.get("CreationDate") or "", reverse=True):
            created = glacier.parse_date(job.get("CreationDate"))
            if created is not None and created >= since and job.get("StatusCode") != "Failed":
                rec.state = str(job["StatusCode"])
                rec.job_id = str(job["JobId"])
                if rec.ranged:
                    rec.tree_hash = job.get("SHA256TreeHash") or rec.tree_hash
                rec.creation_date = job.get("CreationDate")
                rec.completion_date = job.get("CompletionDate")
                rec.next_poll = time.time() + self._interval(rec.tier)
                rec.status_message = "adopted the job found in ListJobs (its start was not " \
                                     "confirmed before)"
                self._save(rec)
                self.jobs.record_spend(rec.archive_id, rec.size)
                self.room.hold(rec.archive_id)
                log.info("found job %s started before a restart", rec.job_id[:16])
                if rec.state == SUCCEEDED:
                    entry = self.entries.file_by_archive(rec.archive_id)
                    if entry is not None:
                        self._schedule_download(rec, self.layout(entry))
                return
        self._requeue(rec, "the job may not have started before a restart; starting it")
        rec.next_poll = 0
        self._queue_wake.set()

    async def _find_remote_job(self, entry: Entry,
                               failed_job: str | None = None) -> JobRecord | None:
        """Adopt a usable job for this archive listed by Glacier (InProgress, or Succeeded
        with output not yet expired), never ``failed_job``."""
        try:
            jobs = await self._vault_jobs(entry.vault)
        except glacier.GlacierError as exc:
            log.info("ListJobs for %s failed (%s); not looking for an existing job",
                     entry.vault, exc)
            return None
        best: dict[str, Any] | None = None
        for job in jobs:
            if job.get("Action") != "ArchiveRetrieval" or job.get("ArchiveId") != entry.archive_id \
                    or (failed_job and job.get("JobId") == failed_job):
                continue
            rng = job.get("RetrievalByteRange")
            if rng and rng != f"0-{max(entry.size - 1, 0)}":
                continue
            status = job.get("StatusCode")
            if status == "Failed":
                continue
            if status == "Succeeded":
                done = glacier.parse_date(job.get("CompletionDate"))
                if done is None or datetime.now(UTC) - done > \
                        timedelta(seconds=OUTPUT_LIFETIME - 3600):
                    continue
            if best is None or (job.get("CreationDate") or "") > (best.get("CreationDate") or ""):
                best = job
        if best is None:
            return None
        rec = JobRecord(archive_id=entry.archive_id or "", vault=entry.vault,
                        state=str(best["StatusCode"]), tier=str(best.get("Tier") or "Standard"),
                        size=entry.size, tree_hash=entry.tree_hash, requested_at=time.time(),
                        job_id=str(best["JobId"]), creation_date=best.get("CreationDate"),
                        completion_date=best.get("CompletionDate"),
                        status_message="reusing an existing job", initiated_at=None,
                        next_poll=time.time())
        self._save(rec)
        log.info("reusing job %s for archive %s", rec.job_id and rec.job_id[:16],
                 rec.archive_id[:16])
        if rec.state == SUCCEEDED:
            self._schedule_download(rec, self.layout(entry))
        return rec

    async def _vault_jobs(self, vault: str, fresh: bool = False) -> list[dict[str, Any]]:
        async with self._lock_for(self._vault_locks, vault):
            cached = self._remote_jobs.get(vault)
            if cached and not fresh and trio.current_time() - cached[0] < REMOTE_JOBS_FRESH:
                return cached[1]
            jobs = await self.client.list_jobs(vault)
            self._remote_jobs[vault] = (trio.current_time(), jobs)
            return jobs

    async def _remote_or_none(self, vault: str) -> list[dict[str, Any]]:
        try:
            return await self._vault_jobs(vault)
        except glacier.GlacierError:
            return []

    async def _verify_ranges(self) -> None:
        """Ranges whose chunks are all in: their fold must be the range's SHA256TreeHash."""
        for archive_id in {r.archive_id for r in self.records.values()
                           if r.ranged and r.state == SUCCEEDED
                           and not self.ranges.is_verified(r)}:
            entry = self.entries.file_by_archive(archive_id)
            if entry is None:
                continue
            layout = self.layout(entry)
            hashes = self.cache.chunk_tree_hashes(layout)
            for rec in self.ranges.unverified(archive_id):
                if self.ranges.verify(rec, layout, hashes) is False:
                    reason = (f"bytes {rec.byte_range} do not fold to the range's tree hash "
                              f"{rec.tree_hash}; the downloaded bytes were discarded")
                    self.downloader.cancel_archive(archive_id)
                    await trio.to_thread.run_sync(self.cache.discard_archive, archive_id)
                    await self.archive_failed(archive_id, reason)
                    break
