"""Getting each vault's inventory into the namespace, and keeping it fresh.

A vault with no stored inventory gets one when first listed: a recent full inventory job of
the vault (ListJobs, maybe started by another tool or machine) is reused, otherwise one is
started (JSON). While it runs the vault directory is empty and its xattrs say why. The output
is streamed to a file in the state dir and ingested in a worker thread. A stored inventory is
used at once on remount, with no API call; when it is older than ``inventory_refresh``, a newer
one is looked for in the background (a newer finished job, or a new job when DescribeVault
reports a newer LastInventoryDate).

Runs on the trio thread; one task per vault at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from datetime import datetime, UTC
from pathlib import Path
from typing import Any
from collections.abc import Callable

import trio

from glacierfs import diskfull
from glacierfs.aws import glacier
from glacierfs.diskfull import LOCAL_ERRORS
from glacierfs.catalog.inventory import InventoryFormatError
from glacierfs.catalog.namespace import Namespace, ingest_inventory
from glacierfs.options import MountOptions
from glacierfs.store import Store

log = logging.getLogger(__name__)

INVENTORY_POLL = 900.0       # real inventory jobs take hours; ``poll`` overrides
INVENTORY_FORMAT = "JSON"    # Glacier's CSV is ambiguous; JSON is exact
OUTPUT_LIFETIME = 24 * 3600
RETRY_AFTER_FAILURE = 60.0   # a vault whose inventory could not be had is retried this often
LOCAL_RETRY = 10.0           # … or this soon when only the local disk was in the way


def _is_full_inventory(job: dict[str, Any]) -> bool:
    """A paged or date-filtered inventory job lists only part of the vault."""
    params = job.get("InventoryRetrievalParameters") or {}
    return not any(params.get(k) for k in ("StartDate", "EndDate", "Limit", "Marker"))


class Inventories:
    def __init__(self, namespace: Namespace, client: glacier.AsyncGlacier, options: MountOptions,
                 nursery: trio.Nursery, on_change: Callable[[str], None] = lambda v: None) -> None:
        self.ns = namespace
        self.client = client
        self.options = options
        self.nursery = nursery
        self.on_change = on_change
        self._running: set[str] = set()
        self._checked: dict[str, float] = {}
        # Completion notices (jobs/notices.py): a vault's wait ends at once with the job's
        # confirmed description.
        self._waits: dict[str, tuple[str, trio.Event]] = {}   # vault → (job id, wake)
        self._notified: dict[str, dict[str, Any]] = {}
        self.poll_stretch: Callable[[], float] = lambda: 1.0

    def ensure(self, vault: str) -> None:
        """Called when a vault is listed or looked into: start a fetch or refresh if due."""
        if vault in self._running:
            return
        info = self.ns.vault(vault)
        if info is None:
            return
        now = time.time()
        if info.inventory_date is None:  # none loaded yet (none started, or a failure)
            if now - self._checked.get(vault, 0) < RETRY_AFTER_FAILURE:
                return
        else:
            refresh = self.options.inventory_refresh
            loaded = info.inventory_loaded_at or 0
            if not refresh or now - loaded < refresh or now - self._checked.get(vault, 0) < refresh:
                return
        self._checked[vault] = now
        self._running.add(vault)
        self.nursery.start_soon(self._fetch, vault)

    async def _fetch(self, vault: str) -> None:
        """Never raises: whatever goes wrong is one line in the log and in the vault's
        ``user.glacier.inventory.message``, and the vault is tried again when next listed."""
        before = self.ns.vault(vault)
        loaded_job = before.inventory_job_id if before and before.inventory_date else None
        try:
            await self._fetch_inner(vault)
        except glacier.GlacierError as exc:
            self._failed(vault, f"inventory not available: {exc}", loaded_job)
        except InventoryFormatError as exc:
            self._failed(vault, f"the inventory job's output is not an inventory ({exc}); "
                                "nothing was changed", loaded_job)
        except LOCAL_ERRORS as exc:
            kept = "; the previous listing is kept" if loaded_job else ""
            self._failed(vault, "inventory not stored: "
                                f"{diskfull.describe(exc, self.ns.store.path.parent)}{kept}",
                         loaded_job)
            # Free space is all it needs: look again soon rather than after the usual pause.
            self._checked[vault] = time.time() - RETRY_AFTER_FAILURE + LOCAL_RETRY
        except Exception as exc:  # a bug must cost this vault's refresh, not the whole mount
            log.exception("vault %s: internal error while getting the inventory", vault)
            self._failed(vault, f"internal error while getting the inventory: {exc!r} "
                                "(see the log)", loaded_job)
        finally:
            self._running.discard(vault)

    def _failed(self, vault: str, message: str, loaded_job: str | None) -> None:
        """Say why in the vault's xattrs. With an inventory loaded, its job stays the vault's
        job (the listing is that job's), so a later refresh still sees the newer job as new."""
        log.warning("vault %s: %s", vault, message)
        info = self.ns.vault(vault)
        status = info.inventory_status if info else None
        changes: dict[str, object] = {"inventory_message": message}
        if loaded_job is not None:
            changes.update(inventory_job_id=loaded_job, inventory_status="Succeeded")
        elif status == "Ingesting":
            changes["inventory_status"] = "Succeeded"  # the job did; its output was not stored
        with contextlib.suppress(*LOCAL_ERRORS):  # a full disk may refuse this too
            self.ns.update_vault(vault, **changes)

    async def _fetch_inner(self, vault: str) -> None:
        info = self.ns.vault(vault)
        have_date = glacier.parse_date(info.inventory_date) if info else None
        jobs = await self.client.list_jobs(vault)
        inventory_jobs = [j for j in jobs if j.get("Action") == "InventoryRetrieval"
                          and _is_full_inventory(j) and j.get("StatusCode") != "Failed"]
        inventory_jobs.sort(key=lambda j: j.get("CreationDate") or "", reverse=True)
        now = datetime.now(UTC)
        chosen: dict[str, Any] | None = None
        for job in inventory_jobs:
            if job.get("StatusCode") == "Succeeded":
                done = glacier.parse_date(job.get("CompletionDate"))
                if done is None or (now - done).total_seconds() > OUTPUT_LIFETIME - 600:
                    continue
                if info and job.get("JobId") == info.inventory_job_id and have_date:
                    break  # the newest finished job is the one we already have
            chosen = job
            break
        if chosen is None:
            if have_date is not None:
                described = await self.client.describe_vault(vault)
                last = glacier.parse_date(described.get("LastInventoryDate"))
                self.ns.update_vault(vault, last_inventory_date=described.get("LastInventoryDate"))
                if last is None or last <= have_date:
                    self.ns.update_vault(vault, inventory_loaded_at=time.time())
                    return  # nothing newer exists at Glacier
            job_id = await self.client.initiate_inventory_retrieval(vault, INVENTORY_FORMAT)
            log.info("vault %s: started inventory job %s", vault, job_id[:16])
            chosen = {"JobId": job_id, "StatusCode": "InProgress"}
        job_id = str(chosen["JobId"])
        self.ns.update_vault(vault, inventory_job_id=job_id, inventory_status=chosen["StatusCode"],
                             inventory_message=None if chosen["StatusCode"] == "Succeeded" else
                             "an inventory retrieval job is running (Glacier takes hours); "
                             "the directory fills when it completes")
        while chosen.get("StatusCode") == "InProgress":
            interval = self.options.poll or \
                (self.options.poll_interval or INVENTORY_POLL) * self.poll_stretch()
            wake = trio.Event()
            self._waits[vault] = (job_id, wake)
            try:
                with trio.move_on_after(interval):
                    await wake.wait()
            finally:
                self._waits.pop(vault, None)
            notified = self._notified.pop(vault, None)
            chosen = notified if notified is not None else \
                await self.client.describe_job(vault, job_id)
        if chosen.get("StatusCode") != "Succeeded":
            message = f"inventory job failed: {chosen.get('StatusMessage') or 'unknown reason'}"
            self.ns.update_vault(vault, inventory_status="Failed", inventory_message=message)
            return
        await self._download_and_ingest(vault, job_id)

    # --- completion notices (jobs/notices.py) ---------------------------------------------
    def notice_state(self, job_id: str) -> tuple[str, bool] | None:
        """(vault, still awaited) for an inventory job of ours, None for one we do not know."""
        for vault, (waited, _) in self._waits.items():
            if waited == job_id:
                return vault, True
        for info in self.ns.vaults():
            if info.inventory_job_id == job_id:
                return info.name, False
        return None

    async def job_completed(self, job: dict[str, Any]) -> None:
        """A completion confirmed by DescribeJob: the vault's wait ends with this answer."""
        for vault, (waited, wake) in list(self._waits.items()):
            if waited == job.get("JobId"):
                self._notified[vault] = job
                wake.set()

    async def _download_and_ingest(self, vault: str, job_id: str) -> None:
        self.ns.update_vault(vault, inventory_status="Ingesting",
                             inventory_message="reading the inventory")
        state_dir = self.ns.store.path.parent
        tmp = state_dir / f"inventory-{os.getpid()}-{abs(hash((vault, job_id)))}.tmp"
        try:
            meta = await trio.to_thread.run_sync(self._download, vault, job_id, tmp)
            fmt = "CSV" if "csv" in str(meta.get("contentType") or "").lower() else "JSON"
            result = await trio.to_thread.run_sync(self._ingest, state_dir, vault, tmp, fmt, job_id)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("vault %s: inventory of %d archives loaded (%d rows skipped%s)", vault,
                 result.archives, result.skipped_rows, ", truncated" if result.truncated else "")
        self.on_change(vault)

    def _download(self, vault: str, job_id: str, path: Path) -> dict[str, Any]:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            return self.client.client.download_job_output(vault, job_id, f)

    @staticmethod
    def _ingest(state_dir: Path, vault: str, path: Path, fmt: str, job_id: str):  # type: ignore[no-untyped-def]
        store = Store(state_dir)
        try:
            with open(path, "rb") as f:
                return ingest_inventory(store, vault, f, fmt, job_id)
        finally:
            store.close()
