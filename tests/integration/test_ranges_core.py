"""Ranged retrievals against the emulator, without FUSE: the emulator's range tree hashes, reads
that retrieve only their windows, a whole restore that completes an archive with no overlapping
job, budget pacing across (test-clock) days, and the jobs table migration."""

from __future__ import annotations

import random
import sqlite3
import time

import pytest
import trio
from test_core_against_sim import Core, _load_inventory, _until

from glacierfs.jobs.retrieval import NotReady, RetrievalFailed

from glacierfs.jobs.jobstore import JobRecord, JobStore
from glacierfs.sim.testing import upload, wait_job
from glacierfs.store import Store
from glacierfs.treehash import tree_hash_hex

MIB = 1024 * 1024


def _archive_jobs(glacier, vault: str) -> list[dict]:
    return [j for j in glacier.list_jobs(vaultName=vault)["JobList"]
            if j["Action"] == "ArchiveRetrieval"]


def _ranges(jobs: list[dict], size: int) -> list[tuple[int, int]]:
    out = []
    for j in jobs:
        start, end = map(int, (j.get("RetrievalByteRange") or f"0-{size - 1}").split("-"))
        out.append((start, end))
    return sorted(out)


def _assert_disjoint(ranges: list[tuple[int, int]]) -> None:
    for (s1, e1), (s2, e2) in zip(ranges, ranges[1:], strict=False):
        assert e1 < s2, f"overlapping jobs: {s1}-{e1} and {s2}-{e2}"


@pytest.mark.sim_args("--delay", "Standard=0")
def test_emulator_returns_the_documented_range_tree_hash(sim, glacier, vault):
    """DescribeJob's SHA256TreeHash of a tree-hash-aligned range is the tree hash of those bytes
    (also the short last range); a ranged job's output answers Range requests relative to the
    range start, with each aligned chunk's tree hash; an unaligned range has none."""
    data = random.Random(5).randbytes(7 * MIB + 1234)
    archive_id = upload(glacier, vault, data, "seven.bin")
    for start, end in ((0, 4 * MIB - 1), (4 * MIB, 6 * MIB - 1), (6 * MIB, len(data) - 1),
                       (2 * MIB, 3 * MIB - 1)):
        job_id = glacier.initiate_job(vaultName=vault, jobParameters={
            "Type": "archive-retrieval", "ArchiveId": archive_id,
            "RetrievalByteRange": f"{start}-{end}"})["jobId"]
        job = wait_job(glacier, vault, job_id)
        assert job["RetrievalByteRange"] == f"{start}-{end}"
        assert job["SHA256TreeHash"] == tree_hash_hex(data[start:end + 1])
        out = glacier.get_job_output(vaultName=vault, jobId=job_id, range=f"bytes=0-{MIB - 1}")
        assert out["body"].read() == data[start:start + MIB]
        assert out["checksum"] == tree_hash_hex(data[start:start + MIB])
    job_id = glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive_id,
        "RetrievalByteRange": f"{MIB}-{3 * MIB - 1}"})["jobId"]   # MB-aligned, not a tree node
    assert wait_job(glacier, vault, job_id).get("SHA256TreeHash") is None


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=0.5")
def test_reads_retrieve_only_their_windows_then_a_restore_completes_without_overlap(
        sim, glacier, vault, tmp_path):
    data = random.Random(7).randbytes(10 * MIB + 4321)
    upload(glacier, vault, data, "big.bin")
    core = Core(sim, tmp_path, range_size=2 * MIB, wait=10.0)

    async def main() -> None:
        await _load_inventory(core, vault)
        f = core.file(vault, "big.bin")
        sim.reset_stats()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.retrieval.run)
            # A read inside the window 4-6 MiB: one ranged job for that window only.
            got = await core.retrieval.read(f, 5 * MIB - 100, 200, may_start=True)
            assert got == data[5 * MIB - 100:5 * MIB + 100]
            jobs = _archive_jobs(glacier, vault)
            assert _ranges(jobs, len(data)) == [(4 * MIB, 6 * MIB - 1)]
            # A read across a window boundary: the two windows it touches (one already there).
            got = await core.retrieval.read(f, 6 * MIB - 10, 20, may_start=True)
            assert got == data[6 * MIB - 10:6 * MIB + 10]
            assert _ranges(_archive_jobs(glacier, vault), len(data)) == [
                (4 * MIB, 6 * MIB - 1), (6 * MIB, 8 * MIB - 1)]
            rec = core.retrieval.record(f.archive_id)
            assert rec is not None and "ranges requested" in (rec.status_message or "")
            summary = core.retrieval.ranges.summary(f, core.retrieval.layout(f))
            assert summary["requested"] == 2 and summary["windows"] == 6
            # The whole archive: the missing windows only, then the root verified.
            await core.retrieval.request(f, explicit=True)
            await _until(lambda: core.cache.state(core.retrieval.layout(f)) == "cached", 30)
            await _until(lambda: "verified" in (core.retrieval.record(f.archive_id)
                                                .status_message or ""))
            assert await core.retrieval.read(f, 0, len(data), may_start=True) == data
            nursery.cancel_scope.cancel()

    trio.run(main)
    ranges = _ranges(_archive_jobs(glacier, vault), len(data))
    _assert_disjoint(ranges)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data) - 1
    assert sum(e - s + 1 for s, e in ranges) == len(data)   # every byte paid for once
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=0.2")
def test_budget_paces_an_archive_larger_than_the_budget_across_days(sim, glacier, vault,
                                                                    tmp_path):
    data = random.Random(9).randbytes(6 * MIB)
    upload(glacier, vault, data, "paced.bin")
    now = [1_000_000.0]
    core = Core(sim, tmp_path, range_size=2 * MIB, budget=2 * MIB)
    core.retrieval.jobs = JobStore(core.store, clock=lambda: now[0])

    async def main() -> None:
        await _load_inventory(core, vault)
        f = core.file(vault, "paced.bin")
        layout = core.retrieval.layout(f)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.retrieval.run)
            await core.retrieval.request(f, explicit=True)
            for day in range(3):
                await _until(lambda d=day: core.cache.cached_bytes(layout) == 2 * MIB * (d + 1),
                             30)
                await trio.sleep(1.5)
                assert len(_archive_jobs(glacier, vault)) == day + 1   # nothing early
                summary = core.retrieval.ranges.summary(f, layout)
                if day < 2:
                    assert summary["queued"] == 2 - day
                    assert "budget" in core.retrieval.record(f.archive_id).status_message
                now[0] += 86400 + 1
                core.retrieval._queue_wake.set()
            await _until(lambda: core.cache.state(layout) == "cached")
            assert await core.retrieval.read(f, 0, len(data), may_start=True) == data
            nursery.cancel_scope.cancel()

    trio.run(main)
    _assert_disjoint(_ranges(_archive_jobs(glacier, vault), len(data)))
    core.close()


