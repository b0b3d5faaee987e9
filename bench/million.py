"""A vault of 1,000,000 archives: inventory ingest, remount, listing, daemon memory.

The emulator synthesizes ``--count`` archive records (no bodies): a tenth in one directory
(``big/file{i}.bin``, the ``ls -f`` target), the rest as ``dir{d}/file{i}.bin`` in directories
of 1,000. A real inventory job is run and its JSON output downloaded; then

  ingest        ``ingest_inventory`` (what the daemon runs in its worker thread) in a fresh
                process: wall time and the process's peak RSS (VmHWM)   goal <= 60 s, <= 500 MB
  remount       mount command to the first non-empty listing of the vault   goal <= 2 s
  ls -f big     through the mount vs the same directory on tmpfs (ratio reported)
  find | wc -l  over the whole vault vs the same tree on tmpfs (ratio reported)
  daemon RSS    VmRSS / VmHWM of the mounted daemon after the listings
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import common

from glacierfs.options import state_dir_for

VAULT = "million"
BIG = "big"
PER_DIR = 1000
# The same tree on both sides: the mount's VAULT/.by-id (every archive again) is left out.
FIND = "find . -path ./.by-id -prune -o -print | wc -l"

INGEST = """
import json, os, sys, time
from pathlib import Path
from glacierfs.catalog.namespace import Namespace, ingest_inventory
from glacierfs.store import Store, prepare_state_dir
state, vault, path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
prepare_state_dir(state)
store = Store(state)
Namespace(store).set_vaults([(vault, None)])
started = time.perf_counter()
with open(path, "rb") as f:
    result = ingest_inventory(store, vault, f, "JSON", "bench")
elapsed = time.perf_counter() - started
store.close()
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({"seconds": elapsed, "hwm": int(hwm) * 1024, "archives": result.archives}))
"""


def synthesize(sim, count: int) -> tuple[int, int]:  # noqa: ANN001
    big = max(1, count // 10)
    sim.synthesize(VAULT, big, 0, f"{BIG}/file{{i}}.bin")
    rest, d = count - big, 0
    while rest > 0:
        n = min(PER_DIR, rest)
        sim.synthesize(VAULT, n, 0, f"dir{d}/file{{i}}.bin")
        rest -= n
        d += 1
    return big, d


def build_tmpfs_tree(root: Path, big: int, dirs: int, count: int) -> None:
    (root / VAULT / BIG).mkdir(parents=True)
    for i in range(big):
        os.close(os.open(root / VAULT / BIG / f"file{i}.bin", os.O_CREAT | os.O_WRONLY, 0o444))
    rest = count - big
    for d in range(dirs):
        path = root / VAULT / f"dir{d}"
        path.mkdir()
        for i in range(min(PER_DIR, rest - d * PER_DIR)):
            os.close(os.open(path / f"file{i}.bin", os.O_CREAT | os.O_WRONLY, 0o444))


@contextlib.contextmanager
def tmpfs_mount(path: Path) -> Iterator[Path]:
    """A tmpfs on ``path`` for the duration (the listing baseline)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g,nr_inodes=0", "bench", str(path)],
                   check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def timed_shell(command: str, cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(command, shell=True, cwd=cwd, check=True, capture_output=True,
                         text=True).stdout
    return time.perf_counter() - started, out.strip()


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1_000_000, help="archives (default 1,000,000)")
    args = p.parse_args()
    count = args.count
    common.print_machine()
    with (common.workdir(args, "million") as work,
          common.emulator(work, "--delay", "inventory=1") as sim,
          tmpfs_mount(work / "tmpfs") as tmpfs):
        rows = run(sim, work, work / "mnt", tmpfs, count, args.repeat)
    common.table(f"a vault of {count:,} archives", rows)


