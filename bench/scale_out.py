"""``scale-out``: one batch sharded across process workers, beside the same batch in one run.

The batch (4,000 images, 400 with ``--quick``; concurrency 32; 1 s jobs) runs twice against
a fresh emulator each time:

- **one run**: ``generate-images`` in this process, as ``single`` runs;
- **sharded**: ``generate-images`` in this process as the parent, with ``shard_size`` a
  quarter of the batch and ``shard_deployment=generate-shard/process``: four
  ``generate-shard`` runs, one on each of four ``prefect worker start`` processes of the
  ``flashgen-process`` pool (``--limit 1``), deployed with ``prefect deploy`` from
  prefect.yaml as an operator does.

Figures for each: makespan over the ideal ``ceil(N/C) × job``, flow CPU per image (this
process, plus for the sharded batch the workers and the flow-run processes they started
and reaped, from /proc), server CPU per image (the Prefect server and its PostgreSQL), and
duplicate submissions at the emulator. Every process shares this machine's cores, so on a
small machine the sharded batch shows what sharding costs, not what more machines gain:
read the CPU per image, which does not depend on where the processes run.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from bench.measure import cpu_seconds
from bench.pools import CONCURRENCY, JOB_S, PoolSpec, WorkerPool, figures, sharded
from bench.services import Services

WORKERS = 4
POOL = "flashgen-process"
PROCESS = PoolSpec(pool=POOL, deployment="generate-shard/process",
                   create=("prefect", "work-pool", "create", POOL, "--type", "process",
                           "--overwrite"),
                   workers=WORKERS, limit=1)


def scale_out(services: Services, images: int) -> dict[str, Any]:
    """The batch in one run, then sharded across ``WORKERS`` process workers."""
    from bench.scenarios import _flow, _set_limit

    result: dict[str, Any] = {"images": images, "concurrency": CONCURRENCY, "job_s": JOB_S,
                              "workers": WORKERS}
    ideal = math.ceil(images / CONCURRENCY) * JOB_S
    with services.emulator(JOB_S) as api:
        _set_limit(CONCURRENCY)
        flow0, server0, began = cpu_seconds(), services.cpu_seconds(), time.perf_counter()
        summary = asyncio.run(_flow("one-run", images, CONCURRENCY))
        wall = time.perf_counter() - began
        result.update(figures("one_run", images, ideal, wall, cpu_seconds() - flow0,
                              services.cpu_seconds() - server0, summary,
                              api.stats()["duplicate_submissions"]))
    with services.emulator(JOB_S) as api, WorkerPool(services, PROCESS) as workers:
        _set_limit(CONCURRENCY)
        flow0, server0 = cpu_seconds() + workers.cpu_seconds(), services.cpu_seconds()
        began = time.perf_counter()
        summary = asyncio.run(sharded("sharded", images, math.ceil(images / WORKERS), PROCESS))
        wall = time.perf_counter() - began
        workers.wait_reaped()  # every flow-run process's CPU is in its worker's
        flow_cpu = cpu_seconds() + workers.cpu_seconds() - flow0
        result.update(figures("sharded", images, ideal, wall, flow_cpu,
                              services.cpu_seconds() - server0, summary,
                              api.stats()["duplicate_submissions"]))
    return result
