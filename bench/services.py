"""The outside world for the benchmarks, each in its own process so that this process's CPU
is the flow's alone: a real Prefect server on PostgreSQL (as infra/PRODUCTION.md runs it),
moto's S3 server, and the RunComfy emulator.

    with Services() as services:                 # Prefect server + S3, for the whole bench
        services.cpu_seconds()                   # the Prefect server's and PostgreSQL's CPU
        with services.emulator(job_time=2.0) as api:   # a fresh emulator per scenario
            api.url, api.stats(), api.job_times()

PostgreSQL, not the SQLite file ``prefect server start`` defaults to: under this load SQLite
answers writes with "database is locked" (503), and the Prefect client then sleeps 2 s
even with its retries off (``prefect/client/base.py``), so every figure would measure
SQLite's locks. The server's CPU counts the backends of its PostgreSQL database too (not
the other databases of the same PostgreSQL, which other checkouts' tests may be using).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.measure import note_apparatus
from flashgen.infra.prefect_server import PrefectServer
from flashgen.infra.stack import FAKE_AWS, free_port

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


PGUSER = os.environ.get("FLASHGEN_BENCH_PGUSER", "postgres")  # trust auth on 127.0.0.1
PG = ["-h", "127.0.0.1", "-p", "5432", "-U", PGUSER]


class Postgres:
    """A fresh database on the local PostgreSQL, dropped on exit."""

    def __init__(self) -> None:
        self.name = f"flashgen_bench_{uuid.uuid4().hex[:8]}"
        self.url = f"postgresql+asyncpg://{PGUSER}@127.0.0.1:5432/{self.name}"

    def __enter__(self) -> Postgres:
        try:
            subprocess.run(["createdb", *PG, self.name], check=True, capture_output=True,
                           text=True, timeout=60)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            raise RuntimeError(f"the bench needs PostgreSQL at 127.0.0.1:5432 with trust auth "
                               f"for user {PGUSER} (FLASHGEN_BENCH_PGUSER): {detail}") from exc
        self._start_sampling()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        subprocess.run(["dropdb", "--force", *PG, self.name], capture_output=True, timeout=60)

    def counts(self, tables: tuple[str, ...]) -> dict[str, int]:
        """Rows in each of ``tables``."""
        query = "SELECT " + ", ".join(f'(SELECT count(*) FROM "{t}")' for t in tables)
        out = subprocess.run(["psql", *PG, "-d", self.name, "-tAc", query], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        return dict(zip(tables, (int(n) for n in out.strip().split("|")), strict=True))

    def cpu_seconds(self) -> float:
        """CPU of this database's backends (their titles name it): the other databases of
        the same PostgreSQL are other people's (tests and benches of other checkouts).

        A backend's CPU is gone from /proc once it exits, so a thread samples them every
        ``SAMPLE_SECONDS`` and keeps each one's last figure; one that lives less than that
        is missed (the server's pool keeps its connections).
        """
        self._sample()
        return sum(self._seen.values())

    SAMPLE_SECONDS = 0.5

    def _start_sampling(self) -> None:
        self._seen: dict[int, float] = {}
        self._postmaster = _postmaster_pid()
        self._stop = threading.Event()
        self._lock = threading.Lock()

        def sample_forever() -> None:
            while not self._stop.wait(self.SAMPLE_SECONDS):
                self._sample()
                note_apparatus()  # walking /proc is the bench's CPU, not the flow's

        self._sampler = threading.Thread(target=sample_forever, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        tag = f" {self.name} ".encode()
        clock = os.sysconf("SC_CLK_TCK")
        with self._lock:
            for pid in _children(self._postmaster):
                try:
                    if tag not in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
                        continue
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:  # exited meanwhile
                    continue
                self._seen[pid] = (int(fields[11]) + int(fields[12])) / clock


def _postmaster_pid() -> int:
    """The PostgreSQL server's main process, the parent of every backend."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        if name.startswith("postgres") and not name.startswith("postgres:") and (
                Path(f"/proc/{ppid}/comm").read_text().strip() != "postgres"):
            return int(stat.parent.name)
    raise RuntimeError("no PostgreSQL server process found")


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += (int(c) for c in (task / "children").read_text().split())
    return children


class Services:
    """A Prefect server on PostgreSQL and moto's S3 for the whole bench; the environment
    points at them. The server runs with flashgen's ``SERVER_SETTINGS``, or with
    ``server_settings`` ({} for Prefect's defaults)."""

    def __init__(self, server_settings: dict[str, str] | None = None) -> None:
        self.server_settings = server_settings

    def __enter__(self) -> Services:
        self._stack = contextlib.ExitStack()
        self.postgres = self._stack.enter_context(Postgres())
        self.prefect = self._stack.enter_context(
            PrefectServer(startup_timeout=240, database_url=self.postgres.url,
                          settings=self.server_settings))
        port = free_port()
        s3 = Process([sys.executable, "-m", "flashgen.infra.stack", "--port", str(port)],
                     f"http://127.0.0.1:{port}", "/")
        self._stack.callback(s3.stop)
        os.environ.update({**FAKE_AWS, "AWS_ENDPOINT_URL": s3.url,
                           "PREFECT_API_URL": self.prefect.api_url})
        import boto3

        boto3.client("s3", endpoint_url=s3.url).create_bucket(Bucket=BUCKET)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def cpu_seconds(self) -> float:
        """The Prefect server's CPU: its process and its database's."""
        return self.prefect.cpu_seconds() + self.postgres.cpu_seconds()

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
        os.environ["FLASHGEN_OUTPUT_NETWORKS"] = "127.0.0.0/8"  # the emulator's files
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
