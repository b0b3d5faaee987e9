"""Every script in bench/ works: ``--help`` answers at once and starts nothing; every benchmark
runs end to end at a tiny size (the sizes of ``run_all.py --tiny``), exits 0 and prints its
table; one stopped half-way (SIGTERM, or an error of its own) takes its emulator and mounts
down. Tiny sizes prove the benchmarks run, not what they measure, so no figure is judged
here except the few that are exact (a listing's count, bytes compared, the ranged saving).

The tiny runs start together in a module fixture, a few at a time, so the file takes about as
long as its longest benchmark rather than their sum.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from bench_support import (HELPERS, Run, Started, fuse_unavailable, load_run_all,
                           mounts_under, run_script, scripts)

RUN_ALL = load_run_all()
TINY = {name: tiny for name, (_quick, tiny) in RUN_ALL.BENCHMARKS.items()}
NO_MOUNT = {"treehash.py"}           # the one benchmark that needs no FUSE and no root
PARALLEL = 3                          # runs at once: most of a run's time is waiting on jobs
TIMEOUT = 240.0                       # seconds for one tiny run on a loaded 2-core machine
HELP_TIMEOUT = 60.0
HEADER = re.compile(r"^measurement\s+glacierfs\s+baseline\s+ratio\s+goal$", re.M)
R = r"\d+\.\d+[x×]"                   # a ratio as the tables print it

# For each benchmark, lines its result table must have (regular expressions, one line each).
RESULT_LINES = {
    "treehash.py": [rf"^tree_hash vs hashlib\.sha256\s+\d+ MiB/s\s+\d+ MiB/s\s+{R}\s+>= 1\.5x"],
    "read_cached.py": [rf"^cold sequential \(MiB/s\).*\s+\d+\s+\d+ passthrough\s+{R}",
                       rf"^warm reread \(MiB/s\)\s+\d+\s+\d+ cache file\s+{R}",
                       rf"^random 4 KiB \(reads/s\)\s+\d+\s+\d+ passthrough\s+{R}"],
    "download.py": [rf"^restore until cached vs get-job-output \+ tree hash \(MiB/s\)\s+\d+\s+"
                    rf"\d+ aws cli\s+{R}",
                    rf"^downloads=4 \(MiB/s\)\s+\d+\s+\d+ = 4 x cap\s+{R}",
                    rf"^downloads=4 vs the AWS CLI's one stream \(MiB/s\)\s+\d+\s+\d+ aws cli\s+"
                    rf"{R}"],
    "million.py": [r"^inventory ingest \(s\)\s+\d+\.\d\s+<= 60 s (met|MISSED)",
                   r"^remount to a listable vault \(s\)\s+\d+\.\d\d\s+<= 2 s (met|MISSED)",
                   rf"^find \| wc -l over 50 \(s\)\s+\d+\.\d\s+\d+\.\d tmpfs\s+{R}"],
    "api_economy.py": [rf"^calls per polling round \(in flight\)\s+\d+\.\d\s+20 \(one DescribeJob "
                       rf"per job\)\s+{R}",
                       r"^calls per completed restore\s+\d+\.\d\d\s+1 InitiateJob"],
    "ranged.py": [rf"^retrieved \(billed\)\s+\d+\.\d [KM]iB\s+\d+\.\d MiB\s+{R}",
                  rf"^time to listing \(unzip -l\)\s+\d+\.\d\d s\s+\d+\.\d\d s\s+{R}"],
    "copy_tree.py": [rf"^time, s \(lower is better\)\s+\d+\.\d\s+\d+\.\d\s+{R}",
                     rf"^bytes downloaded / tree\s+\d\.\d{{3}}\s+\d\.\d{{3}}\s+{R}"],
    "copy_s3.py": [rf"^time, s \(lower is better\)\s+\d+\.\d\s+\d+\.\d\s+{R}",
                   r"^bytes downloaded / uploaded\s+\d\.\d{3}\s+\d\.\d{3}\s+"],
    "notify.py": [rf"^completion to cached\s+\d+\.\d\d s \(SNS/SQS, poll=3600\)\s+"
                  rf"\d+\.\d\d s \(poll=\d+\)\s+{R}"],
    "soak.py": [r"^mismatched bytes\s+0\s+must be 0: ok$",
                r"^daemon alive at the end\s+yes",
                r"^daemon RSS \(MiB\)\s+\d+\.\d at end",
                r"^open fds\s+\d+\.\d at end"],
}
# Longest first, so the pool ends close to the longest run.
ORDER = ["copy_tree.py", "soak.py", "copy_s3.py", "download.py", "api_economy.py", "notify.py", "ranged.py",
         "read_cached.py", "million.py", "treehash.py"]


def test_every_benchmark_is_listed_and_named_apart_from_the_standard_library() -> None:
    names = set(scripts())
    assert set(RUN_ALL.BENCHMARKS) == names - set(HELPERS), \
        "bench/run_all.py's BENCHMARKS must name every benchmark in bench/ (or HELPERS it)"
    assert set(RESULT_LINES) == set(ORDER) == set(RUN_ALL.BENCHMARKS)
    # ``python bench/X.py`` puts bench/ first on sys.path: a script named like a module
    # shadows it for every script there (bench/copy.py once broke boto3's copy.deepcopy).
    shadowing = [n for n in names if n[:-3] in sys.stdlib_module_names]
    assert not shadowing, f"named like standard-library modules: {shadowing}"


def test_every_script_answers_help_and_starts_nothing(tmp_path: Path) -> None:
    started = {name: Started(name, ["--help"], tmp_path) for name in scripts()}
    runs = {name: s.finish(HELP_TIMEOUT) for name, s in started.items()}
    problems = []
    for name, run in runs.items():
        if run.returncode != 0 or "usage:" not in run.stdout or run.timed_out:
            problems.append(f"{name}: --help did not print usage and exit 0\n{run.describe()}")
        if run.leftovers:
            problems.append(f"{name}: --help started {run.leftovers}")
    assert not problems, "\n\n".join(problems)
    assert "--tiny" in runs["run_all.py"].stdout and "--quick" in runs["run_all.py"].stdout


# --- tiny runs -------------------------------------------------------------------------------

def _interrupted_by_sigterm(workdir: Path) -> tuple[Run, bool]:
    """api_economy.py stopped with SIGTERM while its mount and emulator run (it would sit in
    its polling rounds for ten minutes); whether the mount was up when the signal went."""
    started = Started("api_economy.py", ["--count", "5", "--rounds", "600",
                                         "--workdir", str(workdir)], workdir)
    deadline = time.monotonic() + TIMEOUT
    while not mounts_under(workdir) and started.proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    mounted = bool(mounts_under(workdir))
    time.sleep(1.0)  # into the restores and polling rounds
    started.signal(signal.SIGTERM)
    return started.finish(TIMEOUT), mounted


def _failing_half_way(workdir: Path) -> Run:
    """copy_tree.py with a cache (a quarter of 8M) smaller than the default 16M chunk: the
    emulator is up and the vaults are made when the mount refuses, and the run fails."""
    return run_script("copy_tree.py", ["--size", "8M", "--files", "4", "--workdir",
                                       str(workdir)], workdir, TIMEOUT)


def _wanted(session: pytest.Session) -> set[str]:
    """The runs the selected tests of this module look at (``-k treehash`` starts one)."""
    wanted = set()
    for item in session.items:
        if item.module is not sys.modules[__name__]:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec and "name" in callspec.params:
            wanted.add(callspec.params["name"])
        for key, test in (("sigterm", "test_sigterm"), ("failing", "test_a_benchmark_failing"),
                          ("run_all.py", "test_run_all")):
            if item.name.startswith(test):
                wanted.add(key)
    return wanted


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """The tiny runs (and the two stopped half-way) that the selected tests need, started a
    few at a time."""
    wanted = _wanted(request.session)
    can_mount = fuse_unavailable() is None
    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    futures: dict[str, Future] = {}
    if can_mount and "sigterm" in wanted:
        futures["sigterm"] = pool.submit(_interrupted_by_sigterm,
                                         tmp_path_factory.mktemp("sigterm"))
    if can_mount and "failing" in wanted:
        futures["failing"] = pool.submit(_failing_half_way, tmp_path_factory.mktemp("failing"))
    for name in ORDER:
        if name in wanted and (can_mount or name in NO_MOUNT):
            work = tmp_path_factory.mktemp(name[:-3])
            futures[name] = pool.submit(run_script, name, [*TINY[name], "--workdir", str(work)],
                                        work, TIMEOUT)
    if "run_all.py" in wanted:
        futures["run_all.py"] = pool.submit(run_script, "run_all.py",
                                            ["--tiny", "--only", "treehash"],
                                            tmp_path_factory.mktemp("run_all"), TIMEOUT)
    try:
        yield futures
    finally:
        pool.shutdown(wait=True)


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("name", ORDER)
def test_benchmark_runs_at_a_tiny_size(name: str, runs: dict[str, Future],
                                       request: pytest.FixtureRequest) -> None:
    if name not in NO_MOUNT:
        request.getfixturevalue("needs_fuse")
    run: Run = runs[name].result()
    assert not run.leftovers, f"left behind: {run.leftovers}\n{run.describe()}"
    assert run.returncode == 0 and not run.timed_out, run.describe()
    assert run.stdout.startswith("machine: "), run.describe()
    assert HEADER.search(run.stdout), f"no result table\n{run.describe()}"
    missing = [p for p in RESULT_LINES[name] if not re.search(p, run.stdout, re.M)]
    assert not missing, f"result lines missing: {missing}\n{run.describe()}"
    # The few figures that are exact whatever the machine:
    if name == "million.py":
        counts = re.search(r"^find counted (\d+) entries through the mount, (\d+) on tmpfs",
                           run.stdout, re.M)
        assert counts and counts[1] == counts[2], run.describe()
    if name == "ranged.py":  # 1M windows of a 6M zip: the listing needs one or two of them
        ratio = re.search(r"^retrieved \(billed\).*?(\d+\.\d+)×", run.stdout, re.M)
        assert ratio and float(ratio[1]) < 0.5, run.describe()
    if name == "soak.py":
        reads = re.search(r"^reads: whole files / 4 random ranges\s+(\d+) / (\d+)", run.stdout,
                          re.M)
        compared = re.search(r"^bytes compared\s+([\d,]+)", run.stdout, re.M)
        assert reads and int(reads[1]) + int(reads[2]) > 0, run.describe()
        assert compared and int(compared[1].replace(",", "")) > 0, run.describe()


def test_run_all_runs_what_it_is_asked(runs: dict[str, Future]) -> None:
    run: Run = runs["run_all.py"].result()
    assert run.returncode == 0 and not run.leftovers, run.describe()
    assert re.search(r"^=== treehash\.py --size 4M", run.stdout, re.M), run.describe()
    assert re.search(rf"^tree_hash vs hashlib\.sha256\s+.*{R}", run.stdout, re.M), \
        run.describe()
    assert "=== read_cached.py" not in run.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_sigterm_half_way_takes_the_mount_and_emulator_down(runs: dict[str, Future],
                                                             needs_fuse: None) -> None:
    run, mounted = runs["sigterm"].result()
    assert mounted, f"the mount never came up\n{run.describe()}"
    assert not run.leftovers, f"left behind after SIGTERM: {run.leftovers}\n{run.describe()}"
    assert run.returncode == 143, run.describe()
    assert "stopped by SIGTERM" in run.stderr, run.describe()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_benchmark_failing_half_way_leaves_nothing(runs: dict[str, Future],
                                                     needs_fuse: None) -> None:
    run: Run = runs["failing"].result()
    assert run.returncode not in (0, None), run.describe()
    assert "smaller than one chunk" in run.stderr, run.describe()
    assert not run.leftovers, f"left behind after a failure: {run.leftovers}\n{run.describe()}"
