"""The token never leaves the client: not in errors, models, logs; and where it comes from.

An API may echo the request's ``Authorization`` header back (issue 7.5): in an error body,
in a failed job's ``error``, in any field of an answer. Whatever the server says is
scrubbed at the client's boundary, so none of it reaches an exception, a model or a log.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from client_fakes import API, TOKEN, Script, answer, local_outputs, problem
from emulated import emulated
from pydantic import SecretStr

from flashgen import settings as settings_module
from flashgen.client import RunComfyClient
from flashgen.errors import (
    AuthenticationError,
    DownloadError,
    FlashgenError,
    InputError,
    JobFailedError,
    TransientApiError,
)
from flashgen.models import DEFAULT_MODEL, JobStatus
from flashgen.settings import Settings, resolve_token

ECHO = {
    "code": 500001,
    "message": f"the job failed; request had Authorization: Bearer {TOKEN}",
    "request": {"headers": {"authorization": f"Bearer {TOKEN}"}, "tokens": [TOKEN]},
}


def leaked(*things: object) -> bool:
    """True when the token shows in any of ``things`` (their str and repr)."""
    return any(TOKEN in str(thing) or TOKEN in repr(thing) for thing in things)


def no_token_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return all(TOKEN not in record.getMessage() for record in caplog.records)


@pytest.fixture(autouse=True)
def log_everything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def client_for(script: Script, token: str = TOKEN) -> RunComfyClient:
    return RunComfyClient(token, API, transport=script.transport, outputs=local_outputs())


def echoing(state: str, **extra: object) -> httpx.Response:
    """A status or result answer that echoes the token in ``error`` and an extra field."""
    return answer(200, {"request_id": "req-1", "status": state, "error": ECHO,
                        "debug": f"Bearer {TOKEN}", **extra})


async def test_a_failed_job_that_echoes_the_token_never_passes_it_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[JobStatus] = []
    script = Script(echoing("in_progress"), echoing("failed"))
    async with client_for(script) as client:
        with pytest.raises(JobFailedError) as caught:
            await client.wait("req-1", on_status=seen.append)
    error = caught.value
    assert error.error["request"]["headers"]["authorization"] == "Bearer [token]"
    assert not leaked(error, error.error, vars(error))
    assert seen and not leaked(*(s.model_dump_json() for s in seen))
    assert no_token_logged(caplog)


async def test_status_and_result_models_hold_no_token() -> None:
    script = Script(echoing("failed"), echoing("completed",
                                               output={"image": f"https://cdn.test/{TOKEN}.png"}))
    async with client_for(script) as client:
        status = await client.status("req-1")
        result = await client.result("req-1")
    assert status.error["message"].endswith("Authorization: Bearer [token]")
    assert not leaked(status.model_dump_json(), result.model_dump_json(), result.uris)


@pytest.mark.parametrize(
    "echo",
    [
        problem(503, 503000, f"upstream saw Bearer {TOKEN}", detail={"auth": TOKEN}),
        answer(502, text=f"<html>proxy error for Authorization: Bearer {TOKEN}</html>"),
        answer(200, text=f"{{broken json {TOKEN}"),
        httpx.ReadError(f"connection reset while sending Bearer {TOKEN}"),
    ],
    ids=["json-error", "text-error", "malformed", "transport"],
)
async def test_errors_from_echoing_answers_hold_no_token(
    echo: object, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(echo)
    async with client_for(script) as client:
        with pytest.raises(TransientApiError) as caught:
            await client.status("req-1")
    assert not leaked(caught.value, vars(caught.value))
    assert no_token_logged(caplog)


async def test_download_errors_hold_no_token(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(httpx.ReadError(f"reset by peer, Bearer {TOKEN}"))
    async with client_for(script) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download(f"https://cdn.test/{TOKEN}/x.png")
    assert not leaked(caught.value, vars(caught.value))
    assert no_token_logged(caplog)


async def test_a_url_encoded_echo_is_scrubbed_too() -> None:
    token = "tok/with+odd=chars"
    script = Script(problem(500, 500001, "saw tok%2Fwith%2Bodd%3Dchars in the query"))
    async with client_for(script, token) as client:
        with pytest.raises(TransientApiError) as caught:
            await client.status("req-1")
    assert "tok%2F" not in str(caught.value) and "[token]" in str(caught.value)


@pytest.mark.parametrize("mode", ["in-process", "socket"])
async def test_emulated_echo_auth_job_leaks_nothing_through_the_client(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with emulated(mode, faults=["job:echo-auth:1"]) as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, {"prompt": "a fox"})).request_id
        with pytest.raises(JobFailedError) as caught:
            await client.wait(rid, timeout=60)
        status, result = await client.status(rid), await client.result(rid)
        raw = await emu._admin.get(f"/v1/requests/{rid}/status",
                                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert TOKEN in raw.text  # the fault does leak it on the wire ...
    assert "echo-auth" in caught.value.error["message"]
    assert not leaked(caught.value, caught.value.error)  # ... and the client stops it
    assert not leaked(status.model_dump_json(), result.model_dump_json())
    assert no_token_logged(caplog)


# --- where the token comes from -------------------------------------------------------------


async def test_resolve_token_prefers_the_argument_then_the_environment() -> None:
    settings = Settings(api_token=SecretStr("from-env"))
    explicit = await resolve_token(settings, "explicit")
    from_env = await resolve_token(settings)
    assert (explicit.get_secret_value(), explicit.source) == ("explicit", "the token= argument")
    assert (from_env.get_secret_value(), from_env.source) == ("from-env", "RUNCOMFY_API_TOKEN")
    assert "from-env" not in repr(from_env)


async def test_resolve_token_falls_back_to_the_named_secret_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []

    async def block(name: str) -> str | None:
        asked.append(name)
        return "from-block"

    monkeypatch.setattr(settings_module, "_secret_block", block)
    monkeypatch.setenv("FLASHGEN_TOKEN_BLOCK", "team-token")
    token = await resolve_token(Settings())
    assert asked == ["team-token"]
    assert token.get_secret_value() == "from-block"
    assert token.source == "the Prefect Secret block 'team-token'"


async def test_no_token_anywhere_says_all_three_places(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_block(name: str) -> None:
        return None

    monkeypatch.setattr(settings_module, "_secret_block", no_block)
    with pytest.raises(AuthenticationError) as caught:
        await resolve_token(Settings())
    for hint in ("RUNCOMFY_API_TOKEN", "'runcomfy-api-token'", "flashgen provision"):
        assert hint in str(caught.value)
    assert isinstance(caught.value, FlashgenError) and not caught.value.transient


async def test_a_missing_secret_block_reads_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    async def missing(cls: type, name: str) -> None:
        raise ValueError(f"Unable to find block document named {name}")

    monkeypatch.setattr(Secret, "aload", classmethod(missing))
    assert await settings_module._secret_block("runcomfy-api-token") is None


@pytest.mark.parametrize("value", ["tok\nsecret-part", "tok secret-part", "tök-secret-part",
                                   "tok\x00secret-part"])
async def test_an_unreadable_token_is_refused_naming_its_source_not_its_value(
    value: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token no HTTP header can carry (a line break, a space, a control or non-ASCII
    character) is refused before any request, naming where it came from; before, httpx's
    error quoted the header, token and all, and the probe was retried as transient."""
    with pytest.raises(InputError) as caught:
        await resolve_token(Settings(api_token=SecretStr(value)))
    assert "RUNCOMFY_API_TOKEN" in str(caught.value) and "secret-part" not in str(caught.value)

    async def block(name: str) -> str:
        return value

    monkeypatch.setattr(settings_module, "_secret_block", block)
    with pytest.raises(InputError, match="Secret block 'runcomfy-api-token'") as caught:
        await resolve_token(Settings())
    assert "secret-part" not in str(caught.value)


