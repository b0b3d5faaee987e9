"""Select jobs in the emulator: InitiateJob ``Type: select`` validation, ``job.txt``, running the
query when the job is due, and the DescribeJob fields only select jobs have.

Lifecycle (the rest is the common job machinery of ``sim/jobs.py``):

    InitiateJob ─ validate (400 on a missing or bad field, an expression outside the subset)
                ─ job row saved ─ PREFIX/JOBID/job.txt written (a refused write undoes the job)
                ─ 202 with x-amz-job-output-path: PREFIX/JOBID/
    due (tier delay, or forced) ─ query run ─┬─ results/… parts + result_manifest.txt ─ Succeeded
                                             └─ errors/… + error_manifest.txt ─ Failed

Jobs complete lazily when a request looks at them, and also from a background thread
(``watch``), so the S3 objects appear on time for a client that only polls S3.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from typing import Protocol

from glacierfs.sim.clock import iso
from glacierfs.sim.config import TIERS
from glacierfs.sim.errors import GlacierError, invalid, missing, not_found
from glacierfs.sim.select import csvio, engine, sql
from glacierfs.sim.select.s3out import GRANT_ARGS, GRANTEE_KEYS, S3WriteError, S3Writer, Target
from glacierfs.sim.store import Row, Store


class Jobs(Protocol):
    """What this service needs of ``sim/jobs.py``'s job table (which owns this service, so it
    is named here by shape, not imported)."""

    def get_by_id(self, job_id: str) -> Row | None: ...

    def describe(self, job: Row) -> dict[str, object]: ...

    def refresh(self, job: Row) -> Row: ...

log = logging.getLogger(__name__)

SELECT = "Select"
SCHEMA = """
CREATE TABLE IF NOT EXISTS select_jobs (
    job_id TEXT PRIMARY KEY, params TEXT NOT NULL, location TEXT NOT NULL,
    output_path TEXT NOT NULL);
