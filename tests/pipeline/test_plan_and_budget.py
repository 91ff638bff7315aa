"""Plan, then pay: a dry run counts what a batch would do and sends nothing; budgets stop a
run before its first submit and count every paid submission, resubmissions included."""

from __future__ import annotations

import pytest

from flashgen.errors import AuthenticationError, BudgetError, InputError
from flashgen.flows.console import print_plan
from flashgen.flows.generate import generate_images
from flashgen.flows.summary import summary_of

ROWS = "\n".join([
    "prompt,seed,aspect_ratio",
    "a red fox,1,16:9",  # stored by the first run below
    "an owl,2,16:9",
    "an owl,2,16:9",  # duplicate of the line above
    "a lighthouse,3,7:3",  # invalid aspect ratio
    "a heron,4,1:1",
]) + "\n"


async def _run(**params):
    state = await generate_images(**params, return_state=True)
    return state, summary_of(await state.result(raise_on_failure=False))


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "plan.csv"
    path.write_text(ROWS)
    return str(path)


async def test_dry_run_counts_everything_and_sends_nothing(pipeline, emulator, prompt_file,
                                                          monkeypatch, capsys):
    from flashgen.settings import get_settings

    state, _ = await _run(prompts=["a red fox"], defaults={"seed": 1, "aspect_ratio": "16:9"})
    assert state.is_completed()
    monkeypatch.setenv("FLASHGEN_PRICE_PER_IMAGE", "0.04")
    get_settings.cache_clear()
    sent = emulator.stats()["submissions"]

    state, summary = await _run(source=prompt_file, dry_run=True, batch_id="plan")
    assert state.is_completed() and summary.dry_run
    plan = summary.plan
    assert (plan.rows, plan.items, plan.invalid, plan.duplicates) == (5, 3, 1, 1)
    assert (plan.stored, plan.to_send, plan.estimated_cost) == (1, 2, 0.08)
    assert emulator.stats()["submissions"] == sent  # nothing sent
    assert not [k for k, *_ in pipeline.list_keys("manifests/") if "plan" in k]
    print_plan(summary)
    printed = capsys.readouterr().out
    for fact in ("new paid submissions:   2", "already stored (skip):  1",
                 "duplicates:             1", "invalid rows:           1",
                 "estimated cost:         0.08",
                 "price per image:        0.04 USD (FLASHGEN_PRICE_PER_IMAGE, overriding the "
                 "catalog's 0.025 per output)"):
        assert fact in printed


async def test_a_plan_prices_by_the_catalog_and_says_so(pipeline, emulator, prompt_file,
                                                        capsys):
    state, summary = await _run(source=prompt_file, dry_run=True)
    assert (summary.plan.price_per_image, summary.plan.estimated_cost) == (0.025, 0.075)
    print_plan(summary)
    printed = capsys.readouterr().out
    assert ("price per image:        0.025 USD (catalog: base_price_usd of "
            "wan-ai/wan-2-2/flash/text-to-image, per output)") in printed
    assert "estimated cost:         0.075 USD" in printed
    assert emulator.stats()["catalog_calls"] == 1


async def test_an_unknown_model_is_refused_before_anything_is_sent(pipeline, emulator):
    state, error = await _run(prompts=["one"], model_id="no-such/model")
    assert state.is_failed() and isinstance(error, InputError)
    assert error.field == "model_id" and "catalog" in str(error)
    assert emulator.stats()["submissions"] == 0


async def test_dry_run_with_a_bad_token_says_so(pipeline, emulator, prompt_file, monkeypatch):
    from flashgen.settings import get_settings

    monkeypatch.setenv("RUNCOMFY_API_TOKEN", "not-the-token-1234")
    get_settings.cache_clear()
    state, error = await _run(source=prompt_file, dry_run=True)
    assert state.is_failed() and isinstance(error, AuthenticationError)
    assert "RUNCOMFY_API_TOKEN" in str(error)
    assert emulator.stats()["submissions"] == 0


async def test_max_items_stops_a_plan_over_it_and_allows_one_at_it(pipeline, emulator):
    prompts = ["one", "two", "three"]
    state, error = await _run(prompts=prompts, max_items=2)
    assert state.is_failed() and isinstance(error, BudgetError)
    assert "3 new paid submission(s), over --max-items 2" in str(error)
    assert emulator.stats()["submissions"] == 0
    state, summary = await _run(prompts=prompts, max_items=3)
    assert state.is_completed() and summary.stored == 3


async def test_a_forced_rerun_that_would_exceed_the_cap_is_refused(pipeline, emulator):
    state, _ = await _run(prompts=["one", "two"])
    assert state.is_completed()
    state, error = await _run(prompts=["one", "two"], force=True, max_items=1)
    assert state.is_failed() and isinstance(error, BudgetError)
    assert emulator.stats()["submissions"] == 2


async def test_max_cost_caps_by_the_catalog_price_or_the_override(pipeline, emulator,
                                                                  monkeypatch):
    from flashgen.settings import get_settings

    # The emulator's catalog: 0.025 USD an image.
    state, error = await _run(prompts=["one", "two", "three"], max_cost=0.05)
    assert isinstance(error, BudgetError) and "over --max-cost 0.05" in str(error)
    assert "catalog" in str(error)
    monkeypatch.setenv("FLASHGEN_PRICE_PER_IMAGE", "0.5")
    get_settings.cache_clear()
    state, error = await _run(prompts=["one", "two", "three"], max_cost=1.0)
    assert isinstance(error, BudgetError) and "over --max-cost 1" in str(error)
    assert emulator.stats()["submissions"] == 0
    state, summary = await _run(prompts=["one", "two"], max_cost=1.0)
    assert state.is_completed() and summary.stored == 2
    assert emulator.stats()["submissions"] == 2
    # The API's reported cost (its catalog price), not the override, is what was spent.
    assert (summary.spend.planned_usd, summary.spend.actual_usd) == (1.0, 0.05)
