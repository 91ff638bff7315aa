"""The catalog: every batch's rows as Parquet, one file per batch, for data teams to query.

    <prefix>/catalog/dt=YYYY-MM-DD/<batch_id>.parquet

One row per manifest row, in every state, with the columns of ``CATALOG_SCHEMA``; stored
and skipped rows are completed from their ``ImageRecord`` (model, inputs, size, checksum,
timings, …). ``dt`` is the batch's UTC date and lives only in the path (Hive-style), so
engines add it as a partition column::

    SELECT dt, state, count(*) FROM read_parquet('s3://bucket/flashgen/catalog/*/*.parquet',
                                                 hive_partitioning = true) GROUP BY ALL

Written after each batch's manifest, and rebuilt for batches from before::

    write_catalog(store, "spring-campaign", rows, records)     # after the manifest
    # → 's3://my-bucket/flashgen/catalog/dt=2025-01-02/spring-campaign.parquet'
    rebuild_catalog(store)                                     # for batches written before
    # → ['s3://my-bucket/flashgen/catalog/dt=2025-01-02/spring-campaign.parquet', …]

A batch's date is when its manifest was completed (its summary's ``written_at``), so
writing a batch again, by the flow or by ``rebuild_catalog``, replaces its file rather than
adding a second one under another date.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from flashgen.batch_records import read_records
from flashgen.errors import StorageError
from flashgen.records import ImageRecord, ManifestRow
from flashgen.storage import Store

log = logging.getLogger(__name__)

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
CHUNK_ROWS = 2_000  # rows (and their records) in memory at once while writing a file
_TIMESTAMP = pa.timestamp("us", tz="UTC")

CATALOG_SCHEMA = pa.schema([
    pa.field("batch_id", pa.string(), nullable=False),
    pa.field("line", pa.int32()),
    pa.field("state", pa.string(), nullable=False),
    pa.field("reason", pa.string()),
    pa.field("fingerprint", pa.string()),
    pa.field("model", pa.string()),
    pa.field("prompt", pa.string()),
    pa.field("negative_prompt", pa.string()),
    pa.field("aspect_ratio", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("seed", pa.int64()),
    pa.field("prompt_extend", pa.bool_()),
    pa.field("duration", pa.int32()),
    pa.field("request_id", pa.string()),
    pa.field("image_uri", pa.string()),
    pa.field("metadata_uri", pa.string()),
    pa.field("sha256", pa.string()),
    pa.field("size", pa.int64()),
    pa.field("submitted_at", _TIMESTAMP),
    pa.field("started_at", _TIMESTAMP),
    pa.field("completed_at", _TIMESTAMP),
    pa.field("stored_at", _TIMESTAMP),
    pa.field("polls", pa.int32()),
    pa.field("attempts", pa.int32()),
    pa.field("flow_run_id", pa.string()),
    pa.field("deployment", pa.string()),
    pa.field("cost", pa.float64()),  # USD this batch paid for the row's job, as the API said
])


class CatalogRow(BaseModel):
    """One row of the catalog; its fields are ``CATALOG_SCHEMA``'s columns, in order."""

    batch_id: str
    line: int | None = None
    state: str
    reason: str | None = None
    fingerprint: str | None = None
    model: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    aspect_ratio: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    prompt_extend: bool | None = None
    duration: int | None = None
    request_id: str | None = None
    image_uri: str | None = None
    metadata_uri: str | None = None
    sha256: str | None = None
    size: int | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    stored_at: datetime | None = None
    polls: int | None = None
    attempts: int | None = None
    flow_run_id: str | None = None
    deployment: str | None = None
    cost: float | None = None

    @classmethod
    def of(cls, batch_id: str, row: ManifestRow, record: ImageRecord | None) -> CatalogRow:
        """The manifest row, completed from its record where it has one."""
        fields = {
            "batch_id": batch_id, "line": row.line, "state": row.state.value,
            "reason": row.reason, "fingerprint": row.fingerprint, "prompt": row.prompt,
            "seed": row.seed,
            "aspect_ratio": row.aspect_ratio, "request_id": row.request_id,
            "image_uri": (row.image_uris or [None])[0], "metadata_uri": row.metadata_uri,
            "cost": row.cost,
        }
        if record is not None:
            inputs = record.inputs
            timings = record.timings
            fields |= {
                "fingerprint": row.fingerprint or record.fingerprint, "model": record.model,
                "prompt": row.prompt or inputs.get("prompt"),
                "negative_prompt": inputs.get("negative_prompt"),
                "aspect_ratio": row.aspect_ratio or inputs.get("aspect_ratio"),
                "seed": row.seed if row.seed is not None else inputs.get("seed"),
                "prompt_extend": inputs.get("prompt_extend"),
                "duration": inputs.get("duration"),
                "width": record.width, "height": record.height,
                "request_id": row.request_id or record.request_id,
                "image_uri": fields["image_uri"] or record.image_uri,
                "sha256": record.sha256, "size": record.size,
                "submitted_at": _utc(timings.submitted_at), "started_at": _utc(timings.started_at),
                "completed_at": _utc(timings.completed_at), "stored_at": _utc(timings.stored_at),
                "polls": record.polls, "attempts": record.attempts,
                "flow_run_id": record.flow_run_id, "deployment": record.deployment,
                # A manifest from before costs were kept: its own records still say.
                "cost": row.cost if row.cost is not None or record.batch_id != batch_id
                else record.cost,
            }
        return cls(**fields)


