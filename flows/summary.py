"""How a batch ended: the summary a flow returns, its table artifact and its event."""

from __future__ import annotations

from typing import Any

from prefect.artifacts import acreate_table_artifact
from prefect.events import emit_event
from flashgen.errors import BatchFailedError
from flashgen.manifest import ManifestSpool
from flashgen.outcome import BatchOutcome
from flashgen.records import ItemState, ManifestRow
from flashgen.flows.events import BATCH_CANCELLED, BATCH_COMPLETED, BATCH_FAILED, BATCH_REFUSED

FIRST_ERRORS = 5


class BatchSummary(BatchOutcome):
    """What the batch flow returns: the outcome, with the rows for its table and event."""

    image_uris: list[str] = []
    deployment: str | None = None
    rows: list[ManifestRow] = []  # one per input in line order (the first 1,000 of a batch)
    refused: str | None = None  # why the run stopped before sending anything (bad input)

    @property
    def ok(self) -> bool:
        return not self.refused and super().ok

    def describe(self) -> str:
        if self.refused:
            return f"batch {self.batch_id}: nothing sent: {self.refused}"
        if self.dry_run and self.plan:
            return (f"batch {self.batch_id} (dry run, nothing sent): {self.plan.to_send} new "
                    f"paid submission(s) of {self.plan.items} item(s)")
        counts = (f"{self.stored} stored, {self.skipped} skipped, {self.failed} failed, "
                  f"{self.invalid} invalid")
        spend = f"; {self.spend.line()}" if self.spend else ""
        halted = f"; stopped paying: {self.halted}" if self.halted else ""
        if self.stopped:
            return (f"batch {self.batch_id} cancelled ({self.stopped}): {counts}, "
                    f"{self.cancelled} cancelled of {self.total}{spend}")
        return f"batch {self.batch_id}: {counts} of {self.total}{halted}{spend}"

    @classmethod
    def from_spool(cls, batch_id: str, spool: ManifestSpool, **fields) -> BatchSummary:
        count = spool.counts
        return cls(batch_id=batch_id, total=spool.total, stored=count[ItemState.STORED],
                   skipped=count[ItemState.SKIPPED], failed=count[ItemState.FAILED],
                   invalid=count[ItemState.INVALID], cancelled=count[ItemState.CANCELLED],
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
                   invalid=count[ItemState.INVALID], cancelled=count[ItemState.CANCELLED],
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
    """``flashgen.batch.completed``, ``.failed``, ``.cancelled`` or ``.refused`` (nothing
    was sent), for downstream triggers and alerts."""
    emit_event(
        event=(BATCH_REFUSED if summary.refused else BATCH_CANCELLED if summary.stopped
               else BATCH_COMPLETED if summary.ok else BATCH_FAILED),
        resource={"prefect.resource.id": f"flashgen.batch.{summary.batch_id}",
                  "prefect.resource.name": summary.batch_id},
        payload={"batch_id": summary.batch_id, "deployment": summary.deployment,
                 "flow_run_id": summary.flow_run_id, "flow_run_url": summary.flow_run_url,
                 "counts": {"total": summary.total, "stored": summary.stored,
                            "skipped": summary.skipped, "failed": summary.failed,
                            "invalid": summary.invalid, "cancelled": summary.cancelled},
                 "manifest_uri": summary.manifest_uri, "first_errors": summary.failures,
                 "refused": summary.refused,
                 "spend": summary.spend.model_dump() if summary.spend else None},
    )


def artifact_key(kind: str, batch_id: str) -> str:
    """``kind-<batch id>`` as artifact keys allow: lowercase letters, digits and dashes."""
    out = "".join(c if c.isalnum() else "-" for c in f"{kind}-{batch_id}".lower())
    return "-".join(filter(None, out.split("-")))[:100]


def summary_of(result: Any) -> Any:
    """What a flow run's result holds for its caller: the ``BatchSummary`` (a failed batch
    carries it in its ``BatchFailedError``), or the error that stopped the run early."""
    return result.summary if isinstance(result, BatchFailedError) else result
