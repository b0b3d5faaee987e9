"""Reading a select job's output from S3 (``glacierfs select --wait``): the result manifest and
the parts it lists, or on failure the error manifest and the error objects. The S3 counterpart
of glacier.py: the only module that talks to S3, with the same rules (the AWS credential chain,
dummy credentials only for a loopback endpoint, errors as one line)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from glacierfs.options import is_loopback_url

RESULT_MANIFEST = "result_manifest.txt"
ERROR_MANIFEST = "error_manifest.txt"


class S3Error(Exception):
    """S3 refused or could not be reached: one line for the user."""


class OutputReader:
    def __init__(self, bucket: str, region: str, endpoint_url: str | None = None,
                 profile: str | None = None) -> None:
        self.bucket = bucket
        try:
            session = boto3.session.Session(profile_name=profile, region_name=region)
            creds = session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise S3Error(f"AWS credentials: {exc}") from None
        extra: dict[str, Any] = {}
        if creds is None and is_loopback_url(endpoint_url):
            extra = {"aws_access_key_id": "glacierfs-local", "aws_secret_access_key": "unused"}
        config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 5},
                                        connect_timeout=10, read_timeout=60,
                                        user_agent_extra="glacierfs")
        self._s3 = session.client("s3", endpoint_url=endpoint_url, config=config, **extra)

    def _get(self, key: str) -> bytes | None:
        """An object's bytes; None when it does not exist."""
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise S3Error(f"S3 refused s3://{self.bucket}/{key}: {code}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise S3Error(f"cannot read s3://{self.bucket}/{key}: {exc}") from None

    def _listed(self, manifest: bytes) -> list[str]:
        keys = []
        for line in manifest.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("s3://"):
                bucket, _, key = line[5:].partition("/")
                if bucket != self.bucket:
                    raise S3Error(f"the manifest lists an object in another bucket: {line}")
                keys.append(key)
            else:
                keys.append(line)
        return keys

    def results(self, output_path: str) -> Iterator[bytes] | None:
        """The result parts in manifest order; None when the job wrote no result manifest."""
        manifest = self._get(output_path + RESULT_MANIFEST)
        if manifest is None:
            return None
        keys = self._listed(manifest)

        def parts() -> Iterator[bytes]:
            for key in keys:
                data = self._get(key)
                if data is None:
                    raise S3Error(f"result part s3://{self.bucket}/{key} is missing")
                yield data
        return parts()

    def errors(self, output_path: str, lines: int = 5) -> list[str]:
        """The first lines of each error object the job wrote (empty when there are none)."""
        manifest = self._get(output_path + ERROR_MANIFEST)
        if manifest is None:
            return []
        out = []
        for key in self._listed(manifest):
            data = self._get(key) or b""
            out.extend(data.decode("utf-8", "replace").splitlines()[:lines])
        return out
