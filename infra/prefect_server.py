"""A real ``prefect server start`` in a subprocess, for tests and benchmarks that need what
the in-process test harness lacks: the server's services (the repossessor that takes back
expired concurrency leases does not run in ephemeral servers) and a process of its own
whose CPU can be measured.

    with PrefectServer(repossessor_seconds=1) as server:
        os.environ["PREFECT_API_URL"] = server.api_url
        ...
        server.cpu_seconds()   # user + system CPU the server process has used so far

It runs with ``SERVER_SETTINGS``, the settings flashgen asks of every Prefect server
(infra/PRODUCTION.md section 1 shows them, ``flashgen provision`` checks them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from flashgen.infra.stack import free_port

# What flashgen asks of the Prefect server (measured in bench/, figures in
# flashgen.tasks.generation): the task-run recorder and the event persister write in
# batches instead of one transaction per event. By default the recorder keeps up with about
# 17 task runs/s on two cores, and its in-memory queue drops what is past 10,000 messages, so
# the UI lost task runs of large batches; batched, the server's CPU per task run falls by
# about two thirds. What an operator gains and loses with each: infra/PRODUCTION.md.
SERVER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
}


class PrefectServer:
    """``prefect server start`` in a temporary home, stopped on exit: on SQLite there, or on
    the PostgreSQL database ``database_url`` names (``postgresql+asyncpg://…``); with
    ``SERVER_SETTINGS`` unless ``settings`` says otherwise (the bench compares them)."""

    def __init__(self, *, repossessor_seconds: float = 15.0, startup_timeout: float = 120.0,
                 log: Path | None = None, database_url: str | None = None,
                 settings: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.database_url = database_url
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._repossessor_seconds = repossessor_seconds
        self.settings = SERVER_SETTINGS if settings is None else settings
        self._startup_timeout = startup_timeout
        self._home = tempfile.mkdtemp(prefix="flashgen-prefect-server-")
        self._log_path = log or Path(self._home) / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrefectServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=self._home, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS=str(self._repossessor_seconds),
                   PREFECT_LOGGING_SERVER_LEVEL="WARNING", **self.settings)
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                 "--port", str(self.port), "--no-ui"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        shutil.rmtree(self._home, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self._process is not None, "the server is not running"
        return self._process.pid

    @property
    def database(self) -> Path:
        """The server's SQLite database (Prefect's default location in its home), when it has
        no ``database_url``."""
        return Path(self._home) / "prefect.db"

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (and its reaped children), from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
        return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prefect server exited: {self._log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"prefect server not healthy in {self._startup_timeout:.0f} s")
