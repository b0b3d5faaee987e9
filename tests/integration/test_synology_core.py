"""Synology Glacier Backup vaults against the emulator, without FUSE: the mapping database in
``V_mapping`` is fetched as one paid job, names appear once it is in, and no second job is ever
started for it — not after a remount, not from a second state dir (another machine)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio
from synology_support import mapping_db

from glacierfs.aws import glacier as glacier_module
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.catalog import synology
from glacierfs.catalog.inventories import Inventories
from glacierfs.catalog.namespace import BY_ID_DIR, Namespace
from glacierfs.jobs.jobstore import JobStore
from glacierfs.jobs.retrieval import Retrieval
from glacierfs.jobs.synologyjob import SynologyNames, mapping_path
from glacierfs.options import MountOptions
from glacierfs.sim.testing import upload
from glacierfs.store import ROOT_INODE, Store

MIB = 1024 * 1024
VAULT = "NAS_0012345ABCDE_1"
MAPPING = VAULT + "_mapping"


class Core:
    """The mount's parts wired as mount.py wires them, over one state dir."""

    def __init__(self, sim, state: Path, **opts) -> None:
        self.options = replace(MountOptions(region="us-east-1", endpoint_url=sim.url,
                                            cache_dir=state, poll=0.5, chunk_size=MIB), **opts)
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.options.state_dir)
        self.ns = Namespace(self.store)
        self.ns.set_vaults([(VAULT, None), (MAPPING, None)])
        client = glacier_module.GlacierClient(glacier_module.ClientSettings(
            region="us-east-1", endpoint_url=sim.url))
        self.aclient = glacier_module.AsyncGlacier(client)
        self.cache = ChunkCache(self.options.state_dir / "chunks", 1 << 30)
        self.retrieval = Retrieval(JobStore(self.store), self.aclient, self.cache, self.options,
                                   self.ns)

    def close(self) -> None:
        self.cache.close()
        self.store.close()

    def names(self) -> synology.NamesState | None:
        return synology.names_state(self.store.db, VAULT)

    def listing(self, *path: str) -> list[str]:
        entry = self.ns.lookup(self.ns.get(ROOT_INODE), VAULT)
        for name in path:
            entry = self.ns.lookup(entry, name)
        return sorted(e.name for e in self.ns.children(entry, 0))

    async def until(self, predicate, timeout: float = 60.0) -> None:
        deadline = trio.current_time() + timeout
        while not predicate():
            if trio.current_time() > deadline:
                raise AssertionError(f"not reached in time; names: {self.names()}")
            await trio.sleep(0.1)

    async def run(self, body, list_vault: bool = True) -> None:
        """``body(names)`` with the background loops running; V listed once at the start
        (``list_vault``; else only its inventory is asked for)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.retrieval.run)
            inventories = Inventories(self.ns, self.aclient, self.options, nursery)
            names = SynologyNames(self.ns, self.retrieval, inventories, self.options, nursery)
            inventories.ensure(VAULT)
            if list_vault:
                names.ensure(VAULT)
            await body(names)
            nursery.cancel_scope.cancel()


def _archive_jobs(glacier, vault: str) -> list[dict]:
    return [j for j in glacier.list_jobs(vaultName=vault)["JobList"]
            if j["Action"] == "ArchiveRetrieval"]


@pytest.fixture
def task(sim, glacier, tmp_path):
    """A Synology backup task: three files in V (no descriptions), the mapping in V_mapping."""
    glacier.create_vault(vaultName=VAULT)
    glacier.create_vault(vaultName=MAPPING)
    ids = [upload(glacier, VAULT, f"file {i}".encode() * 100, "") for i in range(3)]
    db = mapping_db(tmp_path / "map.db", [
        ("photo", "2015/IMG_1.JPG", ids[0], 1431027000, 1, 1),
        ("photo", "dup/IMG_1.JPG", ids[0], 1431027000, 1, 1),
        ("docs", "a.txt", ids[1], 1500000000, 1, 0),
        ("docs", "a.txt", ids[2], 1600000000, 2, 1),
    ])
    mapping_id = upload(glacier, MAPPING, db.read_bytes(), "")
    return ids, mapping_id


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=1")
def test_names_once_the_mapping_is_in_and_one_job_across_remounts_and_machines(
        sim, glacier, task, tmp_path):
    ids, mapping_id = task
    core = Core(sim, tmp_path / "a")

    async def first(names: SynologyNames) -> None:
        await core.until(lambda: core.names() is not None)
        assert core.names().status == synology.PENDING      # says names are coming, and why
        await core.until(lambda: core.ns.vault(VAULT).inventory_date is not None)
        if core.names().status != synology.LOADED:         # still coming: listed by id
            assert set(core.listing()) <= {BY_ID_DIR, *ids, "photo", "docs"}
        await core.until(lambda: (core.names() or synology.NamesState(*[None] * 7)).status
                         == synology.LOADED)

    trio.run(core.run, first)
    assert core.listing() == sorted([BY_ID_DIR, "docs", "photo", ids[1]])  # 1: old version
    assert core.listing("photo") == ["2015", "dup"]
    assert core.listing("docs") == ["a.txt"]
    assert core.ns.lookup(core.ns.lookup(core.ns.lookup(core.ns.get(ROOT_INODE), VAULT), "docs"),
                          "a.txt").archive_id == ids[2]
    assert core.listing(BY_ID_DIR) == sorted(ids)
    assert core.names().archive_id == mapping_id and core.names().paths == 3
    assert mapping_path(core.options.state_dir, VAULT, mapping_id).exists()
    assert len(_archive_jobs(glacier, MAPPING)) == 1
    assert _archive_jobs(glacier, VAULT) == []     # no data archive was retrieved
    core.close()

    # Remount on the same state dir: names at once, no job, no call needed for them.
    again = Core(sim, tmp_path / "a")
    assert again.listing("photo") == ["2015", "dup"]
    sim.reset_stats()

    async def remount(names: SynologyNames) -> None:
        await trio.sleep(1.5)

    trio.run(again.run, remount)
    assert sim.stats()["requests"].get("InitiateJob") is None
    again.close()

    # Another machine (a second state dir): the job is found through ListJobs and reused.
    other = Core(sim, tmp_path / "b")

    async def elsewhere(names: SynologyNames) -> None:
        await other.until(lambda: (other.names() or synology.NamesState(*[None] * 7)).status
                          == synology.LOADED)

    trio.run(other.run, elsewhere)
    assert other.listing("docs") == ["a.txt"]
    assert len(_archive_jobs(glacier, MAPPING)) == 1
    other.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=1")
def test_manual_mode_waits_for_a_restore(sim, glacier, task, tmp_path):
    ids, mapping_id = task
    core = Core(sim, tmp_path / "m", retrieve="manual")

    async def body(names: SynologyNames) -> None:
        await core.until(lambda: core.names() is not None
                         and core.names().status == synology.NOT_REQUESTED)
        assert f"{MAPPING}/.by-id/{mapping_id}" in core.names().message
        assert _archive_jobs(glacier, MAPPING) == []
        # the user restores the mapping archive: names come
        entry = core.ns.file_by_archive(mapping_id)
        await core.retrieval.request(entry, explicit=True)
        await core.until(lambda: core.names().status == synology.LOADED)

    trio.run(core.run, body)
    assert "photo" in core.listing()
    assert len(_archive_jobs(glacier, MAPPING)) == 1
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=1")
def test_a_mapping_that_is_not_sqlite_leaves_ids_and_says_why(sim, glacier, tmp_path):
    glacier.create_vault(vaultName=VAULT)
    glacier.create_vault(vaultName=MAPPING)
    ids = [upload(glacier, VAULT, b"data", "")]
    upload(glacier, MAPPING, b"<html>not a database</html>", "")
    core = Core(sim, tmp_path / "x")

    async def body(names: SynologyNames) -> None:
        await core.until(lambda: core.names() is not None
                         and core.names().status == synology.FAILED)
        await core.until(lambda: core.ns.vault(VAULT).inventory_date is not None)
        await core.until(lambda: VAULT not in names._running)
        names._checked.clear()
        names.ensure(VAULT)      # listed again: the same bytes are not fetched or read again
        await core.until(lambda: VAULT not in names._running)

    trio.run(core.run, body)
    assert "not a SQLite database" in core.names().message
    assert core.names().status == synology.FAILED
    assert core.listing() == sorted([BY_ID_DIR, *ids])
    assert len(_archive_jobs(glacier, MAPPING)) == 1
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=1", "--delay", "Bulk=6")
def test_the_mapping_job_waits_for_max_jobs(sim, glacier, task, tmp_path):
    """The mapping job is a paid job like any: with max_jobs taken it waits, and says so."""
    ids, mapping_id = task
    core = Core(sim, tmp_path / "q", max_jobs=1)
    seen: list[str] = []

    def loaded() -> bool:
        state = core.names()
        if state is not None and state.message:
            seen.append(state.message)
        return state is not None and state.status == synology.LOADED

    async def body(names: SynologyNames) -> None:
        await core.until(lambda: core.ns.vault(VAULT).inventory_date is not None)
        data = core.ns.file_by_archive(ids[1])
        await core.retrieval.request(data, tier="Bulk")   # takes the one slot for a while
        names.ensure(VAULT)
        await core.until(loaded)

    trio.run(core.run, body, False)
    assert any("max_jobs=1" in m for m in seen), seen
    assert len(_archive_jobs(glacier, MAPPING)) == 1
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=1")
def test_a_newer_mapping_archive_is_fetched_and_replaces_the_names(sim, glacier, task, tmp_path):
    ids, mapping_id = task
    core = Core(sim, tmp_path / "r")

    def loaded(archive_id: str) -> bool:
        state = core.names()
        return state is not None and state.status == synology.LOADED and \
            state.archive_id == archive_id

    trio.run(core.run, lambda names: core.until(lambda: loaded(mapping_id)))
    core.close()
    newer = upload(glacier, MAPPING, mapping_db(tmp_path / "map2.db", [
        ("photo", "renamed/IMG_1.JPG", ids[0], 1431027000, 1, 1)]).read_bytes(), "")
    trio.run(trio.sleep, 1.1)  # inventory dates have one-second resolution
    core = Core(sim, tmp_path / "r", inventory_refresh=0.1)
    assert core.listing("photo") == ["2015", "dup"]   # the stored names, at once

    async def body(names: SynologyNames) -> None:
        with trio.fail_after(120):
            while not loaded(newer):   # listed again and again, as a user would
                names._checked.clear()
                names.ensure(VAULT)
                await core.until(lambda: VAULT not in names._running, timeout=120)
                await trio.sleep(0.3)

    trio.run(core.run, body)
    assert core.listing("photo") == ["renamed"]
    assert "docs" not in core.listing()   # no row for them now: listed by id
    assert sorted(j["ArchiveId"] for j in _archive_jobs(glacier, MAPPING)) == \
        sorted([mapping_id, newer])
    # only the mapping in use is kept in the state dir
    state_dir = core.options.state_dir
    assert [p.name for p in (state_dir / "synology").iterdir()] == \
        [mapping_path(state_dir, VAULT, newer).name]
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=5")
def test_a_remount_while_the_mapping_job_runs_waits_for_that_job(sim, glacier, task, tmp_path):
    ids, mapping_id = task
    core = Core(sim, tmp_path / "w")

    def running() -> bool:
        rec = core.retrieval.record(mapping_id)
        return rec is not None and rec.job_id is not None

    trio.run(core.run, lambda names: core.until(running))
    assert core.names().status == synology.PENDING
    assert "job InProgress" in core.names().message
    core.close()   # unmounted with the job still running

    again = Core(sim, tmp_path / "w")
    trio.run(again.run, lambda names: again.until(
        lambda: again.names().status == synology.LOADED))
    assert "photo" in again.listing()
    assert len(_archive_jobs(glacier, MAPPING)) == 1
    again.close()