async def test_a_token_file_is_read_without_its_newline_after_the_environment(
    tmp_path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Kubernetes or Docker secret mounted as a file (FLASHGEN_TOKEN_FILE): read when
    RUNCOMFY_API_TOKEN is unset, before the Secret block, its trailing newline dropped."""
    async def no_block(name: str) -> None:
        raise AssertionError("the Secret block is not asked when a file holds the token")

    monkeypatch.setattr(settings_module, "_secret_block", no_block)
    secret = tmp_path / "runcomfy-token"
    secret.write_text("tok-from-file\n")
    monkeypatch.setenv("FLASHGEN_TOKEN_FILE", str(secret))
    token = await resolve_token(Settings())
    assert token.get_secret_value() == "tok-from-file"
    assert token.source == f"FLASHGEN_TOKEN_FILE ({secret})"
    assert "tok-from-file" not in repr(token)
    from_env = await resolve_token(Settings(api_token=SecretStr("tok-from-env")))
    assert from_env.get_secret_value() == "tok-from-env"


@pytest.mark.parametrize("content", [None, "", "\n", "tok with-secret-part\n", b"\xff\xfe"])
async def test_a_named_token_file_that_gives_no_token_is_refused_naming_it_not_its_content(
    tmp_path, monkeypatch: pytest.MonkeyPatch, content: str | bytes | None,
) -> None:
    """Missing, empty, unreadable or malformed: refused naming FLASHGEN_TOKEN_FILE and its
    path, never a silent fall-back to the Secret block, and never the file's content."""
    async def block(name: str) -> str:
        return "tok-from-block"

    monkeypatch.setattr(settings_module, "_secret_block", block)
    secret = tmp_path / "runcomfy-token"
    if isinstance(content, bytes):
        secret.write_bytes(content)
    elif content is not None:
        secret.write_text(content)
    with pytest.raises((AuthenticationError, InputError)) as caught:
        await resolve_token(Settings(token_file=secret))
    assert f"FLASHGEN_TOKEN_FILE ({secret})" in str(caught.value)
    assert "secret-part" not in str(caught.value) and "tok-from-block" not in str(caught.value)


async def test_surrounding_whitespace_is_not_part_of_the_token() -> None:
    token = await resolve_token(Settings(api_token=SecretStr("  tok-123\n")))
    assert token.get_secret_value() == "tok-123"
