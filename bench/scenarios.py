"""The benchmark scenarios: each a small function that runs flashgen's public flow
(``flashgen.flows.generate.generate_images``) against a fresh emulator and returns its figures.

Every flow runs in this process against the real Prefect server of ``Services``; whatever
``generate_images`` does about the shared limit is what gets measured.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench import baseline
from bench.measure import ProcessCost, median, percentile, utilisation
from bench.services import BUCKET, TOKEN, Services

LIMIT_NAME = "runcomfy-api"


@dataclass(frozen=True)
class Sizes:
    """Scenario sizes; ``quick`` is a tenth of the full bench."""

    single: int = 1000
    shared: int = 200
    late_big: int = 400
    late_small: int = 4
    scale: int = 10_000
    task_runs: int = 10_000
    scale_out: int = 4000
    docker: int = 4000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(single=100, shared=20, late_big=40, late_small=4, scale=1000,
                   task_runs=1000, scale_out=400, docker=400)


def single(services: Services, sizes: Sizes) -> dict[str, Any]:
    """One batch: makespan, polls, detection lag, orchestration CPU and memory."""
    return _one_flow(services, "single", sizes.single, 16, 2.0, job_figures=True)


def baseline_single(services: Services, sizes: Sizes) -> dict[str, Any]:
    """The user's own script (bench/baseline.py) on the ``single`` workload."""
    n, c, job = sizes.single, 16, 2.0
    with services.emulator(job) as api:
        with ProcessCost() as cost:
            wall, out = _timed(baseline.generate(
                [f"baseline {i}" for i in range(n)], api.url, TOKEN, BUCKET, concurrency=c))
        stats = api.stats()
    return {"images": n, "concurrency": c, "job_s": job, "wall_s": wall,
            "makespan_over_ideal": wall / _ideal(n, c, job), "stored": out["stored"],
            "polls_median": median(out["polls"]), "polls_p95": percentile(out["polls"], 95),
            **_cost(cost, n), "duplicate_submissions": stats["duplicate_submissions"]}


def shared(services: Services, sizes: Sizes, limit: int) -> dict[str, Any]:
    """Two runs started together, each wanting 4, under one global limit."""
    n, wanted, job = sizes.shared, 4, 2.0
    with services.emulator(job) as api:
        _set_limit(limit)
        runs = (f"shared{limit}-a", f"shared{limit}-b")  # new prompts: nothing is skipped
        began = time.time()
        wall, summaries = _timed(_gather(*(_flow(run, n, wanted) for run in runs)))
        jobs = {j["request_id"]: j for j in api.job_times()}
        firsts = sorted(_first_submit(_records(run), jobs) - began for run in runs)
        stats = api.stats()
    return {"images_per_run": n, "wanted": wanted, "limit": limit, "job_s": job,
            "wall_s": wall, "pair_makespan_over_ideal": wall / _ideal(2 * n, limit, job),
            "slot_utilisation": utilisation(list(jobs.values()), limit),
            "first_submit_s": firsts[0], "second_run_first_submit_s": firsts[1],
            "failed_items": _failed(*summaries),
            "duplicate_submissions": stats["duplicate_submissions"]}


def late(services: Services, sizes: Sizes, delay: float = 10.0) -> dict[str, Any]:
    """A small run started while a big one holds the API: how long the small one takes."""
    limit, job = 4, 2.0
    with services.emulator(job) as api:
        _set_limit(limit)

        async def both() -> tuple[float, list[Any]]:
            big = asyncio.ensure_future(_flow("late-big", sizes.late_big, limit))
            await asyncio.sleep(delay)
            small_began = time.perf_counter()
            small = await _flow("late-small", sizes.late_small, limit)
            small_wall = time.perf_counter() - small_began
            return small_wall, [await big, small]

        small_wall, summaries = asyncio.run(both())
        stats = api.stats()
    return {"big_images": sizes.late_big, "small_images": sizes.late_small, "limit": limit,
            "job_s": job, "small_run_s": small_wall, "small_run_over_job": small_wall / job,
            "failed_items": _failed(*summaries),
            "duplicate_submissions": stats["duplicate_submissions"]}


def scale(services: Services, sizes: Sizes) -> dict[str, Any]:
    """Many short jobs at high concurrency: what orchestration costs per image."""
    return _one_flow(services, "scale", sizes.scale, 64, 0.2, job_figures=False)


