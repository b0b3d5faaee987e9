"""Uploads: single and multipart, every checksum checked as Glacier checks it."""

from __future__ import annotations

import hashlib
import http.client
import json
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError

from glacierfs.sim.testing import upload
from glacierfs.treehash import MIB, tree_hash

pytestmark = pytest.mark.usefixtures("vault")


def code(exc) -> tuple[str, int]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def raw(sim, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One request without botocore, to send what botocore never would."""
    parts = urlsplit(sim.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_upload_returns_location_id_and_tree_hash(glacier, vault):
    data = b"abc" * 1234567  # the AWS-published vector: tree hash computed by Glacier itself
    out = glacier.upload_archive(vaultName=vault, body=data, archiveDescription="vector")
    assert out["checksum"] == "5a245eddef1227623912286af0a6dd6f1a3cd67ad3d768c1490c2f8a0fafeca9"
    assert len(out["archiveId"]) == 138
    assert set(out["archiveId"]) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert out["location"] == f"/123456789012/vaults/{vault}/archives/{out['archiveId']}"


def test_identical_bodies_get_distinct_ids(glacier, vault):
    ids = {upload(glacier, vault, b"same") for _ in range(5)}
    assert len(ids) == 5


def test_wrong_tree_hash_is_rejected(sim, vault):
    body = b"hello world"
    status, _, payload = raw(sim, "POST", f"/-/vaults/{vault}/archives", body, {
        "x-amz-sha256-tree-hash": "00" * 32,
        "x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    assert status == 400
    err = json.loads(payload)
    assert err["code"] == "InvalidParameterValueException" and err["type"] == "Client"
    assert "Checksum mismatch" in err["message"]


def test_wrong_content_sha256_is_rejected(sim, glacier, vault):
    body = b"hello world"
    status, _, payload = raw(sim, "POST", f"/-/vaults/{vault}/archives", body, {
        "x-amz-sha256-tree-hash": tree_hash(body).hex(),
        "x-amz-content-sha256": hashlib.sha256(b"other").hexdigest()})
    assert status == 400 and json.loads(payload)["code"] == "InvalidParameterValueException"
    assert glacier.describe_vault(vaultName=vault)["NumberOfArchives"] == 0


def test_missing_tree_hash_header(sim, vault):
    status, _, payload = raw(sim, "POST", f"/-/vaults/{vault}/archives", b"data")
    assert status == 400 and json.loads(payload)["code"] == "MissingParameterValueException"


def test_description_must_be_printable_ascii(glacier, vault):
    with pytest.raises(ClientError) as exc:
        glacier.upload_archive(vaultName=vault, body=b"x", archiveDescription="x" * 1025)
    assert code(exc) == ("InvalidParameterValueException", 400)


def test_multipart_upload_assembles_and_checks_the_folded_hash(glacier, vault):
    part = 1 * MIB
    data = bytes(range(256)) * (part * 3 // 256) + b"tail"
    up = glacier.initiate_multipart_upload(vaultName=vault, partSize=str(part),
                                           archiveDescription="multi")
    uid = up["uploadId"]
    assert len(uid) == 92
    for start in range(0, len(data), part):
        chunk = data[start:start + part]
        out = glacier.upload_multipart_part(vaultName=vault, uploadId=uid, body=chunk,
                                            range=f"bytes {start}-{start + len(chunk) - 1}/*")
        assert out["checksum"] == tree_hash(chunk).hex()
    with pytest.raises(ClientError) as exc:
        glacier.complete_multipart_upload(vaultName=vault, uploadId=uid,
                                          archiveSize=str(len(data)), checksum="ab" * 32)
    assert code(exc) == ("InvalidParameterValueException", 400)
    with pytest.raises(ClientError) as exc:
        glacier.complete_multipart_upload(vaultName=vault, uploadId=uid,
                                          archiveSize=str(len(data) + 1),
                                          checksum=tree_hash(data).hex())
    assert code(exc) == ("InvalidParameterValueException", 400)
    done = glacier.complete_multipart_upload(vaultName=vault, uploadId=uid,
                                             archiveSize=str(len(data)),
                                             checksum=tree_hash(data).hex())
    assert done["checksum"] == tree_hash(data).hex()
    assert len(done["archiveId"]) == 138
    assert glacier.describe_vault(vaultName=vault)["SizeInBytes"] == len(data)
    with pytest.raises(ClientError) as exc:  # the upload is gone once completed
        glacier.list_parts(vaultName=vault, uploadId=uid)
    assert code(exc) == ("ResourceNotFoundException", 404)


@pytest.mark.parametrize("size", ["1048575", "3145728", str(8 * 1024**3), "abc"])
def test_part_size_must_be_a_power_of_two_mib(glacier, vault, size):
    with pytest.raises(ClientError) as exc:
        glacier.initiate_multipart_upload(vaultName=vault, partSize=size)
    assert code(exc) == ("InvalidParameterValueException", 400)


def test_part_checks(glacier, vault):
    uid = glacier.initiate_multipart_upload(vaultName=vault, partSize=str(MIB))["uploadId"]
    body = b"z" * MIB
    with pytest.raises(ClientError) as exc:  # not on a part boundary
        glacier.upload_multipart_part(vaultName=vault, uploadId=uid, body=body,
                                      range=f"bytes 10-{MIB + 9}/*")
    assert code(exc) == ("InvalidParameterValueException", 400)
    with pytest.raises(ClientError) as exc:  # longer than the part size
        glacier.upload_multipart_part(vaultName=vault, uploadId=uid, body=body + b"z",
                                      range=f"bytes 0-{MIB}/*")
    assert code(exc) == ("InvalidParameterValueException", 400)
    with pytest.raises(ClientError) as exc:  # wrong part tree hash
        glacier.upload_multipart_part(vaultName=vault, uploadId=uid, body=body,
                                      range=f"bytes 0-{MIB - 1}/*", checksum="cd" * 32)
    assert code(exc) == ("InvalidParameterValueException", 400)
    # a short part in the middle makes the archive incomplete
    glacier.upload_multipart_part(vaultName=vault, uploadId=uid, body=b"short",
                                  range="bytes 0-4/*")
    glacier.upload_multipart_part(vaultName=vault, uploadId=uid, body=body,
                                  range=f"bytes {MIB}-{2 * MIB - 1}/*")
    with pytest.raises(ClientError) as exc:
        glacier.complete_multipart_upload(vaultName=vault, uploadId=uid,
                                          archiveSize=str(MIB + 5), checksum="00" * 32)
    assert code(exc) == ("InvalidParameterValueException", 400)


def test_list_parts_and_uploads_page(glacier, vault):
    uid = glacier.initiate_multipart_upload(vaultName=vault, partSize=str(MIB),
                                            archiveDescription="paged")["uploadId"]
    for i in range(5):
        glacier.upload_multipart_part(vaultName=vault, uploadId=uid, body=bytes([i]) * MIB,
                                      range=f"bytes {i * MIB}-{(i + 1) * MIB - 1}/*")
    ranges, marker = [], None
    while True:
        kwargs = {"limit": "2", **({"marker": marker} if marker else {})}
        page = glacier.list_parts(vaultName=vault, uploadId=uid, **kwargs)
        assert page["PartSizeInBytes"] == MIB and page["ArchiveDescription"] == "paged"
        assert len(page["Parts"]) <= 2
        ranges += [p["RangeInBytes"] for p in page["Parts"]]
        for p in page["Parts"]:
            first = int(p["RangeInBytes"].split("-")[0]) // MIB
            assert p["SHA256TreeHash"] == tree_hash(bytes([first]) * MIB).hex()
        marker = page.get("Marker")
        if not marker:
            break
    assert ranges == [f"{i * MIB}-{(i + 1) * MIB - 1}" for i in range(5)]
    others = [glacier.initiate_multipart_upload(vaultName=vault, partSize=str(2 * MIB))
              ["uploadId"] for _ in range(3)]
    listed, marker = [], None
    while True:
        kwargs = {"limit": "3", **({"marker": marker} if marker else {})}
        page = glacier.list_multipart_uploads(vaultName=vault, **kwargs)
        listed += [u["MultipartUploadId"] for u in page["UploadsList"]]
        marker = page.get("Marker")
        if not marker:
            break
    assert listed == [uid, *others]
    glacier.abort_multipart_upload(vaultName=vault, uploadId=others[0])
    left = glacier.list_multipart_uploads(vaultName=vault)["UploadsList"]
    assert [u["MultipartUploadId"] for u in left] == [uid, *others[1:]]
    with pytest.raises(ClientError) as exc:
        glacier.list_parts(vaultName=vault, uploadId=uid, limit="51")
    assert code(exc) == ("InvalidParameterValueException", 400)


def test_delete_archive(glacier, vault):
    archive = upload(glacier, vault, b"bye")
    glacier.delete_archive(vaultName=vault, archiveId=archive)
    with pytest.raises(ClientError) as exc:
        glacier.delete_archive(vaultName=vault, archiveId=archive)
    assert code(exc) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as exc:
        glacier.initiate_job(vaultName=vault, jobParameters={
            "Type": "archive-retrieval", "ArchiveId": archive})
    assert code(exc) == ("ResourceNotFoundException", 404)


def _multipart(glacier, vault: str, data: bytes, part: int = MIB) -> str:
    uid = glacier.initiate_multipart_upload(vaultName=vault, partSize=str(part))["uploadId"]
    for start in range(0, len(data), part):
        chunk = data[start:start + part]
        glacier.upload_multipart_part(vaultName=vault, uploadId=uid, body=chunk,
                                      range=f"bytes {start}-{start + len(chunk) - 1}/*")
    return uid


def test_complete_multipart_is_idempotent_as_documented(sim, glacier, vault):
    data = b"m" * (MIB + 17)
    uid = _multipart(glacier, vault, data)
    checksum = tree_hash(data).hex()
    first = glacier.complete_multipart_upload(vaultName=vault, uploadId=uid,
                                              archiveSize=str(len(data)), checksum=checksum)
    again = glacier.complete_multipart_upload(vaultName=vault, uploadId=uid,
                                              archiveSize=str(len(data)), checksum=checksum)
    assert again["archiveId"] == first["archiveId"]
    assert again["checksum"] == checksum
    assert glacier.describe_vault(vaultName=vault)["SizeInBytes"] == len(data)
    # Another size or tree hash is not a repeat: the upload is gone.
    for size, digest in ((len(data) + 1, checksum), (len(data), "ab" * 32)):
        with pytest.raises(ClientError) as exc:
            glacier.complete_multipart_upload(vaultName=vault, uploadId=uid,
                                              archiveSize=str(size), checksum=digest)
        assert code(exc) == ("ResourceNotFoundException", 404)
    # "Within a short period": an hour later it is forgotten.
    sim.advance_clock(3601)
    with pytest.raises(ClientError) as exc:
        glacier.complete_multipart_upload(vaultName=vault, uploadId=uid,
                                          archiveSize=str(len(data)), checksum=checksum)
    assert code(exc) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as exc:  # another vault never sees it
        glacier.create_vault(vaultName="other")
        glacier.complete_multipart_upload(vaultName="other", uploadId=uid,
                                          archiveSize=str(len(data)), checksum=checksum)
    assert code(exc) == ("ResourceNotFoundException", 404)


def test_a_lost_completion_answer_retried_by_boto3_gives_the_archive_once(sim, vault):
    retrying = sim.client()  # botocore's standard retries, as any SDK user has them
    data = bytes(range(256)) * 8192
    uid = _multipart(retrying, vault, data)
    sim.set_faults([{"operation": "CompleteMultipartUpload", "fault": "drop", "count": 1}])
    done = retrying.complete_multipart_upload(vaultName=vault, uploadId=uid,
                                              archiveSize=str(len(data)),
                                              checksum=tree_hash(data).hex())
    assert sim.stats()["requests"]["CompleteMultipartUpload"] == 2  # the answer was lost once
    vault_info = retrying.describe_vault(vaultName=vault)
    assert (vault_info["NumberOfArchives"], vault_info["SizeInBytes"]) == (1, len(data))
    job = retrying.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": done["archiveId"]})["jobId"]
    sim.complete_jobs(job_id=job)
    body = retrying.get_job_output(vaultName=vault, jobId=job)["body"].read()
    assert body == data
