"""API economy: how many Glacier calls 1,000 retrievals in flight in one vault cost.

The emulator holds ``--count`` archives (records only, 1 MiB bodies of zeros) and a Standard
delay far longer than the run. Through a mount (``poll=1``: a polling round every second),
every archive gets ``setfattr -n user.glacier.restore -v Standard``. Then, counted by the
emulator (``GET /_sim/stats``):

  calls per polling round   ListJobs calls per round while all jobs are in flight
                            (goal: a few pages; one call per job would be 1,000)
  calls per restore         every call from the first request to the last archive cached,
                            after the emulator completes all jobs at once, divided by the count

The baseline for the first figure is one call per job per round (DescribeJob polling).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import common

VAULT = "bench"
DIR = "restore"
MIB = common.MIB


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1000, help="archives to restore (default 1000)")
    p.add_argument("--rounds", type=int, default=10, help="polling rounds to count (default 10)")
    args = p.parse_args()
    common.print_machine()
    n = args.count
    with (common.workdir(args, "api") as work,
          common.emulator(work, "--delay", "Standard=86400", "--delay", "inventory=1",
                          verbose=True) as sim):
        glacier = common.client(sim)
        glacier.create_vault(vaultName=VAULT)
        sim.synthesize(VAULT, n, MIB, f"{DIR}/file{{i}}.bin")
        with common.mounted(sim, work / "mnt", work / "cache"):
            rows = measure(sim, work / "mnt" / VAULT, n, args.rounds)
    common.table(f"Glacier API calls with {n} retrievals in flight in one vault", rows)


def _calls(sim) -> dict[str, int]:  # noqa: ANN001
    return dict(sim.stats().get("requests", {}))


def _list_jobs_rounds(log: Path, offset: int) -> int:
    """ListJobs requests without a marker in the emulator's log from ``offset``: each is the
    first page of one listing, so one polling round."""
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    return sum(1 for line in lines
               if '"GET ' in line and "/jobs?" in line and "/jobs/" not in line
               and "marker=" not in line)


def measure(sim, vault: Path, n: int, rounds: int) -> list:  # noqa: ANN001
    common.wait_for(lambda: (vault / DIR).is_dir() and len(os.listdir(vault / DIR)) == n, 120,
                    "the inventory")
    files = sorted(vault / DIR / name for name in os.listdir(vault / DIR))
    sim.reset_stats()
    started = time.monotonic()
    for path in files:
        os.setxattr(path, "user.glacier.restore", b"Standard")
    print(f"{n} restores requested in {time.monotonic() - started:.1f} s", flush=True)
    common.wait_for(lambda: _calls(sim).get("InitiateJob", 0) >= n, 120, "the jobs")
    time.sleep(2)  # let the first poll after the burst pass
    before = _calls(sim)
    log_from = sim.log_path.stat().st_size
    time.sleep(rounds)
    after = _calls(sim)
    in_flight = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    started_rounds = _list_jobs_rounds(sim.log_path, log_from)
    per_round = sum(in_flight.values()) / max(1, started_rounds)
    print(f"calls during {started_rounds} polling rounds with {n} jobs in flight: {in_flight}",
          flush=True)

    completed = sim.complete_jobs(vault=VAULT)
    print(f"emulator completed {len(completed)} jobs", flush=True)
    t1 = time.monotonic()

    def all_cached() -> bool:
        return all(common.getxattr(f, "user.glacier.cache") == "cached" for f in files)

    common.wait_for(all_cached, 600, "every archive cached", interval=1.0)
    print(f"all {n} archives cached {time.monotonic() - t1:.1f} s after completion", flush=True)
    total = _calls(sim)
    print(f"calls from the first request to the last archive cached: {total}", flush=True)
    pages = math.ceil(n / 50)
    per_restore = sum(total.values()) / n
    return [
        ("calls per polling round (in flight)", f"{per_round:.1f}",
         f"{n} (one DescribeJob per job)", f"{per_round / n:.3f}x",
         f"a few pages (all jobs listed: {pages})"),
        ("calls per completed restore", f"{per_restore:.2f}",
         "1 InitiateJob + 1 GetJobOutput", "", ", ".join(f"{k} {v / n:.2f}"
                                                         for k, v in sorted(total.items()))),
    ]


if __name__ == "__main__":
    common.run(main)
