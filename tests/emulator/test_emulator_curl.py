"""The model page's own curl commands, run with the real curl against the emulator's socket.

Copied verbatim from the model's API page on runcomfy.com; only the host and
``{request_id}`` are replaced.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from typing import Any

from PIL import Image

from flashgen.emulator import EmulatorConfig, EmulatorServer

SEED_HOST = "https://model-api.runcomfy.net"

SUBMIT_CURL = r"""curl --request POST \
--url https://model-api.runcomfy.net/v1/models/wan-ai/wan-2-2/flash/text-to-image \
--header "Content-Type: application/json" \
--header "Authorization: Bearer <token>" \
--data '{
"prompt": "Cyberpunk alley in heavy rain, neon signs reflecting on wet asphalt, dramatic rim light, crisp details, 16 by 9"
}'"""

STATUS_CURL = r'''curl --request GET \
--url https://model-api.runcomfy.net/v1/requests/{request_id}/status \
--header "Authorization: Bearer <token>"'''

RESULT_CURL = r'''curl --request GET \
--url https://model-api.runcomfy.net/v1/requests/{request_id}/result \
--header "Authorization: Bearer <token>"'''

CANCEL_CURL = r'''curl --request POST \
--url https://model-api.runcomfy.net/v1/requests/{request_id}/cancel \
--header "Authorization: Bearer <token>"'''


def run_curl(command: str, base_url: str, request_id: str = "") -> dict[str, Any]:
    command = command.replace(SEED_HOST, base_url).replace("{request_id}", request_id)
    done = subprocess.run(
        ["bash", "-c", command], check=False, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def curl_download(url: str) -> bytes:
    done = subprocess.run(
        ["curl", "-sS", "--fail", url], check=False, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_seed_commands_submit_poll_fetch_and_download() -> None:
    with EmulatorServer(EmulatorConfig(workers=2, job_time=0.2)) as emulator:
        handle = run_curl(SUBMIT_CURL, emulator.url)
        request_id = handle["request_id"]
        assert set(handle) == {"request_id", "status_url", "result_url", "cancel_url"}
        for name in ("status", "result", "cancel"):
            assert handle[f"{name}_url"] == f"{emulator.url}/v1/requests/{request_id}/{name}"

        status = run_curl(STATUS_CURL, emulator.url, request_id)
        assert status["request_id"] == request_id
        assert status["status"] in {"in_queue", "in_progress", "completed"}
        assert ("queue_position" in status) == (status["status"] == "in_queue")
        assert status["status_url"] == handle["status_url"]
        assert status["result_url"] == handle["result_url"]

        deadline = time.monotonic() + 10
        while status["status"] != "completed":
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
            status = run_curl(STATUS_CURL, emulator.url, request_id)

        result = run_curl(RESULT_CURL, emulator.url, request_id)
        assert set(result) == {"request_id", "status", "output", "created_at", "finished_at"}
        assert result["status"] == "completed"
        assert result["created_at"] <= result["finished_at"]
        image_url = result["output"]["image"]
        assert image_url.startswith(f"{emulator.url}/files/")

        image = Image.open(io.BytesIO(curl_download(image_url)))
        assert image.format == "PNG"
        assert image.size == (1440, 810)
        seen = emulator.stats()
        assert seen["submissions"] == 1
        assert seen["file_downloads"] == 1
        assert seen["file_requests_with_auth"] == 0


def test_seed_cancel_command_cancels_a_queued_job_and_refuses_a_running_one() -> None:
    with EmulatorServer(EmulatorConfig(workers=1, job_time=60)) as emulator:
        running = run_curl(SUBMIT_CURL, emulator.url)["request_id"]
        queued = run_curl(SUBMIT_CURL, emulator.url)["request_id"]
        assert run_curl(STATUS_CURL, emulator.url, running)["status"] == "in_progress"
        waiting = run_curl(STATUS_CURL, emulator.url, queued)
        assert (waiting["status"], waiting["queue_position"]) == ("in_queue", 1)

        assert run_curl(CANCEL_CURL, emulator.url, queued) == {
            "request_id": queued,
            "status": "cancelled",
            "outcome": "cancelled",
        }
        assert run_curl(STATUS_CURL, emulator.url, queued)["status"] == "cancelled"

        refused = run_curl(CANCEL_CURL, emulator.url, running)
        assert refused == {"request_id": running, "status": "in_progress",
                           "outcome": "not_cancellable"}
        assert run_curl(STATUS_CURL, emulator.url, running)["status"] == "in_progress"
