"""flashgen's container image as an operator runs it: built by `make image` (offline), run
with ``docker run --read-only --tmpfs /tmp --network host``, the state dir a mounted
volume and the token a mounted file, against the emulator and moto's S3 server on
127.0.0.1. Every image is stored once; without a writable state volume the run is refused
before anything is paid."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from flashgen.emulator import EmulatorConfig, EmulatorServer
from flashgen.infra.image import debian_mirror
from tests.conftest import module_bucket, s3_client

REPO = Path(__file__).resolve().parents[1]
TOKEN = "container-token-0123456789abcdef"
BUCKET = "flashgen-container"
PREFIX = "img"
SECRET = "/run/secrets/runcomfy-token"  # where Kubernetes or Docker would mount it
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
