"""Writing Select output to S3 through the real S3 API (boto3's S3 client), as Glacier does.

The OutputLocation.S3 fields become PutObject arguments on every object the job writes
(storage class, canned ACL or grants, server-side encryption, tags, user metadata). Credentials
come from the AWS chain when there are any, otherwise dummy ones (a local S3 such as moto's
accepts any); the endpoint is the emulator's ``--s3-endpoint``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

DUMMY_KEY_ID = "AKIDGLACIERFSSIM0000"
DUMMY_SECRET = "glacierfs-sim-secret"
GRANT_ARGS = {"FULL_CONTROL": "GrantFullControl", "READ": "GrantRead",
              "READ_ACP": "GrantReadACP", "WRITE_ACP": "GrantWriteACP"}
GRANTEE_KEYS = {"CanonicalUser": ("id", "ID"), "Group": ("uri", "URI"),
                "AmazonCustomerByEmail": ("emailAddress", "EmailAddress")}


class S3WriteError(Exception):
    """S3 refused or could not be reached; ``missing_bucket`` when the bucket does not exist."""

    def __init__(self, message: str, missing_bucket: bool = False,
                 unreachable: bool = False) -> None:
        super().__init__(message)
        self.missing_bucket = missing_bucket
        self.unreachable = unreachable


@dataclass(frozen=True)
class Target:
    bucket: str
    prefix: str
    put_args: tuple[tuple[str, Any], ...]

    @classmethod
    def from_location(cls, s3: dict) -> Target:
        args: dict[str, Any] = {}
        if s3.get("StorageClass"):
            args["StorageClass"] = s3["StorageClass"]
        if s3.get("CannedACL"):
            args["ACL"] = s3["CannedACL"]
        enc = s3.get("Encryption") or {}
        if enc.get("EncryptionType"):
            args["ServerSideEncryption"] = enc["EncryptionType"]
        if enc.get("KMSKeyId"):
            args["SSEKMSKeyId"] = enc["KMSKeyId"]
        if enc.get("KMSContext"):
            args["SSEKMSEncryptionContext"] = enc["KMSContext"]
        if s3.get("Tagging"):
            args["Tagging"] = urlencode(s3["Tagging"])
        if s3.get("UserMetadata"):
            args["Metadata"] = dict(s3["UserMetadata"])
        grants: dict[str, list[str]] = {}
        for grant in s3.get("AccessControlList") or []:
            grantee = grant.get("Grantee") or {}
            key, field = GRANTEE_KEYS[grantee["Type"]]
            arg = GRANT_ARGS.get(grant.get("Permission", ""))
            if arg:
                grants.setdefault(arg, []).append(f'{key}="{grantee.get(field, "")}"')
        for arg, values in grants.items():
            args[arg] = ", ".join(values)
        return cls(bucket=s3["BucketName"], prefix=s3["Prefix"],
                   put_args=tuple(sorted(args.items(), key=lambda kv: kv[0])))


class S3Writer:
    """One boto3 S3 client for the emulator's lifetime (clients are thread-safe)."""

    def __init__(self, endpoint_url: str, region: str) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self._client = None
        self._lock = threading.Lock()

    def client(self):
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                session = boto3.Session(region_name=self.region)
                creds: dict[str, str] = {}
                if session.get_credentials() is None:
                    creds = {"aws_access_key_id": DUMMY_KEY_ID,
                             "aws_secret_access_key": DUMMY_SECRET}
                self._client = session.client(
                    "s3", endpoint_url=self.endpoint_url, **creds,
                    config=Config(retries={"mode": "standard", "total_max_attempts": 3},
                                  connect_timeout=5, read_timeout=30,
                                  s3={"addressing_style": "path"}))
            return self._client

    def put(self, target: Target, key: str, body: bytes, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        try:
            self.client().put_object(Bucket=target.bucket, Key=key, Body=body,
                                     ContentType=content_type, **dict(target.put_args))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "") or str(exc)
            raise S3WriteError(f"S3 refused s3://{target.bucket}/{key}: {code} {message}",
                               missing_bucket=code == "NoSuchBucket") from None
        except ParamValidationError as exc:   # e.g. an impossible bucket name: never sent
            raise S3WriteError(f"S3 refuses s3://{target.bucket}/{key}: "
                               f"{str(exc).splitlines()[-1]}") from None
        except BotoCoreError as exc:
            raise S3WriteError(f"S3 at {self.endpoint_url} could not be reached: {exc}",
                               unreachable=True) from None
