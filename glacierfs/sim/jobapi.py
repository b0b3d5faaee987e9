"""Job operations: InitiateJob, DescribeJob, ListJobs, GetJobOutput (select jobs: their
validation and output live in ``sim/select/``)."""

from __future__ import annotations

import re

from glacierfs.sim import ids
from glacierfs.sim.bodies import Body, leaves_path_for, link_or_copy
from glacierfs.sim.clock import parse_iso
from glacierfs.sim.config import TIERS
from glacierfs.sim.context import Sim, check_description
from glacierfs.sim.errors import GlacierError, invalid, missing, not_found
from glacierfs.sim.faults import error_for
from glacierfs.sim.inventory import daily_snapshot, decode_marker
from glacierfs.sim.jobs import (ARCHIVE_RETRIEVAL, IN_PROGRESS, IN_PROGRESS_MESSAGE,
                                INVENTORY_RETRIEVAL, job_file, parse_limit)
from glacierfs.sim.messages import Request, Response, empty, json_response
from glacierfs.sim.notifications import check_topic
from glacierfs.sim.select.service import SELECT, validate_tier
from glacierfs.sim.store import Row
from glacierfs.treehash import is_mib_aligned_range, is_tree_hash_aligned

LIST_JOBS_DEFAULT, LIST_JOBS_MAX = 50, 50
BYTE_RANGE = re.compile(r"^(\d+)-(\d+)$")
HTTP_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
STATUS_CODES = ("InProgress", "Succeeded", "Failed")
FAILED_JOB_MESSAGE = "The job failed: the archive could not be retrieved (injected fault)."
# How many bytes a ``corrupt`` fault flips in one body: a few, like a bad disk or NIC would.
CORRUPT_BYTES = 3
CONTENT_TYPES = {"JSON": "application/json", "CSV": "text/csv"}


def _str(params: dict, key: str) -> str | None:
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid(f"{key} must be a string")
    return value


def initiate_job(sim: Sim, req: Request, account: str, vault: str) -> Response:
    vault_row = sim.vault(vault)
    params = req.json()
    if not isinstance(params, dict):
        raise invalid("Job parameters must be a JSON object")
    kind = _str(params, "Type")
    if not kind:
        raise missing("Required parameter Type is missing")
    description = check_description(_str(params, "Description"), "job description") or None
    sns = _str(params, "SNSTopic") or None
    if sns is not None:
        check_topic(sns)
    prepared = None
    if kind == "select":
        fields, prepared = _select_job(sim, vault, vault_row, params)
    elif kind == "archive-retrieval":
        fields = _archive_job(sim, vault, vault_row, params)
    elif kind == "inventory-retrieval":
        fields = _inventory_job(sim, vault_row, params)
    else:
        raise invalid(f"Invalid job type: {kind}. Valid values: archive-retrieval, "
                      "inventory-retrieval, select")
    job_id = ids.job_id()
    if fields.get("body_src"):
        rel, path = job_file(sim.store, job_id)
        src = fields.pop("body_src")
        link_or_copy(src, path)
        link_or_copy(leaves_path_for(src), leaves_path_for(path))
        fields["body"] = rel
    fields.pop("body_src", None)
    fields.update(vault_id=vault_row["id"], job_id=job_id, description=description,
                  sns_topic=sns, created=sim.clock.now(), status=IN_PROGRESS,
                  status_message=IN_PROGRESS_MESSAGE)
    cols = ", ".join(fields)
    marks = ", ".join("?" for _ in fields)
    sim.store.run(f"INSERT INTO jobs ({cols}) VALUES ({marks})", tuple(fields.values()))
    headers = {"Location": f"/{sim.config.account_id}/vaults/{vault}/jobs/{job_id}",
               "x-amz-job-id": job_id}
    if prepared is not None:
        headers["x-amz-job-output-path"] = sim.select.start(sim.jobs, job_id, prepared)
    return empty(202, headers)


