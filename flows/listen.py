"""The inbox listener: S3 event notifications, read from SQS, become
``flashgen.prompts.uploaded`` events, so the ``inbox`` deployment starts with no polling.

    S3 ObjectCreated under <prefix>/inbox/ → SQS queue → flashgen listen → Prefect event
    → the inbox deployment's trigger → a generate-images run on the file

One long-lived process (``flashgen listen``: systemd, a Kubernetes Deployment, anything
that restarts a process) long-polls the queue, so while nothing is uploaded it makes one
SQS request every 20 s and no flow run at all. ``flashgen provision`` makes the queue, its
policy and the bucket's notification.

Exactly once, precisely: a message is deleted only after its files' events are accepted
by the server (or were already). Each file version is announced through the same markers
as the listing sensor (``flashgen.flows.inbox``, ``InboxWatcher.announce``) with the same
event id (bucket, key, ETag), so:

- a listener killed between receive and delete leaves the message; SQS hands it out again
  once its visibility timeout passes, and the marker says "emitted": nothing is sent twice;
- a listener killed between its claim and the send leaves a "claimed" marker; the message
  comes back, is left alone while the claim is fresh, and once it is stale the event is
  sent again with the same id, which the server's triggers have already seen if the first
  send arrived (flows/inbox.py says more);
- the fallback sensor and the listener may run together: the markers make them agree.

A message that fails (the Prefect server is down) is not deleted and comes back after the
visibility timeout. Messages SQS gives up on go to the queue's dead-letter queue, when the
operator configures one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from prefect.client.orchestration import get_client
from prefect.events import Event

from flashgen.failpoints import failpoint
from flashgen.flows.events import send_event
from flashgen.flows.inbox import InboxFile, InboxWatcher, Outcome
from flashgen.storage import Store

log = logging.getLogger("flashgen.listen")
WAIT_SECONDS = 20  # SQS's longest long poll: one request per 20 s while idle


def files_in(body: str) -> Iterator[InboxFile]:
    """The created objects an S3 event notification names (none for ``s3:TestEvent``,
    which S3 sends when the notification is configured)."""
    message = json.loads(body)
    for record in message.get("Records") or []:
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record["s3"]
        obj = s3["object"]
        occurred = record.get("eventTime")
        yield InboxFile(
            bucket=s3["bucket"]["name"],
            s3_key=unquote_plus(obj["key"]),  # S3 URL-encodes keys in notifications
            etag=str(obj.get("eTag", "")).strip('"'),
            size=int(obj.get("size") or 0),
            last_modified=(datetime.fromisoformat(occurred.replace("Z", "+00:00"))
                           if occurred else datetime.now(UTC)))


class InboxListener:
    """Reads one queue, announces each new prompt file under the watcher's inbox.

    >>> listener = InboxListener(sqs, queue_url, watcher)   # a boto3 SQS client
    >>> await listener.run(stop)                            # until ``stop`` is set
    """

    def __init__(self, sqs: Any, queue_url: str, watcher: InboxWatcher, *,
                 wait_seconds: int = WAIT_SECONDS, visibility_timeout: int | None = None
                 ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.watcher = watcher
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        store = watcher.store
        self.inbox = store.layout.below(watcher.inbox)  # <prefix>/inbox/

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set. A stop lets the current long poll end (at most
        ``wait_seconds``) and its messages be handled: nothing is cut off half-announced."""
        log.info("listening on %s for prompt files under %s", self.queue_url,
                 self.watcher.store.uri(self.inbox))
        while not stop.is_set():
            try:
                await self.receive_once()
            except Exception as exc:  # SQS or the Prefect server unreachable: try again
                log.warning("receive from %s failed: %s; trying again in 5 s", self.queue_url,
                            exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5)
        log.info("stopped")

    async def receive_once(self) -> int:
        """One long poll; returns how many messages were handled and deleted."""
        params: dict[str, Any] = {"QueueUrl": self.queue_url, "MaxNumberOfMessages": 10,
                                  "WaitTimeSeconds": self.wait_seconds}
        if self.visibility_timeout is not None:
            params["VisibilityTimeout"] = self.visibility_timeout
        answer = await asyncio.to_thread(self.sqs.receive_message, **params)
        handled = 0
        for message in answer.get("Messages") or []:
            if await self._handle(message["Body"]):
                await asyncio.to_thread(self.sqs.delete_message, QueueUrl=self.queue_url,
                                        ReceiptHandle=message["ReceiptHandle"])
                handled += 1
        return handled

    async def _handle(self, body: str) -> bool:
        """Announce the message's files; False leaves the message for a later delivery."""
        try:
            files = list(files_in(body))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("dropping a message that is not an S3 event notification (%s): %.200s",
                        exc, body)
            return True
        done = True
        for file in files:
            if not (file.s3_key.startswith(self.inbox) and file.is_prompt_file
                    and file.bucket == self.watcher.store.bucket):
                log.info("ignored %s: not a prompt file under %s", file.uri,
                         self.watcher.store.uri(self.inbox))
                continue
            outcome = await self.watcher.announce(file)
            if outcome in (Outcome.EMITTED, Outcome.RECOVERED):
                failpoint("announced")  # sent, and the message not yet deleted
            elif outcome is Outcome.BUSY:  # another listener or sensor is sending it now
                done = False
            elif outcome is Outcome.SEEN:
                log.info("%s was already announced (event %s)", file.uri, file.event_id)
        return done


def queue_url(sqs: Any, queue: str) -> str:
    """``queue`` as a URL: a URL is taken as it is, a name is looked up."""
    if queue.startswith(("http://", "https://")):
        return queue
    return sqs.get_queue_url(QueueName=queue)["QueueUrl"]


async def listen(store: Store, sqs: Any, queue: str, stop: asyncio.Event, *,
                 wait_seconds: int = WAIT_SECONDS,
                 visibility_timeout: int | None = None) -> None:
    """Run a listener on ``queue`` (a name or URL) until ``stop`` is set; events go to the
    Prefect server PREFECT_API_URL names."""
    url = await asyncio.to_thread(queue_url, sqs, queue)
    async with get_client() as client:
        async def send(event: Event) -> None:
            await send_event(client, event)

        watcher = InboxWatcher(store, send, owner=f"listener/{socket.gethostname()}:"
                               f"{os.getpid()}", log=log)
        await InboxListener(sqs, url, watcher, wait_seconds=wait_seconds,
                            visibility_timeout=visibility_timeout).run(stop)
