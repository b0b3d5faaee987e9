"""The downloader keeps ``downloads`` streams busy: against the emulator with a per-connection
cap, one big archive and many small ones both download at about N x the cap (a downloader that
fetched one chunk at a time takes N times longer). Also checks that no byte is stored unless it
matches the archive's tree hash."""

from __future__ import annotations

import os
import time

import pytest
import trio

from glacierfs.aws import glacier as glacier_module
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.cache.download import Downloader
from glacierfs.cache.tasks import BACKGROUND, DownloadOutcome
from glacierfs.cache.layout import ArchiveLayout
from glacierfs.sim.testing import aws_env, upload
from glacierfs.treehash import MIB, tree_hash


class Outcome(DownloadOutcome):
    def __init__(self, count: int) -> None:
        self.left = count
        self.done = trio.Event()
        self.failures: list[str] = []

    async def archive_complete(self, archive_id: str) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()

    async def archive_failed(self, archive_id: str, reason: str) -> None:
        self.failures.append(reason)
        self.done.set()


def _client(sim, monkeypatch) -> glacier_module.AsyncGlacier:
    for key, value in aws_env({}).items():
        monkeypatch.setenv(key, value)
    return glacier_module.AsyncGlacier(glacier_module.GlacierClient(
        glacier_module.ClientSettings(region="us-east-1", endpoint_url=sim.url)), limit=12)


def _timed(sim, glacier, vault, monkeypatch, tmp_path, sizes: list[int], chunk: int,
           workers: int) -> float:
    archives = []
    for i, size in enumerate(sizes):
        data = os.urandom(size)
        archive = upload(glacier, vault, data, f"a{i}")
        job = glacier.initiate_job(vaultName=vault, jobParameters={
            "Type": "archive-retrieval", "ArchiveId": archive})["jobId"]
        archives.append((ArchiveLayout(archive, size, chunk), job, data))
    sim.complete_jobs(vault=vault)
    roots = {layout.archive_id: tree_hash(data).hex() for layout, _, data in archives}
    outcome = Outcome(len(archives))
    with ChunkCache(tmp_path / f"cache{workers}-{len(sizes)}", 1 << 30) as cache:
        downloader = Downloader(_client(sim, monkeypatch), cache, outcome, workers=workers,
                                expected_root=roots.get)

        async def run() -> float:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(downloader.run)
                await trio.sleep(0.2)  # the workers are idle when the work arrives
                began = time.monotonic()
                for layout, job, _ in archives:
                    downloader.enqueue(vault, job, layout, list(range(layout.chunk_count)),
                                       BACKGROUND)
                with trio.fail_after(60):
                    await outcome.done.wait()
                nursery.cancel_scope.cancel()
                return time.monotonic() - began

        elapsed = trio.run(run)
        assert outcome.failures == []
        for layout, _, data in archives:
            assert cache.read(layout, 0, layout.size) == data
    return elapsed


@pytest.mark.sim_args("--bandwidth", "4M")
def test_one_big_archive_uses_every_stream(sim, glacier, vault, monkeypatch, tmp_path):
    elapsed = _timed(sim, glacier, vault, monkeypatch, tmp_path, [16 * MIB], 4 * MIB, 4)
    assert elapsed < 2.6, elapsed  # 4 streams at 4 MiB/s: ~1 s; one at a time: 4 s


@pytest.mark.sim_args("--bandwidth", "1M")
def test_many_small_archives_use_every_stream(sim, glacier, vault, monkeypatch, tmp_path):
    elapsed = _timed(sim, glacier, vault, monkeypatch, tmp_path, [MIB] * 8 + [MIB // 2], MIB, 4)
    assert elapsed < 5.5, elapsed  # 8.5 MiB over 4 streams at 1 MiB/s: ~2.2 s; serial: 8.5 s


@pytest.mark.sim_args("--no-tree-hash-header")
def test_chunks_held_by_an_earlier_run_are_verified_without_fetching_again(
        sim, glacier, vault, monkeypatch, tmp_path):
    data = os.urandom(3 * MIB + 5)
    archive = upload(glacier, vault, data, "held")
    job = glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive})["jobId"]
    sim.complete_jobs(job_id=job)
    layout = ArchiveLayout(archive, len(data), MIB)
    with ChunkCache(tmp_path / "held", 1 << 30) as cache:  # the earlier run: all held, then killed
        for i in range(layout.chunk_count):
            start, end = layout.chunk_range(i)
            writer = cache.chunk_writer(layout, i, memoryview(bytearray(data[start:end + 1])))
            writer.commit(None, hold=True)
    before = sim.stats()["requests"].get("GetJobOutput", 0)
    outcome = Outcome(1)
    with ChunkCache(tmp_path / "held", 1 << 30) as cache:
        downloader = Downloader(_client(sim, monkeypatch), cache, outcome, workers=4,
                                expected_root=lambda a: tree_hash(data).hex())

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(downloader.run)
                downloader.enqueue(vault, job, layout, cache.missing_chunks(layout), BACKGROUND)
                with trio.fail_after(30):
                    await outcome.done.wait()
                nursery.cancel_scope.cancel()

        trio.run(run)
        assert outcome.failures == []
        assert cache.read(layout, 0, len(data)) == data
    assert sim.stats()["requests"].get("GetJobOutput", 0) == before
