"""Retrieval jobs: lifecycle, fields, ranges, listing, expiry."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from glacierfs.sim.testing import upload, wait_job
from glacierfs.treehash import MIB, tree_hash

pytestmark = pytest.mark.usefixtures("vault")

DESCRIBE_FIELDS = {"Action", "ArchiveId", "ArchiveSizeInBytes", "ArchiveSHA256TreeHash",
                   "Completed", "CreationDate", "JobId", "RetrievalByteRange", "SHA256TreeHash",
                   "StatusCode", "StatusMessage", "Tier", "VaultARN"}


def code(exc) -> tuple[str, int]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def retrieval(glacier, vault, archive, **params) -> str:
    return glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive, **params})["jobId"]


def test_job_lifecycle_and_fields(sim, glacier, vault):
    sim.set_delays(Expedited=2)  # room to see it InProgress on a loaded machine
    data = b"q" * (3 * MIB + 5)
    archive = upload(glacier, vault, data, "my file")
    out = glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive, "Tier": "Expedited",
        "Description": "restore it", "SNSTopic": "arn:aws:sns:us-east-1:123456789012:t"})
    job_id = out["jobId"]
    assert len(job_id) == 92 and out["location"].endswith(f"/jobs/{job_id}")
    job = glacier.describe_job(vaultName=vault, jobId=job_id)
    assert DESCRIBE_FIELDS <= set(job)
    assert job["StatusCode"] == "InProgress" and job["Completed"] is False
    assert job.get("CompletionDate") is None
    assert job["Tier"] == "Expedited" and job["JobDescription"] == "restore it"
    assert job["SNSTopic"] == "arn:aws:sns:us-east-1:123456789012:t"
    assert job["ArchiveSizeInBytes"] == len(data)
    assert job["ArchiveSHA256TreeHash"] == job["SHA256TreeHash"] == tree_hash(data).hex()
    assert job["RetrievalByteRange"] == f"0-{len(data) - 1}"
    with pytest.raises(ClientError) as exc:
        glacier.get_job_output(vaultName=vault, jobId=job_id)
    assert code(exc) == ("InvalidParameterValueException", 400)
    assert "not currently available" in str(exc.value)
    job = wait_job(glacier, vault, job_id, timeout=10)
    assert job["StatusCode"] == "Succeeded" and job["CompletionDate"] > job["CreationDate"]
    got = glacier.get_job_output(vaultName=vault, jobId=job_id)
    assert got["status"] == 200 and got["body"].read() == data
    assert got["checksum"] == tree_hash(data).hex()
    assert got["contentType"] == "application/octet-stream"
    assert got["archiveDescription"] == "my file" and got["acceptRanges"] == "bytes"


def test_tiers_finish_in_delay_order(sim, glacier, vault):
    sim.set_delays(Expedited=0.2, Standard=1.0, Bulk=60)
    archive = upload(glacier, vault, b"t")
    jobs = {tier: retrieval(glacier, vault, archive, Tier=tier)
            for tier in ("Expedited", "Standard", "Bulk")}
    default = retrieval(glacier, vault, archive)
    assert glacier.describe_job(vaultName=vault, jobId=default)["Tier"] == "Standard"
    time.sleep(1.2)
    status = {t: glacier.describe_job(vaultName=vault, jobId=j)["StatusCode"]
              for t, j in jobs.items()}
    assert status == {"Expedited": "Succeeded", "Standard": "Succeeded", "Bulk": "InProgress"}
    sim.set_delays(Bulk=0)  # applies to running jobs too
    assert glacier.describe_job(vaultName=vault, jobId=jobs["Bulk"])["Completed"] is True


def test_ranged_retrieval_alignment(sim, glacier, vault):
    data = bytes(range(256)) * (5 * MIB // 256) + b"end"
    archive = upload(glacier, vault, data)
    for bad in ("0-1000", "1-1048576", f"0-{len(data)}", f"{MIB}-{MIB - 1}", "x-y"):
        with pytest.raises(ClientError) as exc:
            retrieval(glacier, vault, archive, RetrievalByteRange=bad)
        assert code(exc) == ("InvalidParameterValueException", 400), bad
    aligned = retrieval(glacier, vault, archive, RetrievalByteRange=f"{2 * MIB}-{4 * MIB - 1}")
    unaligned = retrieval(glacier, vault, archive, RetrievalByteRange=f"{MIB}-{3 * MIB - 1}")
    tail = retrieval(glacier, vault, archive, RetrievalByteRange=f"{4 * MIB}-{len(data) - 1}")
    sim.complete_jobs()
    job = glacier.describe_job(vaultName=vault, jobId=aligned)
    assert job["SHA256TreeHash"] == tree_hash(data[2 * MIB:4 * MIB]).hex()
    assert job["RetrievalByteRange"] == f"{2 * MIB}-{4 * MIB - 1}"
    assert glacier.describe_job(vaultName=vault, jobId=unaligned).get("SHA256TreeHash") is None
    got = glacier.get_job_output(vaultName=vault, jobId=unaligned)
    assert got["body"].read() == data[MIB:3 * MIB]
    assert got["checksum"] == tree_hash(data[MIB:3 * MIB]).hex()  # whole job output
    got = glacier.get_job_output(vaultName=vault, jobId=tail)
    assert got["body"].read() == data[4 * MIB:]
    assert got["checksum"] == tree_hash(data[4 * MIB:]).hex()


def test_get_job_output_ranges_and_checksum_only_when_aligned(sim, glacier, vault):
    data = bytes(range(251)) * (5 * MIB // 251 + 1)
    archive = upload(glacier, vault, data)
    job_id = retrieval(glacier, vault, archive)
    sim.complete_jobs(job_id=job_id)
    cases = [((0, MIB - 1), True), ((MIB, 2 * MIB - 1), True), ((0, 2 * MIB - 1), True),
             ((2 * MIB, 4 * MIB - 1), True), ((4 * MIB, len(data) - 1), True),
             ((MIB, 3 * MIB - 1), False), ((10, 99), False), ((0, MIB), False)]
    for (start, end), aligned in cases:
        got = glacier.get_job_output(vaultName=vault, jobId=job_id, range=f"bytes={start}-{end}")
        body = got["body"].read()
        assert got["status"] == 206 and body == data[start:end + 1]
        assert got["contentRange"] == f"bytes {start}-{end}/{len(data)}"
        if aligned:
            assert got["checksum"] == tree_hash(body).hex(), (start, end)
        else:
            assert "checksum" not in got, (start, end)
    with pytest.raises(ClientError) as exc:
        glacier.get_job_output(vaultName=vault, jobId=job_id,
                               range=f"bytes={len(data)}-{len(data) + 5}")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_job_errors(glacier, vault):
    with pytest.raises(ClientError) as exc:
        retrieval(glacier, vault, "A" * 138)
    assert code(exc) == ("ResourceNotFoundException", 404)
    archive = upload(glacier, vault, b"x")
    with pytest.raises(ClientError) as exc:
        retrieval(glacier, vault, archive, Tier="Glacial")
    assert code(exc) == ("InvalidParameterValueException", 400)
    with pytest.raises(ClientError) as exc:
        glacier.initiate_job(vaultName=vault, jobParameters={"Type": "select"})
    assert code(exc) == ("MissingParameterValueException", 400)  # select: see test_sim_select
    with pytest.raises(ClientError) as exc:
        glacier.describe_job(vaultName=vault, jobId="nope")
    assert code(exc) == ("ResourceNotFoundException", 404)


def test_list_jobs_filters_and_pages(sim, glacier, vault):
    sim.set_delays(Standard=3600, Expedited=0)
    archive = upload(glacier, vault, b"list me")
    slow = [retrieval(glacier, vault, archive) for _ in range(4)]
    fast = [retrieval(glacier, vault, archive, Tier="Expedited") for _ in range(3)]
    sim.fail_job(slow[0], "tape eaten")
    every = glacier.list_jobs(vaultName=vault)
    assert [j["JobId"] for j in every["JobList"]] == slow + fast
    assert every.get("Marker") is None
    done = glacier.list_jobs(vaultName=vault, completed="true")["JobList"]
    assert {j["JobId"] for j in done} == {slow[0], *fast}
    failed = glacier.list_jobs(vaultName=vault, statuscode="Failed")["JobList"]
    assert [(j["JobId"], j["StatusMessage"]) for j in failed] == [(slow[0], "tape eaten")]
    running = glacier.list_jobs(vaultName=vault, statuscode="InProgress", completed="false")
    assert [j["JobId"] for j in running["JobList"]] == slow[1:]
    paged, marker = [], None
    while True:
        kwargs = {"limit": "3", **({"marker": marker} if marker else {})}
        page = glacier.list_jobs(vaultName=vault, **kwargs)
        assert len(page["JobList"]) <= 3
        paged += [j["JobId"] for j in page["JobList"]]
        marker = page.get("Marker")
        if not marker:
            break
    assert paged == slow + fast
    for bad in ({"limit": "0"}, {"limit": "51"}, {"statuscode": "Done"},
                {"completed": "yes"}, {"marker": "unknown"}):
        with pytest.raises(ClientError) as exc:
            glacier.list_jobs(vaultName=vault, **bad)
        assert code(exc) == ("InvalidParameterValueException", 400), bad


def test_output_expires_after_ttl(sim, glacier, vault):
    archive = upload(glacier, vault, b"short-lived")
    job_id = retrieval(glacier, vault, archive)
    sim.complete_jobs(vault=vault)
    assert glacier.get_job_output(vaultName=vault, jobId=job_id)["body"].read() == b"short-lived"
    sim.advance_clock(86400 - 60)
    assert glacier.describe_job(vaultName=vault, jobId=job_id)["StatusCode"] == "Succeeded"
    sim.advance_clock(120)
    with pytest.raises(ClientError) as exc:
        glacier.get_job_output(vaultName=vault, jobId=job_id)
    assert code(exc) == ("ResourceNotFoundException", 404)
    assert glacier.list_jobs(vaultName=vault)["JobList"] == []


@pytest.mark.sim_args("--job-ttl", "5", "--delay", "Standard=0")
def test_job_ttl_flag_and_forced_expiry(sim, glacier, vault):
    archive = upload(glacier, vault, b"gone soon")
    first, second = retrieval(glacier, vault, archive), retrieval(glacier, vault, archive)
    assert glacier.describe_job(vaultName=vault, jobId=first)["Completed"] is True
    sim.expire_job(second)
    with pytest.raises(ClientError) as exc:
        glacier.get_job_output(vaultName=vault, jobId=second)
    assert code(exc) == ("ResourceNotFoundException", 404)
    assert glacier.get_job_output(vaultName=vault, jobId=first)["body"].read() == b"gone soon"
    sim.advance_clock(6)
    with pytest.raises(ClientError) as exc:
        glacier.get_job_output(vaultName=vault, jobId=first)
    assert code(exc) == ("ResourceNotFoundException", 404)


def test_output_survives_archive_deletion(sim, glacier, vault):
    archive = upload(glacier, vault, b"still here")
    job_id = retrieval(glacier, vault, archive)
    glacier.delete_archive(vaultName=vault, archiveId=archive)
    sim.complete_jobs(job_id=job_id)
    assert glacier.get_job_output(vaultName=vault, jobId=job_id)["body"].read() == b"still here"


def test_synthesized_archives_serve_zero_bodies(sim, glacier, vault):
    size = 3 * MIB + 17
    made = sim.synthesize(vault, count=3, size=size, description="big{i}.bin")
    assert made["SHA256TreeHash"] == tree_hash(bytes(size)).hex()
    job_id = glacier.initiate_job(vaultName=vault, jobParameters={"Type": "inventory-retrieval"})[
        "jobId"]
    sim.complete_jobs(job_id=job_id)
    import json
    listing = json.loads(glacier.get_job_output(vaultName=vault, jobId=job_id)["body"].read())
    names = [a["ArchiveDescription"] for a in listing["ArchiveList"]]
    assert names == ["big0.bin", "big1.bin", "big2.bin"]
    archive = listing["ArchiveList"][1]["ArchiveId"]
    job_id = retrieval(glacier, vault, archive, RetrievalByteRange=f"{2 * MIB}-{size - 1}")
    sim.complete_jobs(job_id=job_id)
    got = glacier.get_job_output(vaultName=vault, jobId=job_id)
    assert got["body"].read() == bytes(size - 2 * MIB)
    assert got["checksum"] == tree_hash(bytes(size - 2 * MIB)).hex()
