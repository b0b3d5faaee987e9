"""Network and service faults during retrieval and download: throttling storms, 500/503,
connections dropped in the middle of a chunk, slow answers, corrupted bytes.

Each test drives the retrieval core against the emulator over HTTP (boto3 and its retries
included) and checks the user-visible result: the exact bytes, or a clear failure with nothing
unverified kept.
"""

from __future__ import annotations

import pytest
import trio
from rel_util import (MIB, Archive, compare, core, count_duplicate_jobs, count_faults, options,
                      unverified_files, upload)

from glacierfs.cache import download
from glacierfs.jobs.jobstore import FAILED
from glacierfs.jobs.retrieval import NotReady, RetrievalFailed

pytestmark = pytest.mark.sim_args("--delay", "Standard=0.5", "--delay", "Expedited=0.2",
                                  "--seed", "11")


def _archives(sim, vault: str, sizes: list[int]) -> list[Archive]:
    client = sim.client()
    client.create_vault(vaultName=vault)
    return [upload(client, vault, size, seed=i, description=f"dir/file{i}.bin")
            for i, size in enumerate(sizes)]


def test_fault_storm_download_completes_with_exact_bytes(sim, tmp_path, fast):
    """Throttling, 500/503, dropped bodies and slow answers on every call at once."""
    archives = _archives(sim, "storm", [5 * MIB + 12345, 3 * MIB, 700_000])
    sim.set_faults([
        {"operation": "GetJobOutput", "fault": "drop", "probability": 0.25},
        {"operation": "GetJobOutput", "fault": "throttle", "probability": 0.25},
        {"operation": "GetJobOutput", "fault": "error500", "probability": 0.1},
        {"operation": "GetJobOutput", "fault": "error503", "probability": 0.1},
        {"operation": "GetJobOutput", "fault": "slow", "probability": 0.2, "delay": 0.3},
        {"operation": "ListJobs", "fault": "throttle", "probability": 0.3},
        {"operation": "InitiateJob", "fault": "throttle", "probability": 0.3},
        {"operation": "InitiateJob", "fault": "error503", "probability": 0.2},
    ])
    opts = options(sim, tmp_path / "cache", downloads=4)

    async def main() -> None:
        async with core(opts, "storm", archives) as c:
            async with trio.open_nursery() as n:
                for a in archives:
                    n.start_soon(c.read_when_ready, a, 0, None, 120.0)
            assert c.stats["retries"] > 0, "no fault reached the downloader"
            assert c.stats["bytes_verified"] >= sum(a.size for a in archives)
            for a in archives:
                assert c.cache.state(c.retrieval.layout(c.entry(a))) == "cached"

    trio.run(main)
    fired = count_faults(sim)
    assert fired >= 10
    sim.clear_faults()
    assert unverified_files(opts.state_dir / "chunks", archives) == []
    assert count_duplicate_jobs(sim.client(), "storm") == 0


def test_dropped_connections_mid_chunk_are_retried_from_the_chunk(sim, tmp_path, fast):
    """Every other body is cut in half: each chunk is asked for again, nothing else."""
    [a] = _archives(sim, "drops", [4 * MIB])
    sim.set_faults([{"operation": "GetJobOutput", "fault": "drop", "probability": 0.5}])
    opts = options(sim, tmp_path / "cache", downloads=2)

    async def main() -> None:
        async with core(opts, "drops", [a]) as c:
            await c.read_when_ready(a, timeout=60)
            assert c.stats["retries"] >= 1

    trio.run(main)
    assert count_faults(sim) >= 1
    requests = sim.stats()["requests"]
    # 4 chunks plus one retry per dropped body: a drop never restarts the archive from zero.
    assert requests["GetJobOutput"] <= 4 + sim_fired_drops(sim) + 1


def sim_fired_drops(sim) -> int:
    return sum(r["fired"] for r in sim.control("GET", "faults") if r["fault"] == "drop")