def test_existing_state_dir_is_migrated_whole_archive_records_kept(tmp_path):
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript("""
        CREATE TABLE jobs (archive_id TEXT PRIMARY KEY, vault TEXT NOT NULL, state TEXT NOT NULL,
            job_id TEXT, tier TEXT NOT NULL, size INTEGER NOT NULL, tree_hash TEXT,
            creation_date TEXT, completion_date TEXT, status_message TEXT,
            requested_at REAL NOT NULL, initiated_at REAL, next_poll REAL);
        CREATE INDEX jobs_by_state ON jobs(state, requested_at);
        INSERT INTO jobs VALUES ('A1', 'v', 'Succeeded', 'J1', 'Bulk', 123, 'ab', NULL, NULL,
            'downloaded and verified', 5.0, 4.0, NULL);
    """)
    db.commit()
    db.close()
    store = Store(tmp_path)
    records = JobStore(store).load_all()
    assert list(records) == ["A1"]
    rec = records["A1"]
    assert (rec.job_id, rec.state, rec.tier, rec.size, rec.ranged) == \
        ("J1", "Succeeded", "Bulk", 123, False)
    rec2 = type(rec)(archive_id="A1", vault="v", state="Queued", tier="Standard", size=MIB,
                     tree_hash=None, requested_at=6.0, range_start=0, range_end=MIB - 1)
    assert JobStore(store).save(rec2)
    store.close()
    again = JobStore(Store(tmp_path)).load_all()   # migrated once; both records kept
    assert set(again) == {"A1", f"A1@0-{MIB - 1}"}


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=0.3")
def test_expired_range_output_is_requested_again_for_that_range_only(sim, glacier, vault,
                                                                     tmp_path):
    data = random.Random(13).randbytes(8 * MIB)
    upload(glacier, vault, data, "expiring.bin")
    core = Core(sim, tmp_path, range_size=4 * MIB, downloads=1)
    seen: list[int] = []

    async def main() -> None:
        await _load_inventory(core, vault)
        f = core.file(vault, "expiring.bin")
        layout = core.retrieval.layout(f)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.retrieval.run)

            async def watch() -> None:
                while True:
                    seen.append(core.cache.cached_bytes(layout))
                    await trio.sleep(0.02)

            nursery.start_soon(watch)
            sim.set_faults([{"operation": "GetJobOutput", "fault": "slow", "delay": 0.3}])
            sim.reset_stats()
            with pytest.raises(NotReady):
                await core.retrieval.read(f, 5 * MIB, 100, may_start=True)
            rec = core.retrieval.ranges.covering(layout, 5)
            assert rec is not None and rec.byte_range == f"{4 * MIB}-{8 * MIB - 1}"
            await _until(lambda: core.cache.cached_bytes(layout) >= 2 * MIB, 30)
            first_job = rec.job_id
            sim.expire_job(first_job)
            deadline = trio.current_time() + 60
            while True:
                try:
                    got = await core.retrieval.read(f, 4 * MIB, 4 * MIB, may_start=True)
                    break
                except NotReady:
                    assert trio.current_time() < deadline
                    await trio.sleep(0.2)
            assert got == data[4 * MIB:]
            assert rec.job_id != first_job and rec.byte_range == f"{4 * MIB}-{8 * MIB - 1}"
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False)), seen  # chunks kept
    stats = sim.stats()
    assert stats["requests"]["InitiateJob"] == 2          # the range, then the range again
    assert stats["bytes_sent"] < 2 * 4 * MIB               # no verified chunk fetched twice
    ranges = _ranges(_archive_jobs(glacier, vault), len(data))
    assert ranges == [(4 * MIB, 8 * MIB - 1)]              # the expired one is no longer listed
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=0.3")
def test_a_streaming_reader_gets_the_next_window_requested_ahead(sim, glacier, vault, tmp_path):
    data = random.Random(17).randbytes(8 * MIB)
    upload(glacier, vault, data, "stream.tar")
    core = Core(sim, tmp_path, range_size=2 * MIB, wait=10.0)

    async def main() -> None:
        await _load_inventory(core, vault)
        f = core.file(vault, "stream.tar")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.retrieval.run)
            got = b""
            for offset in range(0, 2 * MIB + 256 * 1024, 128 * 1024):  # a window and a bit
                got += await core.retrieval.read(f, offset, 128 * 1024, may_start=True)
            await trio.sleep(0.5)
            ranges = _ranges(_archive_jobs(glacier, vault), len(data))
            # windows 0 and 1 read; window 2 requested ahead; window 3 not (bounded)
            assert ranges == [(0, 2 * MIB - 1), (2 * MIB, 4 * MIB - 1), (4 * MIB, 6 * MIB - 1)]
            assert got == data[:len(got)]
            nursery.cancel_scope.cancel()

    trio.run(main)
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5")
def test_expedited_restore_of_a_big_archive_asks_for_ranges_under_250_mb(sim, glacier, vault,
                                                                         tmp_path):
    """Glacier documents Expedited for archives under 250 MB: a 300 MiB archive restored
    Expedited is asked for in 128 MiB ranges, all Expedited; Standard keeps one whole job."""
    sim.synthesize(vault, 2, 300 * MIB, "disk-{i}.img")
    core = Core(sim, tmp_path)

    async def main() -> None:
        await _load_inventory(core, vault)
        fast, slow = core.file(vault, "disk-0.img"), core.file(vault, "disk-1.img")
        await core.retrieval.request(fast, tier="Expedited", explicit=True)
        await core.retrieval.request(slow, tier="Standard", explicit=True)
        jobs = _archive_jobs(glacier, vault)
        expedited = [j for j in jobs if j["ArchiveId"] == fast.archive_id]
        assert _ranges(expedited, fast.size) == [
            (0, 128 * MIB - 1), (128 * MIB, 256 * MIB - 1), (256 * MIB, 300 * MIB - 1)]
        assert {j["Tier"] for j in expedited} == {"Expedited"}
        standard = [j for j in jobs if j["ArchiveId"] == slow.archive_id]
        assert len(standard) == 1 and standard[0].get("RetrievalByteRange") in (
            None, f"0-{slow.size - 1}")

    trio.run(main)
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=0.3")
def test_a_ranged_job_started_elsewhere_is_adopted_for_what_it_covers(sim, glacier, vault,
                                                                      tmp_path):
    """Another machine retrieved bytes 4-8 MiB: a read there adopts its job (no InitiateJob);
    a read at 1 MiB starts its own window; a whole restore then asks only for what neither
    covers."""
    data = random.Random(19).randbytes(12 * MIB)
    archive_id = upload(glacier, vault, data, "shared.img")
    glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive_id,
        "RetrievalByteRange": f"{4 * MIB}-{8 * MIB - 1}"})
    core = Core(sim, tmp_path, range_size=2 * MIB, wait=10.0)

    async def main() -> None:
        await _load_inventory(core, vault)
        f = core.file(vault, "shared.img")
        sim.reset_stats()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.retrieval.run)
            assert await core.retrieval.read(f, 6 * MIB, 10, may_start=True) == \
                data[6 * MIB:6 * MIB + 10]
            assert "InitiateJob" not in sim.stats()["requests"]
            assert await core.retrieval.read(f, MIB, 10, may_start=True) == data[MIB:MIB + 10]
            await core.retrieval.request(f, explicit=True)
            await _until(lambda: core.cache.state(core.retrieval.layout(f)) == "cached", 30)
            assert await core.retrieval.read(f, 0, len(data), may_start=True) == data
            nursery.cancel_scope.cancel()

    trio.run(main)
    ranges = _ranges(_archive_jobs(glacier, vault), len(data))
    _assert_disjoint(ranges)
    assert (4 * MIB, 8 * MIB - 1) in ranges
    assert sum(e - s + 1 for s, e in ranges) == len(data)
    assert sim.stats()["requests"]["InitiateJob"] == len(ranges) - 1
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=30")
def test_a_failed_range_fails_the_file_until_restored_again(sim, glacier, vault, tmp_path):
    data = random.Random(23).randbytes(6 * MIB)
    upload(glacier, vault, data, "failing.bin")
    core = Core(sim, tmp_path, range_size=2 * MIB)

    async def main() -> None:
        await _load_inventory(core, vault)
        f = core.file(vault, "failing.bin")
        layout = core.retrieval.layout(f)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.retrieval.run)
            with pytest.raises(NotReady):
                await core.retrieval.read(f, 3 * MIB, 10, may_start=True)
            rec = core.retrieval.ranges.covering(layout, 3)
            await _until(lambda: rec.job_id is not None)
            sim.fail_job(rec.job_id, "The job failed.")
            sim.complete_jobs()
            await _until(lambda: rec.state == "Failed")
            for offset in (3 * MIB, 0):   # the failed range, and another: the file is failed
                with pytest.raises(RetrievalFailed):
                    await core.retrieval.read(f, offset, 10, may_start=True)
            assert core.retrieval.record(f.archive_id).public_status == "Failed"
            sim.set_delays(Standard=0.3)
            await core.retrieval.request(f, explicit=True)   # replaces the failed range
            await _until(lambda: core.cache.state(layout) == "cached", 30)
            assert await core.retrieval.read(f, 0, len(data), may_start=True) == data
            nursery.cancel_scope.cancel()

    trio.run(main)
    core.close()