def _select_job(sim: Sim, vault: str, vault_row: Row, params: dict) -> tuple[dict, dict]:
    archive_id = _str(params, "ArchiveId")
    if not archive_id:
        raise missing("Required parameter ArchiveId is missing for a select job")
    tier = validate_tier(params)
    prepared = sim.select.validate(params)
    archive = sim.store.archive(vault_row["id"], archive_id)
    if archive is None:
        raise not_found(f"Archive not found for ArchiveId: {archive_id}")
    candidates = {"policy"} | ({"insufficient_capacity"} if tier == "Expedited" else set())
    rule = sim.faults.draw("InitiateJob", vault, candidates)
    if rule:
        raise error_for(rule)
    failed = sim.faults.draw("InitiateJob", vault, {"job_failed"})
    return {"action": SELECT, "archive_id": archive_id, "archive_size": archive["size"],
            "archive_tree_hash": archive["tree_hash"],
            "archive_description": archive["description"], "tier": tier,
            "fail_message": FAILED_JOB_MESSAGE if failed else None,
            "body_src": sim.store.path(archive["body"])}, prepared


def _archive_job(sim: Sim, vault: str, vault_row: Row, params: dict) -> dict:
    archive_id = _str(params, "ArchiveId")
    if not archive_id:
        raise missing("Required parameter ArchiveId is missing for an archive-retrieval job")
    tier = _str(params, "Tier") or "Standard"
    if tier not in TIERS:
        raise invalid(f"Invalid tier: {tier}. Valid values: {', '.join(TIERS)}")
    archive = sim.store.archive(vault_row["id"], archive_id)
    if archive is None:
        raise not_found(f"Archive not found for ArchiveId: {archive_id}")
    size = archive["size"]
    start, end = 0, size - 1
    byte_range = _str(params, "RetrievalByteRange")
    if byte_range:
        match = BYTE_RANGE.match(byte_range)
        if not match:
            raise invalid(f"Invalid RetrievalByteRange: {byte_range}")
        start, end = int(match.group(1)), int(match.group(2))
        if not is_mib_aligned_range(start, end, size):
            raise invalid(f"The byte range is not megabyte aligned or is out of range: "
                          f"{byte_range} (archive size {size})")
    # Capacity and policy refusals come after validation, as Glacier's do.
    candidates = {"policy"} | ({"insufficient_capacity"} if tier == "Expedited" else set())
    rule = sim.faults.draw("InitiateJob", vault, candidates)
    if rule:
        raise error_for(rule)
    failed = sim.faults.draw("InitiateJob", vault, {"job_failed"})
    fields: dict[str, object] = {
        "action": ARCHIVE_RETRIEVAL, "archive_id": archive_id, "archive_size": size,
        "archive_tree_hash": archive["tree_hash"], "archive_description": archive["description"],
        "range_start": start, "range_end": end, "tier": tier,
        "fail_message": FAILED_JOB_MESSAGE if failed else None,
        "body_src": sim.store.path(archive["body"]),
    }
    if size == 0 or (start == 0 and end == size - 1):
        fields["output_tree_hash"] = archive["tree_hash"]
    elif is_tree_hash_aligned(start, end, size):
        body = Body(path=sim.store.path(archive["body"]), size=size, file_size=size)
        fields["output_tree_hash"] = body.range_tree_hash(start, end)
    return fields


def _inventory_job(sim: Sim, vault_row: Row, params: dict) -> dict:
    fmt = _str(params, "Format") or "JSON"
    if fmt not in ("JSON", "CSV"):
        raise invalid(f"Invalid format: {fmt}. Valid values: JSON, CSV")
    inv = params.get("InventoryRetrievalParameters") or {}
    if not isinstance(inv, dict):
        raise invalid("InventoryRetrievalParameters must be an object")
    start, end = _str(inv, "StartDate"), _str(inv, "EndDate")
    bounds = []
    for name, value in (("StartDate", start), ("EndDate", end)):
        if value:
            try:
                bounds.append(parse_iso(value))
            except ValueError:
                raise invalid(f"Invalid {name}: {value}") from None
    if start and end and bounds[0] >= bounds[1]:
        raise invalid("StartDate must be before EndDate")
    limit = inv.get("Limit")
    if limit is not None:
        if isinstance(limit, int) and not isinstance(limit, bool):
            limit = str(limit)
        if not isinstance(limit, str) or not limit.isdigit() or int(limit) < 1:
            raise invalid(f"Invalid Limit: {limit}")
    marker = _str(inv, "Marker")
    if marker:
        decode_marker(marker, vault_row["id"])
    rule = sim.faults.draw("InitiateJob", vault_row["name"], {"policy"})
    if rule:
        raise error_for(rule)
    if sim.config.inventory_mode == "daily" and \
            daily_snapshot(sim.store, vault_row["id"], sim.clock.now()) is None:
        raise not_found(f"Inventory not found for vault ARN: "
                        f"{sim.config.vault_arn(vault_row['name'])}: the vault has not been "
                        "inventoried yet (the first inventory is prepared the day after the "
                        "first upload)")
    return {"action": INVENTORY_RETRIEVAL, "format": fmt, "tier": "Standard",
            "inv_start": start or None, "inv_end": end or None, "inv_limit": limit,
            "inv_marker": marker or None}


