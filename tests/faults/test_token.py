"""The token never leaves the client, even when the API echoes it back. A row of the
README's guarantees table. (``tests/client/test_token_property.py`` generates the cases;
this one runs them end to end.)"""

from __future__ import annotations

import pytest

from flashgen.emulator import EmulatorConfig
from tests.conftest import wait_for
from tests.faults.conftest import TOKEN

pytestmark = pytest.mark.slow

# A token with the characters that escaping, quoting and base64 treat differently.
ODD_TOKEN = "odd+tok/en=%27\\'\"&<9f8e7d6c"


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


@pytest.mark.parametrize("fault_stack", [EmulatorConfig(
    workers=4, job_time=0.2, tokens=[ODD_TOKEN], faults=["job:echo-auth:1"], fault_seed=3)],
    ids=["odd-token"], indirect=True)
def test_a_token_read_with_a_newline_and_echoed_as_a_key_leaks_nowhere(fault_stack):
    """Issue 17.1: a token from a file ends in a newline (httpx once quoted the header in
    its error: stderr, Prefect, exit 1); an error object with the header as a key once put
    it in the manifest, ledger, gallery, catalog and Prefect."""
    source = fault_stack.prompts(3)
    done = fault_stack.batch(source, "--batch-id", "odd", RUNCOMFY_API_TOKEN=ODD_TOKEN + "\n")
    assert done.returncode == 1, done.stderr[-2000:]  # every job failed (echo), and said so
    rows = fault_stack.manifest("odd")
    assert [row.state for row in rows] == ["failed"] * 3
    wait_for(lambda: any(b"[token]" in db.read_bytes()
                         for db in fault_stack.prefect_home.glob("prefect.db*")), 60)
    fault_stack.check("odd", inputs=3, token=ODD_TOKEN)


@pytest.mark.parametrize("fault_stack", [EmulatorConfig(workers=1, tokens=[TOKEN])],
                         ids=["space-inside"], indirect=True)
def test_a_token_with_a_space_inside_exits_2_naming_its_source(fault_stack):
    source = fault_stack.prompts(1)
    done = fault_stack.batch(source, "--batch-id", "space",
                             RUNCOMFY_API_TOKEN=TOKEN[:5] + " " + TOKEN[5:])
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: RUNCOMFY_API_TOKEN: the API token has a space"), last
    assert fault_stack.api.stats()["submissions"] == 0
    assert TOKEN[5:] not in done.stdout + done.stderr
