"""What an answer of the API proves: the one reading of its error bodies and statuses.

RunComfy's API, as its own clients read it (docs/PROTOCOL-NOTES.md), reports an error in
one of two ways: an HTTP error status, or HTTP 200 with a top-level ``error_code`` /
``error_message``. The text of an error is in ``error_message``, else ``message``,
``error`` or ``detail``. ``RunComfyClient`` asks this module which of its errors an
answer is; the retry table in ``flashgen.client`` says what each one means to a caller.

    >>> error_in({"error_code": 10001, "error_message": "insufficient balance"})
    ErrorBody(code=10001, text='insufficient balance', detail=None)
    >>> error_in({"request_id": "r1", "status": "in_queue"}) is None
    True
    >>> implied_status(200, 10001), implied_status(200, 404001), implied_status(402, None)
    (402, 404, 402)

A submit is classified by what its answer proves. Any HTTP answer shows that the POST
arrived, so only an answer that says no job was made is "not sent":

    answer                                      proves                 submit raises
    2xx with a request_id                       a job exists           (the handle)
    2xx + error_code/error_message              the API made no job    by its code (below)
    2xx + error body that names a request_id    a job may exist        AmbiguousSubmissionError
    2xx unreadable, or without a request_id     a job may exist        AmbiguousSubmissionError
    1xx, 3xx (a 303 may point at a new job)     a job may exist        AmbiguousSubmissionError
    408, 5xx (a proxy may have passed it on)    a job may exist        AmbiguousSubmissionError
    4xx other than 408                          the API refused it     by its status (below)

and an error's class follows its HTTP status, or, for a 200 error body, the status its
code names (RunComfy's codes are ``status × 1000 + n``; 10001–10003 are the account's):

    401, 403        AuthenticationError      402, 10001–10003   AccountError
    404             NotFoundError            400, 422           RejectedInputError
    429             RateLimitedError         408, 5xx           TransientApiError
    other           PermanentApiError
"""

from __future__ import annotations

from typing import Any, NamedTuple

ACCOUNT_CODES = frozenset({10001, 10002, 10003})  # insufficient funds, model disabled/deleted
PAYMENT_REQUIRED = 402
# Fields that carry an error's text, in the order RunComfy's own clients read them.
TEXT_FIELDS = ("error_message", "message", "error", "detail")


class ErrorBody(NamedTuple):
    code: int | None  # RunComfy's error_code, when it gave one
    text: str  # what it said, from the first of TEXT_FIELDS that has something
    detail: Any  # the ``detail`` field, for RejectedInputError


def error_code(body: Any) -> int | None:
    """The numeric ``error_code`` of a JSON body; None when absent or 0 (some APIs send 0
    for success)."""
    raw = body.get("error_code") if isinstance(body, dict) else None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        return None
    text = str(raw).strip()
    return int(text) or None if text.isdigit() else None


def error_text(body: Any) -> str:
    """The error's text: ``error_message``, then ``message``, ``error``, ``detail``."""
    if isinstance(body, str):
        return body
    if not isinstance(body, dict):
        return "" if body is None else str(body)
    for name in TEXT_FIELDS:
        value = body.get(name)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, dict) and value:  # {"error": {"message": ...}}
            inner = error_text(value)
            if inner:
                return inner
    return ""


def error_in(body: Any) -> ErrorBody | None:
    """The error a 2xx body reports (a top-level ``error_code`` or ``error_message``), or
    None for an ordinary answer. A body with a job's state (``status`` a string such as
    ``"failed"``) is not one, whatever error it describes: the call worked, the job did not.

    >>> error_in({"status": "failed", "error_message": "out of memory"}) is None
    True
    """
    if not isinstance(body, dict) or isinstance(body.get("status"), str):
        return None
    code = error_code(body)
    message = body.get("error_message")
    if code is None and not (isinstance(message, str) and message.strip()):
        return None
    return ErrorBody(code, error_text(body), body.get("detail"))


def error_of(body: Any, reason: str) -> ErrorBody:
    """The error an error answer's body reports; ``reason`` (the HTTP reason phrase)
    stands in for a body that says nothing."""
    return ErrorBody(error_code(body), error_text(body) or reason,
                     body.get("detail") if isinstance(body, dict) else None)


def implied_status(status: int, code: int | None) -> int:
    """The HTTP status an answer means: its own, or for a 2xx error body, the one its
    error code names (500 when the code names none: the API failed, it said so)."""
    if code in ACCOUNT_CODES:
        return PAYMENT_REQUIRED
    if not 200 <= status < 300:
        return status
    if code is not None and 400 <= code // 1000 <= 599:
        return code // 1000
    return 500


def names_request(body: Any) -> str | None:
    """The request_id an answer names, if any (an error body that names one says a job
    may exist after all)."""
    value = body.get("request_id") if isinstance(body, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def proves_nothing_sent(status: int) -> bool:
    """True for an HTTP error status that says the API made no job: a 4xx other than 408.
    (A 2xx error body says so too; see ``error_in``.)"""
    return 400 <= status < 500 and status != 408
