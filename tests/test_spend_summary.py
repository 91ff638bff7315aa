"""A batch's spend: costs the API reported, summed once per job, against the plan."""

from __future__ import annotations

from flashgen.flows import summary as summary_module
from flashgen.flows.summary import BatchSummary, emit_batch_event
from flashgen.records import ItemState, ManifestRow
from flashgen.spend import Spend


def _row(line: int, state: ItemState, cost: float | None, request_id: str | None = "r"):
    return ManifestRow(line=line, state=state, cost=cost, request_id=request_id)


def test_spend_sums_reported_costs_and_counts_paid_jobs_without_one():
    rows = [_row(1, ItemState.STORED, 0.025), _row(2, ItemState.STORED, 0.025),
            _row(3, ItemState.STORED, None),  # paid, but the API gave no cost
            _row(4, ItemState.SKIPPED, None), _row(5, ItemState.FAILED, None),
            _row(6, ItemState.INVALID, None, request_id=None)]
    spend = Spend.of_rows(rows, planned_usd=0.1)
    assert (spend.actual_usd, spend.priced_jobs, spend.unpriced_jobs) == (0.05, 2, 1)
    assert spend.line() == ("spend: 0.05 USD reported by the API for 2 job(s) (+1 job(s) "
                            "without a reported cost), planned 0.1 USD")
    assert Spend().line() == "spend: unknown, planned unknown"


def test_the_batch_event_carries_planned_and_actual_spend(monkeypatch):
    sent = []
    monkeypatch.setattr(summary_module, "emit_event", lambda **event: sent.append(event))
    spend = Spend(planned_usd=0.05, actual_usd=0.025, priced_jobs=1)
    emit_batch_event(BatchSummary(batch_id="b1", total=1, stored=1, spend=spend))
    (event,) = sent
    assert event["event"] == "flashgen.batch.completed"
    assert event["payload"]["spend"] == {"planned_usd": 0.05, "actual_usd": 0.025,
                                         "priced_jobs": 1, "unpriced_jobs": 0}
