"""The simulated queue on a hand-driven clock: FIFO, at most `workers` run, honest positions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flashgen.emulator.jobs import NEVER, JobQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# A script of steps: wait some time, submit a job of some duration, or cancel the n-th job.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.floats(0, 3)),
        st.tuples(st.just("submit"), st.sampled_from([0.0, 0.5, 1.0, 2.5, NEVER])),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(workers=st.integers(1, 4), script=steps)
def test_queue_invariants(workers: int, script: list[tuple[str, float]]) -> None:
    clock = Clock()
    queue = JobQueue(workers, clock=clock)
    jobs = []
    for action, value in script:
        if action == "wait":
            clock.now += value
        elif action == "submit":
            jobs.append(queue.submit(f"j{len(jobs)}", duration=value))
        elif jobs:
            job = jobs[int(value) % len(jobs)]
            was_waiting = job.status(queue.advance()) == "in_queue"
            assert queue.cancel(job) == was_waiting

        now = queue.advance()
        states = [job.status(now) for job in jobs]
        running = states.count("in_progress")
        waiting = [job for job, state in zip(jobs, states, strict=True) if state == "in_queue"]
        assert running <= workers
        assert not waiting or running == workers  # nobody waits while a slot is free
        assert [queue.position(job) for job in waiting] == list(range(1, len(waiting) + 1))
        assert queue.in_flight(now) == running + len(waiting)
        started = [job for job in jobs if job.started_at is not None]
        assert started == sorted(started, key=lambda job: job.started_at)  # first come first served
        assert all(job.started_at >= job.submitted_at for job in started)
