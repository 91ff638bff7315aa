"""``run_batch(settings=…)`` governs everything the run builds: the client's polling and its
download cap come from the settings passed in, not from the environment."""

from __future__ import annotations

import pytest
from prefect import flow

from flashgen.emulator import EmulatorConfig
from flashgen.options import BatchOptions
from flashgen.records import ImageRecord
from flashgen.settings import get_settings
from flashgen.flows.generate import run_batch
from tests.pipeline.conftest import TOKEN

JOB_SECONDS = 1.0  # long beside the eager first look (0.05 s), short beside the patient 4 s


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Jobs of a fixed second: a busy machine that delays the eager first look by a few
    tenths must still find the job unfinished (with 0.15 s jobs it sometimes did not)."""
    return EmulatorConfig(workers=4, job_time=JOB_SECONDS, job_time_spread=0, tokens=[TOKEN])


async def _run(settings, prompt: str):
    @flow
    async def one():
        return await run_batch(BatchOptions.parse(prompts=[prompt]), settings=settings)

    return await one()


async def test_the_settings_passed_in_set_the_download_cap(pipeline, emulator):
    tiny = get_settings().model_copy(update={"max_image_bytes": 100})
    summary = await _run(tiny, "a fox larger than a hundred bytes")
    assert summary.failed == 1 and "100" in summary.rows[0].reason
    assert emulator.stats()["submissions"] == 1  # the job ran; its file was refused


async def test_the_settings_passed_in_time_the_polls(pipeline, emulator):
    # The emulator's jobs take 1 s. Expecting 4 s, the first look comes after the job has
    # ended: one poll. Expecting 0.05 s, the first look comes before: more than one.
    patient = get_settings().model_copy(update={"job_time_prior": 4.0})
    eager = get_settings().model_copy(update={"job_time_prior": 0.05, "poll_initial": 0.01})
    polls = {}
    for name, settings in (("patient", patient), ("eager", eager)):
        summary = await _run(settings, f"an owl, {name}")
        assert summary.stored == 1, summary.failures
        record = ImageRecord.model_validate_json(pipeline.read_text(summary.rows[0].metadata_uri))
        polls[name] = record.polls
    assert polls["patient"] == 1 and polls["eager"] > 1, polls
