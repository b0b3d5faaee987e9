"""``glacierfs copy`` on a live mount: a tree twice the size of the cache comes out byte-exact
with its uploaders' mtimes, one job per archive, each byte downloaded about once; a second run
starts and downloads nothing; ``--dry-run`` starts nothing; a copy killed with SIGKILL and run
again finishes the same way; a failed job is reported and the rest is copied.

Each test has its own vault (mounted alone with ``vaults=``), so the emulator's counters and
jobs of one test never show up in another.
"""

from __future__ import annotations

import calendar
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from e2e_util import MIB, TOOL_ENV, archive_jobs, getfattr_one, run, running_emulator, wait_listed

from glacierfs.commands.copyplan import DEST_XATTR, TEMP_SUFFIX
from glacierfs.commands.demo import fastglacier, mt2

pytestmark = pytest.mark.e2e

FILES = 10
FILE_SIZE = 4 * MIB
CACHE = "20M"             # the tree is twice the cache
MAX_SENT = 1.15           # bytes sent by the emulator per byte of the tree, at most


def glacierfs(*args: object, timeout: float = 240):
    return run(sys.executable, "-m", "glacierfs.cli", *args, timeout=timeout)


def tree(seed: int, count: int = FILES, size: int = FILE_SIZE) -> dict[str, tuple[str, bytes, int]]:
    """{relative path: (description, data, mtime)}; mt2 and FastGlacier descriptions, alternately."""
    rng = random.Random(seed)
    files = {}
    for i in range(count):
        path = f"photos/{2015 + i % 3}/img{i:02d}.jpg"
        stamp = f"2019{1 + i % 12:02d}{1 + i:02d}T1{i % 10}2030Z"
        mtime = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
        describe = mt2 if i % 2 == 0 else fastglacier
        files[path] = (describe(path, stamp), rng.randbytes(size + i), mtime)
    return files


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with running_emulator(tmp_path_factory.mktemp("sim"), "--delay", "Standard=2") as sim:
        yield sim


def upload_vault(emulator, module_mounts, vault: str, files: dict, **options):
    client = emulator.client()
    client.create_vault(vaultName=vault)
    ids = {}
    for path, (description, data, _) in files.items():
        ids[path] = client.upload_archive(vaultName=vault, body=data,
                                          archiveDescription=description)["archiveId"]
    mount = module_mounts(emulator.url, vault, vaults=vault, **options)
    wait_listed(mount / vault, {"photos", ".by-id"})
    wait_listed(mount / vault / "photos", {p.split("/")[1] for p in files})
    return mount, ids


def counters(emulator) -> tuple[int, int, int]:
    stats = emulator.stats()
    req = stats["requests"]
    return req.get("InitiateJob", 0), req.get("GetJobOutput", 0), stats["bytes_sent"]


def check_copies(dest, files: dict) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for path, (_, data, mtime) in files.items():
        copy = dest / path
        assert copy.read_bytes() == data, copy
        st = os.stat(copy)
        assert st.st_mtime == mtime, copy
        assert st.st_mode & 0o777 == 0o666 & ~umask, oct(st.st_mode)
    for d in {(dest / path).parent for path in files}:
        assert os.stat(d).st_mode & 0o777 == 0o777 & ~umask, (d, oct(os.stat(d).st_mode))
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert found == sorted(files), found   # no temporary file left, .by-id not copied


def one_job_each(emulator, vault: str, ids: dict) -> None:
    for path, archive_id in ids.items():
        jobs = archive_jobs(emulator, vault, archive_id)
        assert len(jobs) == 1, (path, jobs)


# --- a tree twice the cache --------------------------------------------------------------------

TREE = tree(1)


@pytest.fixture(scope="module")
def tree_mount(emulator, module_mounts):
    return upload_vault(emulator, module_mounts, "tree", TREE, cache_size=CACHE)


