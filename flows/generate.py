"""The main job: prompts in, images and metadata in S3, never paying twice.

``generate_images`` (and ``generate_image`` for one prompt) run one batch:

1. every option is checked (``BatchOptions``); the run announces itself on the shared API
   limit (``flashgen.flows.slots.ApiSlots``), so other runs leave it its share while it plans; every
   row is read and validated, streamed from the prompt file; the settings are in range,
   the state directory (the journal) and the bucket are probed for writes and the token
   tried with a request that costs nothing — all before the first paid request;
2. the ledger entry of every item is read (a bounded number at a time) to make the plan:
   what is stored, in flight, ambiguous, and what will be paid for; the plan is logged,
   published as an artifact and held against ``max_items`` / ``max_cost``; a dry run stops
   here;
3. items stream through a bounded pool of workers; each job holds one slot of the shared
   API limit (``flashgen.flows.slots.ApiSlots``: fair between runs, one acquirer per run) from its
   submit until it is terminal, then is fetched and stored outside the slot;
   after ``FLASHGEN_STORAGE_BREAKER`` permanent S3 refusals in a row no new job is sent
   (``flashgen.tasks.context.StorageBreaker``);
4. rows stream into the manifest spool, uploaded with its summary at the end; the gallery
   and catalog are built from the spool as streams, and the batch's event and table
   artifact follow.

A batch with more items to run than its shard size (``shard_size``, FLASHGEN_SHARD_SIZE)
runs step 3 in shards instead, each a ``generate-shard`` flow run of this same pipeline
(``flashgen.flows.shards``); steps 1, 2 and 4 stay here, once for the whole batch.

A cancelled run (SIGTERM from its worker, Ctrl-C) stops as ``flashgen.stopping`` says: no
new submits, queued jobs cancelled at the API, running ones given their grace; then step 4
for what was done, the ``flashgen.batch.cancelled`` event, and the run ends Cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.concurrency.asyncio import rate_limit
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment as runtime_deployment
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Cancelled, Failed, State
from prefect.utilities.urls import url_for

from flashgen.client import RunComfyClient
from flashgen.errors import (
    AuthenticationError,
    BatchFailedError,
    BudgetError,
    DownloadError,
    InputError,
    NotFoundError,
    StorageError,
)
from flashgen.failpoints import failpoint
from flashgen.ledger import Action, Journal, Ledger
from flashgen.manifest import ManifestSpool
from flashgen.models import DEFAULT_MODEL, unchecked_model_note, validate_inputs
from flashgen.options import BatchOptions
from flashgen.plan import RunPlan, Stored, census
from flashgen.preflight import state_folder
from flashgen.pricing import Price, price_for
from flashgen.records import ImageRecord, ItemState, ManifestRow, Timings
from flashgen.reruns import Rerun, record_batch
from flashgen.settings import Settings, get_settings, resolve_token
from flashgen.shards import ShardOutcome, ShardWriter
from flashgen.sources import (
    BatchPlan,
    Item,
    Row,
    concat_rows,
    plan_batch,
    read_rows,
    rows_from_prompts,
)
from flashgen.stopping import BatchStop
from flashgen.storage import NDJSON, Store, parse_s3_uri
from flashgen.views import BatchViews, publish_batch_views
from flashgen.flows.cancel import quiet_cancelled_finish
from flashgen.flows.events import BATCH_FAILED_STATE, REFUSED_STATE
from flashgen.flows.progress import BatchProgress
from flashgen.flows.slots import ApiSlots
from flashgen.flows.summary import BatchSummary, artifact_key, emit_batch_event, publish_table
from flashgen.flows.views import publish_view_artifacts
from flashgen.tasks.context import BatchContext, StorageBreaker, SubmitBudget, prefect_run_over
from flashgen.tasks.generation import Steps, forget, generate_group

if TYPE_CHECKING:
    from flashgen.flows.shards import ShardRun

SUBMIT_RATE_LIMIT = "runcomfy-submit"
# A request_id that cannot exist: asking for its status costs nothing and proves the token.
_PROBE_REQUEST_ID = "00000000-0000-4000-8000-000000000000"
def _run_name() -> str:
    return f"batch-{runtime_flow_run.parameters.get('batch_id') or _default_batch_id()}"


def _default_batch_id() -> str:
    """The run's scheduled time and its flow run id: the same inside and outside the flow."""
    started = runtime_flow_run.scheduled_start_time or datetime.now(UTC)
    run_id = (runtime_flow_run.get_id() or "local").replace("-", "")
    return f"{started.astimezone(UTC):%Y%m%dT%H%M%S}-{run_id[:6]}"


