"""Select jobs in the daemon's core (SelectJobs with a real GlacierClient over HTTP against the
emulator, moto's S3 server as the output bucket): a crash between recording a job and sending
InitiateJob, or a lost InitiateJob answer, still ends with exactly one job."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from glacierfs.aws import glacier
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.catalog.inventories import Inventories
from glacierfs.jobs.jobstore import INITIATING, JobStore
from glacierfs.catalog.namespace import Namespace
from glacierfs.options import MountOptions
from glacierfs.jobs.retrieval import Retrieval
from glacierfs.jobs.selectjobs import SelectJobs, SelectRecord
from glacierfs.jobs.selectspec import SelectRequest
from glacierfs.sim import s3server
from glacierfs.sim.testing import SimProcess, upload
from glacierfs.store import ROOT_INODE, Store

VAULT = "v"
BUCKET = "out"
MIB = 1024 * 1024
SPEC = SelectRequest.build(query="SELECT _2 FROM archive WHERE _1 = '2'", bucket=BUCKET,
                           prefix="core", tier="Standard", header="none", delimiter=",")


@pytest.fixture(scope="module")
def s3():
    local = s3server.start(buckets=(BUCKET,))
    yield local
    local.stop()


@pytest.fixture
def sim(s3, tmp_path):
    proc = SimProcess(tmp_path / "data", args=["--s3-endpoint", s3.url, "--delay",
                                               "inventory=0.3", "--delay", "Standard=60"],
                      log_path=tmp_path / "sim.log")
    yield proc
    proc.stop()


class Core:
    def __init__(self, sim, state: Path) -> None:
        self.options = replace(MountOptions(region="us-east-1", endpoint_url=sim.url,
                                            cache_dir=state, poll=0.3, chunk_size=MIB))
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.options.state_dir)
        self.ns = Namespace(self.store)
        self.client = glacier.GlacierClient(glacier.ClientSettings(region="us-east-1",
                                                                   endpoint_url=sim.url))
        self.aclient = glacier.AsyncGlacier(self.client)
        self.cache = ChunkCache(self.options.state_dir / "chunks", 1 << 30)
        self.retrieval = Retrieval(JobStore(self.store), self.aclient, self.cache, self.options,
                                   self.ns)
        self.selects = SelectJobs(self.store, self.aclient, self.options, self.retrieval)
        self.retrieval.extra_in_flight = self.selects.in_flight

    def close(self) -> None:
        self.cache.close()
        self.store.close()

    def file(self, name: str):
        return self.ns.lookup(self.ns.lookup(self.ns.get(ROOT_INODE), VAULT), name)


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = trio.current_time() + timeout
    while not predicate():
        if trio.current_time() > deadline:
            raise AssertionError("condition not reached in time")
        await trio.sleep(0.05)


def _setup(sim, tmp_path) -> Core:
    client = sim.client(max_attempts=1)
    client.create_vault(vaultName=VAULT)
    upload(client, VAULT, b"1,a\n2,b\n3,c\n", "t.csv")
    core = Core(sim, tmp_path / "state")

    async def load() -> None:
        core.ns.set_vaults([(VAULT, None)])
        async with trio.open_nursery() as nursery:
            Inventories(core.ns, core.aclient, core.options, nursery).ensure(VAULT)
            await _until(lambda: core.ns.vault(VAULT).inventory_status == "Succeeded")
            nursery.cancel_scope.cancel()
    trio.run(load)
    return core


def _select_jobs(sim) -> list[dict]:
    jobs = sim.client(max_attempts=1).list_jobs(vaultName=VAULT)["JobList"]
    return [j for j in jobs if j["Action"] == "Select"]


def _crashed_record(core: Core) -> SelectRecord:
    entry = core.file("t.csv")
    rec = SelectRecord(key=SPEC.key(VAULT, entry.archive_id), archive_id=entry.archive_id,
                       vault=VAULT, state=INITIATING, tier="Standard", size=entry.size,
                       request=SPEC.to_json(), requested_at=time.time(),
                       initiated_at=time.time())
    core.selects._save(rec)
    return rec


def _restart_and_settle(sim, tmp_path, core: Core) -> Core:
    core.close()
    again = Core(sim, tmp_path / "state")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(again.selects.run)
            await _until(lambda: all(r.state == "InProgress"
                                     for r in again.selects.records.values()))
            await trio.sleep(1.0)  # more rounds change nothing
            nursery.cancel_scope.cancel()
    trio.run(main)
    return again


def test_crash_before_initiatejob_starts_exactly_one_job(sim, tmp_path):
    core = _setup(sim, tmp_path)
    _crashed_record(core)
    before = sim.stats()["requests"].get("InitiateJob", 0)
    core = _restart_and_settle(sim, tmp_path, core)
    assert sim.stats()["requests"].get("InitiateJob", 0) == before + 1
    assert len(_select_jobs(sim)) == 1
    (rec,) = core.selects.records.values()
    assert rec.job_id == _select_jobs(sim)[0]["JobId"]
    assert rec.output_path == f"core/{rec.job_id}/"
    core.close()


def test_crash_after_initiatejob_adopts_the_job(sim, tmp_path):
    core = _setup(sim, tmp_path)
    rec = _crashed_record(core)
    job = sim.client(max_attempts=1).initiate_job(vaultName=VAULT, jobParameters={
        "Type": "select", "ArchiveId": rec.archive_id, "Tier": "Standard",
        "SelectParameters": SPEC.select_parameters(), "OutputLocation": SPEC.output_location()})
    before = sim.stats()["requests"].get("InitiateJob", 0)
    core = _restart_and_settle(sim, tmp_path, core)
    assert sim.stats()["requests"].get("InitiateJob", 0) == before
    assert [r.job_id for r in core.selects.records.values()] == [job["jobId"]]
    assert core.retrieval.jobs.spent_in_window() == rec.size  # spent once, when adopted
    core.close()


def test_lost_initiatejob_answer_adopts_the_job(sim, tmp_path):
    core = _setup(sim, tmp_path)
    sim.add_fault({"operation": "InitiateJob", "fault": "drop", "count": 1})

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.selects.run)
            rec = await core.selects.request(core.file("t.csv"), SPEC)
            assert rec.state == INITIATING  # no answer: the job may have started
            core.selects.records[rec.key].next_poll = time.time()
            await _until(lambda: rec.state == "InProgress")
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert sim.stats()["requests"].get("InitiateJob", 0) == 2  # the inventory and this one
    assert len(_select_jobs(sim)) == 1
    core.close()
