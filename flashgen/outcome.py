"""How a batch ended, in the fields every caller reads: the flow's ``BatchSummary``
(``flashgen.flows.summary``) and the Python API's ``BatchResult`` (``flashgen.api``) are both
a ``BatchOutcome``, each with what only its own callers need."""

from __future__ import annotations

from pydantic import BaseModel

from flashgen.plan import RunPlan
from flashgen.spend import Spend


class BatchOutcome(BaseModel):
    batch_id: str
    total: int = 0
    stored: int = 0
    skipped: int = 0
    failed: int = 0
    invalid: int = 0
    cancelled: int = 0  # not sent, cancelled at the API, or left running (in the ledger)
    failures: list[str] = []  # "line N: reason", first few
    max_failure_ratio: float = 0.0
    manifest_uri: str | None = None
    gallery_url: str | None = None  # presigned link to the batch's HTML gallery
    catalog_uri: str | None = None  # the batch's Parquet file in the catalog
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    dry_run: bool = False  # planned only: nothing was sent
    plan: RunPlan | None = None  # what the run set out to do, before it paid
    spend: Spend | None = None  # planned against the costs the API reported (USD)
    stopped: str | None = None  # why the batch was cancelled part-way (flashgen.stopping)
    halted: str | None = None  # why the run stopped sending midway (S3 refusing writes)

    @property
    def failure_ratio(self) -> float:
        return (self.failed + self.invalid) / max(self.total, 1)

    @property
    def ok(self) -> bool:
        """Not cancelled nor halted part-way, and no more items failed or were invalid than
        ``max_failure_ratio`` allows."""
        if self.stopped or self.halted:
            return False
        return (self.failed + self.invalid) == 0 or self.failure_ratio <= self.max_failure_ratio
