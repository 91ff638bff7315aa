"""The four steps of one generation as Prefect tasks: submit, wait, fetch, store.

Each step is thin: the client and the store do the work, the task adds retries (transient
errors only) and records every outcome in the S3 ledger, so a retry, a rerun or a second
worker knows what has been paid for. ``claim`` decides, from the ledger, whether an item is
to be submitted, resumed from a known request_id, skipped, or left alone as ambiguous.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image
from prefect import get_run_logger, task
from prefect.runtime import task_run
from pydantic import BaseModel

from flashgen import timing
from flashgen.errors import (
    AmbiguousSubmissionError,
    FlashgenError,
    JobCancelledError,
    JobDeadlineError,
    JobError,
    StorageError,
)
from flashgen.models import CancelOutcome, JobState
from flashgen.records import ImageRecord, LedgerEntry, LedgerState, Timings
from flashgen.settings import get_settings
from flashgen.sources import Item
from tasks.policy import task_options
from tasks.runtime import Runtime


class Action(StrEnum):
    SUBMIT = "submit"  # we hold a fresh claim: send it
    RESUME = "resume"  # a request_id is known: poll it, never resend
    SKIP = "skip"  # already stored
    AMBIGUOUS = "ambiguous"  # maybe sent, answer lost: not resent unless asked


class Claim(BaseModel):
    action: Action
    request_id: str | None = None
    attempts: int = 0
    reason: str | None = None
    record_uri: str | None = None
    image_uris: list[str] = []


class Waited(BaseModel):
    request_id: str
    polls: int
    started_at: datetime | None = None
    completed_at: datetime


class Fetched(BaseModel):
    path: str
    content_type: str
    size: int
    sha256: str
    width: int | None = None
    height: int | None = None
    source_host: str | None = None


class Stored(BaseModel):
    image_uris: list[str]
    record_uris: list[str]


def _now() -> datetime:
    return datetime.now(UTC)


def _entry(rt: Runtime, item: Item, state: LedgerState, **fields) -> LedgerEntry:
    return LedgerEntry(key=item.key, model=item.model_id, inputs=item.inputs, state=state,
                       owner=rt.owner, **fields)


async def _write(rt: Runtime, entry: LedgerEntry, *, attempts: int = 5) -> None:
    """Write our own ledger entry, insisting: it may hold the only copy of a request_id."""
    for attempt in range(attempts):
        try:
            await asyncio.to_thread(rt.store.write_ledger, entry)
            return
        except StorageError:
            if attempt == attempts - 1:
                raise
            await timing.sleep(0.5 * 2**attempt)


@task(name="claim", task_run_name="claim-line-{item.line}", **task_options(timeout_seconds=600))
async def claim(rt: Runtime, item: Item) -> Claim:
    """Decide from the ledger what to do with ``item``, taking the claim if it is ours to send."""
    log = get_run_logger()
    while True:
        lease_until = time.time() + rt.settings.claim_ttl
        fresh = _entry(rt, item, LedgerState.CLAIMED, lease_until=lease_until)
        # Most items are new: try the conditional create first, read only if it exists.
        if await asyncio.to_thread(rt.store.claim, fresh):
            return Claim(action=Action.SUBMIT)
        found = await asyncio.to_thread(rt.store.read_ledger, item.key)
        if found is None:
            continue  # it vanished between our put and our read: try again
        entry, etag = found
        fresh.attempts = entry.attempts
        state = entry.state
        if state == LedgerState.SUBMITTED and entry.request_id:
            return Claim(action=Action.RESUME, request_id=entry.request_id, attempts=entry.attempts)
        if state == LedgerState.STORED and not rt.force:
            return Claim(action=Action.SKIP, request_id=entry.request_id, reason="already stored",
                         record_uri=entry.record_uri, image_uris=entry.image_uris)
        if state == LedgerState.CLAIMED and (entry.lease_until or 0) > time.time():
            await timing.sleep(0.5)  # its owner is sending it right now; see what comes of it
            continue
        if state == LedgerState.CLAIMED:
            # The owner died between claiming and recording an answer: it may have sent it.
            entry.state, entry.error = LedgerState.AMBIGUOUS, (
                f"claim by {entry.owner} expired without a request_id; the submit may have "
                "reached the API")
            if not await asyncio.to_thread(rt.store.replace_ledger, entry, etag):
                continue
            log.warning("item %s (line %s): %s", item.key, item.line, entry.error)
            found = await asyncio.to_thread(rt.store.read_ledger, item.key)
            if found is None:
                continue
            entry, etag = found
            state = entry.state
        if state == LedgerState.AMBIGUOUS and not rt.resubmit_ambiguous:
            return Claim(action=Action.AMBIGUOUS, attempts=entry.attempts,
                         reason=f"ambiguous submission, not resent: {entry.error}")
        # STORED with force, FAILED (nothing paid came of it), or AMBIGUOUS on request:
        if await asyncio.to_thread(rt.store.replace_ledger, fresh, etag):
            if state != LedgerState.FAILED:
                log.info("item %s (line %s): resubmitting a %s item as asked", item.key,
                         item.line, state)
            return Claim(action=Action.SUBMIT, attempts=entry.attempts)


# A submit cut off by its timeout stays claimed without a request_id: it turns ambiguous,
# never resent, exactly like a crash in the same place.
@task(name="submit", task_run_name="submit-line-{item.line}",
      **task_options(timeout_seconds=get_settings().claim_ttl))
async def submit(rt: Runtime, item: Item, attempts: int) -> str:
    """Send the job and record its request_id before anything else happens.

    A failure known not to have reached the API leaves our claim in place for the task's
    retry (its lease renewed first); one that may have reached it is recorded as ambiguous.
    """
    log = get_run_logger()
    if task_run.get_run_count() > 1:
        await _renew_claim(rt, item)
    try:
        handle = await rt.client.submit(item.model_id, item.inputs)
    except AmbiguousSubmissionError as exc:
        await _write(rt, _entry(rt, item, LedgerState.AMBIGUOUS, attempts=attempts + 1,
                                error=str(exc)))
        raise
    except FlashgenError as exc:
        if not exc.transient:  # refused (token, input, account): nothing was paid
            await _write(rt, _entry(rt, item, LedgerState.FAILED, attempts=attempts,
                                    error=str(exc)))
        raise
    await _write(rt, _entry(rt, item, LedgerState.SUBMITTED, request_id=handle.request_id,
                            attempts=attempts + 1))
    log.info("submitted line %s as %s", item.line, handle.request_id)
    return handle.request_id


async def _renew_claim(rt: Runtime, item: Item) -> None:
    """Before a retried submit: the claim must still be ours, with a fresh lease."""
    found = await asyncio.to_thread(rt.store.read_ledger, item.key)
    if found is not None and found[0].owner == rt.owner and found[0].state == LedgerState.CLAIMED:
        entry, etag = found
        entry.lease_until = time.time() + rt.settings.claim_ttl
        if await asyncio.to_thread(rt.store.replace_ledger, entry, etag):
            return
    raise StorageError(f"claim on {item.key} was lost before the submit could be retried; "
                       "not sending it")


async def release_claim(rt: Runtime, item: Item, reason: str) -> None:
    """Mark an unsent claim of ours failed, so a later run may submit the item."""
    found = await asyncio.to_thread(rt.store.read_ledger, item.key)
    if found is not None and found[0].owner == rt.owner and found[0].state == LedgerState.CLAIMED:
        entry, etag = found
        entry.state, entry.error = LedgerState.FAILED, reason
        await asyncio.to_thread(rt.store.replace_ledger, entry, etag)


# A backstop only: the wait itself stops at the job deadline and cancels what is queued.
@task(name="wait-until-complete", task_run_name="wait-line-{item.line}",
      **task_options(timeout_seconds=get_settings().job_deadline + 300))
async def wait(rt: Runtime, item: Item, request_id: str) -> Waited:
    """Poll until the job is terminal. At the deadline a queued job is cancelled at the API."""
    polls = 0
    started_at: datetime | None = None

    def seen(status) -> None:
        nonlocal polls, started_at
        polls += 1
        if started_at is None and status.state == JobState.RUNNING:
            started_at = _now()

    try:
        await rt.client.wait(request_id, timeout=rt.deadline, on_status=seen)
    except JobDeadlineError:
        outcome = await rt.client.cancel(request_id)
        if outcome == CancelOutcome.CANCELLED:
            await _fail(rt, item, request_id, f"still queued after {rt.deadline:.0f}s: cancelled")
            raise JobCancelledError(f"still queued after {rt.deadline:.0f}s: cancelled at the API",
                                    request_id=request_id) from None
        # Running (or just finished): the ledger keeps the request_id, a rerun resumes it.
        raise
    except JobError as exc:
        await _fail(rt, item, request_id, str(exc))
        raise
    return Waited(request_id=request_id, polls=polls, started_at=started_at,
                  completed_at=_now())


async def _fail(rt: Runtime, item: Item, request_id: str, reason: str) -> None:
    await _write(rt, _entry(rt, item, LedgerState.FAILED, request_id=request_id, error=reason))


@task(name="fetch", task_run_name="fetch-{request_id}", **task_options(timeout_seconds=900))
async def fetch(rt: Runtime, request_id: str) -> list[Fetched]:
    """Download every output (no token sent) into the run's spool folder."""
    downloads = await rt.client.fetch_outputs(request_id)
    fetched = []
    for index, download in enumerate(downloads):
        path = Path(rt.spool) / f"{request_id}-{index}"
        await asyncio.to_thread(path.write_bytes, download.content)
        width = height = None
        if download.content_type.startswith("image/"):
            with Image.open(io.BytesIO(download.content)) as image:
                width, height = image.size
        fetched.append(Fetched(
            path=str(path), content_type=download.content_type, size=len(download.content),
            sha256=hashlib.sha256(download.content).hexdigest(), width=width, height=height,
            source_host=urlsplit(download.uri).hostname))
    return fetched


