"""What RunComfy's Rust CLI expects (docs/PROTOCOL-NOTES.md §4), each fact once, run with
the client against the emulator."""

from __future__ import annotations

import pytest
from emulated import emulated

import flashgen.client
from flashgen.errors import RejectedInputError
from flashgen.models import DEFAULT_MODEL, CancelOutcome

WAIT = 3600.0
FOX = {"prompt": "a red fox in snow", "aspect_ratio": "9:16", "seed": 7}


@pytest.mark.parametrize("shape", ["outcome and status", "no-status", "legacy-409"])
async def test_cancel_answers_an_outcome_for_queued_running_and_finished_jobs(
        mode: str, shape: str) -> None:
    """2xx ``{request_id, status?, outcome}``; ``not_cancellable`` once a job runs or ended.
    The older 409 refusal is read the same, and nothing here raises."""
    faults = {"no-status": ["cancel:no-status:1"], "legacy-409": ["cancel:legacy-409:1"]}
    async with emulated(mode, workers=1, faults=["job:stall:1"]) as emu, \
            emu.client() as client:
        running = (await client.submit(DEFAULT_MODEL, FOX)).request_id
        queued = (await client.submit(DEFAULT_MODEL, {**FOX, "seed": 8})).request_id
        await emu.set_faults(faults.get(shape, []))
        assert await client.cancel(queued) is CancelOutcome.CANCELLED
        assert await client.cancel(running) is CancelOutcome.NOT_CANCELLABLE
        assert await client.cancel(queued) is CancelOutcome.ALREADY_FINISHED
        stats = await emu.stats()
    assert (stats["cancels"], stats["cancelled"]) == (3, 1)


async def test_invalid_input_is_400_with_an_error_message() -> None:
    async with emulated("in-process", faults=["submit:400:1"]) as emu, emu.client() as client:
        with pytest.raises(RejectedInputError) as caught:
            await client.submit(DEFAULT_MODEL, FOX)
        stats = await emu.stats()
    assert "aspect_ratio invalid" in str(caught.value)  # not "Bad Request"
    assert (caught.value.status_code, stats["submissions"]) == (400, 0)


async def test_invalid_input_is_422_with_a_detail_per_field(monkeypatch) -> None:
    # The client checks the default model's input itself; let the API see a bad one.
    monkeypatch.setattr(flashgen.client, "validate_inputs", lambda model, inputs: inputs)
    async with emulated("in-process") as emu, emu.client() as client:
        with pytest.raises(RejectedInputError) as caught:
            await client.submit(DEFAULT_MODEL, {"prompt": "a fox", "aspect_ratio": "16:9"})
        stats = await emu.stats()
    assert (caught.value.status_code, caught.value.error_code) == (422, 422001)
    assert caught.value.detail[0]["field"] == "aspect_ratio"
    assert stats["submissions"] == 0


async def test_the_catalog_lists_every_model() -> None:
    async with emulated("in-process") as emu, emu.client() as client:
        models = await client.models()
    assert [m.model_id for m in models] == [DEFAULT_MODEL]
    assert models[0].base_price_usd is not None
