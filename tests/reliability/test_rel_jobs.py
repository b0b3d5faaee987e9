"""Job faults: a job that fails, output that expires before or during the download,
InsufficientCapacity for Expedited, PolicyEnforcedException, an InitiateJob answer lost on
the way back. Checked at the retrieval core against the emulator; the errno side of the same
scenarios is in test_rel_mount.py.
"""

from __future__ import annotations

import pytest
import trio
from rel_util import (MIB, Archive, core, count_duplicate_jobs, count_faults, options,
                      unverified_files, upload)

from glacierfs.fuse import xattrs
from glacierfs.jobs.jobstore import FAILED, IN_PROGRESS, QUEUED, SUCCEEDED
from glacierfs.jobs.retrieval import NotReady, RetrievalFailed

pytestmark = pytest.mark.sim_args("--delay", "Standard=0.5", "--delay", "Expedited=0.2",
                                  "--seed", "5")


def _archives(sim, vault: str, sizes: list[int]) -> list[Archive]:
    client = sim.client()
    client.create_vault(vaultName=vault)
    return [upload(client, vault, size, seed=100 + i, description=f"f{i}.bin")
            for i, size in enumerate(sizes)]


def _initiates(sim) -> int:
    return sim.stats()["requests"].get("InitiateJob", 0)


def test_failed_job_is_reported_and_a_new_restore_starts_a_new_job(sim, tmp_path, fast):
    [a] = _archives(sim, "v", [2 * MIB])
    sim.set_faults([{"operation": "InitiateJob", "fault": "job_failed", "count": 1}])
    opts = options(sim, tmp_path / "cache")

    async def main() -> None:
        async with core(opts, "v", [a]) as c:
            with pytest.raises(NotReady):
                await c.retrieval.read(c.entry(a), 0, a.size, True)
            rec = c.retrieval.record(a.archive_id)
            await c.wait_for(lambda: rec.state == FAILED, what="job failed")
            attrs = xattrs.file_attributes(c.entry(a), c.retrieval)
            assert attrs["user.glacier.job.status"] == "Failed"
            assert "could not be retrieved" in attrs["user.glacier.job.status_message"]
            # Plain reads report the failure and never pay again.
            before = _initiates(sim)
            for _ in range(5):
                with pytest.raises(RetrievalFailed):
                    await c.retrieval.read(c.entry(a), 0, a.size, True)
            assert _initiates(sim) == before
            # An explicit restore starts a new job, which succeeds.
            await c.retrieval.request(c.entry(a), explicit=True)
            assert _initiates(sim) == before + 1
            await c.read_when_ready(a)

    trio.run(main)
    assert count_faults(sim) == 1
    assert count_duplicate_jobs(sim.client(), "v") == 0


def test_output_expired_during_download_keeps_verified_chunks(sim, tmp_path, fast):
    [a] = _archives(sim, "v", [6 * MIB])
    opts = options(sim, tmp_path / "cache", downloads=1)
    seen: list[int] = []

    async def main() -> None:
        async with core(opts, "v", [a]) as c:
            layout = c.retrieval.layout(c.entry(a))

            async def watch() -> None:
                while True:
                    seen.append(c.cache.cached_bytes(layout))
                    await trio.sleep(0.02)

            sim.set_faults([{"operation": "GetJobOutput", "fault": "slow", "delay": 0.2}])
            await c.retrieval.request(c.entry(a), explicit=True)
            rec = c.retrieval.record(a.archive_id)
            first_job = rec.job_id
            async with trio.open_nursery() as n:
                n.start_soon(watch)
                await c.wait_for(lambda: c.cache.cached_bytes(layout) >= 2 * MIB,
                                 what="two chunks")
                sim.expire_job(first_job)
                await c.read_when_ready(a, timeout=60)
                n.cancel_scope.cancel()
            assert rec.job_id != first_job
            assert "expired" in (rec.status_message or "") or rec.state == SUCCEEDED

    trio.run(main)
    count_faults(sim)
    # Verified bytes only ever grew: the new job continued where the old one stopped.
    assert all(b >= a_ for a_, b in zip(seen, seen[1:], strict=False)), seen
    assert max(seen) > 0
    stats = sim.stats()
    assert stats["requests"]["InitiateJob"] == 2
    assert stats["bytes_sent"] < 2 * a.size  # not downloaded twice
    assert count_duplicate_jobs(sim.client(), "v") == 0
    assert unverified_files(opts.state_dir / "chunks", [a]) == []


