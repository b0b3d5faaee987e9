"""State survives restarts and crashes: vaults, archives, uploads, jobs, emulated time."""

from __future__ import annotations

import pytest

from glacierfs.sim.testing import upload
from glacierfs.treehash import MIB, tree_hash


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_state_survives(sim, how):
    glacier = sim.client(max_attempts=1)
    glacier.create_vault(vaultName="keep")
    archive = upload(glacier, "keep", b"persist me", "kept.txt")
    uid = glacier.initiate_multipart_upload(vaultName="keep", partSize=str(MIB))["uploadId"]
    glacier.upload_multipart_part(vaultName="keep", uploadId=uid, body=b"p" * MIB,
                                  range=f"bytes 0-{MIB - 1}/*")
    done = glacier.initiate_job(vaultName="keep", jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive})["jobId"]
    sim.complete_jobs(job_id=done)
    pending = glacier.initiate_job(vaultName="keep", jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive, "Tier": "Bulk"})["jobId"]
    sim.advance_clock(3600)
    port = sim.port
    if how == "kill":
        sim.kill()
        sim.start()
    else:
        sim.restart()
    assert sim.port == port
    glacier = sim.client(max_attempts=1)
    assert glacier.describe_vault(vaultName="keep")["NumberOfArchives"] == 1
    assert glacier.get_job_output(vaultName="keep", jobId=done)["body"].read() == b"persist me"
    assert glacier.describe_job(vaultName="keep", jobId=pending)["StatusCode"] == "Succeeded"
    parts = glacier.list_parts(vaultName="keep", uploadId=uid)["Parts"]
    assert parts == [{"RangeInBytes": f"0-{MIB - 1}",
                      "SHA256TreeHash": tree_hash(b"p" * MIB).hex()}]
    done2 = glacier.complete_multipart_upload(vaultName="keep", uploadId=uid,
                                              archiveSize=str(MIB),
                                              checksum=tree_hash(b"p" * MIB).hex())
    assert done2["checksum"] == tree_hash(b"p" * MIB).hex()
    assert sim.control("GET", "clock")["offset"] == 3600
