"""The command line of ``glacierfs copy`` (a contract: flag names are kept as they are)."""

from __future__ import annotations

import argparse

from glacierfs.aws import s3upload
from glacierfs.commands import pricing

TIERS = ("Expedited", "Standard", "Bulk")


def shard(text: str) -> tuple[int, int]:
    """An argparse type for --shard K/N."""
    k, _, n = text.partition("/")
    try:
        kk, nn = int(k), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N, e.g. 2/8") from None
    if not 1 <= kk <= nn:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 1 <= K <= N")
    return kk, nn


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glacierfs copy",
        usage="glacierfs copy [-h] [-r] [--tier T] [--dry-run] [--storage-class CLASS] "
              "[--shard K/N] [--manifest FILE] [--s3-endpoint-url URL] [-o OPTIONS] "
              "[--price-file FILE] [--json] SRC... DEST",
        description="Copy files or trees out of a glacierfs mount into a local directory or "
                    "into S3 (DEST s3://BUCKET[/PREFIX]), like cp -r, through a cache of any "
                    "size: retrievals are requested in batches that fit the cache, each file "
                    "is copied as soon as it is cached and verified against its tree hash. "
                    "Run it again to resume.")
    p.add_argument("paths", nargs="+", metavar="SRC... DEST",
                   help="files or directories on a glacierfs mount (or "
                        "glacier://[ACCOUNT@]REGION/VAULT[/PATH], no mount needed), then where "
                        "to copy them (a local path or s3://BUCKET[/PREFIX])")
    p.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    p.add_argument("--tier", choices=TIERS, metavar="T",
                   help="tier of new jobs: Expedited, Standard or Bulk (default: the mount's)")
    p.add_argument("--dry-run", action="store_true",
                   help="start nothing; show files, bytes, jobs and an estimated cost")
    p.add_argument("--price-file", metavar="FILE", help="JSON overriding the built-in price "
                   f"table (also ${pricing.PRICE_FILE_ENV})")
    p.add_argument("--storage-class", metavar="CLASS", type=str.upper,
                   choices=s3upload.STORAGE_CLASSES,
                   help=f"S3 storage class of the objects (default: "
                        f"{s3upload.DEFAULT_STORAGE_CLASS}); any of "
                        + ", ".join(s3upload.STORAGE_CLASSES))
    p.add_argument("--shard", type=shard, metavar="K/N",
                   help="copy only share K of N of the archives (by archive id: the same on "
                        "every machine and run)")
    p.add_argument("--manifest", metavar="FILE",
                   help="write JSON Lines, one per archive copied or found done")
    p.add_argument("-o", dest="options", metavar="OPTIONS",
                   help="for a glacier://[ACCOUNT@]REGION/VAULT[/PATH] SRC (no mount): the "
                        "mount's options (endpoint_url, cache_dir, cache_size, tier, budget, "
                        "max_jobs, ...)")
    p.add_argument("--json", action="store_true",
                   help="print the final summary as one JSON object (for scripts)")
    p.add_argument("--s3-endpoint-url", metavar="URL",
                   help="S3 endpoint for an s3:// DEST (default: AWS_ENDPOINT_URL_S3, "
                        "AWS_ENDPOINT_URL, or AWS's)")
    return p
