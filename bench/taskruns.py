"""What one Prefect task run costs, measured the way flashgen runs its steps: async tasks
with flashgen's task options (``flashgen.tasks.policy``), awaited by a fixed number of workers
inside one flow, against the bench's real ``prefect server`` on PostgreSQL. The task does nothing,
so every figure is Prefect's own: CPU in the flow process, CPU in the server and its
database (until it has recorded every task run), and the rows each task run adds to the
server's database. A small batch runs three such tasks per image (submit, wait until
complete, fetch and store); a large one, one per group of items (flashgen.tasks.generation).

``SentTaskRuns`` counts the task runs a flow process sends, so that the server's count of
rows can be held against it:

    with SentTaskRuns() as sent:
        ...                                   # flows run
    wait_recorded(database, before, len(sent.ids))
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from unittest import mock
from uuid import UUID

import prefect.task_engine
from prefect import flow, task

from flashgen.tasks.policy import task_options

# The tables a task run writes to (directly, or through the events it emits).
TABLES = ("task_run", "task_run_state", "events", "event_resources", "log")


@task(name="noop", task_run_name="noop-{i}", **task_options())
async def noop(i: int) -> int:
    return i


@flow(name="bench-task-runs")
async def task_runs(n: int, workers: int) -> None:
    numbers = iter(range(n))

    async def worker() -> None:
        for i in numbers:  # one shared iterator, as flows/generate.py streams items
            await noop(i)

    await asyncio.gather(*(worker() for _ in range(workers)))


def row_counts(database: Any) -> dict[str, int]:
    """Rows in each of ``TABLES`` of the server's database (``bench.services.Postgres``)."""
    return database.counts(TABLES)


def wait_recorded(database: Any, task_runs_before: int, n: int, *,
                  quiet_for: float = 15.0) -> int:
    """Task runs the server recorded: it records them from their events after the flow has
    returned, so wait until all ``n`` are in or the count stops growing for ``quiet_for``."""
    recorded, last_change = -1, time.monotonic()
    while True:
        now = row_counts(database)["task_run"] - task_runs_before
        if now >= n:
            return now
        if now != recorded:
            recorded, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > quiet_for:
            return recorded
        time.sleep(1.0)


class SentTaskRuns:
    """The ids of the task runs this process reported to the server while it is entered.

    A task run exists on the server only through the state events its client emits
    (``prefect.task_engine`` calls ``emit_task_run_state_change_event``), so this counts
    them there: what the server should have recorded.
    """

    def __init__(self) -> None:
        self.ids: set[UUID] = set()

    def __enter__(self) -> SentTaskRuns:
        emit = prefect.task_engine.emit_task_run_state_change_event

        def counted(task_run: Any, *args: Any, **kwargs: Any) -> Any:
            self.ids.add(task_run.id)
            return emit(task_run, *args, **kwargs)

        self._patch = mock.patch.object(prefect.task_engine,
                                        "emit_task_run_state_change_event", counted)
        self._patch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._patch.stop()
