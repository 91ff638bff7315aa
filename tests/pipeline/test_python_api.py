"""``flashgen.generate`` / ``agenerate``: the Python API a data team calls, run for real
in-process (Prefect test server, the emulator on a socket, moto's in-memory S3).

The wheel installed into a project with its own ``flows``/``tasks`` packages, and the links
opened over HTTP, are in tests/test_packaging.py."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run as runtime_flow_run

import flashgen
from flashgen.records import ItemState
from tests.pipeline.conftest import BUCKET, TOKEN


async def test_agenerate_returns_every_input_in_order_with_its_images(pipeline, emulator):
    result = await flashgen.agenerate(
        ["a red fox in snow", {"prompt": "an owl at dusk", "seed": 7, "aspect_ratio": "9:16"},
         {"prompt": "a bad ratio", "aspect_ratio": "7:3"}],
        bucket=BUCKET, batch_id="api-1", raise_on_failure=False)
    assert isinstance(result, flashgen.BatchResult)
    assert (result.total, result.stored, result.invalid, result.failed) == (3, 2, 1, 0)
    assert [i.line for i in result.items] == [1, 2, 3]
    assert [i.state for i in result.items] == [ItemState.STORED, ItemState.STORED,
                                                ItemState.INVALID]
    assert "aspect_ratio" in result.items[2].reason and not result.items[2].images
    owl = result.items[1]
    assert (owl.prompt, owl.seed, owl.request_id is not None) == ("an owl at dusk", 7, True)
    (image,) = owl.images
    assert (image.width, image.height) == (810, 1440)
    data = pipeline.read_bytes(image.s3_uri)
    assert hashlib.sha256(data).hexdigest() == image.sha256 and image.size == len(data)
    assert urlsplit(image.url).scheme == "https" and "Signature" in image.url
    assert result.manifest_uri and result.catalog_uri and result.gallery_url
    assert emulator.stats()["submissions"] == 2
    assert TOKEN not in result.model_dump_json()
    with pytest.raises(flashgen.BatchFailedError) as failed:
        result.raise_for_failures()
    assert failed.value.summary is result and "line 3" in str(failed.value)


async def test_a_failed_batch_raises_by_default_after_storing_what_it_could(pipeline, emulator):
    with pytest.raises(flashgen.BatchFailedError) as failed:
        await flashgen.agenerate(["a lighthouse in fog", {"prompt": "x", "aspect_ratio": "7:3"}],
                                 bucket=BUCKET, batch_id="api-2")
    result = failed.value.summary
    assert (result.stored, result.invalid) == (1, 1) and result.items[0].images
    again = await flashgen.agenerate(["a lighthouse in fog"], bucket=BUCKET)
    assert (again.stored, again.skipped) == (0, 1)  # the ledger: nothing paid twice
    assert again.items[0].images[0].sha256 == result.items[0].images[0].sha256
    assert emulator.stats()["submissions"] == 1


@pytest.mark.parametrize("call", [
    dict(concurrency=0),
    dict(bucket="Not_A_Bucket"),
    dict(max_failure_ratio=2),
    dict(strict=True, prompts=["fine", {"prompt": "bad", "aspect_ratio": "7:3"}]),
    dict(max_items=1, prompts=["one", "two"]),
    dict(url_ttl=0),
], ids=["concurrency", "bucket", "ratio", "strict", "budget", "url_ttl"])
async def test_bad_input_raises_input_error_before_anything_is_sent(pipeline, emulator, call):
    call = {"prompts": ["a red fox"], **call}
    with pytest.raises(flashgen.InputError) as refused:
        await flashgen.agenerate(**call)
    assert "\n" not in str(refused.value)  # one line, as the CLI prints it
    assert emulator.stats()["submissions"] == 0


async def test_dry_run_pays_nothing_and_returns_the_plan(pipeline, emulator):
    result = await flashgen.agenerate(["a", "b"], bucket=BUCKET, dry_run=True)
    assert result.dry_run and result.plan.to_send == 2 and result.items == []
    assert emulator.stats()["submissions"] == 0


async def test_generate_works_inside_a_running_event_loop(pipeline, emulator):
    # This test body runs on an event loop, as a Jupyter cell does: asyncio.run would fail.
    result = flashgen.generate(["a kettle on a stove"], bucket=BUCKET)
    assert result.stored == 1 and result.items[0].images[0].sha256


async def _parent_of(flow_run_id: str) -> str | None:
    async with get_client() as client:
        child = await client.read_flow_run(flow_run_id)
        if child.parent_task_run_id is None:
            return None
        return str((await client.read_task_run(child.parent_task_run_id)).flow_run_id)


async def test_generate_in_a_sync_flow_and_agenerate_in_an_async_flow_are_subflows(
        pipeline, emulator):
    @flow
    def sync_pipeline() -> tuple[str, flashgen.BatchResult]:
        return runtime_flow_run.id, flashgen.generate(["a paper boat"], bucket=BUCKET)

    @flow
    async def async_pipeline() -> tuple[str, flashgen.BatchResult]:
        return runtime_flow_run.id, await flashgen.agenerate(["a tin robot"], bucket=BUCKET)

    # The sync flow is called from a thread with no loop, as a plain script would call it.
    import asyncio

    for parent_id, result in (await asyncio.to_thread(sync_pipeline), await async_pipeline()):
        assert result.stored == 1
        assert await _parent_of(result.flow_run_id) == parent_id


def test_the_readme_example_runs_as_written(pipeline, emulator, capsys):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Use from Python", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(example, "README.md (Use from Python)", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["1", "stored"], ["2", "stored"]]
    assert lines[1].split()[2:4] == ["810", "1440"]  # 9:16
    assert emulator.stats()["submissions"] == 2
