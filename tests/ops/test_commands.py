"""The commands for people and scripts against a real mount: the README's restore script
(``glacierfs restore -r d && glacierfs wait -r d && rsync -a d/ dest/``) restores a tree
byte-exact, on an ``ro`` mount; ``glacierfs status`` shows a retrieval and its progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ops_support import FAST_SIM, FILES, VAULT, Mounts, listed

pytestmark = pytest.mark.sim_args(*FAST_SIM)


def _shell(script: str, mounts: Mounts, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a README line as written, with this checkout's ``glacierfs`` first on PATH."""
    env = mounts.env(PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_restore_wait_rsync_on_ro_mount(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts.mountpoint
    mounts.mount("ro", "tier=Standard")
    listed(mnt / VAULT)
    d = mnt / VAULT / "a"
    result = _shell(f"glacierfs restore -r {d} && glacierfs wait -r {d} && rsync -a {d}/ dest/",
                    mounts, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "requested 2 archives" in result.stdout
    assert "2/2 files" in result.stdout                                       # wait: done
    for name, data in FILES.items():
        if name.startswith("a/"):
            assert (tmp_path / "dest" / name[2:]).read_bytes() == data
    # again: everything is cached now, nothing new is requested
    again = _shell(f"glacierfs restore -r {d}", mounts, tmp_path)
    assert "requested 0 archives" in again.stdout and "2 already cached" in again.stdout


def test_status_json_shows_a_retrieval(mounts: Mounts, tmp_path: Path) -> None:
    mnt = mounts.mountpoint
    mounts.sim.set_delays(Bulk=3600)
    mounts.mount()
    listed(mnt / VAULT)
    target = mnt / VAULT / "a" / "b" / "data.bin"
    os.setxattr(target, "user.glacier.restore", b"Bulk")
    result = _shell(f"glacierfs status --json {mnt}", mounts, tmp_path)
    doc = json.loads(result.stdout)
    job, = doc["jobs"]
    assert job["path"].endswith("a/b/data.bin") and job["tier"] == "Bulk"
    assert job["status"] in ("Queued", "InProgress") and job["size"] == len(FILES["a/b/data.bin"])
    free = os.statvfs(mounts.cache_dir)
    assert abs(doc["cache"]["disk_free"] - free.f_bavail * free.f_frsize) < 64 * 1024 ** 2
    assert doc["cache"]["unsaved_job_changes"] == 0
    text = _shell(f"glacierfs status {mnt}", mounts, tmp_path).stdout
    assert "Bulk" in text and VAULT in text
    # No Bulk job has finished on this emulator yet: no AWS estimate of hours for its seconds.
    assert "expected in" not in text
    assert "free on its disk" in text and "not yet saved" not in text
    wait = _shell(f"glacierfs wait {target} --timeout 1", mounts, tmp_path)
    assert wait.returncode == 3            # timed out, still running
