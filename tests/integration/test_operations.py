"""flashgen as operations runs it, on real processes: a Prefect server on PostgreSQL, two
process workers, moto's S3 server, the RunComfy emulator and a webhook receiver.

Nothing is shared in-process with them: this test talks to each over HTTP and runs the
`flashgen` and `prefect` commands as an operator would. The stack is built once for the
module (fixture ``stack``); every process it starts is stopped, and its database dropped,
even when a test fails. Each test leaves the stack as the next one expects it, so they run
in file order.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import httpx
import pytest
import yaml
from botocore.config import Config

from flashgen.infra.prefect_server import SERVER_SETTINGS
from flashgen.infra.stack import FAKE_AWS, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PYTHON = sys.executable
PREFECT = str(BIN / "prefect")
PGUSER = os.environ.get("FLASHGEN_IT_PGUSER", "postgres")  # trust auth on 127.0.0.1
PG = ["-h", "127.0.0.1", "-p", "5432", "-U", PGUSER]
BUCKET = "flashgen-it"
PREFIX = "it"
API_SLOTS = 3  # the global limit; each on-demand run asks for 2 (prefect.yaml)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


# --- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process in its own session, logging to a file; ``stop`` ends its group."""

    name: str
    popen: subprocess.Popen
    log: Path

    def stop(self, grace: float = 15) -> None:
        if self.popen.poll() is None:
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        _signal_group(self.popen.pid, signal.SIGKILL)  # anything its group left behind

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(text.splitlines()[-lines:])


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _ours(marker: str) -> list[int]:
    """Processes whose environment carries this test's marker (flow runs start their own
    sessions, so they are found by the marker rather than by process group)."""
    found = []
    needle = f"FLASHGEN_IT_MARKER={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@dataclass
