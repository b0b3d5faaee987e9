"""Job completion notices: Glacier's SNS notifications, read from an SQS queue, turned into the
same action a polling round takes for that job, at once.

Glacier posts a job's description (the DescribeJob JSON) to the job's SNS topic (``sns_topic``,
named on every job the mount starts) and to the vault's notification topic; a queue subscribed
to the topic (``sqs_queue_url``) holds them, wrapped in SNS's envelope or raw. The listener
long-polls the queue. A message is only a hint (anyone allowed to send to the queue can write
one), so:

- unreadable (not a job description): deleted; no call.
- a job this mount does not know (another mount's, another tool's): left in the queue for the
  others and deleted once older than ``FOREIGN_MAX_AGE``, so nothing circulates for ever; no
  call. It is made visible again after ``FOREIGN_RELEASE`` seconds while this mount pauses its
  own receiving for ``FOREIGN_PAUSE``, so the other mounts' waiting long polls get it first
  (otherwise the mount that happens to ask first could keep taking it from its owner).
- a job of ours already finished (a duplicate: SNS delivers at least once, and a job notifies
  both its topic and the vault's): deleted; no call.
- a job of ours still awaited: confirmed with one DescribeJob on our own record's vault; only
  Glacier's answer is acted on (download, ingest, select result), never the message. A
  message Glacier contradicts is deleted; a failed DescribeJob leaves the message for later.
  At most one DescribeJob per job per ``CONFIRM_SPACING``: a message arriving sooner after a
  "not done" answer is left in the queue and looked at again when it comes back (so a flood
  of forgeries costs few calls, and cannot hide the true notice that follows them).

Polling carries on beside it as the safety net (lost, late or never-sent messages, an
unreachable queue). Once a completion has arrived through the queue and while the queue
answers, the default polling intervals (by tier, not an explicit ``poll``) grow
``NOTIFIED_POLL_FACTOR`` times.

Runs on the trio thread; the queue calls run in a worker thread.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from glacierfs.aws import glacier
from glacierfs.aws.sqs import LONG_POLL, QueueClient, QueueError, QueueMessage

log = logging.getLogger(__name__)

FOREIGN_MAX_AGE = 3600.0     # a message no mount here knows is deleted after an hour
FOREIGN_RELEASE = 1          # seconds until a message left for others is visible again
FOREIGN_PAUSE = 5.0          # … while this mount waits this long before receiving again
NOTIFIED_POLL_FACTOR = 4.0   # default polling intervals while notifications flow
HEALTHY_FOR = 3 * LONG_POLL  # a queue answered within this long is "answering"
CONFIRM_SPACING = 5.0        # one DescribeJob per job per this long, whatever arrives
RETRY_FIRST, RETRY_MAX = 5.0, 300.0  # backoff while the queue cannot be reached
MAX_BODY = 256 * 1024        # SQS's own limit; anything larger is not from SQS
SEEN_MEMO = 4096             # foreign message ids remembered (logged once each)


@dataclass(frozen=True)
class Notice:
    """The fields of a completion notice the listener looks at (hints, not facts)."""
    job_id: str
    vault: str | None
    action: str | None
    status: str | None


def parse_notice(body: str) -> Notice | None:
    """A job description, raw or in SNS's envelope; None for anything else."""
    if not body or len(body) > MAX_BODY:
        return None
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("Type") == "Notification" and \
                isinstance(data.get("Message"), str):
            data = json.loads(data["Message"])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    job_id = data.get("JobId")
    if not isinstance(job_id, str) or not job_id or len(job_id) > 1024:
        return None
    arn = data.get("VaultARN")
    vault = arn.rsplit("vaults/", 1)[1] if isinstance(arn, str) and "vaults/" in arn else None
    action, status = data.get("Action"), data.get("StatusCode")
    return Notice(job_id=job_id, vault=vault,
                  action=action if isinstance(action, str) else None,
                  status=status if isinstance(status, str) else None)


class CompletionHandler(Protocol):
    """A part of the mount that waits for jobs (retrievals, inventories, selects)."""

    def notice_state(self, job_id: str) -> tuple[str, bool] | None:
        """(vault, still awaited) for a job it knows; None for one it does not."""

    async def job_completed(self, job: dict[str, Any]) -> None:
        """Act on a completed job's DescribeJob answer, as polling would."""


