"""Cached reads through the mount vs a minimal pyfuse3 passthrough over the same bytes.

The archive is really restored through the emulator (upload, inventory, Expedited job, chunked
download with tree-hash verification into the chunk cache), so the cache holds exactly what a
user's restore leaves. The passthrough (bench/passthroughfs.py) serves a copy of the same bytes
from the same disk. Measured side by side, alternating, median of ``--repeat`` rounds:

  cold sequential   page cache dropped, read start to end in 1 MiB reads    goal >= 0.9x
                    (both mounts at the same readahead: glacierfs's, 1 MiB by default; then
                    the passthrough at the kernel's 128 KiB, for reference)
  warm reread       second read (page cache) vs the cache's archive file    goal >= 0.9x
                    read directly
  random 4 KiB      page cache dropped, readahead off (FADV_RANDOM), pread   goal >= 0.8x
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

import common
from common import MIB

from glacierfs.fuse import readahead

VAULT = "bench"
NAME = "restored.bin"


def cache_file(cache_dir: Path, size: int) -> Path:
    """The cache's sparse file holding the archive, after checking the index lists every byte
    of it as verified (one file per archive: chunk i at i x chunk_size)."""
    chunks = next(cache_dir.glob("*@*/chunks"))
    con = sqlite3.connect(f"file:{chunks / 'cache.db'}?mode=ro", uri=True)
    try:
        listed = con.execute("SELECT sum(size) FROM Cache WHERE raw = 1 AND filename IS NULL"
                             ).fetchone()[0]
    finally:
        con.close()
    assert listed == size, (listed, size)
    (path,) = (chunks / "archives").glob("*.arc")
    return path


def restore(sim, glacier, work: Path, mnt: Path, cache: Path, plain: Path) -> float:  # noqa: ANN001
    """Upload ``plain`` and restore it through a mount; returns seconds from the restore
    request to a fully cached, verified file."""
    archive_id = common.upload_file(glacier, VAULT, plain, NAME)
    print(f"uploaded {plain.stat().st_size / MIB:.0f} MiB as {archive_id[:16]}…", flush=True)
    with common.mounted(sim, mnt, cache, "tier=Expedited"):
        common.wait_for(lambda: NAME in os.listdir(mnt / VAULT), 120, "the inventory")
        path = mnt / VAULT / NAME
        started = time.perf_counter()
        os.setxattr(path, "user.glacier.restore", b"Expedited")
        common.wait_for(lambda: common.getxattr(path, "user.glacier.cache") == "cached", 900,
                        "the restore", interval=0.1)
        return time.perf_counter() - started


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="1G", help="archive size (default 1G)")
    p.add_argument("--random-reads", type=int, default=4000)
    p.set_defaults(repeat=5)
    args = p.parse_args()
    size = common.parse_size(args.size)
    common.print_machine()
    with (common.workdir(args, "read") as work,
          common.emulator(work, "--delay", "Expedited=1", "--delay", "inventory=1") as sim):
        gmnt, pmnt = work / "mnt-glacierfs", work / "mnt-passthrough"
        cache, plain_dir = work / "cache", work / "plain"
        glacier = common.client(sim)
        glacier.create_vault(vaultName=VAULT)
        plain = plain_dir / NAME
        common.write_random_file(plain, size)
        restore_s = restore(sim, glacier, work, gmnt, cache, plain)
        print(f"restored and verified in {restore_s:.1f} s "
              f"({common.mib_s(size, restore_s):.0f} MiB/s incl. job wait)", flush=True)
        held = cache_file(cache, size)
        assert held.stat().st_size == size
        with common.mounted(sim, gmnt, cache), common.passthrough(plain_dir, pmnt):
            rows = measure(gmnt / VAULT / NAME, pmnt / NAME, held, size, args)
    common.table(f"cached reads of a {size / MIB:.0f} MiB file (median of {args.repeat})", rows)


def measure(gpath: Path, ppath: Path, held: Path, size: int, args) -> list:  # noqa: ANN001
    def cold(path: Path) -> float:
        common.drop_caches()
        n, seconds = common.read_sequential(path)
        assert n == size, (path, n)
        return seconds

    # glacierfs raises its mount's readahead (option readahead=, 1 MiB); the passthrough is
    # given the same window for the goal's comparison, then the kernel's default for reference.
    g_window = readahead.bdi_setting(gpath.parent).read_text().strip()
    p_setting = readahead.bdi_setting(ppath.parent)
    p_default = p_setting.read_text().strip()
    p_setting.write_text(g_window)
    g_cold, p_cold = common.alternate(args.repeat, lambda: cold(gpath), lambda: cold(ppath))

    def warm(target: Path | list[Path]) -> float:
        common.read_sequential(target)  # make sure it is in the page cache
        return common.read_sequential(target)[1]

    common.drop_caches()
    g_warm, d_warm = common.alternate(args.repeat, lambda: warm(gpath), lambda: warm(held))
    # The kernel's FUSE page-cache path itself, for reference: the passthrough's warm reread.
    p_warm = common.median([warm(ppath) for _ in range(args.repeat)])

    rng = random.Random(6)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(args.random_reads)]

    def rand(path: Path) -> float:
        common.drop_caches()
        return common.read_random(path, offsets)

    g_rand, p_rand = common.alternate(args.repeat, lambda: rand(gpath), lambda: rand(ppath))

    p_setting.write_text(p_default)
    g_cold2, p_cold2 = common.alternate(args.repeat, lambda: cold(gpath), lambda: cold(ppath))
    n = len(offsets)
    mb = size / MIB
    return [
        (f"cold sequential (MiB/s), both at {g_window} KiB readahead", f"{mb / g_cold:.0f}",
         f"{mb / p_cold:.0f} passthrough", f"{p_cold / g_cold:.2f}x",
         common.verdict(p_cold / g_cold, 0.9)),
        (f"reference: passthrough at {p_default} KiB", f"{mb / g_cold2:.0f}",
         f"{mb / p_cold2:.0f} passthrough", f"{p_cold2 / g_cold2:.2f}x", "kernel default"),
        ("warm reread (MiB/s)", f"{mb / g_warm:.0f}", f"{mb / d_warm:.0f} cache file",
         f"{d_warm / g_warm:.2f}x", common.verdict(d_warm / g_warm, 0.9)),
        ("reference: passthrough warm reread", "", f"{mb / p_warm:.0f} passthrough",
         f"{d_warm / p_warm:.2f}x", "vs cache file"),
        ("random 4 KiB (reads/s)", f"{n / g_rand:.0f}", f"{n / p_rand:.0f} passthrough",
         f"{p_rand / g_rand:.2f}x", common.verdict(p_rand / g_rand, 0.8)),
    ]


if __name__ == "__main__":
    common.run(main)
