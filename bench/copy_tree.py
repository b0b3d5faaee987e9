"""Getting a tree out: ``glacierfs copy`` through a small cache vs restore + wait + rsync.

The emulator holds two vaults with the same tree (``--files`` archives totalling ``--size``,
synthesized: zero bytes generated when read, so uploading costs nothing). Then, alternating,
median of ``--repeat`` rounds (each round on fresh vaults, so no job is reused):

  glacierfs copy   ``glacierfs copy -r VAULT/tree DEST`` on a mount whose cache is a quarter of
                   the tree (``cache_size=SIZE/4``): retrievals requested in batches that fit,
                   each file copied and verified as soon as it is cached
  restore + rsync  ``glacierfs restore -r`` + ``glacierfs wait -r`` + ``rsync -a`` on a mount
                   whose cache holds the whole tree (the README's restore script)

Measured: wall time from the first command to the last byte in DEST, and the bytes the
emulator sent (GetJobOutput bodies, plus a few ListJobs pages). Goal: about the same bytes
(each byte downloaded once) with a quarter of the cache; the time ratio is reported.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import common
from common import GIB, MIB


def glacierfs(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "glacierfs.cli", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL, timeout=3600)


def prepare(sim, name: str, files: int, size: int) -> None:  # noqa: ANN001
    common.client(sim).create_vault(vaultName=name)
    sim.synthesize(name, files, size // files, "tree/f{i}.bin")


def listed(path: Path, files: int) -> bool:
    return path.is_dir() and len(list(path.iterdir())) >= files


def side(sim, base: Path, name: str, files: int, size: int, cache: int,  # noqa: ANN001
         use_copy: bool, extra: str) -> tuple[float, int]:
    """One side, one round: (seconds, bytes sent by the emulator)."""
    mnt, cache_dir, dest = base / f"mnt-{name}", base / f"cache-{name}", base / f"dest-{name}"
    prepare(sim, name, files, size)
    with common.mounted(sim, mnt, cache_dir, f"vaults={name},cache_size={cache}{extra}"):
        common.wait_for(lambda: listed(mnt / name / "tree", files), 60, "the inventory")
        sim.reset_stats()
        dest.mkdir()
        started = time.perf_counter()
        src = mnt / name / "tree"
        if use_copy:
            glacierfs("copy", "-r", src, dest)
        else:
            glacierfs("restore", "-r", src)
            glacierfs("wait", "-r", src)
            subprocess.run(["rsync", "-a", f"{src}/", f"{dest}/tree/"], check=True)
        seconds = time.perf_counter() - started
        sent = int(sim.stats()["bytes_sent"])
    got = sum(p.stat().st_size for p in (dest / "tree").iterdir())
    if got != size // files * files:
        raise SystemExit(f"{name}: {got} bytes in DEST, expected {size}")
    shutil.rmtree(dest)
    shutil.rmtree(cache_dir, ignore_errors=True)
    return seconds, sent


def main() -> None:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--size", default="1G", help="bytes in the tree (default 1G)")
    p.add_argument("--files", type=int, default=32, help="archives in the tree (default 32)")
    p.add_argument("--job-delay", default="2",
                   help="emulated seconds a Standard job takes (default 2)")
    p.add_argument("--chunk-size", default=None,
                   help="the mounts' chunk_size (default: glacierfs's); a quarter of --size "
                        "must hold at least one chunk")
    p.set_defaults(repeat=1)
    args = p.parse_args()
    size = common.parse_size(args.size)
    extra = f",chunk_size={args.chunk_size}" if args.chunk_size else ""
    common.print_machine()
    results: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
    with (common.workdir(args, "copy") as base,
          common.emulator(base, "--delay", f"Standard={args.job_delay}") as sim):
        for i in range(args.repeat):
            order = (True, False) if i % 2 == 0 else (False, True)
            for use_copy in order:
                name = f"{'copy' if use_copy else 'rsync'}{i}"
                cache = size // 4 if use_copy else size + 64 * MIB
                results[use_copy].append(side(sim, base, name, args.files, size, cache,
                                              use_copy, extra))
    copy_t = common.median([r[0] for r in results[True]])
    rsync_t = common.median([r[0] for r in results[False]])
    copy_b = common.median([r[1] for r in results[True]])
    rsync_b = common.median([r[1] for r in results[False]])
    tree = f"{size / GIB:.2f} GiB in {args.files} files"
    common.table(f"getting {tree} out (Standard jobs of {args.job_delay} s; copy's cache "
                 f"{size // 4 // MIB} MiB, rsync's {(size + 64 * MIB) // MIB} MiB)", [
        ("time, s (lower is better)", f"{copy_t:.1f}", f"{rsync_t:.1f}",
         f"{copy_t / rsync_t:.2f}x", "report"),
        ("bytes downloaded / tree", f"{copy_b / size:.3f}", f"{rsync_b / size:.3f}",
         f"{copy_b / rsync_b:.3f}x", "<= 1.15 (copy)"),
        ("throughput, MiB/s", f"{common.mib_s(size, copy_t):.0f}",
         f"{common.mib_s(size, rsync_t):.0f}", f"{rsync_t / copy_t:.2f}x", "report"),
    ])


if __name__ == "__main__":
    common.run(main)
