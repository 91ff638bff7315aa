"""What a batch spent: the plan's estimate against the costs the API reported per job.

The API gives a finished job's ``cost`` (USD) on its result (``include_cost=true``); the
fetch step asks for it, and it lands on the job's first image record, its manifest row
and its catalog row. A batch's planned spend is written into its manifest summary.

    spend = Spend.of_rows(rows, planned_usd=0.075)
    spend.line()
    # → 'spend: 0.075 USD reported by the API for 3 job(s), planned 0.075 USD'

``flashgen cost BATCH_ID`` prints ``batch_spend(store, batch_id)``: the costs on the
batch's own records (a row skipped because an earlier batch stored it cost this batch
nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel

from flashgen.errors import StorageError
from flashgen.records import ImageRecord, ItemState, ManifestRow
from flashgen.storage import Store


class Spend(BaseModel):
    """USD planned and reported for one batch (None: not known)."""

    planned_usd: float | None = None  # the plan's estimate, at its price
    actual_usd: float | None = None  # the sum of the costs the API reported
    priced_jobs: int = 0  # jobs whose cost the API reported
    unpriced_jobs: int = 0  # jobs paid for (stored by this batch) without a reported cost

    @classmethod
    def of_rows(cls, rows: Iterable[ManifestRow], *, planned_usd: float | None = None) -> Spend:
        spend = cls(planned_usd=planned_usd)
        for row in rows:
            spend.add_row(row)
        return spend

    def add_row(self, row: ManifestRow) -> None:
        """Count a manifest row: a job this batch stored is paid, whether or not its cost
        was reported."""
        self.add(row.cost, paid=row.state == ItemState.STORED and bool(row.request_id))

    def add(self, cost: float | None, *, paid: bool) -> None:
        """Count one item: its reported ``cost``, or, when ``paid`` without one, a gap."""
        if cost is not None:
            self.actual_usd = round((self.actual_usd or 0.0) + cost, 6)
            self.priced_jobs += 1
        elif paid:
            self.unpriced_jobs += 1

    def line(self) -> str:
        actual = ("unknown" if self.actual_usd is None
                  else f"{self.actual_usd:g} USD reported by the API for "
                       f"{self.priced_jobs} job(s)")
        if self.unpriced_jobs:
            actual += f" (+{self.unpriced_jobs} job(s) without a reported cost)"
        planned = "unknown" if self.planned_usd is None else f"{self.planned_usd:g} USD"
        return f"spend: {actual}, planned {planned}"


def planned_of(store: Store, batch_id: str) -> float | None:
    """The planned spend written into the batch's manifest summary (None if none)."""
    try:
        summary = store.read_json(store.layout.manifest_summary(batch_id))
    except StorageError:
        return None
    value = (summary.get("spend") or {}).get("planned_usd") if isinstance(summary, dict) else None
    return value if isinstance(value, int | float) else None


def batch_spend(store: Store, batch_id: str, rows: list[ManifestRow] | None = None,
                records: Mapping[str, ImageRecord] | None = None) -> Spend:
    """The batch's spend from its records: each of its own jobs' reported cost, once."""
    from flashgen.batch_records import read_records

    rows = store.read_manifest(batch_id) if rows is None else rows
    records = read_records(store, rows, records)
    spend = Spend(planned_usd=planned_of(store, batch_id))
    for row in rows:
        record = records.get(row.metadata_uri) if row.metadata_uri else None
        if record is None or record.batch_id != batch_id:
            continue  # not paid by this batch (skipped: stored by an earlier one)
        spend.add(record.cost, paid=True)
    return spend
