"""The outside world for the benchmarks, each in its own process so that this process's CPU
is the flow's alone: a real Prefect server, moto's S3 server, and the RunComfy emulator.

    with Services() as services:                 # Prefect server + S3, for the whole bench
        with services.emulator(job_time=2.0) as api:   # a fresh emulator per scenario
            api.url, api.stats(), api.job_times()
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from infra.prefect_server import PrefectServer
from infra.stack import FAKE_AWS, free_port

TOKEN = "bench-token"
BUCKET = "bench"
REPO = Path(__file__).resolve().parents[1]


class Process:
    """A child process of ours, stopped on exit; ``url`` answers once it is up."""

    def __init__(self, args: list[str], url: str, health: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.url = url
        self._popen = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, cwd=REPO)
        deadline = time.monotonic() + 120
        while not _answers(url + health):
            if self._popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{args[2:4]} did not come up at {url}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()


class Emulator(Process):
    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_emulator/stats", timeout=30).json()

    def job_times(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_emulator/jobs", timeout=60).json()


class Services:
    """A Prefect server and moto's S3 for the whole bench; the environment points at them."""

    def __enter__(self) -> Services:
        self._stack = contextlib.ExitStack()
        self.prefect = self._stack.enter_context(PrefectServer(startup_timeout=240))
        port = free_port()
        s3 = Process([sys.executable, "-m", "infra.stack", "--port", str(port)],
                     f"http://127.0.0.1:{port}", "/")
        self._stack.callback(s3.stop)
        os.environ.update({**FAKE_AWS, "AWS_ENDPOINT_URL": s3.url,
                           "PREFECT_API_URL": self.prefect.api_url})
        import boto3

        boto3.client("s3", endpoint_url=s3.url).create_bucket(Bucket=BUCKET)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @contextlib.contextmanager
    def emulator(self, job_time: float) -> Iterator[Emulator]:
        """A fresh emulator: unlimited workers (only flashgen limits concurrency), fixed
        job times, and its URL in the environment for the flows."""
        port = free_port()
        api = Emulator([sys.executable, "-m", "flashgen.cli", "emulator", "--host", "127.0.0.1",
                        "--port", str(port), "--workers", "256", "--job-time", str(job_time),
                        "--job-time-spread", "0", "--token", TOKEN],
                       f"http://127.0.0.1:{port}", "/_emulator/stats")
        os.environ["RUNCOMFY_BASE_URL"] = api.url
        try:
            yield api
        finally:
            api.stop()


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True
