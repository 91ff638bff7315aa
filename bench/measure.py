"""Figures the scenarios share: CPU, peak memory, percentiles, and the emulator's view of jobs.

    with ProcessCost(server) as cost:          # this process's CPU and peak RSS, the server's CPU
        ...
    cost.flow_cpu_s, cost.server_cpu_s, cost.peak_rss_mb
"""

from __future__ import annotations

import math
import resource
import statistics
import threading
from pathlib import Path
from typing import Any


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ProcessCost:
    """CPU used by this process and by a server process (``cpu_seconds()``), and the peak
    RSS of this process, between ``__enter__`` and ``__exit__`` (RSS sampled every 50 ms,
    since ``ru_maxrss`` never comes down from an earlier scenario's peak)."""

    def __init__(self, server: Any | None = None) -> None:
        self.server = server
        self.flow_cpu_s = self.server_cpu_s = self.peak_rss_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> ProcessCost:
        self._cpu0 = cpu_seconds()
        self._server0 = self.server.cpu_seconds() if self.server else 0.0
        self.peak_rss_mb = rss_mb()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sampler.join()
        self.flow_cpu_s = cpu_seconds() - self._cpu0
        if self.server:
            self.server_cpu_s = self.server.cpu_seconds() - self._server0

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_rss_mb = max(self.peak_rss_mb, rss_mb())


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def utilisation(jobs: list[dict[str, Any]], limit: int) -> float:
    """Job-seconds at the API over ``limit`` × the time from the first submit to the last
    completion (work was pending all along: every run was started before the first submit)."""
    done = [j for j in jobs if j["submitted_at"] is not None and j["completed_at"] is not None]
    if not done:
        return math.nan
    busy = sum(j["completed_at"] - j["submitted_at"] for j in done)
    span = max(j["completed_at"] for j in done) - min(j["submitted_at"] for j in done)
    return busy / (limit * span) if span > 0 else math.nan
