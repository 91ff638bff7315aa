"""The README's spend-per-day query, run with DuckDB over catalog files as written."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

import pytest
from batch_views_data import WHEN, write_batch

from flashgen.catalog import write_catalog
from flashgen.records import ItemState
from flashgen.storage import Store

duckdb = pytest.importorskip("duckdb")
README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_query() -> str:
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), re.S)
    (query,) = [b for b in blocks if "sum(cost)" in b]
    return query


def test_the_readme_query_sums_spend_per_day_and_deployment(store: Store, tmp_path: Path):
    for batch_id, day, price in (("b-one", date(2025, 3, 14), 0.025),
                                 ("b-two", date(2025, 3, 15), 0.03)):
        batch = write_batch(store, batch_id, WHEN + timedelta(days=day.day - 14))
        # What the flow writes: the cost the API reported, on each row this batch paid for.
        rows = [row.model_copy(update={"cost": price}) if row.state == ItemState.STORED
                else row for row in batch.rows]
        write_catalog(store, batch_id, rows, batch.records, day=day)
    below = store.layout.below()
    for listed in store.list_keys("catalog/"):
        target = tmp_path / listed.s3_key.removeprefix(below)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.read_bytes(listed.s3_key))

    query = _readme_query().replace("s3://my-bucket/flashgen/catalog", str(tmp_path / "catalog"))
    result = duckdb.connect().execute(query).fetchall()
    assert [(str(dt), deployment, jobs, usd) for dt, deployment, jobs, usd in result] == [
        ("2025-03-14", "on-demand", 2, 0.05), ("2025-03-15", "on-demand", 2, 0.06)]
