"""The catalog: Parquet per batch in dt= partitions, queried with DuckDB as a data team would."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from batch_views_data import FAILED_REASON, WHEN, write_batch
from typer.testing import CliRunner

from flashgen.catalog import CATALOG_SCHEMA, CatalogRow, rebuild_catalog, write_catalog
from flashgen.cli import app
from flashgen.records import ItemState
from flashgen.settings import get_settings
from flashgen.storage import Layout, Store

duckdb = pytest.importorskip("duckdb")

DAY_ONE, DAY_TWO = date(2025, 3, 14), date(2025, 3, 15)


def _download(store: Store, sub_prefix: str, into: Path) -> Path:
    """Copy everything under ``<prefix>/<sub_prefix>`` into ``into``, keeping the paths."""
    below = store.layout.below()
    for listed in store.list_keys(sub_prefix):
        target = into / listed.s3_key.removeprefix(below)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.read_bytes(listed.s3_key))
    return into / sub_prefix


def _query(folder: Path, sql: str) -> list[tuple]:
    source = f"read_parquet('{folder}/**/*.parquet', hive_partitioning = true)"
    return duckdb.connect().execute(sql.format(catalog=source)).fetchall()


def test_layout_puts_each_batch_in_its_utc_day():
    layout = Layout("fg")
    assert layout.catalog("b1", DAY_ONE) == "fg/catalog/dt=2025-03-14/b1.parquet"
    berlin = timezone(timedelta(hours=1))
    # Half past midnight in Berlin is still the day before in UTC.
    assert layout.catalog("b1", datetime(2025, 3, 15, 0, 30, tzinfo=berlin)) == (
        "fg/catalog/dt=2025-03-14/b1.parquet")
    assert layout.catalog("b1", datetime(2025, 3, 15, 1, 30, tzinfo=berlin)) == (
        "fg/catalog/dt=2025-03-15/b1.parquet")
    with pytest.raises(ValueError, match="timezone-aware"):
        layout.catalog("b1", datetime(2025, 3, 15))


def test_schema_and_row_model_name_the_same_columns_and_dt_is_not_one():
    assert CATALOG_SCHEMA.names == list(CatalogRow.model_fields)
    assert "dt" not in CATALOG_SCHEMA.names
    assert str(CATALOG_SCHEMA.field("stored_at").type) == "timestamp[us, tz=UTC]"
    assert str(CATALOG_SCHEMA.field("seed").type) == "int64"
    assert str(CATALOG_SCHEMA.field("line").type) == "int32"


def test_two_batches_on_two_days_query_back_with_duckdb(store, tmp_path):
    first = write_batch(store, "b-one", WHEN)
    second = write_batch(store, "b-two", WHEN + timedelta(days=1), seed0=200)
    uris = [write_catalog(store, first.batch_id, first.rows, first.records, day=DAY_ONE),
            write_catalog(store, second.batch_id, second.rows, day=DAY_TWO)]
    assert uris == [store.uri("fg/catalog/dt=2025-03-14/b-one.parquet"),
                    store.uri("fg/catalog/dt=2025-03-15/b-two.parquet")]
    head = store.s3.head_object(Bucket=store.bucket, Key="fg/catalog/dt=2025-03-14/b-one.parquet")
    assert head["ContentType"] == "application/vnd.apache.parquet"

    folder = _download(store, "catalog/", tmp_path)
    counts = dict(_query(folder, "SELECT state, count(*) FROM {catalog} GROUP BY state"))
    for state in ItemState:
        assert counts.get(state.value, 0) == first.count(state) + second.count(state), state
    per_day = _query(folder, "SELECT dt, batch_id, count(*) FROM {catalog} GROUP BY ALL "
                             "ORDER BY dt")
    assert [(str(dt), b, n) for dt, b, n in per_day] == [
        ("2025-03-14", "b-one", len(first.rows)), ("2025-03-15", "b-two", len(second.rows))]

    for record_uri, record in second.records.items():
        (seed, width, height, sha256, size, dt, model, negative, extend, duration, stored_at,
         polls) = _query(folder, (
            "SELECT seed, width, height, sha256, size, dt, model, negative_prompt, "
            "prompt_extend, duration, stored_at, polls FROM {catalog} "
            f"WHERE metadata_uri = '{record_uri}'"))[0]
        assert (seed, width, height, sha256, size) == (
            record.inputs["seed"], record.width, record.height, record.sha256, record.size)
        assert (str(dt), model, negative, extend, duration, polls) == (
            "2025-03-15", record.model, "blurry", record.inputs["prompt_extend"], 5, 3)
        assert stored_at == record.timings.stored_at

    failed = _query(folder, "SELECT batch_id, line, reason, seed, image_uri, width FROM {catalog}"
                            " WHERE state = 'failed' ORDER BY batch_id")
    assert failed == [("b-one", 4, FAILED_REASON, 104, None, None),
                      ("b-two", 4, FAILED_REASON, 204, None, None)]


def test_the_file_carries_its_schema_and_no_dt_column(store, tmp_path):
    batch = write_batch(store, "b-schema", WHEN)
    uri = write_catalog(store, batch.batch_id, day=DAY_ONE)
    path = tmp_path / "b.parquet"
    path.write_bytes(store.read_bytes(uri))
    table = pq.read_table(path)
    assert table.schema.equals(CATALOG_SCHEMA)
    assert table.num_rows == len(batch.rows)
    assert table.column("state").to_pylist() == [row.state.value for row in batch.rows]


def test_rebuild_writes_what_the_batch_writer_writes_under_the_manifests_date(store):
    one = write_batch(store, "b-one", WHEN)
    two = write_batch(store, "b-two", WHEN, seed0=200)
    # b-one's manifest was completed on DAY_ONE; b-two lost its summary (older data), so
    # its date is the manifest's LastModified: today.
    store.put_json(store.layout.manifest_summary("b-one"),
                   {"batch_id": "b-one", "written_at": "2025-03-14T23:59:00+00:00"})
    store.s3.delete_object(Bucket=store.bucket, Key=store.layout.manifest_summary("b-two"))
    today = datetime.now(UTC).date()

    by_writer = [write_catalog(store, one.batch_id, one.rows, one.records),
                 write_catalog(store, two.batch_id, two.rows, two.records)]
    written_by_writer = {uri: store.read_bytes(uri) for uri in by_writer}
    rebuilt = rebuild_catalog(store)

    assert rebuilt == by_writer == [
        store.uri("fg/catalog/dt=2025-03-14/b-one.parquet"),
        store.uri(f"fg/catalog/dt={today:%Y-%m-%d}/b-two.parquet")]
    for uri in rebuilt:  # rewritten in place, to the same content
        assert store.read_bytes(uri) == written_by_writer[uri]
    assert len(list(store.list_keys("catalog/"))) == 2


def test_catalog_rebuild_command_prints_each_file(store):
    write_batch(store, "b-cli", WHEN)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["catalog", "rebuild", "--bucket", "flashgen-test",
                                          "--prefix", "fg"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    today = datetime.now(UTC).date()
    assert result.stdout.split() == [store.uri(f"fg/catalog/dt={today:%Y-%m-%d}/b-cli.parquet")]


def test_catalog_rebuild_without_a_bucket_exits_2_with_one_line(store, monkeypatch):
    monkeypatch.delenv("FLASHGEN_BUCKET", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["catalog", "rebuild"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert result.output.strip() == "error: no S3 bucket: set FLASHGEN_BUCKET or pass bucket"
