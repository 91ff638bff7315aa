"""`flashgen batch` as a real process against a real Prefect server, the emulator and moto's
S3 server; assertions read S3 with boto3 and the emulator's counters. Marked slow."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashgen.emulator import EmulatorConfig, EmulatorServer
from flashgen.records import ImageRecord, LedgerEntry, LedgerState
from tests.conftest import FLASHGEN, module_bucket, s3_client
from tests.conftest import wait_for as _wait_for

pytestmark = pytest.mark.slow
TOKEN = "e2e-token-abcdefghijklmnop"
BUCKET = "flashgen-e2e"
s3_server = module_bucket(BUCKET)


@pytest.fixture
def stack(prefect_api, s3_server, request, tmp_path):
    config = getattr(request, "param", None) or EmulatorConfig(
        workers=8, job_time=0.5, tokens=[TOKEN])
    prefix = f"run-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    with EmulatorServer(config) as api:
        env = {**os.environ, **prefect_api, **s3_server.env, "RUNCOMFY_BASE_URL": api.url,
               "FLASHGEN_OUTPUT_NETWORKS": "127.0.0.0/8",
               "RUNCOMFY_API_TOKEN": TOKEN, "FLASHGEN_BUCKET": BUCKET, "FLASHGEN_PREFIX": prefix,
               "FLASHGEN_POLL_INITIAL": "0.1", "FLASHGEN_POLL_MAXIMUM": "0.5",
               "FLASHGEN_SEND_LEASE": "10", "FLASHGEN_STATE_DIR": str(tmp_path / "state"),
               "PREFECT_LOGGING_LEVEL": "WARNING"}
        s3 = s3_client(s3_server.url)
        yield api, env, s3, prefix


def _keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _prompts(path: Path, n: int) -> Path:
    lines = ["prompt,seed,aspect_ratio"] + [f"scene number {i},{i},16:9" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _batch(env, source, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*FLASHGEN, "batch", str(source), *args], env=env,
                          capture_output=True, text=True, timeout=600, **kw)


def test_cli_refusals_exit_2_and_say_so_once_in_words_for_what_was_asked(stack):
    """A typo'd aspect ratio to `generate` is refused before Prefect starts, worded for one
    image; a wrong token is refused by the flow, named by where it came from. Each prints
    one line, once; nothing is sent."""
    api, env, s3, prefix = stack
    typo = subprocess.run([*FLASHGEN, "generate", "a fox", "--aspect-ratio", "7:3"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert typo.returncode == 2, typo.stderr
    said = typo.stdout + typo.stderr
    assert said.count("'7:3' is not allowed") == 1, said
    assert said.startswith("error: aspect_ratio: ") and "batch" not in said and "line 1" not in said

    wrong = "wrong-token-do-not-print-77"
    refused = subprocess.run([*FLASHGEN, "generate", "a fox"], env={
        **env, "RUNCOMFY_API_TOKEN": wrong}, capture_output=True, text=True, timeout=600)
    said = refused.stdout + refused.stderr
    assert refused.returncode == 2, said
    [line] = [line for line in said.splitlines() if "rejected the token" in line]
    assert line.startswith("error: token refused: ") and "RUNCOMFY_API_TOKEN" in line, said
    assert "00000000" not in said and wrong not in said
    assert api.stats()["submissions"] == 0


def test_cli_batch_lands_everything_in_s3(stack, tmp_path):
    api, env, s3, prefix = stack
    source = tmp_path / "p.csv"
    source.write_text("prompt,seed,aspect_ratio\n"
                      + "".join(f"scene number {i},{i},\n" for i in range(5))
                      + "an owl,1,7:3\n")
    done = _batch(env, source, "--batch-id", "e2e", "--defaults",
                  json.dumps({"aspect_ratios": ["16:9", "1:1"]}))
    assert done.returncode == 1, done.stderr  # one invalid row fails the batch
    assert "line 7" in done.stderr + done.stdout and "aspect_ratio" in done.stderr + done.stdout
    images = _keys(s3, f"{prefix}/images/")
    records = _keys(s3, f"{prefix}/metadata/")
    assert len(images) == len(records) == 10  # 5 rows x 2 aspect ratios; the bad row sent nothing
    for key in records:
        record = ImageRecord.model_validate_json(
            s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        bucket_key = record.image_uri.removeprefix(f"s3://{BUCKET}/")
        body = s3.get_object(Bucket=BUCKET, Key=bucket_key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == record.sha256
    manifest = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/manifests/e2e.jsonl")["Body"].read()
    rows = [json.loads(line) for line in manifest.decode().splitlines()]
    assert len(rows) == 11
    assert sorted(r["state"] for r in rows) == ["invalid"] + ["stored"] * 10
    assert api.stats()["submissions"] == 10


# 3 at a time for 2 s each: 20 s for the 30 jobs, so the kill lands part way even when a
# loaded machine takes seconds to see the condition (with 6 × 1 s jobs all 30 had been
# stored before the kill, beside two CPU burners).
@pytest.mark.parametrize("stack", [EmulatorConfig(workers=3, job_time=2.0, tokens=[TOKEN])],
                         indirect=True)
def test_sigkill_part_way_then_rerun_pays_nothing_twice(stack, tmp_path):
    api, env, s3, prefix = stack
    source = _prompts(tmp_path / "crash.csv", 30)
    # Its own (absent) limit: a SIGKILLed run's slots in the shared one stay leased for 60 s.
    env = {**env, "FLASHGEN_CONCURRENCY_LIMIT": "crash-test-unshared"}
    run = subprocess.Popen([*FLASHGEN, "batch", str(source), "--concurrency", "30"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)

    def ledger_states() -> list[LedgerState]:
        return [LedgerEntry.model_validate_json(
            s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()).state
            for k in _keys(s3, f"{prefix}/ledger/")]

    # Kill once some images are stored and every claim has its request_id recorded: a kill
    # inside a submit's round trip would leave a truly ambiguous item (see the README).
    _wait_for(lambda: len(_keys(s3, f"{prefix}/images/")) >= 5
              and len(states := ledger_states()) == 30
              and LedgerState.CLAIMED not in states, 180, every=0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    stored_before = len(_keys(s3, f"{prefix}/images/"))
    assert stored_before < 30, "the kill came too late to prove anything"

    again = _batch(env, source, "--concurrency", "30")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_keys(s3, f"{prefix}/images/")) == 30
    stats = api.stats()
    assert stats["duplicate_submissions"] == 0 and stats["submissions"] == 30


def test_two_runs_at_once_submit_each_item_once(stack, tmp_path):
    api, env, s3, prefix = stack
    source = _prompts(tmp_path / "twice.csv", 12)
    runs = [subprocess.Popen([*FLASHGEN, "batch", str(source), "--concurrency", "4"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err[-3000:]
    stats = api.stats()
    assert stats["submissions"] == 12 and stats["duplicate_submissions"] == 0
    assert stats["max_in_flight"] <= 4  # the global limit both runs share
    assert len(_keys(s3, f"{prefix}/images/")) == 12


# 3 s jobs: a machine busy enough to take 3 s over four submits would starve the flow, not
# the slots (with 1 s jobs a loaded machine saw 3 in flight: the 4th submit came after the
# 1st job had ended).
@pytest.mark.parametrize("stack", [EmulatorConfig(workers=16, job_time=3.0, job_time_spread=0.0,
                                                  tokens=[TOKEN])], indirect=True)
def test_sixteen_items_keep_exactly_four_slots_busy(stack, tmp_path):
    api, env, s3, prefix = stack
    source = _prompts(tmp_path / "sixteen.csv", 16)
    began = time.monotonic()
    done = _batch(env, source, "--concurrency", "4")
    elapsed = time.monotonic() - began
    assert done.returncode == 0, done.stderr[-3000:]
    assert api.stats()["max_in_flight"] == 4
    assert len(_keys(s3, f"{prefix}/images/")) == 16
    # Reported, not asserted (bench/ measures it properly): includes process start-up.
    print(f"\n16 items at 4: {elapsed:.1f}s wall incl. start-up; ideal "
          f"{math.ceil(16 / 4) * 3.0:.1f}s")


def test_cli_generate_one_image_with_its_options(stack):
    api, env, s3, prefix = stack
    done = subprocess.run([*FLASHGEN, "generate", "a heron in reeds", "--aspect-ratio", "9:16",
                           "--seed", "7", "--no-magic-prompt", "--negative-prompt", "text"],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    [key] = _keys(s3, f"{prefix}/metadata/")
    record = ImageRecord.model_validate_json(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert record.inputs == {"prompt": "a heron in reeds", "negative_prompt": "text",
                             "aspect_ratio": "810:1440 (9:16)", "duration": 5,
                             "prompt_extend": False, "seed": 7}
    assert (record.width, record.height) == (810, 1440)
    assert record.image_uri.removeprefix(f"s3://{BUCKET}/") in done.stdout.replace("\n", "")


def _limit(env, name: str, slots: int) -> dict[str, str]:
    """A fresh global concurrency limit of ``slots`` for one test; the env that uses it."""
    subprocess.run([sys.executable, "-m", "prefect", "gcl", "create", name, "--limit",
                    str(slots)], env=env, check=True, capture_output=True)
    return {**env, "FLASHGEN_CONCURRENCY_LIMIT": name}


@pytest.mark.parametrize("stack", [EmulatorConfig(workers=16, job_time=1.0, job_time_spread=0.0,
                                                  tokens=[TOKEN])], indirect=True)
def test_two_runs_asking_two_each_fill_a_limit_of_three(stack, tmp_path):
    api, env, s3, prefix = stack
    env = _limit(env, "e2e-share-3", 3)
    runs = [subprocess.Popen([*FLASHGEN, "batch", str(_prompts(tmp_path / f"r{n}.csv", 12)),
                              "--concurrency", "2", "--batch-id", f"share-{n}",
                              "--defaults", json.dumps({"negative_prompt": f"run {n}"})],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n in (1, 2)]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
    stats = api.stats()
    assert stats["submissions"] == 24 and stats["duplicate_submissions"] == 0
    assert stats["max_in_flight"] == 3  # every slot used, none more


@pytest.mark.parametrize("stack", [EmulatorConfig(workers=16, job_time=1.0, job_time_spread=0.0,
                                                  tokens=[TOKEN])], indirect=True)
def test_a_small_run_started_during_a_big_one_finishes_first(stack, tmp_path):
    api, env, s3, prefix = stack
    env = _limit(env, "e2e-late-3", 3)
    big = subprocess.Popen([*FLASHGEN, "batch", str(_prompts(tmp_path / "big.csv", 90)),
                            "--concurrency", "3", "--batch-id", "big"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: api.stats()["submissions"] >= 3, 300)  # the big run holds every slot
    small = subprocess.run([*FLASHGEN, "batch", "-p", "a small on-demand heron",
                            "-p", "a small on-demand crane", "--batch-id", "small"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert small.returncode == 0, small.stderr[-3000:]
    assert big.poll() is None, "the small run waited for the big one to end"
    _, err = big.communicate(timeout=600)
    assert big.returncode == 0, err[-3000:]
    stats = api.stats()
    assert stats["max_in_flight"] <= 3 and stats["duplicate_submissions"] == 0
