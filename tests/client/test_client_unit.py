"""RunComfyClient against a scripted fake API (httpx.MockTransport): every branch of policy."""

from __future__ import annotations

import httpx
import pytest
from client_fakes import API, TOKEN, Script, answer, local_outputs, problem
from pydantic import SecretStr

from flashgen import client as client_module
from flashgen import timing
from flashgen.client import DEFAULT_RETRIES, RunComfyClient
from flashgen.errors import (
    AccountError,
    AmbiguousSubmissionError,
    AuthenticationError,
    DownloadError,
    InputError,
    JobCancelledError,
    JobDeadlineError,
    JobError,
    JobFailedError,
    NotFoundError,
    RateLimitedError,
    RejectedInputError,
    TransientApiError,
)
from flashgen.models import DEFAULT_MODEL, CancelOutcome, JobResult
from flashgen.polling import PollLog, PollSchedule
from flashgen.settings import Settings, Token
from flashgen.timing import Backoff

HANDLE = {
    "request_id": "req-1",
    "status_url": f"{API}/v1/requests/req-1/status",
    "result_url": f"{API}/v1/requests/req-1/result",
    "cancel_url": f"{API}/v1/requests/req-1/cancel",
}
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100


def client_for(script: Script, **kw) -> RunComfyClient:
    return RunComfyClient(TOKEN, API, transport=script.transport,
                          **{"outputs": local_outputs(), **kw})


def status(state: str, **extra) -> httpx.Response:
    return answer(200, {"request_id": "req-1", "status": state, **extra})


# --- construction and secrecy -------------------------------------------------------------


def test_missing_token_fails_at_construction_naming_where_to_put_one() -> None:
    with pytest.raises(AuthenticationError) as caught:
        RunComfyClient.from_settings(Settings(base_url=API))
    for hint in ("RUNCOMFY_API_TOKEN", "'runcomfy-api-token'", "flashgen provision"):
        assert hint in str(caught.value)
    with pytest.raises(AuthenticationError):
        RunComfyClient("  ", API)


async def test_token_from_settings_and_explicit_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", "from-env")
    monkeypatch.setenv("RUNCOMFY_BASE_URL", API)
    settings = Settings()
    script = Script(status("in_queue"))
    async with RunComfyClient.from_settings(settings, transport=script.transport) as client:
        await client.status("req-1")
    async with RunComfyClient.from_settings(settings, SecretStr("explicit"),
                                            transport=script.transport) as client:
        await client.status("req-1")
    assert [r.headers["authorization"] for r in script.requests] == [
        "Bearer from-env", "Bearer explicit"]
    assert str(script.requests[0].url).startswith(API)


async def test_poll_bounds_prior_and_caps_come_from_the_settings() -> None:
    settings = Settings(base_url=API, poll_initial=0.2, poll_maximum=0.4, job_time_prior=3.0,
                        max_image_bytes=1000)
    script = file_host(b"\0" * 2000)
    async with RunComfyClient.from_settings(settings, TOKEN, transport=script.transport,
                                            outputs=local_outputs()) as client:
        assert client.estimator.expected() == 3.0
        assert (client._poll.initial, client._poll.maximum) == (0.2, 0.4)
        with pytest.raises(DownloadError, match="1000-byte cap"):
            await client.download("https://cdn.test/big.png")


async def test_a_rejected_token_names_its_source_and_flashgen_provision() -> None:
    script = Script(problem(401, 401001, "invalid token"))
    from_env = RunComfyClient.from_settings(Settings(base_url=API, api_token=SecretStr(TOKEN)),
                                            transport=script.transport)
    block = Token(TOKEN, source="the Prefect Secret block 'runcomfy-api-token'")
    from_block = RunComfyClient(block, API, transport=script.transport)
    for client, source in ((from_env, "RUNCOMFY_API_TOKEN"),
                           (from_block, "the Prefect Secret block 'runcomfy-api-token'")):
        async with client:
            with pytest.raises(AuthenticationError) as caught:
                await client.status("req-1")
        assert f"rejected the token from {source}" in str(caught.value)
        assert "flashgen provision" in str(caught.value)


def test_repr_never_shows_the_token() -> None:
    client = RunComfyClient(TOKEN, API)
    assert TOKEN not in repr(client)
    assert TOKEN not in repr(vars(client))


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="base_url"):
        RunComfyClient(TOKEN, "ftp://files.example")


