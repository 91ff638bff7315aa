"""Cancel, resume and retry as an operator does them: `flashgen batch` stopped with Ctrl-C,
then `flashgen resume` and `flashgen retry` naming only the batch. Real processes against
a Prefect server, the emulator and moto's S3 server; counted at the emulator. Marked slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from flashgen.emulator import EmulatorConfig, EmulatorServer
from tests.conftest import FLASHGEN, module_bucket, s3_client
from tests.conftest import wait_for

pytestmark = pytest.mark.slow
TOKEN = "rerun-token-abcdefghijklmnop"
BUCKET = "flashgen-rerun"
s3_server = module_bucket(BUCKET)


@pytest.fixture
def stack(prefect_api, s3_server, request, tmp_path):
    config = request.param
    prefix = f"run-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    with EmulatorServer(config) as api:
        env = {**os.environ, **prefect_api, **s3_server.env, "RUNCOMFY_BASE_URL": api.url,
               "RUNCOMFY_API_TOKEN": TOKEN, "FLASHGEN_BUCKET": BUCKET, "FLASHGEN_PREFIX": prefix,
               "FLASHGEN_POLL_INITIAL": "0.1", "FLASHGEN_POLL_MAXIMUM": "0.3",
               "FLASHGEN_SEND_LEASE": "10", "FLASHGEN_STATE_DIR": str(tmp_path / "state"),
               "FLASHGEN_OUTPUT_NETWORKS": "127.0.0.0/8",  # the emulator's files
               # Its own (absent) limit: a run stopped part-way holds no shared slot.
               "FLASHGEN_CONCURRENCY_LIMIT": "rerun-test-unshared",
               "PREFECT_LOGGING_LEVEL": "WARNING"}
        yield api, env, s3_client(s3_server.url), prefix


def _flashgen(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FLASHGEN, *args], env=env, capture_output=True, text=True,
                          timeout=600)


def _manifest(s3, prefix: str, batch_id: str) -> list[dict]:
    body = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/manifests/{batch_id}.jsonl")["Body"]
    return [json.loads(line) for line in body.read().decode().splitlines() if line]


def _source(tmp_path, n: int):
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,seed\n" + "".join(f"lantern festival no. {i},{i}\n"
                                             for i in range(n)))
    return path


@pytest.mark.parametrize("stack", [EmulatorConfig(workers=1, job_time=2.0, tokens=[TOKEN])],
                         indirect=True)
@pytest.mark.parametrize("group", [None, 2], ids=["task-runs-per-step", "in-groups"])
def test_ctrl_c_cancels_queued_jobs_stores_the_running_one_and_resume_finishes(stack,
                                                                                 tmp_path, group):
    """Also with the items run two to a task run, as a large batch runs them: the stop
    reaches items waiting for a slot inside a group's task run, and nothing hangs."""
    api, env, s3, prefix = stack
    if group:  # its own prefix: the other variant's items are stored under the shared one
        prefix = f"{prefix}-groups"
        env = {**env, "FLASHGEN_TASK_GROUP_FROM": "1", "FLASHGEN_TASK_GROUP_SIZE": str(group),
               "FLASHGEN_PREFIX": prefix}
    source = _source(tmp_path, 5)
    run = subprocess.Popen([*FLASHGEN, "batch", str(source), "--concurrency", "3",
                            "--batch-id", "cli-cancel"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: api.stats()["jobs_by_status"].get("in_progress", 0) == 1
                 and api.stats()["jobs_by_status"].get("in_queue", 0) >= 1, 180, every=0.05)
        os.kill(run.pid, signal.SIGINT)  # what Ctrl-C sends
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "flashgen resume cli-cancel" in err, err[-3000:]
    stats = api.stats()
    assert stats["cancelled"] >= 1 and stats["jobs_by_status"].get("in_queue", 0) == 0, stats
    rows = _manifest(s3, prefix, "cli-cancel")
    states = sorted(r["state"] for r in rows)
    # The running job had its grace (10 s by default; a job takes 2 s): fetched and stored.
    assert len(rows) == 5 and "stored" in states and "cancelled" in states, rows
    assert "failed" not in states

    source.unlink()  # the batch's record in S3 is all a resume needs
    done = _flashgen(env, "resume", "cli-cancel")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _manifest(s3, prefix, "cli-cancel")
    assert sorted(r["state"] for r in rows) == ["skipped"] * states.count("stored") + [
        "stored"] * (5 - states.count("stored")), rows
    completed = [j for j in api.job_times() if j["status"] == "completed"]
    assert len(completed) == 5  # one paid job per item: nothing paid twice
    assert api.stats()["cancelled"] == stats["cancelled"]


@pytest.mark.parametrize("stack", [EmulatorConfig(workers=1, job_time=2.0, tokens=[TOKEN])],
                         indirect=True)
def test_ctrl_c_on_a_sharded_batch_stops_its_shards_and_resume_finishes(stack, tmp_path):
    """Ctrl-C on a batch run in shards (here in-process subflows): the shards running stop as
    one batch does (queued jobs cancelled, the running one stored), the shards not started
    never start, the parent writes one manifest of what was done and exits 130; a resume
    finishes the batch paying for nothing twice."""
    api, env, s3, prefix = stack
    source = _source(tmp_path, 6)
    run = subprocess.Popen([*FLASHGEN, "batch", str(source), "--concurrency", "2",
                            "--shard-size", "2", "--max-shards-running", "2",
                            "--batch-id", "cli-cancel-shards"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: api.stats()["jobs_by_status"].get("in_progress", 0) == 1
                 and api.stats()["jobs_by_status"].get("in_queue", 0) >= 1, 180, every=0.05)
        os.kill(run.pid, signal.SIGINT)  # what Ctrl-C sends
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stats = api.stats()
    assert stats["cancelled"] >= 1 and stats["jobs_by_status"].get("in_queue", 0) == 0, stats
    rows = _manifest(s3, prefix, "cli-cancel-shards")
    states = sorted(r["state"] for r in rows)
    assert len(rows) == 6 and "stored" in states and "cancelled" in states, rows
    assert "failed" not in states
    assert any("not sent" in (r["reason"] or "") for r in rows)  # the shard never started

    done = _flashgen(env, "resume", "cli-cancel-shards")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _manifest(s3, prefix, "cli-cancel-shards")
    assert sorted(r["state"] for r in rows) == ["skipped"] * states.count("stored") + [
        "stored"] * (6 - states.count("stored")), rows
    completed = [j for j in api.job_times() if j["status"] == "completed"]
    assert len(completed) == 6  # one paid job per item: nothing paid twice


@pytest.mark.parametrize("stack", [EmulatorConfig(
    workers=8, job_time=0.3, tokens=[TOKEN], faults=["job:fail:0.4"], fault_seed=3)],
    indirect=True)
def test_retry_failed_sends_only_the_failed_items_again(stack, tmp_path):
    api, env, s3, prefix = stack
    source = _source(tmp_path, 8)
    first = _flashgen(env, "batch", str(source), "--batch-id", "flaky", "--defaults",
                      json.dumps({"aspect_ratio": "1:1"}))
    assert first.returncode == 1, first.stderr[-3000:]
    failed = sorted(r["prompt"] for r in _manifest(s3, prefix, "flaky")
                    if r["state"] == "failed")
    assert 0 < len(failed) < 8, failed
    api.set_faults([])

    # A resume leaves failed items alone: nothing is sent.
    before = api.stats()["submissions"]
    resumed = _flashgen(env, "resume", "flaky")
    assert resumed.returncode == 1 and api.stats()["submissions"] == before, resumed.stderr
    assert _flashgen(env, "retry", "flaky", "--failed", "--ambiguous").returncode == 2

    retried = _flashgen(env, "retry", "flaky", "--failed")
    assert retried.returncode == 0, retried.stderr[-3000:]
    stats = api.stats()
    assert stats["submissions"] - before == len(failed)  # only the failed ones, once each
    rows = _manifest(s3, prefix, "flaky")
    assert len(rows) == 8 and {r["state"] for r in rows} <= {"stored", "skipped"}, rows
    again = sorted(r["prompt"] for r in rows if r["state"] == "stored"
                   and r["prompt"] in failed)
    assert again == failed
    # The batch's own defaults came from its record: the retried images are 1:1 too.
    records = [json.loads(s3.get_object(Bucket=BUCKET, Key=r["metadata_uri"].split("/", 3)[3])[
        "Body"].read()) for r in rows if r["prompt"] in failed]
    assert {rec["inputs"]["aspect_ratio"] for rec in records} == {"1024:1024 (1:1)"}, records
