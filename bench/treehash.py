"""Tree hash throughput: ``glacierfs.treehash.tree_hash`` vs one ``hashlib.sha256`` over the same
buffer, alternating, median of ``--repeat`` rounds. Goal: >= 1.5x on a 2-core machine.

Also printed, as the ceiling this machine allows right now: two plain threads each hashing half
of the buffer leaf by leaf (no pool, no tree) vs the same single sha256. On a machine whose other
tenants keep the cores busy that ceiling drops, and the tree hash with it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import common
from common import MIB

from glacierfs import treehash


def time_sha256(buf: bytes) -> float:
    started = time.perf_counter()
    hashlib.sha256(buf).digest()
    return time.perf_counter() - started


def time_tree(buf: bytes) -> float:
    started = time.perf_counter()
    treehash.tree_hash(buf)
    return time.perf_counter() - started


def time_two_threads(buf: bytes) -> float:
    view = memoryview(buf)
    half = len(view) // 2 // MIB * MIB

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi, MIB):
            hashlib.sha256(view[i:min(i + MIB, hi)]).digest()

    threads = [threading.Thread(target=work, args=(0, half)),
               threading.Thread(target=work, args=(half, len(view)))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--size", default="512M", help="buffer size (default 512M)")
    p.set_defaults(repeat=5)
    args = p.parse_args()
    size = common.parse_size(args.size)
    common.print_machine()
    buf = os.urandom(size)
    assert treehash.tree_hash(buf) == treehash.fold(treehash.leaf_hashes(buf, parallel=False))
    tree_s, sha_s = common.alternate(args.repeat, lambda: time_tree(buf), lambda: time_sha256(buf))
    two_s, sha2_s = common.alternate(args.repeat, lambda: time_two_threads(buf),
                                     lambda: time_sha256(buf))
    mb = size / MIB
    ratio = sha_s / tree_s
    common.table(f"tree hash of {mb:.0f} MiB (median of {args.repeat})", [
        ("tree_hash vs hashlib.sha256", f"{mb / tree_s:.0f} MiB/s", f"{mb / sha_s:.0f} MiB/s",
         f"{ratio:.2f}x", common.verdict(ratio, 1.5)),
        ("ceiling: 2 bare threads vs sha256", f"{mb / two_s:.0f} MiB/s", f"{mb / sha2_s:.0f} MiB/s",
         f"{sha2_s / two_s:.2f}x", "(reference)"),
    ])


if __name__ == "__main__":
    common.run(main)
