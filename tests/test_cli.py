"""The `flashgen` command: every command answers --help, and `schema` prints the API's schema."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flashgen.cli import app
from flashgen.schemas import input_schema

runner = CliRunner()


def test_schema_prints_the_models_input_schema_exactly():
    printed = json.loads(runner.invoke(app, ["schema"]).stdout)
    spec = input_schema()  # the published schema, vendored
    assert printed["required"] == spec["required"]
    assert list(printed["properties"]) == list(spec["properties"])
    for name, field in spec["properties"].items():
        assert printed["properties"][name].get("default") == field.get("default"), name
        assert printed["properties"][name].get("enum") == field.get("enum"), name
        assert printed["properties"][name]["type"] == field["type"], name
    assert printed == spec


def test_schema_of_an_unknown_model_names_the_known_ones():
    result = runner.invoke(app, ["schema", "--model", "acme/other"])
    assert result.exit_code == 2
    assert "wan-ai/wan-2-2/flash/text-to-image" in result.output


@pytest.mark.parametrize("command", [
    [], ["emulator"], ["schema"], ["status"], ["result"], ["cancel"], ["generate"], ["batch"],
    ["demo"], ["provision"]])
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_status_of_a_malformed_id_fails_clearly_without_the_token(monkeypatch):
    monkeypatch.setenv("RUNCOMFY_API_TOKEN", "unused")
    result = runner.invoke(app, ["status", "bad id with spaces"])
    assert result.exit_code == 2  # bad input, like every other: exit 2, one line
    assert "unused" not in result.output


def test_status_result_and_cancel_speak_to_the_api(monkeypatch):
    import httpx

    from flashgen.emulator import EmulatorConfig, EmulatorServer

    config = EmulatorConfig(workers=1, job_time=30, tokens=["cli-token"])
    with EmulatorServer(config) as api:
        monkeypatch.setenv("RUNCOMFY_API_TOKEN", "cli-token")
        monkeypatch.setenv("RUNCOMFY_BASE_URL", api.url)
        from flashgen.settings import get_settings

        get_settings.cache_clear()
        ids = [httpx.post(f"{api.url}/v1/models/wan-ai/wan-2-2/flash/text-to-image",
                          json={"prompt": f"cli {n}"},
                          headers={"Authorization": "Bearer cli-token"}).json()["request_id"]
               for n in range(2)]  # one running, one queued behind it
        status = json.loads(runner.invoke(app, ["status", ids[1]]).stdout)
        assert status["status"] == "in_queue" and status["queue_position"] == 1
        result = json.loads(runner.invoke(app, ["result", ids[0]]).stdout)
        assert result["status"] == "in_progress"
        assert runner.invoke(app, ["cancel", ids[0]]).stdout.strip() == "not_cancellable"
        assert runner.invoke(app, ["cancel", ids[1]]).stdout.strip() == "cancelled"
    get_settings.cache_clear()
