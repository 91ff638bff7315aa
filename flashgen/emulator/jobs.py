"""Jobs and their queue: ``workers`` slots, first come first served, computed from the clock.

    >>> clock = iter([0.0, 0.0, 1.0, 5.0]).__next__
    >>> queue = JobQueue(workers=1, clock=clock)
    >>> a, b = queue.submit("a", duration=2.0), queue.submit("b", duration=2.0)
    >>> now = queue.advance()
    >>> a.status(now), b.status(now), queue.position(b)
    ('in_progress', 'in_queue', 1)
    >>> now = queue.advance()
    >>> a.status(now), b.status(now), b.started_at
    ('completed', 'completed', 2.0)

No background task runs the jobs. Each call first ``advance``s the queue to the present:
a job starts at ``max(submitted, earliest free slot)`` and ends ``duration`` later. The
answer is exactly what a real scheduler would have done, it costs nothing while idle, and
it works the same under uvicorn and in-process under ``httpx.ASGITransport``, where no
lifespan runs and every test may bring a new event loop.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

NEVER = float("inf")  # the duration of a stalled job


@dataclass
class Job:
    id: str
    submitted_at: float  # all times are on the queue's clock
    duration: float
    fails: bool = False
    echo: str | None = None  # an Authorization header its error leaks (job:echo-auth)
    model_id: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    cost: float = 0.0  # USD, shown on the result with include_cost=true
    started_at: float | None = None
    cancelled_at: float | None = None

    @property
    def finished_at(self) -> float | None:
        return None if self.started_at is None else self.started_at + self.duration

    def status(self, now: float) -> str:
        """The state name the API uses, as of ``now`` (after the queue was advanced)."""
        if self.cancelled_at is not None:
            return "cancelled"
        if self.started_at is None:
            return "in_queue"
        if now < self.started_at + self.duration:
            return "in_progress"
        return "failed" if self.fails else "completed"


class JobQueue:
    def __init__(self, workers: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self._free_at = [-NEVER] * workers  # a heap: when each slot is next free
        self._waiting: deque[Job] = deque()

    def advance(self) -> float:
        """Start every job whose slot came free by now; return now."""
        now = self.clock()
        self._start_due(now)
        return now

    def _start_due(self, now: float) -> None:
        while self._waiting:
            job = self._waiting[0]
            start = max(self._free_at[0], job.submitted_at)
            if start > now:
                break
            job.started_at = start
            heapq.heapreplace(self._free_at, start + job.duration)
            self._waiting.popleft()

    def submit(self, job_id: str, duration: float, **fields: Any) -> Job:
        now = self.advance()
        job = Job(job_id, submitted_at=now, duration=duration, **fields)
        self.jobs[job_id] = job
        self._waiting.append(job)
        self._start_due(now)  # a free slot takes it at once
        return job

    def cancel(self, job: Job) -> bool:
        """Cancel ``job`` if it is still waiting; False when it has started or ended."""
        now = self.advance()
        if job.started_at is not None or job.cancelled_at is not None:
            return False
        self._waiting.remove(job)
        job.cancelled_at = now
        return True

    def position(self, job: Job) -> int:
        """1-based place of a waiting job: 1 means it starts when the next slot frees."""
        return self._waiting.index(job) + 1

    def in_flight(self, now: float) -> int:
        """Jobs waiting or running as of ``now``."""
        return len(self._waiting) + sum(1 for free in self._free_at if free > now)
