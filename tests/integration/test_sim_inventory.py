"""Inventory retrieval: formats, Glacier's CSV quoting, paging, date filters, daily snapshots."""

from __future__ import annotations

import json
import time

import pytest
from botocore.exceptions import ClientError

from glacierfs.sim.testing import upload
from glacierfs.treehash import tree_hash

pytestmark = pytest.mark.usefixtures("vault")


def inventory(sim, glacier, vault, fmt="JSON", **params) -> tuple[dict, bytes, dict]:
    body = {"Type": "inventory-retrieval", "Format": fmt}
    if params:
        body["InventoryRetrievalParameters"] = params
    job_id = glacier.initiate_job(vaultName=vault, jobParameters=body)["jobId"]
    sim.complete_jobs(job_id=job_id)
    job = glacier.describe_job(vaultName=vault, jobId=job_id)
    out = glacier.get_job_output(vaultName=vault, jobId=job_id)
    return job, out["body"].read(), out


def parse_glacier_csv_line(line: str) -> list[str]:
    """Split one row the way Glacier writes it: ``\\"`` inside quotes is a quote; backslashes
    are literal otherwise (so this is only unambiguous for the rows a test chooses)."""
    fields, i = [], 0
    while i <= len(line):
        if i < len(line) and line[i] == '"':
            j, buf = i + 1, []
            while True:
                if line.startswith('\\"', j) and not line.startswith('\\",', j) or \
                        line.startswith('\\"', j) and j + 2 < len(line) and line[j + 2] != ",":
                    buf.append('"')
                    j += 2
                elif line[j] == '"':
                    break
                else:
                    buf.append(line[j])
                    j += 1
            fields.append("".join(buf))
            i = j + 2
        else:
            j = line.find(",", i)
            j = len(line) if j < 0 else j
            fields.append(line[i:j])
            i = j + 1
    return fields


def test_json_inventory_lists_every_field(sim, glacier, vault):
    a = upload(glacier, vault, b"one", "first")
    b = upload(glacier, vault, b"two" * 1000, "")
    job, body, out = inventory(sim, glacier, vault)
    assert out["contentType"] == "application/json" and "checksum" not in out
    doc = json.loads(body)
    assert doc["VaultARN"] == f"arn:aws:glacier:us-east-1:123456789012:vaults/{vault}"
    assert doc["InventoryDate"].endswith("Z")
    assert [x["ArchiveId"] for x in doc["ArchiveList"]] == [a, b]
    first = doc["ArchiveList"][0]
    assert set(first) == {"ArchiveId", "ArchiveDescription", "CreationDate", "Size",
                          "SHA256TreeHash"}
    assert first["ArchiveDescription"] == "first" and first["Size"] == 3
    assert first["SHA256TreeHash"] == tree_hash(b"one").hex()
    assert len(first["CreationDate"]) == len("2012-05-15T17:19:46.700Z")
    assert job["Action"] == "InventoryRetrieval" and job["InventorySizeInBytes"] == len(body)
    assert job["InventoryRetrievalParameters"]["Format"] == "JSON"
    assert job.get("SHA256TreeHash") is None and job.get("ArchiveId") is None


def test_csv_quoting_is_glaciers(sim, glacier, vault):
    awkward = ['plain', 'say "hi"', 'back\\slash', 'a,b', 'end\\', 'C:\\dir\\"x".txt']
    ids = [upload(glacier, vault, b"d", d) for d in awkward]
    _, body, out = inventory(sim, glacier, vault, fmt="CSV")
    assert out["contentType"] == "text/csv"
    lines = body.decode().splitlines()
    assert lines[0] == "ArchiveId,ArchiveDescription,CreationDate,Size,SHA256TreeHash"
    rows = lines[1:]
    assert rows[0].startswith(f'{ids[0]},"plain",')
    assert f'{ids[1]},"say \\"hi\\"",' in rows[1]  # quotes escaped with a backslash
    assert f'{ids[2]},"back\\slash",' in rows[2]  # backslashes left alone
    assert f'{ids[3]},"a,b",' in rows[3]
    assert f'{ids[4]},"end\\",' in rows[4]  # ambiguous, exactly as Glacier writes it
    assert f'{ids[5]},"C:\\dir\\\\"x\\".txt",' in rows[5]
    assert parse_glacier_csv_line(rows[1])[1] == 'say "hi"'
    assert rows[3].rsplit(",", 3)[2] == "1" and rows[3].endswith(tree_hash(b"d").hex())


