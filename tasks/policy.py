"""The retry policy every flashgen task shares: transient errors only, backoff with jitter.

Which layer retries what (one layer per concern):

- an HTTP call is retried by the client (its own table, ``flashgen.client``);
- an S3 call by botocore (standard mode, ``storage.S3_ATTEMPTS``); a request_id by the ledger
  (``flashgen.ledger.RECORD_ATTEMPTS``), because it may be the only copy;
- a task is retried by Prefect (``RETRIES`` times) only when its error is transient and a
  retry cannot pay twice: the submit task asks the ledger first, so its retry resumes a
  known request_id instead of resending.
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flashgen.errors import JobError, is_transient

RETRIES = 3


async def only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry when the failure is transient and retrying cannot pay twice.

    A job that failed, was cancelled or outlived its deadline is a fact, not a hiccup:
    retrying the task would not change it.
    """
    try:
        await state.result()
    except Exception as exc:  # the task's own exception, re-raised by result()
        return is_transient(exc) and not isinstance(exc, JobError)
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
        "retry_condition_fn": only_transient,
        "cache_policy": NO_CACHE,
        "persist_result": False,
    }
    options.update(overrides)
    return options
