"""Real costs: a batch records what the API says each job cost, beside what it planned; an
account error stops it from submitting more. A real flow run, the emulator on a socket,
moto's S3."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
from typer.testing import CliRunner

from flashgen.batch_records import read_records
from flashgen.cli import app
from flashgen.flows.generate import generate_images
from flashgen.flows.summary import summary_of
from flashgen.ledger import Journal, Ledger
from flashgen.records import ItemState, LedgerState

PRICE = 0.025  # the emulator's catalog price, and what it reports as each job's cost


async def _run(**params):
    state = await generate_images(**params, return_state=True)
    return state, summary_of(await state.result(raise_on_failure=False))


async def test_a_batch_carries_each_jobs_cost_and_its_planned_spend(pipeline, emulator):
    state, summary = await _run(prompts=["a fox", "an owl"], batch_id="spend")
    assert state.is_completed() and summary.stored == 2
    assert summary.spend.model_dump() == {"planned_usd": 0.05, "actual_usd": 0.05,
                                          "priced_jobs": 2, "unpriced_jobs": 0}
    assert "spend: 0.05 USD reported by the API for 2 job(s), planned 0.05 USD" in (
        summary.describe())

    rows = pipeline.read_manifest("spend")
    assert [row.cost for row in rows] == [PRICE, PRICE]
    records = read_records(pipeline, rows)
    assert [record.cost for record in records.values()] == [PRICE, PRICE]
    catalog = pq.read_table(io.BytesIO(pipeline.read_bytes(summary.catalog_uri)))
    assert catalog.column("cost").to_pylist() == [PRICE, PRICE]
    gallery = pipeline.read_text(pipeline.layout.gallery("spend"))
    assert "spend: 0.05 USD reported by the API for 2 job(s), planned 0.05 USD" in gallery
    written = pipeline.read_json(pipeline.layout.manifest_summary("spend"))
    assert written["spend"]["planned_usd"] == 0.05

    printed = CliRunner().invoke(app, ["cost", "spend"])
    assert printed.exit_code == 0, printed.output
    assert "actual_usd:     0.05" in printed.output
    assert "planned_usd:    0.05" in printed.output

    # A rerun skips both: it paid nothing, and says so.
    state, again = await _run(prompts=["a fox", "an owl"], batch_id="spend-again")
    assert again.skipped == 2 and again.spend.actual_usd is None
    assert again.spend.planned_usd == 0.0


async def test_an_account_error_in_a_200_fails_the_item_and_stops_submitting(
        pipeline, emulator, tmp_path):
    emulator.set_faults(["submit:account-200:1"])
    state, summary = await _run(prompts=["one", "two", "three"], batch_id="broke",
                                concurrency=1)
    assert state.is_failed() and summary.failed == 3
    assert all(row.state == ItemState.FAILED for row in summary.rows)
    assert any("10001" in (row.reason or "") for row in summary.rows)
    stats = emulator.stats()
    # One POST reached the API; the account error stopped the rest before they were sent.
    assert sum(stats["submit_requests_by_fingerprint"].values()) == 1
    assert stats["submissions"] == 0
    ledger = Ledger(pipeline, Journal(tmp_path / "state", scope=pipeline.uri(pipeline.prefix)))
    states = [entry.state for entry in ledger.entries()]
    assert len(states) == 3 and LedgerState.AMBIGUOUS not in states
