"""The retry policy every flashgen task shares: transient errors only, backoff with jitter.

Which layer retries what (one layer per concern):

- an HTTP call is retried by the client (its own table, ``flashgen.client``);
- an S3 call by botocore (standard mode, ``storage.S3_ATTEMPTS``); a request_id by the ledger
  (``flashgen.ledger.RECORD_ATTEMPTS``), because it may be the only copy;
- a task is retried by Prefect (``RETRIES`` times) only for the one failure no layer
  below can see: a download that arrived whole by HTTP but does not decode
  (``CorruptDownloadError``), fetched again from its request_id. Anything else a task
  raises has spent its own layer's budget; repeating it would multiply the attempts.

So a status call is tried at most 4 times, a ledger write 8, a request_id's write 7 × 8.
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flashgen.errors import CorruptDownloadError

RETRIES = 3


async def refetch_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a task only when it met a download that does not decode (see above)."""
    try:
        await state.result()
    except Exception as exc:  # the task's own exception, re-raised by result()
        return isinstance(exc, CorruptDownloadError)
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
        "retry_condition_fn": refetch_only,
        "cache_policy": NO_CACHE,
        "persist_result": False,
    }
    options.update(overrides)
    return options
