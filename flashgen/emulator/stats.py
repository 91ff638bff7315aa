"""What the emulator saw, for tests and the demo to check against (``GET /_emulator/stats``).

    >>> stats = Stats()
    >>> for fingerprint in ("a", "b", "a"):
    ...     stats.count_submission(fingerprint)
    >>> stats.submissions, stats.duplicate_submissions
    (3, 1)

Every call that passed the token check counts, whatever it was answered (a 429 poll is
still a poll); ``submissions`` counts the jobs created, including those whose answer a
fault then lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class Stats:
    submissions: int = 0  # submits that created a job
    duplicate_submissions: int = 0  # ... whose fingerprint had been submitted before
    max_in_flight: int = 0  # most jobs waiting or running at once
    status_polls: int = 0
    result_calls: int = 0
    cancels: int = 0  # cancel calls
    cancelled: int = 0  # ... that cancelled a queued job
    catalog_calls: int = 0  # GET /v1/models and /v1/models/{model_id}
    file_requests: int = 0
    file_downloads: int = 0  # file requests answered with the PNG
    file_requests_with_auth: int = 0  # file requests that carried an Authorization header
    submissions_by_fingerprint: Counter[str] = field(default_factory=Counter)
    # every submit that arrived, by fingerprint, even one a fault then dropped unanswered
    submit_requests_by_fingerprint: Counter[str] = field(default_factory=Counter)
    polls_by_request: Counter[str] = field(default_factory=Counter)  # status + result calls
    faults_injected: Counter[str] = field(default_factory=Counter)  # by kind

    def count_submission(self, fingerprint: str) -> None:
        if self.submissions_by_fingerprint[fingerprint]:
            self.duplicate_submissions += 1
        self.submissions_by_fingerprint[fingerprint] += 1
        self.submissions += 1

    def note_in_flight(self, in_flight: int) -> None:
        self.max_in_flight = max(self.max_in_flight, in_flight)

    def snapshot(self, **live: Any) -> dict[str, Any]:
        """The counters as plain JSON-able data, with ``live`` values (in_flight, …) added."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data = {name: dict(v) if isinstance(v, Counter) else v for name, v in data.items()}
        return {**data, **live}