# --- submit --------------------------------------------------------------------------------


async def test_submit_validates_before_sending() -> None:
    script = Script(answer(200, HANDLE))
    async with client_for(script) as client:
        with pytest.raises(InputError) as caught:
            await client.submit(DEFAULT_MODEL, {"prompt": "p", "aspect_ratio": "7:3"})
    assert caught.value.field == "aspect_ratio"
    assert script.requests == []


async def test_submit_sends_normalised_inputs_with_the_token() -> None:
    script = Script(answer(200, HANDLE))
    async with client_for(script) as client:
        handle = await client.submit(DEFAULT_MODEL, {"prompt": "p", "aspect_ratio": "9:16"})
    assert handle.request_id == "req-1"
    (sent,) = script.requests
    assert sent.method == "POST"
    assert sent.url.path == f"/v1/models/{DEFAULT_MODEL}"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert b'"810:1440 (9:16)"' in sent.content


@pytest.mark.parametrize("unsent", [httpx.ConnectError("refused"),
                                    httpx.ConnectTimeout("slow dns"),
                                    httpx.PoolTimeout("pool full")])
async def test_submit_retries_failures_that_prove_nothing_was_sent(unsent: Exception) -> None:
    script = Script(unsent, answer(200, HANDLE))
    async with client_for(script) as client:
        assert (await client.submit(DEFAULT_MODEL, {"prompt": "p"})).request_id == "req-1"
    assert len(script.requests) == 2
    assert len(timing.recorded_sleeps()) == 1


async def test_submit_429_waits_as_retry_after_says() -> None:
    script = Script(problem(429, 429001, "slow down", headers={"Retry-After": "3"}),
                    answer(200, HANDLE))
    async with client_for(script) as client:
        await client.submit(DEFAULT_MODEL, {"prompt": "p"})
    assert timing.recorded_sleeps() == [3.0]
    assert len(script.requests) == 2


@pytest.mark.parametrize(
    "lost",
    [
        httpx.ReadTimeout("no answer"),
        httpx.RemoteProtocolError("peer closed connection"),
        httpx.ReadError("connection reset"),
        httpx.WriteTimeout("stuck mid-body"),
        RuntimeError("the transport broke in a new way"),
        problem(500, 500001, "server error"),
        problem(502, 502000, "bad gateway"),
        problem(503, 503000, "unavailable"),
        problem(504, 504000, "gateway timeout"),
        answer(200, text="<html>not json</html>"),
        answer(200, {"unexpected": "shape"}),
    ],
    ids=lambda s: type(s).__name__ if isinstance(s, Exception) else f"http{s.status_code}",
)
async def test_submit_with_no_usable_answer_is_ambiguous_and_never_resent(lost) -> None:
    script = Script(lost, answer(200, HANDLE))
    async with client_for(script) as client:
        with pytest.raises(AmbiguousSubmissionError) as caught:
            await client.submit(DEFAULT_MODEL, {"prompt": "p"})
    assert len(script.requests) == 1
    assert not caught.value.transient
    assert timing.recorded_sleeps() == []


async def test_submit_401_fails_at_once_and_never_echoes_the_token() -> None:
    echo = problem(401, 401001, f"invalid token {TOKEN}", detail={"token": TOKEN})
    script = Script(echo)
    async with client_for(script) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.submit(DEFAULT_MODEL, {"prompt": "p"})
    error = caught.value
    assert len(script.requests) == 1
    assert "rejected the token" in str(error) and "RUNCOMFY_API_TOKEN" in str(error)
    assert error.status_code == 401 and error.error_code == 401001
    assert TOKEN not in str(error) and TOKEN not in repr(error.detail)


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (problem(403, 403003, "forbidden"), AuthenticationError),
        (problem(404, 404001, "unknown model"), NotFoundError),
        (problem(422, 422001, "bad input", detail=[{"loc": ["seed"], "msg": "int"}]),
         RejectedInputError),
        (problem(402, 10001, "insufficient funds"), AccountError),
        (problem(400, 10002, "model disabled"), AccountError),
        (problem(410, 10003, "deployment deleted"), AccountError),
    ],
)
async def test_submit_permanent_errors_are_not_retried(response, kind) -> None:
    script = Script(response, answer(200, HANDLE))
    async with client_for(script) as client:
        with pytest.raises(kind) as caught:
            await client.submit(DEFAULT_MODEL, {"prompt": "p"})
    assert len(script.requests) == 1
    assert not caught.value.transient
    if kind is RejectedInputError:
        assert caught.value.detail == [{"loc": ["seed"], "msg": "int"}]
        assert "seed" in str(caught.value)


