"""The emulated API behind the routes: jobs, their bodies and files, faults and counters.

    >>> from flashgen.models import DEFAULT_MODEL
    >>> emulator = Emulator(EmulatorConfig(job_time=0))
    >>> handle = emulator.submit(DEFAULT_MODEL, b'{"prompt": "a fox"}', "http://emu")
    >>> handle["status_url"] == f"http://emu/v1/requests/{handle['request_id']}/status"
    True
    >>> emulator.result(handle["request_id"], "http://emu")["output"]["image"][:17]
    'http://emu/files/'

It knows nothing of HTTP beyond the bodies: ``app.py`` maps routes and faults onto it.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from flashgen.emulator.config import EmulatorConfig
from flashgen.emulator.faults import FaultPlan
from flashgen.emulator.images import render_png
from flashgen.emulator.inputs import VALIDATORS, checked_inputs
from flashgen.emulator.jobs import NEVER, Job, JobQueue
from flashgen.emulator.links import LinkSigner
from flashgen.emulator.problems import ApiProblem, expired_link, unknown_request
from flashgen.emulator.stats import Stats
from flashgen.models import fingerprint

JOB_FAILED = {"code": 500001, "message": "the job failed (emulated fault job:fail)"}


class Emulator:
    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.jobs = JobQueue(config.workers, clock or time.monotonic)
        self.stats = Stats()
        self.faults = FaultPlan(config.faults, config.fault_seed)
        self.links = LinkSigner(config.link_ttl, clock or time.time)
        self._durations = random.Random(config.job_time_seed)
        # Job times are on the queue's clock; answers show them as wall-clock UTC.
        self._wall_offset = time.time() - self.jobs.clock()

    def draw_fault(self, route: str) -> str | None:
        """The fault this call meets (counted), or None."""
        kind = self.faults.draw(route)
        if kind:
            self.stats.faults_injected[kind] += 1
        return kind

    def note_submit_request(self, model_id: str, body: bytes) -> None:
        """Count a submit that reached the emulator, whatever then becomes of it (a fault
        may drop it unanswered): tests tell a truly ambiguous submit from one never sent."""
        try:
            inputs = checked_inputs(model_id, body)
        except Exception:  # an invalid submit is refused, not ambiguous
            return
        self.stats.submit_requests_by_fingerprint[fingerprint(model_id, inputs)] += 1

    def submit(
        self, model_id: str, body: bytes, base: str, auth: str | None = None
    ) -> dict[str, Any]:
        """Queue a job; ``auth`` is the submit's Authorization header (for job:echo-auth)."""
        inputs = checked_inputs(model_id, body)
        mean, spread = self.config.job_time, self.config.job_time_spread
        # Drawn even for a stalled job, so that faults never shift the other jobs' times.
        duration = self._durations.uniform(mean * (1 - spread), mean * (1 + spread))
        fault = self.draw_fault("job")
        job = self.jobs.submit(
            str(uuid.uuid4()),
            duration=NEVER if fault == "stall" else duration,
            fails=fault in ("fail", "echo-auth"),
            echo=auth if fault == "echo-auth" else None,
            model_id=model_id,
            inputs=inputs,
            cost=self.config.price_usd,  # the price when it was submitted: one output
        )
        self.stats.count_submission(fingerprint(model_id, inputs))
        self.stats.note_in_flight(self.jobs.in_flight(job.submitted_at))
        return {
            "request_id": job.id,
            **self._urls(job.id, base),
            "cancel_url": f"{base}/v1/requests/{job.id}/cancel",
        }

    def status(self, request_id: str, base: str) -> dict[str, Any]:
        job = self._job(request_id)
        return self._state(job, self.jobs.advance(), base)

    def result(self, request_id: str, base: str, include_cost: bool = False) -> dict[str, Any]:
        """The outputs once completed, with a freshly signed link; else the state.

        ``include_cost``: a completed job's ``cost`` in USD, its model's price per output.
        """
        job = self._job(request_id)
        now = self.jobs.advance()
        if job.status(now) != "completed":
            return self._state(job, now, base)
        path = _file_path(job.id, 0)
        body = {
            "request_id": job.id,
            "status": "completed",
            "output": {"image": f"{base}{path}{self.links.query(path)}"},
            "created_at": self._iso(job.submitted_at),
            "finished_at": self._iso(job.finished_at),
        }
        if include_cost:
            body["cost"] = job.cost
        return body

    def cancel(self, request_id: str) -> dict[str, Any]:
        """Cancel a queued job. Always a 200 with an ``outcome``, as RunComfy's own clients
        expect: ``cancelled``, or ``not_cancellable`` with the job's current ``status``."""
        job = self._job(request_id)
        if self.jobs.cancel(job):
            self.stats.cancelled += 1
            return {"request_id": job.id, "status": "cancelled", "outcome": "cancelled"}
        status = job.status(self.jobs.advance())
        return {"request_id": job.id, "status": status, "outcome": "not_cancellable"}

    def models(self) -> dict[str, Any]:
        """The catalog: every model the emulator serves, with its price."""
        return {"models": [self.model(model_id) for model_id in VALIDATORS]}

    def model(self, model_id: str) -> dict[str, Any]:
        """One model's catalog entry; 404 for a model the emulator does not serve."""
        if model_id not in VALIDATORS:
            raise ApiProblem(404, 404001, f"unknown model {model_id!r}")
        return {
            "model_id": model_id,
            "base_price_usd": self.config.price_usd,
            "price_unit": "output",
            "pricing_note": f"emulated: ${self.config.price_usd:g} per output image "
                            "(FLASHGEN_EMULATOR_PRICE_USD)",
        }

    async def image(
        self, request_id: str, index: int, expires: str | None, sig: str | None
    ) -> bytes:
        """The PNG behind a file link; 403 when the link expired, 404 when there is none."""
        if not self.links.valid(_file_path(request_id, index), expires, sig):
            raise expired_link()
        job = self.jobs.jobs.get(request_id)
        if job is None or index != 0 or job.status(self.jobs.advance()) != "completed":
            raise ApiProblem(404, 404001, f"no file {index} for request {request_id!r}")
        inputs = job.inputs
        # Rendering takes tens of milliseconds: off the event loop, so polls stay prompt.
        return await asyncio.to_thread(
            render_png,
            inputs["prompt"],
            inputs["negative_prompt"],
            inputs["seed"],
            inputs["aspect_ratio"],
            inputs["prompt_extend"],
        )

    def snapshot(self) -> dict[str, Any]:
        now = self.jobs.advance()
        by_status: dict[str, int] = {}
        for job in self.jobs.jobs.values():
            status = job.status(now)
            by_status[status] = by_status.get(status, 0) + 1
        return self.stats.snapshot(
            in_flight=self.jobs.in_flight(now),
            jobs_by_status=by_status,
            faults=self.faults.specs,
            fault_seed=self.faults.seed,
        )

    def job_times(self) -> list[dict[str, Any]]:
        """Every job's life in epoch seconds (None for what has not happened yet).

        ``completed_at`` is when the job reached its final state at the emulator: what a
        client's detection lag and the API's utilisation are measured against.
        """
        now = self.jobs.advance()

        def epoch(moment: float | None) -> float | None:
            return None if moment is None or moment > now else moment + self._wall_offset

        return [{"request_id": job.id, "status": job.status(now),
                 "submitted_at": epoch(job.submitted_at), "started_at": epoch(job.started_at),
                 "completed_at": epoch(job.cancelled_at if job.cancelled_at is not None
                                       else job.finished_at)}
                for job in self.jobs.jobs.values()]

    def set_faults(self, specs: list[str], seed: int | None) -> None:
        """Replace the faults in force; raises ``ValueError`` naming a bad spec."""
        self.faults = FaultPlan(specs, seed)

    def reset(self) -> None:
        """Clear the counters; jobs already submitted carry on."""
        self.stats = Stats(max_in_flight=self.jobs.in_flight(self.jobs.advance()))

    def _job(self, request_id: str) -> Job:
        job = self.jobs.jobs.get(request_id)
        if job is None:
            raise unknown_request(request_id)
        return job

    def _state(self, job: Job, now: float, base: str) -> dict[str, Any]:
        status = job.status(now)
        body: dict[str, Any] = {"request_id": job.id, "status": status}
        if status == "in_queue":
            body["queue_position"] = self.jobs.position(job)
        body.update(self._urls(job.id, base))
        if status == "failed":
            body["error"] = _job_error(job)
        return body

    def _urls(self, request_id: str, base: str) -> dict[str, str]:
        return {
            "status_url": f"{base}/v1/requests/{request_id}/status",
            "result_url": f"{base}/v1/requests/{request_id}/result",
        }

    def _iso(self, monotonic: float | None) -> str | None:
        if monotonic is None:
            return None
        moment = datetime.fromtimestamp(monotonic + self._wall_offset, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _job_error(job: Job) -> dict[str, Any]:
    """A failed job's ``error``; under job:echo-auth it leaks the submit's credentials, as
    a careless API might, so that clients can prove they never pass them on."""
    if job.echo is None:
        return dict(JOB_FAILED)
    header = job.echo.encode()
    return {  # as a value, as a key, escaped, URL-quoted and base64'd, nested
        "code": 500001,
        "message": f"the job failed (emulated fault job:echo-auth); request had "
        f"Authorization: {job.echo}",
        "request": {"headers": {"authorization": job.echo}},
        job.echo: {"seen": [repr(header + b"\n"), quote(job.echo, safe="")]},
        "trace": base64.b64encode(b"Authorization: " + header).decode(),
    }


def _file_path(request_id: str, index: int) -> str:
    return f"/files/{request_id}/{index}.png"
