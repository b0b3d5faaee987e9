"""The retrieval lifecycle: one job per unit, reused, polled, downloaded, never paid twice.

A unit is the whole archive or one byte range of it (ranges.py decides which: reads of archives
larger than ``range_size`` retrieve only the windows they touch); each has its own record and
goes through the same machine:

    absent ──read/restore──▶ Queued ──limits allow──▶ Initiating ──▶ InProgress
                                                        (record saved       │ ListJobs says done
                                                         before the call)   ▼
      Failed ◀── job failed / bytes unverifiable ──────────────────────── Succeeded
                                                      output expired (404) ──▶ Queued (new job)
                                                      chunks downloaded + verified ──▶ cached

Before starting a job it looks for a usable one in memory, then in the state store (both are
``self.records``), then in the vault's ListJobs (a job started by another machine, or before a
crash, is adopted). Completions are found by polling ListJobs once per vault per round, at an
interval chosen by tier. ``max_jobs`` and ``budget`` hold requests as ``Queued``; they start in
request order as room appears.

Runs on the trio thread. The design note in the README describes the same machine.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timedelta, UTC
from collections.abc import Callable
from typing import Any, NamedTuple

import trio

from glacierfs.aws import glacier
from glacierfs.diskfull import LOCAL_ERRORS
from glacierfs.cache.chunkcache import ArchiveLayout, CacheFullError, ChunkCache, NoRoomError, NotCached
from glacierfs.cache.download import BACKGROUND, FOREGROUND, Downloader, DownloadOutcome
from glacierfs.jobs.jobstore import (FAILED, IN_PROGRESS, INITIATING, QUEUED, SUCCEEDED, JobRecord,
                                JobStore)
from glacierfs.catalog.namespace import Entry
from glacierfs.options import MountOptions
from glacierfs.jobs.ranges import RangeBook
from glacierfs.jobs.room import ROOM_REASON, CacheRoom

log = logging.getLogger(__name__)

# Seconds between completion checks by tier when ``poll`` is not set, and the earliest a job
# of that tier can be done (Glacier's documented ranges), so no call is wasted before then.
POLL_INTERVAL = {"Expedited": 30.0, "Standard": 900.0, "Bulk": 1800.0}
EARLIEST_DONE = {"Expedited": 60.0, "Standard": 3 * 3600.0, "Bulk": 5 * 3600.0}
REMOTE_JOBS_FRESH = 60.0     # how long one ListJobs answer is trusted for job reuse
OUTPUT_LIFETIME = 24 * 3600  # Glacier keeps job output at least this long after completion
CHUNK_WAIT = 30.0            # a reader waits this long for chunks of a finished job
START_RETRY = 60.0           # a job that could not be started (throttled, endpoint down)
LOCAL_RETRY = 10.0           # … or that waits only for room in the cache dir to record it
# How long a read or a restore request waits for Glacier's answers (ListJobs, InitiateJob) before
# answering: past it the request goes on in the background and the reader gets "not ready". With a
# dead or silent endpoint botocore's timeouts and retries take minutes; a `cat` must not.
REQUEST_WAIT = 5.0
# Every this many polling rounds a vault's jobs are listed whole (the others list only completed
# jobs, far fewer pages when many jobs are in flight), so a job that vanished is still noticed.
FULL_LISTING_EVERY = 10
OUR_DESCRIPTION = "glacierfs"
DOWNLOADED = "downloaded and verified"
EVICTED = ("downloaded and verified, since evicted from the cache; a read downloads it again "
           "(from the same job while Glacier keeps its output, else from a new job)")
# Chunks in flight are kept to 1/IN_FLIGHT_SHARE of the cache (see download_streams).
IN_FLIGHT_SHARE = 4
LAYOUT_MEMO = 4096           # chunk grids remembered (a few hundred bytes each)


class RetrievalError(Exception):
    """Base of what a read can fail with; the filesystem maps each to an errno."""


class NotReady(RetrievalError):
    """A retrieval is queued or running; try again later (EREMOTE; EAGAIN on O_NONBLOCK handles)."""


class NotRequested(RetrievalError):
    """Not cached, and this read may not start a retrieval (ENODATA)."""


class RetrievalFailed(RetrievalError):
    """The job failed or its bytes could not be verified (EIO)."""


class CacheFull(RetrievalError):
    """The cache disk is full (ENOSPC)."""


def _utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _PendingRequest(NamedTuple):
    """A ``request()`` still waiting for Glacier's first answer."""
    done: trio.Event      # set when it ends
    window_end: float     # until when its callers wait for it (trio clock)
    vault: str
    tier: str