@flow(name="generate-images", flow_run_name=_run_name, log_prints=True)
async def generate_images(
    source: str | None = None,
    prompts: list[str | dict[str, Any]] | None = None,
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
    dry_run: bool = False,
    max_items: int | None = None,
    max_cost: float | None = None,
    shard_size: int | None = None,
    max_shards_running: int = 4,
    shard_deployment: str | None = None,
) -> BatchSummary | State:
    """Generate a batch of images into S3.

    Args:
        source: a prompt file (CSV, JSONL, JSON or YAML), local path or ``s3://`` URI.
        prompts: rows given inline (with or without ``source``): each a prompt, or an
            object of input fields such as ``{"prompt": ..., "seed": 7}``.
        defaults: input fields for every row; may hold ``seeds``, ``variations``,
            ``aspect_ratios`` or ``vars`` to expand each row into several images.
        model_id: the RunComfy model; the default model's inputs are validated exactly.
        bucket, prefix: where in S3 (default FLASHGEN_BUCKET / FLASHGEN_PREFIX).
        concurrency: jobs this run keeps at the API at once (default
            FLASHGEN_API_CONCURRENCY), further capped by the shared global limit.
        force: generate again even when an item is already stored (costs money).
        batch_id: names the manifest; default the run's start time and flow run id.
        strict: abort before sending anything if any row is invalid.
        max_failure_ratio: share of items allowed to fail before the run is Failed.
        resubmit_ambiguous: resend items whose earlier submit lost its answer (may pay twice).
        run_date: fills ``{date}`` in prompts; default the run's scheduled date (UTC).
        dry_run: plan only: validate, read the ledger, print the plan; send nothing.
        max_items: refuse to send more than this many paid submissions.
        max_cost: refuse to spend more than this many USD, at the model's catalog price
            (or FLASHGEN_PRICE_PER_IMAGE).
        shard_size: split a batch with more items to run than this into shards, each run
            by a child flow run (default FLASHGEN_SHARD_SIZE; None: one run). See
            ``flashgen.flows.shards``.
        max_shards_running: shards running at once; ``concurrency`` is shared among them.
        shard_deployment: run each shard on this deployment of ``generate-shard``
            ("generate-shard/<name>", on a work pool); None: as subflows in this process.
    """
    try:
        options = BatchOptions.parse(
            source=source, prompts=prompts, defaults=defaults, model_id=model_id,
            bucket=bucket, prefix=prefix, concurrency=concurrency, force=force,
            batch_id=batch_id, strict=strict, max_failure_ratio=max_failure_ratio,
            resubmit_ambiguous=resubmit_ambiguous, run_date=run_date, dry_run=dry_run,
            max_items=max_items, max_cost=max_cost, shard_size=shard_size,
            max_shards_running=max_shards_running, shard_deployment=shard_deployment)
        return _final(await run_batch(options))
    except (InputError, AuthenticationError) as exc:
        return _refused(exc, batch_id)


@flow(name="generate-image", flow_run_name=_run_name, log_prints=True)
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
) -> BatchSummary | State:
    """Generate one image. ``inputs`` carries any further field (or another model's input)."""
    try:
        fields = image_inputs(model_id, inputs, prompt=prompt, negative_prompt=negative_prompt,
                              aspect_ratio=aspect_ratio, seed=seed, prompt_extend=prompt_extend)
        options = BatchOptions.parse(model_id=model_id, bucket=bucket, prefix=prefix,
                                     concurrency=1, force=force, strict=True)
        return _final(await run_batch(options, rows=[Row(line=1, fields=fields)]))
    except (InputError, AuthenticationError) as exc:
        return _refused(exc, None)


