"""Typed async client for RunComfy's Model API (the bundled emulator, ``flashgen.emulator``,
serves the same contract).

One ``httpx.AsyncClient`` (one connection pool) per client; open it once per process (or
flow run), from the settings the entry point read::

    from flashgen.client import RunComfyClient
    from flashgen.models import DEFAULT_MODEL
    from flashgen.polling import PollLog
    from flashgen.settings import get_settings, resolve_token

    settings = get_settings()
    async with RunComfyClient.from_settings(settings, await resolve_token(settings)) as client:
        handle = await client.submit(DEFAULT_MODEL, {"prompt": "a red fox", "aspect_ratio": "9:16"})
        log = PollLog()
        await client.wait(handle.request_id, timeout=600, on_status=log)
        files = await client.fetch_outputs(handle.request_id)
        print(log.polls, [f.size for f in files])

Retries, per call. This is the one layer that retries HTTP failures: what it raises has
spent its budget, and a caller (a Prefect task) should not repeat the same call for the
same reason. Waits grow 0.5 s, 1 s, 2 s, … (×2, capped at 30 s, up to 25 % jitter); a
429's Retry-After sets the wait instead, and a wait that would end past the budget is not
taken: the error is raised at once. All waiting goes through ``flashgen.timing``.

    call       attempts  budget  retried on
    submit        4       30 s   only what proves no job was made: cannot connect, pool
                                 timeout, 429, HTTP 200 with a server error_code (500001).
                                 Anything that may have arrived and made a job (read
                                 timeout, reset, 1xx/3xx, 408, 5xx, a 2xx without a
                                 request_id, an error body that names a request_id) raises
                                 AmbiguousSubmissionError at once and is never resent.
    status        4       30 s   transport errors, 408, 429, 5xx, malformed bodies, 200 +
                                 a server error_code
    result        4       30 s   the same
    cancel        3       15 s   the same (cancelling twice is harmless); a job that is
                                 running or finished is an outcome, never an error
    catalog       3       15 s   the same (GET /v1/models, /v1/models/{model_id})
    download      3       30 s   transport errors, 408, 429, 5xx from the file host
    wait          —    timeout=  one ``status`` call per poll (with its retries above);
                                 polls are timed by ``flashgen.polling.PollPlan``; a poll
                                 that still fails is tried again later, to the deadline

Never retried: 401/403 (``AuthenticationError``), 404 (``NotFoundError``), 400 and 422
(``RejectedInputError``), 402 and the account codes 10001–10003 (``AccountError``, also
when they come as HTTP 200 + ``error_code``). An error's text is its ``error_message``,
else ``message``, ``error`` or ``detail``. ``flashgen.answers`` holds this reading of the
API's answers. ``RunComfyClient(retries=...)`` overrides rows of this table
(``DEFAULT_RETRIES``).

Everything the server says (error bodies, status and result answers, a job's ``error``,
keys and values at any depth, transport error texts) passes a ``flashgen.scrub.Scrubber``
before it reaches an exception, a model, a log line or a caller: an API that echoes the
request's ``Authorization`` header, in any form, cannot leak the token through flashgen.
A library's exception is quoted (scrubbed) in ours, never chained to it. The token is
normalised where it is read (``flashgen.settings.normalise_token``), lives as a
``SecretStr``, and is added to requests for the API's own origin only, never to file
hosts.
"""

from __future__ import annotations

import email.utils
import inspect
import logging
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from flashgen import answers, timing
from flashgen.errors import (
    AccountError,
    AmbiguousSubmissionError,
    ApiError,
    AuthenticationError,
    DownloadError,
    InputError,
    JobCancelledError,
    JobDeadlineError,
    JobError,
    JobFailedError,
    NotFoundError,
    PermanentApiError,
    RateLimitedError,
    RejectedInputError,
    TransientApiError,
    is_transient,
)
from flashgen.models import (
    CancelOutcome,
    JobResult,
    JobState,
    JobStatus,
    ModelInfo,
    SubmitHandle,
    validate_inputs,
)
from flashgen.outputs import OutputPolicy, RefusedOutput
from flashgen.polling import JobTimeEstimator, PollPlan, PollSchedule
from flashgen.scrub import Scrubber
from flashgen.settings import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_VIDEO_BYTES,
    TOKEN_ENV,
    Settings,
    normalise_token,
    token_help,
)
from flashgen.timing import Backoff

