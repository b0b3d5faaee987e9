"""Getting a Synology backup task's mapping database, so its data vault shows real names.

A vault ``V`` with a sibling vault ``V_mapping`` is a Synology Glacier Backup task
(``catalog.synology``). On the first listing of ``V`` its mapping is fetched the way an
inventory is: ``V_mapping``'s inventory is loaded (``Inventories``), its newest archive is the
mapping, and that archive is retrieved like any file's: through ``Retrieval.request``, so the
job is recorded before InitiateJob, counted against ``max_jobs`` and ``budget``, reused from
ListJobs (after a remount, or when another machine or state dir started it) and never paid
twice. Once its verified bytes are in the cache they are copied to the state dir
(``synology/``), read by ``catalog.synology`` in a worker thread, and ``V``'s tree is rebuilt
with the names; a remount uses the stored names with no call at all. When a refreshed
inventory of ``V_mapping`` shows a newer archive, that one is fetched the same way and the
names shown until then stay.

``retrieve=manual`` means what it means for reads: nothing paid starts by itself. The mapping
archive is not retrieved until someone restores it (``glacierfs restore`` or the
``user.glacier.restore`` xattr on ``V_mapping/.by-id/ID``); the vault's xattrs say so and
how, and names come as soon as that restore is in. ``V_mapping``'s inventory is fetched in both
modes, like every vault's.

While names are on their way ``V`` lists by archive id (every archive also stays at
``V/.by-id/ID``), and ``synology_state`` (xattrs ``user.glacier.names.*``, ``glacierfs
status``) says what is awaited. Runs on the trio thread; one task per vault at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path

import trio

from glacierfs import diskfull
from glacierfs.catalog import synology
from glacierfs.catalog.inventories import Inventories
from glacierfs.catalog.namespace import Entry, Namespace
from glacierfs.diskfull import LOCAL_ERRORS
from glacierfs.jobs.jobstore import FAILED, SUCCEEDED
from glacierfs.jobs.retrieval import Retrieval, RetrievalError
from glacierfs.options import MountOptions
from glacierfs.store import KIND_FILE, Store

log = logging.getLogger(__name__)

RECHECK = 10.0        # a listing looks at a vault's names again at most this often (local only)
LOCAL_CHECK = 2.0     # while a mapping is on its way: how often the cache and records are seen
MAPPING_DIR = "synology"


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def mapping_path(state_dir: Path, vault: str, archive_id: str) -> Path:
    """Where a mapping archive's bytes are kept (one file per vault and archive; names
    hashed, since vault names and ids are not ours to trust as file names)."""
    return state_dir / MAPPING_DIR / f"{_tag(vault)}-{_tag(archive_id)}.sqlite"


def _drop_older(path: Path) -> None:
    """Files of earlier mappings of the same vault, once a newer one is loaded."""
    prefix = path.name.split("-", 1)[0] + "-"
    for other in path.parent.glob(prefix + "*"):
        if other.name != path.name:
            with contextlib.suppress(OSError):
                other.unlink()


class SynologyNames:
    """Names for Synology data vaults (see the module doc)."""

    def __init__(self, namespace: Namespace, retrieval: Retrieval, inventories: Inventories,
                 options: MountOptions, nursery: trio.Nursery,
                 mountpoint: Path | None = None) -> None:
        self.ns = namespace
        self.retrieval = retrieval
        self.inventories = inventories
        self.options = options
        self.nursery = nursery
        self.mountpoint = mountpoint
        self._running: set[str] = set()
        self._checked: dict[str, float] = {}

    def is_synology(self, vault: str) -> bool:
        return self.ns.vault(synology.mapping_vault_of(vault)) is not None

    def ensure(self, vault: str) -> None:
        """Called when a vault is listed or looked into: start the mapping's fetch if due."""
        if vault in self._running or not self.is_synology(vault):
            return
        now = time.monotonic()
        if now - self._checked.get(vault, -RECHECK) < RECHECK:
            return
        self._checked[vault] = now
        self._running.add(vault)
        self.nursery.start_soon(self._run, vault)

    def _state(self, vault: str, status: str, message: str | None,
               archive_id: str | None = None) -> bool:
        """Record the vault's naming state; False when it was already that."""
        current = synology.names_state(self.ns.db, vault)
        if current is not None and (current.status, current.message) == (status, message) \
                and (archive_id is None or archive_id == current.archive_id):
            return False
        with contextlib.suppress(*LOCAL_ERRORS):
            synology.set_state(self.ns.db, vault, status, message, archive_id)
        return True

    async def _run(self, vault: str) -> None:
        """Never raises: what goes wrong is one line in the log and in the vault's
        ``user.glacier.names.message``; the next listing tries again."""
        try:
            await self._run_inner(vault)
        except LOCAL_ERRORS as exc:
            self._failed(vault, "names not stored: "
                                f"{diskfull.describe(exc, self.ns.store.path.parent)}")
        except Exception as exc:  # a bug must cost this vault's names, not the mount
            log.exception("vault %s: internal error while getting its Synology names", vault)
            self._failed(vault, f"internal error while getting the names: {exc!r} (see the log)")
        finally:
            self._running.discard(vault)

    def _failed(self, vault: str, message: str, archive_id: str | None = None) -> None:
        if self._state(vault, synology.FAILED, message, archive_id):
            log.warning("vault %s: %s", vault, message)

    async def _run_inner(self, vault: str) -> None:
        mapping_vault = synology.mapping_vault_of(vault)
        entry, count = await self._newest_mapping(vault, mapping_vault)
        if entry is None:
            return
        assert entry.archive_id
        state = synology.names_state(self.ns.db, vault)
        if state is not None and state.archive_id == entry.archive_id and \
                state.status == synology.LOADED:
            return  # the names shown are the newest mapping's
        path = mapping_path(self.ns.store.path.parent, vault, entry.archive_id)
        refused = path.with_suffix(".refused")
        if refused.exists():
            return  # these bytes were read and refused; the same bytes fail the same way
        if entry.size > synology.MAX_MAPPING_BYTES:
            self._failed(vault, f"the newest archive of {mapping_vault} is {entry.size} bytes, "
                                "too large to be a Synology mapping database; not retrieved",
                         entry.archive_id)
            return
        if not path.exists() and not await self._fetch(vault, mapping_vault, entry, path):
            return  # a newer mapping appeared meanwhile: the next listing fetches that one
        note = f" ({mapping_vault} holds {count} archives; the newest is used)" if count > 1 \
            else ""
        self._state(vault, synology.PENDING, f"reading the mapping database{note}",
                    entry.archive_id)
        state_dir = self.ns.store.path.parent
        try:
            result = await trio.to_thread.run_sync(_load, state_dir, vault, path,
                                                   entry.archive_id)
        except synology.MappingError as exc:
            kept = "the names of the previous mapping stay" if state is not None and \
                state.status == synology.LOADED else f"{vault} lists its archives by id"
            self._failed(vault, f"the mapping database in {mapping_vault} cannot be used: "
                                f"{exc}; {kept}", entry.archive_id)
            with contextlib.suppress(OSError):
                refused.write_text(f"{exc}\n")
            return
        _drop_older(path)
        if note:
            with contextlib.suppress(*LOCAL_ERRORS):
                state = synology.names_state(self.ns.db, vault)
                synology.set_state(self.ns.db, vault, synology.LOADED,
                                   (state.message if state else "") + note)
        log.info("vault %s: Synology names loaded: %s%s", vault, result.summary(), note)

    async def _newest_mapping(self, vault: str, mapping_vault: str) -> tuple[Entry | None, int]:
        """The newest archive of the mapping vault, once its inventory is in (waits for it)."""
        while True:
            self.inventories.ensure(mapping_vault)
            info = self.ns.vault(mapping_vault)
            if info is None:
                return None, 0
            if info.inventory_date is not None:
                break
            state = synology.names_state(self.ns.db, vault)
            if info.inventory_status == "Failed":
                if state is None or state.status != synology.LOADED:
                    self._state(vault, synology.PENDING,
                                f"names come from the mapping database in {mapping_vault}, "
                                f"whose inventory is not available: {info.inventory_message}; "
                                "retried when listed again")
                return None, 0
            if state is None or state.status != synology.LOADED:
                self._state(vault, synology.PENDING,
                            f"names are coming: waiting for the inventory of {mapping_vault}, "
                            f"which holds the mapping database (until then {vault} lists its "
                            "archives by id)")
            await trio.sleep(LOCAL_CHECK)
        rows = self._mapping_archives(mapping_vault)
        if not rows:
            self._failed(vault, f"{mapping_vault} holds no archive: no mapping database; "
                                f"{vault} lists its archives by id")
            return None, 0
        return self.ns.get(rows[0][0]), len(rows)

    def _mapping_archives(self, mapping_vault: str) -> list[tuple[int, str]]:
        """(inode, archive id) of the mapping vault's archives, newest first."""
        return self.ns.db.execute(
            "SELECT inode, archive_id FROM entries WHERE vault = ? AND kind = ? AND key IS NULL "
            "AND archive_id IS NOT NULL AND parent > 0 "
            "ORDER BY creation_ns DESC, archive_id DESC", (mapping_vault, KIND_FILE)).fetchall()

    async def _fetch(self, vault: str, mapping_vault: str, entry: Entry, path: Path) -> bool:
        """The mapping archive's verified bytes, copied to ``path``. Waits as long as it takes
        (a job takes hours; with retrieve=manual, or after a failed job, until someone restores
        the archive), saying in the vault's state what it waits for. False when a newer
        mapping archive appeared meanwhile."""
        assert entry.archive_id
        archive_id = entry.archive_id
        where = f"archive {archive_id[:16]}… of {mapping_vault}, {entry.size} bytes"
        loaded = synology.names_state(self.ns.db, vault)
        shown = " (the names of the previous mapping are shown meanwhile)" \
            if loaded is not None and loaded.status == synology.LOADED else \
            f" (until then {vault} lists its archives by id)"
        while True:
            newest = self._mapping_archives(mapping_vault)[:1]
            if not newest or newest[0][1] != archive_id:
                return False
            if self.retrieval.cache_state(entry)[0] == "cached":
                if await self._copy_out(entry, path):
                    return True
            rec = self.retrieval.record(archive_id)
            if rec is None and self.options.retrieve == "manual":
                target = f"{self.mountpoint}/{mapping_vault}/.by-id/{archive_id}" \
                    if self.mountpoint else f"{mapping_vault}/.by-id/{archive_id}"
                self._state(vault, synology.NOT_REQUESTED,
                            f"retrieve=manual: names come from the mapping database "
                            f"({where}), which is not retrieved; restore it "
                            f"(glacierfs restore {target}) and names appear once it is "
                            f"in{shown}", archive_id)
                await trio.sleep(LOCAL_CHECK)   # until someone restores it
                continue
            if rec is None or (rec.state == SUCCEEDED and
                               not self.retrieval.downloader.is_downloading(archive_id)):
                # (again for a finished job: its output is downloaded, or a new job requested
                # when Glacier no longer has it)
                rec = await self.retrieval.request(entry)
                if rec is None:
                    continue  # cached meanwhile
            if rec.state == FAILED:   # not paid for again unless someone restores it
                self._failed(vault, f"the retrieval of the mapping database ({where}) failed: "
                                    f"{rec.status_message or 'unknown reason'}; restore it to "
                                    f"try again{shown}", archive_id)
                await trio.sleep(LOCAL_CHECK)
                continue
            detail = self.retrieval.shown_message(rec, "absent") or ""
            self._state(vault, synology.PENDING,
                        f"names are coming: the mapping database ({where}) is being retrieved, "
                        f"job {rec.public_status}" + (f": {detail}" if detail else "") + shown,
                        archive_id)
            await trio.sleep(LOCAL_CHECK)

    async def _copy_out(self, entry: Entry, path: Path) -> bool:
        """Verified bytes from the cache into the state dir (temp file, fsync, rename)."""
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        step = max(self.options.chunk_size, 1 << 20)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                offset = 0
                while offset < entry.size:
                    data = await self.retrieval.read(entry, offset, min(step, entry.size - offset),
                                                     may_start=False)
                    if not data:   # never loop on a short answer
                        return False
                    await trio.to_thread.run_sync(f.write, data)
                    offset += len(data)
                await trio.to_thread.run_sync(os.fsync, f.fileno())
            os.replace(tmp, path)
            return True
        except RetrievalError as exc:   # evicted meanwhile: the loop asks again
            log.info("mapping archive %s not copied yet: %s", (entry.archive_id or "")[:16], exc)
            return False
        finally:
            tmp.unlink(missing_ok=True)


def _load(state_dir: Path, vault: str, path: Path,
          archive_id: str) -> synology.MappingResult:
    store = Store(state_dir)
    try:
        return synology.load_mapping(store, vault, path, archive_id)
    finally:
        store.close()