def image_inputs(model_id: str, inputs: dict[str, Any] | None = None, **given: Any
                 ) -> dict[str, Any]:
    """One image's input fields (``given`` over ``inputs``; None values left out), checked
    against the model's schema: a bad one is an InputError worded for one image."""
    fields = {**(inputs or {}), **{k: v for k, v in given.items() if v is not None}}
    validate_inputs(model_id, fields)
    return fields


def _refused(exc: Exception, batch_id: str | None) -> State:
    """Input (or a token) refused before anything was paid: not an incident. The run ends
    ``Refused`` (a FAILED type that no alert pages for; its state message is the one log
    line of the refusal) and emits ``flashgen.batch.refused`` for whoever submitted it."""
    if getattr(exc, "field", None) == "batch_id" or not batch_id:
        batch_id = _default_batch_id()
    flow_run_id = runtime_flow_run.get_id()
    emit_batch_event(BatchSummary(
        batch_id=batch_id, refused=str(exc), failures=[f"nothing sent: {exc}"],
        flow_run_id=flow_run_id, deployment=runtime_deployment.name,
        flow_run_url=url_for("flow-run", obj_id=flow_run_id) if flow_run_id else None))
    return Failed(name=REFUSED_STATE, message=f"nothing sent: {exc}", data=exc)


def _final(summary: BatchSummary) -> BatchSummary | State:
    """The flow's end: Cancelled when the batch was stopped part-way (the summary is its
    data); ``BatchFailed`` (naming the first failures) when too many items failed, whose
    ``flashgen.batch.failed`` event is what alerts, once.

    Every success is stored and the manifest written before this; the summary travels in
    the Failed state's ``BatchFailedError``, so a direct call raises it and callers still
    get the counts (``summary_of``).
    """
    if summary.stopped:
        quiet_cancelled_finish()
        return Cancelled(message=f"{summary.describe()}; `flashgen resume {summary.batch_id}` "
                                 "finishes it", data=summary)
    if summary.ok:
        return summary
    message = summary.describe() + "; " + "; ".join(summary.failures)
    return Failed(name=BATCH_FAILED_STATE, message=message,
                  data=BatchFailedError(message, summary))


