"""What RunComfy's MCP server, Dify and Zapier clients expect (docs/PROTOCOL-NOTES.md §2):
an error may come as HTTP 200 with a top-level ``error_code`` / ``error_message``, and an
error's text is ``error_message`` first. Each fact once, the client against the emulator."""

from __future__ import annotations

import pytest
from emulated import emulated, seed_for

from flashgen.errors import AccountError, TransientApiError
from flashgen.models import DEFAULT_MODEL

FOX = {"prompt": "a red fox in snow", "aspect_ratio": "9:16", "seed": 7}
ROUTES = ["submit", "status", "result", "cancel", "models"]


def _call(client, route: str, rid: str):
    return {"submit": lambda: client.submit(DEFAULT_MODEL, {**FOX, "seed": 9}),
            "status": lambda: client.status(rid), "result": lambda: client.result(rid),
            "cancel": lambda: client.cancel(rid),
            "models": lambda: client.model(DEFAULT_MODEL)}[route]()


@pytest.mark.parametrize("route", ROUTES)
async def test_200_with_an_account_error_code_is_an_account_error(route: str) -> None:
    """Code 10001 in a 200: AccountError at once, never retried; a submit made no job."""
    async with emulated("in-process") as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        await emu.set_faults([f"{route}:account-200:1"])
        with pytest.raises(AccountError) as caught:
            await _call(client, route, rid)
        stats = await emu.stats()
    assert caught.value.error_code == 10001
    assert "insufficient balance" in str(caught.value)
    assert stats["faults_injected"] == {"account-200": 1}
    assert stats["submissions"] == 1  # the first submit only


@pytest.mark.parametrize("route", ROUTES)
async def test_200_with_a_server_error_code_is_transient_and_retried(route: str) -> None:
    """Code 500001 in a 200: the API failed and said so. Safe calls retry it; a submit
    retries it too, because the answer says that no job was made."""
    async with emulated("in-process") as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        await emu.set_faults([f"{route}:error-200:1"])
        with pytest.raises(TransientApiError) as caught:
            await _call(client, route, rid)
        stats = await emu.stats()
    assert "internal error" in str(caught.value)  # its error_message
    attempts = 4 if route in ("submit", "status", "result") else 3
    assert stats["faults_injected"] == {"error-200": attempts}
    assert stats["submissions"] == 1  # no job was made by the error answers


async def test_a_200_error_once_then_a_good_answer_goes_on() -> None:
    async with emulated("in-process") as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        spec = "status:error-200:0.5"
        await emu.set_faults([spec], seed=seed_for("status", spec, ["error-200", None]))
        assert (await client.status(rid)).request_id == rid
        stats = await emu.stats()
    assert stats["faults_injected"] == {"error-200": 1} and stats["status_polls"] == 2
