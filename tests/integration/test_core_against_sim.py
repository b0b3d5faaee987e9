"""The core (inventories, retrieval, downloader, cache) against the emulator, without FUSE."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from glacierfs.aws import glacier
from glacierfs.aws import glacier as glacier_module  # tests' ``glacier`` is a fixture
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.catalog.inventories import Inventories
from glacierfs.jobs.jobstore import JobStore
from glacierfs.catalog.namespace import Namespace
from glacierfs.options import MountOptions
from glacierfs.jobs.retrieval import NotReady, NotRequested, Retrieval
from glacierfs.sim.testing import upload, wait_job
from glacierfs.store import ROOT_INODE, Store

MIB = 1024 * 1024


class Core:
    """The mount's components wired as mount.py wires them, over one state dir."""

    def __init__(self, sim, state: Path, **opts) -> None:
        self.options = replace(MountOptions(region="us-east-1", endpoint_url=sim.url,
                                            cache_dir=state, poll=0.5, chunk_size=MIB), **opts)
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.options.state_dir)
        self.ns = Namespace(self.store)
        self.client = glacier.GlacierClient(glacier.ClientSettings(
            region="us-east-1", endpoint_url=sim.url))
        self.aclient = glacier.AsyncGlacier(self.client)
        self.cache = ChunkCache(self.options.state_dir / "chunks", 1 << 30)
        self.retrieval = Retrieval(JobStore(self.store), self.aclient, self.cache, self.options,
                                   self.ns)

    def close(self) -> None:
        self.cache.close()
        self.store.close()

    def file(self, vault: str, name: str):
        v = self.ns.lookup(self.ns.get(ROOT_INODE), vault)
        return self.ns.lookup(v, name)


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = trio.current_time() + timeout
    while not predicate():
        if trio.current_time() > deadline:
            raise AssertionError("condition not reached in time")
        await trio.sleep(0.1)


async def _load_inventory(core: Core, vault: str) -> None:
    core.ns.set_vaults([(vault, None)])
    async with trio.open_nursery() as nursery:
        inv = Inventories(core.ns, core.aclient, core.options, nursery)
        inv.ensure(vault)
        await _until(lambda: core.ns.vault(vault).inventory_status == "Succeeded")


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=1")
def test_inventory_then_restore_then_remount_without_calls(sim, glacier, vault, tmp_path):
    data = bytes(range(256)) * (3 * MIB // 256) + b"tail"
    upload(glacier, vault, data, "docs/report.bin")
    core = Core(sim, tmp_path)

    async def main() -> None:
        await _load_inventory(core, vault)
        entry = core.file(vault, "docs")
        assert entry is not None
        f = core.ns.lookup(entry, "report.bin")
        assert f.size == len(data)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.retrieval.run)
            with pytest.raises(NotRequested):
                await core.retrieval.read(f, 0, 100, may_start=False)
            with pytest.raises(NotReady):
                await core.retrieval.read(f, 0, 100, may_start=True)
            await _until(lambda: core.cache.state(core.retrieval.layout(f)) == "cached")
            got = await core.retrieval.read(f, MIB - 10, MIB + 20, may_start=True)
            assert got == data[MIB - 10: 2 * MIB + 10]
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert sim.stats()["requests"].get("InitiateJob") == 2  # one inventory, one archive
    core.close()

    # Remount: everything needed is stored; the emulator is stopped to prove no call is made.
    sim.stop()
    core2 = Core(sim, tmp_path)

    async def again() -> None:
        f = core2.ns.lookup(core2.file(vault, "docs"), "report.bin")
        assert await core2.retrieval.read(f, 0, len(data), may_start=True) == data

    trio.run(again)
    core2.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=1")
