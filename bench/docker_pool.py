"""``docker``: one batch sharded across two containers of the Docker work pool.

The batch (4,000 images, 400 with ``--quick``; concurrency 32; 1 s jobs; fresh emulator)
runs as ``generate-images`` in this process, the parent, with ``shard_size`` half the batch
and ``shard_deployment=generate-shard/docker``: two ``generate-shard`` runs, each a
container of ``flashgen:latest`` started by one prefect-docker worker (``--limit 2``) of
the ``flashgen-docker`` pool, as an operator sets it up: ``make image`` (cached layers;
dockerd started without a bridge when none answers), ``flashgen provision`` for the pool,
``prefect deploy --name generate-shard/docker`` from prefect.yaml, the deployment's job
variables given the stack's env, a state volume and the token as a mounted file. The
containers run read-only on the host's network, so they reach the Prefect server, the
emulator and moto on 127.0.0.1.

Figures: makespan over the ideal ``ceil(N/C) × job``; CPU per image of the parent (this
process), the worker, the containers and the server (Prefect server and PostgreSQL), with
the sum of the first three as ``flow_cpu`` to set beside ``scale-out``'s; duplicate
submissions and items stored. The containers' CPU is read from their cgroups, sampled
every ``SAMPLE_S`` while they run: a container's cgroup goes when it exits, so the figure
is a lower bound, short by at most one sample's CPU per container.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.measure import cpu_seconds
from bench.pools import CONCURRENCY, JOB_S, PoolSpec, WorkerPool, figures, sharded
from bench.services import BUCKET, REPO, TOKEN, Services

CONTAINERS = 2
SECRET = "/run/secrets/runcomfy-token"  # where Docker or Kubernetes would mount it
IMAGE = "flashgen:latest"
SAMPLE_S = 0.25
DOCKER = PoolSpec(pool="flashgen-docker", deployment="generate-shard/docker",
                  create=("flashgen.cli", "provision"), create_without=("FLASHGEN_BUCKET",),
                  workers=1, limit=CONTAINERS, worker_type="docker")
# A container's CPU usage, by cgroup layout: v1 with Docker's cgroupfs driver (nanoseconds),
# v2 with the systemd driver, v2 with cgroupfs (microseconds, in cpu.stat).
CGROUPS = (("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage", 1e-9),
           ("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat", 1e-6),
           ("/sys/fs/cgroup/docker/{id}/cpu.stat", 1e-6))


def docker_pool(services: Services, images: int) -> dict[str, Any]:
    """The batch sharded across ``CONTAINERS`` containers of the Docker work pool."""
    from bench.scenarios import _set_limit
    from flashgen.infra.docker_daemon import docker_daemon
    from flashgen.infra.stack import FAKE_AWS

    result: dict[str, Any] = {"images": images, "concurrency": CONCURRENCY, "job_s": JOB_S,
                              "containers": CONTAINERS}
    ideal = math.ceil(images / CONCURRENCY) * JOB_S
    mounts = Path(tempfile.mkdtemp(prefix="flashgen-bench-docker-"))
    state, token = mounts / "state", mounts / "token"
    state.mkdir()
    state.chmod(0o777)  # the image's user, whatever its uid, writes its journal there
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    with docker_daemon(mounts / "dockerd.log"):
        _build_image()
        with services.emulator(JOB_S) as api:
            env = {**FAKE_AWS, "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
                   "RUNCOMFY_BASE_URL": api.url, "FLASHGEN_BUCKET": BUCKET,
                   "FLASHGEN_TOKEN_FILE": SECRET, "FLASHGEN_OUTPUT_NETWORKS": "127.0.0.0/8",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
            spec = dataclasses.replace(DOCKER, job_variables={
                "env": env, "volumes": [f"{state}:/state", f"{token}:{SECRET}:ro"]})
            with WorkerPool(services, spec) as worker, _container_cpu() as containers:
                _set_limit(CONCURRENCY)
                parent0, worker0 = cpu_seconds(), worker.cpu_seconds()
                server0, began = services.cpu_seconds(), time.perf_counter()
                summary = asyncio.run(sharded("docker", images, math.ceil(images / CONTAINERS),
                                              spec))
                wall = time.perf_counter() - began
                parent_cpu, worker_cpu = cpu_seconds() - parent0, worker.cpu_seconds() - worker0
                server_cpu = services.cpu_seconds() - server0
                ids = [run["infrastructure_pid"].rsplit(":", 1)[1] for run in worker.shard_runs()
                       if run["infrastructure_pid"]]
                _wait_gone(ids)
            container_cpu = sum(cpu for container, cpu in containers.items()
                                if any(container.startswith(i) for i in ids))
            result.update(figures("docker", images, ideal, wall,
                                  parent_cpu + worker_cpu + container_cpu, server_cpu, summary,
                                  api.stats()["duplicate_submissions"]))
    result.update({"docker_containers": len(ids),
                   "docker_parent_cpu_ms_per_image": 1000 * parent_cpu / images,
                   "docker_worker_cpu_ms_per_image": 1000 * worker_cpu / images,
                   "docker_container_cpu_ms_per_image": 1000 * container_cpu / images})
    return result


def _build_image() -> None:
    """``make image``: every layer cached but flashgen's own, so the image runs this code."""
    built = subprocess.run(["make", "-C", str(REPO), "image", f"PYTHON={sys.executable}"],
                           capture_output=True, text=True, timeout=1800)
    if built.returncode != 0:
        raise RuntimeError(f"make image failed:\n{built.stdout[-2000:]}{built.stderr[-2000:]}")


@contextmanager
def _container_cpu() -> Iterator[dict[str, float]]:
    """Each running container's CPU seconds (by full id), its last sample, while inside."""
    seen: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            for pattern, unit in CGROUPS:
                for path in Path("/").glob(pattern.format(id="*").lstrip("/")):
                    used = _usage(path)
                    if used is not None:
                        container = path.parent.name.removeprefix("docker-")
                        seen[container.removesuffix(".scope")] = used * unit

    sampler = threading.Thread(target=sample, name="container-cpu", daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        done.set()
        sampler.join()


def _usage(path: Path) -> float | None:
    try:
        text = path.read_text()
    except OSError:  # the container exited meanwhile
        return None
    if path.name == "cpuacct.usage":
        return float(text)
    for line in text.splitlines():
        if line.startswith("usage_usec "):
            return float(line.split()[1])
    return None


def _wait_gone(ids: list[str], timeout: float = 120) -> None:
    """Until the shard runs' containers have exited (their last CPU sample taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = subprocess.run(["docker", "ps", "-q", "--no-trunc"], capture_output=True,
                                 text=True, timeout=60).stdout.split()
        if not set(ids) & set(running):
            return
        time.sleep(SAMPLE_S)
