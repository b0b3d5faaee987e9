"""Cost limits through the mount: ``max_jobs`` and ``budget`` under ``find -exec cat`` over
1,000 files and under 20 concurrent readers; requests beyond the limits wait as Queued and
start later in request order; never two live jobs for one archive."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rel_util import count_duplicate_jobs, mount_options, mounted, poll_until, read_errno, xattr

pytestmark = [pytest.mark.usefixtures("needs_fuse"),
              pytest.mark.sim_args("--delay", "Standard=3600", "--delay", "inventory=0.3")]


def _status(mnt: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "glacierfs.cli", "status", "--json", str(mnt)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _retrievals(sim, vault: str) -> int:
    """Archive-retrieval jobs Glacier has (the inventory job is not one)."""
    jobs = sim.client().list_jobs(vaultName=vault)["JobList"]
    return sum(1 for j in jobs if j["Action"] == "ArchiveRetrieval")


def _listed(mnt: Path, vault: str, count: int) -> list[Path]:
    def files() -> list[Path] | None:
        found = sorted((mnt / vault / "d").iterdir()) if (mnt / vault / "d").is_dir() else []
        return found if len(found) == count else None
    return poll_until(files, timeout=60, interval=0.3, what="inventory")


def test_max_jobs_under_find_exec_cat_over_1000_files(sim, tmp_path):
    sim.client().create_vault(vaultName="v")
    sim.synthesize("v", 1000, size=1024, description="d/f{i}")
    mnt = tmp_path / "mnt"
    with mounted(mnt, mount_options(sim, tmp_path / "cache", max_jobs="4")):
        _listed(mnt, "v", 1000)
        order = subprocess.run(["find", str(mnt / "v" / "d"), "-type", "f"], capture_output=True,
                               text=True, check=True).stdout.split()
        proc = subprocess.run(["find", str(mnt / "v" / "d"), "-type", "f", "-exec", "cat", "{}",
                               "+"], capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and proc.stdout == ""
        assert proc.stderr.count("Object is remote") == 1000
        assert _retrievals(sim, "v") == 4
        doc = _status(mnt)
        assert doc["job_counts"] == {"InProgress": 4, "Queued": 996}
        assert [xattr(p, "user.glacier.job.status") for p in order[:6]] == \
            ["InProgress"] * 4 + ["Queued"] * 2
        assert "max_jobs=4" in xattr(order[10], "user.glacier.job.status_message")
        # A second pass changes nothing: no new job, no duplicate.
        subprocess.run(["find", str(mnt / "v" / "d"), "-type", "f", "-exec", "cat", "{}", "+"],
                       capture_output=True, timeout=300)
        assert _retrievals(sim, "v") == 4
        # Jobs finish: the next four start, in request order.
        sim.complete_jobs(vault="v")
        poll_until(lambda: _retrievals(sim, "v") == 8, timeout=30,
                   what="next jobs")
        expected = ["Succeeded"] * 4 + ["InProgress"] * 4 + ["Queued"]
        # (xattr values are held 2 s so a size probe and its fetch agree: poll.)
        poll_until(lambda: [xattr(p, "user.glacier.job.status") for p in order[:9]] == expected,
                   timeout=10, what="next four in request order")
        assert read_errno(order[0]) is None  # the first files are readable now
    assert count_duplicate_jobs(sim.client(), "v") == 0


def test_budget_under_20_concurrent_readers(sim, tmp_path):
    sim.client().create_vault(vaultName="w")
    sim.synthesize("w", 40, size=1024, description="d/f{i}")
    mnt = tmp_path / "mnt"
    with mounted(mnt, mount_options(sim, tmp_path / "cache", budget="5K")):
        files = _listed(mnt, "w", 40)
        errors: list[int | None] = []
        start = threading.Barrier(20)

        def reader(k: int) -> None:
            start.wait()
            for i in range(len(files)):
                errors.append(read_errno(files[(i * 7 + k) % len(files)]))

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert set(errors) == {errno.EREMOTE}
        assert _retrievals(sim, "w") == 5  # 5 x 1 KiB fit in 5K a day
        doc = _status(mnt)
        assert doc["job_counts"] == {"InProgress": 5, "Queued": 35}
        assert doc["limits"]["budget_used"] == 5 * 1024
        queued = [p for p in files if xattr(p, "user.glacier.job.status") == "Queued"]
        assert "daily budget used" in xattr(queued[0], "user.glacier.job.status_message")
    assert count_duplicate_jobs(sim.client(), "w") == 0
