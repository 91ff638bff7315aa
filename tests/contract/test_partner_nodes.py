"""What RunComfy's ComfyUI partner nodes expect (docs/PROTOCOL-NOTES.md §3), each fact
once, run with the client against the emulator."""

from __future__ import annotations

import pytest
from emulated import emulated

from flashgen.errors import AccountError, NotFoundError
from flashgen.models import DEFAULT_MODEL

WAIT = 3600.0
FOX = {"prompt": "a red fox in snow", "aspect_ratio": "9:16", "seed": 7}


async def test_a_models_catalog_entry_has_its_price_unit_and_note() -> None:
    async with emulated("in-process", price_usd=0.031) as emu, emu.client() as client:
        info = await client.model(DEFAULT_MODEL)
    assert (info.model_id, info.base_price_usd, info.price_unit) == (DEFAULT_MODEL, 0.031,
                                                                      "output")
    assert info.pricing_note


async def test_an_unknown_model_is_404_in_the_catalog() -> None:
    async with emulated("in-process") as emu, emu.client() as client:
        with pytest.raises(NotFoundError):
            await client.model("no-such/model")


@pytest.mark.parametrize("route", ["submit", "status", "result", "cancel", "models"])
async def test_402_is_an_account_error_on_every_route(route: str) -> None:
    async with emulated("in-process") as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        await emu.set_faults([f"{route}:402:1"])
        call = {"submit": lambda: client.submit(DEFAULT_MODEL, {**FOX, "seed": 9}),
                "status": lambda: client.status(rid), "result": lambda: client.result(rid),
                "cancel": lambda: client.cancel(rid),
                "models": lambda: client.model(DEFAULT_MODEL)}[route]
        with pytest.raises(AccountError) as caught:
            await call()
        stats = await emu.stats()
    assert caught.value.status_code == 402
    assert "insufficient balance" in str(caught.value)  # its error_message
    assert stats["faults_injected"] == {"402": 1}  # never retried
    assert stats["submissions"] == 1


async def test_a_result_with_include_cost_carries_the_jobs_cost() -> None:
    async with emulated("in-process", price_usd=0.04) as emu, emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        await client.wait(rid, timeout=WAIT)
        assert (await client.result(rid)).cost is None  # only when asked for
        assert (await client.result(rid, include_cost=True)).cost == 0.04


async def test_answers_with_fields_the_page_does_not_name_are_read() -> None:
    async with emulated("in-process", faults=["status:extra-fields:1",
                                              "result:extra-fields:1"]) as emu, \
            emu.client() as client:
        rid = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        await client.wait(rid, timeout=WAIT)
        result = await client.result(rid)
        files = await client.fetch_outputs(rid, result)
    assert result.model_extra["instance_id"] == "inst-0001"
    assert len(files) == 1
