"""Never pay twice, lose nothing: S3 outages and throttling, SIGKILL at every step boundary,
and two runs of one batch. Each test is a row of the README's guarantees table."""

from __future__ import annotations

import subprocess

import pytest

from flashgen.failpoints import POINTS
from tests.conftest import FLASHGEN

pytestmark = pytest.mark.slow


def test_s3_unavailable_right_after_a_submit_pays_once(fault_stack):
    """S3 drops every connection for 11 s from the first request_id write on."""
    source = fault_stack.prompts(4)
    fault_stack.proxy.outage_after(r"^PUT .*/ledger/", b'"state":"submitted"', seconds=11)
    # Longer than botocore rides out alone; the tasks' retries (2 + 4 + 8 s at the least,
    # with this delay) outlast it, and a submit's retry adopts its journaled request_id.
    done = fault_stack.batch(source, "--batch-id", "outage", "--concurrency", "4",
                             FLASHGEN_TASK_RETRY_DELAY="4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert fault_stack.proxy.outages == 1 and fault_stack.proxy.dropped > 0
    assert fault_stack.check("outage", inputs=4) == {"stored": 4}
    assert fault_stack.api.stats()["submissions"] == 4


def test_s3_throttling_is_ridden_out(fault_stack):
    source = fault_stack.prompts(4)
    fault_stack.proxy.slow_down(r"^(PUT|GET) ", times=20, every=2)
    done = fault_stack.batch(source, "--batch-id", "slowdown")
    assert done.returncode == 0, done.stderr[-2000:]
    assert fault_stack.proxy.throttled == 20
    assert fault_stack.check("slowdown", inputs=4) == {"stored": 4}
    assert fault_stack.api.stats()["submissions"] == 4


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_a_step_boundary_then_a_rerun(fault_stack, point):
    """Killed the second time a job passes POINT; the rerun finishes the batch.

    The rerun's sending lease is an hour: it finishes only because a claim whose process
    is gone is settled at once, not when its lease runs out.
    """
    source = fault_stack.prompts(6)
    killed = fault_stack.batch(source, "--batch-id", "crash", "--concurrency", "1",
                               failpoint=f"{point}:{1 if point == 'manifest' else 2}")
    assert killed.returncode == -9, killed.stderr[-2000:]
    rerun = fault_stack.batch(source, "--batch-id", "crash", "--concurrency", "2",
                              FLASHGEN_SEND_LEASE="3600")
    # The killed run had two workers: beside the job at POINT, another job may have been
    # between its claim and its answer, and that one is honestly ambiguous, whether or not
    # its POST had left (a rerun cannot tell). At 'sending' one always is.
    counts = fault_stack.check("crash", inputs=6, killed_claims=1)
    ambiguous = counts.get("failed", 0)
    assert ambiguous <= 2 and (ambiguous >= 1 if point == "sending" else True), counts
    assert counts.get("stored", 0) + counts.get("skipped", 0) + ambiguous == 6
    assert rerun.returncode == (1 if ambiguous else 0), rerun.stderr[-2000:]
    stats = fault_stack.api.stats()
    # Each item sent once, never again (the killed claim's maybe not even once).
    assert stats["submissions"] == len(stats["submit_requests_by_fingerprint"]) >= 5


def test_two_runs_of_one_batch_pay_once(fault_stack):
    source = fault_stack.prompts(8)
    runs = [subprocess.Popen([*FLASHGEN, "batch", source, "--batch-id", f"twin-{n}"],
                             env=fault_stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=fault_stack.workdir) for n in (1, 2)]
    for run in runs:
        out, err = run.communicate(timeout=300)
        fault_stack.outputs += [out, err]
        assert run.returncode == 0, err[-2000:]
    for n in (1, 2):
        counts = fault_stack.check(f"twin-{n}", inputs=8)
        assert counts.get("stored", 0) + counts.get("skipped", 0) == 8
    assert fault_stack.api.stats()["submissions"] == 8


@pytest.mark.parametrize("refusal", [
    pytest.param((r"^PUT .*/images/", 403, "AccessDenied"), id="images-403"),
    pytest.param((r"^(PUT|GET|HEAD) ", 404, "NoSuchBucket"), id="bucket-gone-404"),
])
def test_storage_refusing_writes_stops_the_run_paying(fault_stack, refusal):
    """S3 refuses for good once the run has started (a policy change, a deleted bucket):
    after FLASHGEN_STORAGE_BREAKER refusals in a row no new job is sent, the jobs in flight
    keep their request_ids, and the run ends Failed saying why. S3 back, a rerun stores
    every image, paying only for what was never sent."""
    pattern, status, code = refusal
    source = fault_stack.prompts(10)
    # Refused once the first request_id is in the ledger: after the preflight, which would
    # have refused to start (exit 2) had S3 said no then.
    fault_stack.proxy.refuse(pattern, status=status, code=code, after=r"^PUT .*/ledger/",
                             after_body=b'"state":"submitted"')
    done = fault_stack.batch(source, "--batch-id", "refused", "--concurrency", "1",
                             FLASHGEN_STORAGE_BREAKER="2")
    said = done.stdout + done.stderr
    assert done.returncode == 1, said[-3000:]
    assert "refused in a row" in said and code in said, said[-3000:]
    paid = fault_stack.api.stats()["submissions"]
    assert paid <= 2 + 1, paid  # the breaker's 2, plus the one job in flight when it opened
    fault_stack.proxy.clear()
    rerun = fault_stack.batch(source, "--batch-id", "refused-rerun")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert fault_stack.check("refused-rerun", inputs=10) == {"stored": 10}
    assert fault_stack.api.stats()["submissions"] == 10  # each paid once, across both runs