class Stack:
    tmp: Path
    marker: str
    procs: list[Proc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # what flashgen/prefect commands get
    api: str = ""
    emulator: str = ""
    s3_url: str = ""
    hook_file: Path = Path()
    tokens: dict[str, str] = field(default_factory=dict)
    alerted: dict[str, dict[str, Any]] = field(default_factory=dict)  # runs whose alerts count

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def run(self, args: list[str], *, env: dict[str, str] | None = None,
            timeout: float = 180) -> str:
        """Run a command to its end; its output, or a failure showing it."""
        done = subprocess.run(args, check=False, cwd=REPO, env=env or self.env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, start_new_session=True)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{output}"
        return output

    def logs(self) -> str:
        return "\n".join(p.tail() for p in self.procs)

    # -- Prefect's REST API ----------------------------------------------------------------

    def get(self, path: str) -> Any:
        response = httpx.get(self.api + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = httpx.post(self.api + path, json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def deployment(self, name: str) -> dict[str, Any]:
        return self.get(f"/deployments/name/{name}")

    def runs_of(self, deployment: str) -> list[dict[str, Any]]:
        dep = self.deployment(deployment)
        return self.post("/flow_runs/filter", {
            "deployments": {"id": {"any_": [dep["id"]]}}, "sort": "EXPECTED_START_TIME_ASC",
            "limit": 200})

    def run_deployment(self, name: str, *args: str) -> str:
        """``prefect deployment run NAME ARGS``; the new flow run's id."""
        output = self.run([PREFECT, "deployment", "run", name, *args])
        found = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
        assert found, output
        return found.group(1)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 150,
                 every: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(every)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}")

    def finished(self, flow_run_id: str, timeout: float = 150) -> dict[str, Any]:
        def state() -> dict[str, Any] | None:
            run = self.get(f"/flow_runs/{flow_run_id}")
            return run if run["state_type"] in TERMINAL else None
        return self.wait_for(f"flow run {flow_run_id} to finish", state, timeout)

    def emulator_stats(self) -> dict[str, Any]:
        return httpx.get(self.emulator + "/_emulator/stats", timeout=10).json()

    def notifications(self) -> list[dict[str, Any]]:
        if not self.hook_file.exists():
            return []
        return [json.loads(line) for line in self.hook_file.read_text().splitlines() if line]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("operations")
    s = Stack(tmp=tmp, marker=uuid.uuid4().hex)
    s.tokens = {"good": "tok-good-" + uuid.uuid4().hex, "bad": "tok-bad-" + uuid.uuid4().hex}
    database = f"flashgen_it_{s.marker[:12]}"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PREFECT_", "AWS_", "FLASHGEN_", "RUNCOMFY_"))}
    clean.update(PYTHONUNBUFFERED="1", FLASHGEN_IT_MARKER=s.marker,
                 PREFECT_SERVER_ANALYTICS_ENABLED="false")
    subprocess.run(["createdb", *PG, database], check=True, capture_output=True, timeout=60)
    try:
        ports = {name: free_port() for name in ("prefect", "s3", "emulator", "hook")}
        s.api = f"http://127.0.0.1:{ports['prefect']}/api"
        ui = f"http://127.0.0.1:{ports['prefect']}"
        s.emulator = f"http://127.0.0.1:{ports['emulator']}"
        s.hook_file = tmp / "notifications.jsonl"

        server = s.start("prefect-server", [PREFECT, "server", "start", "--host", "127.0.0.1",
                                            "--port", str(ports["prefect"]), "--no-ui"], {
            **clean, "PREFECT_HOME": str(tmp / "server-home"), "PREFECT_UI_URL": ui,
            "PREFECT_API_DATABASE_CONNECTION_URL":
                f"postgresql+asyncpg://{PGUSER}@127.0.0.1:5432/{database}",
            **SERVER_SETTINGS})  # as infra/PRODUCTION.md starts it
        moto = s.start("moto-s3",
                       [PYTHON, "-m", "flashgen.infra.stack", "--port", str(ports["s3"])],
                       clean)
        s.start("emulator", [PYTHON, "-m", "flashgen.cli", "emulator", "--host", "127.0.0.1",
                             "--port", str(ports["emulator"]), "--workers", "8",
                             "--job-time", "0.5", "--token", s.tokens["good"]], clean)
        s.start("webhook", [PYTHON, str(REPO / "tests/integration/webhook_receiver.py"),
                            str(ports["hook"]), str(s.hook_file)], clean)
        s.s3_url = f"http://127.0.0.1:{ports['s3']}"
        s.env = {**clean, **FAKE_AWS, "AWS_ENDPOINT_URL": s.s3_url,
                 "PREFECT_API_URL": s.api, "PREFECT_UI_URL": ui,
                 "PREFECT_HOME": str(tmp / "cli-home"), "PREFECT_WORKER_QUERY_SECONDS": "1",
                 "FLASHGEN_BUCKET": BUCKET, "FLASHGEN_PREFIX": PREFIX,
                 "FLASHGEN_API_CONCURRENCY": str(API_SLOTS), "RUNCOMFY_BASE_URL": s.emulator,
                 "FLASHGEN_OUTPUT_NETWORKS": "127.0.0.0/8",
                 "FLASHGEN_POLL_INITIAL": "0.2", "FLASHGEN_POLL_MAXIMUM": "0.5"}
        for name, url in (("prefect server", s.api + "/health"), ("moto", s.s3_url),
                          ("emulator", s.emulator + "/_emulator/stats")):
            s.wait_for(name, lambda url=url: _healthy(url), timeout=120, every=0.5)
        assert moto.popen.poll() is None and server.popen.poll() is None

        # The operator's part: provision (the token comes from the environment, never
        # from the command line), then deploy everything in prefect.yaml.
        provision = [PYTHON, "-m", "flashgen.cli", "provision", "--submit-rate", "20",
                     "--webhook-url", f"http://127.0.0.1:{ports['hook']}/alerts"]
        token_env = {**s.env, "RUNCOMFY_API_TOKEN": s.tokens["good"]}
        first, again = s.run(provision, env=token_env), s.run(provision, env=token_env)
        assert "created    automation flashgen-run-failed" in first, first
        assert re.fullmatch(r"(unchanged .*\n)+\d+ unchanged\n", again), again
        assert s.tokens["good"] not in first + again
        s.run([PREFECT, "--no-prompt", "deploy", "--all"], env={**s.env, "PWD": str(REPO)})
        # The listing sensor is the fallback: deployed with its schedule off (the listener
        # is the default), and run by hand below.
        [schedule] = s.deployment("watch-inbox/inbox-sensor")["schedules"]
        assert schedule["schedule"]["interval"] == 60 and schedule["active"] is False
        for n in (1, 2):  # workers get no token: the flows read the Secret block
            s.start(f"worker-{n}", [PREFECT, "worker", "start", "--pool", "flashgen-process",
                                    "--name", f"it-worker-{n}", "--limit", "1"],
                    {**s.env, "PREFECT_HOME": str(tmp / f"worker-{n}-home")})
        s.wait_for("two workers", lambda: len(s.post(
            "/work_pools/flashgen-process/workers/filter", {})) >= 2, timeout=60)
        yield s
    finally:
        for proc in reversed(s.procs):  # workers first, the server last
            proc.stop()
        for pid in _ours(s.marker):
            _signal_group(pid, signal.SIGKILL)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["dropdb", *PG, "--if-exists", "--force", database],
                       check=False, capture_output=True, timeout=60)


def s3_client(stack: Stack) -> Any:
    return boto3.client("s3", endpoint_url=stack.s3_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(s3={"addressing_style": "path"}))


def manifest(stack: Stack, batch_id: str) -> list[dict[str, Any]]:
    body = s3_client(stack).get_object(Bucket=BUCKET, Key=f"{PREFIX}/manifests/{batch_id}.jsonl")
    return [json.loads(line) for line in body["Body"].read().decode().splitlines() if line]


def assert_stored(stack: Stack, rows: list[dict[str, Any]], prompts: list[str]) -> None:
    """Every prompt has a stored row whose image and metadata are in S3."""
    s3 = s3_client(stack)
    by_prompt = {row["prompt"]: row for row in rows}
    for prompt in prompts:
        row = by_prompt[prompt]
        assert row["state"] in ("stored", "skipped"), row
        for uri in [*row["image_uris"], row["metadata_uri"]]:
            assert uri and uri.startswith(f"s3://{BUCKET}/{PREFIX}/"), row
            head = s3.head_object(Bucket=BUCKET, Key=uri.split("/", 3)[3])
            assert head["ContentLength"] > 0
        record = json.loads(s3.get_object(Bucket=BUCKET, Key=row["metadata_uri"].split(
            "/", 3)[3])["Body"].read())
        assert record["inputs"]["prompt"] == prompt and record["sha256"]


# --- the checks, in order -------------------------------------------------------------------


def test_on_demand_run_completes_with_images_and_metadata_in_s3(stack):
    run_id = stack.run_deployment("generate-images/on-demand", "-p", "batch_id=it-on-demand",
                                  "-p", "source=deployments/prompts/on-demand.csv")
    run = stack.finished(run_id)
    assert run["state_type"] == "COMPLETED", (run["state"], stack.logs())
    prompts = [row["prompt"] for row in _csv_rows(REPO / "deployments/prompts/on-demand.csv")]
    rows = manifest(stack, "it-on-demand")
    assert {row["state"] for row in rows} == {"stored"} and len(rows) == len(prompts)
    assert_stored(stack, rows, prompts)
    record_key = rows[0]["metadata_uri"].split("/", 3)[3]
    record = json.loads(s3_client(stack).get_object(Bucket=BUCKET, Key=record_key)["Body"].read())
    assert record["deployment"] == "on-demand" and record["flow_run_id"] == run_id


def test_a_file_in_the_inbox_triggers_one_run_and_nothing_new_starts_nothing(stack):
    prompts = ["A paper boat on a rain puddle, macro photo", "Snowy pine forest at blue hour"]
    body = "prompt,seed\n" + "".join(f'"{p}",{n}\n' for n, p in enumerate(prompts, 7))
    key = f"{PREFIX}/inbox/team-a/spring campaign.csv"
    s3_client(stack).put_object(Bucket=BUCKET, Key=key, Body=body.encode())

    sensor = stack.finished(stack.run_deployment("watch-inbox/inbox-sensor"))
    assert sensor["state_type"] == "COMPLETED", (sensor["state"], stack.logs())
    triggered = stack.wait_for("the inbox deployment's triggered run",
                               lambda: stack.runs_of("generate-images/inbox"), timeout=60)
    assert len(triggered) == 1
    run = stack.finished(triggered[0]["id"])
    assert run["state_type"] == "COMPLETED", (run["state"], stack.logs())
    assert run["parameters"]["source"] == f"s3://{BUCKET}/{key}"
    rows = manifest(stack, run["parameters"]["batch_id"])
    assert sorted(row["prompt"] for row in rows) == sorted(prompts)
    assert_stored(stack, rows, prompts)

    # Nothing new: the next pass announces nothing, so nothing can start.
    again = stack.finished(stack.run_deployment("watch-inbox/inbox-sensor"))
    assert again["state_type"] == "COMPLETED"
    uploaded = stack.post("/events/filter", {"filter": {
        "event": {"name": ["flashgen.prompts.uploaded"]},
        "occurred": {"since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}}})
    assert [e["payload"]["uri"] for e in uploaded["events"]] == [f"s3://{BUCKET}/{key}"]
    time.sleep(5)  # a trigger fires within a second or two of its event
    assert len(stack.runs_of("generate-images/inbox")) == 1
    assert len(stack.runs_of("watch-inbox/inbox-sensor")) == 2  # its schedule is paused


def _queue(stack: Stack) -> tuple[Any, str]:
    sqs = boto3.client("sqs", endpoint_url=stack.s3_url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    return sqs, sqs.get_queue_url(QueueName="flashgen-inbox")["QueueUrl"]


def _in_queue(stack: Stack) -> int:
    """Messages waiting or taken and not yet deleted."""
    sqs, url = _queue(stack)
    got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(got["ApproximateNumberOfMessages"]) + int(
        got["ApproximateNumberOfMessagesNotVisible"])


def _all_runs(stack: Stack) -> set[str]:
    return {r["id"] for r in stack.post("/flow_runs/filter", {"limit": 200})}


def test_the_listener_starts_one_inbox_run_per_upload_even_when_killed_before_deleting(stack):
    """S3 notifies the provisioned queue; `flashgen listen` turns the upload into the event
    that starts the inbox deployment. The first listener dies (SIGKILL, a failpoint) after
    the event is sent and before the message is deleted; SQS hands the message to the
    next listener, which finds it already announced: one run, one batch, each item paid
    once. While nothing is uploaded, nothing runs."""
    listen = [PYTHON, "-m", "flashgen.cli", "listen", "--wait-seconds", "1",
              "--visibility-timeout", "3"]
    runs_before = _all_runs(stack)
    first = stack.start("listener-1", listen, {**stack.env, "FLASHGEN_FAILPOINT": "announced"})
    # Idle: the queue's earlier messages (S3's test event, the sensor test's upload, which
    # the markers say was announced) are handled and deleted; no flow run starts.
    stack.wait_for("the listener to empty the queue", lambda: _in_queue(stack) == 0,
                   timeout=120)
    assert first.popen.poll() is None, first.tail()
    assert _all_runs(stack) == runs_before  # 0 flow runs while idle: nothing is polled

    prompts = ["A red kite over chalk hills, gouache", "Harbour lights at dusk, long exposure"]
    key = f"{PREFIX}/inbox/team-b/kites.csv"
    uri = f"s3://{BUCKET}/{key}"
    submissions = stack.emulator_stats()["submissions"]
    uploaded_at = datetime.now(UTC)
    s3_client(stack).put_object(Bucket=BUCKET, Key=key, Body=(
        "prompt\n" + "".join(f'"{p}"\n' for p in prompts)).encode())

    assert first.popen.wait(120) == -signal.SIGKILL, first.tail()  # died before deleting
    [run] = stack.wait_for("the inbox run for the upload", lambda: [
        r for r in stack.runs_of("generate-images/inbox") if r["parameters"]["source"] == uri],
        timeout=60)
    latency = (datetime.fromisoformat(run["created"]) - uploaded_at).total_seconds()
    print(f"\nlistener: upload to flow run created in {latency:.2f} s")

    second = stack.start("listener-2", listen, stack.env)
    # The message comes back after its 3 s visibility timeout; the second listener finds
    # the file announced and deletes it.
    stack.wait_for("the redelivered message to be handled", lambda: _in_queue(stack) == 0,
                   timeout=120)
    assert "already announced" in second.log.read_text(), second.tail()
    done = stack.finished(run["id"])
    assert done["state_type"] == "COMPLETED", (done["state"], stack.logs())
    started = (datetime.fromisoformat(done["start_time"]) - uploaded_at).total_seconds()
    print(f"listener: upload to flow run running in {started:.2f} s (workers poll each 1 s)")
    assert sorted(r["prompt"] for r in manifest(stack, run["parameters"]["batch_id"])) == sorted(
        prompts)
    assert [e["payload"]["uri"] for e in _events(stack, "flashgen.prompts.uploaded")
            ].count(uri) == 1
    assert [r["id"] for r in stack.runs_of("generate-images/inbox")
            if r["parameters"]["source"] == uri] == [run["id"]]
    assert stack.emulator_stats()["submissions"] == submissions + len(prompts)
    second.stop()
    assert second.popen.returncode == 0, second.tail()  # SIGTERM: a clean stop


def _alerts_about(stack: Stack, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The alerts (subject, body) whose text names this flow run."""
    texts = [json.loads(n["body"]) for n in stack.notifications()]
    return [t for t in texts if run["id"] in t["body"] or f"run {run['name']} " in t["subject"]]


def test_a_refused_run_pages_no_one_and_a_failed_batch_alerts_once(stack):
    """A wrong token is refused before anything is sent: the run ends Refused, emits
    flashgen.batch.refused, and no alert goes out. A batch whose items fail ends
    BatchFailed and sends one alert, with counts, first errors and the run's link. (Both
    are counted again at the end of the module, once later alerts have arrived.)"""
    bad = stack.tokens["bad"]
    refused = stack.finished(stack.run_deployment(
        "generate-images/on-demand",
        "-p", 'prompts=["A lighthouse keeper\'s cat, oil painting"]',
        "--job-variable", "env=" + json.dumps({"RUNCOMFY_API_TOKEN": bad})))
    assert (refused["state_type"], refused["state_name"]) == ("FAILED", "Refused"), (
        refused["state"], stack.logs())
    message = refused["state"]["message"]
    assert message.startswith("nothing sent: token refused:") and "RUNCOMFY_API_TOKEN" in message
    assert "00000000-" not in message
    [event] = stack.wait_for("the flashgen.batch.refused event", lambda: [
        e for e in _events(stack, "flashgen.batch.refused")
        if e["payload"]["flow_run_id"] == refused["id"]], timeout=60)
    assert "RUNCOMFY_API_TOKEN" in event["payload"]["refused"]

    before = stack.emulator_stats()
    httpx.post(stack.emulator + "/_emulator/faults", json={"faults": ["job:fail:1"]},
               timeout=10).raise_for_status()
    try:
        failed = stack.finished(stack.run_deployment(
            "generate-images/on-demand", "-p", "batch_id=it-failed",
            "-p", 'prompts=["A glass of water on a sunny windowsill"]'))
    finally:
        httpx.post(stack.emulator + "/_emulator/faults", json={"faults": []},
                   timeout=10).raise_for_status()
    assert (failed["state_type"], failed["state_name"]) == ("FAILED", "BatchFailed"), (
        failed["state"], stack.logs())
    assert stack.emulator_stats()["submissions"] == before["submissions"] + 1
    [alert] = stack.wait_for("the batch-failed alert", lambda: _alerts_about(stack, failed),
                             timeout=90)
    assert alert["subject"].startswith("flashgen: batch it-failed failed"), alert
    assert "Counts: 0 stored, 0 skipped, 1 failed, 0 invalid" in alert["body"]
    assert "First errors:\n- line 1: " in alert["body"]
    assert f"/runs/flow-run/{failed['id']}" in alert["body"]
    assert _alerts_about(stack, refused) == []
    everything = stack.hook_file.read_text()
    assert bad not in everything and stack.tokens["good"] not in everything
    stack.alerted = {"refused": refused, "failed": failed}


def _events(stack: Stack, name: str) -> list[dict[str, Any]]:
    return stack.post("/events/filter", {"filter": {
        "event": {"name": [name]},
        "occurred": {"since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}},
        "limit": 50})["events"]


def test_two_runs_at_once_stay_within_the_api_limit_and_submit_nothing_twice(stack):
    before = stack.emulator_stats()
    prompts = [f"Botanical plate no. {n}, engraving style" for n in range(1, 10)]
    first, second = prompts[:6], prompts[3:]  # three prompts in both runs
    # Created back to back through the API (a `prefect deployment run` takes seconds on a
    # busy machine, long enough for the first run to finish before the second exists).
    # Only prompts: the deployment has no default file, so these are all each run sends.
    on_demand = stack.deployment("generate-images/on-demand")
    ids = [stack.post(f"/deployments/{on_demand['id']}/create_flow_run", {"parameters": {
               "prompts": batch, "batch_id": f"it-pair-{n}"}})["id"]
           for n, batch in enumerate((first, second))]
    runs = [stack.finished(run_id) for run_id in ids]
    assert [r["state_type"] for r in runs] == ["COMPLETED"] * 2, stack.logs()
    # Each worker takes one run at a time (--limit 1), so overlapping runs ran on both.
    assert runs[0]["start_time"] < runs[1]["end_time"] and runs[1]["start_time"] < runs[0][
        "end_time"], "the two runs did not overlap"

    after = stack.emulator_stats()
    assert after["duplicate_submissions"] == 0
    assert after["submissions"] - before["submissions"] == len(prompts)
    assert after["max_in_flight"] <= API_SLOTS, after
    limit = stack.get("/v2/concurrency_limits/runcomfy-api")
    assert limit["limit"] == API_SLOTS and limit["active_slots"] == 0
    rows = manifest(stack, "it-pair-0") + manifest(stack, "it-pair-1")
    # An item both runs wanted is stored once; the second run skips it, or resumes the first
    # run's request (never a second submit) and reports it stored too.
    done = {r["prompt"] for r in rows if r["state"] in ("stored", "skipped")}
    assert done == set(prompts) and all(r["state"] in ("stored", "skipped") for r in rows)
    print(f"\nemulator: max_in_flight={after['max_in_flight']} (limit {API_SLOTS}), "
          f"submissions={after['submissions']}, duplicates={after['duplicate_submissions']}")


def test_cancelling_a_run_cancels_its_queued_jobs_and_a_resume_pays_nothing_twice(stack):
    """`prefect flow-run cancel` while jobs are queued and running at the API: the worker's
    SIGTERM reaches the flow, which cancels the queued jobs at the API, gives the running
    one its grace (shorter than the job here, so it is left running with its request_id in
    the ledger), writes the manifest and ends Cancelled with no error lines; the `resume`
    deployment then fetches the left job and sends the cancelled ones, paying nothing twice."""
    # Its own API: one job at a time, long jobs, so the run's 3 jobs are 1 running, 2 queued.
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    stack.start("emulator-cancel", [PYTHON, "-m", "flashgen.cli", "emulator", "--host",
                                    "127.0.0.1", "--port", str(port), "--workers", "1",
                                    "--job-time", "6", "--token", stack.tokens["good"]],
                {k: v for k, v in stack.env.items() if not k.startswith("PREFECT_")})
    stack.wait_for("the second emulator", lambda: _healthy(api + "/_emulator/stats"), 60, 0.5)
    prompts = [f"Harbour at dawn, study no. {n}" for n in range(1, 6)]
    on_demand = stack.deployment("generate-images/on-demand")
    run_id = stack.post(f"/deployments/{on_demand['id']}/create_flow_run", {
        "parameters": {"prompts": prompts, "batch_id": "it-cancel", "concurrency": 3},
        "job_variables": {"env": {"RUNCOMFY_BASE_URL": api, "FLASHGEN_CANCEL_GRACE": "2"}},
    })["id"]

    def jobs() -> dict[str, int]:
        return httpx.get(api + "/_emulator/stats", timeout=10).json()["jobs_by_status"]

    stack.wait_for("a job running and others queued", lambda: jobs().get(
        "in_progress", 0) == 1 and jobs().get("in_queue", 0) >= 1, timeout=150, every=0.2)
    stack.run([PREFECT, "flow-run", "cancel", run_id])
    run = stack.finished(run_id, timeout=120)
    assert run["state_type"] == "CANCELLED", (run["state"], stack.logs())

    stats = httpx.get(api + "/_emulator/stats", timeout=10).json()
    at_api = httpx.get(api + "/_emulator/jobs", timeout=10).json()
    # Every job still queued got its cancel; none is left queued to start (and be paid) later.
    assert stats["cancelled"] >= 1 and stats["jobs_by_status"].get("in_queue", 0) == 0, stats
    assert stats["cancelled"] == sum(j["status"] == "cancelled" for j in at_api)
    rows = {row["prompt"]: row for row in manifest(stack, "it-cancel")}
    assert set(rows) == set(prompts) and {r["state"] for r in rows.values()} <= {
        "stored", "cancelled"}, rows
    # No paid job is abandoned without its request_id in the ledger.
    s3 = s3_client(stack)
    known = {row["request_id"] for row in rows.values() if row["state"] == "stored"}
    for row in rows.values():
        if row["reason"] and row["reason"].endswith("not sent"):
            continue  # never claimed: it has no ledger entry
        entry = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/ledger/"
                                         f"{row['fingerprint']}.json")["Body"].read())
        if entry["state"] == "submitted":
            known.add(entry["request_id"])
    paid = {j["request_id"] for j in at_api if j["status"] != "cancelled"}
    assert paid and paid <= known, (paid, known)
    logs = stack.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]},
                                                "level": {"ge_": 40}}, "limit": 50})
    assert logs == [], [log["message"] for log in logs]
    cancelled = stack.wait_for("the flashgen.batch.cancelled event", lambda: stack.post(
        "/events/filter", {"filter": {
            "event": {"name": ["flashgen.batch.cancelled"]},
            "resource": {"id": ["flashgen.batch.it-cancel"]},
            "occurred": {"since": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}}}
    )["events"], timeout=60)
    assert len(cancelled) == 1 and cancelled[0]["payload"]["counts"]["cancelled"] >= 1

    # The `resume` deployment (what the UI runs), given only the batch id: the batch's own
    # record supplies the rest, and nothing is paid twice.
    resumed = stack.finished(stack.run_deployment(
        "resume-batch/resume", "-p", "batch_id=it-cancel",
        "--job-variable", "env=" + json.dumps({"RUNCOMFY_BASE_URL": api})))
    assert resumed["state_type"] == "COMPLETED", (resumed["state"], stack.logs())
    rows = manifest(stack, "it-cancel")
    assert_stored(stack, rows, prompts)
    at_api = httpx.get(api + "/_emulator/jobs", timeout=10).json()
    completed = [j["request_id"] for j in at_api if j["status"] == "completed"]
    # One paid job per prompt: the one left running was fetched, not sent again.
    assert len(completed) == len(prompts) and set(completed) == {
        r["request_id"] for r in rows}, (at_api, rows)


def test_the_scheduled_deployment_runs_at_its_cron_times_in_its_timezone(stack):
    spec = next(d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
                if d["name"] == "scheduled-content")["schedules"][0]
    assert spec["cron"] == "0 6 * * *"
    scheduled = [r for r in stack.runs_of("generate-images/scheduled-content")
                 if r["state_type"] == "SCHEDULED"]
    assert len(scheduled) >= 3
    zone = ZoneInfo(spec["timezone"])
    created = datetime.fromisoformat(stack.deployment("generate-images/scheduled-content")[
        "created"])
    times = [datetime.fromisoformat(r["expected_start_time"]) for r in scheduled[:3]]
    assert times == _daily(6, zone, after=created)[:3]


def test_a_run_whose_heartbeats_stop_is_marked_crashed_and_announced(stack):
    """A machine that dies takes its run's heartbeats with it: the server's
    flashgen-crash-unresponsive-runs marks the run Crashed, and that sends the run-failed
    alert. The provisioned automation acts; only its wait is cut from 10 minutes to 15 s
    for the test, and put back (provision then reports it unchanged)."""
    [zombie] = [a for a in stack.post("/automations/filter", {})
                if a["name"] == "flashgen-crash-unresponsive-runs"]
    provisioned = {k: zombie[k] for k in ("name", "description", "enabled", "tags", "trigger",
                                          "actions", "actions_on_trigger", "actions_on_resolve")}
    hurried = {**provisioned, "trigger": {**provisioned["trigger"], "within": 15}}
    httpx.put(f"{stack.api}/automations/{zombie['id']}", json=hurried,
              timeout=30).raise_for_status()
    try:
        # A run as a worker leaves it: Running, one heartbeat sent the way the engine
        # sends it (tags and flow as related resources), then silence.
        flow = stack.get("/flows/name/generate-images")
        run = stack.post("/flow_runs/", {"flow_id": flow["id"], "tags": ["flashgen"],
                                         "name": "it-zombie-" + stack.marker[:6]})
        stack.post(f"/flow_runs/{run['id']}/set_state",
                   {"state": {"type": "RUNNING", "name": "Running"}, "force": True})
        heartbeat = {"id": str(uuid.uuid4()), "occurred": datetime.now(UTC).isoformat(),
                     "event": "prefect.flow-run.heartbeat", "payload": {},
                     "resource": {"prefect.resource.id": f"prefect.flow-run.{run['id']}",
                                  "prefect.resource.name": run["name"]},
                     "related": [{"prefect.resource.id": f"prefect.flow.{flow['id']}",
                                  "prefect.resource.role": "flow"},
                                 {"prefect.resource.id": "prefect.tag.flashgen",
                                  "prefect.resource.role": "tag"}]}
        httpx.post(f"{stack.api}/events", json=[heartbeat], timeout=30).raise_for_status()

        crashed = stack.wait_for("the silent run to be marked Crashed", lambda: (
            found if (found := stack.get(f"/flow_runs/{run['id']}"))["state_type"] == "CRASHED"
            else None), timeout=120)
        assert "No heartbeat" in crashed["state"]["message"]
        alert = stack.wait_for("the run-failed alert about the crash", lambda: [
            json.loads(n["body"]) for n in stack.notifications()
            if f"run {run['name']} is Crashed" in json.loads(n["body"])["subject"]], timeout=60)
        assert "State: Crashed" in alert[0]["body"] and "No heartbeat" in alert[0]["body"]
        # A marker alert sent after this one: once it has arrived, any second alert about
        # these runs would have too.
        sentinel = "it-sentinel-" + stack.marker[:6]
        httpx.post(f"{stack.api}/events", json=[{
            "id": str(uuid.uuid4()), "occurred": datetime.now(UTC).isoformat(),
            "event": "flashgen.batch.failed", "resource": {
                "prefect.resource.id": f"flashgen.batch.{sentinel}"},
            "payload": {"batch_id": sentinel, "counts": {}, "first_errors": []}}],
            timeout=30).raise_for_status()
        stack.wait_for("the sentinel alert", lambda: [
            n for n in stack.notifications() if sentinel in n["body"]], timeout=60)
        assert len(_alerts_about(stack, run)) == 1  # the crash: once
        if stack.alerted:  # the refused run: never; the failed batch: once
            assert _alerts_about(stack, stack.alerted["refused"]) == []
            assert len(_alerts_about(stack, stack.alerted["failed"])) == 1
    finally:
        httpx.put(f"{stack.api}/automations/{zombie['id']}", json=provisioned,
                  timeout=30).raise_for_status()
    again = stack.run([PYTHON, "-m", "flashgen.cli", "provision", "--skip-bucket"])
    assert "unchanged  automation flashgen-crash-unresponsive-runs" in again, again


def test_a_sharded_batch_on_the_work_pool_survives_a_killed_shard_paying_nothing_twice(stack):
    """`flashgen batch --shard-size 3 --shard-deployment ...`: 7 items in 3 shards, each a
    generate-shard run on the work pool's workers (run_deployment), 2 at a time. The first
    shard run to have a request_id in the ledger is killed there (SIGKILL, the `submitted`
    failpoint, once); its worker marks it Crashed and the parent runs that shard again,
    which resumes the paid job instead of resending it. The batch completes: every item
    stored once, 7 submissions and none twice, one manifest and gallery for all shards."""
    # generate-shard as deployed, on the same pool, with the failpoint in its runs' env.
    shard = stack.deployment("generate-shard/process")
    killed_marker = stack.tmp / "shard-killed"
    stack.post("/deployments/", {
        **{k: shard[k] for k in ("flow_id", "entrypoint", "path", "pull_steps", "work_pool_name",
                                 "work_queue_name", "tags", "parameter_openapi_schema")},
        "name": "it-killed-once", "job_variables": {"env": {
            "FLASHGEN_FAILPOINT": "submitted", "FLASHGEN_FAILPOINT_ONCE": str(killed_marker)}}})
    prompts = [f"Lantern {n} of {stack.marker[:6]}, ink wash" for n in range(7)]
    before = stack.emulator_stats()

    output = stack.run([PYTHON, "-m", "flashgen.cli", "batch", *(a for p in prompts
                                                                 for a in ("-p", p)),
                        "--batch-id", "it-sharded", "--shard-size", "3",
                        "--max-shards-running", "2", "--concurrency", "2",
                        "--shard-deployment", "generate-shard/it-killed-once"], timeout=900)

    assert killed_marker.exists(), output
    runs = stack.runs_of("generate-shard/it-killed-once")
    by_index: dict[int, list[str]] = {}
    for run in runs:
        by_index.setdefault(run["parameters"]["index"], []).append(run["state_type"])
    assert sorted(by_index) == [0, 1, 2], by_index
    # One run was killed and ran again; every shard ended with one completed run.
    assert sorted(state for states in by_index.values() for state in states) == [
        "COMPLETED", "COMPLETED", "COMPLETED", "CRASHED"], (by_index, stack.logs())
    after = stack.emulator_stats()
    assert after["submissions"] - before["submissions"] == len(prompts)
    assert after["duplicate_submissions"] == before["duplicate_submissions"]
    rows = manifest(stack, "it-sharded")
    assert len(rows) == len(prompts) and {r["state"] for r in rows} == {"stored"}, rows
    assert_stored(stack, rows, prompts)
    s3 = s3_client(stack)
    gallery = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/galleries/it-sharded.html")
    page = gallery["Body"].read().decode()
    assert all(p in page for p in prompts)


def _daily(hour: int, zone: ZoneInfo, after: datetime) -> list[datetime]:
    """The next days' ``hour``:00 local time in ``zone`` (what ``0 hour * * *`` means)."""
    day = after.astimezone(zone).date()
    out = []
    while len(out) < 5:
        at = datetime(day.year, day.month, day.day, hour, tzinfo=zone)
        if at > after:
            out.append(at)
        day += timedelta(days=1)
    return out


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))
