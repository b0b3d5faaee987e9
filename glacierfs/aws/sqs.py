"""The only module that talks to Amazon SQS: long-polling the queue that receives Glacier's job
completion notifications (``sqs_queue_url``), and deleting the messages acted on.

Same rules as glacier.py: the AWS credential chain (``profile``), the mount's region unless the
queue URL names another, dummy credentials only for a loopback endpoint, errors translated into
one exception class with one line for the user. Blocking and thread-safe; the listener runs it
in a worker thread.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from glacierfs.options import is_loopback_url

log = logging.getLogger(__name__)

LONG_POLL = 20          # seconds one ReceiveMessage waits for messages (SQS's maximum)
BATCH = 10              # messages per ReceiveMessage (SQS's maximum)
CONNECT_TIMEOUT = 10
READ_TIMEOUT = LONG_POLL + 15  # a long poll answers after LONG_POLL at the latest
_QUEUE_HOST_REGION = re.compile(r"^sqs\.([a-z]{2}(-[a-z]+)+-\d+)\.amazonaws\.com")


class QueueError(Exception):
    """SQS refused or could not be reached; ``code`` is SQS's error code when it answered."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


@dataclass(frozen=True)
class QueueMessage:
    body: str
    receipt_handle: str
    message_id: str
    sent_at: float | None        # seconds since the epoch (SentTimestamp)
    receive_count: int           # ApproximateReceiveCount, 1 the first time


def queue_region(queue_url: str, default: str) -> str:
    """``https://sqs.eu-west-1.amazonaws.com/…`` names its region; other URLs do not."""
    host = urllib.parse.urlsplit(queue_url).hostname or ""
    match = _QUEUE_HOST_REGION.match(host)
    return match.group(1) if match else default


def _translate(exc: BaseException) -> QueueError:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        return QueueError(str(err.get("Code") or "Unknown"), str(err.get("Message") or ""))
    if isinstance(exc, (botocore.exceptions.NoCredentialsError,
                        botocore.exceptions.PartialCredentialsError)):
        return QueueError("NoCredentials", "no AWS credentials found")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return QueueError(type(exc).__name__, str(exc))
    if isinstance(exc, OSError):
        return QueueError("ConnectionError", str(exc) or type(exc).__name__)
    raise exc


class QueueClient:
    """ReceiveMessage (long poll) and DeleteMessage on one queue, calls counted."""

    def __init__(self, queue_url: str, region: str, endpoint_url: str | None = None,
                 profile: str | None = None) -> None:
        self.queue_url = queue_url
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        try:
            session = boto3.session.Session(profile_name=profile,
                                            region_name=queue_region(queue_url, region))
            credentials = session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise _translate(exc) from None
        extra: dict[str, Any] = {}
        if credentials is None and is_loopback_url(endpoint_url or queue_url):
            extra = {"aws_access_key_id": "glacierfs-local", "aws_secret_access_key": "unused"}
        config = botocore.config.Config(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT, user_agent_extra="glacierfs")
        self._client = session.client("sqs", endpoint_url=endpoint_url, config=config, **extra)

    def _call(self, operation: str, fn: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls[operation] = self.calls.get(operation, 0) + 1
        try:
            return fn(QueueUrl=self.queue_url, **kwargs)
        except Exception as exc:  # translated; anything unknown is re-raised by _translate
            raise _translate(exc) from None

    def receive(self, wait: int = LONG_POLL, batch: int = BATCH) -> list[QueueMessage]:
        """Up to ``batch`` messages, waiting up to ``wait`` seconds for the first."""
        out = self._call("ReceiveMessage", self._client.receive_message,
                         MaxNumberOfMessages=batch, WaitTimeSeconds=wait,
                         AttributeNames=["SentTimestamp", "ApproximateReceiveCount"])
        messages = []
        for raw in out.get("Messages", []):
            attrs = raw.get("Attributes") or {}
            try:
                sent: float | None = int(attrs["SentTimestamp"]) / 1000
            except (KeyError, ValueError):
                sent = None
            try:
                count = int(attrs.get("ApproximateReceiveCount", 1))
            except ValueError:
                count = 1
            messages.append(QueueMessage(body=str(raw.get("Body") or ""),
                                         receipt_handle=str(raw.get("ReceiptHandle") or ""),
                                         message_id=str(raw.get("MessageId") or ""),
                                         sent_at=sent, receive_count=count))
        return messages

    def release(self, receipt_handle: str, seconds: int) -> None:
        """Make a received message visible again after ``seconds`` (0: at once)."""
        self._call("ChangeMessageVisibility", self._client.change_message_visibility,
                   ReceiptHandle=receipt_handle, VisibilityTimeout=seconds)

    def delete(self, receipt_handle: str) -> None:
        self._call("DeleteMessage", self._client.delete_message, ReceiptHandle=receipt_handle)
