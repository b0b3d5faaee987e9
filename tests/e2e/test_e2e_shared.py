"""A mount shared with ``allow_other``: who may start paid retrievals (``retrieve_users``), and
who did (``glacierfs status``, ``--json`` ``requested_by``).

The daemon runs as root (the mounting user); the second local user is ``nobody`` (uid 65534,
group ``nogroup``), whose tools run through ``setpriv``. The mount points live under a /tmp
directory nobody can enter. Archive jobs are held in progress (a long emulator delay) until a
test completes them, so ``glacierfs status`` shows them while they run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_util import (NOT_READY_TEXT, Mount, Mounts, archive_jobs, glacierfs_cli, ok,
                      read_when_ready, run, start_emulator, wait_for, wait_listed)

pytestmark = pytest.mark.e2e

VAULT = "team"
NOBODY = 65534
PERMISSION_DENIED = "Permission denied"   # EACCES
RNG = random.Random(20261204)
FILES = {name: RNG.randbytes(size) for name, size in (
    ("cached.bin", 3000), ("uncached.bin", 5000), ("restore.bin", 700),
    ("by-user.bin", 4000), ("by-group.bin", 2500), ("numeric.bin", 1200))}


def as_nobody(*args: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    """A tool run as user nobody, with nobody's groups."""
    return run("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--init-groups", *args)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):  # type: ignore[no-untyped-def]
    # Jobs run until the test completes them (complete_jobs): status sees them in progress.
    sim = start_emulator(tmp_path_factory.mktemp("sim"), "--delay", "Standard=3600",
                         "--delay", "Expedited=3600", "--delay", "Bulk=3600")
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def ids(emulator) -> dict[str, str]:  # type: ignore[no-untyped-def]
    client = emulator.client()
    client.create_vault(vaultName=VAULT)
    return {name: client.upload_archive(vaultName=VAULT, body=data,
                                        archiveDescription=name)["archiveId"]
            for name, data in FILES.items()}


@pytest.fixture(scope="module")
def shared_mounts() -> Iterator[Mounts]:
    """Mounts under a directory other users may enter (pytest's own tmp dirs are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="glacierfs-shared-", dir="/tmp"))
    base.chmod(0o755)
    mounts = Mounts(base)
    try:
        yield mounts
    finally:
        problems = mounts.close()
        shutil.rmtree(base, ignore_errors=True)
    if problems:
        pytest.fail("glacierfs logged internal errors:\n" + "\n".join(problems[:20]))


def mount(mounts: Mounts, emulator, name: str, **options: object) -> Mount:  # type: ignore[no-untyped-def]
    mnt = mounts(emulator.url, name, allow_other="yes", **options)
    wait_listed(mnt / VAULT, set(FILES))
    return mnt


@pytest.fixture(scope="module")
def default_mnt(shared_mounts, emulator, ids) -> Mount:  # type: ignore[no-untyped-def]
    return mount(shared_mounts, emulator, "default")


def status_json(mnt: Mount) -> dict:  # type: ignore[type-arg]
    proc = glacierfs_cli("status", "--json", mnt.path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def job_for(mnt: Mount, name: str) -> dict:  # type: ignore[type-arg]
    """The status document's job for a file, once it is there."""
    def find() -> dict | None:  # type: ignore[type-arg]
        return next((j for j in status_json(mnt)["jobs"]
                     if (j.get("path") or "").endswith(name)), None)
    return wait_for(find, 30.0, f"a job for {name} in glacierfs status")  # type: ignore[return-value]


def test_another_users_read_of_an_uncached_file_is_refused_and_starts_nothing(
        default_mnt, emulator, ids) -> None:  # type: ignore[no-untyped-def]
    path = default_mnt / VAULT / "uncached.bin"
    proc = as_nobody("cat", path)
    assert proc.returncode != 0
    assert PERMISSION_DENIED in proc.stderr, proc.stderr
    # The attribute says why, to them; to the mounting user it says yes.
    why = as_nobody("getfattr", "--only-values", "-n", "user.glacier.may_retrieve", path)
    assert why.returncode == 0, why.stderr
    assert why.stdout.decode().startswith("no: nobody may not start retrievals"), why.stdout
    assert ok("getfattr", "--only-values", "-n", "user.glacier.may_retrieve", path) == b"yes"
    listed = as_nobody("getfattr", "-d", "-m", "user.glacier", path).stdout.decode()
    assert 'user.glacier.may_retrieve="no: nobody may not' in listed, listed
    assert "may_retrieve" not in ok("getfattr", "-d", "-m", "user.glacier", path).decode()
    # A restore request is refused the same way.
    restore = as_nobody("setfattr", "-n", "user.glacier.restore", "-v", "Bulk", path)
    assert restore.returncode != 0
    assert PERMISSION_DENIED in restore.stderr, restore.stderr
    # `glacierfs restore` says why and who may.
    cli = as_nobody(sys.executable, "-m", "glacierfs.cli", "restore", path)
    assert cli.returncode != 0
    assert "Permission denied (nobody may not start retrievals" in cli.stderr, cli.stderr
    assert "Traceback" not in cli.stderr
    # Still refused on a second try (nothing was queued by the first), and no job anywhere.
    assert PERMISSION_DENIED in as_nobody("cat", path).stderr
    assert archive_jobs(emulator, VAULT, ids["uncached.bin"]) == []
    assert not any((j.get("path") or "").endswith("uncached.bin")
                   for j in status_json(default_mnt)["jobs"])
    assert run("getfattr", "-n", "user.glacier.job.status", path).returncode != 0
    refusals = [x for x in default_mnt.log_text().splitlines() if "refused (EACCES)" in x]
    assert len(refusals) == 1 and "by nobody (cat)" in refusals[0], refusals


