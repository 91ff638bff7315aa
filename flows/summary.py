"""How a batch ended: the summary a flow returns, its table artifact and its event."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import acreate_table_artifact
from prefect.events import emit_event
from pydantic import BaseModel

from flashgen.errors import BatchFailedError

from flashgen.manifest import ManifestSpool
from flashgen.plan import RunPlan
from flashgen.records import ItemState, ManifestRow
from flashgen.flows.events import BATCH_COMPLETED, BATCH_FAILED

FIRST_ERRORS = 5


class BatchSummary(BaseModel):
    batch_id: str
    total: int = 0
    stored: int = 0
    skipped: int = 0
    failed: int = 0
    invalid: int = 0
    image_uris: list[str] = []
    manifest_uri: str | None = None
    failures: list[str] = []  # "line N: reason", first few
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    deployment: str | None = None
    max_failure_ratio: float = 0.0
    rows: list[ManifestRow] = []  # one per input in line order (the first 1,000 of a batch)
    plan: RunPlan | None = None  # what the run set out to do, before it paid
    dry_run: bool = False  # planned only: nothing was sent
    refused: str | None = None  # why the run stopped before sending anything (bad input)
    halted: str | None = None  # why the run stopped sending midway (S3 refusing writes)
    gallery_url: str | None = None  # presigned link to the batch's HTML gallery
    catalog_uri: str | None = None  # the batch's Parquet file in the catalog

    @property
    def failure_ratio(self) -> float:
        return (self.failed + self.invalid) / max(self.total, 1)

    @property
    def ok(self) -> bool:
        if self.refused or self.halted:
            return False
        return (self.failed + self.invalid) == 0 or self.failure_ratio <= self.max_failure_ratio

    def describe(self) -> str:
        if self.refused:
            return f"batch {self.batch_id}: nothing sent: {self.refused}"
        if self.dry_run and self.plan:
            return (f"batch {self.batch_id} (dry run, nothing sent): {self.plan.to_send} new "
                    f"paid submission(s) of {self.plan.items} item(s)")
        counts = (f"batch {self.batch_id}: {self.stored} stored, {self.skipped} skipped, "
                  f"{self.failed} failed, {self.invalid} invalid of {self.total}")
        return f"{counts}; stopped paying: {self.halted}" if self.halted else counts

    @classmethod
    def from_spool(cls, batch_id: str, spool: ManifestSpool, **fields) -> BatchSummary:
        count = spool.counts
        return cls(batch_id=batch_id, total=spool.total, stored=count[ItemState.STORED],
                   skipped=count[ItemState.SKIPPED], failed=count[ItemState.FAILED],
                   invalid=count[ItemState.INVALID],
                   image_uris=[u for r in spool.rows if r.state == ItemState.STORED
                               for u in r.image_uris],
                   failures=spool.failures,
                   rows=sorted(spool.rows, key=lambda r: r.line or 0), **fields)

    @classmethod
    def from_rows(cls, batch_id: str, rows: list[ManifestRow], **fields) -> BatchSummary:
        count = {state: sum(r.state == state for r in rows) for state in ItemState}
        failures = [f"line {r.line}: {r.reason}" for r in rows
                    if r.state in (ItemState.FAILED, ItemState.INVALID)]
        return cls(batch_id=batch_id, total=len(rows), stored=count[ItemState.STORED],
                   skipped=count[ItemState.SKIPPED], failed=count[ItemState.FAILED],
                   invalid=count[ItemState.INVALID],
                   image_uris=[u for r in rows if r.state == ItemState.STORED
                               for u in r.image_uris],
                   failures=failures[:FIRST_ERRORS], rows=rows, **fields)


async def publish_table(summary: BatchSummary, rows: list[ManifestRow]) -> None:
    table = [{"line": r.line, "prompt": (r.prompt or "")[:80], "seed": r.seed,
              "aspect_ratio": r.aspect_ratio, "state": r.state.value,
              "s3_uri": (r.image_uris or [""])[0], "seconds": r.seconds,
              "reason": r.reason or ""} for r in rows]
    await acreate_table_artifact(
        key=artifact_key("batch", summary.batch_id), table=table,
        description=summary.describe() + (f"\n\nmanifest: {summary.manifest_uri}"
                                          if summary.manifest_uri else ""))


def emit_batch_event(summary: BatchSummary) -> None:
    """``flashgen.batch.completed`` or ``.failed``, for downstream triggers and alerts."""
    emit_event(
        event=BATCH_COMPLETED if summary.ok else BATCH_FAILED,
        resource={"prefect.resource.id": f"flashgen.batch.{summary.batch_id}",
                  "prefect.resource.name": summary.batch_id},
        payload={"batch_id": summary.batch_id, "deployment": summary.deployment,
                 "flow_run_id": summary.flow_run_id, "flow_run_url": summary.flow_run_url,
                 "counts": {"total": summary.total, "stored": summary.stored,
                            "skipped": summary.skipped, "failed": summary.failed,
                            "invalid": summary.invalid},
                 "manifest_uri": summary.manifest_uri, "first_errors": summary.failures},
    )


def artifact_key(kind: str, batch_id: str) -> str:
    """``kind-<batch id>`` as artifact keys allow: lowercase letters, digits and dashes."""
    out = "".join(c if c.isalnum() else "-" for c in f"{kind}-{batch_id}".lower())
    return "-".join(filter(None, out.split("-")))[:100]


def summary_of(result: Any) -> Any:
    """What a flow run's result holds for its caller: the ``BatchSummary`` (a failed batch
    carries it in its ``BatchFailedError``), or the error that stopped the run early."""
    return result.summary if isinstance(result, BatchFailedError) else result
