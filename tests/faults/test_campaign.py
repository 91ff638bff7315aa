"""The randomized fault campaign (``tests.faults.campaign``): seeded schedules of API, S3,
kill, hostile-text and hostile-settings faults, each run through real `flashgen batch`
processes and checked against every invariant. A row of the README's guarantees table.

``make test`` runs a few schedules; ``make fuzz`` runs many (``FUZZ_SCHEDULES``, from
``FUZZ_SEED``). The figures appear in pytest's terminal summary ("fault campaign"); a
failure names the seed that reproduces it.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from tests.faults.campaign import CAMPAIGN_PROPERTY, FaultSchedule, Tally, run_schedule

pytestmark = pytest.mark.slow

SCHEDULES = int(os.environ.get("FUZZ_SCHEDULES", "3"))
BASE_SEED = int(os.environ.get("FUZZ_SEED", "20261206"))


@pytest.mark.parametrize("seed", [BASE_SEED + n for n in range(SCHEDULES)],
                         ids=lambda seed: f"seed={seed}")
def test_fault_campaign_keeps_every_promise(fault_stack, record_property, seed):
    # Each schedule's tally travels in its test report (from a worker too, under xdist);
    # tests/conftest.py adds them up for the terminal summary.
    tally = Tally(base_seed=BASE_SEED)
    try:
        run_schedule(fault_stack, FaultSchedule.generate(seed), tally)
    except AssertionError:
        tally.failed.append(seed)
        raise
    finally:
        record_property(CAMPAIGN_PROPERTY, dataclasses.asdict(tally))
    assert tally.invariants > 0