def _one_flow(services: Services, run: str, n: int, c: int, job: float, *,
              job_figures: bool) -> dict[str, Any]:
    """One flow run of ``n`` images at concurrency ``c`` against ``job``-second jobs.

    The server's CPU is counted until it has recorded every task run the flow sent (it
    records them from their events, after the flow has returned), or stopped recording.
    """
    from bench import taskruns

    db = services.postgres
    with services.emulator(job) as api:
        _set_limit(c)
        before = taskruns.row_counts(db)["task_run"]
        with ProcessCost(services) as cost, taskruns.SentTaskRuns() as sent:
            wall, summary = _timed(_flow(run, n, c))
            recorded = taskruns.wait_recorded(db, before, len(sent.ids))
        figures = _job_figures(_records(run), api.job_times()) if job_figures else {}
        stats = api.stats()
    return {"images": n, "concurrency": c, "job_s": job, "wall_s": wall,
            "makespan_over_ideal": wall / _ideal(n, c, job), **figures, **_cost(cost, n),
            "task_runs_sent": len(sent.ids), "task_runs_recorded": recorded,
            "failed_items": _failed(summary),
            "duplicate_submissions": stats["duplicate_submissions"]}


def task_runs(services: Services, sizes: Sizes) -> dict[str, Any]:
    """What one Prefect task run costs (bench/taskruns.py), and whether the server records
    every one of many sent quickly."""
    from bench import taskruns

    n, workers, db = sizes.task_runs, 16, services.postgres
    before = taskruns.row_counts(db)
    with ProcessCost(services) as cost:
        wall, _ = _timed(taskruns.task_runs(n, workers))
        recorded = taskruns.wait_recorded(db, before["task_run"], n)  # the server's share
    after = taskruns.row_counts(db)
    rows = {f"{table}_rows_per_task_run": (after[table] - before[table]) / n
            for table in taskruns.TABLES}
    return {"task_runs": n, "workers": workers, "wall_s": wall, "recorded": recorded,
            "flow_cpu_ms_per_task_run": 1000 * cost.flow_cpu_s / n,
            "server_cpu_ms_per_task_run": 1000 * cost.server_cpu_s / n, **rows}


# -- helpers ----------------------------------------------------------------------------


async def _flow(run: str, n: int, concurrency: int) -> Any:
    from flashgen.settings import get_settings
    from flashgen.flows.generate import generate_images
    from flashgen.flows.summary import summary_of

    get_settings.cache_clear()  # the emulator's URL changed in the environment
    state = await generate_images(prompts=[f"{run} {i}" for i in range(n)], bucket=BUCKET,
                                  prefix=run, concurrency=concurrency,
                                  batch_id=f"{run}-{time.time_ns()}", return_state=True)
    return summary_of(await state.result(raise_on_failure=False))  # a failed item is a figure


async def _gather(*flows: Any) -> list[Any]:
    return list(await asyncio.gather(*flows))


def _timed(coroutine: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    result = asyncio.run(coroutine)
    return time.perf_counter() - began, result


def _failed(*summaries: Any) -> int:
    """Items that ended failed or invalid. A run refused before its summary is the bench's
    own mistake: raised."""
    for summary in summaries:
        if isinstance(summary, BaseException):
            raise summary
    return sum(summary.failed + summary.invalid for summary in summaries)


def _set_limit(limit: int) -> None:
    from flashgen.infra.demo import ensure_api_limit

    asyncio.run(ensure_api_limit(LIMIT_NAME, limit))


def _ideal(n: int, c: int, job: float) -> float:
    return math.ceil(n / c) * job


def _records(prefix: str) -> list[dict[str, Any]]:
    """Every metadata record the flow stored under ``prefix``."""
    from flashgen.storage import Store

    store = Store(BUCKET, prefix)
    keys = [o.s3_key for o in store.list_keys("metadata/")]
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(store.read_json, keys))


def _epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def _job_figures(records: list[dict[str, Any]], job_times: list[dict[str, Any]]) -> dict:
    jobs = {j["request_id"]: j for j in job_times}
    polls = [r["polls"] for r in records]
    lags = [_epoch(r["timings"]["completed_at"]) - jobs[r["request_id"]]["completed_at"]
            for r in records if r["timings"].get("completed_at")
            and jobs.get(r["request_id"], {}).get("completed_at")]
    return {"stored": len(records), "polls_median": median(polls),
            "polls_p95": percentile(polls, 95), "detection_lag_p95_s": percentile(lags, 95)}


def _first_submit(records: list[dict[str, Any]], jobs: dict[str, dict[str, Any]]) -> float:
    times = [jobs[r["request_id"]]["submitted_at"] for r in records if r["request_id"] in jobs]
    return min(times) if times else math.nan


def _cost(cost: ProcessCost, n: int) -> dict[str, float]:
    return {"flow_cpu_ms_per_image": 1000 * cost.flow_cpu_s / n,
            "server_cpu_ms_per_image": 1000 * cost.server_cpu_s / n,
            "total_cpu_ms_per_image": 1000 * (cost.flow_cpu_s + cost.server_cpu_s) / n,
            "peak_rss_mb": cost.peak_rss_mb}
