"""Run a recorded batch again by its id: ``resume-batch`` and ``retry-batch``.

The batch's own record (``flashgen.reruns``) holds its source, options and defaults, so an
operator names only the batch — from the command line (``flashgen resume BATCH_ID``,
``flashgen retry BATCH_ID [--failed|--ambiguous]``) or from the UI (the ``resume`` and
``retry`` deployments in prefect.yaml take ``batch_id``). The run keeps the batch's id, so
its manifest, gallery and catalog row are brought up to date, and it never pays twice: the
ledger decides each item as in any run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prefect import flow, get_run_logger
from prefect.states import State

from flashgen.errors import AuthenticationError, InputError
from flashgen.reruns import BatchRequest, Rerun, read_request
from flashgen.settings import get_settings
from flashgen.storage import Store
from flashgen.flows.generate import _final, _refused, run_batch
from flashgen.flows.summary import BatchSummary


@flow(name="resume-batch", flow_run_name="resume-{batch_id}", log_prints=True)
async def resume_batch(batch_id: str, bucket: str | None = None,
                       prefix: str | None = None) -> BatchSummary | State:
    """Finish a batch from its record: everything not stored and not failed runs again.

    Stored items are skipped, paid jobs (left running by a cancel or a crash) are fetched,
    not resent; items never sent or cancelled at the API are sent. Failed items keep their
    row: ``retry-batch`` sends them again.
    """
    return await _run_again(batch_id, bucket, prefix, Rerun.resume)


@flow(name="retry-batch", flow_run_name="retry-{batch_id}", log_prints=True)
async def retry_batch(batch_id: str, ambiguous: bool = False, bucket: str | None = None,
                      prefix: str | None = None) -> BatchSummary | State:
    """Send the failed items of a batch again, and only those.

    ``ambiguous``: instead, resend the items whose earlier submit lost its answer. Each of
    those may have been paid for already: this may pay twice, which is why it is asked for.
    """
    return await _run_again(batch_id, bucket, prefix,
                            lambda store, request: Rerun.retry(store, request,
                                                               ambiguous=ambiguous))


async def _run_again(batch_id: str, bucket: str | None, prefix: str | None,
                     choose: Callable[[Store, BatchRequest], Rerun]) -> BatchSummary | State:
    try:
        store = Store.from_settings(get_settings(), bucket=bucket, prefix=prefix)
        request = await asyncio.to_thread(read_request, store, batch_id)
        rerun = await asyncio.to_thread(choose, store, request)
        options = request.rerun_options(
            bucket=store.bucket, prefix=store.prefix,
            resubmit_ambiguous=request.options.resubmit_ambiguous or rerun.resubmit_ambiguous)
        get_run_logger().info("%s of batch %s recorded %s: source %s", rerun.mode, batch_id,
                              request.recorded_at.isoformat(timespec="seconds"),
                              options.source or "inline prompts")
        return _final(await run_batch(options, rows=request.rows, rerun=rerun))
    except (InputError, AuthenticationError) as exc:
        return _refused(exc, batch_id)
