"""Soak: a mount under a sustained mixed workload; do the daemon's resources stay flat?

Other benchmarks measure one operation for seconds. A daemon that leaks a little per request
(memory, a file descriptor, a thread, state rows) only shows it after thousands of them, so
this one runs a mount for ``--duration`` seconds under every kind of request at once, against
the emulator with short job delays:

  archives     a vault of ~340: 40 uploaded random files (64 KiB - 3 MiB) and 300 synthesized
               zero-filled ones (4 KiB - 2.5 MiB), mounted with chunk_size=1M, cache_size=8M
               and poll=0.5, so chunks are evicted and fetched again all the time; job output
               expires after ``--job-ttl`` (60 s), so new jobs are started all through the run,
               not only in the first minutes
  workers      ``--workers`` threads: whole-file and random-range reads (EREMOTE means "retrieval
               running": sleep briefly and read again), every byte compared with what was
               uploaded; listdir/stat walks of the tree; getxattr of user.glacier.*; now and
               then a restore request or `glacierfs status --json`
  samples      every ``--sample`` seconds: the daemon's RSS, open fds and threads, and the disk
               use of its state dir (inventory, jobs, chunk cache)

For each resource: the value after the warm-up (the first 20% of the run), at the end, the
maximum, and the growth per hour from a least-squares slope over the post-warm-up samples.
The verdict is a measurement ("flat" within a stated tolerance), not an assertion, and needs
five minutes of samples after the warm-up (shorter runs, such as ``--quick``, say "too short to
tell"); the exit status is non-zero only if a byte mismatched or the daemon died.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import random
import stat
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import common
from common import MIB

from glacierfs.options import state_dir_for

VAULT = "soak"
CHUNK, CACHE = "1M", "8M"
DELAYS = ("Standard=0.5", "Expedited=0.2", "inventory=0.5")
UPLOADS = 40                                # random files: sizes 64 KiB - 3 MiB
SYNTHESIZED = {4096: 100, 300 * 1024: 100, MIB + 123: 60, 5 * MIB // 2: 40}  # size: count
WARMUP = 0.2                                # fraction of the run before the trend is measured
STUCK_AFTER = 120.0                         # seconds of EREMOTE before a read counts as stuck
SHORTEST_TREND = 300.0                      # seconds of samples a growth verdict needs
STATUS_EVERY = 20.0                         # seconds between `glacierfs status --json` runs
# Growth per hour still called flat: well under what one leaked object per request would give.
TOLERANCE = {"daemon RSS (MiB)": 16.0, "open fds": 20.0, "threads": 5.0,
             "state dir (MiB)": 16.0}
ZEROS = memoryview(bytes(max(SYNTHESIZED)))


class Stopped(Exception):
    """The run is over while a read was still waiting for its retrieval."""


@dataclass
class Archive:
    size: int
    data: bytes | None = None  # None: a synthesized archive, all zeros

    def expected(self, offset: int, n: int) -> memoryview:
        n = max(0, min(n, self.size - offset))
        return memoryview(self.data)[offset:offset + n] if self.data else ZEROS[:n]


@dataclass
class Tally:
    """Counters shared by the workers, and the first few unexpected errors in full."""
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def error(self, what: str) -> None:
        with self.lock:
            self.counts["unexpected errors"] += 1
            if len(self.errors) < 20:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {what}")


# --- the daemon ----------------------------------------------------------------------------

def status_field(pid: int, name: str) -> int:
    """A number from /proc/PID/status (Threads, VmRSS in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def disk_use(path: Path) -> int:
    """Bytes allocated under ``path`` (what du counts)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def sample(pid: int, state: Path) -> dict[str, float]:
    return {"daemon RSS (MiB)": status_field(pid, "VmRSS") / 1024,
            "open fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": status_field(pid, "Threads"),
            "state dir (MiB)": disk_use(state) / MIB}


# --- the workload --------------------------------------------------------------------------

def build_vault(sim, glacier) -> dict[str, Archive]:  # noqa: ANN001
    """Upload and synthesize the archives; their paths in the vault, with what they hold."""
    glacier.create_vault(vaultName=VAULT)
    rng = random.Random(11)
    archives = {}
    for i in range(UPLOADS):
        data = rng.randbytes(rng.randrange(64 * 1024, 3 * MIB))
        glacier.upload_archive(vaultName=VAULT, body=data, archiveDescription=f"random/f{i}.bin")
        archives[f"random/f{i}.bin"] = Archive(len(data), data)
    for size, count in SYNTHESIZED.items():
        sim.synthesize(VAULT, count, size, f"zeros/{size}/f{{i}}.bin")
        archives.update({f"zeros/{size}/f{i}.bin": Archive(size) for i in range(count)})
    return archives


def pread_ready(fd: int, n: int, offset: int, tally: Tally, stop: threading.Event) -> bytes:
    """pread, reading again while the answer is EREMOTE (the archive's retrieval is running)."""
    waited_since = time.monotonic()
    while True:
        try:
            return os.pread(fd, n, offset)
        except OSError as exc:
            if exc.errno != errno.EREMOTE:
                raise
            tally.add("not-ready answers")
            if stop.is_set():
                raise Stopped from None
            if time.monotonic() - waited_since > STUCK_AFTER:
                raise TimeoutError(f"not ready for {STUCK_AFTER:.0f} s at offset {offset}") from None
            time.sleep(0.1)


def compare(archive: Archive, offset: int, n: int, data: bytes, tally: Tally, what: str) -> None:
    want = archive.expected(offset, n)
    tally.add("bytes compared", len(want))
    if data != want:
        bad = abs(len(want) - len(data)) + sum(a != b for a, b in zip(data, want, strict=False))
        tally.add("mismatched bytes", bad)
        tally.error(f"{what}: {bad} wrong bytes at {offset}+{n} (got {len(data)} bytes)")


def read_file(path: Path, archive: Archive, ranges: int, rng: random.Random, tally: Tally,
              stop: threading.Event) -> None:
    """The whole file in 128 KiB reads (ranges=0), or ``ranges`` random preads; then drop the
    file's page cache so the next read reaches the daemon again."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if ranges:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            spans = [(off, rng.randrange(1, 300_000))
                     for off in (rng.randrange(archive.size) for _ in range(ranges))]
        else:
            spans = [(off, 128 * 1024) for off in range(0, archive.size, 128 * 1024)]
            spans.append((archive.size, 4096))  # end of file: nothing more
        for offset, n in spans:
            # As every tool does, a short read (fewer bytes than asked, before the end of the
            # file) is followed by another read from where it stopped; only an empty read ends
            # the span. A short read is counted, and an end of file before the file's size
            # after one is an error of its own (and wrong bytes).
            data = bytearray()
            while len(data) < n:
                piece = pread_ready(fd, n - len(data), offset + len(data), tally, stop)
                if not piece:
                    break
                data += piece
                if len(data) < n and offset + len(data) < archive.size:
                    tally.add("short reads")
            if offset + len(data) < min(offset + n, archive.size):
                tally.add("early ends of file")
                tally.error(f"{path.name}: end of file at {offset + len(data)} of "
                            f"{archive.size} bytes, reading {n} at {offset}")
            compare(archive, offset, n, bytes(data), tally, path.name)
        tally.add("range reads" if ranges else "whole-file reads")
    finally:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def walk(root: Path, tally: Tally) -> int:
    """listdir + lstat of everything under ``root``; the number of files seen."""
    files = 0
    for name in os.listdir(root):
        st = os.lstat(root / name)
        tally.add("stats")
        if stat.S_ISDIR(st.st_mode):
            files += walk(root / name, tally)
        else:
            files += 1
    tally.add("listings")
    return files


def listed(vault: Path) -> int:
    """Files in the vault's tree (not counting .by-id); 0 while it is not there yet."""
    try:
        return walk(vault, Tally()) - len(os.listdir(vault / ".by-id"))
    except FileNotFoundError:
        return 0


JOB_STATES = {"Queued", "InProgress", "Succeeded"}


def read_xattrs(path: Path, archive: Archive, tally: Tally) -> None:
    """The attributes `glacierfs status`, `wait` and scripts read; job ones may be absent."""
    for name in ("user.glacier.cache", "user.glacier.cache.bytes", "user.glacier.size",
                 "user.glacier.job.status", "user.glacier.job.tier"):
        try:
            value = os.getxattr(path, name).decode()
        except OSError as exc:
            if exc.errno != errno.ENODATA or ".job." not in name:
                raise
            value = None
        tally.add("xattr reads")
        if name == "user.glacier.size" and value != str(archive.size):
            tally.error(f"{path.name}: {name}={value}, uploaded {archive.size}")
        if name == "user.glacier.job.status" and value is not None and value not in JOB_STATES:
            tally.error(f"{path.name}: {name}={value}")


def run_status(mnt: Path, tally: Tally) -> None:
    out = subprocess.run([sys.executable, "-m", "glacierfs.cli", "status", "--json", str(mnt)],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        tally.error(f"glacierfs status --json: exit {out.returncode}: {out.stderr.strip()}")
        return
    json.loads(out.stdout)
    tally.add("status --json")


def worker(seed: int, mnt: Path, archives: dict[str, Archive], tally: Tally,
           stop: threading.Event, next_status: list[float]) -> None:
    """Loop over a random mix of operations until ``stop``; errors are tallied, not raised."""
    rng = random.Random(seed)
    names = sorted(archives)
    random_names = [n for n in names if archives[n].data]
    vault = mnt / VAULT
    while not stop.is_set():
        name = rng.choice(random_names if rng.random() < 0.5 else names)
        path, archive = vault / name, archives[name]
        op = rng.choices(["whole", "ranges", "walk", "xattrs", "restore"], [30, 30, 5, 30, 5])[0]
        try:
            if op == "whole":
                read_file(path, archive, 0, rng, tally, stop)
            elif op == "ranges":
                read_file(path, archive, 4, rng, tally, stop)
            elif op == "walk":
                if (seen := walk(mnt, tally) - len(os.listdir(vault / ".by-id"))) != len(names):
                    tally.error(f"walk saw {seen} files outside .by-id, expected {len(names)}")
            elif op == "xattrs":
                read_xattrs(path, archive, tally)
                json.loads(os.getxattr(mnt, "user.glacier.status"))
                tally.add("xattr reads")
            else:
                os.setxattr(path, "user.glacier.restore", b"Expedited")
                tally.add("restore requests")
                read_file(path, archive, 0, rng, tally, stop)
            with tally.lock:
                due = time.monotonic() >= next_status[0]
                if due:
                    next_status[0] = time.monotonic() + STATUS_EVERY
            if due:
                run_status(mnt, tally)
        except Stopped:
            return
        except (OSError, TimeoutError, ValueError, subprocess.SubprocessError) as exc:
            code = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
            tally.add(f"error {code}")
            tally.error(f"{op} {name}: {code}: {exc}")
            if isinstance(exc, OSError) and exc.errno == errno.ENOTCONN:
                return  # the daemon is gone; the sampler reports it


# --- the trend -----------------------------------------------------------------------------

def trend(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares growth per hour and its standard error."""
    if len(points) < 3:
        return 0.0, math.inf
    ts, vs = [t for t, _ in points], [v for _, v in points]
    fit = statistics.linear_regression(ts, vs)
    mean_t = statistics.fmean(ts)
    sxx = sum((t - mean_t) ** 2 for t in ts)
    resid = sum((v - fit.intercept - fit.slope * t) ** 2 for t, v in points)
    return fit.slope * 3600, math.sqrt(resid / (len(points) - 2) / sxx) * 3600 if sxx else math.inf


def resource_rows(samples: list[tuple[float, dict[str, float]]], warm_at: float) -> list[tuple]:
    rows = []
    for name, tol in TOLERANCE.items():
        after = ([(t, s[name]) for t, s in samples if t >= warm_at]
                 or [(t, s[name]) for t, s in samples])
        warm, end = after[0][1], after[-1][1]
        peak = max(s[name] for _, s in samples)
        growth, se = trend(after)
        if after[-1][0] - after[0][0] < SHORTEST_TREND:
            verdict = "too short to tell"  # minutes of noise can hide or fake any slope
        elif growth <= tol:
            verdict = "flat"
        elif growth - 2 * se <= tol:
            verdict = "inconclusive (within noise)"
        else:
            verdict = "GROWING"
        unit = "MiB/h" if "MiB" in name else "/h"
        print(f"{name}: {verdict}: {growth:+.1f} {unit} (±{se:.1f}; flat means <= {tol:g}), "
              f"{warm:.1f} after warm-up, {end:.1f} at end, max {peak:.1f}", flush=True)
        rows.append((name, f"{end:.1f} at end, max {peak:.1f}", f"{warm:.1f} after warm-up",
                     f"{end / warm:.2f}x" if warm else "",
                     f"{growth:+.1f} {unit} ±{se:.1f}: {verdict} (<= {tol:g})"))
    return rows


# --- the run -------------------------------------------------------------------------------

def progress(now: float, last: dict[str, float], c: Counter[str]) -> None:
    print(f"{now:5.0f} s  RSS {last['daemon RSS (MiB)']:.1f} MiB, {last['open fds']:.0f} fds, "
          f"{last['threads']:.0f} threads, state {last['state dir (MiB)']:.1f} MiB; "
          f"reads {c['whole-file reads'] + c['range reads']}, not ready {c['not-ready answers']}, "
          f"mismatched {c['mismatched bytes']}, errors {c['unexpected errors']}", flush=True)


def soak(args: argparse.Namespace, sim, mnt: Path, state: Path,  # noqa: ANN001
         archives: dict[str, Archive]) -> tuple[list[tuple], bool]:
    """Run the workers and the sampler; (table rows, whether the daemon survived)."""
    pid = common.daemon_pid(mnt)
    if pid is None:
        raise RuntimeError(f"no glacierfs daemon found for {mnt}")
    tally, stop, next_status = Tally(), threading.Event(), [0.0]
    threads = [threading.Thread(target=worker, daemon=True,
                                args=(i, mnt, archives, tally, stop, next_status))
               for i in range(args.workers)]
    samples: list[tuple[float, dict[str, float]]] = []
    sim.reset_stats()
    started = time.monotonic()
    for t in threads:
        t.start()
    died = False
    while (now := time.monotonic() - started) < args.duration:
        if not alive(pid) or not os.path.ismount(mnt):
            died = True
            print(f"the daemon (pid {pid}) died after {now:.0f} s", flush=True)
            break
        try:
            samples.append((now, sample(pid, state)))
        except OSError:
            time.sleep(0.1)  # gone between the check and the sample: the next check says so
            continue
        if len(samples) % max(1, round(60 / args.sample)) == 0:
            progress(now, samples[-1][1], tally.counts)
        time.sleep(max(0.0, args.sample - (time.monotonic() - started - now)))
    if not died:
        with contextlib.suppress(OSError):
            samples.append((time.monotonic() - started, sample(pid, state)))
    stop.set()
    for t in threads:
        t.join(STUCK_AFTER)
    elapsed = time.monotonic() - started
    stuck = sum(t.is_alive() for t in threads)
    calls = sim.stats().get("requests", {})
    c = tally.counts
    print("unexpected errors:" if tally.errors else "no unexpected errors", flush=True)
    for line in tally.errors:
        print("  " + line)
    rows = [
        ("duration (s)", f"{elapsed:.0f}", "", "",
         f"{args.workers} workers, warm-up {args.duration * WARMUP:.0f} s, "
         f"{len(samples)} samples"),
        ("reads: whole files / 4 random ranges", f"{c['whole-file reads']} / {c['range reads']}",
         "", "", "report"),
        ("bytes compared", f"{c['bytes compared']:,}", "", "", "report"),
        ("mismatched bytes", str(c["mismatched bytes"]), "", "",
         "must be 0: " + ("ok" if not c["mismatched bytes"] else "WRONG BYTES SERVED")),
        ("not-ready answers (EREMOTE, read again)", str(c["not-ready answers"]), "", "", "report"),
        ("short reads (read on) / early ends of file after one",
         f"{c['short reads']} / {c['early ends of file']}", "", "",
         "must be 0 early ends: " + ("ok" if not c["early ends of file"] else "EARLY EOF")),
        ("listings / stats", f"{c['listings']} / {c['stats']}", "", "", "report"),
        ("xattr reads / restore requests", f"{c['xattr reads']} / {c['restore requests']}",
         "", "", "report"),
        ("glacierfs status --json", str(c["status --json"]), "", "", "report"),
        ("unexpected errors", str(c["unexpected errors"]), "", "",
         ", ".join(f"{k[6:]} {v}" for k, v in sorted(c.items()) if k.startswith("error "))
         or "none"),
        (f"Glacier calls: InitiateJob / GetJobOutput (ttl {args.job_ttl:g} s)",
         f"{calls.get('InitiateJob', 0)} / {calls.get('GetJobOutput', 0)}", "", "",
         f"ListJobs {calls.get('ListJobs', 0)}"),
        ("daemon alive at the end", "no" if died else "yes", "", "",
         f"{stuck} workers still blocked" if stuck else ""),
    ]
    if samples:
        rows += resource_rows(samples, args.duration * WARMUP)
    return rows, not died and not c["mismatched bytes"]


def log_problems(log: Path) -> None:
    """The daemon log's warnings and errors, for the report (the work dir may be removed)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return
    bad = [line for line in lines if any(w in line for w in ("WARNING", "ERROR", "CRITICAL",
                                                              "Traceback"))]
    print(f"daemon log: {len(lines)} lines, {len(bad)} warnings/errors", flush=True)
    for line in bad[:20]:
        print("  " + line)


def main() -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    p.add_argument("--quick", action="store_true", help="a 60 s run")
    p.add_argument("--workers", type=int, default=4, help="worker threads (default 4)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--job-ttl", type=float, default=60.0,
                   help="seconds the emulator keeps a job's output (default 60)")
    args = p.parse_args()
    if args.quick:
        args.duration = 60.0
    common.print_machine()
    ok = False
    with common.workdir(args, "soak") as work:
        mnt, cache, log = work / "mnt", work / "cache", work / "glacierfs.log"
        try:
            with common.emulator(work, "--job-ttl", str(args.job_ttl),
                                 *(a for d in DELAYS for a in ("--delay", d))) as sim:
                archives = build_vault(sim, common.client(sim))
                extra = f"chunk_size={CHUNK},cache_size={CACHE},poll=0.5,log={log}"
                with common.mounted(sim, mnt, cache, extra):
                    common.wait_for(lambda: listed(mnt / VAULT) == len(archives), 120,
                                    "the inventory")
                    rows, ok = soak(args, sim, mnt, state_dir_for(cache, "us-east-1", sim.url),
                                    archives)
        finally:
            log_problems(log)
    common.table(f"soak: {args.duration:.0f} s, {len(archives)} archives, chunk_size={CHUNK}, "
                 f"cache_size={CACHE} (baseline: after warm-up; ratio: end / after warm-up)",
                 rows)
    return 0 if ok else 1


if __name__ == "__main__":
    common.run(main)
