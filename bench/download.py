"""Getting a completed retrieval's bytes onto the disk, verified: glacierfs vs the AWS CLI.

One archive of random bytes is uploaded to the emulator and one Expedited retrieval job is run
to completion. Then, alternating, median of ``--repeat`` rounds:

  glacierfs   the full path a user takes: a fresh mount (fresh cache), ``setfattr -n
              user.glacier.restore`` on the file (which adopts the finished job from ListJobs)
              until ``user.glacier.cache`` reads ``cached``: every chunk fetched, checked
              against Glacier's tree hash, written and made durable, the root folded and
              compared with the inventory's
  AWS CLI     what a user would pick instead: ``aws glacier get-job-output`` into a file,
              then a tree hash of that file (glacierfs's own, on all cores) compared with the
              archive's

Goal unthrottled: glacierfs >= 1.5x the AWS CLI path.

Then the emulator is restarted with ``--bandwidth RATE`` (default 32M per connection, as Glacier
caps each GetJobOutput stream) and glacierfs is timed with ``downloads=1, 2, 4, 8`` against the
CLI's single stream. Goals with downloads=4: >= 0.8 x 4 x RATE and >= 3x the CLI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import common
from common import MIB

from glacierfs import treehash
from glacierfs.sim.bandwidth import parse_rate
from glacierfs.sim.testing import SimProcess, aws_env, wait_job

VAULT = "bench"
NAME = "archive.bin"
SCALING = (1, 2, 4, 8)
CACHED_TIMEOUT = 600.0


def aws_cli() -> str:
    found = shutil.which("aws") or str(Path(sys.executable).with_name("aws"))
    if not os.access(found, os.X_OK):
        raise SystemExit("the AWS CLI (aws) is needed for the baseline")
    return found


def cli_download(url: str, job_id: str, dest: Path, tree_hash: str) -> float:
    os.sync()  # each round starts with no dirty pages of an earlier one (untimed)
    started = time.perf_counter()
    subprocess.run([aws_cli(), "glacier", "get-job-output", "--account-id", "-",
                    "--vault-name", VAULT, f"--job-id={job_id}", "--endpoint-url", url,
                    str(dest)], check=True, env=aws_env(), stdout=subprocess.DEVNULL)
    got = treehash.tree_hash_file(dest).hex()
    elapsed = time.perf_counter() - started
    if got != tree_hash:
        raise RuntimeError(f"the AWS CLI's file has tree hash {got}, not {tree_hash}")
    dest.unlink()
    return elapsed


def glacierfs_download(sim, work: Path, extra: str, check: bool = False) -> float:  # noqa: ANN001
    mnt, cache = work / "mnt", work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    with common.mounted(sim, mnt, cache, extra):
        path = mnt / VAULT / NAME
        common.wait_for(path.exists, 60, "the archive to be listed", interval=0.05)
        os.sync()  # untimed, as for the CLI
        started = time.perf_counter()
        os.setxattr(path, "user.glacier.restore", b"Expedited")
        common.wait_for(lambda: common.getxattr(path, "user.glacier.cache") == "cached",
                        CACHED_TIMEOUT, "the archive to be cached", interval=0.01)
        elapsed = time.perf_counter() - started
        if check:  # once: the bytes through the mount are the archive's
            expected = common.getxattr(path, "user.glacier.tree_hash")
            assert treehash.tree_hash_file(path).hex() == expected
    shutil.rmtree(cache, ignore_errors=True)
    return elapsed


@contextlib.contextmanager
def prepared(work: Path, size: int, *sim_args: str) -> Iterator[tuple[SimProcess, str, str]]:
    """The emulator with one archive of ``size`` random bytes and a finished Expedited job for
    it: (emulator, job id, tree hash), the emulator stopped when the block ends."""
    with common.emulator(work, "--delay", "Expedited=0", "--delay", "inventory=0",
                         *sim_args) as sim:
        yield (sim, *_archive_and_job(sim, work, size))


def _archive_and_job(sim: SimProcess, work: Path, size: int) -> tuple[str, str]:
    glacier = common.client(sim)
    glacier.create_vault(vaultName=VAULT)
    data = work / "archive.bin"
    common.write_random_file(data, size)
    archive_id = common.upload_file(glacier, VAULT, data, NAME)
    tree_hash = treehash.tree_hash_file(data).hex()
    data.unlink()
    job_id = glacier.initiate_job(vaultName=VAULT, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive_id, "Tier": "Expedited"})["jobId"]
    assert wait_job(glacier, VAULT, job_id)["StatusCode"] == "Succeeded"
    return job_id, tree_hash


def unthrottled(args, work: Path) -> None:  # noqa: ANN001
    size = common.parse_size(args.size)
    with prepared(work, size) as (sim, job_id, tree_hash):
        glacierfs_download(sim, work, args.options, check=True)  # warm-up and byte check
        g_s, c_s = common.alternate(
            args.repeat, lambda: glacierfs_download(sim, work, args.options),
            lambda: cli_download(sim.url, job_id, work / "cli.out", tree_hash))
    mb = size / MIB
    common.table(f"completed {mb:.0f} MiB retrieval onto the disk, verified, unthrottled "
                 f"(median of {args.repeat})", [
                     ("restore until cached vs get-job-output + tree hash (MiB/s)",
                      f"{mb / g_s:.0f}", f"{mb / c_s:.0f} aws cli", f"{c_s / g_s:.2f}x",
                      common.verdict(c_s / g_s, 1.5))])


def throttled(args, work: Path) -> None:  # noqa: ANN001
    size = common.parse_size(args.throttled_size)
    rate = parse_rate(args.bandwidth)
    options = args.options + ("," if args.options else "")
    speeds: dict[int, float] = {}
    with prepared(work, size, "--bandwidth", args.bandwidth) as (sim, job_id, tree_hash):
        c_s = common.median([cli_download(sim.url, job_id, work / "cli.out", tree_hash)
                             for _ in range(args.repeat)])
        for n in SCALING:
            speeds[n] = common.median([
                glacierfs_download(sim, work, f"{options}downloads={n}")
                for _ in range(args.repeat)])
    mb = size / MIB
    cap = rate / MIB
    rows = []
    for n in SCALING:
        rows.append((f"downloads={n} (MiB/s)", f"{mb / speeds[n]:.0f}",
                     f"{n * cap:.0f} = {n} x cap", f"{(mb / speeds[n]) / (n * cap):.2f}x",
                     common.verdict((mb / speeds[n]) / (n * cap), 0.8) if n == 4 else ""))
    rows.append(("downloads=4 vs the AWS CLI's one stream (MiB/s)", f"{mb / speeds[4]:.0f}",
                 f"{mb / c_s:.0f} aws cli", f"{c_s / speeds[4]:.2f}x",
                 common.verdict(c_s / speeds[4], 3.0)))
    common.table(f"completed {mb:.0f} MiB retrieval with --bandwidth {args.bandwidth} per "
                 f"connection (median of {args.repeat})", rows)


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="512M", help="archive size unthrottled (default 512M)")
    p.add_argument("--throttled-size", default="256M",
                   help="archive size with --bandwidth (default 256M)")
    p.add_argument("--bandwidth", default="32M",
                   help="the emulator's per-connection cap for the scaling runs (default 32M)")
    p.add_argument("--options", default="",
                   help="extra mount options for glacierfs (e.g. chunk_size=8M)")
    p.add_argument("--only", choices=("unthrottled", "throttled"), default=None,
                   help="run one of the two parts")
    args = p.parse_args()
    aws_cli()
    common.print_machine()
    with common.workdir(args, "download") as work:
        if args.only in (None, "unthrottled"):
            unthrottled(args, work / "unthrottled")
        if args.only in (None, "throttled"):
            throttled(args, work / "throttled")


if __name__ == "__main__":
    common.run(main)
