"""``glacierfs select PATH --query SQL --output s3://BUCKET/PREFIX [--tier T]
[--header use|ignore|none] [--delimiter C] [--wait] [--timeout S]``.

Asks the mount's daemon for a select job on the archive behind PATH (``setxattr
user.glacier.select``, so the daemon records, counts and reuses it like every paid job), then
reads the answer from ``user.glacier.select.jobs``. With ``--wait`` it waits for the job and
writes the result rows (CSV) to stdout, read from S3 where the job put them (the mount's
``s3_endpoint_url``, learnt from its status document).

Exit codes: 0 done (rows written, or without --wait the job started or reused); 1 the job
failed or its output could not be read; 2 bad arguments; 3 --timeout passed first (the job goes
on: the same command later reuses it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from glacierfs.commands.common import (EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, STATUS_XATTR,
                                       CommandError, mount_of, read_xattr, seconds)
from glacierfs.jobs.selectspec import (HEADER_MODES, SELECT_JOBS_XATTR, SELECT_XATTR, TIERS,
                                  SelectRequest, SpecError, parse_s3_url)

EXIT_USAGE = 2
POLL = 1.0            # seconds between looks at the job's state (an xattr read, no API call)
ANSWER_WAIT = 15.0    # without --wait: how long to wait for Glacier to give the job an id


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glacierfs select",
        description="Run a Glacier Select query (SQL over a CSV archive, inside Glacier) on "
                    "the archive behind PATH; the matching rows go to S3. Asking again for "
                    "the same archive, query and output reuses the job.",
        epilog="exit codes: 0 done, 1 the job failed, 2 bad arguments, 3 timeout")
    p.add_argument("path", help="a file in a glacierfs mount")
    p.add_argument("--query", required=True,
                   help="SELECT … FROM archive [s] [WHERE …] (Glacier's SQL subset)")
    p.add_argument("--output", required=True, help="s3://BUCKET/PREFIX for the results")
    p.add_argument("--tier", choices=TIERS, help="default: the mount's tier")
    p.add_argument("--header", choices=HEADER_MODES, default="none",
                   help="the first line: use (column names), ignore, none (a record; default)")
    p.add_argument("--delimiter", default=",", help="field delimiter: one printable ASCII character (default ,; Glacier takes no tab)")
    p.add_argument("--wait", action="store_true",
                   help="wait for the job, then write the rows (CSV) to stdout")
    p.add_argument("--timeout", type=seconds, default=None,
                   help="seconds --wait waits at most (default: no limit)")
    return p


def _jobs(path: Path) -> list[dict]:
    raw = read_xattr(path, SELECT_JOBS_XATTR)
    return json.loads(raw) if raw else []


def _job(path: Path, key: str) -> dict | None:
    return next((j for j in _jobs(path) if j.get("key") == key), None)


def cmd_select(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    path = Path(args.path)
    if not path.exists():
        raise CommandError(f"{path}: no such file")
    if path.is_dir():
        raise CommandError(f"{path} is a directory; select works on one archive")
    archive_id = read_xattr(path, "user.glacier.archive_id")
    vault = read_xattr(path, "user.glacier.vault")
    mount = mount_of(path)
    if not archive_id or not vault or mount is None:
        raise CommandError(f"{path}: not a file on a glacierfs mount")
    raw = read_xattr(mount, STATUS_XATTR)
    doc = json.loads(raw) if raw else {}
    tier = args.tier or doc.get("limits", {}).get("tier") or "Standard"
    try:
        bucket, prefix = parse_s3_url(args.output)
        spec = SelectRequest.build(query=args.query, bucket=bucket, prefix=prefix, tier=tier,
                                   header=args.header, delimiter=args.delimiter)
    except SpecError as exc:
        print(f"glacierfs select: {exc}", file=sys.stderr)
        return EXIT_USAGE
    key = spec.key(vault, archive_id)
    try:
        os.setxattr(path, SELECT_XATTR, spec.to_json().encode())
    except OSError as exc:
        raise CommandError(f"{path}: the mount refused the request: {exc.strerror}") from None
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    answer_by = time.monotonic() + ANSWER_WAIT
    while True:
        job = _job(path, key)
        status = job.get("status") if job else None
        if status == "Failed":
            return _report_failure(job, doc)
        if not args.wait and job and (job.get("job_id") or job.get("message")
                                      or time.monotonic() > answer_by):
            return _report_started(job)
        if args.wait and status == "Succeeded":
            return _write_rows(job, doc)
        if deadline is not None and time.monotonic() >= deadline:
            where = f"job {job['job_id']}" if job and job.get("job_id") else "the request"
            print(f"glacierfs select: {where} is still {status or 'being sent'} after "
                  f"{args.timeout:g} s; run the same command again to keep waiting (it reuses "
                  "the job)", file=sys.stderr)
            return EXIT_TIMEOUT
        if job is None and time.monotonic() > answer_by and not args.wait:
            raise CommandError("the mount did not record the request (see its log)")
        time.sleep(POLL)


def _report_started(job: dict) -> int:
    if job.get("job_id"):
        print(f"job {job['job_id']}")
    else:
        print(f"job {job['status']}: {job.get('message') or 'waiting for Glacier'}")
    path = job.get("output_path")
    print(f"output s3://{job['bucket']}/{path}" if path else f"output {job['output']}")
    return EXIT_OK


def _reader(job: dict, doc: dict):
    from glacierfs.aws.s3output import OutputReader
    sel = doc.get("select", {})
    return OutputReader(job["bucket"], sel.get("region") or "us-east-1",
                        endpoint_url=sel.get("s3_endpoint_url"), profile=sel.get("profile"))


def _report_failure(job: dict, doc: dict) -> int:
    from glacierfs.aws.s3output import S3Error
    print(f"glacierfs select: the select job failed: {job.get('message') or 'no reason given'}",
          file=sys.stderr)
    if job.get("output_path"):
        try:
            for line in _reader(job, doc).errors(job["output_path"]):
                print(f"  {line}", file=sys.stderr)
        except S3Error as exc:
            print(f"glacierfs select: its error objects could not be read: {exc}",
                  file=sys.stderr)
    return EXIT_FAILED


def _write_rows(job: dict, doc: dict) -> int:
    from glacierfs.aws.s3output import S3Error
    path = job.get("output_path")
    if not path:
        raise CommandError("the job succeeded but its output path is unknown")
    try:
        parts = _reader(job, doc).results(path)
        if parts is None:
            raise CommandError(f"the job succeeded but s3://{job['bucket']}/{path}"
                               "result_manifest.txt is missing (deleted, or that S3 lost it); "
                               "the same --output reuses this job, so to run the query again "
                               "(a new job, paid again) give another --output prefix")
        out = sys.stdout.buffer
        for data in parts:
            out.write(data)
        out.flush()
    except S3Error as exc:
        raise CommandError(str(exc)) from None
    return EXIT_OK