# --- status / result: safe to repeat ------------------------------------------------------


@pytest.mark.parametrize(
    "blip",
    [
        problem(500, 500001, "server error"),
        problem(503, 503000, "unavailable"),
        answer(200, text="{not json"),
        answer(200, ["a", "list"]),
        answer(200, {"request_id": "req-1"}),  # no status
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("dropped"),
    ],
    ids=lambda s: type(s).__name__ if isinstance(s, Exception) else f"http{s.status_code}",
)
async def test_status_retries_blips_then_succeeds(blip) -> None:
    script = Script(blip, blip, status("in_progress"))
    async with client_for(script) as client:
        assert (await client.status("req-1")).status == "in_progress"
    assert len(script.requests) == 3
    first, second = timing.recorded_sleeps()
    assert 0.5 * 0.75 <= first <= 0.5 and 1.0 * 0.75 <= second <= 1.0  # backoff with jitter


async def test_status_gives_up_after_the_attempts_naming_the_request() -> None:
    script = Script(problem(502, 502000, "bad gateway"))
    async with client_for(script, retries={"status": Backoff(attempts=5)}) as client:
        with pytest.raises(TransientApiError) as caught:
            await client.status("req-1")
    assert len(script.requests) == 5
    assert caught.value.transient and caught.value.request_id == "req-1"
    assert "req-1" in str(caught.value)


@pytest.mark.parametrize(
    ("call", "attempts"),
    [("status", 4), ("result", 4), ("cancel", 3), ("submit", 4), ("download", 3)],
)
async def test_each_call_is_attempted_exactly_as_the_retry_table_says(
    call: str, attempts: int
) -> None:
    """The module docstring's table: a server that never recovers gets exactly N tries."""
    down = httpx.ConnectError("refused") if call == "submit" else problem(503, 503000, "down")
    script = Script(down)
    async with client_for(script) as client:
        with pytest.raises((TransientApiError, DownloadError)) as caught:
            if call == "submit":
                await client.submit(DEFAULT_MODEL, {"prompt": "p"})
            elif call == "download":
                await client.download("https://cdn.test/x.png")
            else:
                await getattr(client, call)("req-1")
    assert caught.value.transient
    assert len(script.requests) == attempts == DEFAULT_RETRIES[call].attempts
    row = next(line for line in client_module.__doc__.splitlines()
               if line.strip().startswith(call + " "))
    assert row.split()[1] == str(attempts)
    assert sum(timing.recorded_sleeps()) <= DEFAULT_RETRIES[call].budget


async def test_status_429_beyond_the_budget_is_raised_with_retry_after() -> None:
    script = Script(problem(429, 429001, "later", headers={"Retry-After": "600"}))
    async with client_for(script) as client:
        with pytest.raises(RateLimitedError) as caught:
            await client.status("req-1")
    assert caught.value.retry_after == 600 and caught.value.transient
    assert len(script.requests) == 1


