"""The start queue: a requested unit starts when nothing older waits and the limits allow
(``max_jobs``, ``budget``, cache room, a reachable endpoint), else it stays Queued with the
reason users see. The record is saved as Initiating before InitiateJob is called, so a crash
never leads to a second paid job. Part of ``Retrieval`` (see lifecycle.py).

Request order holds for ``max_jobs`` and the budget: nothing younger jumps those. A unit
waiting for cache room holds back no one: room is freed only by reading restored files, maybe
never, and a younger unit that fits (a reader's small archive, the next file of a
``glacierfs copy``, a held restore whose job output expired) must not wait behind it for ever.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, UTC

import trio

from glacierfs.aws import glacier
from glacierfs.diskfull import LOCAL_ERRORS
from glacierfs.jobs import spenders
from glacierfs.jobs import lifecycle
from glacierfs.jobs.jobstore import IN_PROGRESS, INITIATING, QUEUED, JobRecord
from glacierfs.jobs.lifecycle import Lifecycle
from glacierfs.jobs.room import ROOM_REASON

log = logging.getLogger(__name__)

OUR_DESCRIPTION = "glacierfs"   # the job description: marks jobs this project started


def _utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class StartQueue(Lifecycle):
    def queued(self) -> list[JobRecord]:
        return sorted((r for r in self.records.values() if r.state == QUEUED),
                      key=lambda r: r.requested_at)

    async def _start_or_queue(self, rec: JobRecord) -> None:
        """Save a new (or replaced) unit, then start it if nothing older waits and the limits
        allow, else leave it Queued with the reason."""
        self._save(rec)
        if not any(r.state == QUEUED and r.requested_at < rec.requested_at
                   and not _waits_for_room(r) for r in self.records.values()) \
                and self._limits_allow(rec) is None:
            await self._initiate(rec)
        else:
            rec.status_message = self._limits_allow(rec) or "waiting for earlier requests"
            self._save(rec)
            self._queue_wake.set()

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
                          retry_in=lifecycle.LOCAL_RETRY)
            return
        tier = rec.tier
        while True:
            try:
                self._starting.add(rec.key)
                try:
                    job_id = await self.client.initiate_archive_retrieval(
                        rec.vault, rec.archive_id, tier,
                        f"{OUR_DESCRIPTION} {rec.archive_id[:40]}"
                        + spenders.job_description_suffix(rec), rec.byte_range)
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
                self.unreachable_until = time.time() + lifecycle.START_RETRY
                rec.status_message = f"no answer to InitiateJob ({exc.code}); checking " \
                                     "whether the job started"
                rec.next_poll = time.time() + min(self._interval(tier), lifecycle.START_RETRY)
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
                if "larger than the daily budget" in reason or reason.startswith(ROOM_REASON):
                    continue  # never started by waiting (budget), or maybe never (room)
                break  # keep request order: nothing younger jumps max_jobs or the budget
            await self._initiate(rec)


def _waits_for_room(rec: JobRecord) -> bool:
    """Is this Queued unit waiting for cache room (and so holding back no one)?"""
    return (rec.status_message or "").startswith(ROOM_REASON)
