"""Ranged retrievals: `unzip -l` of a large zip, ranged (range_size=32M) vs whole-archive.

A zip of ``--size`` bytes (stored members of random bytes, made with Python's zipfile) is
uploaded to the emulator (multipart). For each side, alternating, a fresh mount (empty cache,
``wait=300`` so the read waits for its job instead of failing) runs ``unzip -l``, which needs
only the central directory at the end of the archive. Measured per round:

  retrieved         bytes of the retrieval jobs started (what Glacier bills per GB)
  downloaded        bytes of job output sent by the emulator by the time the listing is out
  time to listing   seconds from starting unzip to its output (its first useful byte)

Jobs take the same time on both sides (the emulator's Standard delay, 1 s here; hours on AWS),
so the time ratio measures the local work; the retrieved ratio is the saving, about
size / (one or two windows). Between rounds every job is expired so the next mount cannot reuse
it. Prices for the cost line: Glacier vault list prices (us-east-1) in the README's cost model.
``--range-size`` and ``--chunk-size`` change the windows (e.g. 2M and 1M for a quick run on a
small zip).
"""

from __future__ import annotations

import io
import random
import subprocess
import time
import zipfile

import common

from glacierfs.formatting import human

VAULT = "bench"
MIB = common.MIB
PART = 16 * MIB
STANDARD_PER_GB = 0.01          # $ per GB retrieved, Standard (README cost model)
STANDARD_PER_REQUEST = 0.05 / 1000


def make_zip(size: int) -> bytes:
    rng = random.Random(1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        i = 0
        while buf.tell() < size:
            zf.writestr(f"data/part-{i:05d}.bin", rng.randbytes(rng.randint(MIB, 8 * MIB)))
            i += 1
    return buf.getvalue()


def upload(glacier, data: bytes) -> None:  # noqa: ANN001
    from glacierfs.treehash import tree_hash_hex
    up = glacier.initiate_multipart_upload(vaultName=VAULT, archiveDescription="backup.zip",
                                           partSize=str(PART))
    view = memoryview(data)
    for start in range(0, len(data), PART):
        piece = view[start:start + PART]
        glacier.upload_multipart_part(vaultName=VAULT, uploadId=up["uploadId"],
                                      range=f"bytes {start}-{start + len(piece) - 1}/*",
                                      body=bytes(piece))
    glacier.complete_multipart_upload(vaultName=VAULT, uploadId=up["uploadId"],
                                      archiveSize=str(len(data)), checksum=tree_hash_hex(data))


def jobs(glacier, size: int) -> list[tuple[str, int]]:  # noqa: ANN001
    out = []
    for job in glacier.list_jobs(vaultName=VAULT)["JobList"]:
        if job["Action"] == "ArchiveRetrieval":
            start, end = map(int, (job.get("RetrievalByteRange") or f"0-{size - 1}").split("-"))
            out.append((job["JobId"], end - start + 1))
    return out


def one_round(sim, glacier, work, size: int, extra: str, n: int) -> tuple[int, int, float]:  # noqa: ANN001
    mnt = work / f"mnt-{n}"
    sent = sim.stats().get("bytes_sent", 0)
    with common.mounted(sim, mnt, work / f"cache-{n}", extra=f"wait=300,{extra}"):
        path = mnt / VAULT / "backup.zip"
        common.wait_for(path.exists, 60, "the vault to be listed")
        started = time.perf_counter()
        subprocess.run(["unzip", "-l", str(path)], check=True, capture_output=True, timeout=600)
        seconds = time.perf_counter() - started
        downloaded = sim.stats().get("bytes_sent", 0) - sent
        started_jobs = jobs(glacier, size)
    for job_id, _ in started_jobs:
        sim.expire_job(job_id)
    return sum(b for _, b in started_jobs), downloaded, seconds


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--size", type=common.parse_size, default=500 * MIB,
                   help="size of the zip (default 500M)")
    p.add_argument("--range-size", default="32M",
                   help="the ranged side's range_size (default 32M)")
    p.add_argument("--chunk-size", default=None,
                   help="both sides' chunk_size (default: glacierfs's; range_size must be a "
                        "multiple of it)")
    args = p.parse_args()
    chunk = f",chunk_size={args.chunk_size}" if args.chunk_size else ""
    common.print_machine()
    with (common.workdir(args, "ranged") as work,
          common.emulator(work, "--delay", "Standard=1", "--delay", "inventory=1") as sim):
        glacier = common.client(sim)
        glacier.create_vault(vaultName=VAULT)
        data = make_zip(args.size)
        upload(glacier, data)
        results: dict[str, list[tuple[int, int, float]]] = {"ranged": [], "whole": []}
        for n in range(args.repeat):
            for side, extra in (("ranged", f"range_size={args.range_size}"),
                                ("whole", "range_size=off")):
                results[side].append(one_round(sim, glacier, work, len(data), extra + chunk,
                                               2 * n + (side == "whole")))
    med = {side: tuple(common.median([r[i] for r in rs]) for i in range(3))
           for side, rs in results.items()}
    (r_ret, r_down, r_time), (w_ret, w_down, w_time) = med["ranged"], med["whole"]
    gb = 1e9
    rows = [
        ("retrieved (billed)", human(r_ret), human(w_ret),
         f"{r_ret / w_ret:.3f}×", f"{w_ret / r_ret:.0f}× less"),
        ("downloaded until the listing", human(r_down), human(w_down),
         f"{r_down / max(w_down, 1):.2f}×", "—"),
        ("time to listing (unzip -l)", f"{r_time:.2f} s", f"{w_time:.2f} s",
         f"{r_time / w_time:.2f}×", "—"),
        ("Standard cost at AWS prices", f"${r_ret / gb * STANDARD_PER_GB + STANDARD_PER_REQUEST:.5f}",
         f"${w_ret / gb * STANDARD_PER_GB + STANDARD_PER_REQUEST:.5f}", "—", "—"),
    ]
    common.table(f"unzip -l of a {len(data) / MIB:.0f} MiB zip: ranged ({args.range_size}) vs "
                 f"whole archive (medians of {args.repeat})", rows)


if __name__ == "__main__":
    common.run(main)
