"""The select job lifecycle in the daemon: one paid job per (archive, query, serialization,
output), recorded before it is paid for, reused across remounts and machines, polled like
retrievals, counted against ``max_jobs`` and ``budget`` (the archive's size is the job's bytes).

    request ─▶ Queued ──limits allow──▶ Initiating ──▶ InProgress ──ListJobs──▶ Succeeded
               (local)                  (saved before     │                       (results in S3)
                                         the call)        └──────────────────▶ Failed

Before starting, a request looks for the same job in its own table (``select_jobs`` in the
state database), then in the vault's ListJobs (Action Select, same ArchiveId, same
SelectParameters and OutputLocation: a job started by another machine or before a crash).
A Failed job is replaced when asked again; a Succeeded one is reused (its output stays in S3).

The daemon never reads S3: ``glacierfs select`` does, with the output path recorded here.
Runs on the trio thread; requests arrive through ``setxattr user.glacier.select`` (fs.py).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import astuple, dataclass, fields
from typing import TYPE_CHECKING, Any

import trio

from glacierfs.aws import glacier
from glacierfs.diskfull import LOCAL_ERRORS
from glacierfs.jobs import spenders
from glacierfs.jobs.jobstore import FAILED, IN_PROGRESS, INITIATING, QUEUED, SUCCEEDED
from glacierfs.jobs.selectspec import SELECT_JOBS_XATTR, SelectRequest, job_key
from glacierfs.store import Store

if TYPE_CHECKING:
    from glacierfs.catalog.namespace import Entry
    from glacierfs.options import MountOptions
    from glacierfs.jobs.retrieval import Retrieval

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS select_jobs (
    key TEXT PRIMARY KEY, archive_id TEXT NOT NULL, vault TEXT NOT NULL, state TEXT NOT NULL,
    tier TEXT NOT NULL, size INTEGER NOT NULL, request TEXT NOT NULL, requested_at REAL NOT NULL,
    job_id TEXT, output_path TEXT, status_message TEXT, creation_date TEXT,
    completion_date TEXT, initiated_at REAL, next_poll REAL,
    requested_uid INTEGER, requested_user TEXT, requested_command TEXT);
CREATE INDEX IF NOT EXISTS select_jobs_by_archive ON select_jobs(archive_id);
"""
# Who asked (jobs/spenders.py): added in place to a table from before they were kept.
ADDED_COLUMNS = (("requested_uid", "INTEGER"), ("requested_user", "TEXT"),
                 ("requested_command", "TEXT"))
# How long a setxattr waits for Glacier's answer before returning (the request goes on).
REQUEST_WAIT = 5.0
RETRY = 60.0          # a start refused for a transient reason is tried again after this
LOOP_INTERVAL = 1.0   # the background loop's tick: queued starts and due polls
DESCRIPTION = "glacierfs select"


@dataclass
class SelectRecord:
    key: str
    archive_id: str
    vault: str
    state: str
    tier: str
    size: int
    request: str           # the SelectRequest as JSON
    requested_at: float
    job_id: str | None = None
    output_path: str | None = None
    status_message: str | None = None
    creation_date: str | None = None
    completion_date: str | None = None
    initiated_at: float | None = None
    next_poll: float | None = None
    requested_uid: int | None = None       # who asked (None: adopted from ListJobs)
    requested_user: str | None = None
    requested_command: str | None = None

    @property
    def spec(self) -> SelectRequest:
        return SelectRequest.from_json(self.request)

    @property
    def public_status(self) -> str:
        return QUEUED if self.state == INITIATING else self.state

    def as_dict(self) -> dict[str, Any]:
        spec = self.spec
        return {"key": self.key, "job_id": self.job_id, "status": self.public_status,
                "tier": self.tier, "query": spec.query, "output": spec.output_url,
                "header": spec.header, "delimiter": spec.delimiter, "bucket": spec.bucket,
                "output_path": self.output_path, "message": self.status_message,
                "creation_date": self.creation_date, "completion_date": self.completion_date,
                "archive_id": self.archive_id, "vault": self.vault, "size": self.size,
                "age": round(time.time() - self.requested_at),
                "requested_by": spenders.of_record(self).as_dict()}


