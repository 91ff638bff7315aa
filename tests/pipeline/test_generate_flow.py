"""The generate-images flow, run for real in-process: Prefect test server, the emulator on a
socket, moto's in-memory S3. Assertions read S3 and the emulator's own counters."""

from __future__ import annotations

import hashlib
import json

import pytest

from flashgen.emulator import EmulatorConfig
from flashgen.errors import BatchFailedError
from flashgen.models import DEFAULT_MODEL, fingerprint, validate_inputs
from flashgen.records import ImageRecord, ItemState, LedgerEntry, LedgerState
from flashgen.flows.generate import generate_images
from flashgen.flows.summary import summary_of
from tests.pipeline.conftest import TOKEN

PROMPTS = ["a red fox in snow", "an owl at dusk", "a lighthouse in fog"]


def _objects(store, sub: str) -> list[str]:
    return [key for key, *_ in store.list_keys(sub)]


async def _run(**params):
    state = await generate_images(**params, return_state=True)
    return state, summary_of(await state.result(raise_on_failure=False))


async def test_batch_lands_images_records_and_manifest(pipeline, emulator):
    state, summary = await _run(prompts=PROMPTS, defaults={"aspect_ratios": ["16:9", "9:16"]},
                                batch_id="b1")
    assert state.is_completed(), state.message
    assert (summary.stored, summary.failed, summary.total) == (6, 0, 6)
    images = _objects(pipeline, "images/")
    records = _objects(pipeline, "metadata/")
    assert len(images) == len(records) == 6
    for key in records:
        record = ImageRecord.model_validate_json(pipeline.read_text(key))
        data = pipeline.read_bytes(record.image_uri)
        assert hashlib.sha256(data).hexdigest() == record.sha256
        assert record.size == len(data) and data[:8] == b"\x89PNG\r\n\x1a\n"
        assert (record.width, record.height) in {(1440, 810), (810, 1440)}
        assert record.fingerprint == fingerprint(DEFAULT_MODEL, record.inputs)
        assert record.batch_id == "b1" and record.flow_run_id and record.request_id
        assert record.timings.submitted_at and record.timings.stored_at and record.polls >= 1
    manifest = pipeline.read_manifest("b1")
    assert [row.state for row in manifest] == [ItemState.STORED] * 6
    assert emulator.stats()["submissions"] == 6
    everything = "".join(pipeline.read_text(k) for k in records + _objects(pipeline, "ledger/"))
    assert TOKEN not in everything
    table = await _artifact("batch-b1")
    assert table.type == "table" and "6 stored" in table.description
    assert len(json.loads(table.data)) == 6 and TOKEN not in table.data


async def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key!r}"
    return found[0]


async def test_rerun_skips_stored_items_without_submitting(pipeline, emulator):
    await _run(prompts=PROMPTS)
    state, summary = await _run(prompts=PROMPTS)
    assert state.is_completed()
    assert (summary.skipped, summary.stored) == (3, 0)
    assert emulator.stats()["submissions"] == 3
    state, summary = await _run(prompts=PROMPTS[:1], force=True)
    assert summary.stored == 1 and emulator.stats()["submissions"] == 4


async def test_known_request_id_is_resumed_not_resubmitted(pipeline, emulator):
    """A run that died after recording the request_id: the rerun polls it, never resends."""
    import httpx

    inputs = validate_inputs(DEFAULT_MODEL, {"prompt": PROMPTS[0]})
    answer = httpx.post(f"{emulator.url}/v1/models/{DEFAULT_MODEL}", json=inputs,
                        headers={"Authorization": f"Bearer {TOKEN}"}).json()
    key = fingerprint(DEFAULT_MODEL, inputs)
    pipeline.write_ledger(LedgerEntry(fingerprint=key, model=DEFAULT_MODEL, inputs=inputs,
                                      state=LedgerState.SUBMITTED, owner="dead-run",
                                      request_id=answer["request_id"], attempts=1))
    state, summary = await _run(prompts=PROMPTS[:1])
    assert state.is_completed() and summary.stored == 1
    assert summary.rows[0].request_id == answer["request_id"]
    assert emulator.stats()["submissions"] == 1


