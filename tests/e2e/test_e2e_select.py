"""``glacierfs select`` on a real mount against the emulator, with moto's S3 server holding the
results: the rows printed are those the query selects (computed here with the csv module), the
same request never pays twice (InitiateJob counted by the emulator), a remount between the start
and the completion still gets the results, another machine adopts the job through ListJobs, and
select jobs count against max_jobs."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from e2e_util import TOOL_ENV, getfattr_one, initiated, run, start_emulator, wait_for, wait_listed

from glacierfs.sim import s3server

pytestmark = pytest.mark.e2e

VAULT = "data"
BUCKET = "results"
ROWS = [["order", "customer", "country", "total"]] + [
    [str(i), f"customer-{i % 7}", ("FR", "DE", "US", "JP")[i % 4], str((i * 37) % 500)]
    for i in range(1, 400)]
QUERY = "SELECT s.\"order\", s.total FROM archive s WHERE s.country = 'FR' AND s.total > 250"


def expected_rows() -> list[list[str]]:
    return [[r[0], r[3]] for r in ROWS[1:] if r[2] == "FR" and int(r[3]) > 250]


def csv_data() -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(ROWS)
    return out.getvalue().encode()


def select(path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glacierfs.cli", "select", str(path), *args],
                          capture_output=True, text=True, timeout=timeout, env=TOOL_ENV)


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.fixture(scope="module")
def s3():
    local = s3server.start(buckets=(BUCKET,))
    yield local
    local.stop()


@pytest.fixture(scope="module")
def emulator(s3, tmp_path_factory):
    sim = start_emulator(tmp_path_factory.mktemp("sim"), "--s3-endpoint", s3.url,
                         "--delay", "Expedited=1", "--delay", "Standard=2")
    client = sim.client()
    client.create_vault(vaultName=VAULT)
    client.upload_archive(vaultName=VAULT, body=csv_data(), archiveDescription="sales.csv")
    client.upload_archive(vaultName=VAULT, body=bytes(range(256)) * 64,
                          archiveDescription="blob.bin")
    client.upload_archive(vaultName=VAULT, body=b"x" * 1000, archiveDescription="other.bin")
    try:
        yield sim
    finally:
        sim.stop()


def mount(mounts, emulator, s3, name: str, **options):
    mnt = mounts(emulator.url, name, s3_endpoint_url=s3.url, **options)
    wait_listed(mnt / VAULT, {"sales.csv", "blob.bin", "other.bin"})
    return mnt


def test_select_wait_prints_the_rows_and_never_pays_twice(emulator, s3, mounts):
    mnt = mount(mounts, emulator, s3, "a")
    path = mnt / VAULT / "sales.csv"
    before = initiated(emulator)
    out = select(path, "--query", QUERY, "--output", f"s3://{BUCKET}/sales", "--header", "use",
                 "--tier", "Expedited", "--wait", "--timeout", "90")
    assert out.returncode == 0, out.stderr
    assert rows(out.stdout) == expected_rows() and expected_rows()
    assert initiated(emulator) == before + 1
    again = select(path, "--query", QUERY, "--output", f"s3://{BUCKET}/sales", "--header", "use",
                   "--tier", "Expedited", "--wait", "--timeout", "30")
    assert again.returncode == 0, again.stderr
    assert again.stdout == out.stdout
    assert initiated(emulator) == before + 1  # reused, not paid again
    jobs = json.loads(getfattr_one(path, "user.glacier.select.jobs") or "[]")
    assert [j["status"] for j in jobs] == ["Succeeded"] and jobs[0]["query"] == QUERY
    status = json.loads(run(sys.executable, "-m", "glacierfs.cli", "status", mnt.path,
                            "--json").stdout)
    assert status["select"]["s3_endpoint_url"] == s3.url
    assert [j["path"] for j in status["select"]["jobs"]] == [f"{VAULT}/sales.csv"]
    human = run(sys.executable, "-m", "glacierfs.cli", "status", mnt.path).stdout.decode()
    assert "Select" in human and "sales.csv" in human
    # A different query is a different job.
    other = select(path, "--query", "SELECT _1 FROM archive WHERE _3 = 'JP'", "--output",
                   f"s3://{BUCKET}/jp", "--header", "ignore", "--tier", "Expedited", "--wait",
                   "--timeout", "90")
    assert other.returncode == 0, other.stderr
    assert rows(other.stdout) == [[r[0]] for r in ROWS[1:] if r[2] == "JP"]
    assert initiated(emulator) == before + 2


def test_remount_between_start_and_completion_still_fetches(emulator, s3, mounts,
                                                            tmp_path_factory):
    emulator.set_delays(Bulk=3600)
    cache = tmp_path_factory.mktemp("cache")
    mnt = mount(mounts, emulator, s3, "b", cache_dir=cache)
    path = mnt / VAULT / "sales.csv"
    args = ("--query", "SELECT * FROM archive WHERE customer = 'customer-3'", "--output",
            f"s3://{BUCKET}/remount", "--header", "use", "--tier", "Bulk")
    before = initiated(emulator)
    started = select(path, *args)
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.split("\n")[0].removeprefix("job ").strip()
    assert f"output s3://{BUCKET}/remount/{job_id}/" in started.stdout
    assert initiated(emulator) == before + 1
    mnt.unmount()
    emulator.complete_jobs(job_id)
    mnt = mount(mounts, emulator, s3, "b", cache_dir=cache)
    done = select(mnt / VAULT / "sales.csv", *args, "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert rows(done.stdout) == [r for r in ROWS[1:] if r[1] == "customer-3"]
    assert initiated(emulator) == before + 1


def test_another_machine_adopts_the_job(emulator, s3, mounts):
    emulator.set_delays(Standard=3600)
    first = mount(mounts, emulator, s3, "m1")
    args = ("--query", "SELECT _2 FROM archive WHERE _1 = '42'", "--output",
            f"s3://{BUCKET}/shared", "--header", "ignore", "--tier", "Standard")
    before = initiated(emulator)
    assert select(first / VAULT / "sales.csv", *args).returncode == 0
    second = mount(mounts, emulator, s3, "m2")  # its own cache dir: knows nothing of the job
    emulator.complete_jobs()
    out = select(second / VAULT / "sales.csv", *args, "--wait", "--timeout", "60")
    assert out.returncode == 0, out.stderr
    assert rows(out.stdout) == [["customer-0"]]
    assert initiated(emulator) == before + 1


def test_a_failed_job_says_why(emulator, s3, mounts):
    mnt = mount(mounts, emulator, s3, "f")
    out = select(mnt / VAULT / "blob.bin", "--query", "SELECT * FROM archive", "--output",
                 f"s3://{BUCKET}/blob", "--tier", "Expedited", "--wait", "--timeout", "60")
    assert out.returncode == 1
    assert "failed" in out.stderr and "not CSV" in out.stderr
    refused = select(mnt / VAULT / "sales.csv", "--query", "SELECT COUNT(*) FROM archive",
                     "--output", f"s3://{BUCKET}/count", "--wait", "--timeout", "30")
    assert refused.returncode == 1 and "COUNT" in refused.stderr
    usage = select(mnt / VAULT / "sales.csv", "--query", "SELECT * FROM archive", "--output",
                   "bucket-without-scheme")
    assert usage.returncode == 2 and "s3://" in usage.stderr
    assert "Traceback" not in out.stderr + refused.stderr + usage.stderr


def test_select_jobs_count_against_max_jobs(emulator, s3, mounts):
    emulator.set_delays(Bulk=3600)
    mnt = mount(mounts, emulator, s3, "limits", max_jobs=1, tier="Bulk")
    started = select(mnt / VAULT / "sales.csv", "--query", "SELECT _1 FROM archive",
                     "--output", f"s3://{BUCKET}/limits", "--tier", "Bulk")
    assert started.returncode == 0, started.stderr
    proc = run("setfattr", "-n", "user.glacier.restore", "-v", "Bulk", mnt / VAULT / "other.bin")
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: getfattr_one(mnt / VAULT / "other.bin", "user.glacier.job.status")
             == "Queued", timeout=20, what="the retrieval held by max_jobs")
    message = getfattr_one(mnt / VAULT / "other.bin", "user.glacier.job.status_message") or ""
    assert "max_jobs" in message


def test_select_jobs_spend_the_budget(emulator, s3, mounts):
    size = len(csv_data())
    small = mounts(emulator.url, "tight", s3_endpoint_url=s3.url, budget=f"{size // 2}")
    wait_listed(small / VAULT, {"sales.csv"})
    held = select(small / VAULT / "sales.csv", "--query", "SELECT _1 FROM archive",
                  "--output", f"s3://{BUCKET}/budget-held", "--tier", "Expedited")
    assert held.returncode == 0, held.stderr
    assert "Queued" in held.stdout and "budget" in held.stdout
    roomy = mount(mounts, emulator, s3, "roomy", budget=f"{size + 500}")
    before = initiated(emulator)
    done = select(roomy / VAULT / "sales.csv", "--query", "SELECT _1 FROM archive WHERE _1 = '7'",
                  "--output", f"s3://{BUCKET}/budget", "--tier", "Expedited", "--wait",
                  "--timeout", "60")
    assert done.returncode == 0 and rows(done.stdout) == [["7"]], done.stderr
    assert initiated(emulator) == before + 1
    status = json.loads(run(sys.executable, "-m", "glacierfs.cli", "status", roomy.path,
                            "--json").stdout)
    assert status["limits"]["budget_used"] == size  # the archive's size: what a select scans
    proc = run("setfattr", "-n", "user.glacier.restore", "-v", "Expedited",
               roomy / VAULT / "other.bin")
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: "budget" in (getfattr_one(roomy / VAULT / "other.bin",
                                               "user.glacier.job.status_message") or ""),
             timeout=20, what="the retrieval held by the budget the select spent")


def test_a_missing_path_and_lost_results_say_what_to_do(emulator, s3, mounts):
    mnt = mount(mounts, emulator, s3, "lost")
    out = select(mnt / VAULT / "no-such.csv", "--query", QUERY, "--output", f"s3://{BUCKET}/x")
    assert out.returncode == 1
    assert out.stderr.strip() == f"glacierfs select: {mnt / VAULT / 'no-such.csv'}: no such file"
    path = mnt / VAULT / "sales.csv"
    args = ("--query", QUERY, "--header", "use", "--tier", "Expedited", "--wait",
            "--timeout", "90")
    first = select(path, *args, "--output", f"s3://{BUCKET}/lost")
    assert first.returncode == 0, first.stderr
    # The results vanish from S3 (deleted, or an S3 that keeps them in memory restarted, as
    # the demo's does): asking again must say how to get them, not just that they are gone.
    client = s3.client()
    for obj in client.list_objects_v2(Bucket=BUCKET, Prefix="lost/")["Contents"]:
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    before = initiated(emulator)
    again = select(path, *args, "--output", f"s3://{BUCKET}/lost")
    assert again.returncode == 1 and again.stdout == ""
    assert "is missing" in again.stderr and "give another --output prefix" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert initiated(emulator) == before   # not paid again behind the user's back
    fresh = select(path, *args, "--output", f"s3://{BUCKET}/lost-again")
    assert fresh.returncode == 0, fresh.stderr
    assert rows(fresh.stdout) == expected_rows()
    assert initiated(emulator) == before + 1
