"""The steps of one generation as Prefect tasks: submit, wait until complete, fetch and store.

Each task is thin: ``flashgen.ledger`` decides what may be paid for, the client talks to
the API, the store writes S3; the task adds Prefect's retries (transient errors only, see
``flashgen.tasks.policy``) and a run name that says which line it works on. ``Steps.for_settings``
binds the run's settings (timeouts, retry delay) to the tasks once per flow run. The tasks
are async and awaited directly (no task runner threads), persist no results and cache
nothing; what they return is small, never image bytes.

How many task runs an image gets, decided by measurement (``python -m bench``, the 2-core
machine, the Prefect server on PostgreSQL, CPU seconds of the flow's process and of the
server with its database, ``single``: 1,000 images, concurrency 16, 2 s jobs, beside the
plain asyncio script of bench/baseline.py in the same invocation):

- **Before:** four task runs per image (submit, wait, fetch, store) on a server with
  Prefect's default settings cost 68.5 ms of flow CPU and 190 ms of server CPU per image,
  18.4× the script's 14.0 ms; and the server recorded 3,871 of the 4,000 task runs it
  was sent (its task-run recorder writes one transaction per event, keeps up with about
  17 task runs/s, and its in-memory queue drops what is past 10,000 messages).
- **Where it went:** a task run costs the server about 31 ms of CPU by default (10 with
  the recorder batched, ``taskruns``) and the flow 3.4–5 ms; in flashgen's flow, with
  Prefect's walk over the task's parameters and its links to their results, about 8 ms
  per task run in a py-spy profile, more than half the flow's CPU. Four per image cannot fit in 3×
  a 14 ms script whatever the server does: even a lean server's 7 ms per task run is 28 ms.
- **Chosen:** (1) fetch and store are one task (``fetch_and_store``): one task run less
  per item, and the bytes go to S3 from memory instead of through a spool file; (2) a batch
  with at least ``FLASHGEN_TASK_GROUP_FROM`` (100) items to send runs them
  ``FLASHGEN_TASK_GROUP_SIZE`` (16) to a ``generate-group`` task run (lines first to last,
  Failed naming its failed items if any): inside it each item runs the same step
  functions, each with its task's own retries, delays and timeout (``Steps.call``), so a
  retry is still per item and per step, and the ledger still makes it safe; (3) the
  server's task-run recorder and event persister write in batches
  (``flashgen.infra.prefect_server.SERVER_SETTINGS``; infra/PRODUCTION.md says what an
  operator gains and loses). A smaller batch keeps a task run per step of every item in
  the UI (three per image): there it costs well under a second of CPU a batch.
- **After** (the same invocation style): first 43.0 ms flow + 11.4 ms server = 54.4 ms
  per image on a machine shared with other work, 3.9× the script's 13.8 ms, down from
  18.4×; 63 task runs for 1,000 images, every one recorded. What was left was
  flashgen's own work, not Prefect's, and cutting it (a still PNG proved without
  Pillow's decode, the plan's ledger census from a listing, one companion-limit read per
  view refresh for a run alone at its cap, an item's S3 writes in one thread hop) gave,
  on a quiet machine, 19.9 ms flow + 5.5 ms server = 25.4 ms, 2.73× the script's 9.28 ms
  in the same invocation (README, "Tests and benchmarks", has each step's figures). The
  rest is mostly the safety the script does without: five S3 calls per image where it makes one
  (the ledger's claim, request_id and stored marks, the image, its record), the PNG
  proof, and the server's idle background (Prefect's docket scheduler) over the run.
  ``taskruns`` (no-op task runs, batched recorder): 1,000 at 55/s all recorded (5.0 ms
  flow, 10.1 ms server each); 10,000 at 100/s, 5,131 recorded: the in-memory broker's
  10,000-message queue still overflows when task runs come faster than the recorder
  writes them, which flashgen's one task run per 16 items never does; for bursts from
  other flows, the Redis broker (infra/PRODUCTION.md).
- **Not chosen:** the Redis broker (no 10,000-message cap, but more server CPU on one
  machine than the in-memory broker; what several API replicas need); the event persister
  off (empties the UI's event feed for about a tenth of the server's CPU); task-run loggers
  at WARNING (with one task run per 16 items there is nearly nothing left to save, and it
  would hide INFO logs written inside tasks).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.states import Failed, State
from prefect.utilities.collections import visit_collection
from pydantic import BaseModel

from flashgen import timing
from flashgen.client import Download
from flashgen.decode import verify_output
from flashgen.failpoints import failpoint
from flashgen.errors import (
    AccountError,
    AmbiguousSubmissionError,
    FlashgenError,
    JobCancelledError,
    JobDeadlineError,
    JobError,
    JobLostError,
    NotFoundError,
    StorageError,
)
from flashgen.ledger import WAIT_FOR_SENDER, Action, ItemRef
from flashgen.models import CancelOutcome, JobState
from flashgen.records import ImageRecord, Timings
from flashgen.settings import Settings
from flashgen.sources import Item
from flashgen.tasks.context import BatchContext
from flashgen.tasks.policy import retried, task_options


class Submission(BaseModel):
    """What the submit step settled: a request_id to follow, or why there is none."""

    action: Action  # SEND (sent now), RESUME, SKIP or AMBIGUOUS
    request_id: str | None = None
    attempts: int = 0  # submits ever sent for this item
    reason: str | None = None
    record_uri: str | None = None  # SKIP: what is already stored
    image_uris: list[str] = []
    submitted_at: datetime | None = None


class JobFinished(BaseModel):
    polls: int
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # Why the job was not waited for: the batch stopped while it was queued (cancelled at
    # the API) or still running after its grace (its request_id stays in the ledger).
    stopped: str | None = None


class StoredFiles(BaseModel):
    image_uris: list[str]
    record_uris: list[str]
    records: list[ImageRecord]  # what was written, for the batch's gallery and catalog


def _now() -> datetime:
    return datetime.now(UTC)


def item_ref(ctx: BatchContext, item: Item) -> ItemRef:
    return ItemRef(fingerprint=item.fingerprint, model=item.model_id, inputs=item.inputs,
                   batch_id=ctx.batch_id)


@task(name="submit", task_run_name="submit-line-{item.line}", **task_options())
async def submit(ctx: BatchContext, item: Item) -> Submission:
    """Ask the ledger, and send the job only if it says so; record its request_id at once."""
    ref = item_ref(ctx, item)
    ledger = ctx.ledger
    failpoint("claim")
    while True:
        decision = await asyncio.to_thread(ledger.decide, ref, force=ctx.force,
                                           resubmit_ambiguous=ctx.resubmit_ambiguous)
        if decision.action != Action.WAIT:
            break
        await timing.sleep(WAIT_FOR_SENDER)  # another run is sending it: see what comes
    if decision.action != Action.SEND:
        entry = decision.entry
        return Submission(action=decision.action, request_id=decision.request_id,
                          attempts=decision.attempts, reason=decision.reason,
                          record_uri=entry.record_uri if entry else None,
                          image_uris=entry.image_uris if entry else [])
    before = decision.attempts
    try:
        ctx.budget.spend()
    except FlashgenError as exc:
        await asyncio.to_thread(ledger.record_unsent, ref, str(exc), before)
        raise
    submitted_at = _now()
    try:
        handle = await ctx.client.submit(item.model_id, item.inputs)
    except AmbiguousSubmissionError as exc:
        await asyncio.to_thread(ledger.record_ambiguous, ref, str(exc), before + 1)
        raise
    except FlashgenError as exc:  # refused, or never delivered: no job exists
        ctx.budget.refund()
        if isinstance(exc, AccountError):  # an empty account refuses every submit after it
            ctx.budget.halt(str(exc))
        await asyncio.to_thread(ledger.record_unsent, ref, str(exc), before)
        raise
    # Anything else (a cancel, a timeout mid-POST) leaves 'sending' for its lease to settle.
    failpoint("sending")
    try:
        await asyncio.to_thread(ledger.record_submitted, ref, handle.request_id, before + 1)
    except StorageError:
        # The run's log is the last durable place: the journal (or this process) has it
        # for the retry, but an operator must be able to find it whatever happens next.
        get_run_logger().error(
            "line %s: paid job %s is not in the ledger yet (S3 failed); a retry or rerun "
            "adopts it from the journal, or: flashgen ledger resolve %s --request-id %s",
            item.line, handle.request_id, item.fingerprint, handle.request_id)
        raise
    failpoint("submitted")
    return Submission(action=Action.SEND, request_id=handle.request_id, attempts=before + 1,
                      submitted_at=submitted_at)


@task(name="wait-until-complete", task_run_name="wait-line-{item.line}", **task_options())
async def wait(ctx: BatchContext, item: Item, request_id: str, attempts: int) -> JobFinished:
    """Poll until the job is terminal. At the deadline a queued job is cancelled at the API;
    so is it when the batch stops (``flashgen.stopping``), and a running one gets its grace."""
    polls = 0
    started_at: datetime | None = None
    deadline = ctx.settings.job_deadline

    def seen(status: Any) -> None:
        nonlocal polls, started_at
        polls += 1
        failpoint("waiting")
        if started_at is None and status.state == JobState.RUNNING:
            started_at = _now()

    ref = item_ref(ctx, item)
    try:
        finished, _ = await ctx.stop.first(
            ctx.client.wait(request_id, timeout=deadline, on_status=seen))
        if not finished:
            stopped = await _stop_job(ctx, ref, request_id, attempts, seen)
            if stopped:
                return JobFinished(polls=polls, started_at=started_at, stopped=stopped)
    except JobDeadlineError:
        if await ctx.client.cancel(request_id) == CancelOutcome.CANCELLED:
            reason = f"still queued after {deadline:.0f}s: cancelled at the API"
            await asyncio.to_thread(ctx.ledger.record_failed, ref, request_id, reason, attempts)
            raise JobCancelledError(reason, request_id=request_id) from None
        raise  # running (or just finished): the ledger keeps the request_id for a rerun
    except JobError as exc:
        await asyncio.to_thread(ctx.ledger.record_failed, ref, request_id, str(exc), attempts)
        raise
    except NotFoundError as exc:
        await _lost(ctx, item, request_id, exc, attempts)
    return JobFinished(polls=polls, started_at=started_at, completed_at=_now())


async def _stop_job(ctx: BatchContext, ref: ItemRef, request_id: str, attempts: int,
                    seen: Any) -> str | None:
    """The batch is stopping: cancel the job if it is queued, else wait out the grace.

    Returns why the job is not waited for, or None when it finished in time (then it is
    fetched and stored as usual). A JobError (it failed) propagates.
    """
    if await ctx.client.cancel(request_id) == CancelOutcome.CANCELLED:
        reason = f"batch cancelled ({ctx.stop.reason}) while the job was queued: cancelled " \
                 "at the API, nothing paid"
        await asyncio.to_thread(ctx.ledger.record_failed, ref, request_id, reason, attempts)
        return reason
    try:  # running, or already finished: it is paid for, so give it its grace
        await ctx.client.wait(request_id, timeout=max(ctx.stop.grace_left(), 0.01),
                              on_status=seen)
    except JobDeadlineError:
        return (f"batch cancelled ({ctx.stop.reason}); the job was still running after "
                f"{ctx.stop.grace:.0f}s: its request_id {request_id} stays in the ledger, "
                "so a rerun (`flashgen resume`) fetches it without paying again")
    return None


async def _lost(ctx: BatchContext, item: Item, request_id: str, exc: NotFoundError,
                attempts: int | None) -> NoReturn:
    """The API answers 404 for a request_id it gave (its job expired, or the id was typed by
    hand): record it ``lost`` with why, so it is no longer polled forever (flashgen.ledger)."""
    if attempts is None:
        entry = await asyncio.to_thread(ctx.store.read_ledger, item.fingerprint)
        attempts = entry[0].attempts if entry else 1
    reason = (f"the API does not know request_id {request_id} ({exc.message}): its job "
              "expired or the id is wrong")
    await asyncio.to_thread(ctx.ledger.record_lost, item_ref(ctx, item), request_id, reason,
                            attempts)
    raise JobLostError(f"lost: {reason}", request_id=request_id) from None


@task(name="fetch-and-store", task_run_name="fetch-line-{item.line}", **task_options())
async def fetch_and_store(ctx: BatchContext, item: Item, request_id: str, timings: Timings,
                          polls: int, attempts: int) -> StoredFiles:
    """Download every output (no token sent) and decode it fully; then put each file and its
    metadata record in S3 and mark the ledger stored.

    Every output is verified before any is stored. A file that does not decode is a
    transient error, and so is an S3 outage: the retry fetches again from the request_id
    (the job is paid; it is never resubmitted) and the writes are idempotent.
    """
    try:
        result = await ctx.client.result(request_id, include_cost=True)
        downloads = await ctx.client.fetch_outputs(request_id, result)
    except NotFoundError as exc:
        await _lost(ctx, item, request_id, exc, None)
    sizes = [verify_output(d.content, d.content_type, request_id=request_id) for d in downloads]
    failpoint("fetched")
    # One thread for every write of the item: each hop to a thread and back costs more
    # than a small S3 call's own work in this process.
    stored = await asyncio.to_thread(_put_outputs, ctx, item, request_id, result.cost,
                                     downloads, sizes, timings, polls, attempts)
    failpoint("stored")
    return stored


def _put_outputs(ctx: BatchContext, item: Item, request_id: str, cost: float | None,
                 downloads: list[Download], sizes: list[tuple[int, int] | None], timings: Timings,
                 polls: int, attempts: int) -> StoredFiles:
    """Each verified output and its record into S3, then the ledger's stored mark."""
    when = _now()
    image_uris, record_uris, records = [], [], []
    for index, (download, size) in enumerate(zip(downloads, sizes, strict=True)):
        # S3 checks the bytes against this SHA-256: one hash per image.
        sha256 = hashlib.sha256(download.content).hexdigest()
        obj = ctx.store.put_image(item.fingerprint, download.content, download.content_type,
                                  when=when, index=index, sha256=sha256)
        record = ImageRecord(
            fingerprint=item.fingerprint, model=item.model_id, inputs=item.inputs,
            request_id=request_id,
            image_uri=obj.uri, content_type=download.content_type, size=obj.size,
            sha256=obj.sha256, width=size[0] if size else None,
            height=size[1] if size else None, output_index=index,
            source_host=urlsplit(download.uri).hostname,
            timings=timings.model_copy(update={"stored_at": _now()}),
            polls=polls, attempts=attempts, batch_id=ctx.batch_id, flow_run_id=ctx.flow_run_id,
            deployment=ctx.deployment, cost=cost if index == 0 else None)
        record_uris.append(ctx.store.put_record(record, when=when))
        image_uris.append(obj.uri)
        records.append(record)
    ctx.ledger.record_stored(item_ref(ctx, item), request_id, attempts,
                             record_uri=record_uris[0] if record_uris else None,
                             image_uris=image_uris)
    return StoredFiles(image_uris=image_uris, record_uris=record_uris, records=records)