@pytest.mark.sim_args("--delay", "inventory=0.5", "--delay", "Standard=0.3")
def test_a_range_left_initiating_by_a_crash_adopts_its_job(sim, glacier, vault, tmp_path):
    """The record of bytes 2-4 MiB was saved Initiating and the daemon died after InitiateJob
    reached Glacier: the next start finds that job (same range) in ListJobs, pays nothing."""
    data = random.Random(29).randbytes(8 * MIB)
    archive_id = upload(glacier, vault, data, "crash.bin")
    core = Core(sim, tmp_path, range_size=2 * MIB, wait=10.0)

    async def load() -> None:
        await _load_inventory(core, vault)

    trio.run(load)
    glacier.initiate_job(vaultName=vault, jobParameters={      # the one that reached Glacier
        "Type": "archive-retrieval", "ArchiveId": archive_id,
        "RetrievalByteRange": f"{2 * MIB}-{4 * MIB - 1}"})
    glacier.initiate_job(vaultName=vault, jobParameters={      # someone else's, other bytes
        "Type": "archive-retrieval", "ArchiveId": archive_id,
        "RetrievalByteRange": f"{4 * MIB}-{8 * MIB - 1}"})
    rec = JobRecord(archive_id=archive_id, vault=vault, state="Initiating", tier="Standard",
                    size=2 * MIB, tree_hash=None, requested_at=time.time(),
                    initiated_at=time.time(), range_start=2 * MIB, range_end=4 * MIB - 1)
    assert JobStore(core.store).save(rec)
    core.close()
    core = Core(sim, tmp_path, range_size=2 * MIB, wait=10.0)   # the restart

    async def main() -> None:
        f = core.file(vault, "crash.bin")
        sim.reset_stats()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(core.retrieval.run)
            assert await core.retrieval.read(f, 3 * MIB, 10, may_start=True) == \
                data[3 * MIB:3 * MIB + 10]
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert "InitiateJob" not in sim.stats()["requests"]
    _assert_disjoint(_ranges(_archive_jobs(glacier, vault), len(data)))
    core.close()