def test_the_mounting_users_read_starts_a_job_that_says_who_started_it(
        default_mnt, emulator, ids) -> None:  # type: ignore[no-untyped-def]
    path = default_mnt / VAULT / "cached.bin"
    proc = run("cat", path)
    assert proc.returncode != 0 and NOT_READY_TEXT in proc.stderr, proc.stderr
    started = archive_jobs(emulator, VAULT, ids["cached.bin"])
    assert len(started) == 1
    assert started[0]["JobDescription"].endswith(" for root (cat) uid 0"), started[0]
    job = job_for(default_mnt, "cached.bin")
    assert job["requested_by"]["uid"] == 0
    assert job["requested_by"]["user"] == "root"
    assert job["requested_by"]["command"] == "cat"
    text = glacierfs_cli("status", default_mnt.path)
    assert text.returncode == 0, text.stderr
    line = next(x for x in text.stdout.decode().splitlines() if "cached.bin" in x)
    assert "by root (cat)" in line, line
    assert ok("getfattr", "--only-values", "-n", "user.glacier.job.requested_by",
              path) == b"root (cat)"
    # While the job runs, another user's read of the same file joins it (costs nothing new).
    joined = as_nobody("cat", path)
    assert NOT_READY_TEXT in joined.stderr, joined.stderr
    emulator.complete_jobs(vault=VAULT)
    assert read_when_ready(path, timeout=60) == FILES["cached.bin"]
    # Cached: the other user reads the exact bytes.
    theirs = as_nobody("cat", path)
    assert theirs.returncode == 0, theirs.stderr
    assert theirs.stdout == FILES["cached.bin"]
    assert len(archive_jobs(emulator, VAULT, ids["cached.bin"])) == 1


def test_a_listed_user_starts_retrievals_in_their_own_name(
        shared_mounts, emulator, ids) -> None:  # type: ignore[no-untyped-def]
    mnt = mount(shared_mounts, emulator, "byuser", retrieve_users="nobody")
    path = mnt / VAULT / "by-user.bin"
    assert as_nobody("getfattr", "--only-values", "-n", "user.glacier.may_retrieve",
                     path).stdout == b"yes"
    proc = as_nobody("cat", path)
    assert NOT_READY_TEXT in proc.stderr, proc.stderr
    assert len(archive_jobs(emulator, VAULT, ids["by-user.bin"])) == 1
    job = job_for(mnt, "by-user.bin")
    assert job["requested_by"] == {"uid": NOBODY, "user": "nobody", "command": "cat"}
    line = next(x for x in glacierfs_cli("status", mnt.path).stdout.decode().splitlines()
                if "by-user.bin" in x)
    assert "by nobody (cat)" in line, line
    # Others are still refused on this mount: root's listing does not open it to everyone.
    assert status_json(mnt)["limits"]["retrieve_users"] == ["nobody"]


def test_a_listed_group_by_name_and_a_user_by_number(
        shared_mounts, emulator, ids) -> None:  # type: ignore[no-untyped-def]
    mnt = mount(shared_mounts, emulator, "bygroup", retrieve_users="@nogroup")
    proc = as_nobody("cat", mnt / VAULT / "by-group.bin")
    assert NOT_READY_TEXT in proc.stderr, proc.stderr
    assert len(archive_jobs(emulator, VAULT, ids["by-group.bin"])) == 1
    job = job_for(mnt, "by-group.bin")
    assert job["requested_by"]["uid"] == NOBODY and job["requested_by"]["command"] == "cat"

    other = mount(shared_mounts, emulator, "otheruser", retrieve_users=f"{NOBODY + 1}:@root")
    refused = as_nobody("cat", other / VAULT / "numeric.bin")
    assert PERMISSION_DENIED in refused.stderr, refused.stderr
    assert archive_jobs(emulator, VAULT, ids["numeric.bin"]) == []


def test_an_unknown_user_or_group_is_a_mount_error(shared_mounts, emulator) -> None:  # type: ignore[no-untyped-def]
    where = shared_mounts.base / "unknown"
    where.mkdir()
    for value, word in (("no-such-user-x", "user"), ("@no-such-group-x", "group")):
        proc = glacierfs_cli("us-east-1", where, "-o",
                             f"endpoint_url={emulator.url},allow_other,retrieve_users={value},"
                             f"cache_dir={shared_mounts.base / 'unknown-cache'}")
        assert proc.returncode != 0
        message = proc.stderr.strip()
        assert f"no {word} named" in message and "Traceback" not in message, message
        assert not os.path.ismount(where)


def test_select_jobs_say_who_started_them(default_mnt) -> None:  # type: ignore[no-untyped-def]
    path = default_mnt / VAULT / "restore.bin"
    spec = json.dumps({"query": "SELECT * FROM archive", "output": "s3://results/shared"})
    refused = as_nobody("setfattr", "-n", "user.glacier.select", "-v", spec, path)
    assert refused.returncode != 0 and PERMISSION_DENIED in refused.stderr, refused.stderr
    ok("setfattr", "-n", "user.glacier.select", "-v", spec, path)
    jobs = json.loads(ok("getfattr", "--only-values", "-n", "user.glacier.select.jobs", path))
    assert [j["requested_by"]["command"] for j in jobs] == ["setfattr"]
    assert jobs[0]["requested_by"]["uid"] == 0
    listed = status_json(default_mnt)["select"]["jobs"]
    assert [j["requested_by"]["uid"] for j in listed] == [0]