async def test_a_request_id_the_api_does_not_know_is_lost_then_released(pipeline, emulator,
                                                                      tmp_path):
    """Expired at the API, or mistyped by hand: recorded lost (not polled forever, not
    resent); `ledger resolve --retry` releases it and the next run pays for it once."""
    from flashgen.ledger import Journal, Ledger

    inputs = validate_inputs(DEFAULT_MODEL, {"prompt": PROMPTS[0]})
    key = fingerprint(DEFAULT_MODEL, inputs)
    pipeline.write_ledger(LedgerEntry(fingerprint=key, model=DEFAULT_MODEL, inputs=inputs,
                                      state=LedgerState.SUBMITTED, owner="dead-run",
                                      request_id="expired-0000", attempts=1))
    state, summary = await _run(prompts=PROMPTS[:1])
    assert state.is_failed() and "lost" in summary.rows[0].reason
    entry, _ = pipeline.read_ledger(key)
    assert (entry.state, entry.request_id) == (LedgerState.LOST, "expired-0000")
    assert "expired-0000" in entry.error
    state, summary = await _run(prompts=PROMPTS[:1], force=True)  # not even --force pays
    assert state.is_failed() and "resolve" in summary.rows[0].reason
    assert emulator.stats()["submissions"] == 0
    Ledger(pipeline, Journal(tmp_path, scope="x")).resolve(key, retry=True)
    state, summary = await _run(prompts=PROMPTS[:1])
    assert state.is_completed() and summary.stored == 1
    assert emulator.stats()["submissions"] == 1


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(
    workers=4, job_time=0.1, tokens=[TOKEN], faults=["submit:lost-answer:1.0"])])
async def test_ambiguous_submission_is_recorded_and_not_resent(pipeline, emulator):
    state, summary = await _run(prompts=PROMPTS[:1])
    assert state.is_failed() and summary.failed == 1
    assert state.name == "BatchFailed"  # its batch-failed event alerts, not the run's state
    assert "Ambiguous" in summary.rows[0].reason
    entry, _ = pipeline.read_ledger(summary.rows[0].fingerprint)
    assert entry.state == LedgerState.AMBIGUOUS
    state, summary = await _run(prompts=PROMPTS[:1])  # a rerun leaves it alone
    assert state.is_failed() and "ambiguous" in summary.rows[0].reason
    assert emulator.stats()["submissions"] == 1
    emulator.set_faults([])
    state, summary = await _run(prompts=PROMPTS[:1], resubmit_ambiguous=True)
    assert state.is_completed() and summary.stored == 1
    assert emulator.stats()["submissions"] == 2


async def test_bad_rows_are_reported_by_line_and_good_rows_stored(pipeline, emulator, tmp_path):
    source = tmp_path / "prompts.csv"
    source.write_text("prompt,aspect_ratio,seed\n"
                      "a fox,16:9,1\n"
                      "an owl,7:3,2\n"
                      "a bear,1:1,three\n"
                      ",1:1,4\n"
                      "a whale,9:16,5\n")
    state, summary = await _run(source=str(source), batch_id="bad-rows")
    assert state.is_failed()  # invalid rows count as failures unless tolerated
    assert (summary.stored, summary.invalid) == (2, 3)
    invalid = {row.line: row.reason for row in summary.rows if row.state == ItemState.INVALID}
    assert set(invalid) == {3, 4, 5}
    assert "aspect_ratio" in invalid[3] and "16:9" in invalid[3]
    assert "seed" in invalid[4] and "prompt" in invalid[5]
    assert emulator.stats()["submissions"] == 2
    assert len(_objects(pipeline, "images/")) == 2
    state, summary = await _run(source=str(source), max_failure_ratio=0.6)
    assert state.is_completed() and summary.skipped == 2


async def test_strict_batch_sends_nothing_when_a_row_is_bad(pipeline, emulator, tmp_path):
    source = tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": "x",
                                                                         "duration": 9}) + "\n")
    state, _ = await _run(source=str(source), strict=True)
    assert state.is_failed() and "line 2" in state.message
    assert emulator.stats()["submissions"] == 0


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(
    workers=16, job_time=0.3, job_time_spread=0.1, tokens=[TOKEN])])
async def test_concurrency_caps_and_fills_the_api_slots(pipeline, emulator):
    state, summary = await _run(prompts=[f"tile {n}" for n in range(16)], concurrency=4)
    assert state.is_completed() and summary.stored == 16
    assert emulator.stats()["max_in_flight"] == 4


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(
    workers=4, job_time=0.1, tokens=[TOKEN], faults=["job:fail:1.0"])])
