"""Fixtures for the pipeline: a real Prefect test server, the emulator on a socket, moto S3.

The flow builds its own client and store from the environment, exactly as in production;
these fixtures only point that environment at the local stand-ins.
"""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from flashgen.emulator import EmulatorConfig, EmulatorServer
from flashgen.settings import get_settings
from flashgen.storage import Store

TOKEN = "pipeline-test-token-0123456789"
BUCKET = "flashgen-pipeline"


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Override in a test module (or parametrize) for other queue shapes or faults."""
    return EmulatorConfig(workers=4, job_time=0.15, job_time_spread=0.2, tokens=[TOKEN],
                          fault_seed=7)


@pytest.fixture
def emulator(emulator_config):
    with EmulatorServer(emulator_config) as server:
        yield server


@pytest.fixture
def pipeline(prefect_server, emulator, monkeypatch, tmp_path):
    """Environment for one in-process flow run; yields the store to read results from."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "RUNCOMFY_BASE_URL": emulator.url,
        "FLASHGEN_OUTPUT_NETWORKS": "127.0.0.0/8",
        "RUNCOMFY_API_TOKEN": TOKEN, "FLASHGEN_BUCKET": BUCKET, "FLASHGEN_PREFIX": "t",
        "FLASHGEN_POLL_INITIAL": "0.05", "FLASHGEN_POLL_MAXIMUM": "0.2",
        "FLASHGEN_SEND_LEASE": "2", "FLASHGEN_STATE_DIR": str(tmp_path / "state"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    get_settings.cache_clear()
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield Store(BUCKET, "t")
    get_settings.cache_clear()
