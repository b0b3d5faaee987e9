"""The AWS CLI, unmodified, against the emulator (``--endpoint-url``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from glacierfs.sim.testing import aws_env
from glacierfs.treehash import MIB, tree_hash

AWS = Path(sys.executable).parent / "aws"
pytestmark = pytest.mark.skipif(not AWS.exists(), reason="aws CLI not installed in this venv")


def aws(sim, *args: str) -> dict:
    """Run ``aws glacier``. Ids go as ``--job-id=ID``: Glacier ids may begin with "-", which the
    CLI would otherwise take for an option."""
    proc = subprocess.run([str(AWS), "glacier", *args, "--endpoint-url", sim.url,
                           "--output", "json"], capture_output=True, text=True,
                          env=aws_env(), timeout=120)
    if proc.returncode:
        raise AssertionError(f"aws {' '.join(args)} failed: {proc.stderr}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def test_cli_round_trip(sim, tmp_path):
    data = bytes(range(256)) * (3 * MIB // 256) + b"cli tail"
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    sim.set_delays(Expedited=3600)  # finished only when the test says so (CLI starts slowly)
    aws(sim, "create-vault", "--account-id", "-", "--vault-name", "cli")
    up = aws(sim, "upload-archive", "--account-id", "-", "--vault-name", "cli",
             "--archive-description", "from the cli", "--body", str(src))
    assert up["checksum"] == tree_hash(data).hex()
    job = aws(sim, "initiate-job", "--account-id", "-", "--vault-name", "cli",
              "--job-parameters", json.dumps({"Type": "archive-retrieval",
                                              "ArchiveId": up["archiveId"],
                                              "Tier": "Expedited"}))
    described = aws(sim, "describe-job", "--account-id", "-", "--vault-name", "cli",
                    f"--job-id={job['jobId']}")
    assert described["StatusCode"] == "InProgress" and described["Tier"] == "Expedited"
    sim.complete_jobs(job_id=job["jobId"])
    listed = aws(sim, "list-jobs", "--account-id", "-", "--vault-name", "cli",
                 "--completed", "true")
    assert [j["JobId"] for j in listed["JobList"]] == [job["jobId"]]
    assert listed["JobList"][0]["SHA256TreeHash"] == tree_hash(data).hex()
    out = tmp_path / "part.bin"
    got = aws(sim, "get-job-output", "--account-id", "-", "--vault-name", "cli",
              f"--job-id={job['jobId']}", "--range", f"bytes={MIB}-{2 * MIB - 1}", str(out))
    assert out.read_bytes() == data[MIB:2 * MIB]
    assert got["status"] == 206 and got["checksum"] == tree_hash(data[MIB:2 * MIB]).hex()
    assert got["archiveDescription"] == "from the cli"
    whole = tmp_path / "whole.bin"
    got = aws(sim, "get-job-output", "--account-id", "-", "--vault-name", "cli",
              f"--job-id={job['jobId']}", str(whole))
    assert whole.read_bytes() == data and got["status"] == 200


def test_cli_inventory_csv(sim, tmp_path):
    aws(sim, "create-vault", "--account-id", "-", "--vault-name", "inv")
    src = tmp_path / "f"
    src.write_bytes(b"x")
    aws(sim, "upload-archive", "--account-id", "-", "--vault-name", "inv",
        "--archive-description", 'a "quoted", \\ name', "--body", str(src))
    job = aws(sim, "initiate-job", "--account-id", "-", "--vault-name", "inv",
              "--job-parameters", '{"Type": "inventory-retrieval", "Format": "CSV"}')
    sim.complete_jobs(job_id=job["jobId"])
    out = tmp_path / "inv.csv"
    aws(sim, "get-job-output", "--account-id", "-", "--vault-name", "inv",
        f"--job-id={job['jobId']}", str(out))
    lines = out.read_text().splitlines()
    assert lines[0] == "ArchiveId,ArchiveDescription,CreationDate,Size,SHA256TreeHash"
    assert ',"a \\"quoted\\", \\ name",' in lines[1]


def test_cli_job_id_beginning_with_dash(sim, glacier, tmp_path):
    """Glacier ids are url-safe base64 and one in 64 begins with "-": such a job must still be
    reachable by URL (the emulator routes it) with the CLI's ``--job-id=ID`` form."""
    glacier.create_vault(vaultName="dash")
    glacier.upload_archive(vaultName="dash", archiveDescription="d", body=b"dash body")
    for _ in range(2000):
        job_id = glacier.initiate_job(vaultName="dash", jobParameters={
            "Type": "inventory-retrieval"})["jobId"]
        if job_id.startswith("-"):
            break
    else:
        pytest.fail("no job id beginning with '-' in 2000 jobs: ids are not uniformly random")
    sim.complete_jobs(job_id=job_id)
    described = aws(sim, "describe-job", "--account-id", "-", "--vault-name", "dash",
                    f"--job-id={job_id}")
    assert described["JobId"] == job_id and described["StatusCode"] == "Succeeded"
    out = tmp_path / "inv.json"
    aws(sim, "get-job-output", "--account-id", "-", "--vault-name", "dash",
        f"--job-id={job_id}", str(out))
    assert json.loads(out.read_text())["VaultARN"].endswith("/dash")
