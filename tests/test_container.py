"""flashgen's container image as an operator runs it: built by `make image` (offline), run
with ``docker run --read-only --tmpfs /tmp --network host``, the state dir a mounted
volume and the token a mounted file, against the emulator and moto's S3 server on
127.0.0.1. Every image is stored once; without a writable state volume the run is refused
before anything is paid.

Then the image on a Docker work pool, as operations runs it: a Prefect server, `flashgen
provision` (which makes the `flashgen-docker` pool), `prefect deploy` of prefect.yaml's
`generate-shard/docker`, and a Prefect Docker worker (prefect-docker) as a real process.
Each flow run is a container of `flashgen:latest` with a read-only root, a tmpfs /tmp and
the host's network, its state dir and token mounted. ``docker_pool`` yields the pool with
generate-shard deployed on it and what a parent run on this machine needs to reach the
stack.

Both in one module: when the suite runs on several workers (``--dist loadfile``), one
worker builds the image and runs the one dockerd."""

from __future__ import annotations

import csv
import hashlib
import io
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
import pyarrow.parquet as pq
import pytest

from flashgen.emulator import EmulatorConfig, EmulatorServer
from flashgen.infra.image import debian_mirror
from flashgen.infra.prefect_server import PrefectServer
from tests.conftest import module_bucket, s3_client

REPO = Path(__file__).resolve().parents[1]
TOKEN = "container-token-0123456789abcdef"
BUCKET = "flashgen-container"
PREFIX = "img"
SECRET = "/run/secrets/runcomfy-token"  # where Kubernetes or Docker would mount it
BIN = Path(sys.executable).parent
POOL_PREFIX = "pool"
SHARD_DEPLOYMENT = "generate-shard/docker"
s3_server = module_bucket(BUCKET)


