"""The main job: prompts in, images and metadata in S3, never paying twice.

``generate_images`` takes a batch (inline prompts or a CSV/JSONL/YAML file, local or
``s3://``), validates every row before anything is sent, then runs each item through
claim → submit → wait → fetch → store. The run takes a share of the Prefect global
concurrency limit that every run and worker shares (FLASHGEN_CONCURRENCY_LIMIT) and
schedules its own items inside that share, so the API's slots stay busy without paying
Prefect's slot-wakeup latency per job (prefect #23183).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.concurrency.asyncio import concurrency as global_slots
from prefect.concurrency.asyncio import rate_limit
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Failed, State
from prefect.utilities.urls import url_for

from flashgen.client import RunComfyClient
from flashgen.errors import InputError, is_transient
from flashgen.models import DEFAULT_MODEL
from flashgen.records import ItemState, LedgerState, ManifestRow, Timings
from flashgen.settings import Settings, get_settings
from flashgen.sources import BatchPlan, Item, Row, plan_batch, read_rows, rows_from_prompts
from flashgen.storage import Store, parse_s3_uri
from flows.progress import BatchProgress
from flows.summary import BatchSummary, emit_batch_event, publish_table
from tasks import generation as steps
from tasks.runtime import Runtime, resolve_token

SUBMIT_RATE_LIMIT = "runcomfy-submit"


@flow(name="generate-images", log_prints=True)
async def generate_images(
    source: str | None = None,
    prompts: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
    model_id: str = DEFAULT_MODEL,
    bucket: str | None = None,
    prefix: str | None = None,
    concurrency: int | None = None,
    force: bool = False,
    batch_id: str | None = None,
    strict: bool = False,
    max_failure_ratio: float = 0.0,
    resubmit_ambiguous: bool = False,
    run_date: str | None = None,
) -> BatchSummary:
    """Generate a batch of images into S3.

    Args:
        source: a prompt file (CSV, JSONL, JSON or YAML), local path or ``s3://`` URI.
        prompts: prompts given inline (with or without ``source``).
        defaults: input fields for every row; may hold ``seeds``, ``variations`` or
            ``aspect_ratios`` to expand each row into several images.
        model_id: the RunComfy model; the default model's inputs are validated exactly.
        bucket, prefix: where in S3 (default FLASHGEN_BUCKET / FLASHGEN_PREFIX).
        concurrency: jobs this run keeps at the API at once (default
            FLASHGEN_API_CONCURRENCY), further capped by the shared global limit.
        force: generate again even when an item is already stored (costs money).
        batch_id: names the manifest; default a timestamp plus a short random suffix.
        strict: abort before sending anything if any row is invalid.
        max_failure_ratio: share of items allowed to fail before the run is Failed.
        resubmit_ambiguous: resend items whose earlier submit lost its answer (may pay twice).
        run_date: fills ``{date}`` in prompts; default the run's scheduled date (UTC).
    """
    summary = await run_batch(
        rows=_rows(source, prompts), defaults=defaults, model_id=model_id,
        bucket=bucket, prefix=prefix, concurrency=concurrency, force=force,
        batch_id=batch_id, strict=strict, max_failure_ratio=max_failure_ratio,
        resubmit_ambiguous=resubmit_ambiguous, run_date=run_date)
    return _final(summary)


@flow(name="generate-image", log_prints=True)
async def generate_image(
    prompt: str,
    negative_prompt: str | None = None,
    aspect_ratio: str | None = None,
    seed: int | None = None,
    prompt_extend: bool | None = None,
    model_id: str = DEFAULT_MODEL,
    inputs: dict[str, Any] | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    force: bool = False,
) -> BatchSummary:
    """Generate one image. ``inputs`` carries any further field (or another model's input)."""
    given = {"negative_prompt": negative_prompt, "aspect_ratio": aspect_ratio, "seed": seed,
             "prompt_extend": prompt_extend}
    fields = {**(inputs or {}), "prompt": prompt, **{k: v for k, v in given.items()
                                                      if v is not None}}
    summary = await run_batch(rows=[Row(line=1, fields=fields)], model_id=model_id,
                              bucket=bucket, prefix=prefix, concurrency=1, force=force,
                              strict=True)
    return _final(summary)


def _final(summary: BatchSummary) -> BatchSummary | State:
    """The flow's end: Failed (naming the first failures) when too many items failed.

    Every success is stored and the manifest written before this; the summary travels in
    the Failed state so callers still get the counts.
    """
    if summary.ok:
        return summary
    return Failed(message=summary.describe() + "; " + "; ".join(summary.failures), data=summary)


def _rows(source: str | None, prompts: list[str] | None) -> list[Row]:
    rows = read_rows(source, read_s3=_read_s3) if source else []
    if prompts:
        offset = max((r.line for r in rows), default=0)
        rows += [r.model_copy(update={"line": r.line + offset}) for r in rows_from_prompts(prompts)]
    if not rows:
        raise InputError("source/prompts: nothing to generate; give a prompt file or prompts",
                         field="source")
    return rows


def _read_s3(uri: str) -> str:
    """A prompt file in S3, read with the same endpoint and credentials as the output."""
    return Store.from_settings(bucket=parse_s3_uri(uri)[0]).read_text(uri)


async def run_batch(
    *,
    rows: list[Row],
    defaults: dict[str, Any] | None = None,
    model_id: str = DEFAULT_MODEL,
    bucket: str | None = None,
    prefix: str | None = None,
    concurrency: int | None = None,
    force: bool = False,
    batch_id: str | None = None,
    strict: bool = False,
    max_failure_ratio: float = 0.0,
    resubmit_ambiguous: bool = False,
    run_date: str | None = None,
    settings: Settings | None = None,
) -> BatchSummary:
    log = get_run_logger()
    settings = settings or get_settings()
    started = datetime.now(UTC)
    batch_id = batch_id or f"{started:%Y%m%dT%H%M%S}-{uuid4().hex[:6]}"
    run_date = run_date or _scheduled_date()
    plan = plan_batch(rows, defaults=defaults, model_id=model_id, variables={"date": run_date})
    for line in plan.warnings:
        log.warning(line)
    for bad in plan.invalid:
        log.error("line %s is invalid and will not be sent: %s", bad.line, bad.reason)
    if strict and plan.invalid:
        reasons = "; ".join(f"line {b.line}: {b.reason}" for b in plan.invalid)
        raise InputError(f"strict: {len(plan.invalid)} invalid row(s), nothing sent: {reasons}")

    store = Store.from_settings(settings, bucket=bucket, prefix=prefix)
    if not store.bucket:
        raise InputError("bucket: no bucket given; pass --bucket or set FLASHGEN_BUCKET",
                         field="bucket")
    flow_run_id = runtime_flow_run.get_id()
    deployment = runtime_deployment.name
    wanted = concurrency or settings.api_concurrency
    log.info("batch %s: %d item(s) from %d row(s), %d invalid, up to %d at the API",
             batch_id, len(plan.items), len(rows), len(plan.invalid), wanted)

    with tempfile.TemporaryDirectory(prefix="flashgen-spool-") as spool:
        async with RunComfyClient(token=await resolve_token(settings),
                                  base_url=settings.base_url) as client:
            rt = Runtime(client=client, store=store, settings=settings, batch_id=batch_id,
                         spool=Path(spool), flow_run_id=flow_run_id, deployment=deployment,
                         deadline=settings.job_deadline, force=force,
                         resubmit_ambiguous=resubmit_ambiguous)
            item_rows = await _run_items(rt, plan.items, wanted)

    rows_out = sorted(_plan_rows(plan) + item_rows, key=lambda r: (r.line or 0))
    manifest_uri = await asyncio.to_thread(store.put_manifest, batch_id, rows_out)
    summary = BatchSummary.from_rows(
        batch_id, rows_out, manifest_uri=manifest_uri, flow_run_id=flow_run_id,
        flow_run_url=url_for("flow-run", obj_id=flow_run_id), deployment=deployment,
        max_failure_ratio=max_failure_ratio)
    log.info("%s; manifest %s", summary.describe(), manifest_uri)
    await publish_table(summary, rows_out)
    emit_batch_event(summary)
    return summary


async def _run_items(rt: Runtime, items: list[Item], wanted: int) -> list[ManifestRow]:
    """Run every item, keeping at most ``share`` of them at the API at once."""
    progress = BatchProgress(len(items), f"batch {rt.batch_id}")
    await progress.start()
    already = await asyncio.gather(*(asyncio.to_thread(rt.store.read_ledger, i.key)
                                     for i in items))
    pending = [i for i, found in zip(items, already, strict=True)
               if rt.force or found is None or found[0].state != LedgerState.STORED]
    wanted = min(wanted, max(len(pending), 1))
    api_limit, submit_limit = await _read_limits(rt.settings.concurrency_limit,
                                                 SUBMIT_RATE_LIMIT)
    limited = api_limit is not None and api_limit.active
    # Never ask for more slots than the shared limit has, or the run would wait forever.
    share = max(1, min(wanted, api_limit.limit)) if limited else wanted
    if api_limit is None:
        get_run_logger().warning(
            "global concurrency limit %r does not exist: this run limits only itself (to %d); "
            "`flashgen provision` creates it", rt.settings.concurrency_limit, wanted)
    rate_limited = submit_limit is not None
    local = asyncio.Semaphore(share)

    async def one(item: Item) -> ManifestRow:
        row = await _run_item(rt, item, local, rate_limited)
        await progress.advance(row.state.value)
        return row

    # The shortest lease the server allows: slots of a run that died return within a minute.
    slots = (global_slots(rt.settings.concurrency_limit, occupy=share, strict=True,
                          lease_duration=60)
             if limited and pending else contextlib.nullcontext())
    async with slots:
        return list(await asyncio.gather(*(one(item) for item in items)))


async def _run_item(rt: Runtime, item: Item, local: asyncio.Semaphore,
                    rate_limited: bool) -> ManifestRow:
    log = get_run_logger()
    began = time.monotonic()
    row = ManifestRow(line=item.line, key=item.key, prompt=item.inputs.get("prompt"),
                      seed=item.inputs.get("seed"), aspect_ratio=item.inputs.get("aspect_ratio"),
                      state=ItemState.FAILED)
    try:
        timings = Timings()
        async with local:  # one API slot: held from the claim until the job is terminal
            claim = await steps.claim(rt, item)
            if claim.action == steps.Action.SKIP:
                return _done(row, began, ItemState.SKIPPED, claim.reason,
                             request_id=claim.request_id, image_uris=claim.image_uris,
                             metadata_uri=claim.record_uri)
            if claim.action == steps.Action.AMBIGUOUS:
                return _done(row, began, ItemState.FAILED, claim.reason)
            request_id = claim.request_id
            attempts = claim.attempts
            if claim.action == steps.Action.SUBMIT:
                if rate_limited:
                    await rate_limit(SUBMIT_RATE_LIMIT)
                timings.submitted_at = datetime.now(UTC)
                try:
                    request_id = await steps.submit(rt, item, claim.attempts)
                except Exception as exc:
                    if is_transient(exc):  # retries spent, and it never reached the API
                        await steps.release_claim(rt, item, str(exc))
                    raise
                attempts += 1
            row.request_id = request_id
            waited = await steps.wait(rt, item, request_id)
        timings.started_at, timings.completed_at = waited.started_at, waited.completed_at
        files = await steps.fetch(rt, request_id)
        stored = await steps.store(rt, item, request_id, files, timings, waited.polls, attempts)
        log.info("line %s stored %s", item.line, ", ".join(stored.image_uris))
        return _done(row, began, ItemState.STORED, None, image_uris=stored.image_uris,
                     metadata_uri=stored.record_uris[0] if stored.record_uris else None)
    except Exception as exc:  # one item's failure is recorded, never the batch's end
        log.error("line %s failed: %s", item.line, exc)
        return _done(row, began, ItemState.FAILED, f"{type(exc).__name__}: {exc}")


def _done(row: ManifestRow, began: float, state: ItemState, reason: str | None,
          **fields) -> ManifestRow:
    return row.model_copy(update={"state": state, "reason": reason,
                                  "seconds": round(time.monotonic() - began, 3), **fields})


def _plan_rows(plan: BatchPlan) -> list[ManifestRow]:
    rows = [ManifestRow(line=b.line, state=ItemState.INVALID, reason=b.reason,
                        prompt=(b.fields or {}).get("prompt")) for b in plan.invalid]
    rows += [ManifestRow(line=item.line, key=item.key, prompt=item.inputs.get("prompt"),
                         seed=item.inputs.get("seed"), aspect_ratio=item.inputs.get("aspect_ratio"),
                         state=ItemState.SKIPPED, reason=f"duplicate of line {first}")
             for item, first in plan.duplicates]
    return rows


async def _read_limits(*names: str) -> list[GlobalConcurrencyLimitResponse | None]:
    """The named global concurrency limits, None for those that do not exist (one client)."""
    async with get_client() as client:
        async def read(name: str) -> GlobalConcurrencyLimitResponse | None:
            try:
                return await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                return None

        return [await read(name) for name in names]


def _scheduled_date() -> str:
    scheduled = runtime_flow_run.scheduled_start_time
    return (scheduled or datetime.now(UTC)).strftime("%Y-%m-%d")