async def run_batch(options: BatchOptions, *, rows: list[Row] | None = None,
                    settings: Settings | None = None, rerun: Rerun | None = None,
                    shard: ShardRun | None = None) -> BatchSummary:
    """Run one batch as ``options`` say (``rows`` instead of a source, for one-off calls).

    The batch's record (``flashgen.reruns``) is written before anything is sent; a
    ``rerun`` of a recorded batch sends only the items it selects and keeps the record.
    A batch with more items to run than its shard size is planned here and run in shards
    (``flashgen.flows.shards``); ``shard`` runs one of them: its items, under the batch's
    id, its rows written for the parent to merge (no record, views, table or event).
    """
    log = get_run_logger()
    settings = settings or get_settings()
    batch_id = shard.batch_id if shard else options.batch_id or _default_batch_id()
    run_date = (options.run_date or _scheduled_date()).isoformat()

    store = Store.from_settings(settings, bucket=options.bucket, prefix=options.prefix)
    # A shard run in the parent's process stops with the parent (its signals are the
    # parent's); any other run takes SIGTERM and SIGINT over itself.
    inherited = shard is not None and shard.stop is not None
    stop = shard.stop if inherited else BatchStop(settings.cancel_grace)
    signals = contextlib.nullcontext() if inherited else stop.signals()
    with signals, tempfile.TemporaryDirectory(prefix="flashgen-run-") as workdir:
        shards = _shard_writer(options, settings, Path(workdir), rerun, shard)
        # Announced before planning (a dry run sends nothing and is not): other runs leave
        # this one its share while it plans (flashgen.flows.slots, "Fairness").
        async with _api_slots(settings, options, group=shard and batch_id) as slots:
            token = await resolve_token(settings)
            async with RunComfyClient.from_settings(settings, token) as client:
                await _check_token(client)
                # The catalog's price (an unknown model is refused here, before any cost).
                price = await price_for(client, options.model_id,
                                        override=settings.price_per_image)
                plan, run_plan, stored = await _make_plan(options, settings, store, rows,
                                                          Path(workdir), batch_id, run_date,
                                                          price, rerun, shard, shards)
                if shards is not None:
                    shards.close()  # every item is dealt
                if options.dry_run:
                    return BatchSummary(batch_id=batch_id, plan=run_plan, dry_run=True,
                                        flow_run_id=runtime_flow_run.get_id())
                if rerun is None and shard is None:
                    await asyncio.to_thread(record_batch, store, options, batch_id=batch_id,
                                            run_date=run_date, rows=rows,
                                            flow_run_id=runtime_flow_run.get_id())
                manifest = ManifestSpool(Path(workdir) / "manifest.jsonl")
                for row in _plan_rows(plan):
                    manifest.add(row)
                records: dict[str, ImageRecord] = {}
                shard_stopped = None
                if shards is not None and shards.items > shards.size:
                    from flashgen.flows.shards import ShardedBatch, run_shards  # imports us

                    slots.plan(jobs=0)  # the shards run the jobs; this run holds their mark
                    for item, found in shards.stored_items(stored):
                        manifest.add(_stored_row(item, found))
                    halted, shard_stopped = await run_shards(
                        ShardedBatch(options=options, settings=settings, store=store,
                                     batch_id=batch_id, run_date=run_date,
                                     shards=shards.shards, run_plan=run_plan,
                                     workdir=Path(workdir)), manifest, stop)
                else:
                    ctx = _context(options, settings, store, client, batch_id, run_plan,
                                   Path(workdir), stop)
                    await _run_items(ctx, plan, stored, manifest, records, slots, rerun)
                    halted = ctx.breaker.reason
        spend = manifest.spend.model_copy(update={"planned_usd": run_plan.estimated_cost})
        if shard is not None:
            return await _shard_done(shard, store, manifest, spend, halted, stop.reason,
                                     run_plan)
        try:
            manifest_uri = await asyncio.to_thread(
                store.put_manifest_file, batch_id, manifest.close(), dict(manifest.counts),
                {"spend": spend.model_dump()})
        except StorageError as exc:
            if not halted:
                raise
            raise StorageError(f"{halted}; the manifest was not written either ({exc}); every "
                               "paid job's request_id is in the ledger or the journal, and a "
                               "rerun once S3 works resumes them") from None
        failpoint("manifest")
        views = await _publish_views(store, batch_id, manifest, records, settings)
    flow_run_id = runtime_flow_run.get_id()
    summary = BatchSummary.from_spool(
        batch_id, manifest, manifest_uri=manifest_uri, flow_run_id=flow_run_id,
        flow_run_url=url_for("flow-run", obj_id=flow_run_id) if flow_run_id else None,
        deployment=runtime_deployment.name, max_failure_ratio=options.max_failure_ratio,
        plan=run_plan, halted=halted, gallery_url=views.gallery_url if views else None,
        catalog_uri=views.catalog_uri if views else None, spend=spend,
        stopped=stop.reason or shard_stopped)
    log.info("%s; manifest %s", summary.describe(), manifest_uri)
    await publish_table(summary, summary.rows)
    emit_batch_event(summary)
    return summary