@pytest.fixture(scope="module")
def tree_dest(tmp_path_factory):
    return tmp_path_factory.mktemp("dest")


def test_dry_run_starts_nothing(emulator, tree_mount, tree_dest):
    mnt, ids = tree_mount
    before = counters(emulator)
    proc = glacierfs("copy", "-r", "--dry-run", mnt / "tree", tree_dest)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    total = sum(len(d) for _, d, _ in TREE.values())
    assert f"{FILES} files" in out
    assert f"jobs to start: Standard {FILES} (" in out
    assert "estimated cost (us-east-1 prices, USD)" in out
    assert ".by-id" not in out
    assert counters(emulator)[:2] == before[:2]
    assert getfattr_one(mnt / "tree" / next(iter(TREE)), "user.glacier.job.status") is None
    assert not any(tree_dest.iterdir())
    # Prices are overridable: a file that makes Standard retrieval 1 per GB.
    prices = tree_dest.parent / "prices.json"
    prices.write_text('{"region": "test-1", "tiers": {"Standard": {"per_gb": 1024,'
                      ' "per_1000_requests": 0}}, "transfer_out_per_gb": 0}')
    proc = glacierfs("copy", "-r", "--dry-run", "--price-file", prices, mnt / "tree", tree_dest)
    assert proc.returncode == 0, proc.stderr
    expected = total / MIB
    assert f"estimated cost (test-1 prices, USD): retrieval {expected:.2f}" in \
        proc.stdout.decode(), proc.stdout.decode()[-400:]
    prices.unlink()


def test_copy_tree_twice_the_cache(emulator, tree_mount, tree_dest):
    mnt, ids = tree_mount
    emulator.reset_stats()
    proc = glacierfs("copy", "-r", mnt / "tree" / "photos", tree_dest)
    assert proc.returncode == 0, proc.stderr
    assert f"copied {FILES} files" in proc.stdout.decode()
    check_copies(tree_dest, TREE)
    jobs, _, sent = counters(emulator)
    total = sum(len(d) for _, d, _ in TREE.values())
    assert jobs == FILES
    assert sent <= MAX_SENT * total, (sent, total)
    one_job_each(emulator, "tree", ids)
    for path in TREE:
        assert os.getxattr(tree_dest / path, DEST_XATTR).decode() == \
            getfattr_one(mnt / "tree" / path, "user.glacier.tree_hash")


def test_second_run_starts_and_downloads_nothing(emulator, tree_mount, tree_dest):
    mnt, ids = tree_mount
    emulator.reset_stats()
    proc = glacierfs("copy", "-r", mnt / "tree" / "photos", tree_dest)
    assert proc.returncode == 0, proc.stderr
    assert f"{FILES} already up to date" in proc.stdout.decode()
    jobs, outputs, sent = counters(emulator)
    assert (jobs, outputs, sent) == (0, 0, 0)
    check_copies(tree_dest, TREE)
    proc = glacierfs("copy", "-r", "--dry-run", mnt / "tree" / "photos", tree_dest)
    assert f"{FILES} already in DEST" in proc.stdout.decode()
    assert "jobs to start: none" in proc.stdout.decode()


def test_single_files_go_where_cp_puts_them(emulator, tree_mount, tmp_path):
    mnt, _ = tree_mount
    first, second = sorted(TREE)[:2]
    jobs_before = counters(emulator)[0]
    proc = glacierfs("copy", mnt / "tree" / first, tmp_path / "renamed.jpg")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "renamed.jpg").read_bytes() == TREE[first][1]
    into = tmp_path / "into"
    into.mkdir()
    proc = glacierfs("copy", mnt / "tree" / first, mnt / "tree" / second, into)
    assert proc.returncode == 0, proc.stderr
    for path in (first, second):
        copy = into / os.path.basename(path)
        assert copy.read_bytes() == TREE[path][1]
        assert os.stat(copy).st_mtime == TREE[path][2]
    assert counters(emulator)[0] == jobs_before   # the archives' jobs are reused


