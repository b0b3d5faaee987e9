"""A 1 GiB archive: uploaded in parts, retrieved in ranges, while the emulator's memory stays
flat (bodies stream through fixed-size buffers and sendfile, never whole in memory)."""

from __future__ import annotations

import hashlib
import http.client
import os
from urllib.parse import urlsplit

import pytest

from glacierfs.treehash import MIB, TreeHasher, fold, tree_hash

GIB = 1024 * MIB
PART = 64 * MIB
# Allowed RSS growth while moving 2 GiB through the emulator: buffers are 8 MiB, the rest is
# interpreter noise. Holding a part or the archive in memory would blow through this at once.
RSS_SLACK = 48 * MIB


def part_bytes(base: bytes, index: int) -> bytes:
    return index.to_bytes(8, "big") + base[8:]


@pytest.mark.slow
def test_one_gib_archive_round_trip_with_flat_memory(sim, glacier, vault):
    base = os.urandom(PART)
    parts = [part_bytes(base, i) for i in range(GIB // PART)]
    hashes = [tree_hash(p) for p in parts]
    archive_hash = fold(hashes).hex()
    uid = glacier.initiate_multipart_upload(vaultName=vault, partSize=str(PART))["uploadId"]
    url = urlsplit(sim.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    rss_start = sim.rss_bytes()
    for i, (body, digest) in enumerate(zip(parts, hashes, strict=True)):
        start = i * PART
        conn.request("PUT", f"/-/vaults/{vault}/multipart-uploads/{uid}", body=body, headers={
            "Content-Range": f"bytes {start}-{start + PART - 1}/*",
            "x-amz-sha256-tree-hash": digest.hex(),
            "x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 204
    conn.close()
    archive = glacier.complete_multipart_upload(vaultName=vault, uploadId=uid,
                                                archiveSize=str(GIB),
                                                checksum=archive_hash)["archiveId"]
    job_id = glacier.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": archive})["jobId"]
    sim.complete_jobs(job_id=job_id)
    roots = []
    for i in range(GIB // (4 * PART)):  # 256 MiB ranges: tree-hash aligned nodes
        start, end = i * 4 * PART, (i + 1) * 4 * PART - 1
        got = glacier.get_job_output(vaultName=vault, jobId=job_id, range=f"bytes={start}-{end}")
        hasher = TreeHasher()
        for chunk in got["body"].iter_chunks(4 * MIB):
            hasher.update(chunk)
        assert hasher.length == 4 * PART
        assert got["checksum"] == hasher.hexdigest() == fold(hashes[4 * i:4 * i + 4]).hex()
        roots.append(hasher.digest())
        assert sim.rss_bytes() - rss_start < RSS_SLACK
    assert fold(roots).hex() == archive_hash
    assert sim.rss_bytes() - rss_start < RSS_SLACK
