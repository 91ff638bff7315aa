"""A batch keeps no state in the flow for items that have ended.

Prefect links every task result, and each of its fields, to its task run's state for the
flow run's whole life (``prefect.utilities.engine.link_state_to_result``): four tasks per
image left 11 states per image behind, the largest part of a 10,000-image run's memory.
``flashgen.tasks.generation.forget`` drops them as each item ends.
"""

from __future__ import annotations

from prefect import flow
from prefect.context import FlowRunContext

from flashgen.options import BatchOptions
from flashgen.flows.generate import run_batch


async def test_no_task_state_stays_linked_once_the_items_have_ended(pipeline, emulator):
    @flow
    async def batch():
        summary = await run_batch(BatchOptions.parse(
            prompts=[f"a heron, study {i}" for i in range(12)], concurrency=4))
        return summary, len(FlowRunContext.get().run_results)

    summary, links = await batch()
    assert summary.stored == 12, summary.failures
    assert emulator.stats()["submissions"] == 12
    assert links == 0