"""
# Glacier's documented limit on the S3 location path (bucket + prefix).
MAX_LOCATION_BYTES = 512
CANNED_ACLS = ("private", "public-read", "public-read-write", "aws-exec-read",
               "authenticated-read", "bucket-owner-read", "bucket-owner-full-control")
STORAGE_CLASSES = ("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA")
ENCRYPTION_TYPES = ("aws:kms", "AES256")
PERMISSIONS = ("FULL_CONTROL", "WRITE", "WRITE_ACP", "READ", "READ_ACP")
# How often the background thread looks for select jobs that are due.
WATCH_INTERVAL = 0.5
NO_ENDPOINT = ("Select jobs need an S3 bucket for their output, and this emulator has no S3 "
               "endpoint configured: start it with --s3-endpoint URL")


class SelectService:
    def __init__(self, store: Store, region: str, s3_endpoint: str | None) -> None:
        self.store = store
        self.s3_endpoint = s3_endpoint
        self.writer = S3Writer(s3_endpoint, region) if s3_endpoint else None
        self._stop = threading.Event()
        store.run(SCHEMA.strip())

    # --- InitiateJob ------------------------------------------------------------------------
    def validate(self, params: dict) -> dict:
        """Check SelectParameters and OutputLocation; returns the row for select_jobs (less the
        job id). Raises 400 with Glacier's error codes."""
        if params.get("RetrievalByteRange"):
            raise invalid("RetrievalByteRange is not allowed for select jobs (no ranged "
                          "selection)")
        select = params.get("SelectParameters")
        if select is None:
            raise missing("Required parameter SelectParameters is missing for a select job")
        location = params.get("OutputLocation")
        if location is None:
            raise missing("Required parameter OutputLocation is missing for a select job")
        _object(select, "SelectParameters")
        _object(location, "OutputLocation")
        expression = _string(select, "Expression", "SelectParameters")
        expression_type = _string(select, "ExpressionType", "SelectParameters")
        if expression is None:
            raise missing("Required parameter SelectParameters.Expression is missing")
        if expression_type is None:
            raise missing("Required parameter SelectParameters.ExpressionType is missing")
        if expression_type != "SQL":
            raise invalid(f"Invalid ExpressionType: {expression_type}. Valid values: SQL")
        csv_input(select)
        csv_output(select)
        try:
            sql.parse(expression)
        except sql.SqlError as exc:
            raise invalid(f"Invalid SQL expression: {exc}") from None
        s3 = location.get("S3")
        if s3 is None:
            raise missing("Required parameter OutputLocation.S3 is missing")
        _object(s3, "OutputLocation.S3")
        bucket = _string(s3, "BucketName", "OutputLocation.S3")
        prefix = _string(s3, "Prefix", "OutputLocation.S3")
        if not bucket:
            raise missing("Required parameter OutputLocation.S3.BucketName is missing")
        if prefix is None:
            raise missing("Required parameter OutputLocation.S3.Prefix is missing")
        if len(f"{bucket}/{prefix}".encode()) > MAX_LOCATION_BYTES:
            raise invalid(f"The S3 location path is longer than {MAX_LOCATION_BYTES} bytes")
        _check_location(s3)
        if self.writer is None:
            raise invalid(NO_ENDPOINT)
        return {"params": json.dumps(select), "location": json.dumps(location),
                "prefix": prefix}

    def start(self, jobs: Jobs, job_id: str, prepared: dict) -> str:
        """Save the select row and write job.txt; returns the output path. A refused write
        removes the job again (Glacier refuses the InitiateJob)."""
        output_path = f"{prepared['prefix'].rstrip('/')}/{job_id}/" if prepared["prefix"] \
            else f"{job_id}/"
        self.store.run("INSERT INTO select_jobs (job_id, params, location, output_path) "
                       "VALUES (?, ?, ?, ?)",
                       (job_id, prepared["params"], prepared["location"], output_path))
        job = jobs.get_by_id(job_id)
        assert job is not None and self.writer is not None
        target = self._target(job_id)
        try:
            self.writer.put(target, output_path + "job.txt",
                            json.dumps(jobs.describe(job), indent=2).encode(), "text/plain")
        except S3WriteError as exc:
            self.store.run("DELETE FROM select_jobs WHERE job_id = ?", (job_id,))
            self.store.run("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            if exc.missing_bucket:
                raise invalid(f"The S3 bucket {target.bucket} does not exist") from None
            if exc.unreachable:
                raise GlacierError(503, "ServiceUnavailableException", str(exc)) from None
            raise invalid(str(exc)) from None
        return output_path

    # --- DescribeJob ------------------------------------------------------------------------
    def describe_fields(self, job: Row) -> dict:
        row = self._row(job["job_id"])
        return {"RetrievalByteRange": None, "SHA256TreeHash": None,
                "InventorySizeInBytes": None,
                "SelectParameters": json.loads(row["params"]) if row else None,
                "OutputLocation": json.loads(row["location"]) if row else None,
                "JobOutputPath": row["output_path"] if row else None}

    # --- running ----------------------------------------------------------------------------
    def finish(self, job: Row, when: float, archive_path) -> dict:
        """Run the query of a due job; returns the job's final fields."""
        row = self._row(job["job_id"])
        if row is None or self.writer is None:
            return {"status": "Failed", "status_message": "The select job lost its parameters."}
        target = self._target(job["job_id"])
        base = row["output_path"]
        try:
            if job["fail_message"]:
                raise engine.RunError(job["fail_message"])
            select = json.loads(row["params"])
            data = archive_path.read_bytes() if archive_path is not None else b""
            parts = engine.run(data, select["Expression"], csv_input(select),
                               csv_output(select))
            keys = []
            for n, part in enumerate(parts):
                key = f"{base}results/{n:05d}_{secrets.token_hex(6)}.csv"
                self.writer.put(target, key, part.encode(), "text/csv")
                keys.append(key)
            manifest = "".join(f"s3://{target.bucket}/{k}\n" for k in keys)
            self.writer.put(target, base + "result_manifest.txt", manifest.encode(),
                            "text/plain")
            log.info("select job %s…: %d result parts at %s", job["job_id"][:12], len(keys),
                     iso(when))
            return {"status": "Succeeded", "status_message": "Succeeded"}
        except engine.RunError as exc:
            message = str(exc)
            try:
                key = f"{base}errors/error_00000_{secrets.token_hex(6)}.txt"
                self.writer.put(target, key, (message + "\n").encode(), "text/plain")
                self.writer.put(target, base + "error_manifest.txt",
                                f"s3://{target.bucket}/{key}\n".encode(), "text/plain")
            except S3WriteError as s3exc:
                log.warning("select job %s…: could not write its errors: %s",
                            job["job_id"][:12], s3exc)
            return {"status": "Failed", "status_message": message}
        except S3WriteError as exc:
            return {"status": "Failed",
                    "status_message": f"The results could not be written to S3: {exc}"}

    def watch(self, jobs: Jobs) -> threading.Thread:
        """Complete due select jobs in the background (their output appears in S3 on time)."""
        def loop() -> None:
            while not self._stop.wait(WATCH_INTERVAL):
                try:
                    for job in self.store.all("SELECT * FROM jobs WHERE action = ? AND "
                                              "completed IS NULL", (SELECT,)):
                        jobs.refresh(job)
                except Exception:  # one bad round must not end the watcher
                    log.exception("select watcher round failed")
        thread = threading.Thread(target=loop, name="select-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _row(self, job_id: str) -> Row | None:
        return self.store.one("SELECT * FROM select_jobs WHERE job_id = ?", (job_id,))

    def _target(self, job_id: str) -> Target:
        row = self._row(job_id)
        if row is None:
            raise not_found(f"The job ID was not found: {job_id}")
        return Target.from_location(json.loads(row["location"])["S3"])


# --- validation helpers ---------------------------------------------------------------------
def _object(value: object, name: str) -> dict:
    if not isinstance(value, dict):
        raise invalid(f"{name} must be an object")
    return value


def _string(obj: dict, key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid(f"{where}.{key} must be a string")
    return value


def _char(obj: dict, key: str, where: str, default: str | None,
          allow_crlf: bool = False) -> str | None:
    value = _string(obj, key, where)
    if value is None or value == "":
        return default
    if len(value) != 1 and not (allow_crlf and value == "\r\n"):
        raise invalid(f"Invalid {where}.{key}: {value!r}: a single character is expected")
    return value


def _enum(obj: dict, key: str, where: str, valid: tuple[str, ...], default: str) -> str:
    value = _string(obj, key, where)
    if value is None:
        return default
    if value.upper() not in valid:
        raise invalid(f"Invalid {where}.{key}: {value}. Valid values: {', '.join(valid)}")
    return value.upper()


def _serialization(select: dict, name: str) -> dict:
    ser = select.get(name)
    if ser is None:
        return {}
    _object(ser, f"SelectParameters.{name}")
    unknown = set(ser) - {"csv"}
    if unknown:
        raise invalid(f"Invalid SelectParameters.{name}: only csv is supported, got "
                      f"{', '.join(sorted(unknown))}")
    csv_spec = ser.get("csv") or {}
    return _object(csv_spec, f"SelectParameters.{name}.csv")


def csv_input(select: dict) -> csvio.CsvInput:
    where = "InputSerialization.csv"
    spec = _serialization(select, "InputSerialization")
    field = _char(spec, "FieldDelimiter", where, ",")
    assert field is not None
    if not (field in "\n\r" or 32 <= ord(field) <= 126):
        raise invalid(f"Invalid {where}.FieldDelimiter: {field!r}: \\n, \\r or an ASCII "
                      "character from 32 to 126 is expected")
    quote = _char(spec, "QuoteCharacter", where, '"')
    record = _char(spec, "RecordDelimiter", where, "\n", allow_crlf=True)
    out = csvio.CsvInput(
        file_header_info=_enum(spec, "FileHeaderInfo", where, csvio.HEADER_MODES, "NONE"),
        field_delimiter=field, record_delimiter=record or "\n", quote_character=quote or '"',
        quote_escape_character=_char(spec, "QuoteEscapeCharacter", where, None) or quote or '"',
        comments=_char(spec, "Comments", where, None))
    if out.field_delimiter == out.record_delimiter or out.field_delimiter == out.quote_character:
        raise invalid(f"Invalid {where}: the field delimiter must differ from the record "
                      "delimiter and the quote character")
    return out


def csv_output(select: dict) -> csvio.CsvOutput:
    where = "OutputSerialization.csv"
    spec = _serialization(select, "OutputSerialization")
    quote = _char(spec, "QuoteCharacter", where, '"') or '"'
    out = csvio.CsvOutput(
        quote_fields=_enum(spec, "QuoteFields", where, csvio.QUOTE_MODES, "ASNEEDED"),
        field_delimiter=_char(spec, "FieldDelimiter", where, ",") or ",",
        record_delimiter=_char(spec, "RecordDelimiter", where, "\n", allow_crlf=True) or "\n",
        quote_character=quote,
        quote_escape_character=_char(spec, "QuoteEscapeCharacter", where, None) or quote)
    if out.field_delimiter == out.quote_character or out.field_delimiter in out.record_delimiter:
        raise invalid(f"Invalid {where}: the field delimiter must differ from the record "
                      "delimiter and the quote character")
    return out


def _check_location(s3: dict) -> None:
    where = "OutputLocation.S3"
    acl = _string(s3, "CannedACL", where)
    if acl is not None and acl not in CANNED_ACLS:
        raise invalid(f"Invalid {where}.CannedACL: {acl}. Valid values: {', '.join(CANNED_ACLS)}")
    storage = _string(s3, "StorageClass", where)
    if storage is not None and storage not in STORAGE_CLASSES:
        raise invalid(f"Invalid {where}.StorageClass: {storage}. Valid values: "
                      f"{', '.join(STORAGE_CLASSES)}")
    enc = s3.get("Encryption")
    if enc is not None:
        _object(enc, f"{where}.Encryption")
        etype = _string(enc, "EncryptionType", f"{where}.Encryption")
        if etype is None:
            raise missing(f"Required parameter {where}.Encryption.EncryptionType is missing")
        if etype not in ENCRYPTION_TYPES:
            raise invalid(f"Invalid {where}.Encryption.EncryptionType: {etype}. Valid values: "
                          f"{', '.join(ENCRYPTION_TYPES)}")
        if etype != "aws:kms" and (enc.get("KMSKeyId") or enc.get("KMSContext")):
            raise invalid(f"{where}.Encryption: KMSKeyId and KMSContext need aws:kms")
        for key in ("KMSKeyId", "KMSContext"):
            _string(enc, key, f"{where}.Encryption")
    for key in ("Tagging", "UserMetadata"):
        value = s3.get(key)
        if value is not None and (not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
            raise invalid(f"{where}.{key} must be a map of strings to strings")
    grants = s3.get("AccessControlList")
    if grants is not None:
        if not isinstance(grants, list):
            raise invalid(f"{where}.AccessControlList must be a list of grants")
        if grants and acl is not None:
            raise invalid(f"{where}: give either CannedACL or AccessControlList, not both")
        for grant in grants:
            _object(grant, "Grant")
            grantee = grant.get("Grantee")
            if grantee is None:
                raise missing("Required parameter Grant.Grantee is missing")
            _object(grantee, "Grantee")
            gtype = grantee.get("Type")
            if gtype is None:
                raise missing("Required parameter Grantee.Type is missing")
            if gtype not in GRANTEE_KEYS:
                raise invalid(f"Invalid Grantee.Type: {gtype}. Valid values: "
                              f"{', '.join(GRANTEE_KEYS)}")
            if not grantee.get(GRANTEE_KEYS[gtype][1]):
                raise missing(f"Required parameter Grantee.{GRANTEE_KEYS[gtype][1]} is missing "
                              f"for a {gtype} grantee")
            permission = grant.get("Permission")
            if permission not in PERMISSIONS:
                raise invalid(f"Invalid Grant.Permission: {permission}. Valid values: "
                              f"{', '.join(PERMISSIONS)}")
            if permission not in GRANT_ARGS:
                raise invalid(f"Grant.Permission {permission} does not apply to S3 objects")


def validate_tier(params: dict) -> str:
    tier = params.get("Tier") or "Standard"
    if tier not in TIERS:
        raise invalid(f"Invalid tier: {tier}. Valid values: {', '.join(TIERS)}")
    return tier