async def _make_plan(options: BatchOptions, settings: Settings, store: Store,
                     rows: list[Row] | None, workdir: Path, batch_id: str, run_date: str,
                     price: Price, rerun: Rerun | None = None, shard: ShardRun | None = None,
                     shards: ShardWriter | None = None,
                     ) -> tuple[BatchPlan, RunPlan, dict[str, Stored]]:
    """Every row read and checked, the bucket probed, the ledger read: what the run will do,
    logged, published and held against the budget, before anything is paid for. A shard's
    plan is its items; a batch that may be sharded deals its items into ``shards`` as the
    ledger is read."""
    log = get_run_logger()
    # In a thread: a large prompt file takes a while to read and must not stall the loop.
    plan = shard.plan if shard else await asyncio.to_thread(
        plan_batch, rows if rows is not None else _rows(options, store, workdir),
        defaults=options.defaults, model_id=options.model_id, variables={"date": run_date})
    if plan.rows == 0:
        raise InputError("source: no rows to generate in it", field="source")
    if note := unchecked_model_note(options.model_id):
        log.warning(note)
    _report_rows(plan, options.strict)
    # What the run needs once it has paid: somewhere to keep request_ids (the journal) and
    # the bucket. Found out afterwards, a paid job could be lost (flashgen.preflight).
    await asyncio.to_thread(state_folder, settings)
    await asyncio.to_thread(Journal(settings.state_dir, scope=store.uri(store.prefix)).probe)
    await asyncio.to_thread(store.check_writable)
    counts, stored = await asyncio.to_thread(
        census, store, _items(plan, rerun), expected=plan.items, force=options.force,
        resubmit_ambiguous=options.resubmit_ambiguous, each=shards and shards.add)
    run_plan = RunPlan(rows=plan.rows, items=plan.items, invalid=len(plan.invalid),
                       duplicates=len(plan.duplicates),
                       price_per_image=price.per_image, price_source=price.source,
                       **counts)
    name = f"{batch_id} shard {shard.index}" if shard else batch_id
    log.info("batch %s plan:\n%s", name, "\n".join(run_plan.lines()))
    await acreate_markdown_artifact(
        key=artifact_key("plan", name), markdown=_plan_markdown(name, run_plan),
        description=f"what batch {name} will do before it pays")
    problem = run_plan.over_budget(max_items=options.max_items, max_cost=options.max_cost)
    if problem:
        raise BudgetError(f"{problem}; nothing sent. " + "; ".join(run_plan.lines()[-3:]))

    return plan, run_plan, stored


def _context(options: BatchOptions, settings: Settings, store: Store, client: RunComfyClient,
             batch_id: str, run_plan: RunPlan, workdir: Path, stop: BatchStop) -> BatchContext:
    """What every task of the run shares: client, store, ledger, budget."""
    ledger = Ledger(store, Journal(settings.state_dir, scope=store.uri(store.prefix)),
                    owner_run=runtime_flow_run.get_id(), send_lease=settings.send_lease,
                    owner_gone=prefect_run_over)
    return BatchContext(
        client=client, store=store, ledger=ledger, settings=settings,
        batch_id=batch_id, spool=workdir, flow_run_id=runtime_flow_run.get_id(),
        deployment=runtime_deployment.name, force=options.force,
        resubmit_ambiguous=options.resubmit_ambiguous,
        budget=SubmitBudget(run_plan.submission_cap(max_items=options.max_items,
                                                    max_cost=options.max_cost)), stop=stop,
        breaker=StorageBreaker(settings.storage_breaker))


async def _publish_views(store: Store, batch_id: str, manifest: ManifestSpool,
                         records: dict[str, ImageRecord], settings: Settings) -> BatchViews | None:
    """The batch's gallery, catalog file and artifacts; their failure never fails the batch."""
    try:  # the rows stream from the spool on disk: bounded memory whatever the batch
        views = await asyncio.to_thread(publish_batch_views, store, batch_id, manifest,
                                        records=records, settings=settings)
        await publish_view_artifacts(views, manifest, records)
        return views
    except Exception as exc:  # the images and manifest are safe; the views can be rebuilt
        get_run_logger().warning("batch %s: gallery or catalog not written (%s); "
                                 "`flashgen gallery %s` and `flashgen catalog rebuild` make "
                                 "them again", batch_id, exc, batch_id)
        return None


def _rows(options: BatchOptions, store: Store, workdir: Path) -> Iterable[Row]:
    """The batch's rows: the prompt file (streamed) and then the inline prompts."""
    parts = []
    if options.source:
        parts.append(read_rows(options.source, fetch_s3=lambda uri, path: _fetch_s3(
            store, uri, path)))
    if options.prompts:
        parts.append(rows_from_prompts(options.prompts))
    if not parts:
        raise InputError("source/prompts: nothing to generate; give a prompt file or prompts",
                         field="source")
    return concat_rows(*parts)


