"""Ranged retrievals: which byte ranges of an archive to retrieve, and what an archive's records
cover. The retrieval lifecycle (retrieval.py) runs on units, each one record: the whole archive,
or one ``RetrievalByteRange``; this module decides the units and answers questions about them.

The window grid. ``range_size`` (a power-of-two number of MiB, a multiple of ``chunk_size``)
cuts an archive into windows ``[k·W, (k+1)·W)``, the last one running to the end. Every window is
a node of the archive's tree hash, so Glacier sends the range's ``SHA256TreeHash`` and a checksum
for every chunk of it. Windows of different sizes (a remount with another ``range_size``, the
smaller windows Expedited or a budget call for, a ranged job adopted from ListJobs) are nested or
disjoint, never partly overlapping, because each is a power-of-two cell of the same grid: a new
unit is the window around the wanted chunk, halved towards it while it meets an existing record.
So no two jobs ever ask for the same bytes.

What covers a chunk: a whole-archive record (ours or adopted) covers every chunk; a ranged one
the chunks inside its range. Units are decided here, records are made and saved by retrieval.py
(before InitiateJob, as ever).

Verification: each chunk is checked against its ``x-amz-sha256-tree-hash`` by the downloader;
once a range's chunks are all in, their fold is compared with the range's ``SHA256TreeHash`` from
DescribeJob/ListJobs (``verify``); once the whole archive is in, the downloader folds the root and
compares it with the inventory's, as for a whole-archive job.

Runs on the trio thread; no I/O of its own except the cache's index queries.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import time
from datetime import UTC, datetime
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from glacierfs import treehash
from glacierfs.aws import glacier
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.cache.layout import ArchiveLayout
from glacierfs.jobs.jobstore import FAILED, IN_PROGRESS, INITIATING, QUEUED, SUCCEEDED, JobRecord
from glacierfs.treehash import MIB

if TYPE_CHECKING:
    from glacierfs.catalog.namespace import Entry
    from glacierfs.options import MountOptions

# Glacier: Expedited retrievals are for archives, or ranges, under 250 MB.
EXPEDITED_LIMIT = 250 * 1000 * 1000
# range_size when not given, by tier: the cost model in the README. A read of m bytes touches
# 1 + m/W windows of W bytes, each billed W·g + r (per-GB and per-request price), so its extra
# cost is W·g + m·r/W, least at W = sqrt(m·r/g). Standard and Bulk: r/g is 5 and 10 MB, so
# 32 MiB is the best power of two for reads of about 100–300 MB and within 5% of it up to 1 GB.
# Expedited: r/g is about 330 MB, so windows are as large as the tier allows (under 250 MB).
DEFAULT_RANGE_SIZE = {"Standard": 32 * MIB, "Bulk": 32 * MIB, "Expedited": 128 * MIB}
# Windows a sequential reader gets requested ahead of the one it is in: enough to keep a stream
# going while the next job runs, bounded so a reader that stops early pays for one window more.
READ_AHEAD_WINDOWS = 1
# The kernel's readahead sends a stream's reads a few at a time, not always in order: a read
# this close to where the run ended still continues it.
SEQUENTIAL_SLACK = 4 * MIB
MEMO = 4096                  # archives whose read run is remembered
MAX_LISTED_RANGES = 64       # ranges listed one by one in user.glacier.ranges
_BYTE_RANGE = re.compile(r"^(\d+)-(\d+)$")


class RangeBook:
    """The ranged side of an archive's records (``records`` is Retrieval's dict, shared)."""

    def __init__(self, records: dict[str, JobRecord], options: MountOptions,
                 cache: ChunkCache) -> None:
        self.records = records
        self.options = options
        self.cache = cache
        self._keys: dict[str, set[str]] = {}      # archive id -> keys of its records
        self._runs: dict[str, tuple[int, int]] = {}  # archive id -> (start, end) of its
        #                                              current contiguous run of reads
        self.waiting: dict[str, str] = {}         # archive id -> what its reader waits for
        self._verified: set[str] = set()          # range keys whose fold matched
        self._failed: dict[str, str] = {}         # archive id -> key of a failed range
        self._ahead_window: dict[str, int] = {}   # archive id -> window last read ahead from
        # archive id -> its ranged records' (starts, [(start, end, key)]), sorted: they never
        # overlap, so one bisection finds what covers or meets a byte range
        self._spans: dict[str, tuple[list[int], list[tuple[int, int, str]]]] = {}
        for rec in records.values():
            self.track(rec)

    # --- the index of records by archive --------------------------------------------------
    def track(self, rec: JobRecord) -> None:
        """Called with every saved record (new or changed)."""
        keys = self._keys.setdefault(rec.archive_id, set())
        if rec.key not in keys:
            keys.add(rec.key)
            self._spans.pop(rec.archive_id, None)
        if rec.ranged and rec.state == FAILED:
            self._failed[rec.archive_id] = rec.key
        elif self._failed.get(rec.archive_id) == rec.key:
            del self._failed[rec.archive_id]
            again = [r for r in self.ranged_of(rec.archive_id) if r.state == FAILED]
            if again:
                self._failed[rec.archive_id] = again[0].key

    def failed(self, archive_id: str) -> JobRecord | None:
        """A failed range of the archive (a failed range fails the file, as a failed job does)."""
        key = self._failed.get(archive_id)
        return self.records.get(key) if key else None

    @staticmethod
    def same_range(job: dict[str, Any], rec: JobRecord) -> bool:
        """Is a ListJobs entry a job for exactly this record's bytes?"""
        rng = job.get("RetrievalByteRange")
        if not rec.ranged:
            size = job.get("ArchiveSizeInBytes")
            return not rng or (size is not None and rng == f"0-{max(int(size) - 1, 0)}")
        return rng == rec.byte_range

    def adopt(self, entry: Entry, layout: ArchiveLayout, jobs: list[dict[str, Any]],
              lifetime: float) -> list[JobRecord]:
        """Records for usable ranged jobs of this archive in ListJobs that we do not know yet
        (started by another machine, or lost by a crash before their record could say so) and
        that meet none of our ranges: a ranged job from ListJobs covers what it covers."""
        known = {r.job_id for r in self.of_archive(layout.archive_id) if r.job_id}
        taken = [(r.range_start, r.range_end) for r in self.ranged_of(layout.archive_id)]
        found = []
        now = datetime.now(UTC)
        for job in sorted(jobs, key=lambda j: j.get("CreationDate") or "", reverse=True):
            if job.get("Action") != "ArchiveRetrieval" or job.get("ArchiveId") != entry.archive_id \
                    or job.get("JobId") in known or job.get("StatusCode") not in (IN_PROGRESS,
                                                                                  SUCCEEDED):
                continue
            rng = self.usable_remote(job, entry.size)
            if rng is None or any(s <= rng[1] and rng[0] <= e for s, e in taken):
                continue
            if job.get("StatusCode") == SUCCEEDED:
                done = glacier.parse_date(job.get("CompletionDate"))
                if done is None or (now - done).total_seconds() > lifetime:
                    continue
            taken.append(rng)
            found.append(JobRecord(
                archive_id=layout.archive_id, vault=entry.vault, state=str(job["StatusCode"]),
                tier=str(job.get("Tier") or "Standard"), size=rng[1] - rng[0] + 1,
                tree_hash=job.get("SHA256TreeHash"), requested_at=time.time(),
                job_id=str(job["JobId"]), creation_date=job.get("CreationDate"),
                completion_date=job.get("CompletionDate"),
                status_message="reusing an existing job", next_poll=time.time(),
                range_start=rng[0], range_end=rng[1]))
        return found

    def of_archive(self, archive_id: str) -> list[JobRecord]:
        """Every record of the archive, the whole-archive one first, then by range start."""
        recs = [self.records[k] for k in self._keys.get(archive_id, ()) if k in self.records]
        return sorted(recs, key=lambda r: (r.ranged, r.range_start))

    def ranged_of(self, archive_id: str) -> list[JobRecord]:
        return [r for r in self.of_archive(archive_id) if r.ranged]

    def _sorted_spans(self, archive_id: str) -> tuple[list[int], list[tuple[int, int, str]]]:
        spans = self._spans.get(archive_id)
        if spans is None:
            found = sorted((r.range_start, r.range_end, r.key) for r in self.ranged_of(archive_id))
            spans = self._spans[archive_id] = ([s for s, _, _ in found], found)
        return spans

    def _meets(self, archive_id: str, start: int, end: int) -> bool:
        """Does a ranged record share a byte with ``start..end``?"""
        starts, spans = self._sorted_spans(archive_id)
        i = bisect.bisect_right(starts, end) - 1
        return i >= 0 and spans[i][1] >= start

    def _ranged_at(self, archive_id: str, start: int, end: int) -> JobRecord | None:
        """The ranged record holding all of ``start..end``."""
        starts, spans = self._sorted_spans(archive_id)
        i = bisect.bisect_right(starts, start) - 1
        if i >= 0 and spans[i][1] >= end:
            return self.records.get(spans[i][2])
        return None

    # --- sizes -------------------------------------------------------------------------------
    def window(self, tier: str) -> int:
        """The unit size for this tier: ``range_size`` (or the tier's default), halved below
        Expedited's 250 MB and below the daily budget, never below one chunk."""
        chunk = self.options.chunk_size
        size = max(self.options.range_size or DEFAULT_RANGE_SIZE.get(tier, 32 * MIB), chunk)
        while tier == "Expedited" and size >= EXPEDITED_LIMIT and size > chunk:
            size //= 2
        budget = self.options.budget
        while budget is not None and size > budget and size > chunk:
            size //= 2
        return size

    def enabled(self) -> bool:
        return self.options.range_size != 0

    def has_ranges(self, archive_id: str) -> bool:
        return bool(self._sorted_spans(archive_id)[0])

    def reads_ranged(self, entry: Entry, tier: str) -> bool:
        """Does a read of this archive retrieve windows instead of the whole archive? Also
        with ``range_size=off`` when ranges of it exist (from an earlier mount): a whole job
        would pay for their bytes again."""
        if self.has_ranges(entry.archive_id or ""):
            return True
        return self.enabled() and entry.size > self.window(tier)

    def whole_as_ranges(self, entry: Entry, tier: str) -> bool:
        """Is a whole-archive request (restore) to be retrieved as ranges? When ranges of it
        exist already (a whole job would pay for their bytes again), when it is larger than the
        daily budget (paced, range by range across days), or too large for Expedited."""
        if self.has_ranges(entry.archive_id or ""):
            return True
        if not self.enabled() or entry.size <= self.options.chunk_size:
            return False
        budget = self.options.budget
        if budget is not None and entry.size > budget:
            return True
        return tier == "Expedited" and entry.size >= EXPEDITED_LIMIT

    # --- coverage ------------------------------------------------------------------------------
    @staticmethod
    def covers(rec: JobRecord, layout: ArchiveLayout, index: int) -> bool:
        if not rec.ranged:
            return True
        start, end = layout.chunk_range(index)
        return rec.range_start <= start and end <= rec.range_end

    def covering(self, layout: ArchiveLayout, index: int) -> JobRecord | None:
        """The record whose job serves chunk ``index``: a live one before a failed one."""
        whole = self.records.get(layout.archive_id)
        if whole is not None and whole.state != FAILED:
            return whole
        ranged = self._ranged_at(layout.archive_id, *layout.chunk_range(index))
        if ranged is not None and (ranged.state != FAILED or whole is None):
            return ranged
        return whole or ranged

    def unit_for(self, layout: ArchiveLayout, index: int, tier: str) -> tuple[int, int] | None:
        """The byte range (inclusive) to request for chunk ``index``: its window, halved towards
        it while it meets a range already recorded. None if not even the chunk alone is free
        (a foreign job covering part of a chunk: then the chunk cannot be asked for alone)."""
        size = self.window(tier)
        chunk_start, _ = layout.chunk_range(index)
        while True:
            start = chunk_start // size * size
            end = min(start + size, layout.size) - 1
            if not self._meets(layout.archive_id, start, end):
                return start, end
            if size <= self.options.chunk_size:
                return None
            size //= 2

    def plan(self, layout: ArchiveLayout, chunks: Iterable[int], tier: str) -> list[tuple[int, int]]:
        """New units for the chunks no record covers, in order. A new unit never meets another
        one (cells of one grid are nested or disjoint, and the cells a unit was halved from met
        a record, as they do for every later chunk of them), so the chunks it holds are skipped."""
        units: list[tuple[int, int]] = []
        done_until = -1   # chunks up to this byte are covered (by a record or a new unit)
        for index in sorted(set(chunks)):
            start, end = layout.chunk_range(index)
            if start <= done_until:
                continue
            rec = self.covering(layout, index)
            if rec is not None:
                done_until = rec.range_end if rec.ranged else layout.size
                continue
            unit = self.unit_for(layout, index, tier)
            if unit is not None:
                units.append(unit)
                done_until = unit[1]
        return units

    def usable_remote(self, job: dict[str, Any], size: int) -> tuple[int, int] | None:
        """The range of a ranged job found in ListJobs, if we can download it chunk by verified
        chunk: tree-hash aligned (else Glacier sends no checksums) and on the chunk grid."""
        match = _BYTE_RANGE.match(str(job.get("RetrievalByteRange") or ""))
        if not match:
            return None
        start, end = int(match.group(1)), int(match.group(2))
        if start == 0 and end >= size - 1:
            return None  # the whole archive: a whole-archive job
        if not treehash.is_tree_hash_aligned(start, end, size) or start % self.options.chunk_size:
            return None
        if end - start + 1 < self.options.chunk_size and end != size - 1:
            return None  # holds no whole chunk
        return start, end

    # --- sequential readers ------------------------------------------------------------------
    def ahead(self, layout: ArchiveLayout, offset: int, end: int, tier: str) -> list[int]:
        """After a read of ``offset..end`` (exclusive): for a streaming reader (one that has read
        at least a whole window contiguously), the first chunk of each of the next
        READ_AHEAD_WINDOWS windows that no record covers yet. A reader of one member of a zip
        or tar (a run shorter than a window) gets nothing it did not ask for."""
        archive_id = layout.archive_id
        run_start, last_end = self._runs.get(archive_id, (offset, offset))
        if abs(offset - last_end) > SEQUENTIAL_SLACK:
            run_start, last_end = offset, offset  # not near where the run ended: a new run
        if len(self._runs) >= MEMO:
            self._runs.clear()
            self._ahead_window.clear()
        run_start, end = min(run_start, offset), max(last_end, end)
        self._runs[archive_id] = (run_start, end)
        size = self.window(tier)
        if end - run_start < size or end >= layout.size:
            return []
        if self._ahead_window.get(archive_id) == (end - 1) // size:
            return []  # asked from this window already
        self._ahead_window[archive_id] = (end - 1) // size
        wanted = []
        for k in range(1, READ_AHEAD_WINDOWS + 1):
            start = (end - 1) // size * size + k * size
            if start >= layout.size:
                break
            index = start // layout.chunk_size
            if self.covering(layout, index) is None:
                wanted.append(index)
        return wanted

    # --- verification ------------------------------------------------------------------------
    def unverified(self, archive_id: str) -> list[JobRecord]:
        """Succeeded ranges of the archive not verified yet."""
        return [r for r in self.ranged_of(archive_id)
                if r.state == SUCCEEDED and r.key not in self._verified]

    def verify(self, rec: JobRecord, layout: ArchiveLayout,
               hashes: dict[int, bytes] | None = None) -> bool | None:
        """For a succeeded ranged job whose chunks are all in: does their fold equal the range's
        SHA256TreeHash from Glacier? None while chunks are missing (or no hash is known).
        ``hashes``: the archive's stored chunk hashes, when the caller has them already."""
        if not rec.ranged or rec.state != SUCCEEDED or not rec.tree_hash:
            return None
        if rec.key in self._verified:
            return True
        if hashes is None:
            hashes = self.cache.chunk_tree_hashes(layout)
        indexes = self._indexes(rec, layout)
        if any(i not in hashes for i in indexes):
            return None
        ok = treehash.fold([hashes[i] for i in indexes]).hex() == rec.tree_hash.lower()
        if ok:
            self._verified.add(rec.key)
        return ok

    def is_verified(self, rec: JobRecord) -> bool:
        return rec.key in self._verified

    def forget_verified(self, rec: JobRecord) -> None:
        self._verified.discard(rec.key)

    @staticmethod
    def _indexes(rec: JobRecord, layout: ArchiveLayout) -> range:
        if not rec.ranged:
            return range(layout.chunk_count)
        return layout.chunks_for(rec.range_start, rec.range_end - rec.range_start + 1)

    def missing_of(self, rec: JobRecord, layout: ArchiveLayout) -> list[int]:
        present = self.cache.chunk_tree_hashes(layout)
        return [i for i in self._indexes(rec, layout) if i not in present]

    # --- what users see ------------------------------------------------------------------------
    def summary(self, entry: Entry, layout: ArchiveLayout) -> dict[str, Any] | None:
        """``user.glacier.ranges``: the archive's ranged jobs, counted and (the first few)
        listed; None when it has none."""
        ranged = self.ranged_of(entry.archive_id or "")
        if not ranged:
            return None
        present = self.cache.chunk_tree_hashes(layout)
        counts = {"queued": 0, "in_progress": 0, "succeeded": 0, "cached": 0, "failed": 0}
        listed = []
        covered = set()
        for rec in ranged:
            indexes = self._indexes(rec, layout)
            covered.update(indexes)
            cached = all(i in present for i in indexes)
            state = ("cached" if cached else "succeeded") if rec.state == SUCCEEDED else {
                QUEUED: "queued", INITIATING: "queued", IN_PROGRESS: "in_progress",
                FAILED: "failed"}.get(rec.state, "queued")
            if cached and rec.state != SUCCEEDED:
                state = "cached"
            counts[state] += 1
            if len(listed) < MAX_LISTED_RANGES:
                listed.append({"range": f"{rec.range_start}-{rec.range_end}", "state": state,
                               "status": rec.public_status, "tier": rec.tier,
                               "job_id": rec.job_id, "message": rec.status_message})
        tier = self.options.tier
        size = self.window(tier)
        return {
            "range_size": size,
            "windows": -(-entry.size // size),
            "requested": len(ranged),
            **counts,
            "bytes_requested": sum(r.size for r in ranged),
            # held by the daily budget (the first queued range, the others in order behind
            # it): the archive is retrieved range by range across days
            "waiting_for_budget": counts["queued"] if any(
                r.state == QUEUED and "daily budget" in (r.status_message or "")
                for r in ranged) else 0,
            "whole_requested": len(covered) == layout.chunk_count,
            "waiting_for": self.waiting.get(entry.archive_id or ""),
            "ranges": listed,
        }

    def representative(self, archive_id: str, summary: dict[str, Any] | None) -> JobRecord | None:
        """For ``user.glacier.job.*`` of an archive with ranged jobs only: the range that says
        most (a failed one, else one running, queued, then the latest done), its message
        prefixed with the counts."""
        ranged = self.ranged_of(archive_id)
        if not ranged:
            return None
        order = {FAILED: 0, INITIATING: 1, IN_PROGRESS: 1, QUEUED: 2, SUCCEEDED: 3}
        rep = min(ranged, key=lambda r: (order.get(r.state, 9),
                                         -r.requested_at if r.state == SUCCEEDED else 0,
                                         r.range_start))
        line = human_line(summary) if summary else f"{len(ranged)} ranges"
        message = f"{line}; range {rep.range_start}-{rep.range_end}: " \
                  f"{rep.status_message or rep.public_status}"
        return dataclasses.replace(rep, status_message=message)


def human_line(summary: dict[str, Any]) -> str:
    """``3 of 8 ranges requested: 1 in progress, 2 cached`` (status and xattrs)."""
    parts = [f"{summary[k]} {k.replace('_', ' ')}" for k in
             ("queued", "in_progress", "succeeded", "cached", "failed") if summary.get(k)]
    line = f"{summary['requested']} of {summary['windows']} ranges requested"
    if parts:
        line += ": " + ", ".join(parts).replace("succeeded", "downloading")
    if summary.get("waiting_for_budget"):
        line += (f"; {summary['waiting_for_budget']} wait for the daily budget (retrieved "
                 "range by range across days)")
    if summary.get("waiting_for"):
        line += f"; the reader waits for {summary['waiting_for']}"
    return line