def catalog_table(
    batch_id: str, rows: Iterable[ManifestRow], records: Mapping[str, ImageRecord]
) -> pa.Table:
    """The batch's rows as an Arrow table with ``CATALOG_SCHEMA`` (records by metadata URI)."""
    catalog_rows = [
        CatalogRow.of(batch_id, row, records.get(row.metadata_uri) if row.metadata_uri else None)
        for row in rows
    ]
    return pa.Table.from_pylist([r.model_dump() for r in catalog_rows], schema=CATALOG_SCHEMA)


def write_catalog(
    store: Store,
    batch_id: str,
    rows: Iterable[ManifestRow] | None = None,
    records: Mapping[str, ImageRecord] | None = None,
    *,
    day: date | None = None,
) -> str:
    """Write ``<prefix>/catalog/dt=<day>/<batch_id>.parquet``; returns its URI.

    ``rows`` (any iterable, read once) default to the batch's manifest, ``day`` to
    ``batch_day`` (write the manifest first); records not given are read from S3. Rows are
    written ``CHUNK_ROWS`` at a time, with their records, so a batch of any size is written
    in bounded memory.
    """
    rows = store.iter_manifest(batch_id) if rows is None else rows
    day = day or batch_day(store, batch_id)
    known = records or {}
    with tempfile.TemporaryFile() as spool:
        # zstd: small files that DuckDB, Spark, Athena and pandas all read.
        with pq.ParquetWriter(spool, CATALOG_SCHEMA, compression="zstd") as writer:
            for chunk in _chunks(rows, CHUNK_ROWS):
                writer.write_table(catalog_table(batch_id, chunk,
                                                 read_records(store, chunk, known)))
        spool.seek(0)
        data = spool.read()  # the compressed file: small next to its rows
    key = store.layout.catalog(batch_id, day)
    return store.put_bytes(key, data, PARQUET_CONTENT_TYPE)


def _chunks(rows: Iterable[ManifestRow], size: int) -> Iterator[list[ManifestRow]]:
    chunk: list[ManifestRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def batch_day(store: Store, batch_id: str, *, last_modified: datetime | None = None) -> date:
    """The batch's UTC date: its manifest summary's ``written_at``, else the manifest's age.

    ``last_modified`` (from a listing) saves a request when there is no summary.
    """
    summary_key = store.layout.manifest_summary(batch_id)
    if store.exists(summary_key):
        written_at = store.read_json(summary_key).get("written_at")
        try:
            return _utc(datetime.fromisoformat(written_at)).date()
        except (TypeError, ValueError):
            log.warning("%s: unreadable written_at %r; using the manifest's date",
                        store.uri(summary_key), written_at)
    if last_modified is None:
        manifest_key = store.layout.manifest(batch_id)
        found = [o for o in store.list_keys(manifest_key.removeprefix(store.layout.below()))
                 if o.s3_key == manifest_key]
        if not found:
            raise StorageError(f"no manifest for batch {batch_id!r} at {store.uri(manifest_key)}")
        last_modified = found[0].last_modified
    return _utc(last_modified).date()


def rebuild_catalog(store: Store) -> list[str]:
    """Write the catalog file of every batch that has a manifest; returns their URIs.

    For data written before the catalog existed, or after changing it: each file is
    rewritten in place (same date, same name), so running it twice changes nothing.
    """
    manifests = store.layout.below("manifests/")
    written = []
    for listed in store.list_keys("manifests/"):
        name = listed.s3_key[len(manifests):]
        if "/" in name or not name.endswith(".jsonl"):  # summaries, anything else
            continue
        batch_id = name.removesuffix(".jsonl")
        day = batch_day(store, batch_id, last_modified=listed.last_modified)
        written.append(write_catalog(store, batch_id, day=day))
        log.info("catalog for batch %s: %s", batch_id, written[-1])
    return written


def _utc(when: datetime | None) -> datetime | None:
    """``when`` in UTC; a naive time (older records) is taken to be UTC already."""
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