def test_output_expired_while_unmounted(sim, tmp_path, fast):
    """Two archives retrieved, then the daemon is down for longer than the output lives:
    one job had been seen InProgress (it vanishes from ListJobs), the other Succeeded with
    part of it downloaded. At the next start both get a new job, partial chunks kept."""
    a, b = _archives(sim, "v", [2 * MIB, 3 * MIB])
    opts = options(sim, tmp_path / "cache", downloads=1)

    async def first() -> None:
        sim.set_delays(Bulk=3600)
        async with core(opts, "v", [a, b]) as c:
            await c.retrieval.request(c.entry(a), tier="Bulk", explicit=True)
            assert c.retrieval.record(a.archive_id).state == IN_PROGRESS
            await c.retrieval.request(c.entry(b), explicit=True)
            sim.set_faults([{"operation": "GetJobOutput", "fault": "slow", "delay": 0.3}])
            layout = c.retrieval.layout(c.entry(b))
            await c.wait_for(lambda: c.cache.cached_bytes(layout) >= MIB, what="one chunk")

    trio.run(first)
    count_faults(sim)
    sim.clear_faults()
    sim.complete_jobs()
    for job in sim.client().list_jobs(vaultName="v")["JobList"]:
        sim.expire_job(job["JobId"])

    sim.set_delays(Bulk=0.2)

    async def second() -> None:
        async with core(opts, "v", [a, b], seed=False) as c:
            layout = c.retrieval.layout(c.entry(b))
            kept = c.cache.cached_bytes(layout)
            assert kept >= MIB
            for x in (a, b):
                await c.read_when_ready(x, timeout=30)
            assert c.stats["bytes_verified"] == a.size + b.size - kept

    trio.run(second)
    assert _initiates(sim) == 4
    assert count_duplicate_jobs(sim.client(), "v") == 0


def test_insufficient_capacity_falls_back_to_standard(sim, tmp_path, fast):
    [a] = _archives(sim, "v", [MIB])
    sim.set_faults([{"operation": "InitiateJob", "fault": "insufficient_capacity"}])
    opts = options(sim, tmp_path / "cache", tier="Expedited")

    async def main() -> None:
        async with core(opts, "v", [a]) as c:
            with pytest.raises(NotReady):
                await c.retrieval.read(c.entry(a), 0, a.size, True)
            rec = c.retrieval.record(a.archive_id)
            assert rec.tier == "Standard"
            assert "started as Standard" in (rec.status_message or "")
            await c.read_when_ready(a)

    trio.run(main)
    assert count_faults(sim) == 1
    assert _initiates(sim) == 2  # the refused Expedited request, then Standard
    jobs = sim.client().list_jobs(vaultName="v")["JobList"]
    assert [j["Tier"] for j in jobs] == ["Standard"]


def test_insufficient_capacity_without_fallback_stays_queued(sim, tmp_path, fast):
    [a] = _archives(sim, "v", [MIB])
    sim.set_faults([{"operation": "InitiateJob", "fault": "insufficient_capacity"}])
    opts = options(sim, tmp_path / "cache", tier="Expedited", expedited_fallback=False)

    async def main() -> None:
        async with core(opts, "v", [a]) as c:
            with pytest.raises(NotReady):
                await c.retrieval.read(c.entry(a), 0, a.size, True)
            rec = c.retrieval.record(a.archive_id)
            assert rec.state == QUEUED and rec.tier == "Expedited"
            assert "Expedited capacity unavailable" in rec.status_message
            attrs = xattrs.file_attributes(c.entry(a), c.retrieval)
            assert attrs["user.glacier.job.status"] == "Queued"
            # START_RETRY is 1 s here and the queue is looked at every 5 s at most: a few calm
            # retries, no storm.
            await trio.sleep(5.5)
            assert 2 <= _initiates(sim) <= 4
            sim.clear_faults()
            await c.read_when_ready(a)
            assert rec.tier == "Expedited"

    trio.run(main)
    count_faults(sim)
    assert [j["Tier"] for j in sim.client().list_jobs(vaultName="v")["JobList"]] == ["Expedited"]


def test_policy_enforced_fails_once_without_retry_storm(sim, tmp_path, fast):
    [a] = _archives(sim, "v", [MIB])
    sim.set_faults([{"operation": "InitiateJob", "fault": "policy"}])
    opts = options(sim, tmp_path / "cache")

    async def main() -> None:
        async with core(opts, "v", [a]) as c:
            for _ in range(20):
                with pytest.raises(RetrievalFailed):
                    await c.retrieval.read(c.entry(a), 0, a.size, True)
            await trio.sleep(2)  # queue and poll loops run: nothing retries behind our back
            rec = c.retrieval.record(a.archive_id)
            assert rec.state == FAILED
            assert "data retrieval policy" in rec.status_message

    trio.run(main)
    assert count_faults(sim) == 1
    assert _initiates(sim) == 1


def test_lost_initiatejob_answer_adopts_the_job(sim, tmp_path, fast):
    """The connection drops after Glacier started the job: it is found with ListJobs and
    adopted, never started a second time (botocore would have resent InitiateJob)."""
    [a] = _archives(sim, "v", [MIB])
    sim.set_faults([{"operation": "InitiateJob", "fault": "drop", "count": 1}])
    opts = options(sim, tmp_path / "cache")

    async def main() -> None:
        async with core(opts, "v", [a]) as c:
            with pytest.raises(NotReady):
                await c.retrieval.read(c.entry(a), 0, a.size, True)
            await c.read_when_ready(a, timeout=30)

    trio.run(main)
    assert count_faults(sim) == 1
    assert len(sim.client().list_jobs(vaultName="v")["JobList"]) == 1
    assert count_duplicate_jobs(sim.client(), "v") == 0
