"""boto3, unmodified, through a whole archive's life: upload, multipart, retrieve in ranges,
verify every chunk against the header and the locally computed tree hash."""

from __future__ import annotations

import io

from glacierfs.sim.testing import wait_job
from glacierfs.treehash import MIB, TreeHasher, fold, tree_hash


def test_upload_archive_with_a_file_object(sim, glacier, vault):
    data = b"file object " * 200_000
    out = glacier.upload_archive(vaultName=vault, body=io.BytesIO(data),
                                 archiveDescription="stream")
    assert out["checksum"] == tree_hash(data).hex()


def test_multipart_then_ranged_download_verified_chunk_by_chunk(sim, glacier, vault):
    part = 2 * MIB
    data = b"".join(bytes([i]) * MIB for i in range(7)) + b"odd tail"
    uid = glacier.initiate_multipart_upload(vaultName=vault, partSize=str(part),
                                            archiveDescription="photos/2019/img.tar")["uploadId"]
    part_hashes = []
    for start in range(0, len(data), part):
        chunk = data[start:start + part]
        out = glacier.upload_multipart_part(vaultName=vault, uploadId=uid, body=chunk,
                                            range=f"bytes {start}-{start + len(chunk) - 1}/*")
        part_hashes.append(bytes.fromhex(out["checksum"]))
    total = fold(part_hashes).hex()
    assert total == tree_hash(data).hex()
    archive = glacier.complete_multipart_upload(vaultName=vault, uploadId=uid,
                                                archiveSize=str(len(data)),
                                                checksum=total)["archiveId"]
    sim.set_delays(Expedited=0.3)
    job_id = glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive, "Tier": "Expedited"})["jobId"]
    job = wait_job(glacier, vault, job_id, timeout=10)
    assert job["SHA256TreeHash"] == total
    roots, received = [], TreeHasher()
    for start in range(0, len(data), part):
        end = min(start + part, len(data)) - 1
        got = glacier.get_job_output(vaultName=vault, jobId=job_id, range=f"bytes={start}-{end}")
        body = got["body"].read()
        assert got["checksum"] == tree_hash(body).hex()
        roots.append(bytes.fromhex(got["checksum"]))
        received.update(body)
    assert fold(roots).hex() == received.hexdigest() == job["ArchiveSHA256TreeHash"]