@task(name="generate-group", task_run_name="lines-{first}-{last}", retries=0,
      cache_policy=NO_CACHE, persist_result=False)
async def generate_group(first: int, last: int, items: int,
                         run: Callable[[], Awaitable[list[str]]]) -> State | None:
    """One task run for a group of ``items`` items (lines ``first`` to ``last``) of a large
    batch: ``run`` runs each of them through submit, wait and fetch-and-store as the steps'
    functions (``Steps.call``), each step retried on its own as its task would be, and
    returns what failed. The task itself is never retried: a retry is per item, and the
    ledger makes it safe. It ends Failed, naming the failures, when any item failed."""
    failures = await run()
    if failures:
        return Failed(message=f"{len(failures)} of {items} item(s) failed: "
                              + "; ".join(failures[:3]))
    return None


@dataclass(frozen=True)
class Steps:
    """The tasks of one item with one run's settings bound (timeouts and retry delay).

    ``inline`` (inside a ``generate_group`` task run): ``call`` runs a step's function with
    the retries, delays and timeout of its task, and makes no task run of its own.
    """

    submit: Task
    wait: Task
    fetch_and_store: Task
    inline: bool = False

    @classmethod
    def for_settings(cls, settings: Settings, *, inline: bool = False) -> Steps:
        delay = settings.task_retry_delay

        def bind(step: Task, timeout: float) -> Task:
            return step.with_options(**task_options(retry_delay=delay, timeout_seconds=timeout))

        # Timeouts are backstops: the client bounds each call and the wait its deadline.
        return cls(
            submit=bind(submit, settings.send_lease * 4),
            wait=bind(wait, settings.job_deadline + 300),
            fetch_and_store=bind(fetch_and_store, 1800),
            inline=inline,
        )

    async def call(self, step: Task, *args: Any) -> Any:
        """Run ``step``: a task run of its own, or (inline) its function with its task's
        retries (``flashgen.tasks.policy.retried``), retry delays and timeout."""
        if not self.inline:
            return await step(*args)
        delays = step.retry_delay_seconds
        for attempt in range(step.retries + 1):
            try:
                async with asyncio.timeout(step.timeout_seconds):
                    return await step.fn(*args)
            except Exception as exc:
                if attempt == step.retries or not retried(step.name, exc):
                    raise
                delay = delays[min(attempt, len(delays) - 1)] if isinstance(
                    delays, list) else (delays or 0)
                jitter = step.retry_jitter_factor or 0
                await timing.sleep(delay * random.uniform(1 - jitter, 1 + jitter)
                                   if delay else 0)
        raise AssertionError("unreachable: the last attempt returns or raises")


def forget(*results: Any) -> None:
    """Drop the flow run's links from these task results to their task runs' states.

    Prefect links every task result, and each of its fields, to a copy of its state in the
    flow run's context, so that passing it to another task records the dependency
    (``prefect.utilities.engine.link_state_to_result``); it keeps them until the flow run
    ends: 11 states per image, the largest share of a 10,000-image run's memory. The links
    of an item that has ended are never looked up again (its dependencies are recorded when
    its tasks start), so the flow drops them as each item ends.
    """
    context = FlowRunContext.get()
    links = getattr(context, "run_results", None)
    if links is None:
        return

    def drop(obj: Any) -> None:
        links.pop(id(obj), None)

    for result in results:  # the same objects Prefect linked: the result and its fields
        visit_collection(result, visit_fn=drop, return_data=False, max_depth=1)