def test_inventory_paging_with_limit_and_marker(sim, glacier, vault):
    sim.synthesize(vault, count=25, description="f{i}")
    seen, marker, pages = [], None, 0
    while True:
        params = {"Limit": "10", **({"Marker": marker} if marker else {})}
        job, body, _ = inventory(sim, glacier, vault, **params)
        pages += 1
        seen += [a["ArchiveDescription"] for a in json.loads(body)["ArchiveList"]]
        echoed = job["InventoryRetrievalParameters"]
        assert echoed["Limit"] == "10"
        marker = echoed.get("Marker")
        if not marker:
            break
    assert pages == 3 and seen == [f"f{i}" for i in range(25)]
    with pytest.raises(ClientError) as exc:
        glacier.initiate_job(vaultName=vault, jobParameters={
            "Type": "inventory-retrieval", "InventoryRetrievalParameters": {"Marker": "junk!"}})
    assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"
    with pytest.raises(ClientError) as exc:
        glacier.initiate_job(vaultName=vault, jobParameters={
            "Type": "inventory-retrieval", "InventoryRetrievalParameters": {"Limit": "-1"}})
    assert exc.value.response["Error"]["Code"] == "InvalidParameterValueException"


def test_inventory_date_filters(sim, glacier, vault):
    early = upload(glacier, vault, b"e", "early")
    sim.advance_clock(3600)
    middle = upload(glacier, vault, b"m", "middle")
    sim.advance_clock(3600)
    upload(glacier, vault, b"l", "late")
    doc = json.loads(inventory(sim, glacier, vault)[1])
    created = {a["ArchiveId"]: a["CreationDate"] for a in doc["ArchiveList"]}
    start, end = created[middle], doc["ArchiveList"][2]["CreationDate"]
    job, body, _ = inventory(sim, glacier, vault, StartDate=start, EndDate=end)
    assert [a["ArchiveId"] for a in json.loads(body)["ArchiveList"]] == [middle]
    assert job["InventoryRetrievalParameters"]["StartDate"] == start
    _, body, _ = inventory(sim, glacier, vault, EndDate=start)
    assert [a["ArchiveId"] for a in json.loads(body)["ArchiveList"]] == [early]
    with pytest.raises(ClientError):
        glacier.initiate_job(vaultName=vault, jobParameters={
            "Type": "inventory-retrieval",
            "InventoryRetrievalParameters": {"StartDate": end, "EndDate": start}})


def test_live_inventory_reflects_the_vault_at_completion(sim, glacier, vault):
    sim.set_delays(inventory=1.5)
    kept = upload(glacier, vault, b"k")
    gone = upload(glacier, vault, b"g")
    job_id = glacier.initiate_job(vaultName=vault,
                                  jobParameters={"Type": "inventory-retrieval"})["jobId"]
    glacier.delete_archive(vaultName=vault, archiveId=gone)
    time.sleep(1.7)  # the job completes now, whether or not anyone asks
    upload(glacier, vault, b"too late")
    doc = json.loads(glacier.get_job_output(vaultName=vault, jobId=job_id)["body"].read())
    assert [a["ArchiveId"] for a in doc["ArchiveList"]] == [kept]


@pytest.mark.sim_args("--inventory-mode", "daily")
def test_daily_inventory_snapshots(sim, glacier, vault):
    with pytest.raises(ClientError) as exc:  # never inventoried yet
        glacier.initiate_job(vaultName=vault, jobParameters={"Type": "inventory-retrieval"})
    assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"
    first = upload(glacier, vault, b"1")
    assert glacier.describe_vault(vaultName=vault).get("LastInventoryDate") is None
    sim.advance_clock(86400)
    desc = glacier.describe_vault(vaultName=vault)
    assert desc["LastInventoryDate"].endswith("T00:00:00.000Z")
    assert desc["NumberOfArchives"] == 1
    upload(glacier, vault, b"2")  # after the snapshot: not in it
    assert glacier.describe_vault(vaultName=vault)["NumberOfArchives"] == 1
    doc = json.loads(inventory(sim, glacier, vault)[1])
    assert [a["ArchiveId"] for a in doc["ArchiveList"]] == [first]
    assert doc["InventoryDate"] == desc["LastInventoryDate"]
    sim.advance_clock(86400)
    doc = json.loads(inventory(sim, glacier, vault)[1])
    assert len(doc["ArchiveList"]) == 2 and doc["InventoryDate"] > desc["LastInventoryDate"]


@pytest.mark.slow
def test_million_archive_inventory(sim, glacier, vault):
    started = time.monotonic()
    sim.synthesize(vault, count=1_000_000, description="backup/{i}.tar")
    synth = time.monotonic() - started
    assert synth < 30, f"synthesizing 1M archives took {synth:.1f}s"
    rss_before = sim.rss_bytes()
    _, body, _ = inventory(sim, glacier, vault, fmt="CSV")
    assert body.count(b"\n") == 1_000_001
    assert sim.rss_bytes() - rss_before < 64 * 1024 * 1024
    assert glacier.describe_vault(vaultName=vault)["NumberOfArchives"] == 1_000_000
