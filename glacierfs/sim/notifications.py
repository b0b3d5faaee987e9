"""Job-completion notifications, as Glacier sends them: Set/Get/DeleteVaultNotifications, the
``SNSTopic`` check of InitiateJob, and publishing through the SNS API.

When a job completes (Succeeded or Failed) Glacier posts the job's description — the DescribeJob
JSON — to the job's own ``SNSTopic`` and, for a matching event, to the vault's topic (both when
both are set, even if they are the same topic). The emulator publishes the same message with
boto3's SNS client to ``--sns-endpoint`` (a local SNS such as moto's server). Publishing happens
on one background thread, so a request that happens to complete a job does not wait for SNS, and
a publish that fails is logged and dropped, as Glacier does not check that it may publish to the
topic either. Without an endpoint topics are still validated, stored and shown; nothing is sent.
Select jobs match no vault event (the documented events are the two retrieval kinds); their own
topic is notified.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from typing import Any

from glacierfs.sim.errors import invalid, missing, not_found
from glacierfs.sim.messages import Request, Response, empty, json_response
from glacierfs.sim.store import Row, Store

log = logging.getLogger(__name__)

ARCHIVE_EVENT = "ArchiveRetrievalCompleted"
INVENTORY_EVENT = "InventoryRetrievalCompleted"
EVENTS = (ARCHIVE_EVENT, INVENTORY_EVENT)
EVENT_OF_ACTION = {"ArchiveRetrieval": ARCHIVE_EVENT, "InventoryRetrieval": INVENTORY_EVENT}
SCHEMA = """
CREATE TABLE IF NOT EXISTS vault_notifications (
    vault_id INTEGER PRIMARY KEY, topic TEXT NOT NULL, events TEXT NOT NULL);
"""
# arn:PARTITION:sns:REGION:ACCOUNT:NAME, NAME as SNS allows it (1-256 of A-Za-z0-9_-, and a
# FIFO topic's .fifo suffix).
TOPIC_ARN = re.compile(r"^arn:aws(-[a-z]+)*:sns:[a-z]{2}(-[a-z]+)+-\d+:\d{12}:"
                       r"[A-Za-z0-9_-]{1,251}(\.fifo)?$")
SNS_TIMEOUT = 10.0  # seconds for one publish; a local SNS answers in milliseconds


def check_topic(value: object, what: str = "SNSTopic") -> str:
    """A topic ARN as SNS shapes them; 400 InvalidParameterValueException otherwise."""
    if not isinstance(value, str) or not TOPIC_ARN.match(value) or len(value) > 1024:
        raise invalid(f"Invalid {what}: {value!r} is not an Amazon SNS topic ARN "
                      "(arn:aws:sns:REGION:ACCOUNT:NAME)")
    return value


def topic_region(arn: str) -> str:
    return arn.split(":")[3]


# --- Set/Get/DeleteVaultNotifications -------------------------------------------------------
def set_vault_notifications(sim: Any, req: Request, account: str, vault: str) -> Response:
    row = sim.vault(vault)
    body = req.json()
    if not isinstance(body, dict):
        raise invalid("The notification configuration must be a JSON object")
    if body.get("SNSTopic") is None:
        raise missing("Required parameter SNSTopic is missing")
    if body.get("Events") is None:
        raise missing("Required parameter Events is missing")
    topic = check_topic(body["SNSTopic"])
    events = body["Events"]
    if not isinstance(events, list) or not events:
        raise invalid("Events must be a list of one or more events")
    for event in events:
        if event not in EVENTS:
            raise invalid(f"Invalid event: {event!r}. Valid values: {', '.join(EVENTS)}")
    unique = list(dict.fromkeys(events))
    sim.store.run("INSERT OR REPLACE INTO vault_notifications (vault_id, topic, events) "
                  "VALUES (?, ?, ?)", (row["id"], topic, json.dumps(unique)))
    return empty(204)


def get_vault_notifications(sim: Any, req: Request, account: str, vault: str) -> Response:
    row = sim.vault(vault)
    config = vault_config(sim.store, row["id"])
    if config is None:
        raise not_found(f"No notification configuration is set for vault: "
                        f"{sim.config.vault_arn(vault)}")
    topic, events = config
    return json_response(200, {"SNSTopic": topic, "Events": events})


def delete_vault_notifications(sim: Any, req: Request, account: str, vault: str) -> Response:
    row = sim.vault(vault)
    sim.store.run("DELETE FROM vault_notifications WHERE vault_id = ?", (row["id"],))
    return empty(204)


def vault_config(store: Store, vault_id: int) -> tuple[str, list[str]] | None:
    row = store.one("SELECT topic, events FROM vault_notifications WHERE vault_id = ?",
                    (vault_id,))
    if row is None:
        return None
    return row["topic"], json.loads(row["events"])


# --- publishing -----------------------------------------------------------------------------
class Notifier:
    """Decides where a completed job is announced and publishes it, once per completion (the
    caller, ``Jobs``, calls ``completed`` exactly once per job, under the job's lock)."""

    def __init__(self, store: Store, endpoint: str | None) -> None:
        self.store = store
        self.endpoint = endpoint
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._clients: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.published = 0
        self.failed = 0
        store.run(SCHEMA.strip())

    def targets(self, job: Row) -> list[str]:
        """The topics this job's completion goes to: its own, then the vault's for a matching
        event (both, even when equal: Glacier sends both notifications)."""
        out = [job["sns_topic"]] if job["sns_topic"] else []
        event = EVENT_OF_ACTION.get(job["action"])
        config = vault_config(self.store, job["vault_id"]) if event else None
        if config is not None and event in config[1]:
            out.append(config[0])
        return out

    def completed(self, job: Row, description: dict[str, object]) -> None:
        topics = self.targets(job)
        if not topics:
            return
        message = json.dumps(description)
        for topic in topics:
            if self.endpoint is None:
                log.info("job %s…: would notify %s (no --sns-endpoint)", job["job_id"][:12],
                         topic)
                continue
            self._start()
            self._queue.put((topic, message, job["job_id"]))

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"published": self.published, "failed": self.failed,
                    "pending": self._queue.qsize()}

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(SNS_TIMEOUT + 5)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sns-publish",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            topic, message, job_id = item
            try:
                self._client(topic_region(topic)).publish(TopicArn=topic, Message=message)
            except Exception as exc:  # any refusal or outage: logged, never fatal
                with self._lock:
                    self.failed += 1
                log.warning("job %s…: could not notify %s: %s", job_id[:12], topic, exc)
                continue
            with self._lock:
                self.published += 1
            log.info("job %s…: notified %s", job_id[:12], topic)

    def _client(self, region: str) -> Any:
        client = self._clients.get(region)
        if client is None:
            import boto3
            from botocore.config import Config

            from glacierfs.sim.select.s3out import DUMMY_KEY_ID, DUMMY_SECRET

            session = boto3.Session(region_name=region)
            creds: dict[str, str] = {}
            if session.get_credentials() is None:
                creds = {"aws_access_key_id": DUMMY_KEY_ID,
                         "aws_secret_access_key": DUMMY_SECRET}
            client = session.client(
                "sns", endpoint_url=self.endpoint, **creds,
                config=Config(retries={"mode": "standard", "total_max_attempts": 3},
                              connect_timeout=5, read_timeout=SNS_TIMEOUT))
            self._clients[region] = client
        return client