def test_retries_are_bounded_and_jittered(sim, tmp_path, fast, monkeypatch):
    """A connection that always drops: a chunk is tried TRANSIENT_ATTEMPTS times with growing,
    jittered pauses, then the reader gets "not ready" instead of a hung read."""
    [a] = _archives(sim, "bounded", [MIB])
    pauses: list[float] = []
    real_backoff = download._backoff

    def recording_backoff(attempt: int) -> float:
        value = real_backoff(attempt)
        pauses.append(value)
        return value

    monkeypatch.setattr(download, "_backoff", recording_backoff)
    opts = options(sim, tmp_path / "cache")

    async def main() -> None:
        async with core(opts, "bounded", [a]) as c:
            with pytest.raises(NotReady):
                await c.retrieval.read(c.entry(a), 0, a.size, True)
            sim.set_faults([{"operation": "GetJobOutput", "fault": "drop"}])
            await c.wait_for(lambda: c.retrieval.record(a.archive_id).state == "Succeeded",
                             what="job done")
            start = trio.current_time()
            with pytest.raises(NotReady):
                await c.retrieval.read(c.entry(a), 0, a.size, True)
            assert trio.current_time() - start < 20
            assert c.stats["retries"] >= download.TRANSIENT_ATTEMPTS
            assert c.cache.cached_bytes(c.retrieval.layout(c.entry(a))) == 0

    trio.run(main)
    count_faults(sim)
    sim.clear_faults()
    # The first round of one chunk: TRANSIENT_ATTEMPTS tries, a pause between each two.
    assert len(pauses) >= download.TRANSIENT_ATTEMPTS - 1
    first_round = pauses[:download.TRANSIENT_ATTEMPTS - 1]
    for attempt, pause in enumerate(first_round, start=1):
        assert 0 <= pause <= min(download.BACKOFF_CAP, download.BACKOFF_BASE * 2 ** attempt)
    # Full jitter: the same attempt number gives different pauses.
    assert len({round(download._backoff(5), 6) for _ in range(20)}) > 1


def test_download_resumes_after_a_long_outage_without_a_reader(sim, tmp_path, fast):
    """``glacierfs restore`` then nobody reads: a fault storm longer than the retry budget of
    a chunk must not leave the archive half downloaded for ever."""
    [a] = _archives(sim, "outage", [3 * MIB])
    opts = options(sim, tmp_path / "cache")

    async def main() -> None:
        async with core(opts, "outage", [a]) as c:
            sim.set_faults([{"operation": "GetJobOutput", "fault": "drop"}])
            await c.retrieval.request(c.entry(a), explicit=True)
            await c.wait_for(lambda: c.stats["retries"] >= 2 * download.TRANSIENT_ATTEMPTS,
                             timeout=30, what="retries exhausted")
            count_faults(sim)
            sim.clear_faults()
            layout = c.retrieval.layout(c.entry(a))
            await c.wait_for(lambda: c.cache.state(layout) == "cached", timeout=30,
                             what="download resumed")
            compare(c.cache.read(layout, 0, a.size), a.data)

    trio.run(main)


def test_corrupted_chunk_is_fetched_again(sim, tmp_path, fast):
    """Two bodies with flipped bytes (the header keeps the true tree hash): both chunks are
    refused, fetched again, and the file reads exact."""
    [a] = _archives(sim, "flaky", [4 * MIB])
    sim.set_faults([{"operation": "GetJobOutput", "fault": "corrupt", "count": 2}])
    opts = options(sim, tmp_path / "cache")

    async def main() -> None:
        async with core(opts, "flaky", [a]) as c:
            await c.read_when_ready(a)
            assert c.stats["corrupt_chunks"] == 2
            assert c.retrieval.record(a.archive_id).state != FAILED

    trio.run(main)
    assert count_faults(sim) == 2
    assert unverified_files(opts.state_dir / "chunks", [a]) == []


def test_persistent_corruption_fails_the_file_and_keeps_nothing(sim, tmp_path, fast):
    """Every body of one archive is corrupt: the file is marked failed with the reason, reads
    fail (EIO at the mount), and no chunk of it stays in the cache, not even chunks that
    verified before the bad one was given up on."""
    good, bad = _archives(sim, "rot", [2 * MIB, 4 * MIB])
    opts = options(sim, tmp_path / "cache", downloads=1)

    async def main() -> None:
        async with core(opts, "rot", [good, bad]) as c:
            await c.read_when_ready(good)
            sim.set_faults([{"operation": "GetJobOutput", "fault": "slow", "delay": 0.3}])
            with pytest.raises(NotReady):
                await c.retrieval.read(c.entry(bad), 0, bad.size, True)
            layout = c.retrieval.layout(c.entry(bad))
            # Some chunks verify and are stored; then the source goes bad.
            await c.wait_for(lambda: c.cache.cached_bytes(layout) >= MIB, what="first chunk")
            count_faults(sim)
            sim.set_faults([{"operation": "GetJobOutput", "fault": "corrupt"}])
            rec = c.retrieval.record(bad.archive_id)
            await c.wait_for(lambda: rec.state == FAILED, timeout=60, what="failed")
            assert "tree-hash" in (rec.status_message or "")
            await trio.sleep(0.5)  # chunks still in flight when it failed have landed by now
            for offset in (0, 2 * MIB):
                with pytest.raises(RetrievalFailed):
                    await c.retrieval.read(c.entry(bad), offset, MIB, True)
            assert c.cache.cached_bytes(c.retrieval.layout(c.entry(bad))) == 0
            # The other file is untouched.
            compare(await c.retrieval.read(c.entry(good), 0, good.size, True), good.data)

    trio.run(main)
    assert count_faults(sim) >= download.CORRUPT_ATTEMPTS
    assert unverified_files(opts.state_dir / "chunks", [good, bad]) == []
    sim.clear_faults()
