"""ApiSlots on a real Prefect server: sharing one global concurrency limit between runs.

One ``prefect server start`` serves the module, not the session's test harness: a killed
run's slots come back only through the server's lease repossessor, which ephemeral servers
(the harness) do not run.

Jobs are fakes (a short sleep inside ``slot()``); a shared ``InFlight`` counts the jobs in
progress across every run of a test, and checks the limit at every moment one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.settings import PREFECT_API_URL, temporary_settings

from flashgen.flows.slots import ApiSlots, _Mark
from flashgen.infra.prefect_server import PrefectServer

REPO = Path(__file__).resolve().parents[1]
JOB_SECONDS = 0.3


@pytest.fixture(scope="module")
def prefect_api():
    """A real Prefect server for this module's tests; yields its API URL."""
    with PrefectServer(repossessor_seconds=1, startup_timeout=240) as server:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url


class InFlight:
    """Jobs in progress across runs: the most seen at once, and every count seen."""

    def __init__(self) -> None:
        self.now = self.max = 0
        self.seen: list[int] = []

    async def job(self, seconds: float = JOB_SECONDS) -> None:
        self.now += 1
        self.max = max(self.max, self.now)
        self.seen.append(self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


async def run_jobs(slots: ApiSlots, n: int, in_flight: InFlight,
                   done: list[int] | None = None, seconds: float = JOB_SECONDS) -> None:
    async def one() -> None:
        async with slots.slot():
            await in_flight.job(seconds)
        if done is not None:
            done.append(1)

    await asyncio.gather(*(one() for _ in range(n)))


async def new_limit(limit: int) -> str:
    name = f"test-api-{uuid.uuid4().hex[:8]}"
    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit))
    return name


async def active_slots(name: str) -> int:
    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(name)).active_slots


