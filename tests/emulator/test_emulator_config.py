"""Configuration from the environment, the CLI command as a real process, EmulatorServer."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from emulator_helpers import AUTH, SUBMIT

from flashgen.emulator import EmulatorConfig, EmulatorServer

RUN_CLI = (
    "import typer; from flashgen.emulator.cli import emulator_command; typer.run(emulator_command)"
)


def test_every_option_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "WORKERS": "3",
        "JOB_TIME": "0.5",
        "JOB_TIME_SPREAD": "0",
        "JOB_TIME_SEED": "9",
        "TOKENS": "alpha, beta",
        "LINK_TTL": "30",
        "FAULTS": '["status:429:0.1", "job:fail:0.2"]',
        "FAULT_SEED": "4",
        "RETRY_AFTER": "2",
        "SLOW_SECONDS": "0.1",
        "PRICE_USD": "0.04",
        "PUBLIC_URL": "http://emu.test",
    }
    for name, value in env.items():
        monkeypatch.setenv(f"FLASHGEN_EMULATOR_{name}", value)
    config = EmulatorConfig()
    assert config.model_dump() == {
        "workers": 3,
        "job_time": 0.5,
        "job_time_spread": 0.0,
        "job_time_seed": 9,
        "tokens": ["alpha", "beta"],
        "link_ttl": 30.0,
        "faults": ["status:429:0.1", "job:fail:0.2"],
        "fault_seed": 4,
        "retry_after": 2.0,
        "slow_seconds": 0.1,
        "price_usd": 0.04,
        "public_url": "http://emu.test",
    }
    assert EmulatorConfig(workers=1).workers == 1  # explicit arguments win


def test_a_bad_fault_in_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHGEN_EMULATOR_FAULTS", "status:429:0.1,status:boom:1")
    with pytest.raises(ValueError, match="'status:boom:1'"):
        EmulatorConfig()


def start_cli(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUN_CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def test_the_cli_serves_and_prints_its_url() -> None:
    cli = start_cli(
        "--port", "0", "--token", "one", "--token", "two", FLASHGEN_EMULATOR_JOB_TIME="0"
    )
    with cli as process:  # on the way out: pipes closed, process waited for
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("flashgen emulator listening on http://127.0.0.1:")
            submit = f"{line.split()[-1]}{SUBMIT}"
            assert httpx.post(submit, json={"prompt": "x"}, headers=AUTH).status_code == 401
            two, one = ({"Authorization": f"Bearer {t}"} for t in ("two", "one"))
            handle = httpx.post(submit, json={"prompt": "x"}, headers=two)
            status = httpx.get(handle.json()["status_url"], headers=one)
            assert status.json()["status"] == "completed"  # FLASHGEN_EMULATOR_JOB_TIME=0
        finally:
            process.terminate()


def test_the_cli_refuses_a_bad_fault_with_a_clear_message() -> None:
    process = start_cli("--fault", "status:lost-answer:0.5")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "'status:lost-answer:0.5'" in err and "applies to submit" in err


def test_emulator_server_controls() -> None:
    with EmulatorServer(EmulatorConfig(job_time=60)) as emulator:
        assert emulator.url.startswith("http://127.0.0.1:")
        httpx.post(f"{emulator.url}{SUBMIT}", json={"prompt": "x"}, headers=AUTH)
        assert emulator.stats()["submissions"] == 1
        emulator.set_faults(["submit:500:1"], seed=1)
        assert (
            httpx.post(f"{emulator.url}{SUBMIT}", json={"prompt": "x"}, headers=AUTH).status_code
            == 500
        )
        with pytest.raises(ValueError, match="'submit:nope:1'"):
            emulator.set_faults(["submit:nope:1"])
        emulator.reset()
        assert emulator.stats()["submissions"] == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{emulator.url}/_emulator/stats")
