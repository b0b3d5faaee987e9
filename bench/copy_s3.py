"""Migrating into S3: ``glacierfs copy -r … s3://`` vs the AWS CLI path a user would script.

The emulator (``--bandwidth`` per connection, 32M by default) holds ``--files`` archives
totalling ``--size`` (synthesized), each with a finished retrieval job, and moto's S3 server
runs in this process. Then, alternating, median of ``--repeat`` rounds:

  glacierfs copy   ``glacierfs copy -r VAULT/tree s3://BUCKET/gfsN`` on a mount whose cache
                   holds the tree; the mount adopts the finished jobs (ListJobs), downloads
                   with ``downloads=4`` connections, and the copy uploads each file as soon as
                   it is cached (verified: tree hash, CRC64NVME)
  aws cli          for each archive, one after another: ``aws glacier get-job-output`` into a
                   file, then ``aws s3 cp`` of the file (the script a user writes)

Measured: wall time from the first command to the last object in S3, and the bytes the
emulator sent per byte uploaded. Goals: glacierfs copy at least 2x faster; 1.00 bytes
downloaded per byte uploaded.
"""

from __future__ import annotations

import os
import sys

# bench/copy.py is named like the standard library's ``copy``, and ``python bench/copy_s3.py``
# puts bench/ first on sys.path: move it last, so ``import copy`` finds the standard library
# and ``import common`` still finds bench/common.py.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import common  # noqa: E402
from common import GIB, MIB  # noqa: E402

BUCKET = "bench-migration"


def env(s3_url: str) -> dict[str, str]:
    from glacierfs.sim.testing import aws_env
    return {**os.environ, **{k: v for k, v in aws_env({}).items() if k.startswith("AWS_")},
            "AWS_ENDPOINT_URL_S3": s3_url}


def finished_jobs(sim, archives: dict[str, str], vault: str) -> dict[str, str]:  # noqa: ANN001
    """{archive path: job id}, one finished ArchiveRetrieval job per archive of ``archives``
    ({path: archive id})."""
    glacier = common.client(sim)
    jobs = {}
    for path, archive_id in archives.items():
        jobs[path] = glacier.initiate_job(
            vaultName=vault, jobParameters={"Type": "archive-retrieval", "ArchiveId": archive_id,
                                            "Tier": "Standard"})["jobId"]
    common.wait_for(lambda: all(glacier.describe_job(vaultName=vault, jobId=j)["Completed"]
                                for j in jobs.values()), 120, "the jobs")
    return jobs


def listed(tree: Path, files: int) -> bool:
    return tree.is_dir() and len(list(tree.iterdir())) >= files


def uploaded(s3, prefix: str) -> int:  # noqa: ANN001
    total = 0
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                      Prefix=prefix):
        total += sum(o["Size"] for o in page.get("Contents", []))
    return total


def run_glacierfs(sim, s3, mnt: Path, vault: str, prefix: str) -> None:  # noqa: ANN001
    subprocess.run([sys.executable, "-m", "glacierfs.cli", "copy", "-r", "--storage-class",
                    "STANDARD", str(mnt / vault / "tree"), f"s3://{BUCKET}/{prefix}"],
                   check=True, stdout=subprocess.DEVNULL, timeout=3600, env=env(s3.url))