__all__ = ["DEFAULT_RETRIES", "Download", "FileKind", "RunComfyClient"]

T = TypeVar("T")
AnswerT = TypeVar("AnswerT", JobStatus, JobResult)
FileKind = Literal["image", "video"]
Call = Literal["submit", "status", "result", "cancel", "catalog", "download"]

log = logging.getLogger("flashgen.client")

# The table in the module docstring; keep the two in step.
DEFAULT_RETRIES: Mapping[Call, Backoff] = {
    "submit": Backoff(attempts=4, budget=30.0),
    "status": Backoff(attempts=4, budget=30.0),
    "result": Backoff(attempts=4, budget=30.0),
    "cancel": Backoff(attempts=3, budget=15.0),
    "catalog": Backoff(attempts=3, budget=15.0),
    "download": Backoff(attempts=3, budget=30.0),
}
# How long an idle connection is kept for reuse. Servers close idle ones (uvicorn after
# 5 s, gunicorn after 2 s); a submit sent as the server closes gets no answer and is
# ambiguous, never resent. httpx keeps them 5 s by default, exactly as long as uvicorn;
# under a second stays inside any common server's timeout, and a busy run's connections
# are reused long before that.
KEEPALIVE_SECONDS = 0.75
# Failures raised before a single byte of the request left this process.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_EXCERPT = 300  # characters of a server's text quoted in an error message
MAX_REDIRECTS = 5  # of one output download; each hop is checked like the first URL


@dataclass(frozen=True)
class Download:
    """One fetched output file. ``content`` is left out of ``repr`` (it can be megabytes)."""

    uri: str
    content: bytes = field(repr=False)
    content_type: str
    size: int


