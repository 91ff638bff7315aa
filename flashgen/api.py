"""flashgen from Python: one call turns prompts into images in S3 and returns them.

::

    import flashgen

    result = flashgen.generate(["a red fox at dawn", "a lighthouse in fog"],
                               bucket="my-images", defaults={"aspect_ratio": "16:9"})
    result.stored                      # 2
    result.items[0].images[0].url      # https link that opens the image (presigned)
    result.items[0].images[0].sha256   # of the bytes in S3

    result = await flashgen.agenerate(["a red fox"], bucket="my-images")   # the same, async

Both run the ``generate-images`` flow, the one the CLI and the deployments run, so a call
keeps every promise a deployment keeps: the ledger means a rerun never pays twice, a
stored item is skipped, and the manifest, gallery and catalog are written. Inside a
Prefect flow the call is a subflow of that flow's run; elsewhere Prefect runs it with
whatever API it is configured for (``PREFECT_API_URL``, or a temporary local server).

What it costs: every item that is not already stored (and not invalid) is one paid
submission to RunComfy. ``dry_run=True`` pays nothing and returns the plan; ``max_items``
and ``max_cost`` refuse a plan that would pay more, before anything is sent.

Errors: bad options or rows refused as a whole (``strict``) raise ``InputError`` (and a
bad token ``AuthenticationError``) before anything is sent. A batch whose items failed
raises ``BatchFailedError`` (its ``summary`` is the ``BatchResult``) unless
``raise_on_failure=False``; then ``result.raise_for_failures()`` raises it when wanted.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from pydantic import BaseModel

from flashgen.batch_records import read_record_uris, record_uris
from flashgen.errors import BatchFailedError, FlashgenError, InputError
from flashgen.models import DEFAULT_MODEL
from flashgen.options import BatchOptions
from flashgen.outcome import BatchOutcome
from flashgen.records import ImageRecord, ItemState, ManifestRow
from flashgen.settings import get_settings
from flashgen.storage import Store

P = ParamSpec("P")
T = TypeVar("T")


class StoredImage(BaseModel):
    """One stored output: where it is in S3, a link that opens it, and what it is."""

    s3_uri: str
    url: str  # presigned https (or the S3-compatible endpoint's own) GET link
    url_expires_at: datetime
    width: int | None = None
    height: int | None = None
    sha256: str  # hex digest of the bytes in S3
    content_type: str
    size: int


class ItemResult(BaseModel):
    """One input of the batch, in input order, and how it ended."""

    line: int | None = None  # its line (or position) in the input, 1-based
    state: ItemState  # stored, skipped (already stored, or a duplicate), failed, invalid
    reason: str | None = None  # why it failed, was invalid or skipped
    prompt: str | None = None
    seed: int | None = None
    aspect_ratio: str | None = None
    request_id: str | None = None  # the paid job at RunComfy, when there was one
    cost: float | None = None  # USD this batch paid for the job, when the API said
    images: list[StoredImage] = []  # one per stored output (stored and skipped-as-stored items)


class BatchResult(BatchOutcome):
    """What ``flashgen.generate`` returns: the counts, every input's item in input order
    (none for a dry run), and where the batch is (``manifest_uri``, ``gallery_url``, ...)."""

    items: list[ItemResult] = []

    def raise_for_failures(self) -> BatchResult:
        """Raise ``BatchFailedError`` (carrying this result) unless ``ok``; else return self."""
        if not self.ok:
            why = f"cancelled ({self.stopped}), " if self.stopped else ""
            raise BatchFailedError(
                f"batch {self.batch_id}: {why}{self.failed} failed, {self.invalid} invalid, "
                f"{self.cancelled} cancelled of {self.total}; " + "; ".join(self.failures),
                self)
        return self


async def agenerate(prompts: list[str | dict[str, Any]] | None = None, *,
                    source: str | None = None,
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
                    raise_on_failure: bool = True,
                    url_ttl: int | None = None) -> BatchResult:
    """Generate images into S3 and return them, once the batch has ended (``generate`` is
    the same call, blocking).

    Pays for one RunComfy submission per item that is not already stored (none with
    ``dry_run``); a rerun pays only for what is missing.

    Args:
        prompts: the rows: each a prompt, or a dict of input fields (``prompt``,
            ``negative_prompt``, ``aspect_ratio``, ``seed``, ``prompt_extend``, ...).
        source: a prompt file (CSV, JSONL, JSON, YAML), local or ``s3://``; with or
            without ``prompts``.
        defaults: input fields for every row; may hold ``seeds``, ``variations``,
            ``aspect_ratios`` or ``vars`` to expand each row into several images.
        model_id: the RunComfy model; the default model's inputs are checked exactly.
        bucket, prefix: where in S3 (default ``FLASHGEN_BUCKET`` / ``FLASHGEN_PREFIX``).
        concurrency: jobs at the API at once (default ``FLASHGEN_API_CONCURRENCY``).
        force: generate again even when an item is already stored (pays again).
        batch_id: names the manifest; a rerun with the same id and rows resumes it.
        strict: refuse the whole batch (``InputError``) if any row is invalid.
        max_failure_ratio: share of items that may fail before the batch counts as failed.
        resubmit_ambiguous: resend items whose earlier submit lost its answer (may pay twice).
        run_date: fills ``{date}`` in prompts (ISO date); default today (UTC).
        dry_run: plan only: check everything, pay nothing; ``result.plan`` says what a real
            run would pay for.
        max_items, max_cost: refuse (``BudgetError``, an ``InputError``) a plan that would
            pay for more submissions, or cost more, than this; nothing is sent.
        shard_size: split a batch with more items to run than this into shards, each a
            ``generate-shard`` flow run (default ``FLASHGEN_SHARD_SIZE``; None: one run);
            the result is still one batch.
        max_shards_running: shards running at once; ``concurrency`` is shared among them.
        shard_deployment: run the shards on this deployment ("generate-shard/<name>", on
            its work pool's workers); default: as subflows in this process.
        raise_on_failure: raise ``BatchFailedError`` when the batch is not ``ok`` (after
            every success is stored); False returns the result to inspect.
        url_ttl: seconds the image links work (default ``FLASHGEN_GALLERY_URL_TTL``, at
            most 7 days).

    Returns:
        The ``BatchResult``: counts, one ``ItemResult`` per input in input order, with its
        images' S3 URIs, links, sizes and SHA-256.
    """
    from flashgen.flows.generate import generate_images  # Prefect loads only when called

    params = dict(source=source, prompts=prompts, defaults=defaults, model_id=model_id,
                  bucket=bucket, prefix=prefix, concurrency=concurrency, force=force,
                  batch_id=batch_id, strict=strict, max_failure_ratio=max_failure_ratio,
                  resubmit_ambiguous=resubmit_ambiguous, run_date=run_date, dry_run=dry_run,
                  max_items=max_items, max_cost=max_cost, shard_size=shard_size,
                  max_shards_running=max_shards_running, shard_deployment=shard_deployment)
    if url_ttl is not None and not 1 <= url_ttl <= 7 * 24 * 3600:
        raise InputError(f"url_ttl: must be 1 to 604800 seconds (7 days), got {url_ttl}",
                         field="url_ttl")
    summary = await run_flow(generate_images, **params)
    settings = get_settings()
    result = await asyncio.to_thread(
        _result, summary, Store.from_settings(settings, bucket=bucket, prefix=prefix),
        url_ttl or settings.gallery_url_ttl)
    return result.raise_for_failures() if raise_on_failure else result


def blocking(function: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """``function``'s synchronous twin: the same parameters, run to its end by ``run_sync``."""

    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_sync(function(*args, **kwargs))

    return call


generate = blocking(agenerate)
generate.__name__ = generate.__qualname__ = "generate"
generate.__doc__ = """Generate images into S3 and return them; blocks until the batch has ended.

Works in a plain script, inside a running event loop (a Jupyter cell: the batch runs on its
own loop in a worker thread), and inside a Prefect flow, as a subflow of its run. The
arguments, the result and what it pays are ``agenerate``'s: one RunComfy submission per item
that is not already stored (none with ``dry_run``).
"""


async def run_flow(flow: Any, **params: Any) -> Any:
    """Run one of flashgen's batch flows and return its ``BatchSummary``; the one path the
    Python API and the CLI share.

    Options are checked first (``InputError`` before Prefect starts); Prefect's temporary
    server, when no ``PREFECT_API_URL`` is set, is given a busy machine's patience
    (``flashgen.flows.temporary_server``). A run refused before it sent anything raises
    what refused it (``InputError``, ``AuthenticationError``); a run that failed before it
    had a summary raises its error. A batch whose items failed returns its summary, whose
    ``ok`` is False.
    """
    from flashgen.flows.summary import summary_of
    from flashgen.flows.temporary_server import start_temporary_server

    if flow.name == "generate-images":  # its options (the one-image flow checks its own)
        BatchOptions.parse(**params)
    await asyncio.to_thread(start_temporary_server)  # unless PREFECT_API_URL names one
    state = await flow(**params, return_state=True)
    outcome = summary_of(await state.aresult(raise_on_failure=False))
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end from synchronous code, whether or not a loop is running.

    With no loop in this thread (a script, a sync Prefect flow), ``asyncio.run``. With one
    (a notebook cell, an async flow calling sync code), a fresh loop in a worker thread,
    with this thread's context copied so Prefect's run context makes the batch a subflow.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    context = contextvars.copy_context()
    with ThreadPoolExecutor(1, thread_name_prefix="flashgen-generate") as pool:
        return pool.submit(context.run, asyncio.run, coroutine).result()


def _result(summary: Any, store: Store, url_ttl: int) -> BatchResult:
    """The flow's summary, with every input's row read from the batch's manifest and every
    stored image's record, and a link to open it."""
    fields = {name: getattr(summary, name) for name in BatchOutcome.model_fields}
    if summary.dry_run or not summary.manifest_uri:
        return BatchResult(**fields)
    rows = sorted(store.read_manifest(summary.batch_id), key=lambda r: r.line or 0)
    records = read_record_uris(store, [uri for row in rows for uri in record_uris(row)])
    expires_at = datetime.now(UTC) + timedelta(seconds=url_ttl)
    items = [_item(row, records, store, url_ttl, expires_at) for row in rows]
    return BatchResult(items=items, **fields)


def _item(row: ManifestRow, records: dict[str, ImageRecord], store: Store, url_ttl: int,
          expires_at: datetime) -> ItemResult:
    images = []
    for uri in record_uris(row):
        record = records[uri]
        images.append(StoredImage(
            s3_uri=record.image_uri, url=store.presign(record.image_uri, url_ttl),
            url_expires_at=expires_at, width=record.width, height=record.height,
            sha256=record.sha256, content_type=record.content_type, size=record.size))
    return ItemResult(line=row.line, state=row.state, reason=row.reason, prompt=row.prompt,
                      seed=row.seed, aspect_ratio=row.aspect_ratio,
                      request_id=row.request_id, cost=row.cost, images=images)


__all__ = ["BatchResult", "FlashgenError", "ItemResult", "StoredImage", "agenerate",
           "generate", "run_flow", "run_sync"]