async def test_retry_after_as_an_http_date() -> None:
    script = Script(problem(429, 429001, "later",
                            headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
                    status("in_queue"))
    async with client_for(script) as client:
        await client.status("req-1")
    assert timing.recorded_sleeps() == [0.0]  # a date in the past: go now


@pytest.mark.parametrize(("code", "kind"), [(401, AuthenticationError), (403, AuthenticationError),
                                            (404, NotFoundError), (422, RejectedInputError)])
async def test_status_permanent_errors_are_not_retried(code: int, kind: type) -> None:
    script = Script(problem(code, code * 1000 + 1, "no"))
    async with client_for(script) as client:
        with pytest.raises(kind) as caught:
            await client.status("req-1")
    assert len(script.requests) == 1
    assert caught.value.request_id == "req-1"


async def test_request_ids_are_checked_and_quoted() -> None:
    script = Script(status("in_queue"))
    async with client_for(script) as client:
        with pytest.raises(InputError):
            await client.status("")
        await client.status("a/b")
    assert script.requests[0].url.raw_path == b"/v1/requests/a%2Fb/status"


async def test_result_collects_every_output_uri() -> None:
    body = {"request_id": "req-1", "status": "completed",
            "output": {"images": ["https://cdn.test/a.png", "https://cdn.test/b.png"],
                       "video": "https://cdn.test/c.mp4"}}
    script = Script(answer(200, body))
    async with client_for(script) as client:
        result = await client.result("req-1")
    assert result.outputs == [("https://cdn.test/a.png", "image"),
                              ("https://cdn.test/b.png", "image"),
                              ("https://cdn.test/c.mp4", "video")]


# --- cancel ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("responses", "outcome"),
    [
        ([answer(200, {"request_id": "req-1", "status": "cancelled"})], CancelOutcome.CANCELLED),
        ([problem(409, 409001, "running", detail={"status": "in_progress"})],
         CancelOutcome.NOT_CANCELLABLE),
        ([problem(409, 409001, "done", detail={"status": "completed"})],
         CancelOutcome.ALREADY_FINISHED),
        ([problem(400, 400001, "done", detail={"status": "failed"})],
         CancelOutcome.ALREADY_FINISHED),
        ([problem(409, 409001, "done", detail={"status": "cancelled"})],
         CancelOutcome.ALREADY_FINISHED),
        ([problem(409, 409001, "no detail"), status("in_progress")],
         CancelOutcome.NOT_CANCELLABLE),
        ([problem(409, 409001, "no detail"), status("succeeded")],
         CancelOutcome.ALREADY_FINISHED),
        ([problem(503, 503000, "busy"), answer(200, {"status": "cancelled"})],
         CancelOutcome.CANCELLED),
    ],
)
async def test_cancel_outcomes(responses, outcome) -> None:
    script = Script(*responses)
    async with client_for(script) as client:
        assert await client.cancel("req-1") is outcome
    assert script.requests[0].method == "POST"
    assert script.requests[0].url.path == "/v1/requests/req-1/cancel"


# --- wait -----------------------------------------------------------------------------------


async def test_wait_polls_through_unknown_states_until_completed() -> None:
    script = Script(status("in_queue", queue_position=2), status("in_queue", queue_position=1),
                    status("warming_up"), status("in_progress"), status("completed"))
    log = PollLog()
    async with client_for(script) as client:
        done = await client.wait("req-1", timeout=60, on_status=log)
    assert done.status == "completed"
    assert log.polls == 5 == len(script.requests)
    assert len(timing.recorded_sleeps()) == 4


async def test_wait_accepts_an_async_callback() -> None:
    seen = []

    async def note(s) -> None:
        seen.append(s.status)

    script = Script(status("in_progress"), status("completed"))
    async with client_for(script) as client:
        await client.wait("req-1", on_status=note)
    assert seen == ["in_progress", "completed"]


async def test_wait_raises_job_failed_with_the_error_object() -> None:
    error = {"type": "oom", "message": "out of memory"}
    script = Script(status("in_progress"), status("failed", error=error))
    async with client_for(script) as client:
        with pytest.raises(JobFailedError) as caught:
            await client.wait("req-1")
    assert caught.value.error == error and caught.value.request_id == "req-1"
    assert not caught.value.transient


async def test_wait_raises_job_cancelled() -> None:
    script = Script(status("in_queue"), status("canceled"))
    async with client_for(script) as client:
        with pytest.raises(JobCancelledError):
            await client.wait("req-1")


async def test_wait_raises_at_the_deadline_and_polls_a_bounded_number_of_times() -> None:
    script = Script(status("in_progress"))
    started = timing.now()
    async with client_for(script, poll=PollSchedule(initial=1.0, maximum=5.0)) as client:
        with pytest.raises(JobDeadlineError) as caught:
            await client.wait("req-1", timeout=30)
    assert caught.value.transient and caught.value.request_id == "req-1"
    assert timing.now() - started == pytest.approx(30, abs=1e-9)  # the clock is virtual
    # A look at once, one every quarter of the 5 s prior up to 4.75 s, then every 5 % of
    # the time it has run: 4.75 * 1.05 ** 38 > 30, so 43 polls at most.
    assert len(script.requests) <= 43
    gaps = timing.recorded_sleeps()
    assert gaps[:4] == pytest.approx([1.25, 1.25, 1.25, 1.0])
    close = gaps[4:-1]  # the last gap is cut short by the deadline
    assert close == sorted(close) and close[0] == pytest.approx(0.05 * 5.0)


# --- download -------------------------------------------------------------------------------


