"""When to poll a job next, and a small record of what the polls saw.

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

from dataclasses import dataclass, field

from flashgen import timing
from flashgen.models import JobState, JobStatus

# A running job is polled at most this many times `initial` apart: it will end soon.
_RUNNING_CAP_FACTOR = 4.0


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
