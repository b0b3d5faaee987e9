"""Identifiers shaped like Glacier's: url-safe base64 of random bytes, so they are unique even for
identical bodies and look real to code that stores or validates them."""

from __future__ import annotations

import base64
import os

# 103 random bytes encode to exactly 138 url-safe characters, the length of Glacier archive ids.
ARCHIVE_ID_BYTES = 103
ARCHIVE_ID_CHARS = 138
_BULK_BYTES, _BULK_CHARS = 105, 140  # a multiple of 3 bytes encodes without padding
# 69 bytes encode to 92 characters, the length of Glacier job and multipart upload ids.
JOB_ID_BYTES = 69


def _token(nbytes: int) -> str:
    return base64.urlsafe_b64encode(os.urandom(nbytes)).rstrip(b"=").decode("ascii")


def archive_id() -> str:
    return _token(ARCHIVE_ID_BYTES)


def job_id() -> str:
    return _token(JOB_ID_BYTES)


def upload_id() -> str:
    return _token(JOB_ID_BYTES)


def archive_ids(count: int) -> list[str]:
    """Many archive ids at once, for synthesizing a million archives: one urandom call and one
    encode (105 bytes are exactly 140 characters, cut to Glacier's 138)."""
    raw = base64.urlsafe_b64encode(os.urandom(_BULK_BYTES * count)).decode("ascii")
    step = _BULK_CHARS
    return [raw[i:i + ARCHIVE_ID_CHARS] for i in range(0, len(raw), step)]


def request_id() -> str:
    return _token(33)
