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
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.measure import cpu_seconds
from bench.services import BUCKET, REPO, Services

CONCURRENCY = 32
JOB_S = 1.0
WORKERS = 4
POOL = "flashgen-process"
DEPLOYMENT = "generate-shard/process"


def scale_out(services: Services, images: int) -> dict[str, Any]:
    """The batch in one run, then sharded across ``WORKERS`` process workers."""
    from bench.scenarios import _flow, _set_limit

    figures: dict[str, Any] = {"images": images, "concurrency": CONCURRENCY, "job_s": JOB_S,
                               "workers": WORKERS}
    ideal = math.ceil(images / CONCURRENCY) * JOB_S
    with services.emulator(JOB_S) as api:
        _set_limit(CONCURRENCY)
        flow0, server0, began = cpu_seconds(), services.cpu_seconds(), time.perf_counter()
        summary = asyncio.run(_flow("one-run", images, CONCURRENCY))
        wall = time.perf_counter() - began
        figures.update(_figures("one_run", images, ideal, wall, cpu_seconds() - flow0,
                                services.cpu_seconds() - server0, summary,
                                api.stats()["duplicate_submissions"]))
    with services.emulator(JOB_S) as api, _Workers(services) as workers:
        _set_limit(CONCURRENCY)
        flow0, server0 = cpu_seconds() + workers.cpu_seconds(), services.cpu_seconds()
        began = time.perf_counter()
        summary = asyncio.run(_sharded("sharded", images, math.ceil(images / WORKERS)))
        wall = time.perf_counter() - began
        workers.wait_reaped()  # every flow-run process's CPU is in its worker's
        flow_cpu = cpu_seconds() + workers.cpu_seconds() - flow0
        figures.update(_figures("sharded", images, ideal, wall, flow_cpu,
                                services.cpu_seconds() - server0, summary,
                                api.stats()["duplicate_submissions"]))
    return figures


async def _sharded(run: str, n: int, shard_size: int) -> Any:
    from flashgen.settings import get_settings
    from flashgen.flows.generate import generate_images
    from flashgen.flows.summary import summary_of

    get_settings.cache_clear()
    state = await generate_images(
        prompts=[f"{run} {i}" for i in range(n)], bucket=BUCKET, prefix=run,
        concurrency=CONCURRENCY, batch_id=f"{run}-{time.time_ns()}", shard_size=shard_size,
        max_shards_running=WORKERS, shard_deployment=DEPLOYMENT, return_state=True)
    return summary_of(await state.result(raise_on_failure=False))


def _figures(name: str, n: int, ideal: float, wall: float, flow_cpu: float,
             server_cpu: float, summary: Any, duplicates: int) -> dict[str, Any]:
    if isinstance(summary, BaseException):
        raise summary
    return {f"{name}_wall_s": wall, f"{name}_makespan_over_ideal": wall / ideal,
            f"{name}_flow_cpu_ms_per_image": 1000 * flow_cpu / n,
            f"{name}_server_cpu_ms_per_image": 1000 * server_cpu / n,
            f"{name}_stored": summary.stored, f"{name}_failed_items": summary.failed,
            f"{name}_duplicate_submissions": duplicates}


class _Workers:
    """The pool, the shard deployment (``prefect deploy`` from prefect.yaml) and ``WORKERS``
    process workers, each taking one flow run at a time; stopped on exit."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> _Workers:
        env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1", "PWD": str(REPO)}
        prefect = [sys.executable, "-m", "prefect"]
        subprocess.run([*prefect, "work-pool", "create", POOL, "--type", "process",
                        "--overwrite"], env=env, cwd=REPO, check=True, capture_output=True)
        subprocess.run([*prefect, "--no-prompt", "deploy", "--name", "process"], env=env,
                       cwd=REPO, check=True, capture_output=True, timeout=300)
        logs = Path(tempfile.mkdtemp(prefix="flashgen-bench-workers-"))
        for n in range(WORKERS):
            with open(logs / f"worker-{n}.log", "wb") as log:
                self._procs.append(subprocess.Popen(
                    [*prefect, "worker", "start", "--pool", POOL, "--name", f"bench-{n}",
                     "--limit", "1"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True))
        deadline = time.monotonic() + 180
        while self._online() < WORKERS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{WORKERS} workers not online; logs in {logs}")
            time.sleep(1)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def cpu_seconds(self) -> float:
        """The workers' CPU, with that of the flow-run processes they started and reaped."""
        total = 0
        for proc in self._procs:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])
        return total / os.sysconf("SC_CLK_TCK")

    def wait_reaped(self, timeout: float = 120) -> None:
        """Until no worker has a flow-run process left (its CPU is counted once reaped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
                Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().strip()
                for p in self._procs):
            time.sleep(0.5)

    def _online(self) -> int:
        api = self.services.prefect.api_url
        workers = httpx.post(f"{api}/work_pools/{POOL}/workers/filter", json={}, timeout=10)
        return sum(w["status"] == "ONLINE" for w in workers.json()) if workers.is_success else 0
