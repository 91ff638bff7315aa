"""The token never leaves the client, even when the API echoes it back. A row of the
README's guarantees table."""

from __future__ import annotations

import pytest

from flashgen.emulator import EmulatorConfig
from tests.conftest import wait_for
from tests.faults.conftest import TOKEN

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fault_stack", [EmulatorConfig(
    workers=4, job_time=0.2, tokens=[TOKEN], faults=["job:echo-auth:0.5"], fault_seed=3)],
    ids=["echo-auth"], indirect=True)
def test_an_api_echoing_the_authorization_header_leaks_the_token_nowhere(fault_stack):
    source = fault_stack.prompts(6)
    done = fault_stack.batch(source, "--batch-id", "echo")
    assert done.returncode == 1  # the echoing jobs failed, and say so
    failed = [row for row in fault_stack.manifest("echo") if row.state == "failed"]
    assert failed and all("[token]" in row.reason for row in failed)
    # The failures reach Prefect's database (logs, states, events) before we look there.
    wait_for(lambda: any(b"[token]" in db.read_bytes()
                         for db in fault_stack.prefect_home.glob("prefect.db*")), 60)
    fault_stack.check("echo", inputs=6)  # the token in none of S3, output or Prefect's DB
