"""The retry policy every flashgen task shares: transient errors only, backoff with jitter.

Which layer retries what (one layer per concern):

- an HTTP call is retried by the client (its own table, ``flashgen.client``);
- an S3 call by botocore (standard mode, ``storage.S3_ATTEMPTS``); a request_id by the ledger
  (``flashgen.ledger.RECORD_ATTEMPTS``), because it may be the only copy;
- a status poll that still fails is looked at again by the wait loop, to the job's
  deadline (``RunComfyClient.wait``): the job runs on whatever its poll met;
- a task is retried by Prefect (``RETRIES`` times, with backoff) only for outages longer
  than one call's budget, and only where a retry cannot pay twice:
  ``submit`` after a transient API error that proves no job was made (429, unreachable, or
  HTTP 200 with a server ``error_code``, for longer than the client's budget), or an S3
  outage longer than botocore's (a
  request_id the API already returned waits in the ledger's local journal, and the retry
  asks the ledger first, so it adopts that request_id instead of resending);
  ``fetch-and-store`` after the result or file host stayed unavailable, a download arrived
  whole by HTTP but does not decode (``CorruptDownloadError``), or an S3 outage: fetched
  again from the request_id and written again (its writes are idempotent).
  Anything else a task raises is final for the task: ``AccountError`` (402, or 10001–10003
  in any answer, HTTP 200 included) also halts the run's submits (``SubmitBudget.halt``),
  ``RejectedInputError`` (400 or 422), an ambiguous submit, a cancel's outcome (never an
  error).

So a status call is tried at most 4 times, an S3 call 8 (a ledger write 8 × 4 across task
retries), a result or download 4 × 4, and an unsent submit 4 × 4 (never again once it
may have arrived).
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flashgen.errors import DownloadError, StorageError, TransientApiError, is_transient

RETRIES = 3


# What Prefect retries, per task (see above); every other failure is final for the task.
RETRIED_BY_PREFECT: dict[str, tuple[type[Exception], ...]] = {
    # TransientApiError: the client raises it from a submit only when nothing was sent.
    "submit": (TransientApiError, StorageError),
    # DownloadError: CorruptDownloadError among them; StorageError: the store's S3 writes.
    "fetch-and-store": (TransientApiError, DownloadError, StorageError),
}


def retried(step: str, exc: BaseException) -> bool:
    """Whether the task named ``step`` is tried again after ``exc`` (``RETRIED_BY_PREFECT``).

    >>> slow = StorageError("S3 is slow", transient=True)
    >>> retried("submit", slow), retried("wait", slow), retried("submit", StorageError("403"))
    (True, False, False)
    """
    return isinstance(exc, RETRIED_BY_PREFECT.get(step, ())) and is_transient(exc)


async def worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry only what ``RETRIED_BY_PREFECT`` names."""
    try:
        await state.result()
    except Exception as exc:  # the task's own exception, re-raised by result()
        return retried(task.name, exc)
    return False


def task_options(*, retry_delay: float = 2.0, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``@task`` or ``Task.with_options``: retries on transient errors.

    Caching is off and results stay in memory only: idempotency lives in the S3 ledger,
    which survives crashes that a result cache does not.
    """
    options: dict[str, Any] = {
        "retries": RETRIES,
        "retry_delay_seconds": (exponential_backoff(backoff_factor=retry_delay)
                                if retry_delay else 0),
        "retry_jitter_factor": 0.5 if retry_delay else None,
        "retry_condition_fn": worth_retrying,
        "cache_policy": NO_CACHE,
        "persist_result": False,
    }
    options.update(overrides)
    return options
