"""Job lifecycle, evaluated lazily.

Every request that looks at a job first brings it up to date with the emulated clock (and,
with select output or notifications to deliver, a watcher thread does too, so they happen on
time). A job is due at ``created + delay(tier)`` (delays can change while it runs) or at
the moment a test forced it; the first request after that freezes its completion date, renders its
output if it is an inventory, and stores the result. Output expires ``job_ttl`` after completion;
an expired job vanishes from ListJobs and DescribeJob and its output answers 404, as Glacier
forgets finished jobs.

Completion happens once per job, under the job's lock, whoever notices it first (a request, the
watcher, a forced completion or failure); that is where the completion notification is sent, so
it goes out exactly once.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from glacierfs.sim import inventory
from glacierfs.sim.bodies import Body, leaves_path_for
from glacierfs.sim.clock import Clock, iso, parse_iso
from glacierfs.sim.config import INVENTORY, SimConfig
from glacierfs.sim.errors import invalid, not_found
from glacierfs.sim.notifications import Notifier
from glacierfs.sim.select.service import SELECT, SelectService
from glacierfs.sim.store import Row, Store

log = logging.getLogger(__name__)

ARCHIVE_RETRIEVAL = "ArchiveRetrieval"
INVENTORY_RETRIEVAL = "InventoryRetrieval"
IN_PROGRESS, SUCCEEDED, FAILED = "InProgress", "Succeeded", "Failed"
IN_PROGRESS_MESSAGE = "Operation in progress."
# How often the watcher (``watch``) looks for jobs that are due.
WATCH_INTERVAL = 0.5


class Jobs:
    """Reads and advances job records; renders inventory outputs."""

    def __init__(self, store: Store, config: SimConfig, clock: Clock) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.select: SelectService | None = None  # set by Sim.open
        self.notifier: Notifier | None = None  # set by Sim.open
        self._stop = threading.Event()
        self._render_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # --- evaluation -------------------------------------------------------------------------
    def due(self, job: Row) -> float:
        if job["forced_at"] is not None:
            return job["forced_at"]
        key = INVENTORY if job["action"] == INVENTORY_RETRIEVAL else job["tier"]
        return job["created"] + self.config.delay(key)

    def is_expired(self, job: Row, now: float | None = None) -> bool:
        if job["expired"]:
            return True
        if job["completed"] is None:
            return False
        now = self.clock.now() if now is None else now
        return now >= job["completed"] + self.config.job_ttl

    def refresh(self, job: Row) -> Row:
        """Bring one job up to date with the clock; returns the current record."""
        if job["completed"] is not None:
            if self.is_expired(job) and (job["output"] or job["body"]):
                self._drop_files(job)
            return job
        due = self.due(job)
        if self.clock.now() < due:
            return job
        return self._finish(job, due)

    def refresh_vault(self, vault_id: int) -> None:
        for job in self.store.all("SELECT * FROM jobs WHERE vault_id = ? AND completed IS NULL",
                                  (vault_id,)):
            self.refresh(job)

    def _lock_for(self, job_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._render_locks.setdefault(job_id, threading.Lock())

    def _finish(self, job: Row, when: float) -> Row:
        with self._lock_for(job["job_id"]):
            current = self.get_by_id(job["job_id"])
            if current is None or current["completed"] is not None:
                return current or job
            fields: dict[str, object] = {"completed": when}
            if current["action"] == SELECT and self.select is not None:
                fields.update(self.select.finish(current, when, self.store.path(current["body"])))
            elif current["fail_message"]:
                fields.update(status=FAILED, status_message=current["fail_message"])
            elif current["action"] == INVENTORY_RETRIEVAL:
                fields.update(self._render_inventory(current, when))
            else:
                fields.update(status=SUCCEEDED, status_message=SUCCEEDED)
            self._update(current["job_id"], fields)
            log.info("job %s… %s at %s", current["job_id"][:12], fields.get("status"), iso(when))
            self._announce(current["job_id"])
        with self._locks_guard:
            self._render_locks.pop(job["job_id"], None)
        return self.get_by_id(job["job_id"])  # type: ignore[return-value]

    def _announce(self, job_id: str) -> None:
        """Publish a just-completed job's description (called once per completion)."""
        if self.notifier is None:
            return
        job = self.get_by_id(job_id)
        if job is not None:
            try:
                self.notifier.completed(job, self.describe(job))
            except Exception:  # a notification problem must not undo or block a completion
                log.exception("job %s…: notification failed", job_id[:12])

    def watch(self, interval: float = WATCH_INTERVAL) -> threading.Thread:
        """Complete due jobs in the background, so their notifications go out on time even when
        no client asks about them."""
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    now = self.clock.now()
                    for job in self.store.all("SELECT * FROM jobs WHERE completed IS NULL"):
                        if self.due(job) <= now:
                            self.refresh(job)
                except Exception:  # one bad round must not end the watcher
                    log.exception("job watcher round failed")
        thread = threading.Thread(target=loop, name="job-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _render_inventory(self, job: Row, when: float) -> dict[str, object]:
        vault = self.store.one("SELECT * FROM vaults WHERE id = ?", (job["vault_id"],))
        if vault is None:
            return {"status": FAILED, "status_message": "The vault was deleted."}
        if self.config.inventory_mode == "daily":
            snapshot = inventory.daily_snapshot(self.store, vault["id"], when)
            at = snapshot if snapshot is not None else when
        else:
            at = when
        req = inventory.InventoryRequest(
            vault_id=vault["id"], vault_arn=self.config.vault_arn(vault["name"]),
            fmt=job["format"] or "JSON", at=at,
            start=parse_iso(job["inv_start"]) if job["inv_start"] else None,
            end=parse_iso(job["inv_end"]) if job["inv_end"] else None,
            limit=int(job["inv_limit"]) if job["inv_limit"] else None,
            marker=job["inv_marker"])
        rel = f"jobs/{job['job_id']}.inventory"
        conn = self.store.reader()
        try:
            result = inventory.render(conn, req, self.store.data_dir / rel)
        finally:
            conn.close()
        return {"status": SUCCEEDED, "status_message": SUCCEEDED, "output": rel,
                "output_size": result.size, "next_marker": result.next_marker,
                "inventory_date": at}

    def _update(self, job_id: str, fields: dict[str, object]) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.store.run(f"UPDATE jobs SET {cols} WHERE job_id = ?", (*fields.values(), job_id))

    def _drop_files(self, job: Row) -> None:
        """Expired output is gone for good: free its disk space."""
        for rel in (job["output"], job["body"]):
            path = self.store.path(rel)
            if path is None:
                continue
            for p in (path, leaves_path_for(path)):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        self._update(job["job_id"], {"output": None, "body": None})

    # --- queries ----------------------------------------------------------------------------
    def get_by_id(self, job_id: str) -> Row | None:
        return self.store.one("SELECT * FROM jobs WHERE job_id = ?", (job_id,))

    def get(self, vault: Row, job_id: str) -> Row:
        """A live (not expired) job of this vault, brought up to date; 404 otherwise."""
        job = self.store.one("SELECT * FROM jobs WHERE job_id = ? AND vault_id = ?",
                             (job_id, vault["id"]))
        if job is None:
            raise not_found(f"The job ID was not found: {job_id}")
        job = self.refresh(job)
        if self.is_expired(job):
            raise not_found(f"The job ID was not found: {job_id}")
        return job

    def listing(self, vault: Row, completed: bool | None, status: str | None) -> list[Row]:
        self.refresh_vault(vault["id"])
        now = self.clock.now()
        out = []
        for job in self.store.all("SELECT * FROM jobs WHERE vault_id = ? ORDER BY id",
                                  (vault["id"],)):
            if self.is_expired(job, now):
                continue
            if completed is not None and (job["completed"] is not None) != completed:
                continue
            if status is not None and job["status"] != status:
                continue
            out.append(job)
        return out

    def describe(self, job: Row) -> dict[str, object]:
        """The DescribeJob body (also a ListJobs entry): every documented field, null when it
        does not apply, as Glacier sends them."""
        vault = self.store.one("SELECT name FROM vaults WHERE id = ?", (job["vault_id"],))
        archive = job["action"] in (ARCHIVE_RETRIEVAL, SELECT)
        done = job["completed"] is not None
        out: dict[str, object] = {
            "Action": job["action"],
            "ArchiveId": job["archive_id"],
            "ArchiveSHA256TreeHash": job["archive_tree_hash"],
            "ArchiveSizeInBytes": job["archive_size"],
            "Completed": done,
            "CompletionDate": iso(job["completed"]),
            "CreationDate": iso(job["created"]),
            "InventorySizeInBytes": job["output_size"] if not archive and done else None,
            "JobDescription": job["description"],
            "JobId": job["job_id"],
            "RetrievalByteRange": (f"{job['range_start']}-{job['range_end']}"
                                   if archive and job["archive_size"] else None),
            "SHA256TreeHash": job["output_tree_hash"] if archive else None,
            "SNSTopic": job["sns_topic"],
            "StatusCode": job["status"],
            "StatusMessage": job["status_message"],
            "Tier": job["tier"],
            "VaultARN": self.config.vault_arn(vault["name"] if vault else "?"),
        }
        if job["action"] == SELECT and self.select is not None:
            out.update(self.select.describe_fields(job))
        if not archive:
            out["InventoryRetrievalParameters"] = {
                "Format": job["format"],
                "StartDate": job["inv_start"],
                "EndDate": job["inv_end"],
                "Limit": job["inv_limit"],
                "Marker": job["next_marker"] if done else job["inv_marker"],
            }
        return out

    def output_body(self, job: Row) -> Body:
        """The bytes GetJobOutput serves for a succeeded job."""
        if job["action"] == INVENTORY_RETRIEVAL:
            return Body(path=self.store.path(job["output"]), size=job["output_size"] or 0)
        size = job["range_end"] - job["range_start"] + 1 if job["archive_size"] else 0
        path = self.store.path(job["body"])
        return Body(path=path, size=size, offset=job["range_start"] if size else 0,
                    file_size=job["archive_size"])

    # --- control ----------------------------------------------------------------------------
    def force_complete(self, job_id: str | None, vault_id: int | None) -> list[str]:
        sql, args = "SELECT * FROM jobs WHERE completed IS NULL", []
        if job_id is not None:
            sql += " AND job_id = ?"
            args.append(job_id)
        if vault_id is not None:
            sql += " AND vault_id = ?"
            args.append(vault_id)
        now = self.clock.now()
        done = []
        for job in self.store.all(sql, tuple(args)):
            self._update(job["job_id"], {"forced_at": now})
            job["forced_at"] = now
            self.refresh(job)
            done.append(job["job_id"])
        return done

    def force_fail(self, job_id: str, message: str) -> None:
        self._existing(job_id)
        fields: dict[str, object] = {"status": FAILED, "status_message": message,
                                     "fail_message": message}
        with self._lock_for(job_id):
            job = self._existing(job_id)
            completing = job["completed"] is None
            if completing:
                fields["completed"] = self.clock.now()
            self._update(job_id, fields)
            if completing:
                self._announce(job_id)
        with self._locks_guard:
            self._render_locks.pop(job_id, None)

    def force_expire(self, job_id: str) -> None:
        self._existing(job_id)
        self._update(job_id, {"expired": 1})
        self.refresh(self._existing(job_id))

    def _existing(self, job_id: str) -> Row:
        job = self.get_by_id(job_id)
        if job is None:
            raise not_found(f"The job ID was not found: {job_id}")
        return job


def job_file(store: Store, job_id: str) -> tuple[str, Path]:
    rel = f"jobs/{job_id}.body"
    return rel, store.data_dir / rel


def parse_limit(value: str | None, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except ValueError:
        raise invalid(f"Invalid limit: {value}") from None
    if not 1 <= limit <= maximum:
        raise invalid(f"The limit must be between 1 and {maximum}: {value}")
    return limit