def run_cli(sim, s3, vault: str, jobs: dict[str, str], prefix: str, tmp: Path) -> None:  # noqa: ANN001
    aws = str(Path(sys.executable).with_name("aws"))
    e = env(s3.url)
    for description, job_id in sorted(jobs.items()):
        name = description.replace("/", "_")
        out = tmp / name
        subprocess.run([aws, "glacier", "get-job-output", "--endpoint-url", sim.url,
                        "--account-id", "-", "--vault-name", vault, "--job-id", job_id,
                        str(out)], check=True, stdout=subprocess.DEVNULL, env=e, timeout=3600)
        subprocess.run([aws, "s3", "cp", "--only-show-errors", str(out),
                        f"s3://{BUCKET}/{prefix}/{description[len('tree/'):]}"], check=True, env=e,
                       timeout=3600)
        out.unlink()


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--size", default="256M", help="bytes in the tree (default 256M)")
    p.add_argument("--files", type=int, default=8, help="archives (default 8)")
    p.add_argument("--bandwidth", default="32M",
                   help="the emulator's bandwidth per connection (default 32M)")
    p.set_defaults(repeat=1)
    args = p.parse_args()
    size = common.parse_size(args.size)
    common.print_machine()
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # moto's request lines
    from glacierfs.sim import s3server
    results: dict[str, list[tuple[float, float]]] = {"glacierfs": [], "cli": []}
    with (common.workdir(args, "copy-s3") as base,
          common.emulator(base, "--delay", "Standard=1", "--bandwidth", args.bandwidth) as sim):
        s3 = s3server.start(buckets=(BUCKET,))
        try:
            vault = "tree"
            common.client(sim).create_vault(vaultName=vault)
            sim.synthesize(vault, args.files, size // args.files, "tree/f{i}.bin")
            mnt = base / "mnt"
            opts = f"vaults={vault},cache_size={size + 256 * MIB}"
            with common.mounted(sim, mnt, base / "cache-setup", opts):
                tree = mnt / vault / "tree"
                common.wait_for(lambda: listed(tree, args.files), 60, "the inventory")
                archives = {f"tree/{p.name}": common.getxattr(p, "user.glacier.archive_id")
                            for p in tree.iterdir()}
            jobs = finished_jobs(sim, archives, vault)   # type: ignore[arg-type]
            for i in range(args.repeat):
                for side in (("glacierfs", "cli") if i % 2 == 0 else ("cli", "glacierfs")):
                    prefix = f"{side}{i}"
                    common.drop_caches()
                    if side == "glacierfs":
                        cache_dir = base / f"cache{i}"   # a fresh mount: it adopts the jobs
                        with common.mounted(sim, mnt, cache_dir, opts):
                            tree = mnt / vault / "tree"
                            common.wait_for(lambda t=tree: listed(t, args.files), 60,
                                            "the inventory")
                            sim.reset_stats()
                            started = time.perf_counter()
                            run_glacierfs(sim, s3, mnt, vault, prefix)
                            seconds = time.perf_counter() - started
                        shutil.rmtree(cache_dir, ignore_errors=True)
                    else:
                        tmp = base / "cli-tmp"
                        tmp.mkdir(exist_ok=True)
                        sim.reset_stats()
                        started = time.perf_counter()
                        run_cli(sim, s3, vault, jobs, prefix, tmp)
                        seconds = time.perf_counter() - started
                    up = uploaded(s3, prefix)
                    if up != size // args.files * args.files:
                        raise SystemExit(f"{side}: {up} bytes in S3, expected {size}")
                    results[side].append((seconds, sim.stats()["bytes_sent"] / up))
                print(f"round {i + 1}: glacierfs {results['glacierfs'][-1][0]:.1f} s, "
                      f"aws cli {results['cli'][-1][0]:.1f} s", flush=True)
        finally:
            s3.stop()
    g_t = common.median([r[0] for r in results["glacierfs"]])
    c_t = common.median([r[0] for r in results["cli"]])
    g_b = common.median([r[1] for r in results["glacierfs"]])
    c_b = common.median([r[1] for r in results["cli"]])
    common.table(f"migrating {size / GIB:.2f} GiB in {args.files} archives into S3 "
                 f"(finished jobs, {args.bandwidth}/s per connection)", [
        ("time, s (lower is better)", f"{g_t:.1f}", f"{c_t:.1f}", f"{c_t / g_t:.2f}x",
         common.verdict(c_t / g_t, 2.0)),
        ("bytes downloaded / uploaded", f"{g_b:.3f}", f"{c_b:.3f}", f"{g_b / c_b:.3f}x",
         "1.00 (glacierfs)"),
    ])


if __name__ == "__main__":
    common.run(main)