async def test_failed_jobs_fail_the_batch_after_storing_nothing_twice(pipeline, emulator):
    state, summary = await _run(prompts=PROMPTS)
    assert state.is_failed() and summary.failed == 3
    assert all(row.state == ItemState.FAILED for row in summary.rows)
    entry, _ = pipeline.read_ledger(summary.rows[0].fingerprint)
    assert entry.state == LedgerState.FAILED and entry.request_id
    emulator.set_faults([])
    state, summary = await _run(prompts=PROMPTS)  # a failed job produced nothing: try again
    assert state.is_completed() and summary.stored == 3


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(
    workers=4, job_time=0.1, tokens=[TOKEN], faults=["job:fail:1.0"])])
async def test_a_failed_batch_called_directly_raises_its_summary(pipeline, emulator):
    """``await generate_images(...)`` from Python: a batch with failed items raises one
    clear error that carries the counts (seen at the bench as a TypeError quoting
    every row of the summary)."""
    with pytest.raises(BatchFailedError, match="3 failed") as caught:
        await generate_images(prompts=PROMPTS, batch_id="direct")
    assert caught.value.summary.failed == 3 and caught.value.summary.batch_id == "direct"
    assert len(str(caught.value)) < 2000


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(
    workers=1, job_time=30, tokens=[TOKEN])])
async def test_job_still_queued_at_deadline_is_cancelled(pipeline, emulator, monkeypatch):
    from flashgen.settings import get_settings

    monkeypatch.setenv("FLASHGEN_JOB_DEADLINE", "0.5")
    get_settings.cache_clear()
    state, summary = await _run(prompts=PROMPTS[:2], concurrency=2)
    assert state.is_failed()
    reasons = " ".join(row.reason or "" for row in summary.rows)
    assert "cancelled" in reasons  # the queued one
    assert emulator.stats()["cancels"] >= 1


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(
    workers=4, job_time=0.1, tokens=[TOKEN], retry_after=0.01, fault_seed=3,
    faults=["submit:429:0.5", "status:503:0.3", "result:500:0.3"])])
async def test_transient_faults_are_retried_without_paying_twice(pipeline, emulator):
    state, summary = await _run(prompts=[f"flaky {n}" for n in range(8)])
    assert state.is_completed(), state.message
    stats = emulator.stats()
    assert summary.stored == 8 and stats["submissions"] == 8
    assert stats["duplicate_submissions"] == 0 and sum(stats["faults_injected"].values()) > 0


@pytest.mark.parametrize("emulator_config", [EmulatorConfig(
    workers=4, job_time=0.1, tokens=[TOKEN], retry_after=0.01, faults=["submit:429:1.0"])])
async def test_unsent_submit_releases_its_claim_for_a_later_run(pipeline, emulator):
    state, summary = await _run(prompts=PROMPTS[:1])
    assert state.is_failed() and "RateLimited" in summary.rows[0].reason
    entry, _ = pipeline.read_ledger(summary.rows[0].fingerprint)
    assert entry.state == LedgerState.FAILED and entry.request_id is None
    assert emulator.stats()["submissions"] == 0
    emulator.set_faults([])
    state, summary = await _run(prompts=PROMPTS[:1])
    assert state.is_completed() and emulator.stats()["submissions"] == 1


async def test_a_rejected_token_fails_before_anything_is_sent_and_is_never_logged(
        pipeline, emulator, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flashgen.errors import AuthenticationError
    from flashgen.settings import get_settings

    wrong = "wrong-token-do-not-leak-4242"
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", wrong)
    get_settings.cache_clear()
    state, error = await _run(prompts=PROMPTS[:2])
    assert state.is_failed() and isinstance(error, AuthenticationError)
    assert state.name == "Refused"  # not "Failed": no run-failed alert pages for it
    assert state.message.startswith("nothing sent: token refused: ")  # not the probe's id
    assert wrong not in state.message and wrong not in str(error)
    assert emulator.stats()["submissions"] == 0  # the token is tried for free first
    assert _objects(pipeline, "ledger/") == []
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()  # logs reach the server in batches
    async with get_client() as client:
        logs = await client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert logs and not any(wrong in log.message for log in logs)
    assert any("AuthenticationError" in log.message or "rejected" in log.message
               for log in logs)
