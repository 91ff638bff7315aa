"""Polls timed by what the run has learned: few polls per job, and ends noticed promptly.

The emulator runs on the test's virtual clock (see ``emulated.py``), so a "2 s job" ends
exactly when the client has slept 2 s past its submit, and detection lag is the time of
the poll that saw ``completed`` minus that moment: exact, and the same on any machine.
Jobs run one after another here: the virtual clock adds up overlapping sleeps.
"""

from __future__ import annotations

import statistics

import pytest
from emulated import emulated, seed_for

from flashgen import timing
from flashgen.client import RunComfyClient
from flashgen.errors import JobDeadlineError
from flashgen.models import DEFAULT_MODEL, JobState, JobStatus
from flashgen.polling import CLOSE_FRACTION, JobTimeEstimator, PollLog, PollPlan, PollSchedule


def _status(state: str, position: int | None = None) -> JobStatus:
    return JobStatus(request_id="r", status=state, queue_position=position)


async def _one_job(client: RunComfyClient, seed: int, **wait: object) -> tuple[PollLog, float]:
    """Submit, wait; return the poll log and the virtual time of the submit."""
    rid = (await client.submit(DEFAULT_MODEL, {"prompt": "a fox", "seed": seed})).request_id
    submitted = timing.now()
    log = PollLog()
    await client.wait(rid, timeout=600, on_status=log, **wait)
    return log, submitted


# --- the estimator and the plan -------------------------------------------------------------


def test_estimator_starts_from_the_prior_and_keeps_a_window() -> None:
    estimator = JobTimeEstimator(prior=5.0, window=3, quantile=0.5)
    assert estimator.expected() == 5.0
    for seconds in (9.0, 1.0, 2.0, 3.0, float("nan"), -1.0, 0.0):
        estimator.observe(seconds)
    assert estimator.seen == [1.0, 2.0, 3.0]  # the oldest dropped, nonsense ignored
    assert estimator.expected() == 2.0
    with pytest.raises(ValueError):
        JobTimeEstimator(prior=0)


def test_a_low_quantile_shrugs_off_one_outlier() -> None:
    estimator = JobTimeEstimator(prior=5.0)
    for seconds in [2.0] * 9 + [60.0]:
        estimator.observe(seconds)
    assert estimator.expected() == 2.0


def learned(seconds: float) -> JobTimeEstimator:
    estimator = JobTimeEstimator(prior=5.0)
    estimator.observe(seconds)
    return estimator


def test_plan_looks_just_before_the_expected_end_then_closely() -> None:
    plan = PollPlan(learned(2.0), PollSchedule(0.5, 5.0), submitted_at=100.0)
    assert plan.first_delay(now=100.0) == pytest.approx(1.9)
    running = _status("in_progress")
    assert plan.next_delay(running, now=101.9) == pytest.approx(0.1)  # 5 % of 2 s
    # Overdue: every 5 % of the time it has run, never more than the schedule's maximum.
    assert plan.next_delay(running, now=110.0) == pytest.approx(0.5)
    assert plan.next_delay(running, now=300.0) == 5.0
    assert plan.finished(_status("completed"), now=300.2) == pytest.approx(200.1)


def test_plan_on_the_prior_alone_looks_every_quarter_of_it() -> None:
    plan = PollPlan(JobTimeEstimator(prior=8.0), PollSchedule(0.5, 5.0), submitted_at=0.0)
    assert plan.first_delay(now=0.0) == 2.0
    running = _status("in_progress")
    looks = [plan.next_delay(running, now=t) for t in (2.0, 4.0, 6.0)]
    assert looks == pytest.approx([2.0, 2.0, 1.6])  # the last one lands at 0.95 * 8 s
    assert plan.next_delay(running, now=7.6) == pytest.approx(0.4)  # then closely


def test_plan_without_a_submit_time_looks_at_once() -> None:
    plan = PollPlan(learned(2.0), PollSchedule())
    assert plan.first_delay(now=7.0) == 0.0
    assert plan.finished(_status("completed"), now=7.0) is None  # nothing to learn from


def test_plan_leaves_a_queued_job_to_the_backoff_and_starts_its_clock_on_leaving() -> None:
    plan = PollPlan(learned(2.0), PollSchedule(0.5, 5.0, growth=2.0), submitted_at=0.0)
    queued = [plan.next_delay(_status("in_queue", 3), now=t) for t in (1.9, 3.4, 5.4)]
    assert queued == [1.5, 3.0, 5.0]  # by position, then growing to the maximum
    # Seen queued at 5.4 and running at 9.4: it started about 7.4, so it ends about 9.4.
    assert plan.next_delay(_status("in_progress"), now=9.4) == pytest.approx(0.1)


# --- against the emulator ---------------------------------------------------------------------


async def test_steady_jobs_take_at_most_three_polls_and_are_noticed_within_ten_percent() -> None:
    job_time = 2.0
    polls, lags = [], []
    async with emulated("in-process", job_time=job_time) as emu, emu.client() as client:
        for seed in range(12):
            log, submitted = await _one_job(client, seed)
            polls.append(log.polls)
            lags.append(log.first_seen[JobState.COMPLETED] - submitted - job_time)
        stats = await emu.stats()
    assert stats["status_polls"] == sum(polls)
    assert statistics.median(polls) <= 3
    settled = slice(5, None)  # the first jobs teach the estimator (prior: 5 s)
    assert max(polls[settled]) <= 3
    assert all(0 <= lag <= 0.1 * job_time for lag in lags[settled])
    assert client.estimator.expected() == pytest.approx(job_time, rel=0.05)


async def test_a_job_longer_than_expected_is_polled_closely_until_done() -> None:
    estimator = JobTimeEstimator(prior=5.0)
    for _ in range(10):
        estimator.observe(2.0)
    async with emulated("in-process", job_time=6.0) as emu, emu.client() as client:
        timing.clear_recorded()
        log, submitted = await _one_job(client, 1, expected=estimator)
    gaps = timing.recorded_sleeps()
    assert gaps[0] == pytest.approx(1.9)  # the first look, where 2 s jobs end
    assert all(gap <= CLOSE_FRACTION * 6.0 + 1e-9 for gap in gaps[1:])  # closely, to the end
    lag = log.first_seen[JobState.COMPLETED] - submitted - 6.0
    assert 0 <= lag <= 0.1 * 6.0
    assert estimator.seen[-1] == pytest.approx(6.0, rel=0.05)  # and it learned


async def test_a_queued_job_backs_off() -> None:
    # One worker, held for ever by a stalled first job: the second waits in the queue.
    seed = seed_for("job", "job:stall:0.5", ["stall", None])
    async with emulated("in-process", workers=1, job_time=2.0, faults=["job:stall:0.5"],
                        fault_seed=seed) as emu, emu.client() as client:
        await client.submit(DEFAULT_MODEL, {"prompt": "stuck"})
        queued = (await client.submit(DEFAULT_MODEL, {"prompt": "behind it"})).request_id
        timing.clear_recorded()
        log = PollLog()
        with pytest.raises(JobDeadlineError):
            await client.wait(queued, timeout=60, on_status=log)
    assert set(log.first_seen) == {JobState.QUEUED}
    gaps = timing.recorded_sleeps()[1:-1]  # between the first look and the deadline's cut
    assert gaps == sorted(gaps) and gaps[-1] == client._poll.maximum
    assert log.polls <= 20  # 60 s of queue: no busy polling
