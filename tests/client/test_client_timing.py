"""timing: the sleep switch, the virtual clock, Backoff and retry; polling: the schedule."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashgen import timing
from flashgen.errors import RateLimitedError, TransientApiError, is_transient
from flashgen.models import JobState, JobStatus
from flashgen.polling import PollLog, PollSchedule
from flashgen.timing import Backoff, retry


async def test_testing_sleeps_are_recorded_and_advance_the_clock_exactly() -> None:
    before = timing.now()
    await timing.sleep(3.0)
    await timing.sleep(-1)  # negative waits count as zero
    assert timing.recorded_sleeps() == [3.0, 0.0]
    assert timing.now() - before == pytest.approx(3.0, abs=1e-9)  # float sums, not real time
    timing.clear_recorded()
    assert timing.recorded_sleeps() == []


def test_the_virtual_clock_ignores_real_time() -> None:
    before = timing.now()
    time.sleep(0.02)  # real time passes (a loaded machine), virtual time does not
    assert timing.now() == before


def test_env_variable_turns_testing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # Restored by hand, not by monkeypatch: its undo runs after the autouse fixture's
    # restore and would leave test mode on for every later test in the session.
    saved, timing._testing_override = timing._testing_override, None
    try:
        monkeypatch.setenv("FLASHGEN_TESTING", "1")
        assert timing.is_testing()
        monkeypatch.setenv("FLASHGEN_TESTING", "0")
        assert not timing.is_testing()
    finally:
        timing._testing_override = saved


@given(attempt=st.integers(1, 20), jitter=st.floats(0, 1))
def test_backoff_grows_within_jitter_and_cap(attempt: int, jitter: float) -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, multiplier=2.0, jitter=jitter)
    nominal = min(30.0, 0.5 * 2.0 ** (attempt - 1))
    assert nominal * (1 - jitter) - 1e-9 <= backoff.delay(attempt) <= nominal


@given(retry_after=st.floats(0, 10_000))
def test_retry_after_wins_and_is_never_shortened(retry_after: float) -> None:
    assert Backoff(maximum=1.0).delay(3, retry_after=retry_after) == retry_after


async def test_retry_retries_only_what_on_accepts() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientApiError("blip")
        return "ok"

    assert await retry(flaky, on=is_transient, backoff=Backoff(jitter=0)) == "ok"
    assert timing.recorded_sleeps() == [0.5, 1.0]

    async def broken() -> None:
        raise ValueError("a bug, not a blip")

    with pytest.raises(ValueError):
        await retry(broken, on=is_transient, backoff=Backoff())
    assert len(timing.recorded_sleeps()) == 2  # no sleep for the bug


async def test_retry_stops_at_attempts_and_budget() -> None:
    calls = []

    async def always() -> None:
        calls.append(1)
        raise TransientApiError("down")

    with pytest.raises(TransientApiError):
        await retry(always, on=is_transient, backoff=Backoff(attempts=4, budget=None))
    assert len(calls) == 4

    calls.clear()
    with pytest.raises(TransientApiError):  # 1 + 2 + 4 = 7 > 5: the third wait is not taken
        await retry(always, on=is_transient,
                    backoff=Backoff(initial=1, jitter=0, attempts=10, budget=5))
    assert len(calls) == 3


async def test_retry_after_beyond_the_budget_gives_up_at_once() -> None:
    async def limited() -> None:
        raise RateLimitedError("slow down", retry_after=600)

    with pytest.raises(RateLimitedError) as caught:
        await retry(limited, on=is_transient, backoff=Backoff(budget=120))
    assert caught.value.retry_after == 600
    assert timing.recorded_sleeps() == []


def _status(status: str, position: int | None = None) -> JobStatus:
    return JobStatus(request_id="r", status=status, queue_position=position)


def test_poll_schedule_is_short_while_running_and_grows_while_queued() -> None:
    schedule = PollSchedule(initial=0.5, maximum=5.0, growth=2.0)
    queued = [schedule.next_delay(_status("in_queue", 0)) for _ in range(6)]
    assert queued == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    running = [schedule.next_delay(_status("in_progress")) for _ in range(5)]
    assert running[0] == 0.5  # a change of state starts again
    assert max(running) <= 2.0  # a running job is never left alone for long
    assert schedule.next_delay(_status("completed")) == 0.0


def test_poll_schedule_waits_longer_far_back_in_the_queue() -> None:
    near = PollSchedule().next_delay(_status("in_queue", 1))
    far = PollSchedule().next_delay(_status("in_queue", 8))
    assert near < far <= PollSchedule().maximum


def test_poll_schedule_honours_retry_after_and_unknown_states() -> None:
    schedule = PollSchedule(initial=0.5, maximum=5.0)
    assert schedule.next_delay(_status("in_progress"), retry_after=9.0) == 9.0
    assert _status("warming_up").state is JobState.UNKNOWN
    assert 0 < schedule.next_delay(_status("warming_up")) <= 5.0


def test_poll_schedule_fresh_forgets_history_and_checks_arguments() -> None:
    schedule = PollSchedule(initial=1.0, maximum=4.0, growth=2.0)
    schedule.next_delay(_status("in_queue"))
    schedule.next_delay(_status("in_queue"))
    assert schedule.fresh().next_delay(_status("in_queue")) == 1.0
    with pytest.raises(ValueError):
        PollSchedule(initial=5.0, maximum=1.0)
    with pytest.raises(ValueError):
        PollSchedule(growth=0.5)


def test_poll_log_counts_and_times_states() -> None:
    log = PollLog()
    for status in ("in_queue", "in_queue", "in_progress", "completed"):
        log(_status(status))
    assert log.polls == 4
    assert list(log.first_seen) == [JobState.QUEUED, JobState.RUNNING, JobState.COMPLETED]
    assert log.last is not None and log.last.state is JobState.COMPLETED
