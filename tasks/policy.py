"""The retry policy every flashgen task shares: transient errors only, backoff with jitter."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flashgen.errors import JobError, is_transient
from flashgen.settings import get_settings


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


def task_options(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``@task``: retries on transient errors, no caching of inputs.

    Caching is off because idempotency lives in the S3 ledger, which survives crashes
    that a result cache does not (see DESIGN.md, "Never pay twice").
    """
    delay = get_settings().task_retry_delay
    options: dict[str, Any] = {
        "retries": 3,
        "retry_delay_seconds": exponential_backoff(backoff_factor=delay) if delay else 0,
        "retry_jitter_factor": 0.5 if delay else None,
        "retry_condition_fn": only_transient,
        "cache_policy": NO_CACHE,
        "persist_result": False,
    }
    options.update(overrides)
    return options
