"""What one select request is, shared by the CLI and the daemon (pure, no I/O).

A request (query, output ``s3://BUCKET/PREFIX``, header mode, delimiter, tier) becomes the exact
``SelectParameters`` and ``OutputLocation`` sent to InitiateJob, and a key: the SHA-256 of the
vault, the archive and both documents in canonical form. Two requests with the same key are
the same paid job; the key is also how a job listed by ListJobs (another machine, a crash
before the answer) is recognised as ours, since Glacier echoes both documents back.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

SELECT_XATTR = "user.glacier.select"            # write: a JSON request
SELECT_JOBS_XATTR = "user.glacier.select.jobs"  # read: the file's select jobs (JSON)
HEADER_MODES = ("use", "ignore", "none")
TIERS = ("Expedited", "Standard", "Bulk")
# Defaults Glacier applies when a CSV field is absent: filled in before comparing, so a job
# echoed with or without them compares equal.
CSV_INPUT_DEFAULTS = {"FileHeaderInfo": "NONE", "FieldDelimiter": ",", "RecordDelimiter": "\n",
                      "QuoteCharacter": '"', "QuoteEscapeCharacter": '"', "Comments": None}
CSV_OUTPUT_DEFAULTS = {"QuoteFields": "ASNEEDED", "FieldDelimiter": ",", "RecordDelimiter": "\n",
                       "QuoteCharacter": '"', "QuoteEscapeCharacter": '"'}


class SpecError(ValueError):
    """A request that cannot be sent: one line for the user."""


@dataclass(frozen=True)
class SelectRequest:
    query: str
    bucket: str
    prefix: str
    tier: str = "Standard"
    header: str = "none"
    delimiter: str = ","

    @classmethod
    def from_json(cls, raw: bytes | str) -> SelectRequest:
        try:
            data = json.loads(raw)
        except ValueError:
            raise SpecError("the request is not JSON") from None
        if not isinstance(data, dict):
            raise SpecError("the request must be a JSON object")
        bucket, prefix = parse_s3_url(str(data.get("output", "")))
        return cls.build(query=data.get("query"), bucket=bucket, prefix=prefix,
                         tier=data.get("tier") or "Standard",
                         header=data.get("header") or "none",
                         delimiter=data.get("delimiter") or ",")

    @classmethod
    def build(cls, query: object, bucket: str, prefix: str, tier: object, header: object,
              delimiter: object) -> SelectRequest:
        if not isinstance(query, str) or not query.strip():
            raise SpecError("a query is needed (--query 'SELECT … FROM archive …')")
        tier_s = str(tier).capitalize()
        if tier_s not in TIERS:
            raise SpecError(f"tier {tier}: expected one of {', '.join(TIERS)}")
        header_s = str(header).lower()
        if header_s not in HEADER_MODES:
            raise SpecError(f"header {header}: expected use, ignore or none")
        delim = str(delimiter)
        if delim in ("\\t", "\t"):
            raise SpecError("delimiter tab: Glacier Select takes no tab (only a printable ASCII "
                            "character, a newline or a carriage return)")
        if len(delim) != 1:
            raise SpecError(f"delimiter {delimiter!r}: one character expected")
        if delim not in ("\n", "\r") and not 32 <= ord(delim) <= 126:
            raise SpecError(f"delimiter {delimiter!r}: Glacier Select takes only a printable "
                            "ASCII character, a newline or a carriage return")
        return cls(query=query.strip(), bucket=bucket, prefix=prefix, tier=tier_s,
                   header=header_s, delimiter=delim)

    def to_json(self) -> str:
        return json.dumps({"query": self.query, "output": self.output_url, "tier": self.tier,
                           "header": self.header, "delimiter": self.delimiter})

    @property
    def output_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def select_parameters(self) -> dict[str, Any]:
        return {"Expression": self.query, "ExpressionType": "SQL",
                "InputSerialization": {"csv": {"FileHeaderInfo": self.header.upper(),
                                               "FieldDelimiter": self.delimiter}},
                "OutputSerialization": {"csv": {"FieldDelimiter": ","}}}

    def output_location(self) -> dict[str, Any]:
        return {"S3": {"BucketName": self.bucket, "Prefix": self.prefix}}

    def key(self, vault: str, archive_id: str) -> str:
        return job_key(vault, archive_id, self.select_parameters(), self.output_location())


# What S3 clients accept as a bucket name (botocore's check; legacy us-east-1 buckets may have
# capitals and '_', so no stricter): anything else never reaches S3, and Glacier would only
# find out when the job writes its output.
BUCKET_NAME = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` → (bucket, prefix without a trailing slash)."""
    if not url.startswith("s3://"):
        raise SpecError(f"--output {url or '(none)'}: expected s3://BUCKET/PREFIX")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise SpecError(f"--output {url}: no bucket name")
    if not BUCKET_NAME.fullmatch(bucket):
        raise SpecError(f"--output {url}: {bucket!r} is not an S3 bucket name (letters, "
                        "digits, '.', '-', '_')")
    prefix = prefix.rstrip("/")
    if not prefix:
        raise SpecError(f"--output {url}: a prefix is needed (s3://{bucket}/PREFIX)")
    return bucket, prefix


def canonical(select_parameters: dict[str, Any] | None,
              output_location: dict[str, Any] | None) -> str:
    """Both documents with Glacier's defaults filled in, as one comparable string."""
    sel = select_parameters or {}
    inp = dict(CSV_INPUT_DEFAULTS)
    inp.update({k: v for k, v in ((sel.get("InputSerialization") or {}).get("csv") or {})
                .items() if v is not None})
    inp["FileHeaderInfo"] = str(inp["FileHeaderInfo"]).upper()
    out = dict(CSV_OUTPUT_DEFAULTS)
    out.update({k: v for k, v in ((sel.get("OutputSerialization") or {}).get("csv") or {})
                .items() if v is not None})
    out["QuoteFields"] = str(out["QuoteFields"]).upper()
    s3 = (output_location or {}).get("S3") or {}
    loc = {k: v for k, v in s3.items() if v not in (None, "", [], {})}
    return json.dumps({"Expression": sel.get("Expression"),
                       "ExpressionType": sel.get("ExpressionType") or "SQL",
                       "Input": inp, "Output": out, "S3": loc}, sort_keys=True)


def job_key(vault: str, archive_id: str, select_parameters: dict[str, Any] | None,
            output_location: dict[str, Any] | None) -> str:
    text = json.dumps([vault, archive_id, canonical(select_parameters, output_location)])
    return hashlib.sha256(text.encode()).hexdigest()
