"""The inbox sensor: one ``flashgen.prompts.uploaded`` event per prompt file that lands.

Other systems drop prompt files (CSV, JSONL, JSON, YAML) anywhere under
``<prefix>/inbox/``, and the ``inbox`` deployment's trigger starts generate-images on each
file's ``s3://`` URI. By default ``flashgen listen`` (flashgen.flows.listen) hears of
uploads from S3's notifications; this listing sensor is the fallback for stores without
them: every pass of ``watch_inbox`` (deployment ``inbox-sensor``, each minute once its
schedule is turned on) announces the new files. Both announce through ``announce`` and
the markers below, so they agree on what was sent.

State, under the same prefix::

    state/inbox/seen/<event id>.json   one marker per file version: claimed → emitted
    state/inbox/cursor.json            a hint that keeps passes cheap; markers are the truth

Exactly once, precisely:

- A file version is its bucket, key and ETag. Its event id is a UUIDv5 of those, so every
  sensor that announces it sends the same id; a re-upload with new content has a new ETag
  and is a new file.
- A sensor claims a file by creating its marker with ``If-None-Match: *`` (one sensor
  wins), sends the event and waits for the server to accept it, then marks it emitted.
- A sensor that dies between claim and mark leaves a "claimed" marker. A later pass of any
  sensor that finds it older than ``claim_ttl`` sends the event again, with the same id and
  body, and marks it. Prefect's server stores an event id once and its triggers skip ids
  they saw in the last 30 minutes, so the triggered run starts once. Only a claim recovered
  more than 30 minutes after the crash, whose first send did reach the server, starts a
  second run; that run finds every item already stored (same fingerprints) and pays nothing.
- The cursor holds the newest LastModified seen and the files handled since
  ``high_water - lookback``. A pass considers only files modified after that floor (slow
  uploads, late listings) that it has not handled, so a quiet pass is a LIST and a read
  of the cursor. Two sensors may overwrite each other's cursor: that costs a few extra
  marker checks, never an event. The LIST still walks the whole inbox, so expire old
  inbox files with a lifecycle rule (infra/PRODUCTION.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.events import Event
from prefect.runtime import flow_run as runtime_flow_run

from flashgen.sources import FORMATS
from flashgen.settings import get_settings
from flashgen.storage import ListedObject, Store
from flashgen.flows.events import PROMPTS_UPLOADED, send_event

# Event ids are uuid5(EVENT_NAMESPACE, "<bucket>/<key>#<etag>"): stable across sensors.
EVENT_NAMESPACE = uuid.UUID("6f1b8a52-3c1e-4f0e-9a57-0b7f3d1e5a21")
DEFAULT_LOOKBACK = timedelta(hours=1)
DEFAULT_CLAIM_TTL = timedelta(minutes=2)

Sender = Callable[[Event], Awaitable[None]]


class Outcome(StrEnum):
    EMITTED = "emitted"  # this pass claimed the file and announced it
    RECOVERED = "recovered"  # a stale claim (a sensor died mid-way) announced again
    SEEN = "seen"  # already announced by an earlier pass or another sensor
    BUSY = "busy"  # another sensor holds a fresh claim; checked again next pass
    IGNORED = "ignored"  # not a prompt file


@dataclass(frozen=True)
class InboxFile:
    """One version of one object under the inbox."""

    bucket: str
    s3_key: str
    etag: str  # without the quotes S3 puts around it
    size: int
    last_modified: datetime

    @classmethod
    def listed(cls, bucket: str, obj: ListedObject) -> InboxFile:
        return cls(bucket, obj.s3_key, obj.etag.strip('"'), obj.size, obj.last_modified)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.s3_key}"

    @property
    def event_id(self) -> uuid.UUID:
        return uuid.uuid5(EVENT_NAMESPACE, f"{self.bucket}/{self.s3_key}#{self.etag}")

    @property
    def is_prompt_file(self) -> bool:
        suffix = PurePosixPath(self.s3_key).suffix.lower()
        return not self.s3_key.endswith("/") and suffix in FORMATS

    @property
    def batch_id(self) -> str:
        """``inbox-<file stem>-<etag head>``: names the triggered batch and its manifest."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", PurePosixPath(self.s3_key).stem).strip("-._")
        return f"inbox-{stem[:60] or 'file'}-{re.sub(r'[^0-9a-f]', '', self.etag)[:12]}"

    def event(self, occurred: datetime) -> Event:
        return Event(
            id=self.event_id,
            occurred=occurred,
            event=PROMPTS_UPLOADED,
            resource={"prefect.resource.id": f"flashgen.inbox.{self.bucket}/{self.s3_key}",
                      "prefect.resource.name": PurePosixPath(self.s3_key).name},
            payload={"uri": self.uri, "bucket": self.bucket, "key": self.s3_key,
                     "etag": self.etag, "size": self.size, "batch_id": self.batch_id,
                     "last_modified": self.last_modified.isoformat()},
        )