async def eventually(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll ``check`` until it holds; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        await asyncio.sleep(0.5)


async def test_one_run_hands_slots_over_locally_and_gives_them_back(prefect_api):
    name = await new_limit(2)
    in_flight = InFlight()
    async with ApiSlots(name, wanted=2) as slots:
        await run_jobs(slots, 10, in_flight)
    assert in_flight.max == 2
    # Two trips to the server for ten jobs: every other slot passed from job to job.
    assert slots.counters.acquired == 2
    assert slots.counters.handed_over == 8
    assert slots.counters.released == 2
    assert slots.counters.max_held == 2
    assert await active_slots(name) == 0


async def test_two_runs_fill_a_limit_of_three_and_never_exceed_it(prefect_api):
    name = await new_limit(3)
    in_flight = InFlight()
    async with ApiSlots(name, wanted=2) as a, ApiSlots(name, wanted=2) as b:
        await asyncio.gather(run_jobs(a, 24, in_flight), run_jobs(b, 24, in_flight))
    assert in_flight.max == 3
    assert max(in_flight.seen) <= 3
    assert a.counters.max_held <= 2 and b.counters.max_held <= 2
    assert await active_slots(name) == 0


@pytest.mark.slow
async def test_a_small_run_beside_a_big_one_finishes_first(prefect_api):
    name = await new_limit(3)
    in_flight = InFlight()
    big_done: list[int] = []
    async with ApiSlots(name, wanted=3) as big:
        big_run = asyncio.ensure_future(run_jobs(big, 40, in_flight, big_done))
        await eventually("the big run under way", lambda: _true(len(big_done) >= 3), 60)
        async with ApiSlots(name, wanted=3) as small:
            await run_jobs(small, 3, in_flight)
        big_done_when_small_finished = len(big_done)
        await big_run
    assert big_done_when_small_finished < 40
    assert big.counters.yielded >= 1  # the big run gave slots back for the small one
    assert small.counters.acquired >= 1
    assert max(in_flight.seen) <= 3


@pytest.mark.slow
async def test_a_short_run_gets_every_slot_it_waits_for_not_just_a_fair_share(prefect_api):
    """A run whose jobs all fit in the limit at once (an on-demand run of 4 beside a batch)
    is served first: the big run gives back each slot as its jobs end until the short run
    has all it waits for, so the short run finishes in one round instead of two. With only
    the fair share (4 // 2 runs) it would never hold more than 2."""
    name = await new_limit(4)
    in_flight = InFlight()
    big_done: list[int] = []
    async with ApiSlots(name, wanted=4, jobs=80) as big:
        big_run = asyncio.ensure_future(run_jobs(big, 80, in_flight, big_done))
        await eventually("the big run holding the limit", lambda: _true(big.held == 4), 60)
        async with ApiSlots(name, wanted=4, jobs=4) as short:
            # Long jobs: all four hold their slots at once whatever the machine's load.
            await run_jobs(short, 4, in_flight, seconds=3.0)
        big_done_when_short_finished = len(big_done)
        await big_run
    assert short.counters.max_held == 4
    assert big.counters.yielded >= 3
    assert big_done_when_short_finished < 80
    assert max(in_flight.seen) <= 4


async def test_a_run_still_planning_is_left_its_fair_share(prefect_api):
    """A run announces itself before it reads its prompt file and ledger; meanwhile a run
    already at work keeps to its fair share, so the newcomer's first job starts as soon as
    it has planned instead of after the other's jobs end. Once it has planned (here: no
    work), the other may take the whole limit again."""
    name = await new_limit(4)
    in_flight = InFlight()
    async with ApiSlots(name, wanted=4) as planning:  # jobs unknown yet: planning
        async with ApiSlots(name, wanted=4, jobs=12) as busy:
            held_while_long: list[int] = []

            async def job() -> None:
                async with busy.slot():
                    if busy.jobs - busy.started > 4:  # with 4 or fewer left it is short
                        held_while_long.append(busy.held)
                    await in_flight.job()

            await asyncio.gather(*(job() for _ in range(12)))
        assert max(held_while_long) == 2
        planning.plan(jobs=0)
        async with ApiSlots(name, wanted=4, jobs=8) as alone_again:
            await eventually("the planned run's mark cleared",
                             lambda: _is_zero(f"{name}:starved"), 30)
            await run_jobs(alone_again, 8, in_flight, seconds=1.0)
        assert alone_again.counters.max_held == 4
    assert max(in_flight.seen) <= 4


async def test_the_shards_of_one_batch_count_as_one_run(prefect_api):
    """A sharded batch runs 4 shards at once under a limit of 4. A 24-image run arriving
    beside it gets the fair share of two runs (2 slots), not of six (1): the batch's
    parent holds its one mark among the runs, and its shards (``group``: the batch id)
    share the batch's share among themselves."""
    name = await new_limit(4)
    in_flight = InFlight()
    shards_done: list[int] = []
    async with contextlib.AsyncExitStack() as held:
        parent = await held.enter_async_context(ApiSlots(name, wanted=4))
        parent.plan(jobs=0)  # it planned; its shards run the jobs
        shards = [await held.enter_async_context(
            ApiSlots(name, wanted=4, jobs=30, group="batch-x")) for _ in range(4)]
        batch = asyncio.ensure_future(asyncio.gather(
            *(run_jobs(shard, 30, in_flight, shards_done) for shard in shards)))
        await eventually("the shards holding the limit",
                         lambda: _true(sum(s.held for s in shards) == 4), 60)
        held_while_long: list[int] = []
        async with ApiSlots(name, wanted=4, jobs=24) as other:
            async def job() -> None:
                async with other.slot():
                    if other.jobs - other.started > 4:  # with 4 or fewer left it is short
                        held_while_long.append(other.held)
                    await in_flight.job()

            await asyncio.gather(*(job() for _ in range(24)))
        shards_done_when_other_finished = len(shards_done)
        await batch
    assert max(held_while_long) >= 2
    assert shards_done_when_other_finished < 120  # the batch was still running
    assert max(in_flight.seen) <= 4
    assert await active_slots(f"{name}:runs") == 0


async def test_a_job_asking_while_the_acquirer_sets_its_marks_gets_a_slot(prefect_api,
                                                                          monkeypatch):
    """A hang, reproduced: the acquirer found no job waiting and set its marks on the
    server; a job that asked for a slot during that round trip had its wake-up wiped, and
    the run waited for ever with no slot asked for. It showed when a batch's items started
    inside a task run (flashgen.tasks.generation.generate_group)."""
    name = await new_limit(2)
    on_the_wire = asyncio.Event()
    set_mark = _Mark.set

    async def slow_set(mark: _Mark, count: int | bool) -> None:
        if mark.count != int(count):  # a change: a round trip to the server
            on_the_wire.set()
            await asyncio.sleep(0.5)
        await set_mark(mark, count)

    monkeypatch.setattr(_Mark, "set", slow_set)
    async with ApiSlots(name, wanted=2) as slots:
        on_the_wire.clear()
        slots.plan(jobs=1)  # planned: the acquirer takes the run's "starved" mark off
        await on_the_wire.wait()
        async with asyncio.timeout(120):  # a backstop for the hang, not a measure
            async with slots.slot():
                assert await active_slots(name) == 1


async def test_a_missing_limit_still_limits_to_wanted(prefect_api, caplog):
    in_flight = InFlight()
    with caplog.at_level(logging.WARNING, logger="flashgen.slots"):
        async with ApiSlots(f"missing-{uuid.uuid4().hex[:8]}", wanted=2) as slots:
            await run_jobs(slots, 8, in_flight)
    assert in_flight.max == 2
    assert not slots.shared and slots.counters.acquired == 0
    assert "flashgen provision" in caplog.text


async def test_a_slot_given_back_while_its_renewal_is_on_the_wire_is_not_lost(
        prefect_api, caplog, monkeypatch):
    """A renewal pass takes its list of leases, then awaits the server; a job that ends
    meanwhile gives its slot back, and the renewal answers 410 for a lease that is simply
    gone. That is no expired lease: seen at 10,000 images as false warnings."""
    import flashgen.flows.slots

    monkeypatch.setattr(flashgen.flows.slots, "RENEW_EVERY", 0.05)
    log = logging.getLogger("test.slots.renewal")
    with caplog.at_level(logging.WARNING, logger=log.name):
        async with ApiSlots(await new_limit(1), wanted=1, logger=log) as slots:
            renew = slots._client.renew_concurrency_lease
            on_the_wire: set = set()

            async def slow_renew(lease_id, lease_duration):
                on_the_wire.add(lease_id)
                await asyncio.sleep(0.3)
                return await renew(lease_id, lease_duration=lease_duration)

            monkeypatch.setattr(slots._client, "renew_concurrency_lease", slow_renew)
            async with slots.slot():
                (held,) = slots._held
                await eventually("a renewal of the job's lease on its way",
                                 lambda: _true(held.lease_id in on_the_wire), 10)
            assert slots.held == 0  # given back while its renewal is still on its way
            await asyncio.sleep(0.5)  # that renewal's answer comes: 410 Gone
    assert "expired before it was renewed" not in caplog.text


HOLD_SLOTS_FOREVER = textwrap.dedent("""
    import asyncio, sys
    from flashgen.flows.slots import ApiSlots, _Mark

    async def main(name):
        async with ApiSlots(name, wanted=2) as slots:
            async def hold():
                async with slots.slot():
                    print("holding", flush=True)
                    await asyncio.Event().wait()
            await asyncio.gather(hold(), hold())

    asyncio.run(main(sys.argv[1]))
""")


@pytest.mark.slow
async def test_a_killed_runs_slots_come_back_within_the_lease(prefect_api):
    name = await new_limit(2)
    env = {**os.environ, "PREFECT_API_URL": prefect_api,
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    killed = subprocess.Popen([sys.executable, "-c", HOLD_SLOTS_FOREVER, name], env=env,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert killed.stdout.readline().strip() == "holding"
        assert killed.stdout.readline().strip() == "holding"
        assert await active_slots(name) == 2
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    # One lease (60 s) and one repossessor pass; the timeout only bounds a failure.
    await eventually("the killed run's slots back", lambda: _is_zero(name), timeout=150)

    in_flight = InFlight()
    async with ApiSlots(name, wanted=2) as slots:
        await run_jobs(slots, 4, in_flight)
    assert in_flight.max == 2 and slots.counters.acquired == 2


async def _true(value: bool) -> bool:
    return value


async def _is_zero(name: str) -> bool:
    return await active_slots(name) == 0


async def test_a_run_alone_at_its_cap_reads_only_the_runs_mark(prefect_api):
    """Each read of a limit costs the server CPU: a run alone with every slot it wants
    asks only whether another run has come (``runs``), not the other three limits."""
    name = await new_limit(2)
    reads: list[str] = []

    class Counted(ApiSlots):
        async def _read_limit(self, limit_name):
            reads.append(limit_name)
            return await super()._read_limit(limit_name)

    in_flight = InFlight()
    async with Counted(name, wanted=2, jobs=4) as alone:
        async def job(seconds: float) -> None:
            async with alone.slot():
                await in_flight.job(seconds)

        # Two long jobs hold the cap for 4 s; two more wait for their slots meanwhile.
        first = asyncio.gather(job(4.0), job(4.0))
        await eventually("the run at its cap", lambda: _true(alone.held == 2), 60)
        since = len(reads)
        waiting = asyncio.gather(job(0.1), job(0.1))
        await first
        at_cap = reads[since:]
        await waiting
    assert at_cap.count(f"{name}:runs") >= 2  # about one a second
    assert not [n for n in at_cap if n != f"{name}:runs"]
    assert in_flight.max == 2
