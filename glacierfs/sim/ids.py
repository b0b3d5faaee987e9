"""Identifiers shaped like Glacier's: url-safe base64 of random bytes, so they are unique even for
identical bodies and look real to code that stores or validates them."""

from __future__ import annotations

import base64
import os

# 103 random bytes encode to exactly 138 url-safe characters, the length of Glacier archive ids.
ARCHIVE_ID_BYTES = 103
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
    """Many archive ids at once (one urandom call): used to synthesize a million archives."""
    raw = os.urandom(ARCHIVE_ID_BYTES * count)
    step = ARCHIVE_ID_BYTES
    return [base64.urlsafe_b64encode(raw[i:i + step]).rstrip(b"=").decode("ascii")
            for i in range(0, len(raw), step)]


def request_id() -> str:
    return _token(33)
