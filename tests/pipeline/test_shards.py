"""A sharded batch run in-process: planned once, run by child flow runs, merged into one
manifest, gallery and catalog file; its budget held for the whole batch before anything
is sent. (Shards on a real work pool, with one killed: tests/integration/test_operations.py,
``test_a_sharded_batch_on_the_work_pool_survives_a_killed_shard_paying_nothing_twice``.)"""

from __future__ import annotations

import io
from collections import Counter

import pyarrow.parquet as pq
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from flashgen.errors import BudgetError
from flashgen.records import ItemState
from flashgen.flows.generate import generate_images
from flashgen.flows.summary import summary_of

PROMPTS = [f"a paper lantern number {n}" for n in range(8)]


async def _run(**params):
    state = await generate_images(**params, return_state=True)
    return state, summary_of(await state.result(raise_on_failure=False))


async def _shard_runs(batch_id: str) -> list:
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_filter=FlowFilter(
            name=FlowFilterName(any_=["generate-shard"])))
    return [r for r in runs if r.parameters.get("batch_id") == batch_id]


async def test_a_sharded_batch_stores_every_item_once_and_publishes_one_manifest(
        pipeline, emulator):
    state, _ = await _run(prompts=PROMPTS[:1], batch_id="before")  # one already stored
    assert state.is_completed()
    rows = [*PROMPTS, PROMPTS[3], {"prompt": "bad", "aspect_ratio": "7:3"}]

    state, summary = await _run(prompts=rows, batch_id="sharded", shard_size=3,
                                max_shards_running=2, max_failure_ratio=0.1)

    assert state.is_completed(), state.message
    # 7 new items in shards of 3: three children, each run once, none publishing for the batch.
    shard_runs = await _shard_runs("sharded")
    assert sorted(r.parameters["index"] for r in shard_runs) == [0, 1, 2]
    assert all(r.state.is_completed() for r in shard_runs)
    assert emulator.stats()["submissions"] == 1 + 7
    assert (summary.total, summary.stored, summary.skipped, summary.invalid) == (10, 7, 2, 1)
    manifest = pipeline.read_manifest("sharded")
    assert sorted(r.line for r in manifest) == list(range(1, 11))
    states = Counter(r.state for r in manifest)
    assert states == {ItemState.STORED: 7, ItemState.SKIPPED: 2, ItemState.INVALID: 1}
    stored = [r for r in manifest if r.state == ItemState.STORED]
    assert sorted(r.prompt for r in stored) == sorted(PROMPTS[1:])
    images = [key for key, *_ in pipeline.list_keys("images/")]
    assert len(images) == 8  # each item stored once: 1 earlier + 7 now
    assert {u for r in stored for u in r.image_uris} <= {pipeline.uri(k) for k in images}
    # One gallery and one catalog file for the whole batch.
    gallery = pipeline.read_text(pipeline.layout.gallery("sharded"))
    assert all(p in gallery for p in PROMPTS)
    catalog = pq.read_table(io.BytesIO(pipeline.read_bytes(summary.catalog_uri)))
    assert sorted(catalog.column("line").to_pylist()) == list(range(1, 11))
    manifests = [k for k, *_ in pipeline.list_keys("manifests/") if k.endswith(".jsonl")]
    assert sorted(manifests) == [pipeline.layout.manifest(b) for b in ("before", "sharded")]
    galleries = [k for k, *_ in pipeline.list_keys("galleries/")]
    assert len(galleries) == 2


async def test_max_items_below_the_batch_refuses_before_any_shard_starts(pipeline, emulator):
    state, error = await _run(prompts=PROMPTS, batch_id="over-budget", shard_size=3,
                              max_items=5)
    assert state.is_failed() and state.name == "Refused"
    assert isinstance(error, BudgetError) and "over --max-items 5" in str(error)
    assert emulator.stats()["submissions"] == 0
    assert await _shard_runs("over-budget") == []
    assert not list(pipeline.list_keys("shards/"))


async def test_a_shard_deployment_that_does_not_exist_refuses_before_anything_is_sent(
        pipeline, emulator):
    state, error = await _run(prompts=PROMPTS, batch_id="no-pool", shard_size=3,
                              shard_deployment="generate-shard/missing")
    assert state.is_failed() and state.name == "Refused"
    assert error.field == "shard_deployment" and "generate-shard/missing" in str(error)
    assert emulator.stats()["submissions"] == 0
