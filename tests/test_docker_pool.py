"""flashgen's image on a Docker work pool, as operations runs it: a Prefect server,
`flashgen provision` (which makes the `flashgen-docker` pool), `prefect deploy` of
prefect.yaml's `on-demand-docker`, and a Prefect Docker worker (prefect-docker) as a real
process. Each flow run is a container of `flashgen:latest` with a read-only root, a tmpfs
/tmp and the host's network, its state dir and token mounted; the emulator and moto run
on 127.0.0.1.

``docker_pool`` yields the deployment and what each run needs on this stack (its job
variables), so other tests (a sharded batch) can start their runs on it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from flashgen.emulator import EmulatorConfig, EmulatorServer
from flashgen.infra.prefect_server import PrefectServer
from tests.conftest import module_bucket, s3_client

# The image may be built from nothing first (about five minutes on 2 cores).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOKEN = "docker-pool-token-0123456789abcdef"
BUCKET = "flashgen-docker-pool"
PREFIX = "pool"
SECRET = "/run/secrets/runcomfy-token"
DEPLOYMENT = "generate-images/on-demand-docker"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
s3_server = module_bucket(BUCKET)


@dataclass
class DockerPool:
    """A Docker work pool with a worker, and the deployment of flashgen's image on it."""

    api: str  # PREFECT_API_URL
    deployment_id: str
    emulator: EmulatorServer
    job_variables: dict[str, Any]  # env and mounts for this stack, given to every run
    worker_log: Path
    containers: list[str] = field(default_factory=list)

    def get(self, path: str) -> Any:
        return httpx.get(self.api + path, timeout=30).raise_for_status().json()

    def start_run(self, parameters: dict[str, Any]) -> str:
        run = httpx.post(f"{self.api}/deployments/{self.deployment_id}/create_flow_run",
                         json={"parameters": parameters, "job_variables": self.job_variables},
                         timeout=30).raise_for_status().json()
        return run["id"]

    def finished(self, flow_run_id: str, timeout: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{flow_run_id}")
            if run["state_type"] in TERMINAL:
                return run
            time.sleep(1)
        pytest.fail(f"flow run {flow_run_id} not finished in {timeout:.0f} s\n"
                    + self.worker_log.read_text(errors="replace")[-4000:])

    def container_of(self, run: dict[str, Any]) -> dict[str, Any]:
        """``docker inspect`` of the container the worker ran ``run`` in."""
        container = run["infrastructure_pid"].rsplit(":", 1)[1]
        self.containers.append(container)
        inspected = subprocess.run(["docker", "inspect", container], capture_output=True,
                                   text=True, check=True, timeout=60)
        return json.loads(inspected.stdout)[0]


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def docker_pool(flashgen_image, s3_server, tmp_path_factory) -> Iterator[DockerPool]:
    tmp = tmp_path_factory.mktemp("docker-pool")
    state = tmp / "state"
    state.mkdir()
    state.chmod(0o777)  # the image's user, whatever its uid, writes its journal there
    token = tmp / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PREFECT_", "AWS_", "FLASHGEN_", "RUNCOMFY_"))}
    with PrefectServer() as server, EmulatorServer(
            EmulatorConfig(workers=8, job_time=0.3, tokens=[TOKEN])) as emulator:
        env = {**clean, "PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(tmp / "home"),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PWD": str(REPO)}
        # The operator's part: provision (no bucket: the test made it), deploy from
        # prefect.yaml, start a Docker worker.
        provisioned = _run([sys.executable, "-m", "flashgen.cli", "provision"], env)
        assert "work pool flashgen-docker: type docker" in provisioned, provisioned
        _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "on-demand-docker"], env)
        log = tmp / "worker.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "flashgen-docker",
                 "--type", "docker", "--name", "docker-worker-1", "--limit", "2"],
                env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, cwd=tmp, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pool = DockerPool(
            api=server.api_url, emulator=emulator, worker_log=log,
            deployment_id=httpx.get(f"{server.api_url}/deployments/name/{DEPLOYMENT}",
                                    timeout=30).raise_for_status().json()["id"],
            job_variables={
                "env": {**s3_server.env, "RUNCOMFY_BASE_URL": emulator.url,
                        "FLASHGEN_TOKEN_FILE": SECRET, "FLASHGEN_BUCKET": BUCKET,
                        "FLASHGEN_PREFIX": PREFIX, "FLASHGEN_OUTPUT_NETWORKS": "127.0.0.0/8",
                        "FLASHGEN_POLL_INITIAL": "0.1", "FLASHGEN_POLL_MAXIMUM": "0.3"},
                "volumes": [f"{state}:/state", f"{token}:{SECRET}:ro"],
                "auto_remove": False,  # kept to be inspected, removed below
            })
        try:
            yield pool
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
            if pool.containers:
                subprocess.run(["docker", "rm", "--force", *pool.containers],
                               capture_output=True, timeout=120)


def test_two_runs_at_once_each_in_a_read_only_container_store_every_image_once(docker_pool):
    batches = {"pool-a": ["A tin robot watering tulips", "A lighthouse in fog, charcoal",
                          "Red kite over chalk hills"],
               "pool-b": ["A paper boat on a puddle", "Snowy pines at blue hour",
                          "A fox in a library, oil painting"]}
    runs = {batch: docker_pool.start_run({"prompts": prompts, "batch_id": batch})
            for batch, prompts in batches.items()}
    finished = {batch: docker_pool.finished(run_id) for batch, run_id in runs.items()}
    log = docker_pool.worker_log.read_text(errors="replace")
    for batch, run in finished.items():
        assert run["state_type"] == "COMPLETED", (batch, run["state"], log[-4000:])

    # Each run in a container of its own: flashgen's image, read-only, non-root, host network.
    containers = {batch: docker_pool.container_of(run) for batch, run in finished.items()}
    assert len({c["Id"] for c in containers.values()}) == 2
    for container in containers.values():
        assert container["Config"]["Image"] == "flashgen:latest"
        assert container["Config"]["User"] == "10001:10001"
        assert container["HostConfig"]["ReadonlyRootfs"] is True
        assert "/tmp" in container["HostConfig"]["Tmpfs"]
        assert container["HostConfig"]["NetworkMode"] == "host"
        assert container["State"]["ExitCode"] == 0

    s3 = s3_client(docker_pool.job_variables["env"]["AWS_ENDPOINT_URL"])
    for batch, prompts in batches.items():
        body = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/manifests/{batch}.jsonl")["Body"]
        rows = [json.loads(line) for line in body.read().decode().splitlines() if line]
        assert sorted(row["prompt"] for row in rows) == sorted(prompts)
        for row in rows:
            assert row["state"] == "stored", row
            record = json.loads(s3.get_object(Bucket=BUCKET, Key=row["metadata_uri"].split(
                "/", 3)[3])["Body"].read())
            assert record["flow_run_id"] == runs[batch]
            (image_uri,) = row["image_uris"]
            image = s3.get_object(Bucket=BUCKET, Key=image_uri.split("/", 3)[3])["Body"].read()
            assert hashlib.sha256(image).hexdigest() == record["sha256"]
    items = sum(len(prompts) for prompts in batches.values())
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/images/")["KeyCount"] == items
    stats = docker_pool.emulator.stats()
    assert (stats["submissions"], stats["duplicate_submissions"]) == (items, 0)
    assert TOKEN not in log  # the containers' output, streamed by the worker