def docker_run(image: str, *args: str, volumes: tuple[str, ...] = (),
               env: dict[str, str] | None = None, timeout: float = 600
               ) -> subprocess.CompletedProcess[str]:
    command = ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--network", "host"]
    for volume in volumes:
        command += ["-v", volume]
    for name, value in (env or {}).items():
        command += ["-e", f"{name}={value}"]
    return subprocess.run([*command, image, *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def api():
    with EmulatorServer(EmulatorConfig(workers=4, job_time=0.2, tokens=[TOKEN])) as emulator:
        yield emulator


@pytest.fixture
def mounts(tmp_path):
    """The state volume (writable by the image's user, whatever its uid) and the token
    file, as a secret mount gives it: one line, newline included."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    return state, token


def container_env(api, s3_server) -> dict[str, str]:
    return {**s3_server.env, "RUNCOMFY_BASE_URL": api.url, "FLASHGEN_TOKEN_FILE": SECRET,
            "FLASHGEN_BUCKET": BUCKET, "FLASHGEN_PREFIX": PREFIX,
            "FLASHGEN_OUTPUT_NETWORKS": "127.0.0.0/8",  # the emulator's files
            "FLASHGEN_POLL_INITIAL": "0.05", "FLASHGEN_POLL_MAXIMUM": "0.2",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


# The first test to ask for the image may build it from nothing (base, wheels, image: about
# five minutes on 2 cores), hence the long timeout.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_image_runs_a_batch_read_only_and_stores_every_image_once(
        flashgen_image, api, s3_server, mounts):
    state, token = mounts
    # A relative prompt file, as prefect.yaml names them: the image has no checkout, its
    # working directory holds the installed package's deployments/.
    done = docker_run(flashgen_image, "flashgen", "batch", "deployments/prompts/on-demand.csv",
                      "--batch-id", "in-a-container",
                      volumes=(f"{state}:/state", f"{token}:{SECRET}:ro"),
                      env=container_env(api, s3_server))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert TOKEN not in done.stdout + done.stderr

    with open(REPO / "deployments/prompts/on-demand.csv", newline="") as file:
        prompts = [row["prompt"] for row in csv.DictReader(file)]
    s3 = s3_client(s3_server.url)
    body = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/manifests/in-a-container.jsonl")["Body"]
    rows = [json.loads(line) for line in body.read().decode().splitlines() if line]
    assert sorted(row["prompt"] for row in rows) == sorted(prompts)
    for row in rows:
        assert row["state"] == "stored", row
        record = json.loads(s3.get_object(Bucket=BUCKET, Key=row["metadata_uri"].split(
            "/", 3)[3])["Body"].read())
        (image_uri,) = row["image_uris"]
        image = s3.get_object(Bucket=BUCKET, Key=image_uri.split("/", 3)[3])["Body"].read()
        assert image[:8] == b"\x89PNG\r\n\x1a\n"
        assert hashlib.sha256(image).hexdigest() == record["sha256"]
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/images/")
    assert listed["KeyCount"] == len(prompts)  # each image once
    stats = api.stats()
    assert (stats["submissions"], stats["duplicate_submissions"]) == (len(prompts), 0)
    assert (state / "journal").is_dir()  # the journal went to the mounted volume


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_without_a_writable_state_volume_the_image_refuses_before_paying(
        flashgen_image, api, s3_server, mounts):
    state, token = mounts
    secret = f"{token}:{SECRET}:ro"
    for volumes, reason in (((secret,), "is not a mounted volume"),
                            ((f"{state}:/state:ro", secret), "cannot be written")):
        done = docker_run(flashgen_image, "flashgen", "batch", "-p", "a fox at dawn",
                          volumes=volumes, env=container_env(api, s3_server), timeout=300)
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr[-2000:]  # one line, no traceback
        assert "FLASHGEN_STATE_DIR: /state" in lines[0] and reason in lines[0], lines[0]
    assert api.stats()["submissions"] == 0


def test_the_base_image_comes_from_the_mirror_apt_uses(tmp_path, monkeypatch):
    monkeypatch.delenv("FLASHGEN_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    assert debian_mirror(tmp_path / "nothing-here") == "http://deb.debian.org/debian"
    monkeypatch.setenv("FLASHGEN_DEBIAN_MIRROR", "http://given.example/debian")
    assert debian_mirror(tmp_path) == "http://given.example/debian"


@dataclass
class DockerPool:
    """A Docker work pool with a worker, and generate-shard deployed on it in flashgen's
    image, its job variables (env, mounts) set for this stack as an operator sets them."""

    api: str  # PREFECT_API_URL
    emulator: EmulatorServer
    host_env: dict[str, str]  # what a parent run on this machine needs to reach the stack
    worker_log: Path
    containers: list[str] = field(default_factory=list)

    def get(self, path: str) -> Any:
        return prefect_api("GET", self.api + path)

    def get_runs(self, deployment: str) -> list[dict[str, Any]]:
        deployment_id = self.get(f"/deployments/name/{deployment}")["id"]
        return prefect_api("POST", f"{self.api}/flow_runs/filter", json={
            "deployments": {"id": {"any_": [deployment_id]}}})

    def container_of(self, run: dict[str, Any]) -> dict[str, Any]:
        """``docker inspect`` of the container the worker ran ``run`` in."""
        container = run["infrastructure_pid"].rsplit(":", 1)[1]
        self.containers.append(container)
        inspected = subprocess.run(["docker", "inspect", container], capture_output=True,
                                   text=True, check=True, timeout=60)
        return json.loads(inspected.stdout)[0]


def prefect_api(method: str, url: str, **kwargs: Any) -> Any:
    """A call to the Prefect server's API, again after a 503 as Prefect's own client does
    (a busy server's database answers "Service Unavailable" for a moment)."""
    for _ in range(30):
        answer = httpx.request(method, url, timeout=30, **kwargs)
        if answer.status_code != 503:
            answer.raise_for_status()
            return answer.json() if answer.content else None
        time.sleep(1)
    answer.raise_for_status()


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
        stack = {**s3_server.env, "RUNCOMFY_BASE_URL": emulator.url, "FLASHGEN_BUCKET": BUCKET,
                 "FLASHGEN_PREFIX": POOL_PREFIX, "FLASHGEN_OUTPUT_NETWORKS": "127.0.0.0/8",
                 "FLASHGEN_POLL_INITIAL": "0.1", "FLASHGEN_POLL_MAXIMUM": "0.3"}
        # The operator's part: provision (no bucket: the test made it), deploy from
        # prefect.yaml, give the deployment its env and mounts, start a Docker worker.
        provisioned = _run([sys.executable, "-m", "flashgen.cli", "provision"], env)
        assert "work pool flashgen-docker: type docker" in provisioned, provisioned
        _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", SHARD_DEPLOYMENT], env)
        deployment = prefect_api("GET", f"{server.api_url}/deployments/name/{SHARD_DEPLOYMENT}")
        prefect_api("PATCH", f"{server.api_url}/deployments/{deployment['id']}", json={
            "job_variables": {**deployment["job_variables"],
                              "env": {**stack, "FLASHGEN_TOKEN_FILE": SECRET},
                              "volumes": [f"{state}:/state", f"{token}:{SECRET}:ro"],
                              "auto_remove": False}})  # kept to be inspected below
        log = tmp / "worker.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "flashgen-docker",
                 "--type", "docker", "--name", "docker-worker-1", "--limit", "2"],
                env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, cwd=tmp, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pool = DockerPool(api=server.api_url, emulator=emulator, worker_log=log,
                          host_env={**env, **stack, "RUNCOMFY_API_TOKEN": TOKEN})
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


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_sharded_batch_runs_its_shards_in_read_only_containers_storing_every_image_once(
        docker_pool, tmp_path):
    """`flashgen batch --shard-size 3 --shard-deployment generate-shard/docker` on this
    machine: the parent plans 7 items once and starts 3 generate-shard runs on the Docker
    pool, 2 at a time, each in a container of flashgen's image. Every item is stored once,
    the API saw 7 submissions and none twice, and the parent's one manifest, gallery and
    catalog file cover every shard."""
    prompts = [f"Harbour crane {n} at dawn, linocut" for n in range(7)]
    env = {**docker_pool.host_env, "FLASHGEN_STATE_DIR": str(tmp_path / "parent-state")}
    args = [a for p in prompts for a in ("-p", p)]
    done = subprocess.run(
        [sys.executable, "-m", "flashgen.cli", "batch", *args, "--batch-id", "pool-sharded",
         "--shard-size", "3", "--max-shards-running", "2", "--concurrency", "4",
         "--shard-deployment", SHARD_DEPLOYMENT],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200,
        stdin=subprocess.DEVNULL)
    log = docker_pool.worker_log.read_text(errors="replace")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log[-3000:]

    # Each shard a run of its own, each in a container of its own: flashgen's image,
    # read-only, non-root, host network.
    runs = docker_pool.get_runs(SHARD_DEPLOYMENT)
    assert sorted(r["parameters"]["index"] for r in runs) == [0, 1, 2], runs
    assert {r["state_type"] for r in runs} == {"COMPLETED"}, [r["state"] for r in runs]
    containers = [docker_pool.container_of(run) for run in runs]
    assert len({c["Id"] for c in containers}) == 3
    for container in containers:
        assert container["Config"]["Image"] == "flashgen:latest"
        assert container["Config"]["User"] == "10001:10001"
        assert container["HostConfig"]["ReadonlyRootfs"] is True
        assert "/tmp" in container["HostConfig"]["Tmpfs"]
        assert container["HostConfig"]["NetworkMode"] == "host"
        assert container["State"]["ExitCode"] == 0

    s3 = s3_client(docker_pool.host_env["AWS_ENDPOINT_URL"])

    def read(key: str) -> bytes:
        return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    rows = [json.loads(line) for line in
            read(f"{POOL_PREFIX}/manifests/pool-sharded.jsonl").decode().splitlines() if line]
    assert sorted(row["prompt"] for row in rows) == sorted(prompts)
    shard_runs = {r["id"] for r in runs}
    for row in rows:
        assert row["state"] == "stored", row
        record = json.loads(read(row["metadata_uri"].split("/", 3)[3]))
        assert record["flow_run_id"] in shard_runs  # stored by a shard, in a container
        (image_uri,) = row["image_uris"]
        assert hashlib.sha256(read(image_uri.split("/", 3)[3])).hexdigest() == record["sha256"]
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{POOL_PREFIX}/images/")["KeyCount"] == 7
    gallery = read(f"{POOL_PREFIX}/galleries/pool-sharded.html").decode()
    assert all(p in gallery for p in prompts)
    (catalog_key,) = [o["Key"] for o in s3.list_objects_v2(
        Bucket=BUCKET, Prefix=f"{POOL_PREFIX}/catalog/")["Contents"]
        if o["Key"].endswith("/pool-sharded.parquet")]
    catalog = pq.read_table(io.BytesIO(read(catalog_key)))
    assert sorted(catalog.column("prompt").to_pylist()) == sorted(prompts)
    stats = docker_pool.emulator.stats()
    assert (stats["submissions"], stats["duplicate_submissions"]) == (7, 0)
    assert TOKEN not in log + done.stdout + done.stderr  # the containers' output included
