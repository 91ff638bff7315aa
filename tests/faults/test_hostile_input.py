"""Hostile prompt files stay in bounded memory. A row of the README's guarantees table
(the YAML alias bomb is a case of test_bad_input)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_a_hundred_thousand_row_file_is_planned_as_a_stream(fault_stack):
    source = fault_stack.workdir / "big.csv"
    with open(source, "w") as out:
        out.write("prompt,seed,aspect_ratio\n")
        for n in range(100_000):  # one item, asked for 100,000 times
            out.write(f"the same fox in the same snow,{1 + n % 1},16:9\n")
    done, peak_mb = fault_stack.measured_batch(str(source), "--dry-run", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rows read:              100000" in done.stdout
    assert "duplicates:             99999" in done.stdout
    assert fault_stack.api.stats()["submissions"] == 0
    # Its own peak (Prefect's import alone is ~200 MB): bounded.
    assert peak_mb < 500, peak_mb
