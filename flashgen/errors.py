"""One exception tree for everything flashgen raises.

    FlashgenError
    ├── InputError                  bad input, caught before anything is sent (names the field)
    │   └── BudgetError             a run's plan, or its next submit, is over --max-items/--max-cost
    ├── BatchFailedError            more items failed than allowed; carries the batch's summary
    ├── ApiError                    the API (or the path to it) failed
    │   ├── TransientApiError       worth retrying: 5xx on a safe call, transport errors, bad bodies
    │   │   └── RateLimitedError    429; carries the server's Retry-After
    │   ├── PermanentApiError       retrying cannot help
    │   │   ├── AuthenticationError 401 / 403: token missing, wrong or not allowed
    │   │   ├── NotFoundError       404: unknown model or request
    │   │   ├── RejectedInputError  400 / 422: the API refused the input
    │   │   └── AccountError        402, or 10001 / 10002 / 10003 (also in an HTTP 200):
    │   │                           funds, model disabled or deleted; a run stops submitting
    │   └── AmbiguousSubmissionError  a submit whose answer was lost: it may have created a
    │                                 paid job, so it is never resent without being asked
    ├── JobError                    the API worked, the job did not
    │   ├── JobFailedError          the job ended failed / error
    │   ├── JobCancelledError       the job ended cancelled
    │   ├── JobDeadlineError        still not finished at the caller's deadline (transient)
    │   └── JobLostError            the API answers 404 for its request_id: recorded ``lost``
    ├── DownloadError               an output file could not be fetched or was refused
    │   └── CorruptDownloadError    it arrived, but does not decode: fetch it again (transient)
    └── StorageError                S3 said no (other than a lost race for a claim)

Transient vs permanent is one attribute, ``transient``; ``is_transient(exc)`` is the
predicate that retry loops and Prefect's ``retry_condition_fn`` share.
Every error carries ``request_id`` when one is known. None of them ever holds the token.
"""

from __future__ import annotations

from typing import Any


class FlashgenError(Exception):
    """Base of every flashgen error."""

    transient: bool = False

    def __init__(
        self, message: str, *, request_id: str | None = None, transient: bool | None = None
    ) -> None:
        self.message = message
        self.request_id = request_id
        if transient is not None:
            self.transient = transient
        super().__init__(message)

    def __str__(self) -> str:
        if self.request_id and self.request_id not in self.message:
            return f"{self.message} (request_id={self.request_id})"
        return self.message


class InputError(FlashgenError, ValueError):
    """Input that the model's schema does not allow. ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class BudgetError(InputError):
    """Sending would go over the run's cap on paid submissions; nothing more is sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="budget")


# --- the batch failed -----------------------------------------------------------------


class BatchFailedError(FlashgenError):
    """More items failed than ``max_failure_ratio`` allows. Every success is stored and the
    manifest written first; ``summary`` (a ``flashgen.flows.summary.BatchSummary``) has the counts
    and rows. A failed flow run's state carries this error."""

    def __init__(self, message: str, summary: Any) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:  # pickled with its summary (results, workers)
        return type(self), (self.message, self.summary)


# --- the API failed -------------------------------------------------------------------


class ApiError(FlashgenError):
    """An HTTP exchange with the API went wrong."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: int | None = None,
        detail: Any = None,
        request_id: str | None = None,
        transient: bool | None = None,
    ) -> None:
        self.status_code = status_code
        self.error_code = error_code
        self.detail = detail
        super().__init__(message, request_id=request_id, transient=transient)


class TransientApiError(ApiError):
    transient = True


class RateLimitedError(TransientApiError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class PermanentApiError(ApiError):
    transient = False


class AuthenticationError(PermanentApiError):
    pass


class NotFoundError(PermanentApiError):
    pass


class RejectedInputError(PermanentApiError):
    pass


class AccountError(PermanentApiError):
    pass


class AmbiguousSubmissionError(ApiError):
    """The submit was sent but its answer was lost; a paid job may exist.

    Never transient: resending it could pay twice. The pipeline records it and only an
    explicit option sends it again.
    """

    transient = False


# --- the job failed -------------------------------------------------------------------


class JobError(FlashgenError):
    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        status: str | None = None,
        error: Any = None,
        transient: bool | None = None,
    ) -> None:
        self.status = status
        self.error = error
        super().__init__(message, request_id=request_id, transient=transient)


class JobFailedError(JobError):
    pass


class JobCancelledError(JobError):
    pass


class JobDeadlineError(JobError):
    """The job had not finished by the deadline; it may still finish, so polling may resume."""

    transient = True


class JobLostError(JobError):
    """The API does not know the request_id (expired, or mistyped by hand); the ledger
    records the item ``lost`` until a rerun or ``flashgen ledger resolve`` releases it."""


# --- files and storage ----------------------------------------------------------------


class DownloadError(FlashgenError):
    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        status_code: int | None = None,
        transient: bool | None = None,
    ) -> None:
        self.status_code = status_code
        super().__init__(message, request_id=request_id, transient=transient)


class CorruptDownloadError(DownloadError):
    """The file arrived but is not a whole image (truncated, corrupt): fetch it again.

    Transient: the job is paid and its outputs are still there, so a refetch from the
    request_id may succeed; it is never a reason to resubmit.
    """

    transient = True


class StorageError(FlashgenError):
    pass


def is_transient(exc: BaseException) -> bool:
    """True when trying the same call again may succeed (and cannot pay twice)."""
    return isinstance(exc, FlashgenError) and exc.transient
