"""Retrieval job records: one per archive, written through to the state database.

A record is saved *before* every API call that costs money (state ``Initiating``), so after a
crash the daemon knows a job may exist and looks for it with ListJobs instead of paying for a
second one. Records live in memory for fast xattr answers and are persisted on every change.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields

from glacierfs.store import Store

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

    @property
    def public_status(self) -> str:
        """The value of ``user.glacier.job.status``: Glacier's StatusCode or ``Queued``."""
        return QUEUED if self.state == INITIATING else self.state


_COLUMNS = [f.name for f in fields(JobRecord)]


class JobStore:
    def __init__(self, store: Store) -> None:
        self.db = store.db

    def load_all(self) -> dict[str, JobRecord]:
        rows = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs").fetchall()
        return {r[0]: JobRecord(*r) for r in rows}

    def save(self, record: JobRecord) -> None:
        values = asdict(record)
        placeholders = ", ".join("?" for _ in _COLUMNS)
        self.db.execute(f"INSERT OR REPLACE INTO jobs({', '.join(_COLUMNS)}) "
                        f"VALUES ({placeholders})", [values[c] for c in _COLUMNS])

    def delete(self, archive_id: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE archive_id = ?", (archive_id,))

    def record_spend(self, archive_id: str, size: int, now: float | None = None) -> None:
        self.db.execute("INSERT INTO spend(ts, bytes, archive_id) VALUES (?, ?, ?)",
                        (now or time.time(), size, archive_id))

    def spent_in_window(self, now: float | None = None) -> int:
        since = (now or time.time()) - BUDGET_WINDOW
        self.db.execute("DELETE FROM spend WHERE ts < ?", (since - BUDGET_WINDOW,))
        return int(self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM spend WHERE ts >= ?",
                                   (since,)).fetchone()[0])