def _fetch_s3(store: Store, uri: str, path: Path) -> None:
    """A prompt file in S3, read with the same endpoint and credentials as the output."""
    bucket, _ = parse_s3_uri(uri)
    reader = store if bucket == store.bucket else Store(
        bucket, store.prefix, s3=store.s3)
    reader.download(uri, path)


def _report_rows(plan: BatchPlan, strict: bool) -> None:
    log = get_run_logger()
    for line in plan.warnings[:20]:
        log.warning(line)
    for bad in plan.invalid[:20]:
        log.error("line %s is invalid and will not be sent: %s", bad.line, bad.reason)
    if strict and plan.invalid:
        reasons = "; ".join(f"line {b.line}: {b.reason}" for b in plan.invalid[:5])
        raise InputError(f"strict: {len(plan.invalid)} invalid row(s), nothing sent: {reasons}")


async def _check_token(client: RunComfyClient) -> None:
    """401 for a bad token, 404 for a good one: the status of a request that cannot exist.

    A refusal is worded for the token (where it came from, what to do), not for the probe's
    made-up request id.
    """
    try:
        await client.status(_PROBE_REQUEST_ID)
    except NotFoundError:
        return
    except AuthenticationError as exc:
        reason = exc.message.removeprefix(f"status of {_PROBE_REQUEST_ID}: ")
        raise AuthenticationError(f"token refused: {reason}", status_code=exc.status_code,
                                  error_code=exc.error_code) from None
    # Any other answer (an emulator or API that knows the id): the token was accepted.


def _items(plan: BatchPlan, rerun: Rerun | None) -> Iterator[Item]:
    """The items this run sends: all of them, or those a rerun selects."""
    items = plan.iter_items()
    return items if rerun is None else (item for item in items if rerun.sends(item))


async def _run_items(ctx: BatchContext, plan: BatchPlan, stored: dict[str, Stored],
                     manifest: ManifestSpool, records: dict[str, ImageRecord],
                     slots: ApiSlots, rerun: Rerun | None = None) -> None:
    """Run every item through a bounded pool of workers; each job holds one API slot.

    Items stream from the prompt file; at most ``2 × wanted`` are in progress at once (a
    job's fetch and store overlap the next job's submit), whatever the batch's size. A
    batch of at least ``FLASHGEN_TASK_GROUP_FROM`` items to send runs them in groups of
    ``FLASHGEN_TASK_GROUP_SIZE``, one task run per group (flashgen.tasks.generation says
    why); a smaller one gives each step of each item a task run of its own.
    """
    pending = (rerun.to_send if rerun and rerun.to_send is not None else plan.items) - len(
        stored)
    progress = BatchProgress(plan.items, f"batch {ctx.batch_id}")
    await progress.start()
    (submit_limit,) = await _read_limits(SUBMIT_RATE_LIMIT)
    size = ctx.settings.task_group_size if pending >= ctx.settings.task_group_from else 1
    steps = Steps.for_settings(ctx.settings, inline=size > 1)
    items = plan.iter_items()
    wanted = min(slots.wanted, max(pending, 1))
    slots.plan(jobs=pending, wanted=wanted)

    def not_run(item: Item) -> ManifestRow | None:
        """The row of an item this run does not send, or None to send it."""
        if rerun is not None and not rerun.sends(item):
            return rerun.kept_row(item) or _row(item, ItemState.SKIPPED,
                                                f"not part of this {rerun.mode}")
        if item.fingerprint in stored:
            found = stored[item.fingerprint]
            return _row(item, ItemState.SKIPPED, "already stored").model_copy(update={
                "request_id": found.request_id, "metadata_uri": found.record_uri,
                "image_uris": list(found.image_uris)})
        if ctx.stop.requested:
            return _not_sent(ctx, item)
        return None

    async def done(row: ManifestRow) -> ManifestRow:
        manifest.add(row)
        await progress.advance(row.state.value)
        return row

    async def run(item: Item) -> ManifestRow:
        return await done(await _run_item(ctx, steps, item, slots, submit_limit is not None,
                                          records))

    async def worker() -> None:
        while True:
            group = []
            for item in items:  # one shared iterator: each worker takes the next items
                row = not_run(item)
                if row is not None:
                    await done(row)
                    continue
                group.append(item)
                if len(group) == size:
                    break
            if not group:
                return
            if size == 1:
                await run(group[0])
            else:
                await _run_group(group, run)

    workers = (min(2 * wanted, max(plan.items, 1)) if size == 1
               else math.ceil(2 * wanted / size) + 1)
    await asyncio.gather(*(worker() for _ in range(workers)))
    get_run_logger().info("API slots of %s: %s", ctx.settings.concurrency_limit,
                          slots.counters)