def test_job_started_elsewhere_is_reused(sim, glacier, vault, tmp_path):
    archive_id = upload(glacier, vault, b"x" * 5000, "shared.txt")
    other = glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive_id, "Tier": "Standard"})["jobId"]
    core = Core(sim, tmp_path)

    async def main() -> None:
        await _load_inventory(core, vault)
        f = core.file(vault, "shared.txt")
        sim.reset_stats()
        rec = await core.retrieval.request(f)
        assert rec.job_id == other
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.retrieval.run)
            await _until(lambda: core.cache.state(core.retrieval.layout(f)) == "cached")
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert "InitiateJob" not in sim.stats()["requests"]
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5")
def test_newer_inventory_replaces_the_tree(sim, glacier, vault, tmp_path):
    upload(glacier, vault, b"1", "one.txt")
    core = Core(sim, tmp_path, inventory_refresh=0.1)

    async def main() -> None:
        await _load_inventory(core, vault)
        assert core.file(vault, "one.txt") is not None
        first_job = core.ns.vault(vault).inventory_job_id
        upload(glacier, vault, b"2", "two.txt")
        time.sleep(1.1)  # inventory dates have one-second resolution
        async with trio.open_nursery() as nursery:
            inv = Inventories(core.ns, core.aclient, core.options, nursery)
            await trio.sleep(0.2)
            inv.ensure(vault)
            await _until(lambda: core.ns.vault(vault).inventory_job_id != first_job
                         and core.ns.vault(vault).inventory_status == "Succeeded")
        assert core.file(vault, "two.txt") is not None
        assert core.file(vault, "one.txt") is not None

    trio.run(main)
    core.close()


def test_wait_job_helper_is_available(sim, glacier, vault):
    # guards the helper the tests above rely on for pacing
    aid = upload(glacier, vault, b"abc", "")
    job = glacier.initiate_job(vaultName=vault, jobParameters={"Type": "archive-retrieval",
                                                               "ArchiveId": aid})["jobId"]
    sim.complete_jobs(job_id=job)
    assert wait_job(glacier, vault, job)["StatusCode"] == "Succeeded"


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=1")
def test_full_state_disk_holds_the_paid_call_until_the_job_can_be_recorded(
        sim, glacier, vault, tmp_path, monkeypatch):
    """A job is recorded before InitiateJob is sent (so a crash never pays twice). With the
    state database full, no job is started and the file says why; once there is room the
    same request goes ahead, once."""
    from glacierfs.jobs import lifecycle
    monkeypatch.setattr(lifecycle, "LOCAL_RETRY", 0.5)
    data = b"kept safe " * 1000
    upload(glacier, vault, data, "full.txt")
    core = Core(sim, tmp_path)

    async def main() -> None:
        await _load_inventory(core, vault)
        f = core.file(vault, "full.txt")
        core.store.db.set_authorizer(_refuse_job_writes)  # every write to jobs fails now
        sim.reset_stats()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.retrieval.run)
            with pytest.raises(NotReady):
                await core.retrieval.read(f, 0, 100, may_start=True)
            rec = core.retrieval.records[f.archive_id]
            assert "cannot be recorded" in (rec.status_message or "")
            await trio.sleep(1.5)  # retries meanwhile find the disk still full
            assert "InitiateJob" not in sim.stats()["requests"]
            core.store.db.set_authorizer(None)
            await _until(lambda: core.cache.state(core.retrieval.layout(f)) == "cached")
            assert await core.retrieval.read(f, 0, len(data), may_start=True) == data
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert sim.stats()["requests"].get("InitiateJob") == 1
    stored = JobStore(core.store).load_all()[core.file(vault, "full.txt").archive_id]
    assert stored.state == "Succeeded"  # the record reached the disk once there was room
    core.close()


def _refuse_job_writes(action: int, table: str | None, *_: object) -> int:
    """A state database that refuses every change to the jobs table, as a full disk would
    (the real SQLite error path, made deterministic)."""
    if table == "jobs" and action in (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE,
                                      sqlite3.SQLITE_DELETE):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


