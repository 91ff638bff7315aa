"""The fault suite's stack: `flashgen batch` as a real process, a real Prefect server, the
emulator, and moto's S3 server behind a proxy that breaks S3 on cue.

``FaultStack.check`` asserts the guarantees the README promises, after any fault:
0 duplicate submissions; every input ends stored, failed with a reason, invalid or skipped,
and "ambiguous" only if its POST really reached the API (the emulator counts every submit
that arrives, even one a fault drops unanswered); every stored image decodes and matches
its SHA-256; the token in none of S3, the command's output or Prefect's database.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from flashgen.emulator import EmulatorConfig, EmulatorServer
from flashgen.records import ImageRecord, ItemState, ManifestRow
from flashgen.scrub import token_forms
from tests.conftest import FLASHGEN, module_bucket, s3_client
from tests.faults.s3proxy import S3FaultProxy

# Runs a command and prints its peak RSS (KiB): the child's alone, whatever ran before.
PEAK_RSS = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.exit(done.returncode)")

TOKEN = "fault-token-9f8e7d6c5b4a3921"
BUCKET = "flashgen-faults"
fault_s3 = module_bucket(BUCKET)


@dataclass
class FaultStack:
    api: EmulatorServer
    proxy: S3FaultProxy
    s3: object  # boto3 client straight to moto (never through the proxy)
    env: dict[str, str]
    prefix: str
    prefect_home: Path
    workdir: Path
    outputs: list[str] = field(default_factory=list)

    def batch(self, *args: str, failpoint: str | None = None, timeout: float = 300,
              **env: str) -> subprocess.CompletedProcess:
        """Run `flashgen batch ARGS` to its end (or its failpoint's SIGKILL)."""
        run_env = {**self.env, **env}
        if failpoint:
            run_env["FLASHGEN_FAILPOINT"] = failpoint
        done = subprocess.run([*FLASHGEN, "batch", *args], env=run_env, capture_output=True,
                              text=True, timeout=timeout, cwd=self.workdir)
        self.outputs += [done.stdout, done.stderr]
        return done

    def measured_batch(self, *args: str, timeout: float = 300
                       ) -> tuple[subprocess.CompletedProcess, float]:
        """Run `flashgen batch ARGS`; also its peak RSS in MB, its own whatever ran before
        (``RUSAGE_CHILDREN`` read in a wrapper process that ran only it)."""
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, *FLASHGEN, "batch", *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=self.workdir)
        self.outputs += [done.stdout, done.stderr]
        lines = done.stdout.strip().splitlines()
        return done, int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else float("nan")

    def prompts(self, n: int, name: str = "prompts.csv") -> str:
        path = self.workdir / name
        lines = ["prompt,seed,aspect_ratio"] + [f"fault scene {i},{i},16:9" for i in range(n)]
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def keys(self, sub: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{self.prefix}/{sub}")
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def manifest(self, batch_id: str) -> list[ManifestRow]:
        text = self.read(f"{self.prefix}/manifests/{batch_id}.jsonl").decode()
        return [ManifestRow.model_validate_json(line) for line in text.splitlines() if line]

    def check(self, batch_id: str, *, inputs: int, killed_claims: int = 0,
              token: str = TOKEN) -> dict[str, int]:
        """Assert every guarantee; returns the manifest's counts per state.

        "Ambiguous" only if its POST reached the API, except for at most ``killed_claims``
        items a SIGKILLed process had claimed (``sending``) and was about to POST: nothing
        tells a rerun whether that POST left, so they are ambiguous, never resent.
        """
        stats = self.api.stats()
        assert stats["duplicate_submissions"] == 0, stats["submissions_by_fingerprint"]
        rows = self.manifest(batch_id)
        assert sorted(r.line for r in rows) == list(range(2, inputs + 2)), "an input was lost"
        sent = stats["submit_requests_by_fingerprint"]  # arrived, answered or not
        unsent_ambiguous = 0
        for row in rows:
            if row.state in (ItemState.FAILED, ItemState.INVALID):
                assert row.reason, row
            ambiguous = row.state == ItemState.FAILED and "mbiguous" in (row.reason or "")
            if ambiguous and not sent.get(row.fingerprint):
                assert "was sending it and is gone" in row.reason, row
                unsent_ambiguous += 1
        assert unsent_ambiguous <= killed_claims, \
            f"{unsent_ambiguous} item(s) ambiguous but never sent"
        self.check_stored_objects()
        self.assert_token_nowhere(token)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.state.value] = counts.get(row.state.value, 0) + 1
        return counts

    def check_stored_objects(self) -> None:
        """Every stored image decodes, to the last pixel, and matches its record's SHA-256."""
        for key in self.keys("metadata/"):
            record = ImageRecord.model_validate_json(self.read(key))
            data = self.read(record.image_uri.split("/", 3)[3])
            assert hashlib.sha256(data).hexdigest() == record.sha256, record.image_uri
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                assert image.size == (record.width, record.height), record.image_uri

    def assert_token_nowhere(self, token: str = TOKEN) -> None:
        """No form of the token (escaped, quoted, base64, …) in S3 (Parquet decoded), the
        state dir, the commands' output or Prefect's database (logs, states, events)."""
        forms = token_forms(token)

        def holds(data: bytes) -> bool:
            return any(form.encode() in data for form in forms)

        state = Path(self.env["FLASHGEN_STATE_DIR"])
        for path in state.rglob("*") if state.is_dir() else ():
            if path.is_file():
                assert not holds(path.read_bytes()), f"the token is in {path}"
        for key in self.keys():
            data = self.read(key)
            if key.endswith(".parquet"):  # compressed: look at its values
                data = repr(pq.read_table(io.BytesIO(data)).to_pylist()).encode()
            assert not holds(data), f"the token is in s3://{BUCKET}/{key}"
        for text in self.outputs:
            assert not holds(text.encode()), "the token is in a command's output"
        for db in self.prefect_home.glob("prefect.db*"):
            assert not holds(db.read_bytes()), f"the token is in {db.name}"


@pytest.fixture
def fault_stack(prefect_api, fault_s3, request, tmp_path):
    config = getattr(request, "param", None) or EmulatorConfig(
        workers=4, job_time=0.3, tokens=[TOKEN], fault_seed=11)
    name = request.node.name  # parametrized names share long stems: keep the ends apart
    prefix = "f-" + hashlib.sha256(name.encode()).hexdigest()[:8] + "-" + "".join(
        c if c.isalnum() else "-" for c in name)[:40]
    with EmulatorServer(config) as api, S3FaultProxy(fault_s3.url) as proxy:
        env = {**os.environ, **prefect_api, **fault_s3.env, "AWS_ENDPOINT_URL": proxy.url,
               "RUNCOMFY_BASE_URL": api.url,
               "FLASHGEN_OUTPUT_NETWORKS": "127.0.0.0/8", "RUNCOMFY_API_TOKEN": TOKEN,
               "FLASHGEN_BUCKET": BUCKET, "FLASHGEN_PREFIX": prefix,
               "FLASHGEN_POLL_INITIAL": "0.1", "FLASHGEN_POLL_MAXIMUM": "0.5",
               "FLASHGEN_STATE_DIR": str(tmp_path / "state"), "FLASHGEN_TASK_RETRY_DELAY": "0",
               "PREFECT_LOGGING_LEVEL": "INFO"}
        env.pop("FLASHGEN_FAILPOINT", None)
        yield FaultStack(api=api, proxy=proxy,
                         s3=s3_client(fault_s3.url),
                         env=env, prefix=prefix, prefect_home=Path(prefect_api["PREFECT_HOME"]),
                         workdir=tmp_path)