class Retrieval(DownloadOutcome):
    def __init__(self, jobstore: JobStore, client: glacier.AsyncGlacier, cache: ChunkCache,
                 options: MountOptions, entries: ArchiveLookup,
                 room: CacheRoom | None = None) -> None:
        self.jobs = jobstore
        self.client = client
        self.cache = cache
        self.options = options
        self.entries = entries
        # Cache room is a limit like max_jobs and budget: restored, unread archives are kept.
        self.room = room or CacheRoom(jobstore.store, cache.size_limit)
        if cache.evictable is None:
            cache.evictable = self.room.evictable
        self.room.on_release = self._queue_wake_set
        self.records: dict[str, JobRecord] = jobstore.load_all()  # by JobRecord.key
        self.ranges = RangeBook(self.records, options, cache)
        self.downloader = Downloader(client, cache, self,
                                     workers=download_streams(options, cache.size_limit),
                                     expected_root=self._expected_root)
        self._archive_locks: dict[str, trio.Lock] = {}
        self._layouts: dict[tuple[str, int], ArchiveLayout] = {}
        self._vault_locks: dict[str, trio.Lock] = {}
        self._remote_jobs: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._poll_rounds: dict[str, int] = {}  # per vault: picks the rounds that list all jobs
        self._changed: dict[str, trio.Event] = {}
        self._queue_wake = trio.Event()
        self._starting: set[str] = set()  # archives whose InitiateJob call is in flight now
        self._requesting: dict[str, _PendingRequest] = {}  # still waiting for Glacier
        self._nursery: trio.Nursery | None = None     # for requests that outlive their caller
        self.unreachable_until = 0.0
        # Other paid jobs in flight that count against max_jobs (select jobs: selectjobs.py).
        self.extra_in_flight: Callable[[], int] = lambda: 0

    # --- queries (for xattrs and status) --------------------------------------------------
    def record(self, archive_id: str) -> JobRecord | None:
        """The archive's job record; while its request still waits for Glacier's first answer
        (a slow endpoint), a provisional Queued one, so getfattr shows that it was asked for."""
        rec = self.records.get(archive_id)
        if rec is None and self.ranges.ranged_of(archive_id):
            entry = self.entries.file_by_archive(archive_id)
            summary = self.ranges.summary(entry, self.layout(entry)) if entry else None
            return self.ranges.representative(archive_id, summary)
        pending = None if rec is not None else self._pending_for(archive_id)
        if pending is not None:
            return JobRecord(archive_id=archive_id, vault=pending.vault, state=QUEUED,
                             tier=pending.tier, size=0, tree_hash=None, requested_at=time.time(),
                             status_message="requested; waiting for Glacier to answer")
        return rec

    def _pending_for(self, archive_id: str) -> _PendingRequest | None:
        """A request for the archive, or for chunks of it (keyed ``ID#CHUNK``), still waiting."""
        pending = self._requesting.get(archive_id)
        if pending is None:
            prefix = archive_id + "#"
            pending = next((p for k, p in self._requesting.items() if k.startswith(prefix)),
                           None)
        return pending

    def layout(self, entry: Entry) -> ArchiveLayout:
        """The archive's chunk grid; remembered, since every read needs it."""
        key = (entry.archive_id or "", entry.size)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) >= LAYOUT_MEMO:
                self._layouts.clear()
            layout = self._layouts[key] = ArchiveLayout(key[0], key[1], self.options.chunk_size)
        return layout

    def cache_state(self, entry: Entry) -> tuple[str, int]:
        """(``absent``|``partial``|``cached``, verified bytes held). An empty archive has
        nothing to retrieve, so it counts as cached and never costs a job."""
        if entry.size == 0:
            return "cached", 0
        layout = self.layout(entry)
        return self.cache.state(layout), self.cache.cached_bytes(layout)

    def shown_message(self, rec: JobRecord, cache_state: str) -> str | None:
        """The status message users see: never "downloaded" for bytes no longer held."""
        if rec.status_message == DOWNLOADED and cache_state != "cached":
            return EVICTED
        return rec.status_message

    def queued(self) -> list[JobRecord]:
        return sorted((r for r in self.records.values() if r.state == QUEUED),
                      key=lambda r: r.requested_at)

    # --- requests -----------------------------------------------------------------------
    async def request(self, entry: Entry, tier: str | None = None, explicit: bool = False,
                      chunks: list[int] | None = None) -> JobRecord | None:
        """Make sure the archive (``chunks`` None), or the chunks a read needs, are (being)
        retrieved; returns the record serving them (the first), None if cached.

        ``explicit`` (setxattr restore, ``glacierfs restore``) may replace a failed job; a
        plain read reports the failure instead of paying again.
        """
        assert entry.archive_id
        archive_id = entry.archive_id
        layout = self.layout(entry)
        if self.cache_state(entry)[0] == "cached":
            return None
        tier = tier or self.options.tier
        async with self._lock_for(self._archive_locks, archive_id):
            rec = self.records.get(archive_id)
            if explicit:
                self.room.want(archive_id, entry.size)
            if rec is not None and (rec.state != FAILED or not explicit):
                if explicit and rec.state in (INITIATING, IN_PROGRESS, SUCCEEDED):
                    self.room.hold(archive_id)  # its job exists: keep what it brings
                if rec.state == SUCCEEDED and rec.job_id:
                    self._schedule_download(rec, layout)
                return rec
            # A job that failed is never adopted again (ListJobs answers are reused for a
            # minute and may still show it InProgress).
            adopted = await self._find_remote_job(entry, failed_job=rec.job_id if rec else None)
            if adopted is not None:
                self.room.hold(archive_id)
                return adopted
            if rec is None and (self.ranges.reads_ranged(entry, tier) if chunks is not None
                                else self.ranges.whole_as_ranges(entry, tier)):
                return await self._request_ranges(entry, layout, tier, explicit, chunks)
            rec = JobRecord(archive_id=archive_id, vault=entry.vault, state=QUEUED, tier=tier,
                            size=entry.size, tree_hash=entry.tree_hash,
                            requested_at=time.time())
            await self._start_or_queue(rec)
            return rec

    async def _request_ranges(self, entry: Entry, layout: ArchiveLayout, tier: str,
                              explicit: bool, chunks: list[int] | None) -> JobRecord | None:
        """One record per unit the chunks need that no record covers (all chunks: a whole
        restore). Failed ranges are replaced only when asked explicitly."""
        for adopted in self.ranges.adopt(entry, layout, await self._remote_or_none(entry.vault),
                                         OUTPUT_LIFETIME - 3600):
            self._save(adopted)
            log.info("reusing job %s for bytes %s of archive %s", (adopted.job_id or "")[:16],
                     adopted.byte_range, adopted.archive_id[:16])
            if adopted.state == SUCCEEDED:
                self._schedule_download(adopted, layout)
        wanted = list(range(layout.chunk_count)) if chunks is None else chunks
        for old in self.ranges.ranged_of(layout.archive_id):
            if old.state == FAILED and explicit:
                old.state, old.job_id, old.tier = QUEUED, None, tier
                old.requested_at = time.time()
                self.ranges.forget_verified(old)
                await self._start_or_queue(old)
            elif old.state == SUCCEEDED and old.job_id and chunks is None:
                self._schedule_download(old, layout)  # a restore: the whole of what is done
        queued = False
        for start, end in self.ranges.plan(layout, wanted, tier):
            rec = JobRecord(archive_id=layout.archive_id, vault=entry.vault, state=QUEUED,
                            tier=tier, size=end - start + 1, tree_hash=None,
                            requested_at=time.time(), range_start=start, range_end=end)
            if queued:  # an earlier range waits: so do the later ones, in order
                rec.status_message = "waiting for earlier requests"
                self._save(rec)
                continue
            await self._start_or_queue(rec)
            queued = rec.state == QUEUED
        present = self.cache.chunk_tree_hashes(layout)
        missing = [i for i in wanted if i not in present] or wanted
        return self.ranges.covering(layout, missing[0])

    async def _start_or_queue(self, rec: JobRecord) -> None:
        """Save a new (or replaced) unit, then start it if nothing older waits and the limits
        allow, else leave it Queued with the reason."""
        self._save(rec)
        if not any(r.state == QUEUED and r.requested_at < rec.requested_at
                   for r in self.records.values()) and self._limits_allow(rec) is None:
            await self._initiate(rec)
        else:
            rec.status_message = self._limits_allow(rec) or "waiting for earlier requests"
            self._save(rec)
            self._queue_wake.set()

    async def _remote_or_none(self, vault: str) -> list[dict[str, Any]]:
        try:
            return await self._vault_jobs(vault)
        except glacier.GlacierError:
            return []

    async def request_within(self, entry: Entry, wait: float, tier: str | None = None,
                             explicit: bool = False,
                             chunks: list[int] | None = None) -> JobRecord | None:
        """``request()``, holding the caller ``wait`` seconds at most, or REQUEST_WAIT from when
        the archive's request began if that is later: on a slow or dead endpoint the request
        carries on in the background (one per archive) and NotReady is raised. Without the
        background loops running (tests), it simply awaits."""
        if self._nursery is None:
            return await self.request(entry, tier=tier, explicit=explicit, chunks=chunks)
        archive_id = entry.archive_id or ""
        key = archive_id if not chunks else f"{archive_id}#{chunks[0]}"
        pending = self._requesting.get(key)
        result: list[JobRecord | None] = []
        if pending is None:
            done = trio.Event()
            # A request of the same vault still unanswered past its window means Glacier is
            # not answering: a thousand-file restore must not wait REQUEST_WAIT per file.
            window_end = min([trio.current_time() + REQUEST_WAIT]
                             + [p.window_end for p in self._requesting.values()
                                if p.vault == entry.vault])
            pending = self._requesting[key] = _PendingRequest(
                done, window_end, entry.vault, tier or self.options.tier)

            async def in_background() -> None:
                try:
                    result.append(await self.request(entry, tier=tier, explicit=explicit,
                                                     chunks=chunks))
                except Exception:  # noqa: BLE001 — logged; the next read asks again
                    log.exception("requesting archive %s: internal error", archive_id[:16])
                finally:
                    del self._requesting[key]
                    done.set()

            self._nursery.start_soon(in_background)
        with trio.move_on_at(max(pending.window_end, trio.current_time() + wait)):
            await pending.done.wait()
        if not pending.done.is_set():
            raise NotReady("starting the retrieval: Glacier has not answered yet")
        if result:
            return result[0]
        if chunks:
            return self._unit(self.layout(entry), chunks[0])
        return self.records.get(archive_id)  # another caller's request, now finished

    def _limits_allow(self, rec: JobRecord, cache_room: bool = True) -> str | None:
        """None when ``rec`` may start now, else the reason it waits (shown to users).
        ``cache_room``: its bytes come into the cache (not so for a select job's)."""
        opts = self.options
        if time.time() < self.unreachable_until:
            return "the Glacier endpoint is unreachable; will retry"
        room = self.room.refuses(rec.archive_id, rec.size) if cache_room else None
        if room is not None:
            return room
        if opts.max_jobs:
            running = sum(1 for r in self.records.values() if r.state in (IN_PROGRESS, INITIATING))
            running += self.extra_in_flight()
            if running >= opts.max_jobs:
                return f"waiting: {running} of max_jobs={opts.max_jobs} jobs in flight"
        if opts.budget is not None:
            if rec.size > opts.budget:
                return (f"archive is larger than the daily budget ({opts.budget} bytes); "
                        "raise budget= (or set range_size= to retrieve it in ranges)")
            # Starts in flight count too: their spend is recorded only once InitiateJob answers,
            # and concurrent requests must not all pass the check in that window.
            spent = self.jobs.spent_in_window() + sum(
                r.size for r in self.records.values() if r.state == INITIATING and not r.job_id)
            if spent + rec.size > opts.budget:
                return f"waiting: daily budget used ({spent} of {opts.budget} bytes)"
        return None

    async def _initiate(self, rec: JobRecord) -> None:
        self.room.hold(rec.archive_id)  # before any await: concurrent starts see the room taken
        rec.state = INITIATING
        rec.initiated_at = time.time()
        rec.status_message = None
        if not self._save(rec):  # saved before the paid call: a crash never leads to a second job
            self._requeue(rec, "waiting: the job cannot be recorded in the cache dir (disk "
                               "full?) and is not started before it can; will retry",
                          retry_in=LOCAL_RETRY)
            return
        tier = rec.tier
        while True:
            try:
                self._starting.add(rec.key)
                try:
                    job_id = await self.client.initiate_archive_retrieval(
                        rec.vault, rec.archive_id, tier,
                        f"{OUR_DESCRIPTION} {rec.archive_id[:40]}", rec.byte_range)
                finally:
                    self._starting.discard(rec.key)
                break
            except glacier.InsufficientCapacity:
                if tier == "Expedited" and self.options.expedited_fallback:
                    log.info("Expedited capacity unavailable for %s; using Standard",
                             rec.archive_id[:16])
                    tier = "Standard"
                    continue
                self._requeue(rec, "Expedited capacity unavailable; will retry")
                return
            except glacier.PolicyEnforced as exc:
                self._fail(rec, f"refused by the account's data retrieval policy: {exc.message}")
                return
            except glacier.AccessDenied as exc:
                self._fail(rec, f"access denied: {exc}")
                return
            except glacier.NotFound:
                self._fail(rec, "Glacier does not know this archive (deleted since the inventory?)")
                return
            except glacier.Unreachable as exc:
                # No answer: the job may have started. Stay Initiating; the poll loop looks for
                # it with ListJobs and starts it again only if Glacier has none.
                self.unreachable_until = time.time() + START_RETRY
                rec.status_message = f"no answer to InitiateJob ({exc.code}); checking " \
                                     "whether the job started"
                rec.next_poll = time.time() + min(self._interval(tier), START_RETRY)
                self._save(rec)
                self._signal(rec.archive_id)
                return
            except (glacier.ServiceUnavailable, glacier.Throttled) as exc:
                self._requeue(rec, f"could not start the job ({exc.code}); will retry")
                return
            except glacier.GlacierError as exc:
                self._fail(rec, f"InitiateJob failed: {exc}")
                return
        rec.state = IN_PROGRESS
        rec.job_id = job_id
        if tier != rec.tier:
            rec.status_message = f"{rec.tier} capacity unavailable; started as {tier}"
        rec.tier = tier
        rec.creation_date = _utc_now_iso()
        rec.completion_date = None   # an earlier job's, when this one replaces it
        rec.next_poll = time.time() + self._first_poll_delay(tier)
        self._save(rec)
        self.jobs.record_spend(rec.archive_id, rec.size)
        log.info("started %s retrieval job %s for archive %s (%d bytes%s)", tier, job_id[:16],
                 rec.archive_id[:16], rec.size,
                 f", range {rec.byte_range}" if rec.ranged else "")
        self._signal(rec.archive_id)

    def _requeue(self, rec: JobRecord, message: str, retry_in: float | None = None) -> None:
        self.room.unhold(rec.archive_id)
        rec.state = QUEUED
        rec.job_id = None
        rec.status_message = message
        rec.next_poll = time.time() + (START_RETRY if retry_in is None else retry_in)
        self._save(rec)
        self._signal(rec.archive_id)

    def _fail(self, rec: JobRecord, message: str) -> None:
        self.room.release(rec.archive_id)
        rec.state = FAILED
        rec.status_message = message
        self._save(rec)
        log.warning("retrieval of archive %s failed: %s", rec.archive_id[:16], message)
        self._signal(rec.archive_id)

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

    # --- reading --------------------------------------------------------------------------
    async def read(self, entry: Entry, offset: int, size: int, may_start: bool) -> bytes:
        """Verified bytes of a file, from the cache; starts or joins a retrieval if needed.

        Waits are bounded: ``wait`` seconds for a job to finish, CHUNK_WAIT for chunks of a
        finished job, so a FUSE worker is never held for hours.
        """
        layout = self.layout(entry)
        archive_id = layout.archive_id
        deadline = trio.current_time() + self.options.wait
        while True:
            failed = self.records.get(archive_id) or self.ranges.failed(archive_id)
            if failed is not None and failed.state == FAILED and \
                    self.cache.state(layout) != "cached":
                # A failed file is failed as a whole: no byte of a partial download is served.
                raise RetrievalFailed(failed.status_message or "retrieval failed")
            try:
                data = self._read_cached(layout, offset, size)
            except NotCached as exc:
                missing = exc.missing
            else:
                if may_start and entry.size > self.options.chunk_size and \
                        self._nursery is not None and self.ranges.enabled():
                    self._read_ahead(entry, layout, offset, offset + len(data))
                return data
            rec = self._unit(layout, missing[0])
            if may_start and (rec is None or any(self._unit(layout, i) is None for i in missing)):
                got = await self.request_within(entry, deadline - trio.current_time(),
                                                chunks=missing)
                if got is None and self.cache.state(layout) == "cached":
                    continue
                rec = got or rec
                if rec is None:
                    raise NotReady("retrieval requested")
            if rec is None:
                raise NotRequested("not cached; no retrieval was requested")
            if rec.ranged:
                self.ranges.waiting[archive_id] = \
                    f"bytes {offset}-{offset + size - 1} (range {rec.byte_range}: " \
                    f"{rec.status_message or rec.public_status})"
            if rec.state == FAILED:
                raise RetrievalFailed(rec.status_message or "retrieval failed")
            if rec.state == SUCCEEDED and rec.job_id:
                mine = [i for i in missing if self.ranges.covers(rec, layout, i)]
                self.downloader.enqueue(rec.vault, rec.job_id, layout, mine, FOREGROUND,
                                        output_start=rec.range_start)
                await self._wait_chunks(archive_id, mine,
                                        max(deadline, trio.current_time() + CHUNK_WAIT))
                try:
                    data = self._read_cached(layout, offset, size)
                    self.ranges.waiting.pop(archive_id, None)
                    return data
                except NotCached as exc:
                    missing = exc.missing
                if not any(i in mine for i in missing):
                    continue  # this unit's chunks are in; the rest belong to another one
                for index in missing:
                    error = self.downloader.take_error(archive_id, index)
                    if isinstance(error, NoRoomError):
                        raise NotReady(self._no_room(archive_id))
                    if isinstance(error, CacheFullError):
                        raise CacheFull(str(error))
                rec = self._unit(layout, missing[0])
                if rec is not None and rec.state == FAILED:
                    raise RetrievalFailed(rec.status_message or "retrieval failed")
                raise NotReady("downloading")
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise NotReady(f"retrieval {rec.public_status}")
            with trio.move_on_after(remaining):
                await self._changed_event(archive_id).wait()

    def _unit(self, layout: ArchiveLayout, index: int) -> JobRecord | None:
        """The record serving chunk ``index``: the whole-archive one, else the covering range."""
        return self.records.get(layout.archive_id) or self.ranges.covering(layout, index)

    def _read_ahead(self, entry: Entry, layout: ArchiveLayout, offset: int, end: int) -> None:
        """A sequential reader of a big archive: the next windows are requested ahead."""
        tier = self.options.tier
        if layout.archive_id in self.records or not self.ranges.reads_ranged(entry, tier):
            return
        chunks = self.ranges.ahead(layout, offset, end, tier)
        if chunks and self._nursery is not None:
            self._nursery.start_soon(self._request_ahead, entry, chunks)

    async def _request_ahead(self, entry: Entry, chunks: list[int]) -> None:
        with contextlib.suppress(NotReady):
            await self.request_within(entry, 0, chunks=chunks)

    def _read_cached(self, layout: ArchiveLayout, offset: int, size: int) -> bytes:
        """Bytes from the cache (NotCached if any are missing); a restored archive's pin ends
        once every chunk of it was read."""
        data = self.cache.read(layout, offset, size)
        if self.room.is_held(layout.archive_id):
            self.room.note_read(layout.archive_id, layout.chunks_for(offset, size),
                                layout.chunk_count)
        return data

    async def _wait_chunks(self, archive_id: str, indexes: list[int], deadline: float) -> None:
        with trio.move_on_at(deadline):
            for index in indexes:
                layout_has = self.downloader.waiter(archive_id, index)
                await layout_has.wait()

    # --- background: polling and the queue ---------------------------------------------
    async def run(self) -> None:
        """Background loops; returns only when cancelled."""
        self._recover()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.downloader.run)
            nursery.start_soon(self._poll_loop)
            nursery.start_soon(self._queue_loop)

    def _recover(self) -> None:
        """After a restart: resume downloads; jobs caught mid-initiation are looked up.
        An archive that was downloaded whole and evicted since stays evicted (a read brings it
        back), unless the cache room holds it for a restore not yet read."""
        incomplete: dict[str, Entry | None] = {}   # per archive: its entry if chunks are missing
        for rec in list(self.records.values()):
            if rec.state == INITIATING:
                rec.next_poll = time.time()
            if rec.state == SUCCEEDED and rec.job_id and (
                    rec.status_message != DOWNLOADED or self.room.is_pinned(rec.archive_id)):
                if rec.archive_id not in incomplete:
                    entry = self.entries.file_by_archive(rec.archive_id)
                    incomplete[rec.archive_id] = entry if entry is not None and \
                        self.cache.missing_chunks(self.layout(entry)) else None
                entry = incomplete[rec.archive_id]
                if entry is not None:
                    self._schedule_download(rec, self.layout(entry))

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
                            r.next_poll = now + min(self._interval(r.tier), START_RETRY)
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

    async def _queue_loop(self) -> None:
        while True:
            with trio.move_on_after(5):
                await self._queue_wake.wait()
            self._queue_wake = trio.Event()
            try:
                await self._start_queued()
            except Exception as exc:  # one bad round must not end the mount; records stay queued
                if isinstance(exc, LOCAL_ERRORS):
                    log.warning("queued retrievals not started: %s", exc)
                else:
                    log.exception("starting queued retrievals: internal error")

    async def _start_queued(self) -> None:
        """Start what the limits allow, oldest request first."""
        for rec in self.queued():
            if (rec.next_poll or 0) > time.time():
                continue
            reason = self._limits_allow(rec)
            if reason is not None:
                if rec.status_message != reason:
                    rec.status_message = reason
                    self._save(rec)
                if "larger than the daily budget" in reason:
                    continue
                break  # keep request order: nothing younger jumps the queue
            await self._initiate(rec)

    # --- download outcomes ------------------------------------------------------------------
    def _schedule_download(self, rec: JobRecord, layout: ArchiveLayout) -> None:
        missing = self.ranges.missing_of(rec, layout)
        if missing and rec.job_id:
            self.downloader.enqueue(rec.vault, rec.job_id, layout, missing, BACKGROUND,
                                    output_start=rec.range_start)

    async def output_expired(self, archive_id: str, job_id: str | None = None) -> None:
        recs = [r for r in self.ranges.of_archive(archive_id)
                if r.state == SUCCEEDED and (not job_id or r.job_id == job_id)]
        if not recs:
            return  # a stale chunk task of an earlier job: the current one is unaffected
        rec = recs[0]
        self.downloader.cancel_archive(archive_id)
        entry = self.entries.file_by_archive(archive_id)
        for other in self.ranges.of_archive(archive_id):  # the other ranges' downloads go on
            if other is not rec and other.state == SUCCEEDED and entry is not None:
                self._schedule_download(other, self.layout(entry))
        log.info("job output for archive %s%s expired; requesting a new job", archive_id[:16],
                 f" bytes {rec.byte_range}" if rec.ranged else "")
        rec.state = QUEUED
        rec.job_id = None
        rec.requested_at = time.time()
        rec.status_message = "the previous job's output expired; a new job was requested " \
                             "(verified chunks kept)"
        self._save(rec)
        self._queue_wake.set()
        self._signal(archive_id)

    async def archive_failed(self, archive_id: str, reason: str) -> None:
        """A failed file is failed as a whole (its chunks are gone): every unit of it."""
        self.downloader.cancel_archive(archive_id)
        for rec in self.ranges.of_archive(archive_id):
            if rec.state != FAILED:
                self._fail(rec, reason)

    async def archive_complete(self, archive_id: str) -> None:
        for rec in self.ranges.of_archive(archive_id):
            rec.status_message = DOWNLOADED
            self._save(rec)
        log.info("archive %s is cached and verified", archive_id[:16])
        self._signal(archive_id)

    def _no_room(self, archive_id: str) -> str:
        """A job that exists (adopted, or started before the room filled) waits to download
        until restored files are read: say so where the reader looks."""
        message = (f"{ROOM_REASON}: the cache is full of restored files not yet read "
                   f"({self.room.held_bytes} bytes); read or copy them, or raise cache_size")
        rec = self.records.get(archive_id)
        if rec is not None and rec.status_message != message:
            rec.status_message = message
            self._save(rec)
        return message

    def _queue_wake_set(self) -> None:
        self._queue_wake.set()

    def _expected_root(self, archive_id: str) -> str | None:
        rec = self.records.get(archive_id)
        if rec is not None:
            return rec.tree_hash
        entry = self.entries.file_by_archive(archive_id)  # ranges only: the inventory's root
        return entry.tree_hash if entry else None

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

    # --- helpers ------------------------------------------------------------------------------
    def _interval(self, tier: str) -> float:
        return self.options.poll_interval or POLL_INTERVAL.get(tier, 900.0)

    def _first_poll_delay(self, tier: str) -> float:
        return self.options.poll_interval or EARLIEST_DONE.get(tier, 3600.0)

    def _save(self, rec: JobRecord) -> bool:
        """Keep ``rec`` and write it through; False when the disk refused (kept unsaved and
        written with the next change that succeeds)."""
        self.records[rec.key] = rec
        self.ranges.track(rec)
        return self.jobs.save(rec)

    def _signal(self, archive_id: str) -> None:
        event = self._changed.pop(archive_id, None)
        if event is not None:
            event.set()

    def _changed_event(self, archive_id: str) -> trio.Event:
        event = self._changed.get(archive_id)
        if event is None:
            event = self._changed[archive_id] = trio.Event()
        return event

    @staticmethod
    def _lock_for(locks: dict[str, trio.Lock], key: str) -> trio.Lock:
        lock = locks.get(key)
        if lock is None:
            lock = locks[key] = trio.Lock()
        return lock


def download_streams(options: MountOptions, cache_limit: int) -> int:
    """``downloads``, but never more chunks in flight than a quarter of the cache holds:
    in a cache of a few chunks, parallel downloads evict each other's chunks before their
    readers get to them, and every reader starves."""
    return max(min(2, options.downloads),
               min(options.downloads, cache_limit // (IN_FLIGHT_SHARE * options.chunk_size)))


class ArchiveLookup:
    """What the retrieval side needs from the namespace (an interface; Namespace fits it)."""

    def file_by_archive(self, archive_id: str) -> Entry | None: ...
