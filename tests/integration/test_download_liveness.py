"""The downloader against the emulator where timing used to decide the outcome:

* an endpoint that ignores Range, when the worker that gets the whole output first is the one
  asked for the archive's short last chunk (what a loaded machine made happen): the archive is
  verified and served, never failed;
* a chunk that finds no room in the cache gives its worker back (other archives' chunks go on
  with a single worker) and is fetched once room is freed.
"""

from __future__ import annotations

import os

import pytest
import trio

from glacierfs.aws import glacier as glacier_module
from glacierfs.cache.chunkcache import ChunkCache
from glacierfs.cache.errors import NoRoomError
from glacierfs.cache.layout import ArchiveLayout
from glacierfs.cache.download import Downloader
from glacierfs.cache.tasks import BACKGROUND, DownloadOutcome, FOREGROUND
from glacierfs.sim.testing import aws_env, upload
from glacierfs.treehash import MIB, tree_hash


class Outcome(DownloadOutcome):
    def __init__(self) -> None:
        self.complete: set[str] = set()
        self.failures: list[str] = []
        self.changed = trio.Event()

    async def archive_complete(self, archive_id: str) -> None:
        self.complete.add(archive_id)
        self.changed.set()

    async def archive_failed(self, archive_id: str, reason: str) -> None:
        self.failures.append(reason)
        self.changed.set()

    async def wait_for(self, archive_ids: set[str]) -> None:
        while not archive_ids <= self.complete and not self.failures:
            self.changed = trio.Event()
            await self.changed.wait()


def _client(sim, monkeypatch) -> glacier_module.AsyncGlacier:
    for key, value in aws_env({}).items():
        monkeypatch.setenv(key, value)
    return glacier_module.AsyncGlacier(glacier_module.GlacierClient(
        glacier_module.ClientSettings(region="us-east-1", endpoint_url=sim.url)), limit=12)


def _retrieved(sim, glacier, vault, data: bytes, name: str) -> tuple[ArchiveLayout, str]:
    archive = upload(glacier, vault, data, name)
    job = glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive})["jobId"]
    sim.complete_jobs(job_id=job)
    return ArchiveLayout(archive, len(data), MIB), job


@pytest.mark.sim_args("--ignore-range")
def test_whole_output_read_by_the_worker_of_the_short_last_chunk(
        sim, glacier, vault, monkeypatch, tmp_path):
    data = os.urandom(3 * MIB + 777)
    layout, job = _retrieved(sim, glacier, vault, data, "good")
    outcome = Outcome()
    with ChunkCache(tmp_path / "cache", 1 << 30) as cache:
        downloader = Downloader(_client(sim, monkeypatch), cache, outcome, workers=1,
                                expected_root=lambda a: tree_hash(data).hex())

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(downloader.run)
                # The last chunk (777 bytes) alone, as the first task a worker takes.
                downloader.enqueue(vault, job, layout, [layout.chunk_count - 1], FOREGROUND)
                with trio.fail_after(60):
                    await outcome.wait_for({layout.archive_id})
                nursery.cancel_scope.cancel()

        trio.run(run)
        assert outcome.failures == []
        assert downloader.stats["corrupt_chunks"] == 0
        assert cache.read(layout, 0, len(data)) == data


def test_a_chunk_without_room_gives_its_worker_back(sim, glacier, vault, monkeypatch,
                                                    tmp_path):
    kept, other = os.urandom(2 * MIB), os.urandom(MIB)
    kept_layout, kept_job = _retrieved(sim, glacier, vault, kept, "kept")
    other_layout, other_job = _retrieved(sim, glacier, vault, other, "other")
    roots = {kept_layout.archive_id: tree_hash(kept).hex(),
             other_layout.archive_id: tree_hash(other).hex()}
    outcome = Outcome()
    pinned = {kept_layout.archive_id}
    # Room for about two chunks beside the index: one kept archive fills it.
    with ChunkCache(tmp_path / "cache", 2 * MIB + 256 * 1024,
                    evictable=lambda a: a not in pinned) as cache:
        downloader = Downloader(_client(sim, monkeypatch), cache, outcome, workers=1,
                                expected_root=roots.get)

        async def run() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(downloader.run)
                downloader.enqueue(vault, kept_job, kept_layout, [0, 1], BACKGROUND)
                with trio.fail_after(60):
                    await outcome.wait_for({kept_layout.archive_id})
                downloader.enqueue(vault, other_job, other_layout, [0], FOREGROUND)
                waiter = downloader.waiter(other_layout.archive_id, 0)
                with trio.fail_after(30):
                    await waiter.wait()
                # Told at once that there is no room; the worker is free, the chunk parked.
                assert isinstance(downloader.take_error(other_layout.archive_id, 0),
                                  NoRoomError)
                with trio.fail_after(30):
                    while not downloader.is_parked(other_layout.archive_id, 0):
                        await trio.sleep(0.05)
                assert not downloader._in_flight
                # Reading the kept archive releases it: the parked chunk comes in.
                pinned.clear()
                downloader.room_freed()
                with trio.fail_after(30):
                    await outcome.wait_for({other_layout.archive_id})
                nursery.cancel_scope.cancel()

        trio.run(run)
        assert outcome.failures == []
        assert cache.read(other_layout, 0, len(other)) == other