async def _run_group(group: list[Item], run: Any) -> None:
    """One ``generate-group`` task run for ``group``: its items run at once, each waiting
    for its own API slot; the task run ends Failed, naming them, if any item failed."""

    async def each() -> list[str]:
        rows = await asyncio.gather(*(run(item) for item in group))
        return [f"line {row.line}: {row.reason}" for row in rows
                if row.state == ItemState.FAILED]

    state = await generate_group(group[0].line, group[-1].line, len(group), each,
                                 return_state=True)
    forget(state)


def _api_slots(settings: Settings, options: BatchOptions, group: str | None = None
               ) -> contextlib.AbstractAsyncContextManager[ApiSlots | None]:
    if options.dry_run:
        return contextlib.nullcontext(None)
    return ApiSlots(settings.concurrency_limit,
                    wanted=options.concurrency or settings.api_concurrency, group=group)


def _shard_writer(options: BatchOptions, settings: Settings, workdir: Path,
                  rerun: Rerun | None, shard: ShardRun | None) -> ShardWriter | None:
    """Where a batch that may be sharded deals its items while it plans (None: it is not:
    a shard, a rerun, a dry run, or no shard size)."""
    size = options.shard_size or settings.shard_size
    if size is None or shard is not None or rerun is not None or options.dry_run:
        return None
    return ShardWriter(workdir / "shards", size)


async def _shard_done(shard: ShardRun, store: Store, manifest: ManifestSpool, spend: Any,
                      halted: str | None, stopped: str | None, run_plan: RunPlan
                      ) -> BatchSummary:
    """A shard's end: its rows and outcome beside its items, for the parent to merge."""
    layout = store.layout
    await asyncio.to_thread(store.put_file, layout.shard(shard.batch_id, shard.index,
                                                         "manifest"), manifest.close(), NDJSON)
    outcome = ShardOutcome(index=shard.index, flow_run_id=runtime_flow_run.get_id(),
                           rows=manifest.total, halted=halted, stopped=stopped,
                           counts={str(state): n for state, n in manifest.counts.items()})
    await asyncio.to_thread(store.put_json, layout.shard(shard.batch_id, shard.index, "outcome"),
                            outcome)
    summary = BatchSummary.from_spool(
        shard.batch_id, manifest, flow_run_id=runtime_flow_run.get_id(), plan=run_plan,
        halted=halted, spend=spend, stopped=stopped, deployment=runtime_deployment.name)
    get_run_logger().info("shard %s of %s", shard.index, summary.describe())
    return summary


def _stored_row(item: Item, found: Stored) -> ManifestRow:
    return _row(item, ItemState.SKIPPED, "already stored").model_copy(update={
        "request_id": found.request_id, "metadata_uri": found.record_uri,
        "image_uris": list(found.image_uris)})


