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
import time
from pathlib import Path
from typing import Any


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


# CPU that the bench's own threads spent in this process (thread id -> thread_time()), as
# last reported by them: the PostgreSQL sampler (bench/services.py) runs beside the flow
# and is no part of it.
_APPARATUS: dict[int, float] = {}


def cpu_seconds() -> float:
    """This process's CPU (the flow's, when a flow runs in it), less what the bench's own
    sampling threads spent (``note_apparatus``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime - sum(_APPARATUS.values())


def note_apparatus() -> None:
    """Called by a bench thread: its CPU so far is the bench's, not the measured flow's."""
    _APPARATUS[threading.get_ident()] = time.thread_time()


class ProcessCost:
    """CPU used by this process and by a server process (``cpu_seconds()``), and the peak
    RSS of this process, between ``__enter__`` and ``__exit__``.

    The peak is the kernel's high-water mark (``VmHWM``), reset on entry by writing 5 to
    ``/proc/self/clear_refs``: exact, and no sampling thread spends the CPU being measured
    (``ru_maxrss`` never comes down from an earlier scenario's peak).
    """

    def __init__(self, server: Any | None = None) -> None:
        self.server = server
        self.flow_cpu_s = self.server_cpu_s = self.peak_rss_mb = 0.0

    def __enter__(self) -> ProcessCost:
        Path("/proc/self/clear_refs").write_text("5")
        self._cpu0 = cpu_seconds()
        self._server0 = self.server.cpu_seconds() if self.server else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.flow_cpu_s = cpu_seconds() - self._cpu0
        if self.server:
            self.server_cpu_s = self.server.cpu_seconds() - self._server0
        self.peak_rss_mb = _status_mb("VmHWM")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); NaN for no values.

    >>> percentile([4, 1, 3, 2], 50), percentile([4, 1, 3, 2], 95), percentile([], 95)
    (2, 4, nan)
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def utilisation(jobs: list[dict[str, Any]], limit: int) -> float:
    """Job-seconds at the API over ``limit`` × the time from the first submit to the last
    completion (work was pending all along: every run was started before the first submit).

    Two slots, busy 0–2 s and 1–3 s, over 3 s:

    >>> utilisation([{"submitted_at": 0, "completed_at": 2},
    ...              {"submitted_at": 1, "completed_at": 3}], limit=2)
    0.6666666666666666
    """
    done = [j for j in jobs if j["submitted_at"] is not None and j["completed_at"] is not None]
    if not done:
        return math.nan
    busy = sum(j["completed_at"] - j["submitted_at"] for j in done)
    span = max(j["completed_at"] for j in done) - min(j["submitted_at"] for j in done)
    return busy / (limit * span) if span > 0 else math.nan
