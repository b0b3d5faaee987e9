"""Retrieval job records: one per (archive, byte range), written through to the state database.

A record covers the whole archive (``range_end == -1``, the only kind before ranged retrievals)
or one RetrievalByteRange (see ranges.py). Whole-archive records are keyed by the archive id,
so ``records[archive_id]`` is still "the archive's job"; ranged ones by ``ARCHIVE@START-END``.

A record is saved *before* every API call that costs money (state ``Initiating``), so after a
crash the daemon knows a job may exist and looks for it with ListJobs instead of paying for a
second one. Records live in memory for fast xattr answers and are persisted on every change.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields

from glacierfs import diskfull
from glacierfs.diskfull import LOCAL_ERRORS
from glacierfs.store import Store

log = logging.getLogger(__name__)

# States. Glacier's StatusCode values plus two local ones.
QUEUED = "Queued"            # wanted, held back by max_jobs / budget / a transient error
INITIATING = "Initiating"    # InitiateJob sent (or about to be); the job id is not known yet
IN_PROGRESS = "InProgress"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
ACTIVE_STATES = (QUEUED, INITIATING, IN_PROGRESS, SUCCEEDED)

BUDGET_WINDOW = 86400.0  # the budget is bytes per rolling day


@dataclass
class JobRecord:
    archive_id: str
    vault: str
    state: str
    tier: str
    size: int
    tree_hash: str | None
    requested_at: float
    job_id: str | None = None
    creation_date: str | None = None
    completion_date: str | None = None
    status_message: str | None = None
    initiated_at: float | None = None
    next_poll: float | None = None
    range_start: int = 0          # RetrievalByteRange (inclusive); the whole archive when
    range_end: int = -1           # range_end is -1
    # Who asked for the job (jobs/spenders.py); None for a job adopted from ListJobs.
    requested_uid: int | None = None
    requested_user: str | None = None
    requested_command: str | None = None

    @property
    def ranged(self) -> bool:
        return self.range_end >= 0

    @property
    def key(self) -> str:
        """Where the record lives in ``Retrieval.records`` (and the unsaved changes)."""
        return record_key(self.archive_id, self.range_start, self.range_end)

    @property
    def byte_range(self) -> str | None:
        """The InitiateJob RetrievalByteRange, None for the whole archive."""
        return f"{self.range_start}-{self.range_end}" if self.ranged else None

    @property
    def public_status(self) -> str:
        """The value of ``user.glacier.job.status``: Glacier's StatusCode or ``Queued``."""
        return QUEUED if self.state == INITIATING else self.state


_COLUMNS = [f.name for f in fields(JobRecord)]


def record_key(archive_id: str, start: int = 0, end: int = -1) -> str:
    return archive_id if end < 0 else f"{archive_id}@{start}-{end}"


class JobStore:
    """The jobs table. When the disk is full, changes are kept in memory as unsaved and written
    with the next save that succeeds (a warning at most once a minute); ``save`` says whether
    the record reached the disk, so the paid InitiateJob can insist on it."""

    WARN_EVERY = 60.0

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.db = store.db
        self.clock = clock   # the budget window's clock (a test clock with an emulator)
        self._store = store
        self._unsaved: dict[str, JobRecord] = {}
        self._unsaved_spend: list[tuple[float, int, str]] = []
        self._warned_at = 0.0

    @property
    def store(self) -> Store:
        return self._store

    @property
    def unsaved(self) -> int:
        """Changes kept in memory because the disk refused them (0 normally)."""
        return len(self._unsaved) + len(self._unsaved_spend)

    def load_all(self) -> dict[str, JobRecord]:
        rows = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs").fetchall()
        records = [JobRecord(*r) for r in rows]
        return {r.key: r for r in records}

    def save(self, record: JobRecord) -> bool:
        self._unsaved[record.key] = record
        return self.flush()

    def record_spend(self, archive_id: str, size: int, now: float | None = None) -> None:
        self._unsaved_spend.append((now or self.clock(), size, archive_id))
        self.flush()

    def flush(self) -> bool:
        """Write every unsaved change in one transaction; False when the disk refused them."""
        if not self._unsaved and not self._unsaved_spend:
            return True
        placeholders = ", ".join("?" for _ in _COLUMNS)
        try:
            with self._store.transaction() as db:
                db.executemany(f"INSERT OR REPLACE INTO jobs({', '.join(_COLUMNS)}) "
                               f"VALUES ({placeholders})",
                               [astuple(r) for r in self._unsaved.values()])
                db.executemany("INSERT INTO spend(ts, bytes, archive_id) VALUES (?, ?, ?)",
                               self._unsaved_spend)
        except LOCAL_ERRORS as exc:
            now = time.monotonic()
            if now - self._warned_at >= self.WARN_EVERY:
                self._warned_at = now
                log.warning("job state not saved (%d change(s) kept in memory, retried with "
                            "the next change): %s", len(self._unsaved) + len(self._unsaved_spend),
                            diskfull.describe(exc, self._store.path.parent))
            return False
        self._unsaved.clear()
        self._unsaved_spend.clear()
        return True

    def spent_in_window(self, now: float | None = None) -> int:
        since = (now or self.clock()) - BUDGET_WINDOW
        with contextlib.suppress(*LOCAL_ERRORS):  # pruning old rows can wait for free space
            self.db.execute("DELETE FROM spend WHERE ts < ?", (since - BUDGET_WINDOW,))
        saved = int(self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM spend WHERE ts >= ?",
                                    (since,)).fetchone()[0])
        return saved + sum(size for ts, size, _ in self._unsaved_spend if ts >= since)