async def _run_item(ctx: BatchContext, steps: Steps, item: Item, slots: ApiSlots,
                    rate_limited: bool, records: dict[str, ImageRecord]) -> ManifestRow:
    log = get_run_logger()
    began = time.monotonic()
    row = _row(item, ItemState.FAILED, None)
    sent = finished = stored = None
    try:
        timings = Timings()
        async with contextlib.AsyncExitStack() as held:
            # One API slot: from the submit until the job is terminal. A stop ends the wait.
            got, _ = await ctx.stop.first(held.enter_async_context(slots.slot()))
            if got and rate_limited:
                got, _ = await ctx.stop.first(rate_limit(SUBMIT_RATE_LIMIT))
            if not got or ctx.stop.requested:
                return _not_sent(ctx, item)
            ctx.breaker.check()  # S3 refuses for good: pay for nothing it cannot keep
            sent = await steps.call(steps.submit, ctx, item)
            if sent.action == Action.SKIP:
                return _done(row, began, ItemState.SKIPPED, sent.reason,
                             request_id=sent.request_id, image_uris=sent.image_uris,
                             metadata_uri=sent.record_uri)
            if sent.action == Action.AMBIGUOUS:
                return _done(row, began, ItemState.FAILED, sent.reason)
            row.request_id = sent.request_id
            timings.submitted_at = sent.submitted_at
            finished = await steps.call(steps.wait, ctx, item, sent.request_id, sent.attempts)
        if finished.stopped:
            return _done(row, began, ItemState.CANCELLED, finished.stopped)
        timings.started_at, timings.completed_at = finished.started_at, finished.completed_at
        try:
            stored = await steps.call(steps.fetch_and_store, ctx, item, sent.request_id,
                                      timings, finished.polls, sent.attempts)
        except DownloadError as exc:
            raise DownloadError(f"{exc.message}; the job is paid and its request_id kept in "
                                "the ledger: a rerun fetches it again",
                                request_id=sent.request_id) from exc
        records.update(zip(stored.record_uris, stored.records, strict=True))
        ctx.breaker.record(None)
        return _done(row, began, ItemState.STORED, None, image_uris=stored.image_uris,
                     metadata_uri=stored.record_uris[0] if stored.record_uris else None,
                     cost=stored.records[0].cost if stored.records else None)
    except Exception as exc:  # one item's failure is recorded, never the batch's end
        ctx.breaker.record(exc)
        log.error("line %s failed: %s", item.line, exc)
        return _done(row, began, ItemState.FAILED, f"{type(exc).__name__}: {exc}")
    finally:
        # Bounded memory: see flashgen.tasks.generation.forget.
        forget(sent, finished, stored)


def _not_sent(ctx: BatchContext, item: Item) -> ManifestRow:
    return _row(item, ItemState.CANCELLED, f"batch cancelled ({ctx.stop.reason}): not sent")


def _row(item: Item, state: ItemState, reason: str | None) -> ManifestRow:
    return ManifestRow(line=item.line, fingerprint=item.fingerprint,
                       prompt=item.inputs.get("prompt"), seed=item.inputs.get("seed"),
                       aspect_ratio=item.inputs.get("aspect_ratio"), state=state, reason=reason)


def _done(row: ManifestRow, began: float, state: ItemState, reason: str | None,
          **fields: Any) -> ManifestRow:
    return row.model_copy(update={"state": state, "reason": reason,
                                  "seconds": round(time.monotonic() - began, 3), **fields})


def _plan_rows(plan: BatchPlan) -> Iterator[ManifestRow]:
    for bad in plan.invalid:
        yield ManifestRow(line=bad.line, state=ItemState.INVALID, reason=bad.reason,
                          prompt=bad.prompt)
    for dup in plan.duplicates:
        yield ManifestRow(line=dup.line, fingerprint=dup.fingerprint, prompt=dup.prompt,
                          seed=dup.seed, aspect_ratio=dup.aspect_ratio, state=ItemState.SKIPPED,
                          reason=f"duplicate of line {dup.first_line}")


def _plan_markdown(batch_id: str, plan: RunPlan) -> str:
    return f"# Plan of batch {batch_id}\n\n```\n" + "\n".join(plan.lines()) + "\n```\n"


async def _read_limits(*names: str) -> list[GlobalConcurrencyLimitResponse | None]:
    """The named global concurrency limits, None for those that do not exist (one client)."""
    async with get_client() as client:
        async def read(name: str) -> GlobalConcurrencyLimitResponse | None:
            try:
                return await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                return None

        return [await read(name) for name in names]


def _scheduled_date() -> date:
    scheduled = runtime_flow_run.scheduled_start_time
    return (scheduled or datetime.now(UTC)).astimezone(UTC).date()