def test_ctrl_c_exits_with_one_line(emulator, tree_mount, tmp_path):
    mnt, _ = tree_mount
    dest = tmp_path / "out"
    emulator.add_fault({"operation": "GetJobOutput", "fault": "slow", "delay": 1,
                        "vault": "tree"})
    try:
        proc = subprocess.Popen([sys.executable, "-m", "glacierfs.cli", "copy", "-r",
                                 str(mnt / "tree" / "photos"), str(dest)], env=TOOL_ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (dest.exists() and any(p.is_file() for p in dest.rglob("*.jpg"))):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        emulator.clear_faults()
    assert proc.returncode == 130, err
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), lines
    assert "run the same command again" in lines[0]
    assert not list(dest.rglob(f"*{TEMP_SUFFIX}"))


def test_bad_arguments_are_one_line(tree_mount, tmp_path):
    mnt, _ = tree_mount
    proc = glacierfs("copy", mnt / "tree" / "photos", tmp_path)
    assert proc.returncode == 2 and "use -r" in proc.stderr and "Traceback" not in proc.stderr
    proc = glacierfs("copy", "-r", tmp_path, tmp_path / "x")
    assert proc.returncode == 2 and "glacierfs mount" in proc.stderr
    proc = glacierfs("copy", "-r", mnt / "tree" / "photos", mnt / "tree")
    assert proc.returncode == 2 and "read-only" in proc.stderr


# --- killed half-way ---------------------------------------------------------------------------

KILLED = tree(2)


def test_copy_killed_and_run_again(emulator, module_mounts, tmp_path):
    mnt, ids = upload_vault(emulator, module_mounts, "killed", KILLED, cache_size=CACHE)
    dest = tmp_path / "out"
    emulator.reset_stats()
    cmd = [sys.executable, "-m", "glacierfs.cli", "copy", "-r", str(mnt / "killed" / "photos"),
           str(dest)]
    proc = subprocess.Popen(cmd, env=TOOL_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            done = [p for p in dest.rglob("*.jpg") if p.is_file()] if dest.exists() else []
            if len(done) >= FILES // 2 - 1:
                break
            assert proc.poll() is None, "the copy ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    # Whatever is under a real name is complete and exact.
    present = {str(p.relative_to(dest)) for p in dest.rglob("*.jpg") if p.is_file()}
    assert 0 < len(present) < FILES, present
    for path in present:
        assert (dest / path).read_bytes() == KILLED[path][1], path
    rerun = glacierfs("copy", "-r", mnt / "killed" / "photos", dest)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(present)} already up to date" in rerun.stdout.decode()
    check_copies(dest, KILLED)
    assert not list(dest.rglob(f"*{TEMP_SUFFIX}"))
    jobs, _, sent = counters(emulator)
    total = sum(len(d) for _, d, _ in KILLED.values())
    assert jobs == FILES
    assert sent <= MAX_SENT * total, (sent, total)
    one_job_each(emulator, "killed", ids)


# --- max_jobs ---------------------------------------------------------------------------------

LIMITED = tree(4, count=6, size=MIB)


def test_copy_keeps_within_max_jobs(emulator, module_mounts, tmp_path):
    mnt, ids = upload_vault(emulator, module_mounts, "limited", LIMITED, max_jobs=2)
    dest = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "glacierfs.cli", "copy", "-r",
                             str(mnt / "limited" / "photos"), str(dest)], env=TOOL_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    most = 0
    while proc.poll() is None:   # jobs the mount holds back (Queued) or runs, while it copies
        doc = json.loads(os.getxattr(mnt.path, "user.glacier.status"))
        counts = doc["job_counts"]
        most = max(most, counts.get("InProgress", 0) + counts.get("Queued", 0))
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert most <= 2, most   # copy asks for no more than max_jobs at a time
    check_copies(dest, LIMITED)
    one_job_each(emulator, "limited", ids)