def run(sim, work: Path, mnt: Path, tmpfs: Path, count: int, repeat: int) -> list:  # noqa: ANN001
    glacier = common.client(sim)
    glacier.create_vault(vaultName=VAULT)
    t = time.perf_counter()
    big, dirs = synthesize(sim, count)
    print(f"synthesized {count:,} archives in {time.perf_counter() - t:.1f} s", flush=True)
    job = glacier.initiate_job(vaultName=VAULT, jobParameters={"Type": "inventory-retrieval",
                                                               "Format": "JSON"})["jobId"]
    from glacierfs.sim.testing import wait_job
    wait_job(glacier, VAULT, job, timeout=600)
    inventory = work / "inventory.json"
    t = time.perf_counter()
    body = glacier.get_job_output(vaultName=VAULT, jobId=job)["body"]
    with open(inventory, "wb") as f:
        for piece in iter(lambda: body.read(1 << 20), b""):
            f.write(piece)
    print(f"inventory {inventory.stat().st_size / common.MIB:.0f} MiB downloaded in "
          f"{time.perf_counter() - t:.1f} s", flush=True)

    cache = work / "cache"
    state = state_dir_for(cache, "us-east-1", sim.url)
    out = subprocess.run([sys.executable, "-c", INGEST, str(state), VAULT, str(inventory)],
                         check=True, capture_output=True, text=True, cwd=common.REPO)
    ingest = json.loads(out.stdout.strip().splitlines()[-1])
    assert ingest["archives"] == count, ingest
    print(f"ingested in {ingest['seconds']:.1f} s, peak RSS {ingest['hwm'] / 1e6:.0f} MB",
          flush=True)

    t = time.perf_counter()
    build_tmpfs_tree(tmpfs, big, dirs, count)
    print(f"same tree on tmpfs built in {time.perf_counter() - t:.1f} s", flush=True)

    started = time.perf_counter()
    common.mount_glacierfs(sim, mnt, cache)
    try:
        common.wait_for(lambda: len(os.listdir(mnt / VAULT)) > 0, 60, "a listable vault",
                        interval=0.01)
        remount = time.perf_counter() - started
        ls_g, ls_t = common.alternate(repeat, lambda: timed_shell(f"ls -f {BIG} | wc -l",
                                                                  mnt / VAULT)[0],
                                      lambda: timed_shell(f"ls -f {BIG} | wc -l",
                                                          tmpfs / VAULT)[0])
        n_g = timed_shell(FIND, mnt / VAULT)[1]
        n_t = timed_shell(FIND, tmpfs / VAULT)[1]
        find_g, find_t = common.alternate(repeat, lambda: timed_shell(FIND,
                                                                      mnt / VAULT)[0],
                                          lambda: timed_shell(FIND,
                                                              tmpfs / VAULT)[0])
        pid = common.daemon_pid(mnt)
        rss = common.proc_status(pid, "VmRSS") if pid else 0
        hwm = common.proc_status(pid, "VmHWM") if pid else 0
    finally:
        common.unmount(mnt)
    print(f"find counted {n_g} entries through the mount, {n_t} on tmpfs "
          f"(.by-id left out)", flush=True)
    return [
        ("inventory ingest (s)", f"{ingest['seconds']:.1f}", "", "", common.verdict(
            ingest["seconds"] / 60, 1.0, higher_is_better=False).replace("1x", "60 s")),
        ("ingest peak RSS (MB)", f"{ingest['hwm'] / 1e6:.0f}", "", "", common.verdict(
            ingest["hwm"] / 500e6, 1.0, higher_is_better=False).replace("1x", "500 MB")),
        ("remount to a listable vault (s)", f"{remount:.2f}", "", "", common.verdict(
            remount / 2, 1.0, higher_is_better=False).replace("1x", "2 s")),
        (f"ls -f of {big:,} entries (s)", f"{ls_g:.2f}", f"{ls_t:.2f} tmpfs",
         f"{ls_t / ls_g:.2f}x", "reported"),
        (f"find | wc -l over {count:,} (s)", f"{find_g:.1f}", f"{find_t:.1f} tmpfs",
         f"{find_t / find_g:.2f}x", "reported"),
        ("daemon RSS after listing (MB)", f"{rss / 1e6:.0f} (peak {hwm / 1e6:.0f})", "", "",
         "reported"),
    ]


if __name__ == "__main__":
    common.run(main)
