"""The API misbehaving on every route, and downloads that arrive broken: nothing paid twice,
nothing lost, no broken image stored. Each test is a row of the README's guarantees table."""

from __future__ import annotations

import pytest

from flashgen.emulator import EmulatorConfig
from flashgen.records import ItemState, LedgerEntry, LedgerState
from tests.faults.conftest import TOKEN

pytestmark = pytest.mark.slow


def _config(*faults: str) -> EmulatorConfig:
    return EmulatorConfig(workers=4, job_time=0.3, tokens=[TOKEN], faults=list(faults),
                          fault_seed=11, retry_after=0.1, slow_seconds=0.5)


ROUTE_FAULTS = {
    "submit": _config("submit:503:0.2", "submit:429:0.2", "submit:drop:0.1",
                      "submit:lost-answer:0.1"),
    "status": _config("status:500:0.3", "status:drop:0.2", "status:malformed:0.1"),
    "result": _config("result:502:0.3", "result:drop:0.2", "result:malformed:0.1"),
    "file": _config("file:504:0.3", "file:drop:0.2", "file:expired:0.1"),
}


@pytest.mark.parametrize("fault_stack", list(ROUTE_FAULTS.values()), ids=list(ROUTE_FAULTS),
                         indirect=True)
def test_api_faults_per_route(fault_stack):
    source = fault_stack.prompts(8)
    done = fault_stack.batch(source, "--batch-id", "api-faults")
    counts = fault_stack.check("api-faults", inputs=8)
    stats = fault_stack.api.stats()
    assert sum(stats["faults_injected"].values()) > 0
    # Only a submit that may have arrived without a usable answer (dropped, lost, 5xx) may
    # end ambiguous; everything else is stored.
    ambiguous = counts.get("failed", 0)
    maybe_arrived = sum(n for kind, n in stats["faults_injected"].items() if kind != "429")
    assert ambiguous <= (maybe_arrived if fault_stack.api.config.faults[0].startswith(
        "submit") else 0)
    assert counts.get("stored", 0) + ambiguous == 8
    assert done.returncode == (0 if not ambiguous else 1)


@pytest.mark.parametrize("fault_stack", [_config("file:malformed:0.5"),
                                         _config("file:corrupt:0.5")],
                         ids=["truncated", "corrupt"], indirect=True)
def test_broken_downloads_are_fetched_again_never_stored(fault_stack):
    source = fault_stack.prompts(8)
    first = fault_stack.batch(source, "--batch-id", "broken")
    counts = fault_stack.check("broken", inputs=8)  # every stored image decodes
    stats = fault_stack.api.stats()
    assert stats["faults_injected"].get("malformed", 0) + stats["faults_injected"].get(
        "corrupt", 0) > 0
    assert stats["submissions"] == 8  # refetched from the request_id, never resubmitted
    for row in fault_stack.manifest("broken"):
        if row.state == ItemState.FAILED:  # retries spent: honest, and still paid-for
            assert "does not decode" in row.reason
            entry = LedgerEntry.model_validate_json(
                fault_stack.read(f"{fault_stack.prefix}/ledger/{row.fingerprint}.json"))
            assert entry.state == LedgerState.SUBMITTED and entry.request_id
    assert first.returncode == (0 if counts == {"stored": 8} else 1)
    # Once the files arrive whole, a rerun stores the rest without paying again.
    fault_stack.api.set_faults([])
    rerun = fault_stack.batch(source, "--batch-id", "broken-rerun")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    counts = fault_stack.check("broken-rerun", inputs=8)
    assert counts.get("stored", 0) + counts.get("skipped", 0) == 8
    assert fault_stack.api.stats()["submissions"] == 8
