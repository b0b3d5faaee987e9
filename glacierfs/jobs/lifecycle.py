"""The state every part of the retrieval lifecycle shares, and the transitions they all make.

``Retrieval`` (retrieval.py) is one object assembled from three parts, each in its own module:
the start queue and its limits (startqueue.py), completion polling and job adoption
(polling.py), and requests, reads and download outcomes (retrieval.py). This base holds what they
share: the records (one per unit: a whole archive or a byte range), saving them before any paid
call, the per-archive change events readers wait on, and the moves back to Queued or to Failed.

Runs on the trio thread; knows no kernel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from glacierfs.aws import glacier
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.cache.download import Downloader
from glacierfs.cache.tasks import BACKGROUND, DownloadOutcome
from glacierfs.cache.layout import ArchiveLayout
from glacierfs.catalog.namespace import Entry
from glacierfs.jobs.jobstore import FAILED, QUEUED, JobRecord, JobStore
from glacierfs.jobs.ranges import RangeBook
from glacierfs.jobs.room import CacheRoom
from glacierfs.options import MountOptions

log = logging.getLogger(__name__)

# Seconds between completion checks by tier when ``poll`` is not set, and the earliest a job
# of that tier can be done (Glacier's documented ranges), so no call is wasted before then.
POLL_INTERVAL = {"Expedited": 30.0, "Standard": 900.0, "Bulk": 1800.0}
EARLIEST_DONE = {"Expedited": 60.0, "Standard": 3 * 3600.0, "Bulk": 5 * 3600.0}
OUTPUT_LIFETIME = 24 * 3600  # Glacier keeps job output at least this long after completion
START_RETRY = 60.0           # a job that could not be started (throttled, endpoint down)
LOCAL_RETRY = 10.0           # … or that waits only for room in the cache dir to record it
LAYOUT_MEMO = 4096           # chunk grids remembered (a few hundred bytes each)


class ArchiveLookup:
    """What the retrieval side needs from the namespace (an interface; Namespace fits it)."""

    def file_by_archive(self, archive_id: str) -> Entry | None: ...


class Lifecycle(DownloadOutcome):
    """Shared state (set up by ``Retrieval.__init__``) and shared transitions."""

    jobs: JobStore
    client: glacier.AsyncGlacier
    cache: ChunkCache
    options: MountOptions
    entries: ArchiveLookup
    room: CacheRoom
    records: dict[str, JobRecord]          # by JobRecord.key
    ranges: RangeBook
    downloader: Downloader
    unreachable_until: float
    extra_in_flight: Callable[[], int]     # other paid jobs counted against max_jobs (select)
    notices: Any                           # the CompletionListener (notices.py), or None
    _archive_locks: dict[str, trio.Lock]
    _layouts: dict[tuple[str, int], ArchiveLayout]
    _vault_locks: dict[str, trio.Lock]
    _remote_jobs: dict[str, tuple[float, list[dict[str, Any]]]]
    _poll_rounds: dict[str, int]
    _changed: dict[str, trio.Event]
    _queue_wake: trio.Event
    _starting: set[str]                    # units whose InitiateJob call is in flight now
    _nursery: trio.Nursery | None

    def layout(self, entry: Entry) -> ArchiveLayout:
        """The archive's chunk grid; remembered, since every read needs it."""
        key = (entry.archive_id or "", entry.size)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) >= LAYOUT_MEMO:
                self._layouts.clear()
            layout = self._layouts[key] = ArchiveLayout(key[0], key[1], self.options.chunk_size)
        return layout

    def _unit(self, layout: ArchiveLayout, index: int) -> JobRecord | None:
        """The record serving chunk ``index``: the whole-archive one, else the covering range."""
        return self.records.get(layout.archive_id) or self.ranges.covering(layout, index)

    def _schedule_download(self, rec: JobRecord, layout: ArchiveLayout) -> None:
        missing = self.ranges.missing_of(rec, layout)
        if missing and rec.job_id:
            self.downloader.enqueue(rec.vault, rec.job_id, layout, missing, BACKGROUND,
                                    output_start=rec.range_start)

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

    def _queue_wake_set(self) -> None:
        self._queue_wake.set()

    def _interval(self, tier: str) -> float:
        """``poll`` if given; else the default, stretched while completion notices flow."""
        if self.options.poll:
            return self.options.poll
        stretch = self.notices.poll_stretch() if self.notices is not None else 1.0
        return (self.options.poll_interval or POLL_INTERVAL.get(tier, 900.0)) * stretch

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