@dataclass
class PassReport:
    """What one pass found: the URIs of the files it considered, by outcome."""

    listed: int = 0
    known: int = 0  # handled by an earlier pass, or older than the lookback window
    files: dict[Outcome, list[str]] = field(default_factory=lambda: {o: [] for o in Outcome})

    def add(self, outcome: Outcome, uri: str) -> None:
        self.files[outcome].append(uri)

    def counts(self) -> dict[str, int]:
        return {"listed": self.listed, "known": self.known,
                **{o.value: len(v) for o, v in self.files.items()}}


class InboxWatcher:
    """One sensor over ``<prefix>/<inbox>`` of a Store; ``poll()`` is one pass.

    >>> watcher = InboxWatcher(store, send)          # send(event) must await the server
    >>> report = await watcher.poll()
    >>> report.files[Outcome.EMITTED]
    ['s3://bucket/flashgen/inbox/campaign.csv']
    """

    def __init__(
        self,
        store: Store,
        send: Sender,
        *,
        inbox: str = "inbox/",
        lookback: timedelta = DEFAULT_LOOKBACK,
        claim_ttl: timedelta = DEFAULT_CLAIM_TTL,
        owner: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        log: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.store = store
        self.send = send
        self.inbox = inbox.strip("/") + "/"
        self.lookback = lookback
        self.claim_ttl = claim_ttl
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self.log = log or logging.getLogger(__name__)
        self.cursor_key = store.layout.path("state", "inbox", "cursor.json")

    def marker_key(self, file: InboxFile) -> str:
        return self.store.layout.path("state", "inbox", "seen", f"{file.event_id}.json")

    async def poll(self) -> PassReport:
        """List the inbox, announce each new prompt file once, save the cursor.

        An error while announcing a file ends the pass (the cursor is not saved); its claim
        is picked up by a later pass once ``claim_ttl`` has passed.
        """
        high_water, handled = await asyncio.to_thread(self._read_cursor)
        floor = high_water - self.lookback if high_water else None
        listed = await asyncio.to_thread(
            lambda: [InboxFile.listed(self.store.bucket, o)
                     for o in self.store.list_keys(self.inbox)])
        report = PassReport(listed=len(listed))
        was = (high_water, dict(handled))
        for file in listed:
            if floor is not None and file.last_modified < floor:
                report.known += 1
                continue
            high_water = max(high_water or file.last_modified, file.last_modified)
            if str(file.event_id) in handled:
                report.known += 1
                continue
            outcome = (await self.announce(file) if file.is_prompt_file
                       else Outcome.IGNORED)
            report.add(outcome, file.uri)
            if outcome is not Outcome.BUSY:
                handled[str(file.event_id)] = file.last_modified
        if high_water is not None:
            floor = high_water - self.lookback
            handled = {k: v for k, v in handled.items() if v >= floor}
            if (high_water, handled) != was:
                await asyncio.to_thread(self._write_cursor, high_water, handled)
        self._log_pass(report)
        return report

    async def announce(self, file: InboxFile) -> Outcome:
        """Send ``file``'s event unless a marker says it was sent or is being sent
        (the sensor's passes and the listener, flashgen.flows.listen, share the markers)."""
        now = self.clock()
        marker = {"state": "claimed", "uri": file.uri, "etag": file.etag,
                  "event_id": str(file.event_id), "claimed_by": self.owner,
                  "claimed_at": now.isoformat()}
        key = self.marker_key(file)
        if await asyncio.to_thread(self.store.put_json, key, marker, if_none_match=True):
            await self._send_and_mark(file, marker, now)
            self.log.info("new prompt file %s (%d bytes, etag %s): sent %s, event %s",
                          file.uri, file.size, file.etag, PROMPTS_UPLOADED, file.event_id)
            return Outcome.EMITTED
        found = await asyncio.to_thread(self.store.read_json, key)
        if found.get("state") == "emitted":
            return Outcome.SEEN
        claimed_at = datetime.fromisoformat(found["claimed_at"])
        if now - claimed_at < self.claim_ttl:
            self.log.info("%s is being announced by %s (claimed %s); checking again next pass",
                          file.uri, found.get("claimed_by"), found["claimed_at"])
            return Outcome.BUSY
        self.log.warning("%s was claimed by %s at %s but never marked sent; sending its event "
                         "%s again (the server drops it if the first send arrived)",
                         file.uri, found.get("claimed_by"), found["claimed_at"], file.event_id)
        await self._send_and_mark(file, found, claimed_at)
        return Outcome.RECOVERED

    async def _send_and_mark(self, file: InboxFile, marker: dict[str, Any],
                             occurred: datetime) -> None:
        # The same id and occurred time on every send, so a repeat is the same event.
        await self.send(file.event(occurred))
        done = {**marker, "state": "emitted", "emitted_by": self.owner,
                "emitted_at": self.clock().isoformat()}
        await asyncio.to_thread(self.store.put_json, self.marker_key(file), done)

    def _read_cursor(self) -> tuple[datetime | None, dict[str, datetime]]:
        """``(high_water, handled)``: the newest LastModified seen, and the event ids
        handled since ``high_water - lookback`` with their files' LastModified."""
        if not self.store.exists(self.cursor_key):
            return None, {}
        raw = self.store.read_json(self.cursor_key)
        return (datetime.fromisoformat(raw["high_water"]),
                {k: datetime.fromisoformat(v) for k, v in raw["handled"].items()})

    def _write_cursor(self, high_water: datetime, handled: dict[str, datetime]) -> None:
        self.store.put_json(self.cursor_key, {
            "high_water": high_water.isoformat(),
            "handled": {k: v.isoformat() for k, v in sorted(handled.items())},
            "written_by": self.owner, "written_at": self.clock().isoformat()})

    def _log_pass(self, report: PassReport) -> None:
        where = self.store.uri(self.store.layout.below(self.inbox))
        counts = report.counts()
        self.log.info("inbox %s: %d object(s) listed, %d known from earlier passes; %d new, "
                      "%d recovered, %d sent by another sensor, %d held by another sensor, "
                      "%d not prompt files", where, counts["listed"], counts["known"],
                      counts["emitted"], counts["recovered"], counts["seen"], counts["busy"],
                      counts["ignored"])
        for uri in report.files[Outcome.IGNORED]:
            self.log.info("ignored %s: not a prompt file (%s)", uri, ", ".join(sorted(FORMATS)))


@flow(name="watch-inbox")
async def watch_inbox(
    bucket: str | None = None,
    prefix: str | None = None,
    inbox: str = "inbox/",
    lookback_seconds: float = DEFAULT_LOOKBACK.total_seconds(),
    claim_ttl_seconds: float = DEFAULT_CLAIM_TTL.total_seconds(),
) -> dict[str, int]:
    """One pass of the inbox sensor: a ``flashgen.prompts.uploaded`` event per new file.

    Args:
        bucket, prefix: where in S3 (default FLASHGEN_BUCKET / FLASHGEN_PREFIX); the inbox
            is ``<prefix>/<inbox>``.
        lookback_seconds: how far before the newest file seen a pass still looks for files
            (uploads that took long, listings that lag).
        claim_ttl_seconds: after this long a file claimed but not marked sent (its sensor
            died) is sent again by the next pass.
    """
    store = Store.from_settings(get_settings(), bucket=bucket, prefix=prefix)
    owner = f"flow-run/{runtime_flow_run.get_id() or 'local'}@{socket.gethostname()}"
    async with get_client() as client:
        async def send(event: Event) -> None:
            await send_event(client, event)

        watcher = InboxWatcher(store, send, inbox=inbox,
                               lookback=timedelta(seconds=lookback_seconds),
                               claim_ttl=timedelta(seconds=claim_ttl_seconds),
                               owner=owner, log=get_run_logger())
        report = await watcher.poll()
    return report.counts()