class _BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer …`` to requests for the API's own origin, and no other.

    The header is built once, from a token ``normalise_token`` has proved to be visible
    ASCII: no library can refuse it and quote it in its error.
    """

    def __init__(self, token: SecretStr, origin: tuple[str, str, int]) -> None:
        self._header = "Bearer " + token.get_secret_value()
        self._origin = origin

    def __repr__(self) -> str:
        return f"_BearerAuth(origin={self._origin!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if _origin(request.url) == self._origin:
            request.headers["Authorization"] = self._header
        yield request


class RunComfyClient:
    """Async client for the Model API: submit, status, result, cancel, wait, download.

    Build it with ``from_settings`` (the environment, as the entry point read it) or with
    explicit arguments; it reads no environment itself. ``transport`` swaps the outside
    world, e.g. ``httpx.ASGITransport(app=create_app(...))``. ``outputs`` decides which
    output URLs may be fetched (``flashgen.outputs``; default: https from public addresses
    only). ``estimator`` learns how long this client's jobs take and times ``wait``'s
    polls (one per run).
    """

    def __init__(
        self,
        token: str | SecretStr,
        base_url: str = DEFAULT_BASE_URL,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retries: Mapping[Call, Backoff] | None = None,
        poll: PollSchedule | None = None,
        estimator: JobTimeEstimator | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
        outputs: OutputPolicy | None = None,
    ) -> None:
        # Where the token came from, so that a rejection says what to fix.
        self._token_source = getattr(token, "source", "the token passed to RunComfyClient")
        secret = normalise_token(token, self._token_source)  # InputError if malformed
        if secret is None:
            raise AuthenticationError(
                "no RunComfy API token: pass token=, or use "
                "RunComfyClient.from_settings(settings, await resolve_token(settings))"
            )
        self._scrub_any = Scrubber(secret.get_secret_value())
        self._scrub = self._scrub_any.text
        self.base_url = base_url.rstrip("/")
        url = httpx.URL(self.base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        self._auth = _BearerAuth(secret, _origin(url))
        self._retries: dict[str, Backoff] = {**DEFAULT_RETRIES, **(retries or {})}
        self._poll = poll or PollSchedule()
        self.estimator = estimator or JobTimeEstimator()
        self._caps: dict[str, int] = {"image": max_image_bytes, "video": max_video_bytes}
        self._outputs = outputs or OutputPolicy()
        self._submitted: dict[str, float] = {}  # request_id -> timing.now() at its submit
        # No default auth or headers: the token is attached per API call (see _BearerAuth),
        # so a download through the same pool cannot carry it.
        self._http = httpx.AsyncClient(
            base_url=self.base_url, transport=transport, timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS),
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, token: str | SecretStr | None = None, **options: Any
    ) -> Self:
        """A client configured by ``settings``: base URL, poll bounds, job-time prior, caps.

            settings = get_settings()
            client = RunComfyClient.from_settings(settings, await resolve_token(settings))

        ``token`` defaults to ``settings.api_token`` (``RUNCOMFY_API_TOKEN``); the Prefect
        Secret block needs ``await resolve_token(settings)``, which also lets a rejected
        token's error name where it came from. ``options`` go to the constructor
        (``transport``, ``timeout``, ``retries``, ``outputs``: by default the output policy
        of ``FLASHGEN_OUTPUT_NETWORKS``).
        """
        if token is None:
            token = normalise_token(settings.api_token, TOKEN_ENV)
        if token is None or not (
            token.get_secret_value() if isinstance(token, SecretStr) else token
        ).strip():
            raise AuthenticationError(f"no RunComfy API token: {token_help(settings)}")
        return cls(
            token,
            settings.base_url,
            poll=PollSchedule(settings.poll_initial, settings.poll_maximum),
            estimator=JobTimeEstimator(prior=settings.job_time_prior),
            max_image_bytes=settings.max_image_bytes,
            max_video_bytes=settings.max_video_bytes,
            **{"outputs": OutputPolicy(networks=settings.networks_for_outputs), **options},
        )

    def __repr__(self) -> str:
        return f"RunComfyClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # --- submit: never resent once it may have arrived -----------------------------------

    async def submit(self, model_id: str, inputs: dict[str, Any]) -> SubmitHandle:
        """Validate ``inputs`` for ``model_id``, then submit one job.

            handle = await client.submit(DEFAULT_MODEL, {"prompt": "a lighthouse at dusk"})

        Raises ``InputError`` before sending anything, ``AmbiguousSubmissionError`` when the
        job may exist but its answer was lost, and the ``ApiError`` tree otherwise.
        """
        body = validate_inputs(model_id, inputs)
        path = "/v1/models/" + quote(_check_id(model_id, "model_id").strip("/"), safe="/")
        what = f"submit to {model_id}"

        async def once() -> SubmitHandle:
            try:
                response = await self._http.post(path, json=body, auth=self._auth)
            except _UNSENT as exc:
                raise TransientApiError(
                    f"{what}: could not reach the API ({self._error_text(exc)}); nothing was sent"
                ) from None  # the library's text is in ours, scrubbed
            except Exception as exc:  # the request may have arrived: never resend it
                raise AmbiguousSubmissionError(
                    f"{what}: sent, but no answer came back ({self._error_text(exc)}); a job may "
                    "exist and is not resubmitted"
                ) from None  # the library's text is in ours, scrubbed
            return self._submit_answer(response, what)

        handle = await self._retry("submit", once, what)
        self._submitted[handle.request_id] = timing.now()
        log.info("%s: request_id=%s", what, handle.request_id)
        return handle

    # --- safe calls: repeated until they answer ------------------------------------------

    async def status(self, request_id: str) -> JobStatus:
        """The job's current status; ``.state`` says what it means. 4 attempts, 30 s."""
        return await self._call(
            "status",
            "GET",
            _request_path(request_id, "status"),
            lambda _, body: JobStatus.model_validate({"request_id": request_id, **_object(body)}),
            request_id=request_id,
        )

    async def result(self, request_id: str, *, include_cost: bool = False) -> JobResult:
        """The job's result: outputs once completed, else its current state (keep polling).

        ``include_cost`` asks for the job's ``cost`` (USD) too. 4 attempts, 30 s.
        """
        return await self._call(
            "result",
            "GET",
            _request_path(request_id, "result"),
            lambda _, body: JobResult.model_validate({"request_id": request_id, **_object(body)}),
            request_id=request_id,
            params={"include_cost": "true"} if include_cost else None,
        )

    async def model(self, model_id: str) -> ModelInfo:
        """The model's catalog entry: its ``base_price_usd`` per ``price_unit``.

            info = await client.model(DEFAULT_MODEL)   # NotFoundError: no such model

        3 attempts, 15 s.
        """
        path = "/v1/models/" + quote(_check_id(model_id, "model_id").strip("/"), safe="/")
        return await self._call(
            "catalog", "GET", path,
            lambda _, body: ModelInfo.model_validate({"model_id": model_id, **_object(body)}),
            request_id=None, what=f"catalog entry of {model_id}",
        )

    async def models(self) -> list[ModelInfo]:
        """Every model in the catalog (a list, or an object holding one under ``models``
        or ``data``). 3 attempts, 15 s."""
        return await self._call("catalog", "GET", "/v1/models", _model_list,
                                request_id=None, what="model catalog")

    async def cancel(self, request_id: str) -> CancelOutcome:
        """Ask the API to cancel a job; say what happened (never raises for 'too late').

            if await client.cancel(rid) is CancelOutcome.NOT_CANCELLABLE: ...  # it runs on

        The API answers 2xx with ``outcome`` ``cancelled`` or ``not_cancellable`` (and the
        job's ``status``, or not); older answers, a bare ``status`` or a 409 refusal, read
        the same. 3 attempts, 15 s (plus one ``status`` when the answer does not say which
        state a job that was not cancelled is in).
        """
        outcome, current = await self._call(
            "cancel",
            "POST",
            _request_path(request_id, "cancel"),
            _cancel_answer,
            request_id=request_id,
            refusals=(400, 409),
        )
        if outcome == "cancelled":
            return CancelOutcome.CANCELLED
        if current is None:  # not cancelled, and not told why: ask
            try:
                current = (await self.status(request_id)).status
            except ApiError as exc:  # the cancel was answered; the job may still run
                log.warning("cancel of %s: not cancelled, state unknown (%s)", request_id, exc)
                return CancelOutcome.NOT_CANCELLABLE
        state = JobStatus(request_id=request_id, status=current).state
        if state is JobState.CANCELLED and outcome is None:  # the old shape: {status}
            return CancelOutcome.CANCELLED
        if state.terminal:
            return CancelOutcome.ALREADY_FINISHED
        # Running, or anything we cannot read as cancelled: the job may still run.
        return CancelOutcome.NOT_CANCELLABLE

    async def wait(
        self,
        request_id: str,
        *,
        timeout: float | None = None,
        on_status: Callable[[JobStatus], Any] | None = None,
        expected: JobTimeEstimator | None = None,
        submitted_at: float | None = None,
    ) -> JobStatus:
        """Poll until the job completes; return its completed status.

        Polls are timed by a ``PollPlan`` from ``expected`` (default: this client's
        ``estimator``): one look just before the job should end, then close looks until it
        does; a queued job is polled with backoff. Each completed job's run time is
        reported back to the estimator. ``submitted_at`` (a ``timing.now()`` reading) is
        known by itself for jobs this client submitted; for a resumed job the first poll is
        at once. ``on_status`` (sync or async) sees every polled status; a
        ``flashgen.polling.PollLog`` counts polls and times the states::

            log = PollLog()
            await client.wait(rid, timeout=300, on_status=log)

        Raises ``JobFailedError`` (with the job's ``error``), ``JobCancelledError``, or
        ``JobDeadlineError`` once ``timeout`` seconds have passed. Unknown state strings
        are "not finished yet".
        """
        if submitted_at is None:
            submitted_at = self._submitted.get(request_id)
        plan = PollPlan(expected or self.estimator, self._poll, submitted_at=submitted_at)
        deadline = None if timeout is None else timing.now() + timeout
        delay, polls = plan.first_delay(timing.now()), 0
        while True:
            if delay > 0:  # only the first poll of a resumed job comes at once
                await timing.sleep(_within(delay, deadline))
            try:
                status = await self.status(request_id)
            except TransientApiError as exc:
                # The poll spent its own retries, but the job runs on regardless: the wait
                # is the retry here, looking again later until the deadline.
                if deadline is not None and timing.now() >= deadline:
                    raise
                log.warning("status of %s unavailable (%s); looking again", request_id, exc)
                delay = self._poll.maximum
                continue
            polls += 1
            if on_status is not None:
                outcome = on_status(status)
                if inspect.isawaitable(outcome):
                    await outcome
            if status.state.terminal:
                self._submitted.pop(request_id, None)
                plan.finished(status, timing.now())
                return _completed(status, request_id)
            if deadline is not None and timing.now() >= deadline:
                raise JobDeadlineError(
                    f"job {request_id} still {status.status!r} after {timeout}s ({polls} polls)",
                    request_id=request_id, status=status.status,
                )
            delay = plan.next_delay(status, timing.now())

    # --- files: only where outputs live, no token, capped, type-checked ------------------

    async def download(
        self, uri: str, *, kind: FileKind = "image", request_id: str | None = None
    ) -> Download:
        """Fetch one output file without the token, at most ``max_<kind>_bytes`` long.

        The URL, and each redirect's, must pass the output policy first (``flashgen.outputs``):
        a refused one is a permanent ``DownloadError`` and nothing is sent to it.
        403/404 raise ``DownloadError`` with ``status_code`` set (refresh the link and try
        again); a wrong content type or an oversize file is permanent; 5xx and transport
        errors are retried (3 attempts, 30 s), then raised as transient.
        """
        if kind not in self._caps:
            raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
        what = f"download of {self._scrub(_safe_uri(uri))}"
        return await self._retry(
            "download", lambda: self._download_once(uri, kind, request_id, what), what
        )

    async def fetch_outputs(
        self, request_id: str, result: JobResult | None = None
    ) -> list[Download]:
        """Download every output of a completed job, in the result's order.

        An expired link (403/404) makes it fetch the result once more for a fresh link and
        try that file once again; later files then use the fresh links too.
        """
        current = result if result is not None else await self.result(request_id)
        outputs = _completed_outputs(current, request_id)
        files: list[Download] = []
        for index, (uri, kind) in enumerate(outputs):
            try:
                files.append(await self.download(uri, kind=_kind(kind), request_id=request_id))
                continue
            except DownloadError as exc:
                if exc.status_code not in (403, 404):
                    raise
                log.info("%s; fetching a fresh link", exc)
            current = await self.result(request_id)
            outputs = _completed_outputs(current, request_id)
            if index >= len(outputs):
                raise DownloadError(
                    f"output {index} of job {request_id} is gone from the refreshed result",
                    request_id=request_id,
                )
            uri, kind = outputs[index]
            try:
                files.append(await self.download(uri, kind=_kind(kind), request_id=request_id))
            except DownloadError as exc:
                raise DownloadError(
                    f"{exc.message} (after refreshing the link once)",
                    request_id=request_id, status_code=exc.status_code, transient=exc.transient,
                ) from exc
        return files

    # --- plumbing ------------------------------------------------------------------------

    async def _retry(self, call: Call, once: Callable[[], Any], what: str) -> Any:
        """``once()`` under ``call``'s row of the retry table."""
        return await timing.retry(once, on=is_transient, backoff=self._retries[call], what=what)

    async def _call(
        self,
        call: Call,
        method: str,
        path: str,
        parse: Callable[[httpx.Response, Any], T],
        *,
        request_id: str | None,
        refusals: tuple[int, ...] = (),
        params: dict[str, str] | None = None,
        what: str | None = None,
    ) -> T:
        """A safe-to-repeat API call: retried on anything transient, then parsed.

        ``parse`` gets the response and its JSON body, already scrubbed of the token (None
        when the body is not JSON); it raises ``ValueError`` for a body it cannot use.
        ``refusals`` are error statuses that ``parse`` reads as answers (cancel's 409). A
        2xx whose body is an error (``answers.error_in``) raises that error.
        """
        what = what or f"{call} of {request_id}"

        async def once() -> T:
            try:
                response = await self._http.request(method, path, auth=self._auth,
                                                     params=params)
            except Exception as exc:  # safe to repeat, whatever broke on the way
                raise TransientApiError(
                    f"{what}: no answer from the API ({self._error_text(exc)})",
                    request_id=request_id
                ) from None  # the library's text is in ours, scrubbed
            if not (response.is_success or response.status_code in refusals):
                raise self._api_error(response, what=what, request_id=request_id)
            body = self._body(response)
            if response.is_success and answers.error_in(body):
                raise self._api_error(response, what=what, request_id=request_id)
            try:
                return parse(response, body)
            except ValueError:  # not JSON, or not the shape the protocol promises
                raise TransientApiError(
                    f"{what}: HTTP {response.status_code} with a malformed body "
                    f"({self._excerpt(response)})",
                    status_code=response.status_code,
                    request_id=request_id,
                ) from None

        result: T = await self._retry(call, once, what)
        return result

    def _submit_answer(self, response: httpx.Response, what: str) -> SubmitHandle:
        """The handle in a submit's answer, or the error it proves (``flashgen.answers``):
        an answer that does not say no job was made means the job may exist."""
        code = response.status_code
        body = self._body(response)
        if response.is_success and not answers.error_in(body):
            try:
                handle = SubmitHandle.model_validate(_object(body))
                if not answers.names_request(body):
                    raise ValueError("no request_id")
                return handle
            except ValueError:
                raise AmbiguousSubmissionError(
                    f"{what}: HTTP {code} with a malformed body ({self._excerpt(response)}); "
                    "a job may exist and is not resubmitted",
                    status_code=code,
                ) from None
        if not (response.is_success or answers.proves_nothing_sent(code)):
            # 1xx, 3xx, 408, 5xx: it arrived, and nothing says that no job was made.
            error = self._api_error(response, what=what, request_id=None)
            raise AmbiguousSubmissionError(
                f"{error.message}; a job may exist and is not resubmitted",
                status_code=code, error_code=error.error_code, detail=error.detail,
            )
        error = self._api_error(response, what=what, request_id=None)
        named = answers.names_request(body)
        if named:  # an error that names a job: it may exist after all
            raise AmbiguousSubmissionError(
                f"{error.message}; the answer names request {named}: a job may exist and "
                "is not resubmitted",
                status_code=code, error_code=error.error_code, detail=error.detail,
                request_id=named,
            )
        # The API refused it (a 4xx, or a 200 error body): no job was made. A transient
        # one (429, a 200 with a server error code) is retried by the caller's loop.
        raise error

    def _api_error(
        self, response: httpx.Response, *, what: str, request_id: str | None
    ) -> ApiError:
        """The exception for an error answer (an error status, or a 2xx error body), by the
        status it means and RunComfy's error_code (``flashgen.answers``)."""
        code = response.status_code
        error_code, message, detail = _error_fields(response)
        message, detail = _clip(self._scrub(message)), self._scrub_any(detail)
        kw: dict[str, Any] = {
            "status_code": code, "error_code": error_code, "detail": detail,
            "request_id": request_id,
        }
        head = f"{what}: HTTP {code}" + (f" (error_code {error_code})" if error_code else "")
        text = f"{head}: {message}" if message else head
        code = answers.implied_status(code, error_code)
        if code == answers.PAYMENT_REQUIRED:
            return AccountError(f"{text} [account: funds, or model disabled/deleted]", **kw)
        if code in (401, 403):
            return AuthenticationError(
                f"{head}: the API rejected the token from {self._token_source} "
                f"({message or 'no reason given'}); {_token_fix(self._token_source)}",
                **kw,
            )
        if code == 404:
            return NotFoundError(text, **kw)
        if code in (400, 422):
            more = f"; detail: {_clip(repr(detail))}" if detail not in (None, message) else ""
            return RejectedInputError(text + more, **kw)
        if code == 429:
            return RateLimitedError(text, retry_after=_retry_after(response), **kw)
        if code >= 500 or code == 408:
            return TransientApiError(text, **kw)
        return PermanentApiError(text, **kw)

    async def _download_once(
        self, uri: str, kind: str, request_id: str | None, what: str
    ) -> Download:
        """One download, following redirects by hand: each hop is checked by the output
        policy before anything is sent to it."""
        url: str | httpx.URL = uri
        for _ in range(MAX_REDIRECTS + 1):
            try:
                target = await self._outputs.check(url)
            except RefusedOutput as exc:
                raise DownloadError(f"{what}: refused: {self._scrub(str(exc))}",
                                    request_id=request_id, transient=False) from None
            fetched = await self._fetch(target, kind, request_id, what)
            if isinstance(fetched, Download):
                return Download(uri=uri, content=fetched.content,
                                content_type=fetched.content_type, size=fetched.size)
            url = fetched
        raise DownloadError(f"{what}: more than {MAX_REDIRECTS} redirects",
                            request_id=request_id, transient=False)

    async def _fetch(
        self, url: httpx.URL, kind: str, request_id: str | None, what: str
    ) -> Download | httpx.URL:
        """The file at ``url``, or where its redirect points."""
        cap = self._caps[kind]
        try:
            # No auth= here and none on the client: file hosts never see the token.
            async with self._http.stream("GET", url, follow_redirects=False) as response:
                code = response.status_code
                if response.is_redirect:
                    return url.join(response.headers["location"])
                if not response.is_success:
                    raise DownloadError(
                        f"{what}: HTTP {code}",
                        request_id=request_id,
                        status_code=code,
                        transient=code >= 500 or code in (408, 429),
                    )
                content_type = response.headers.get("content-type", "")
                if content_type.split(";")[0].strip().lower().split("/")[0] != kind:
                    raise DownloadError(
                        f"{what}: content type {self._scrub(content_type)!r} is not {kind}/*",
                        request_id=request_id, status_code=code, transient=False,
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise _too_large(what, cap, request_id, code)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > cap:  # stop reading now; leaving the block drops the stream
                        raise _too_large(what, cap, request_id, code)
                    chunks.append(chunk)
        except DownloadError:
            raise
        except Exception as exc:  # a GET: safe to try again
            raise DownloadError(
                f"{what}: {self._error_text(exc)}", request_id=request_id, transient=True
            ) from None  # the library's text is in ours, scrubbed
        return Download(uri=str(url), content=b"".join(chunks), content_type=content_type,
                        size=size)

    def _body(self, response: httpx.Response) -> Any:
        """The answer's JSON, scrubbed of the token; None when it is not JSON (or nested
        past what the JSON decoder takes)."""
        try:
            return self._scrub_any(response.json())
        except (ValueError, RecursionError):
            return None

    def _error_text(self, exc: BaseException) -> str:
        text = _clip(self._scrub(str(exc)))
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def _excerpt(self, response: httpx.Response) -> str:
        return _clip(self._scrub(response.text)) or "empty"


# --- helpers ---------------------------------------------------------------------------


def _within(delay: float, deadline: float | None) -> float:
    """``delay``, cut short to end at the deadline: one last look at the deadline itself."""
    return delay if deadline is None else max(0.0, min(delay, deadline - timing.now()))


def _completed(answer: AnswerT, request_id: str) -> AnswerT:
    """A status or result that ended well; a failed or cancelled end raises its JobError."""
    state = answer.state
    if state is JobState.FAILED:
        # The job's error object, or else an error_message beside its state.
        error = answer.error
        if error is None:
            error = answers.error_text(answer.model_extra or {}) or None
        raise JobFailedError(
            f"job {request_id} ended {answer.status!r}: {error!r}",
            request_id=request_id, status=answer.status, error=error,
        )
    if state is JobState.CANCELLED:
        raise JobCancelledError(
            f"job {request_id} was cancelled", request_id=request_id, status=answer.status
        )
    return answer


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    default = 443 if url.scheme == "https" else 80
    return url.scheme, url.host, url.port or default


def _kind(kind: str) -> FileKind:
    return "video" if kind == "video" else "image"


def _check_id(value: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise InputError(f"{name}: must be a non-empty string without spaces", field=name)
    return value


def _request_path(request_id: str, action: str) -> str:
    return f"/v1/requests/{quote(_check_id(request_id, 'request_id'), safe='')}/{action}"


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    return body


def _cancel_answer(response: httpx.Response, body: Any) -> tuple[str | None, str | None]:
    """(outcome, the job's status) from a cancel answer, each None where it says nothing.

    ``{outcome, status?}`` is the API's answer; ``{status}`` alone is the older one; a 409
    refusal (older still) is ``not_cancellable``, its ``detail.status`` the job's state.
    """
    if response.is_success:
        data = _object(body)
        outcome, status = data.get("outcome"), data.get("status")
        outcome = outcome.strip().lower() if isinstance(outcome, str) else None
        status = status if isinstance(status, str) else None
        if outcome is None and status is None:
            raise ValueError("cancel answer with neither an outcome nor a status")
        return outcome, status
    detail = body.get("detail") if isinstance(body, dict) else None
    status = detail.get("status") if isinstance(detail, dict) else None
    return "not_cancellable", status if isinstance(status, str) else None


def _model_list(response: httpx.Response, body: Any) -> list[ModelInfo]:
    entries = body
    if isinstance(body, dict):
        entries = next((body[k] for k in ("models", "data") if isinstance(body.get(k), list)),
                       None)
    if not isinstance(entries, list):
        raise ValueError("the catalog is not a list of models")
    return [ModelInfo.model_validate(_object(entry)) for entry in entries]


def _token_fix(source: str) -> str:
    """What to do about a rejected token, given where it came from."""
    provision = "`flashgen provision` stores RUNCOMFY_API_TOKEN in the Prefect Secret block"
    if source == TOKEN_ENV:
        return f"check {TOKEN_ENV} ({provision})"
    if "Secret block" in source:
        return f"put a valid token there: set {TOKEN_ENV} and run `flashgen provision`"
    return f"check it, or set {TOKEN_ENV} ({provision})"


def _completed_outputs(result: JobResult, request_id: str) -> list[tuple[str, str]]:
    state = _completed(result, request_id).state
    if state is not JobState.COMPLETED:
        raise JobError(
            f"job {request_id} is {result.status!r}, not completed: wait for it first",
            request_id=request_id, status=result.status, transient=True,
        )
    if not result.outputs:
        raise DownloadError(f"job {request_id} completed without output files",
                            request_id=request_id)
    return result.outputs


def _error_fields(response: httpx.Response) -> tuple[int | None, str, Any]:
    """(error_code, message, detail) from an error body; tolerant of any shape."""
    try:
        body = response.json()
    except ValueError:
        return None, response.text or response.reason_phrase, None
    return answers.error_of(body, response.reason_phrase)


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _too_large(what: str, cap: int, request_id: str | None, code: int) -> DownloadError:
    return DownloadError(
        f"{what}: larger than the {cap}-byte cap; aborted",
        request_id=request_id, status_code=code, transient=False,
    )


def _safe_uri(uri: str) -> str:
    """The URI without its query string (presigned links carry signatures there)."""
    return uri.split("?", 1)[0].split("#", 1)[0]


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 1] + "…"
