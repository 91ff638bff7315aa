"""What the sharded scenarios share (``scale-out`` on process workers, ``docker`` on a Docker
pool): a work pool with workers and ``generate-shard`` deployed on it, the sharded batch
itself, and the figures both report.

    with WorkerPool(services, PROCESS) as pool:     # pool, deployment, workers; stopped on exit
        summary = asyncio.run(sharded("run", n, shard_size, PROCESS))
        pool.cpu_seconds()                          # the workers' CPU (and reaped children's)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.services import BUCKET, REPO, Services

CONCURRENCY = 32
JOB_S = 1.0


@dataclass(frozen=True)
class PoolSpec:
    """A work pool as an operator sets it up: ``create`` makes the pool, ``prefect deploy
    --name <deployment>`` deploys the shard flow from prefect.yaml, ``workers`` processes
    of ``prefect worker start`` each take ``limit`` flow runs at a time."""

    pool: str
    deployment: str  # as prefect.yaml names it, e.g. generate-shard/process
    create: tuple[str, ...]  # argv after ``python -m``, run in the repository
    workers: int
    limit: int
    worker_type: str | None = None  # --type, when the pool's own is not enough
    # Removed from the environment of ``create`` (e.g. FLASHGEN_BUCKET: provision must
    # leave the bench's bucket as it is).
    create_without: tuple[str, ...] = ()
    job_variables: dict[str, Any] = field(default_factory=dict)  # merged into the deployment's

    @property
    def shards_running(self) -> int:
        return self.workers * self.limit


class WorkerPool:
    """The pool, the shard deployment and the workers of ``spec``; workers stopped on exit."""

    def __init__(self, services: Services, spec: PoolSpec) -> None:
        self.services = services
        self.spec = spec
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> WorkerPool:
        spec, api = self.spec, self.services.prefect.api_url
        env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1", "PWD": str(REPO)}
        create_env = {k: v for k, v in env.items() if k not in spec.create_without}
        subprocess.run([sys.executable, "-m", *spec.create], env=create_env, cwd=REPO,
                       check=True, capture_output=True, timeout=300)
        prefect = [sys.executable, "-m", "prefect"]
        subprocess.run([*prefect, "--no-prompt", "deploy", "--name", spec.deployment], env=env,
                       cwd=REPO, check=True, capture_output=True, timeout=300)
        if spec.job_variables:
            deployment = httpx.get(f"{api}/deployments/name/{spec.deployment}",
                                   timeout=30).raise_for_status().json()
            httpx.patch(f"{api}/deployments/{deployment['id']}", timeout=30, json={
                "job_variables": {**deployment["job_variables"], **spec.job_variables}
            }).raise_for_status()
        self.logs = Path(tempfile.mkdtemp(prefix="flashgen-bench-workers-"))
        kind = ["--type", spec.worker_type] if spec.worker_type else []
        for n in range(spec.workers):
            with open(self.logs / f"worker-{n}.log", "wb") as log:
                self._procs.append(subprocess.Popen(
                    [*prefect, "worker", "start", "--pool", spec.pool, "--name", f"bench-{n}",
                     *kind, "--limit", str(spec.limit)], env=env, cwd=REPO, stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True))
        deadline = time.monotonic() + 180
        while self._online() < spec.workers:
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"{spec.workers} workers not online; logs in {self.logs}")
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
        """Until no worker has a child process left (its CPU is counted once reaped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
                Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().strip()
                for p in self._procs):
            time.sleep(0.5)

    def shard_runs(self) -> list[dict[str, Any]]:
        """The deployment's flow runs, as the server has them."""
        api = self.services.prefect.api_url
        deployment = httpx.get(f"{api}/deployments/name/{self.spec.deployment}",
                               timeout=30).raise_for_status().json()
        return httpx.post(f"{api}/flow_runs/filter", timeout=30, json={
            "deployments": {"id": {"any_": [deployment["id"]]}}}).raise_for_status().json()

    def _online(self) -> int:
        api = self.services.prefect.api_url
        workers = httpx.post(f"{api}/work_pools/{self.spec.pool}/workers/filter", json={},
                             timeout=10)
        return sum(w["status"] == "ONLINE" for w in workers.json()) if workers.is_success else 0


async def sharded(run: str, n: int, shard_size: int, spec: PoolSpec) -> Any:
    """``generate-images`` in this process as the parent of shards on ``spec``'s pool."""
    from flashgen.settings import get_settings
    from flashgen.flows.generate import generate_images
    from flashgen.flows.summary import summary_of

    get_settings.cache_clear()
    state = await generate_images(
        prompts=[f"{run} {i}" for i in range(n)], bucket=BUCKET, prefix=run,
        concurrency=CONCURRENCY, batch_id=f"{run}-{time.time_ns()}", shard_size=shard_size,
        max_shards_running=spec.shards_running,
        shard_deployment=spec.deployment,
        return_state=True)
    return summary_of(await state.result(raise_on_failure=False))


def figures(name: str, n: int, ideal: float, wall: float, flow_cpu: float,
            server_cpu: float, summary: Any, duplicates: int) -> dict[str, Any]:
    """One run's figures, each key prefixed with ``name``."""
    if isinstance(summary, BaseException):
        raise summary
    return {f"{name}_wall_s": wall, f"{name}_makespan_over_ideal": wall / ideal,
            f"{name}_flow_cpu_ms_per_image": 1000 * flow_cpu / n,
            f"{name}_server_cpu_ms_per_image": 1000 * server_cpu / n,
            f"{name}_stored": summary.stored, f"{name}_failed_items": summary.failed,
            f"{name}_duplicate_submissions": duplicates}