def describe_job(sim: Sim, req: Request, account: str, vault: str, job_id: str) -> Response:
    job = sim.jobs.get(sim.vault(vault), job_id)
    return json_response(200, sim.jobs.describe(job))


def list_jobs(sim: Sim, req: Request, account: str, vault: str) -> Response:
    vault_row = sim.vault(vault)
    limit = parse_limit(req.query.get("limit"), LIST_JOBS_DEFAULT, LIST_JOBS_MAX)
    completed = req.query.get("completed")
    if completed is not None and completed not in ("true", "false"):
        raise invalid(f"Invalid completed value: {completed}. Valid values: true, false")
    status = req.query.get("statuscode")
    if status is not None and status not in STATUS_CODES:
        raise invalid(f"Invalid statuscode: {status}. Valid values: {', '.join(STATUS_CODES)}")
    jobs = sim.jobs.listing(vault_row, None if completed is None else completed == "true",
                            status)
    marker = req.query.get("marker")
    if marker:
        anchor = sim.store.one("SELECT id FROM jobs WHERE job_id = ? AND vault_id = ?",
                               (marker, vault_row["id"]))
        if anchor is None:
            raise invalid(f"Invalid marker: {marker}")
        jobs = [j for j in jobs if j["id"] >= anchor["id"]]
    page = jobs[:limit]
    return json_response(200, {"JobList": [sim.jobs.describe(j) for j in page],
                               "Marker": jobs[limit]["job_id"] if len(jobs) > limit else None})


def get_job_output(sim: Sim, req: Request, account: str, vault: str, job_id: str) -> Response:
    vault_row = sim.vault(vault)
    job = sim.jobs.get(vault_row, job_id)
    if sim.faults.draw("GetJobOutput", vault, {"expire"}):
        sim.jobs.force_expire(job_id)
        raise not_found(f"The job ID was not found: {job_id}")
    if job["action"] == SELECT:
        raise invalid(f"GetJobOutput is not available for select jobs: the output is in S3 "
                      f"(JobOutputPath in DescribeJob): {job_id}")
    if job["completed"] is None or job["status"] != "Succeeded":
        raise invalid(f"The job is not currently available for download: {job_id}")
    body = sim.jobs.output_body(job)
    size = body.size
    start, end = 0, size - 1
    ranged = False
    raw = req.header("Range")
    if raw and size and sim.config.honour_range:
        start, end = _parse_range(raw, size)
        ranged = True
    headers = {"Accept-Ranges": "bytes"}
    archive = job["action"] == ARCHIVE_RETRIEVAL
    if archive:
        headers["Content-Type"] = "application/octet-stream"
        if job["archive_description"]:
            headers["x-amz-archive-description"] = job["archive_description"]
        if not sim.config.tree_hash_header:
            pass  # --no-tree-hash-header: an endpoint that never sends one
        elif size == 0:
            headers["x-amz-sha256-tree-hash"] = job["archive_tree_hash"]
        elif is_tree_hash_aligned(start, end, size):
            whole = start == 0 and end == size - 1 and job["output_tree_hash"]
            headers["x-amz-sha256-tree-hash"] = (job["output_tree_hash"] if whole
                                                 else body.range_tree_hash(start, end))
    else:
        headers["Content-Type"] = CONTENT_TYPES.get(job["format"], "application/json")
    if ranged:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(status=206 if ranged else 200, headers=headers, stream=body,
                    stream_start=start, stream_length=max(0, end - start + 1))


def _parse_range(raw: str, size: int) -> tuple[int, int]:
    match = HTTP_RANGE.match(raw.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise invalid(f"Invalid Range header: {raw}")
    first, last = match.group(1), match.group(2)
    if not first:  # suffix form: the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start > end or start >= size:
        raise GlacierError(416, "InvalidParameterValueException",
                           f"The requested range is not satisfiable: {raw} (output size {size})")
    return start, end