# --- a failed job ------------------------------------------------------------------------------

FAILING = tree(3, count=4, size=MIB)


def test_failed_job_is_reported_and_the_rest_copied(emulator, module_mounts, tmp_path):
    mnt, ids = upload_vault(emulator, module_mounts, "failing", FAILING)
    emulator.add_fault({"operation": "InitiateJob", "fault": "job_failed", "count": 1,
                        "vault": "failing"})
    dest = tmp_path / "out"
    try:
        proc = glacierfs("copy", "-r", mnt / "failing" / "photos", dest)
    finally:
        emulator.clear_faults()
    assert proc.returncode == 1, proc.stderr
    first = sorted(FAILING)[0]
    assert f"failed: {mnt / 'failing' / 'photos' / os.path.relpath(first, 'photos')}" in \
        proc.stderr, proc.stderr
    assert "retrieval failed" in proc.stderr
    assert "3 files" in proc.stdout.decode() and "1 failed" in proc.stdout.decode()
    rest = {p: v for p, v in FAILING.items() if p != first}
    check_copies(dest, rest)
    assert not (dest / first).exists()
    # Run again: the failed archive gets a new job, nothing else is asked for again.
    proc = glacierfs("copy", "-r", mnt / "failing" / "photos", dest)
    assert proc.returncode == 0, proc.stderr
    assert "copied 1 files" in proc.stdout.decode() and "3 already up to date" in \
        proc.stdout.decode()
    check_copies(dest, FAILING)
    assert len(archive_jobs(emulator, "failing", ids[first])) == 2
    one_job_each(emulator, "failing", {p: a for p, a in ids.items() if p != first})


def test_a_file_larger_than_the_cache_is_copied_window_by_window(emulator, module_mounts,
                                                                  tmp_path):
    big = 6 * MIB + 7
    files = {"photos/big.bin": ("photos/big.bin", random.Random(5).randbytes(big), 0),
             "photos/small.bin": ("photos/small.bin", random.Random(6).randbytes(MIB), 0)}
    mnt, ids = upload_vault(emulator, module_mounts, "small", files, cache_size="4M",
                            chunk_size="1M", range_size="1M")
    before = counters(emulator)
    proc = glacierfs("copy", "-r", mnt / "small" / "photos", tmp_path)
    assert proc.returncode == 0, proc.stderr
    for path, (_, data, _) in files.items():
        assert (tmp_path / path).read_bytes() == data
        assert os.getxattr(tmp_path / path, DEST_XATTR).decode() == \
            getfattr_one(mnt / "small" / path, "user.glacier.tree_hash")
    jobs, _, sent = counters(emulator)
    # One job for the small file, one per 1-MiB window of the big one, never one twice.
    windows = archive_jobs(emulator, "small", ids["photos/big.bin"])
    assert sorted(j["RetrievalByteRange"] for j in windows) == \
        sorted(f"{k * MIB}-{min((k + 1) * MIB, big) - 1}" for k in range(7))
    assert jobs - before[0] == 1 + len(windows)
    total = sum(len(d) for _, d, _ in files.values())
    assert sent - before[2] <= MAX_SENT * total, (sent - before[2], total, proc.stderr, proc.stdout)


def test_a_vault_still_without_inventory_is_an_error_not_an_empty_copy(emulator, module_mounts,
                                                                       tmp_path):
    client = emulator.client()
    client.create_vault(vaultName="late")
    client.upload_archive(vaultName="late", body=b"x" * 1000, archiveDescription="late.txt")
    delays = emulator.control("GET", "delays")
    emulator.set_delays(inventory=600)
    try:
        mnt = module_mounts(emulator.url, "late", vaults="late")
        proc = glacierfs("copy", "-r", mnt / "late", tmp_path / "out")
    finally:
        emulator.set_delays(**delays)
    assert proc.returncode == 2, proc.stderr
    assert "inventory is not in yet" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
