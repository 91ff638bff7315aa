"""Plans price by the catalog's base_price_usd; FLASHGEN_PRICE_PER_IMAGE overrides it and
stands in when the catalog does not answer; a model the catalog does not know is refused."""

from __future__ import annotations

import pytest
from emulated import emulated

from flashgen.errors import InputError
from flashgen.models import DEFAULT_MODEL
from flashgen.pricing import price_for


async def test_the_catalog_price_its_override_and_its_fallback() -> None:
    async with emulated("in-process", price_usd=0.03) as emu, emu.client() as client:
        price = await price_for(client, DEFAULT_MODEL)
        assert (price.per_image, price.source) == (
            0.03, f"catalog: base_price_usd of {DEFAULT_MODEL}, per output")
        price = await price_for(client, DEFAULT_MODEL, override=0.1)
        assert price.per_image == 0.1 and "overriding the catalog's 0.03 per output" in (
            price.source)

        await emu.set_faults(["models:503:1"])
        price = await price_for(client, DEFAULT_MODEL, override=0.1)
        assert (price.per_image, price.source) == (
            0.1, "FLASHGEN_PRICE_PER_IMAGE (the catalog did not answer)")
        price = await price_for(client, DEFAULT_MODEL)
        assert price.per_image is None and "set FLASHGEN_PRICE_PER_IMAGE" in price.source


async def test_a_model_the_catalog_does_not_know_is_bad_input() -> None:
    async with emulated("in-process") as emu, emu.client() as client:
        with pytest.raises(InputError) as caught:
            await price_for(client, "no-such/model", override=0.1)
        stats = await emu.stats()
    assert caught.value.field == "model_id"
    assert stats["submissions"] == 0