@task(name="store", task_run_name="store-line-{item.line}", **task_options(timeout_seconds=900))
async def store(rt: Runtime, item: Item, request_id: str, files: list[Fetched],
                timings: Timings, polls: int, attempts: int) -> Stored:
    """Put each file and its metadata record in S3, then mark the ledger stored."""
    when = _now()
    image_uris, record_uris = [], []
    for index, file in enumerate(files):
        data = await asyncio.to_thread(Path(file.path).read_bytes)
        obj = await asyncio.to_thread(rt.store.put_image, item.key, data, file.content_type,
                                      when=when, index=index)
        if obj.sha256 != file.sha256:
            raise StorageError(f"checksum changed between fetch and store for {obj.uri}",
                               request_id=request_id)
        record = ImageRecord(
            key=item.key, model=item.model_id, inputs=item.inputs, request_id=request_id,
            image_uri=obj.uri, content_type=file.content_type, size=obj.size, sha256=obj.sha256,
            width=file.width, height=file.height, output_index=index,
            source_host=file.source_host, timings=timings.model_copy(update={"stored_at": _now()}),
            polls=polls, attempts=attempts, batch_id=rt.batch_id, flow_run_id=rt.flow_run_id,
            deployment=rt.deployment)
        record_uris.append(await asyncio.to_thread(rt.store.put_record, record, when=when))
        image_uris.append(obj.uri)
    await _write(rt, _entry(rt, item, LedgerState.STORED, request_id=request_id,
                            attempts=attempts, record_uri=record_uris[0] if record_uris else None,
                            image_uris=image_uris))
    for file in files:
        Path(file.path).unlink(missing_ok=True)
    return Stored(image_uris=image_uris, record_uris=record_uris)