@pytest.mark.sim_args("--delay", "inventory=0.5")
def test_an_output_that_is_no_inventory_changes_nothing(sim, glacier, vault, tmp_path,
                                                        monkeypatch):
    """A refresh whose job output is not an inventory at all (a proxy's HTML page, say): the
    vault keeps its listing, its message says why, and nothing crashes."""
    upload(glacier, vault, b"1", "one.txt")
    core = Core(sim, tmp_path, inventory_refresh=0.1)

    def html_page(self, vault_name, job_id, dest, block=0):  # noqa: ARG001
        dest.write(b"<html><body>502 Bad Gateway</body></html>")
        return {"contentType": "text/html", "checksum": None}

    async def main() -> None:
        await _load_inventory(core, vault)
        first_job = core.ns.vault(vault).inventory_job_id
        upload(glacier, vault, b"2", "two.txt")
        time.sleep(1.1)  # inventory dates have one-second resolution
        monkeypatch.setattr(glacier_module.GlacierClient, "download_job_output", html_page)
        async with trio.open_nursery() as nursery:
            inv = Inventories(core.ns, core.aclient, core.options, nursery)
            await trio.sleep(0.2)
            inv.ensure(vault)
            await _until(lambda: "not an inventory" in (core.ns.vault(vault).inventory_message
                                                        or ""))
            assert not inv._running  # the task ended; the nursery (the mount) is unharmed
        info = core.ns.vault(vault)  # still the listing, and the job, that was loaded
        assert info.inventory_status == "Succeeded" and info.inventory_job_id == first_job
        assert core.file(vault, "one.txt") is not None and core.file(vault, "two.txt") is None
        # The next refresh takes the newer job's output again (no new job) and it loads.
        monkeypatch.undo()
        initiated = sim.stats()["requests"].get("InitiateJob")
        async with trio.open_nursery() as nursery:
            inv = Inventories(core.ns, core.aclient, core.options, nursery)
            await trio.sleep(0.2)
            inv.ensure(vault)
            await _until(lambda: core.file(vault, "two.txt") is not None)
        assert sim.stats()["requests"].get("InitiateJob") == initiated
        assert core.ns.vault(vault).inventory_message is None

    trio.run(main)
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5")
def test_an_unexpected_error_costs_one_vault_not_the_mount(sim, glacier, vault, tmp_path,
                                                          monkeypatch):
    """Whatever goes wrong inside one vault's inventory task (here an ingest that raises
    something nobody planned for) ends that task with a message, not the mount's nursery."""
    upload(glacier, vault, b"1", "one.txt")
    core = Core(sim, tmp_path)
    from glacierfs.catalog import inventories as inventories_module

    def broken(*args, **kwargs):
        raise RuntimeError("unplanned")

    monkeypatch.setattr(inventories_module, "ingest_inventory", broken)

    async def main() -> None:
        core.ns.set_vaults([(vault, None)])
        async with trio.open_nursery() as nursery:
            inv = Inventories(core.ns, core.aclient, core.options, nursery)
            inv.ensure(vault)
            await _until(lambda: "internal error" in (core.ns.vault(vault).inventory_message
                                                      or ""))
            await trio.sleep(0.2)
            assert not inv._running
        assert "unplanned" in core.ns.vault(vault).inventory_message

    trio.run(main)
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=1")
def test_cache_of_the_previous_release_is_read_after_the_upgrade_without_calls(
        sim, glacier, vault, tmp_path):
    """The chunks a mount of the previous release stored (one diskcache value file per chunk)
    are read after the upgrade: no new job, no GetJobOutput (the emulator is stopped)."""
    import diskcache

    from glacierfs.cache.layout import chunk_key

    data = bytes(range(256)) * (3 * MIB // 256) + b"tail"
    upload(glacier, vault, data, "old/report.bin")
    core = Core(sim, tmp_path)

    async def main() -> None:
        await _load_inventory(core, vault)
        f = core.ns.lookup(core.file(vault, "old"), "report.bin")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.retrieval.run)
            with pytest.raises(NotReady):
                await core.retrieval.read(f, 0, 100, may_start=True)
            await _until(lambda: core.cache.state(core.retrieval.layout(f)) == "cached")
            nursery.cancel_scope.cancel()
        return core.retrieval.layout(f)

    layout = trio.run(main)
    hashes = core.cache.chunk_tree_hashes(layout)
    core.close()
    requests = dict(sim.stats()["requests"])

    # The same chunks as the previous release kept them: rewrite the store in its format.
    chunks = core.options.state_dir / "chunks"
    for path in sorted(chunks.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    old = diskcache.Cache(str(chunks), size_limit=1 << 40, eviction_policy="least-recently-used",
                          cull_limit=0, disk_min_file_size=0, statistics=0, tag_index=0)
    for i in range(layout.chunk_count):
        start, end = layout.chunk_range(i)
        old.set(chunk_key(layout, i), data[start:end + 1], tag=hashes[i])
    old.close()
    assert list(chunks.glob("*/*/*.val"))

    sim.stop()
    core2 = Core(sim, tmp_path)

    async def again() -> None:
        f = core2.ns.lookup(core2.file(vault, "old"), "report.bin")
        assert await core2.retrieval.read(f, 0, len(data), may_start=True) == data

    trio.run(again)
    core2.close()
    assert not list(chunks.glob("*/*/*.val"))
    assert requests.get("InitiateJob") == 2  # the inventory and the archive, before the upgrade
