"""A batch's own record, and which of its items a resume or a retry sends again (no Prefect).

Every batch that sends anything first writes what it was asked to do to
``<prefix>/batches/<batch_id>.json``: its options (defaults, model, concurrency, budget…),
the run date its ``{date}`` prompts were filled with, and its source. A local prompt file
is copied next to it (``batches/<batch_id>.source.csv``), so the batch can be run again
from any machine; an ``s3://`` source is referred to as it is. That is all ``flashgen
resume`` and ``flashgen retry`` need: no flags to remember.

    record_batch(store, options, batch_id="spring", run_date="2025-03-01")
    request = read_request(store, "spring")
    choice = Rerun.resume(store, request)   # or Rerun.retry(store, request, ambiguous=False)
    choice.sends(item)                      # True: this item runs again

What each sends again, read from the batch's last manifest (the ledger still decides
what is paid for: a stored item is skipped, a known request_id is fetched, never resent):

- **resume**: every item except those whose last row is ``failed``: items never sent,
  cancelled, or left running when the batch was cancelled (``flashgen.stopping``). Without a
  manifest (the process was killed outright), every item.
- **retry** (``--failed``): only the items whose last row is ``failed``. An ambiguous one
  stays unsent (it may have been paid for) unless ``ambiguous``.
- **retry --ambiguous**: only the failed items the ledger calls ambiguous, resent on purpose
  (each may pay twice).

The rows of the items a rerun does not send are carried into its manifest unchanged, so the
manifest always says how every input of the batch ended.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flashgen.errors import InputError, StorageError
from flashgen.options import BatchOptions
from flashgen.records import ItemState, LedgerState, ManifestRow
from flashgen.sources import Item, Row
from flashgen.storage import Store

_AMBIGUOUS = (LedgerState.AMBIGUOUS, LedgerState.SENDING, LedgerState.CLAIMED)


class BatchRequest(BaseModel):
    """What a batch was asked to do: enough to run it again."""

    batch_id: str
    options: BatchOptions  # as given, with batch_id and run_date filled in
    rows: list[Row] | None = None  # a one-off call's rows (``generate_image``)
    source_copy: str | None = None  # the local prompt file, copied into S3
    flow_run_id: str | None = None
    recorded_at: datetime

    def rerun_options(self, **changes: Any) -> BatchOptions:
        """The options to run it again with: the copied source, nothing forced, no dry run."""
        return self.options.model_copy(update={
            "source": self.source_copy or self.options.source, "force": False,
            "dry_run": False, **changes})


def record_batch(store: Store, options: BatchOptions, *, batch_id: str, run_date: str,
                 rows: list[Row] | None = None, flow_run_id: str | None = None
                 ) -> BatchRequest:
    """Write the batch's record (and a copy of a local prompt file) before it sends anything."""
    copy = None
    source = options.source
    if source and not source.startswith("s3://"):  # a local file: another machine lacks it
        key = store.layout.batch_source(batch_id, Path(source).suffix.lower())
        copy = store.put_bytes(key, Path(source).read_bytes(), "application/octet-stream")
    request = BatchRequest(
        batch_id=batch_id, rows=rows, source_copy=copy, flow_run_id=flow_run_id,
        recorded_at=datetime.now(UTC),
        options=options.model_copy(update={"batch_id": batch_id,
                                           "run_date": datetime.fromisoformat(run_date).date()}))
    store.put_json(store.layout.batch_request(batch_id), request)
    return request


def read_request(store: Store, batch_id: str) -> BatchRequest:
    """The batch's record; an InputError naming the batch when there is none."""
    key = store.layout.batch_request(batch_id)  # an unusable batch id is an InputError
    if not store.exists(key):
        raise InputError(
            f"batch_id: no record of batch {batch_id!r} at {store.uri(key)}: it was never run "
            "with this bucket and prefix, or ran before batches were recorded (run it again "
            "with its source and --batch-id)", field="batch_id")
    try:
        return BatchRequest.model_validate(store.read_json(key))
    except ValueError as exc:
        raise StorageError(f"unreadable batch record {store.uri(key)}: {exc}") from None


class Rerun:
    """Which items of a batch a rerun sends, and the rows it keeps for the others."""

    def __init__(self, mode: str, kept: dict[tuple[int | None, str], ManifestRow],
                 sent: set[tuple[int | None, str]] | None, *, resubmit_ambiguous: bool = False
                 ) -> None:
        self.mode = mode  # "resume" or "retry"
        self._kept = kept
        self._sent = sent  # None: every item not kept
        self.resubmit_ambiguous = resubmit_ambiguous

    @classmethod
    def resume(cls, store: Store, request: BatchRequest) -> Rerun:
        rows = _last_rows(store, request.batch_id)
        return cls("resume", {_key(r): r for r in rows if r.state == ItemState.FAILED}, None)

    @classmethod
    def retry(cls, store: Store, request: BatchRequest, *, ambiguous: bool = False) -> Rerun:
        rows = _last_rows(store, request.batch_id)
        if not rows:
            raise InputError(f"batch_id: batch {request.batch_id} has no manifest yet, so no "
                             f"failed items to retry; `flashgen resume {request.batch_id}` "
                             "runs it", field="batch_id")
        failed = [r for r in rows if r.state == ItemState.FAILED]
        if ambiguous:
            failed = [r for r in failed if _ledger_state(store, r) in _AMBIGUOUS]
        sent = {_key(r) for r in failed}
        kept = {_key(r): r for r in rows if _key(r) not in sent}
        return cls("retry", kept, sent, resubmit_ambiguous=ambiguous)

    @property
    def to_send(self) -> int | None:
        """How many items it sends, when known before reading the source (a retry)."""
        return None if self._sent is None else len(self._sent)

    def sends(self, item: Item) -> bool:
        key = (item.line, item.fingerprint)
        return key in self._sent if self._sent is not None else key not in self._kept

    def kept_row(self, item: Item) -> ManifestRow | None:
        """The item's last row, carried over unchanged (None: the batch had no row for it)."""
        return self._kept.get((item.line, item.fingerprint))


def _key(row: ManifestRow) -> tuple[int | None, str]:
    # (line, fingerprint): a duplicate row shares its first item's fingerprint, not its line.
    return row.line, row.fingerprint or ""


def _last_rows(store: Store, batch_id: str) -> list[ManifestRow]:
    if not store.exists(store.layout.manifest(batch_id)):
        return []  # killed before it wrote one: the ledger alone says what was paid for
    return [r for r in store.read_manifest(batch_id) if r.fingerprint]


def _ledger_state(store: Store, row: ManifestRow) -> LedgerState | None:
    found = store.read_ledger(row.fingerprint or "")
    return found[0].state if found else None
