"""A batch too large for one flow run: planned once by its parent, run in shards by children.

``generate-images`` with ``shard_size`` (or ``FLASHGEN_SHARD_SIZE``) plans the batch as any
run does: every row read and checked, duplicates dropped, the ledger read, the plan held
against ``max_items`` / ``max_cost`` for the whole batch, all before anything is paid. If
more than ``shard_size`` items are left to run, it deals them into shards
(``flashgen.shards``) and, instead of running them itself:

1. writes each shard's items to ``<prefix>/shards/<batch_id>/<n>.items.jsonl``;
2. starts one child flow run of ``generate-shard`` per shard, at most
   ``max_shards_running`` at once: with ``shard_deployment`` ("generate-shard/<name>")
   through ``run_deployment`` on that deployment's work pool, so shards run on every
   machine the pool has workers on; without one, as subflows in this process. Each child
   is today's pipeline (``run_batch``) on its shard, under the batch's id: the same ledger,
   a slice of the batch's budget (``flashgen.shards.submission_budgets``) and a share of
   its concurrency. A child publishes nothing for the batch (no manifest, gallery, catalog
   file, table or ``flashgen.batch.*`` event): it writes its rows and its outcome beside
   its items;
3. runs a shard again when its run ended without an outcome (Crashed: its process was
   killed or its machine lost; or Failed by an unexpected error), up to
   ``SHARD_ATTEMPTS`` times. The ledger makes that safe: every job the lost run paid for
   has its request_id there, and the new run resumes it, never resending it;
4. merges every shard's rows into the batch's one manifest, then writes the one gallery,
   catalog file, table artifact and event as an unsharded run does.

For the shared API limit the shards of a batch are one run (``flashgen.flows.slots``, "A
sharded batch"): the parent holds the batch's mark, the shards share its fair share.

Cancelling the parent (its worker's SIGTERM, Ctrl-C) cancels its children: no new shard
starts (its items are ``cancelled: not sent``), each running child on a work pool is set
Cancelling, so its worker stops it as any cancelled run stops (``flashgen.stopping``),
and in-process children stop with the parent. The parent waits for them and writes the
manifest of what was done; ``flashgen resume BATCH_ID`` finishes the batch (as one run).
A parent killed outright leaves its children running to their end; the batch's manifest
is then written by ``flashgen resume``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling, Failed, State

from flashgen.errors import AuthenticationError, InputError, StorageError
from flashgen.manifest import ManifestSpool
from flashgen.models import DEFAULT_MODEL
from flashgen.options import BatchOptions
from flashgen.plan import RunPlan, census
from flashgen.records import ItemState, ManifestRow
from flashgen.settings import Settings, get_settings
from flashgen.shards import (
    ShardFile,
    ShardOutcome,
    ShardPlan,
    rerun_budget,
    shard_concurrency,
    submission_budgets,
)
from flashgen.stopping import BatchStop
from flashgen.storage import NDJSON, Store
from flashgen.flows.cancel import quiet_cancelled_finish
from flashgen.flows.events import REFUSED_STATE
from flashgen.flows.generate import run_batch
from flashgen.flows.slots import forget_group
from flashgen.flows.summary import BatchSummary

SHARD_ATTEMPTS = 3  # runs of one shard: the first and two more after a crash
POLL_SECONDS = 2.0  # how often the parent reads a child run's state on a work pool
# The parent's stop, seen by children running in its process (they take no signals).
_PARENT_STOP: contextvars.ContextVar[BatchStop | None] = contextvars.ContextVar(
    "flashgen_parent_stop", default=None)


@dataclass
class ShardRun:
    """One shard as its child runs it (``run_batch(..., shard=...)``)."""

    batch_id: str
    index: int
    plan: ShardPlan
    stop: BatchStop | None = None  # the parent's, for a child in the parent's process


@dataclass
class ShardedBatch:
    """A planned batch, dealt into shards, as its parent runs them."""

    options: BatchOptions
    settings: Settings
    store: Store
    batch_id: str
    run_date: str
    shards: list[ShardFile]
    run_plan: RunPlan
    workdir: Path
    merging: asyncio.Lock = field(default_factory=asyncio.Lock)  # one shard's rows at a time


@flow(name="generate-shard", flow_run_name="{batch_id}-shard-{index}", log_prints=True)
async def generate_shard(batch_id: str, index: int, model_id: str = DEFAULT_MODEL,
                         bucket: str | None = None, prefix: str | None = None,
                         concurrency: int | None = None, force: bool = False,
                         resubmit_ambiguous: bool = False, max_items: int | None = None,
                         run_date: str | None = None) -> BatchSummary | State:
    """Run shard ``index`` of batch ``batch_id``, as its parent planned it (its items in
    S3, ``max_items`` its slice of the batch's budget). Started by the batch's parent
    (``generate-images`` with ``shard_size``), not by hand."""
    try:
        options = BatchOptions.parse(
            model_id=model_id, bucket=bucket, prefix=prefix, concurrency=concurrency,
            force=force, batch_id=batch_id, resubmit_ambiguous=resubmit_ambiguous,
            max_items=max_items, run_date=run_date, max_failure_ratio=1.0)
        store = Store.from_settings(get_settings(), bucket=bucket, prefix=prefix)
        with tempfile.TemporaryDirectory(prefix="flashgen-shard-") as folder:
            path = Path(folder) / "items.jsonl"
            await asyncio.to_thread(store.download, store.layout.shard(batch_id, index, "items"),
                                    path)
            plan = await asyncio.to_thread(ShardPlan.read, path, options.model_id)
            summary = await run_batch(options, shard=ShardRun(batch_id, index, plan,
                                                              _PARENT_STOP.get()))
    except (InputError, AuthenticationError) as exc:
        # Not the batch's refusal (its parent planned it): no flashgen.batch.refused event.
        return Failed(name=REFUSED_STATE, message=f"shard {index} of batch {batch_id}: "
                                                  f"nothing sent: {exc}", data=exc)
    if summary.stopped:
        quiet_cancelled_finish()
        return Cancelled(message=summary.describe(), data=summary)
    return summary  # its failed items are the parent's to judge


async def run_shards(batch: ShardedBatch, manifest: ManifestSpool, stop: BatchStop
                     ) -> tuple[str | None, str | None]:
    """Run every shard, at most ``max_shards_running`` at once, and add their rows to
    ``manifest``; returns why a shard stopped paying (``halted``) and why one was
    cancelled (``stopped``), the first of each, or None."""
    options, log = batch.options, get_run_logger()
    budgets = submission_budgets(batch.shards, batch.run_plan.submission_cap(
        max_items=options.max_items, max_cost=options.max_cost))
    running = min(options.max_shards_running, len(batch.shards))
    total = options.concurrency or batch.settings.api_concurrency
    if options.shard_deployment:
        await _check_deployment(options.shard_deployment)
    for shard in batch.shards:
        await asyncio.to_thread(batch.store.put_file, batch.store.layout.shard(
            batch.batch_id, shard.index, "items"), shard.path, NDJSON)
    log.info("batch %s: %d item(s) in %d shards of up to %d, %d at a time, %s",
             batch.batch_id, sum(s.items for s in batch.shards), len(batch.shards),
             options.shard_size or batch.settings.shard_size, running,
             f"on {options.shard_deployment}" if options.shard_deployment
             else "in this process")
    gate = asyncio.Semaphore(running)
    outcomes: list[ShardOutcome] = []

    async def one(shard: ShardFile, budget: int | None) -> None:
        async with gate:
            if stop.requested:
                await _merge(batch, shard, None, f"batch cancelled ({stop.reason}): not sent",
                             manifest, ItemState.CANCELLED)
                return
            try:
                outcome, why = await _run_shard(
                    batch, shard, budget, shard_concurrency(total, running, shard.index), stop)
            except Exception as exc:  # the Prefect API or S3 failed us: the others go on
                log.error("shard %d: %s: %s", shard.index, type(exc).__name__, exc)
                outcome, why = None, f"shard {shard.index}: {type(exc).__name__}: {exc}"
            await _merge(batch, shard, outcome, why, manifest)
            if outcome is not None:
                outcomes.append(outcome)

    token = _PARENT_STOP.set(stop)
    try:
        await asyncio.gather(*(one(s, b) for s, b in zip(batch.shards, budgets, strict=True)))
    finally:
        _PARENT_STOP.reset(token)
        try:
            await forget_group(batch.settings.concurrency_limit, batch.batch_id)
        except Exception as exc:  # a leftover limit with no slots harms nobody
            log.warning("could not remove the batch's group limit: %s", exc)
    halted = next((f"shard {o.index}: {o.halted}" for o in outcomes if o.halted), None)
    stopped = next((f"shard {o.index}: {o.stopped}" for o in outcomes if o.stopped), None)
    return halted, stopped


async def _run_shard(batch: ShardedBatch, shard: ShardFile, budget: int | None,
                     concurrency: int, stop: BatchStop) -> tuple[ShardOutcome | None, str]:
    """Run one shard to an outcome, again after a crash; (None, why) if it never had one."""
    options, store, log = batch.options, batch.store, get_run_logger()
    params = dict(batch_id=batch.batch_id, index=shard.index, model_id=options.model_id,
                  bucket=store.bucket, prefix=store.prefix, concurrency=concurrency,
                  force=options.force, resubmit_ambiguous=options.resubmit_ambiguous,
                  max_items=budget, run_date=batch.run_date)
    why = "never started"
    for attempt in range(1, SHARD_ATTEMPTS + 1):
        if options.shard_deployment:
            flow_run_id, state = await _on_work_pool(options.shard_deployment, params, stop)
        else:
            state = await generate_shard(**params, return_state=True)
            flow_run_id = str(state.state_details.flow_run_id)
        outcome = await asyncio.to_thread(_outcome_of, store, batch.batch_id, shard.index,
                                          flow_run_id)
        why = f"shard {shard.index}'s run {flow_run_id} ended {state.name}: {state.message}"
        if outcome is not None:
            return outcome, why
        if (stop.requested or state.name == REFUSED_STATE or state.is_cancelled()
                or attempt == SHARD_ATTEMPTS):
            return None, why
        # A --force batch's shard runs again without force: what the lost run regenerated
        # is not paid for a third time (its other items keep their earlier image).
        params["force"] = False
        to_send_now = await asyncio.to_thread(_to_send, store, shard, options)
        params["max_items"] = rerun_budget(budget, shard.to_send, to_send_now)
        log.warning("%s; running it again (attempt %d of %d): the ledger resumes every job "
                    "it paid for, none is sent twice", why, attempt + 1, SHARD_ATTEMPTS)
    return None, why


async def _on_work_pool(deployment: str, params: dict, stop: BatchStop) -> tuple[str, State]:
    """Start the child on its deployment's work pool and wait for its final state; a
    cancelled batch cancels it (its worker stops it as any cancelled run stops)."""
    run = await run_deployment(deployment, parameters=params, timeout=0)
    cancelling = False
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(run.id)
            if run.state is not None and run.state.is_final():
                return str(run.id), run.state
            if stop.requested and not cancelling:
                cancelling = True
                message = f"its batch was cancelled ({stop.reason})"
                started = run.state is not None and (run.state.is_running()
                                                     or run.state.is_pending())
                await client.set_flow_run_state(
                    run.id, Cancelling(message=message) if started else Cancelled(
                        message=message), force=True)
            if cancelling:
                await asyncio.sleep(POLL_SECONDS)
                continue
            with contextlib.suppress(TimeoutError):  # a stop is passed on at once
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)


async def _check_deployment(name: str) -> None:
    """The shards' deployment exists, or the batch is refused before any shard starts."""
    async with get_client() as client:
        try:
            await client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise InputError(f"shard_deployment: no deployment {name!r} on this Prefect "
                             "server; `prefect deploy --name process` creates "
                             "generate-shard/process from prefect.yaml",
                             field="shard_deployment") from None


def _outcome_of(store: Store, batch_id: str, index: int, flow_run_id: str
                ) -> ShardOutcome | None:
    """The shard's outcome if the run ``flow_run_id`` wrote it (not an earlier run's)."""
    key = store.layout.shard(batch_id, index, "outcome")
    if not store.exists(key):
        return None
    outcome = ShardOutcome.model_validate(store.read_json(key))
    return outcome if outcome.flow_run_id == flow_run_id else None


def _to_send(store: Store, shard: ShardFile, options: BatchOptions) -> int:
    """How many of the shard's items the ledger would have its next run (without force)
    pay for now."""
    counts, _ = census(store, ShardPlan.read(shard.path, options.model_id).iter_items(),
                       expected=shard.items, resubmit_ambiguous=options.resubmit_ambiguous)
    return counts["to_send"]


async def _merge(batch: ShardedBatch, shard: ShardFile, outcome: ShardOutcome | None,
                 why: str, manifest: ManifestSpool,
                 state: ItemState = ItemState.FAILED) -> None:
    """The shard's rows into the batch's manifest, one shard at a time (in a thread: they
    are read from S3 and files)."""
    async with batch.merging:
        await asyncio.to_thread(_merge_rows, batch, shard, outcome, why, manifest, state)


def _merge_rows(batch: ShardedBatch, shard: ShardFile, outcome: ShardOutcome | None,
                why: str, manifest: ManifestSpool, state: ItemState) -> None:
    """The rows the shard's run wrote, or, for a shard that never had an outcome, one row
    per item saying why."""
    store = batch.store
    if outcome is not None:
        local = batch.workdir / f"shard-{shard.index:05d}.manifest.jsonl"
        try:
            store.download(store.layout.shard(batch.batch_id, shard.index, "manifest"), local)
        except (InputError, StorageError) as exc:
            why = f"shard {shard.index}'s rows could not be read ({exc})"
        else:
            with open(local, encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        manifest.add(ManifestRow.model_validate_json(line))
            local.unlink()
            return
    reason = why if state == ItemState.CANCELLED else (
        f"{why}; every job it paid for is in the ledger: `flashgen resume {batch.batch_id}` "
        "finishes it")
    for item in ShardPlan.read(shard.path, batch.options.model_id).iter_items():
        manifest.add(ManifestRow(line=item.line, fingerprint=item.fingerprint,
                                 prompt=item.inputs.get("prompt"), seed=item.inputs.get("seed"),
                                 aspect_ratio=item.inputs.get("aspect_ratio"), state=state,
                                 reason=reason))
