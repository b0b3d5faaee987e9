"""Injected faults, each seen by boto3 (retries off) the way a real Glacier failure is seen."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import (ClientError, ConnectionClosedError, IncompleteReadError,
                                 ResponseStreamingError)

from glacierfs.sim.testing import SimError, upload
from glacierfs.treehash import MIB, tree_hash

pytestmark = pytest.mark.usefixtures("vault")
BROKEN_STREAM = (IncompleteReadError, ResponseStreamingError, ConnectionClosedError)


def code(exc) -> tuple[str, int]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def ready_job(sim, glacier, vault, data: bytes) -> str:
    archive = upload(glacier, vault, data)
    job_id = glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive})["jobId"]
    sim.complete_jobs(job_id=job_id)
    return job_id


@pytest.mark.parametrize("fault, expected", [
    ("throttle", ("ThrottlingException", 400)),
    ("error500", ("ServiceUnavailableException", 500)),
    ("error503", ("ServiceUnavailableException", 503)),
])
def test_error_faults(sim, glacier, vault, fault, expected):
    sim.set_faults([{"operation": "ListJobs", "fault": fault, "count": 1}])
    glacier.describe_vault(vaultName=vault)  # other operations are untouched
    with pytest.raises(ClientError) as exc:
        glacier.list_jobs(vaultName=vault)
    assert code(exc) == expected
    assert glacier.list_jobs(vaultName=vault)["JobList"] == []  # count 1: only once
    assert sim.control("GET", "faults")[0]["remaining"] == 0


def test_botocore_retries_through_transient_faults(sim, vault):
    sim.set_faults([{"operation": "DescribeVault", "fault": "throttle", "count": 2}])
    client = sim.client(max_attempts=5)
    assert client.describe_vault(vaultName=vault)["VaultName"] == vault
    assert sim.stats()["requests"]["DescribeVault"] == 3


def test_insufficient_capacity_only_for_expedited(sim, glacier, vault):
    archive = upload(glacier, vault, b"x")
    sim.set_faults([{"operation": "InitiateJob", "fault": "insufficient_capacity"}])
    with pytest.raises(ClientError) as exc:
        glacier.initiate_job(vaultName=vault, jobParameters={
            "Type": "archive-retrieval", "ArchiveId": archive, "Tier": "Expedited"})
    assert code(exc) == ("InsufficientCapacityException", 503)
    glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive, "Tier": "Standard"})


def test_policy_enforced(sim, glacier, vault):
    archive = upload(glacier, vault, b"x")
    sim.add_fault({"operation": "InitiateJob", "fault": "policy"})
    with pytest.raises(ClientError) as exc:
        glacier.initiate_job(vaultName=vault, jobParameters={
            "Type": "archive-retrieval", "ArchiveId": archive})
    assert code(exc) == ("PolicyEnforcedException", 400)


def test_job_failed(sim, glacier, vault):
    archive = upload(glacier, vault, b"x")
    sim.set_faults([{"operation": "InitiateJob", "fault": "job_failed", "count": 1}])
    failing = glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive})["jobId"]
    fine = glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive})["jobId"]
    assert glacier.describe_job(vaultName=vault, jobId=failing)["StatusCode"] == "InProgress"
    sim.complete_jobs(vault=vault)
    job = glacier.describe_job(vaultName=vault, jobId=failing)
    assert job["StatusCode"] == "Failed" and job["Completed"] is True
    assert job["StatusMessage"] and job["StatusMessage"] != "Succeeded"
    with pytest.raises(ClientError) as exc:
        glacier.get_job_output(vaultName=vault, jobId=failing)
    assert code(exc)[1] == 400
    assert glacier.describe_job(vaultName=vault, jobId=fine)["StatusCode"] == "Succeeded"


def test_expire_fault(sim, glacier, vault):
    job_id = ready_job(sim, glacier, vault, b"soon gone")
    sim.set_faults([{"operation": "GetJobOutput", "fault": "expire", "count": 1}])
    with pytest.raises(ClientError) as exc:
        glacier.get_job_output(vaultName=vault, jobId=job_id)
    assert code(exc) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError):  # expired for good, not just once
        glacier.get_job_output(vaultName=vault, jobId=job_id)


def test_corrupt_body_keeps_the_true_tree_hash(sim, glacier, vault):
    data = bytes(range(256)) * (2 * MIB // 256)
    job_id = ready_job(sim, glacier, vault, data)
    sim.set_faults([{"operation": "GetJobOutput", "fault": "corrupt", "count": 1}])
    bad = glacier.get_job_output(vaultName=vault, jobId=job_id, range=f"bytes=0-{MIB - 1}")
    body = bad["body"].read()
    assert len(body) == MIB and body != data[:MIB]
    assert bad["checksum"] == tree_hash(data[:MIB]).hex() != tree_hash(body).hex()
    good = glacier.get_job_output(vaultName=vault, jobId=job_id, range=f"bytes=0-{MIB - 1}")
    assert good["body"].read() == data[:MIB]


def test_drop_cuts_the_body(sim, glacier, vault):
    data = b"d" * (3 * MIB)
    job_id = ready_job(sim, glacier, vault, data)
    sim.set_faults([{"operation": "GetJobOutput", "fault": "drop", "count": 1}])
    with pytest.raises(BROKEN_STREAM):
        glacier.get_job_output(vaultName=vault, jobId=job_id)["body"].read()
    assert glacier.get_job_output(vaultName=vault, jobId=job_id)["body"].read() == data
    sim.set_faults([{"operation": "ListVaults", "fault": "drop", "count": 1}])
    try:  # botocore parses a cut JSON body as an empty answer rather than raising
        out = glacier.list_vaults()
    except BROKEN_STREAM:
        out = {}
    assert "VaultList" not in out
    assert [v["VaultName"] for v in glacier.list_vaults()["VaultList"]] == [vault]


def test_slow(sim, glacier, vault):
    sim.set_faults([{"operation": "DescribeVault", "fault": "slow", "delay": 0.6, "count": 1}])
    started = time.monotonic()
    glacier.describe_vault(vaultName=vault)
    assert time.monotonic() - started >= 0.6


def test_vault_scope_and_wildcard(sim, glacier, vault):
    glacier.create_vault(vaultName="other")
    sim.set_faults([{"operation": "*", "fault": "throttle", "vault": "other"}])
    glacier.describe_vault(vaultName=vault)
    with pytest.raises(ClientError) as exc:
        glacier.describe_vault(vaultName="other")
    assert code(exc)[0] == "ThrottlingException"
    sim.clear_faults()
    glacier.describe_vault(vaultName="other")


def test_bad_rules_are_refused(sim):
    with pytest.raises(SimError) as exc:
        sim.set_faults([{"operation": "ListJobs", "fault": "meteor"}])
    assert exc.value.status == 400
    with pytest.raises(SimError):
        sim.set_faults([{"operation": "ListJobs", "fault": "throttle", "probability": 2}])


def _pattern(sim, glacier, vault) -> list[bool]:
    out = []
    for _ in range(40):
        try:
            glacier.describe_vault(vaultName=vault)
            out.append(True)
        except ClientError:
            out.append(False)
    return out


@pytest.mark.sim_args("--seed", "42", "--fault", "DescribeVault:throttle:0.5")
def test_seeded_faults_repeat_exactly(sim, glacier, vault):
    first = _pattern(sim, glacier, vault)
    assert 5 < first.count(False) < 35
    sim.restart()
    assert _pattern(sim, glacier, vault) == first


@pytest.mark.sim_args("--fault", "ListVaults:error503:1:2")
def test_fault_flag_with_count(sim, glacier):
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            glacier.list_vaults()
        assert code(exc) == ("ServiceUnavailableException", 503)
    glacier.list_vaults()


def test_stats_count_operations(sim, glacier, vault):
    sim.reset_stats()
    glacier.list_jobs(vaultName=vault)
    glacier.list_jobs(vaultName=vault)
    upload(glacier, vault, b"12345")
    stats = sim.stats()
    assert stats["requests"] == {"ListJobs": 2, "UploadArchive": 1}
    assert stats["total"] == 3 and stats["bytes_sent"] > 0
    assert sim.reset_stats()["total"] == 0
