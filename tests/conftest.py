"""Shared fixtures. S3: fake credentials, moto in-process or as a local server, a ready Store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

# Before anything imports Prefect: its own home (no results or DB leak between runs), no
# analytics, and task retries without waiting (read when tasks/ is imported).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="flashgen-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["FLASHGEN_TASK_RETRY_DELAY"] = "0"
# The local journal of request_ids: never the developer's own state folder.
os.environ.setdefault("FLASHGEN_STATE_DIR", tempfile.mkdtemp(prefix="flashgen-state-"))

import boto3
import httpx
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from flashgen.storage import Store
from flashgen.infra.stack import FAKE_AWS, MotoS3, free_port, make_moto_puts_atomic

@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for each test process (about ten seconds on a quiet
    machine; four test workers beside two CPU burners saw it take more than 60)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240):
        yield


@pytest.fixture
def moto_atomic_puts():
    """Conditional puts decided atomically, as S3 decides them (see flashgen.infra.stack)."""
    make_moto_puts_atomic()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials in us-east-1; nothing from the machine's AWS config can leak in."""
    for name in (
        "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
        "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def s3(aws_env, moto_atomic_puts):
    """moto's in-process S3 (``mock_aws``); yields a boto3 client on it."""
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")


@pytest.fixture
def store(s3):
    """A Store on bucket ``flashgen-test`` (created in moto), prefix ``fg``, own client."""
    store = Store("flashgen-test", "fg", region="us-east-1")
    store.ensure_bucket()
    return store


@pytest.fixture
def moto_server(aws_env, moto_atomic_puts):
    """moto's S3 as an HTTP server on a free loopback port; yields its endpoint URL.

    Its state lives in this process's moto backends, so it is reset on the way out.
    """
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        yield endpoint
    finally:
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=10).close()
        server.stop()


def wait_for(check, timeout: float, every: float = 0.25):
    """Poll ``check`` until it is true; TimeoutError after ``timeout`` seconds (a backstop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(every)
    raise TimeoutError("condition not met in time")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """`prefect server start` as its own process (SQLite), shared by the whole session."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
         str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 240)
        subprocess.run([sys.executable, "-m", "prefect", "gcl", "create", "runcomfy-api",
                        "--limit", "4"], env={**env, "PREFECT_API_URL": url}, check=True,
                       capture_output=True)
        yield {"PREFECT_API_URL": url, "PREFECT_HOME": str(home)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)




@pytest.fixture(scope="session")
def s3_http():
    """moto's S3 as a real HTTP server for the whole session; each module makes its bucket."""
    with MotoS3() as s3:
        yield s3


def s3_client(endpoint: str):
    """A boto3 client on ``endpoint`` with the stand-ins' fake credentials."""
    return boto3.client("s3", endpoint_url=endpoint, region_name=FAKE_AWS["AWS_REGION"],
                        aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"])


FLASHGEN = [sys.executable, "-m", "flashgen.cli"]  # the CLI, as a real process


def module_bucket(name: str):
    """A module-scoped fixture: ``s3_http`` with bucket ``name`` made. Per module, because
    an in-process ``mock_aws`` elsewhere in the session resets moto's backends."""

    @pytest.fixture(scope="module")
    def bucket(s3_http):
        s3_client(s3_http.url).create_bucket(Bucket=name)
        return s3_http

    return bucket


@pytest.fixture(scope="session")
def flashgen_image(tmp_path_factory):
    """flashgen's image, built as `make image` builds it, on a Docker daemon without a
    bridge (started here when none answers, and stopped at the end); yields its tag.
    Containers run with ``--network host``: they reach this machine's stand-ins on
    127.0.0.1 and nothing else."""
    from flashgen.infra.docker_daemon import docker_daemon

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with docker_daemon(tmp_path_factory.mktemp("dockerd") / "dockerd.log"):
        built = subprocess.run(["make", "-C", repo, "image", f"PYTHON={sys.executable}"],
                               capture_output=True, text=True, timeout=1800)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        yield "flashgen:latest"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The fault campaign's figures (schedules, runs, invariants checked), when it ran."""
    from tests.faults.campaign import CAMPAIGN_PROPERTY, Tally

    tallies = [value for reports in terminalreporter.stats.values() for report in reports
               if getattr(report, "when", None) == "call"
               for name, value in report.user_properties if name == CAMPAIGN_PROPERTY]
    if tallies:
        terminalreporter.write_sep("-", "fault campaign")
        terminalreporter.write_line(Tally.total(tallies).line())