class CompletionListener:
    def __init__(self, queue: QueueClient, client: glacier.AsyncGlacier,
                 handlers: list[CompletionHandler], sns_topic: str | None = None) -> None:
        self.queue = queue
        self.client = client
        self.handlers = handlers
        self.sns_topic = sns_topic
        self.counts = {"received": 0, "acted": 0, "duplicate": 0, "foreign": 0,
                       "unreadable": 0, "contradicted": 0, "deferred": 0}
        self.last_message: float | None = None     # when the last message arrived
        self.last_completion: float | None = None  # when the last one was acted on
        self.last_answer: float | None = None      # when the queue last answered
        self.error: str | None = None
        self._confirmed: dict[str, float] = {}     # job id → when DescribeJob said not done
        self._seen: dict[str, None] = {}
        self.started = False

    # --- what the rest of the mount asks ------------------------------------------------
    def answering(self) -> bool:
        return self.last_answer is not None and time.time() - self.last_answer < HEALTHY_FOR

    def poll_stretch(self) -> float:
        """How many times longer default polling intervals are now: notifications proved to
        flow (a completion arrived through the queue) and the queue answers."""
        return NOTIFIED_POLL_FACTOR if self.last_completion and self.answering() else 1.0

    def status(self) -> dict[str, Any]:
        return {"sns_topic": self.sns_topic, "queue_url": self.queue.queue_url,
                "listening": self.started and self.answering(), "error": self.error,
                "last_message": self.last_message, "last_completion": self.last_completion,
                "poll_stretch": self.poll_stretch(), **self.counts}

    # --- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        """Long-poll the queue for ever; returns only when cancelled."""
        self.started = True
        backoff = RETRY_FIRST
        while True:
            try:
                messages = await trio.to_thread.run_sync(self.queue.receive,
                                                         abandon_on_cancel=True)
            except QueueError as exc:
                if self.error is None:
                    log.warning("SQS queue %s: %s; polling carries on, retrying",
                                self.queue.queue_url, exc)
                self.error = str(exc)
                await trio.sleep(backoff)
                backoff = min(RETRY_MAX, backoff * 2)
                continue
            if self.error is not None:
                log.info("SQS queue %s answers again", self.queue.queue_url)
            self.error, backoff = None, RETRY_FIRST
            self.last_answer = time.time()
            left_for_others = False
            for message in messages:
                try:
                    left_for_others |= await self.handle(message) == "left"
                except Exception:  # a bug costs this message, never the listener
                    log.exception("completion notice %s: internal error", message.message_id)
            if left_for_others:
                await trio.sleep(FOREIGN_PAUSE)

    async def handle(self, message: QueueMessage) -> str:
        """Deal with one message; returns what became of it: a key of ``counts``, "left" (a
        foreign one left for others), "deferred" or "failed" (left for later)."""
        self.counts["received"] += 1
        self.last_message = time.time()
        log.debug("SQS message %s (received %d times)", message.message_id,
                  message.receive_count)
        notice = parse_notice(message.body)
        if notice is None:
            log.info("SQS message %s is not a Glacier job notification; deleted",
                     message.message_id)
            return await self._done(message, "unreadable")
        owners = [(h, state) for h in self.handlers
                  if (state := h.notice_state(notice.job_id)) is not None]
        if not owners:
            return await self._foreign(message, notice)
        waiting = [h for h, (_, awaited) in owners if awaited]
        if not waiting:
            return await self._done(message, "duplicate")
        vault = next(state[0] for h, state in owners if state[1])
        asked = self._confirmed.get(notice.job_id)
        if asked is not None and time.time() - asked < CONFIRM_SPACING:
            self.counts["deferred"] += 1   # Glacier just said "not done": ask again later
            return "deferred"
        try:
            job = await self.client.describe_job(vault, notice.job_id)
        except glacier.NotFound:
            log.info("notice for job %s: Glacier does not know it; polling will tell",
                     notice.job_id[:16])
            return await self._done(message, "contradicted")
        except glacier.GlacierError as exc:
            log.info("notice for job %s not confirmed (%s); left in the queue, polling "
                     "carries on", notice.job_id[:16], exc)
            return "failed"
        if not job.get("Completed") or job.get("StatusCode") not in ("Succeeded", "Failed"):
            self._confirmed[notice.job_id] = time.time()
            log.info("notice for job %s: Glacier says it is %s; ignored", notice.job_id[:16],
                     job.get("StatusCode"))
            return await self._done(message, "contradicted")
        self._confirmed.pop(notice.job_id, None)
        log.info("job %s completed (%s), notified through SQS", notice.job_id[:16],
                 job.get("StatusCode"))
        for handler in waiting:
            await handler.job_completed(job)
        self.last_completion = time.time()
        return await self._done(message, "acted")

    async def _foreign(self, message: QueueMessage, notice: Notice) -> str:
        """Another mount's or tool's job: theirs to take, until it is too old to matter."""
        self.counts["foreign"] += 1
        age = time.time() - message.sent_at if message.sent_at else 0.0
        if age > FOREIGN_MAX_AGE:
            log.info("notice for job %s (vault %s) unclaimed for %.0f s; deleted",
                     notice.job_id[:16], notice.vault, age)
            await self._delete(message)
            return "foreign"
        if message.message_id not in self._seen:
            if len(self._seen) >= SEEN_MEMO:
                self._seen.clear()
            self._seen[message.message_id] = None
            log.info("notice for job %s (vault %s) is not for this mount; left for others",
                     notice.job_id[:16], notice.vault)
        try:
            await trio.to_thread.run_sync(self.queue.release, message.receipt_handle,
                                          FOREIGN_RELEASE, abandon_on_cancel=True)
        except QueueError as exc:  # it comes back after the queue's visibility timeout
            log.debug("could not release SQS message %s: %s", message.message_id, exc)
        return "left"

    async def _done(self, message: QueueMessage, kind: str) -> str:
        self.counts[kind] += 1
        await self._delete(message)
        return kind

    async def _delete(self, message: QueueMessage) -> None:
        try:
            await trio.to_thread.run_sync(self.queue.delete, message.receipt_handle,
                                          abandon_on_cancel=True)
        except QueueError as exc:  # it comes back after the visibility timeout: harmless
            log.info("could not delete SQS message %s: %s", message.message_id, exc)
