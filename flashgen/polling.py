"""When to poll a job next, learned from the jobs this run has seen; and a record of polls.

``JobTimeEstimator`` learns how long jobs run (one per run: ``RunComfyClient`` keeps one).
``PollPlan`` times the polls of one job from it: the first look shortly before the job is
expected to end, then close looks (``max(0.05 s, 5 %)`` of the time the job has run, or is
expected to) until it ends; a queued job is left to ``PollSchedule``'s backoff. Until the
run has seen a job finish, the expected time is the prior, looked at in quarters. With
steady job times a job takes two or three polls and is noticed within 5 % of its time::

    estimator = JobTimeEstimator(prior=5.0)
    plan = PollPlan(estimator, PollSchedule(0.5, 5.0), submitted_at=timing.now())
    delay = plan.first_delay(timing.now())            # sleep, then poll
    delay = plan.next_delay(status, timing.now())     # after each poll that is not terminal
    plan.finished(status, timing.now())               # a completed job teaches the estimator

``PollSchedule`` is adaptive: a running job is polled often (it finishes in seconds), a
queued one less and less often (and less still when it is far back in the queue), and any
change of state starts again from ``initial``. One schedule follows one job, so the
client takes a ``fresh()`` copy for every wait::

    schedule = PollSchedule(initial=0.5, maximum=5.0).fresh()
    delay = schedule.next_delay(status)            # seconds until the next poll

``PollLog`` is an ``on_status`` callback for ``RunComfyClient.wait`` that counts polls and
notes when each state was first seen (the record's "started" and "completed" times)::

    log = PollLog()
    await client.wait(request_id, on_status=log)
    log.polls, log.first_seen.get(JobState.RUNNING)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from flashgen import timing
from flashgen.models import JobState, JobStatus

# A running job is polled at most this many times `initial` apart: it will end soon.
_RUNNING_CAP_FACTOR = 4.0
# Close looks at a job due to end: this share of its (expected or elapsed) time apart, so
# that an end is noticed within 5 % of the job's time, yet never more often than the floor.
CLOSE_FRACTION = 0.05
CLOSE_FLOOR = 0.05
# The first look comes this share before the expected end: a job seen still running there
# is then caught closely, and its end is measured to within one close interval.
EARLY = 0.05
# Before any job of the run has finished, the prior is a guess: look every quarter of it,
# so that a run of short jobs is not left waiting for a long prior, and learns at once.
UNSURE_STEP = 0.25


class PollSchedule:
    """Adaptive delays between status polls of one job.

        >>> s = PollSchedule(initial=0.5, maximum=5.0, growth=2.0)
        >>> queued = JobStatus(request_id="r", status="in_queue", queue_position=0)
        >>> [s.next_delay(queued) for _ in range(4)]
        [0.5, 1.0, 2.0, 4.0]
        >>> s.next_delay(JobStatus(request_id="r", status="in_progress"))
        0.5
    """

    def __init__(self, initial: float = 0.5, maximum: float = 5.0, growth: float = 1.5) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("PollSchedule needs 0 < initial <= maximum")
        if growth < 1:
            raise ValueError("PollSchedule needs growth >= 1")
        self.initial = initial
        self.maximum = maximum
        self.growth = growth
        self._state: JobState | None = None
        self._delay = initial

    def __repr__(self) -> str:
        return f"PollSchedule(initial={self.initial}, maximum={self.maximum}, growth={self.growth})"

    def fresh(self) -> PollSchedule:
        """A new schedule with the same settings and no history (one per job)."""
        return PollSchedule(self.initial, self.maximum, self.growth)

    def next_delay(self, status: JobStatus, retry_after: float | None = None) -> float:
        """Seconds to wait before polling again after seeing ``status``.

        Terminal states need no further poll (0). A server's Retry-After is never undercut.
        """
        state = status.state
        if state.terminal:
            return 0.0
        if state != self._state:
            self._state, self._delay = state, self.initial
        else:
            self._delay *= self.growth
        if state is JobState.RUNNING:
            self._delay = min(self._delay, self.initial * _RUNNING_CAP_FACTOR, self.maximum)
        else:
            # Far back in the queue, nothing changes for a while: poll about once per
            # position ahead (times initial), within the maximum.
            by_position = self.initial * (status.queue_position or 0)
            self._delay = min(max(self._delay, by_position), self.maximum)
        if retry_after is not None:
            return max(self._delay, retry_after)
        return self._delay


@dataclass
class PollLog:
    """An ``on_status`` callback that counts polls and times the first sight of each state.

    Times come from ``timing.now()`` (monotonic), so they are for durations, not dates.
    """

    polls: int = 0
    last: JobStatus | None = None
    first_seen: dict[JobState, float] = field(default_factory=dict)

    def __call__(self, status: JobStatus) -> None:
        self.polls += 1
        self.last = status
        self.first_seen.setdefault(status.state, timing.now())


class JobTimeEstimator:
    """How long this run's jobs run, from the last ``window`` that it saw finish.

        >>> estimator = JobTimeEstimator(prior=5.0)
        >>> estimator.expected()
        5.0
        >>> for seconds in (2.0, 2.1, 1.9, 2.0):
        ...     estimator.observe(seconds)
        >>> round(estimator.expected(), 3)
        1.975

    ``expected()`` is the ``quantile`` of the observed times (a low one: a look that comes
    a little early costs one close poll, one that comes late costs detection lag); before
    any job finished it is the ``prior`` (``FLASHGEN_JOB_TIME_PRIOR``). One estimator per
    run, shared by its concurrent waits (one event loop, so no lock).
    """

    def __init__(self, prior: float = 5.0, *, window: int = 50, quantile: float = 0.25) -> None:
        if prior <= 0 or window < 1 or not 0 <= quantile <= 1:
            raise ValueError("JobTimeEstimator needs prior > 0, window >= 1, 0 <= quantile <= 1")
        self.prior = prior
        self.quantile = quantile
        self._seen: deque[float] = deque(maxlen=window)

    def __repr__(self) -> str:
        return f"JobTimeEstimator(expected={self.expected():.3g}s, seen={len(self._seen)})"

    @property
    def seen(self) -> list[float]:
        """The observed run times in the window, oldest first."""
        return list(self._seen)

    def observe(self, seconds: float) -> None:
        """Note that a job ran ``seconds`` (ignored unless positive and finite)."""
        if math.isfinite(seconds) and seconds > 0:
            self._seen.append(seconds)

    def expected(self) -> float:
        """Seconds a job of this run is expected to run: a low quantile, or the prior."""
        if not self._seen:
            return self.prior
        ordered = sorted(self._seen)
        at = self.quantile * (len(ordered) - 1)  # linear interpolation between neighbours
        low = math.floor(at)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


class PollPlan:
    """When to poll one job, given what jobs of this run took (one plan per wait).

    Times are ``timing.now()`` readings. The plan keeps the job's estimated start (the
    submit, or between the last queued sighting and the first running one) and the last
    moment it was seen unfinished, which bracket its end when it completes.

        >>> estimator = JobTimeEstimator(prior=5.0)
        >>> estimator.observe(2.0)                          # one job of this run took 2 s
        >>> plan = PollPlan(estimator, PollSchedule(), submitted_at=0.0)
        >>> plan.first_delay(now=0.0)                       # just before the expected end
        1.9
        >>> plan.next_delay(JobStatus(request_id="r", status="in_progress"), now=1.9)
        0.1
    """

    def __init__(
        self,
        estimator: JobTimeEstimator,
        queue: PollSchedule,
        *,
        submitted_at: float | None = None,
    ) -> None:
        self.estimator = estimator
        self._queue = queue.fresh()
        self._submitted = submitted_at
        self._start: float | None = None  # estimated start of the run, once seen running
        self._queued: float | None = None  # last moment it was seen queued
        self._open: float | None = submitted_at  # last moment the job was seen unfinished

    def first_delay(self, now: float) -> float:
        """Seconds until the first poll: just before the expected end, if the submit is known.

        Without it (a job resumed from the ledger) the first look is now.
        """
        if self._submitted is None:
            return 0.0
        return max(0.0, self._until_look(now - self._submitted))

    def next_delay(self, status: JobStatus, now: float) -> float:
        """Seconds to wait before polling again after seeing ``status`` at ``now``."""
        state = status.state
        if state.terminal:
            return 0.0
        if state is JobState.QUEUED:
            self._open = self._queued = now
            return self._queue.next_delay(status)
        # Running, or a state we do not know (which may be running): time it from its start.
        if self._start is None:
            self._start = self._estimate_start(now)
        self._open = now
        elapsed = now - self._start
        expected = self.estimator.expected()
        return max(self._until_look(elapsed), self._close(max(expected, elapsed)))

    def finished(self, status: JobStatus, now: float) -> float | None:
        """Report a completed job's run time to the estimator; return it (None if unknown).

        The end lies between the last unfinished sighting and ``now``: its midpoint is the
        estimate. Close polling makes that bracket narrow; a job found already done at the
        first look gives a wide one, whose midpoint pulls a too-long estimate down fast.
        """
        if status.state is not JobState.COMPLETED:
            return None
        if self._start is None and self._queued is not None:
            return None  # queued, then done: its run is somewhere in between, unknown
        start = self._start if self._start is not None else self._submitted
        if start is None:
            return None  # seen only completed: nothing to learn from
        opened = self._open if self._open is not None else start
        seconds = (max(opened, start) + now) / 2 - start
        self.estimator.observe(seconds)
        return seconds

    def _estimate_start(self, now: float) -> float:
        """When the run began: midway since the last queued sighting; else at the submit
        (a free worker takes a job at once); else, knowing nothing, now."""
        if self._queued is not None:
            return (self._queued + now) / 2
        return self._submitted if self._submitted is not None else now

    def _until_look(self, elapsed: float) -> float:
        """Seconds from now until the look just before the expected end (may be past)."""
        expected = self.estimator.expected()
        until = expected * (1 - EARLY) - elapsed
        if not self.estimator.seen:  # only the prior to go on
            until = min(until, UNSURE_STEP * expected)
        return until

    def _close(self, scale: float) -> float:
        return min(self._queue.maximum, max(CLOSE_FLOOR, CLOSE_FRACTION * scale))