_COLUMNS = [f.name for f in fields(SelectRecord)]


class SelectJobs:
    def __init__(self, store: Store, client: glacier.AsyncGlacier, options: MountOptions,
                 retrieval: Retrieval) -> None:
        self.db = store.db
        self.store = store
        self.client = client
        self.options = options
        self.retrieval = retrieval
        self.db.executescript(SCHEMA)
        have = {row[1] for row in self.db.execute("PRAGMA table_info(select_jobs)")}
        for name, kind in ADDED_COLUMNS:
            if name not in have:
                self.db.execute(f"ALTER TABLE select_jobs ADD COLUMN {name} {kind}")
        rows = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM select_jobs").fetchall()
        self.records: dict[str, SelectRecord] = {r[0]: SelectRecord(*r) for r in rows}
        self._locks: dict[str, trio.Lock] = {}
        self._starting: set[str] = set()
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None

    # --- queries ----------------------------------------------------------------------------
    def in_flight(self) -> int:
        """Select jobs started and not finished: they count against max_jobs."""
        return sum(1 for r in self.records.values() if r.state in (IN_PROGRESS, INITIATING))

    def for_archive(self, archive_id: str) -> list[SelectRecord]:
        return sorted((r for r in self.records.values() if r.archive_id == archive_id),
                      key=lambda r: r.requested_at)

    def file_attributes(self, entry: Entry) -> dict[str, str]:
        recs = self.for_archive(entry.archive_id or "")
        if not recs:
            return {}
        return {SELECT_JOBS_XATTR: json.dumps([r.as_dict() for r in recs])}

    def status_entries(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in sorted(self.records.values(),
                                            key=lambda r: r.requested_at)]

    # --- requests ---------------------------------------------------------------------------
    async def request_within(self, entry: Entry, spec: SelectRequest) -> None:
        """``request()``, returning after REQUEST_WAIT at most (it goes on in the background)."""
        if self._nursery is None:
            await self.request(entry, spec)
            return
        done = trio.Event()

        async def in_background() -> None:
            try:
                await self.request(entry, spec)
            except Exception:  # a bug costs this request, never the mount
                log.exception("select request for %s failed", (entry.archive_id or "")[:16])
            finally:
                done.set()

        self._nursery.start_soon(in_background)
        with trio.move_on_after(REQUEST_WAIT):
            await done.wait()

    async def request(self, entry: Entry, spec: SelectRequest) -> SelectRecord:
        assert entry.archive_id
        key = spec.key(entry.vault, entry.archive_id)
        async with self._locks.setdefault(key, trio.Lock()):
            rec = self.records.get(key)
            if rec is not None and rec.state != FAILED:
                return rec
            adopted = await self._find_remote(entry, key, spec)
            if adopted is not None:
                return adopted
            rec = SelectRecord(key=key, archive_id=entry.archive_id, vault=entry.vault,
                               state=QUEUED, tier=spec.tier, size=entry.size,
                               request=spec.to_json(), requested_at=time.time(),
                               **spenders.current().record_fields())
            self._save(rec)
            reason = self._limits(rec)
            if reason is None:
                await self._initiate(rec)
            else:
                rec.status_message = reason
                self._save(rec)
                self._wake.set()
            return rec

    def _limits(self, rec: SelectRecord) -> str | None:
        # Retrieval's rule, which counts select jobs in flight through its hook.
        return self.retrieval._limits_allow(rec, cache_room=False)  # type: ignore[arg-type]

    async def _find_remote(self, entry: Entry, key: str,
                           spec: SelectRequest) -> SelectRecord | None:
        try:
            jobs = await self.client.list_jobs(entry.vault)
        except glacier.GlacierError as exc:
            log.info("ListJobs for %s failed (%s); starting a select job", entry.vault, exc)
            return None
        for job in jobs:
            if job.get("Action") != "Select" or job.get("ArchiveId") != entry.archive_id:
                continue
            if job.get("StatusCode") not in (IN_PROGRESS, SUCCEEDED):
                continue
            if job_key(entry.vault, entry.archive_id or "", job.get("SelectParameters"),
                       job.get("OutputLocation")) != key:
                continue
            rec = SelectRecord(key=key, archive_id=entry.archive_id or "", vault=entry.vault,
                               state=job["StatusCode"], tier=job.get("Tier") or spec.tier,
                               size=entry.size, request=spec.to_json(),
                               requested_at=time.time(), job_id=job["JobId"],
                               output_path=job.get("JobOutputPath"),
                               creation_date=job.get("CreationDate"),
                               completion_date=job.get("CompletionDate"),
                               status_message=job.get("StatusMessage"),
                               next_poll=time.time())
            self._save(rec)
            log.info("adopted select job %s for archive %s", rec.job_id[:16] if rec.job_id
                     else "?", rec.archive_id[:16])
            return rec
        return None

    async def _initiate(self, rec: SelectRecord) -> None:
        rec.state = INITIATING
        rec.initiated_at = time.time()
        rec.status_message = None
        if not self._save(rec):  # recorded before the paid call, or not made at all
            self._requeue(rec, "waiting: the job cannot be recorded in the cache dir (disk "
                               "full?); will retry")
            return
        spec = rec.spec
        tier = rec.tier
        while True:
            self._starting.add(rec.key)
            try:
                job_id, path = await self.client.initiate_select(
                    rec.vault, rec.archive_id, tier, spec.select_parameters(),
                    spec.output_location(), f"{DESCRIPTION} {rec.archive_id[:40]}")
                break
            except glacier.InsufficientCapacity:
                if tier == "Expedited" and self.options.expedited_fallback:
                    tier = "Standard"
                    continue
                self._requeue(rec, "Expedited capacity unavailable; will retry")
                return
            except glacier.Unreachable as exc:
                rec.status_message = f"no answer to InitiateJob ({exc.code}); checking " \
                                     "whether the job started"
                rec.next_poll = time.time() + RETRY
                self._save(rec)
                return
            except (glacier.ServiceUnavailable, glacier.Throttled) as exc:
                self._requeue(rec, f"could not start the job ({exc.code}); will retry")
                return
            except glacier.GlacierError as exc:
                self._fail(rec, f"Glacier refused the select job: {exc.message}")
                return
            finally:
                self._starting.discard(rec.key)
        rec.state = IN_PROGRESS
        rec.job_id, rec.output_path, rec.tier = job_id, path, tier
        rec.creation_date = glacier_now()
        rec.next_poll = time.time() + self._interval(tier)
        self._save(rec)
        self.retrieval.jobs.record_spend(rec.archive_id, rec.size)
        log.info("started %s select job %s for archive %s", tier, job_id[:16],
                 rec.archive_id[:16])

    def _requeue(self, rec: SelectRecord, message: str) -> None:
        rec.state, rec.job_id, rec.status_message = QUEUED, None, message
        rec.next_poll = time.time() + RETRY
        self._save(rec)

    def _fail(self, rec: SelectRecord, message: str) -> None:
        rec.state, rec.status_message = FAILED, message
        self._save(rec)
        log.warning("select job for archive %s failed: %s", rec.archive_id[:16], message)

    # --- background ---------------------------------------------------------------------
    async def run(self) -> None:
        for rec in self.records.values():
            if rec.state in (INITIATING, IN_PROGRESS):
                rec.next_poll = time.time()  # after a restart: look at once
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                try:
                    await self._round()
                except Exception as exc:  # one bad round must not end the mount
                    if isinstance(exc, (glacier.GlacierError, *LOCAL_ERRORS)):
                        log.info("select round failed: %s", exc)
                    else:
                        log.exception("select round: internal error")
                with trio.move_on_after(LOOP_INTERVAL):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _round(self) -> None:
        now = time.time()
        for rec in sorted((r for r in self.records.values() if r.state == QUEUED),
                          key=lambda r: r.requested_at):
            if (rec.next_poll or 0) > now:
                continue  # a transient refusal: retried after RETRY
            reason = self._limits(rec)
            if reason is not None:
                if rec.status_message != reason:
                    rec.status_message = reason
                    self._save(rec)
                break  # in request order
            async with self._locks.setdefault(rec.key, trio.Lock()):
                if rec.state == QUEUED:
                    await self._initiate(rec)
        due = sorted({r.vault for r in self.records.values()
                      if r.state in (IN_PROGRESS, INITIATING) and r.key not in self._starting
                      and (r.next_poll or 0) <= now})
        for vault in due:
            await self._poll(vault)

    async def _poll(self, vault: str) -> None:
        jobs = await self.client.list_jobs(vault)
        by_id = {j.get("JobId"): j for j in jobs}
        now = time.time()
        for rec in [r for r in self.records.values() if r.vault == vault]:
            if rec.key in self._starting or (rec.next_poll or 0) > now:
                continue
            if rec.state == INITIATING:  # a crash or a lost answer: did the job start?
                match = [j for j in jobs if j.get("Action") == "Select"
                         and j.get("ArchiveId") == rec.archive_id
                         and job_key(vault, rec.archive_id, j.get("SelectParameters"),
                                     j.get("OutputLocation")) == rec.key]
                if match:
                    job = match[0]
                    rec.state, rec.job_id = IN_PROGRESS, job["JobId"]
                    rec.output_path = job.get("JobOutputPath")
                    rec.creation_date = job.get("CreationDate")
                    self.retrieval.jobs.record_spend(rec.archive_id, rec.size)
                else:
                    self._requeue(rec, "the job had not started; starting it again")
                    rec.next_poll = now
                    self._save(rec)
                    self._wake.set()
                    continue
            if rec.state != IN_PROGRESS:
                continue
            job = by_id.get(rec.job_id)
            if job is None:
                self._fail(rec, "Glacier no longer lists this select job")
                continue
            self._apply_status(rec, job, now)

    def _apply_status(self, rec: SelectRecord, job: dict[str, Any], now: float) -> None:
        status = job.get("StatusCode")
        if status == SUCCEEDED:
            rec.state = SUCCEEDED
            rec.completion_date = job.get("CompletionDate")
            rec.status_message = job.get("StatusMessage")
            rec.output_path = job.get("JobOutputPath") or rec.output_path
            self._save(rec)
            log.info("select job %s succeeded", (rec.job_id or "")[:16])
            self._wake.set()
        elif status == FAILED:
            rec.completion_date = job.get("CompletionDate")
            self._fail(rec, job.get("StatusMessage") or "the select job failed")
            self._wake.set()
        else:
            rec.next_poll = now + self._interval(rec.tier)
            self._save(rec)

    # --- completion notices (jobs/notices.py) ---------------------------------------------
    def notice_state(self, job_id: str) -> tuple[str, bool] | None:
        """(vault, still awaited) for a select job of ours, None for one we do not know."""
        for rec in self.records.values():
            if rec.job_id == job_id:
                return rec.vault, rec.state == IN_PROGRESS
        return None

    async def job_completed(self, job: dict[str, Any]) -> None:
        """A completion confirmed by DescribeJob: acted on as a polling round would."""
        now = time.time()
        for rec in [r for r in self.records.values()
                    if r.job_id == job.get("JobId") and r.state == IN_PROGRESS]:
            self._apply_status(rec, job, now)

    def _interval(self, tier: str) -> float:
        return self.retrieval._interval(tier)  # the same, stretched while notices flow

    def _save(self, rec: SelectRecord) -> bool:
        self.records[rec.key] = rec
        marks = ", ".join("?" for _ in _COLUMNS)
        try:
            self.db.execute(f"INSERT OR REPLACE INTO select_jobs ({', '.join(_COLUMNS)}) "
                            f"VALUES ({marks})", astuple(rec))
        except LOCAL_ERRORS as exc:
            log.warning("select job state not saved: %s", exc)
            return False
        return True


def glacier_now() -> str:
    from datetime import UTC, datetime
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
