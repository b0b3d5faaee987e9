"""Download + verify of a completed retrieval into the chunk cache vs a plain HTTP client.

One archive of random bytes is uploaded to the emulator and an Expedited retrieval job is run to
completion. Then, alternating, median of ``--repeat`` rounds:

  glacierfs   ``Downloader`` (the daemon's downloader, its default workers and chunk size) with
              the daemon's boto3 client settings, fetching every chunk with GetJobOutput,
              checking each against ``x-amz-sha256-tree-hash`` and its own tree hash, writing and
              fsyncing it into a fresh ``ChunkCache``, and folding the archive's root at the end
  curl        ``curl -o /dev/null`` of the same job output from the same emulator (one stream)

Goal: glacierfs >= 0.8x curl. ``curl -o FILE`` (the bytes stored on the same disk, not fsynced)
is printed too, for reference.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import common
import trio
from common import MIB

from glacierfs import glacier as glacier_mod
from glacierfs.cache import ArchiveLayout, ChunkCache
from glacierfs.download import BACKGROUND, Downloader, DownloadOutcome
from glacierfs.mount import API_THREADS
from glacierfs.options import MountOptions
from glacierfs.sim.testing import aws_env

VAULT = "bench"


class Outcome(DownloadOutcome):
    def __init__(self) -> None:
        self.done = trio.Event()
        self.failure: str | None = None

    async def archive_complete(self, archive_id: str) -> None:
        self.done.set()

    async def archive_failed(self, archive_id: str, reason: str) -> None:
        self.failure = reason
        self.done.set()

    async def output_expired(self, archive_id: str) -> None:
        self.failure = "output expired"
        self.done.set()


def glacierfs_download(url: str, job_id: str, archive_id: str, size: int, tree_hash: str,
                       cache_dir: Path) -> float:
    shutil.rmtree(cache_dir, ignore_errors=True)
    opts = MountOptions(region="us-east-1")
    env = aws_env({})
    import os
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = glacier_mod.GlacierClient(glacier_mod.ClientSettings(
            region="us-east-1", endpoint_url=url, max_connections=API_THREADS + 4))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    aclient = glacier_mod.AsyncGlacier(client, limit=API_THREADS)
    layout = ArchiveLayout(archive_id, size, opts.chunk_size)
    with ChunkCache(cache_dir, 4 * size) as cache:
        outcome = Outcome()
        downloader = Downloader(aclient, cache, outcome, workers=opts.downloads,
                                expected_root=lambda a: tree_hash)

        async def run() -> float:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(downloader.run)
                started = time.perf_counter()
                downloader.enqueue(VAULT, job_id, layout, list(range(layout.chunk_count)),
                                   BACKGROUND)
                await outcome.done.wait()
                elapsed = time.perf_counter() - started
                nursery.cancel_scope.cancel()
            if outcome.failure:
                raise RuntimeError(outcome.failure)
            return elapsed

        elapsed = trio.run(run)
        assert cache.state(layout) == "cached"
    return elapsed


def curl(url: str, job_id: str, size: int, dest: str) -> float:
    started = time.perf_counter()
    out = subprocess.run(["curl", "-sS", "-o", dest, "-w", "%{size_download}",
                          f"{url}/-/vaults/{VAULT}/jobs/{job_id}/output"],
                         check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    assert int(out.stdout) == size, out.stdout
    return elapsed


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="1G", help="archive size (default 1G)")
    args = p.parse_args()
    size = common.parse_size(args.size)
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed for the baseline")
    common.print_machine()
    with common.workdir(args, "download") as work:
        sim = common.start_sim(work, "--delay", "Expedited=0")
        try:
            glacier = common.client(sim)
            glacier.create_vault(vaultName=VAULT)
            data = work / "archive.bin"
            common.write_random_file(data, size)
            archive_id = common.upload_file(glacier, VAULT, data, "archive.bin")
            from glacierfs import treehash
            tree_hash = treehash.tree_hash_file(data).hex()
            data.unlink()
            job_id = glacier.initiate_job(vaultName=VAULT, jobParameters={
                "Type": "archive-retrieval", "ArchiveId": archive_id, "Tier": "Expedited"})["jobId"]
            from glacierfs.sim.testing import wait_job
            assert wait_job(glacier, VAULT, job_id)["StatusCode"] == "Succeeded"
            cache_dir = work / "cache"
            g_s, c_s = common.alternate(
                args.repeat,
                lambda: glacierfs_download(sim.url, job_id, archive_id, size, tree_hash,
                                           cache_dir),
                lambda: curl(sim.url, job_id, size, "/dev/null"))
            shutil.rmtree(cache_dir, ignore_errors=True)
            file_s = common.median([curl(sim.url, job_id, size, str(work / "curl.out"))
                                    for _ in range(args.repeat)])
        finally:
            sim.stop()
    mb = size / MIB
    common.table(f"download of a completed {mb:.0f} MiB retrieval (median of {args.repeat})", [
        ("download + verify + cache (MiB/s)", f"{mb / g_s:.0f}", f"{mb / c_s:.0f} curl>/dev/null",
         f"{c_s / g_s:.2f}x", common.verdict(c_s / g_s, 0.8)),
        ("reference: curl to a file", "", f"{mb / file_s:.0f} curl>file",
         f"{file_s / g_s:.2f}x", ""),
    ])


if __name__ == "__main__":
    main()
