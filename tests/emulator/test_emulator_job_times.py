"""``GET /_emulator/jobs``: each job's life, for the benchmarks' lag and utilisation figures."""

from __future__ import annotations

from emulator_helpers import emulator_client, submit, wait_until_done


async def test_job_times_follow_the_queue_one_worker_at_a_time():
    async with emulator_client(workers=1, job_time=0.05, job_time_spread=0.0) as client:
        first, second = await submit(client, seed=1), await submit(client, seed=2)
        running = {j["request_id"]: j for j in (await client.get("/_emulator/jobs")).json()}
        assert running[second]["started_at"] is None  # waits for the only worker
        assert running[second]["completed_at"] is None
        await wait_until_done(client, second)
        jobs = {j["request_id"]: j for j in (await client.get("/_emulator/jobs")).json()}
    a, b = jobs[first], jobs[second]
    assert a["status"] == b["status"] == "completed"
    assert a["submitted_at"] <= a["started_at"] < a["completed_at"]
    assert b["started_at"] == a["completed_at"]  # the queue hands the worker straight on