def file_host(content: bytes = PNG, content_type: str = "image/png") -> Script:
    return Script(httpx.Response(200, content=content, headers={"content-type": content_type}))


async def test_download_sends_no_token_even_to_the_api_origin() -> None:
    script = file_host()
    async with client_for(script) as client:
        got = await client.download("https://cdn.test/x.png")
        await client.download(f"{API}/files/x.png")
    assert got.content == PNG and got.size == len(PNG) and got.content_type == "image/png"
    assert all("authorization" not in r.headers for r in script.requests)
    assert PNG not in repr(got).encode()


async def test_download_refuses_the_wrong_content_type_for_good() -> None:
    script = file_host(b"<html>", "text/html")
    async with client_for(script) as client:
        with pytest.raises(DownloadError, match="content type") as caught:
            await client.download("https://cdn.test/x.png", request_id="req-1")
    assert not caught.value.transient and caught.value.request_id == "req-1"
    assert len(script.requests) == 1


async def test_download_checks_videos_as_videos() -> None:
    script = file_host(b"\0" * 10, "video/mp4")
    async with client_for(script) as client:
        assert (await client.download("https://cdn.test/x.mp4", kind="video")).size == 10
        with pytest.raises(DownloadError):
            await client.download("https://cdn.test/x.mp4", kind="image")


async def test_download_cap_by_declared_length() -> None:
    script = file_host(b"\0" * 2000)
    async with client_for(script, max_image_bytes=1000) as client:
        with pytest.raises(DownloadError, match="cap") as caught:
            await client.download("https://cdn.test/big.png")
    assert not caught.value.transient and len(script.requests) == 1


async def test_download_cap_aborts_a_stream_without_length_as_soon_as_passed() -> None:
    sent = []

    async def chunks():
        for _ in range(100):
            sent.append(1)
            yield b"\0" * 100

    script = Script(lambda request: httpx.Response(
        200, content=chunks(), headers={"content-type": "image/png"}))
    async with client_for(script, max_image_bytes=1000) as client:
        with pytest.raises(DownloadError, match="cap"):
            await client.download("https://cdn.test/endless.png")
    assert len(sent) == 11  # the 11th chunk passed the cap; nothing more was read


@pytest.mark.parametrize("code", [403, 404])
async def test_download_expired_link_is_not_retried_and_says_the_status(code: int) -> None:
    script = Script(httpx.Response(code))
    async with client_for(script) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download("https://cdn.test/x.png?X-Signature=secret", request_id="r")
    assert caught.value.status_code == code and not caught.value.transient
    assert "secret" not in str(caught.value)  # presigned query strings stay out of messages
    assert len(script.requests) == 1


async def test_download_retries_5xx_and_transport_errors() -> None:
    script = Script(httpx.Response(503), httpx.ReadError("reset"), *file_host().steps)
    async with client_for(script) as client:
        assert (await client.download("https://cdn.test/x.png")).content == PNG
    assert len(script.requests) == 3

    script = Script(httpx.Response(502))
    async with client_for(script) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download("https://cdn.test/x.png")
    assert caught.value.transient
    assert len(script.requests) == DEFAULT_RETRIES["download"].attempts == 3


# --- fetch_outputs --------------------------------------------------------------------------


def completed(*uris: str) -> httpx.Response:
    return answer(200, {"request_id": "req-1", "status": "completed",
                        "output": {"images": list(uris)}})


async def test_fetch_outputs_refreshes_an_expired_link_once() -> None:
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/result"):
            return completed("https://cdn.test/fresh.png")
        if request.url.path == "/stale.png":
            return httpx.Response(403)
        return httpx.Response(200, content=PNG, headers={"content-type": "image/png"})

    script = Script(route)
    stale = JobResult.model_validate(
        {"request_id": "req-1", "status": "completed", "output": {"image": "https://cdn.test/stale.png"}})
    async with client_for(script) as client:
        (got,) = await client.fetch_outputs("req-1", stale)
    assert got.uri == "https://cdn.test/fresh.png"
    assert [r.url.path for r in script.requests] == [
        "/stale.png", "/v1/requests/req-1/result", "/fresh.png"]


async def test_fetch_outputs_not_completed_is_a_job_error() -> None:
    script = Script(status("in_queue"))
    async with client_for(script) as client:
        with pytest.raises(JobError) as caught:
            await client.fetch_outputs("req-1")
    assert caught.value.transient and caught.value.request_id == "req-1"
