"""Big prompt files are planned in bounded memory (the 612k-row CSV reached 3.9 GB once)."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest

from flashgen.sources import plan_batch, read_rows

ROWS = 100_000


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.csv"
    with path.open("w") as out:
        out.write("prompt,aspect_ratio,seed\n")
        for n in range(ROWS):
            out.write(f'"a misty forest at dawn, fox number {n}, ink and oil",16:9,{n}\n')
    return path


def _peak_growth(work) -> tuple[object, int]:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = work()
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_planning_a_big_csv_keeps_only_fingerprints(big_csv):
    assert big_csv.stat().st_size > 6_000_000
    plan, grew = _peak_growth(lambda: plan_batch(read_rows(str(big_csv))))
    assert (plan.rows, plan.items, plan.invalid, plan.duplicates) == (ROWS, ROWS, [], [])
    # A fingerprint and its first line take ~130 bytes; holding every Item would be ~15x.
    assert grew < 40_000_000, f"planning grew by {grew:,} bytes"

    first_ten, grew = _peak_growth(lambda: list(itertools.islice(plan.iter_items(), 10)))
    assert [i.line for i in first_ten] == list(range(2, 12))
    assert grew < 2_000_000, f"the first items cost {grew:,} bytes"


@pytest.mark.slow
def test_a_file_of_bad_rows_is_kept_compactly(tmp_path):
    rows = 20_000
    path = tmp_path / "bad.csv"
    with path.open("w") as out:
        out.write("prompt,aspect_ratio\n")
        out.writelines(f'"a fox number {n}",7:3\n' for n in range(rows))
    plan, grew = _peak_growth(lambda: plan_batch(read_rows(str(path))))
    assert (plan.items, len(plan.invalid)) == (0, rows)
    assert plan.invalid[-1].line == rows + 1 and "7:3" in plan.invalid[-1].reason
    # Each bad row's ~500-character reason is the same text, kept once.
    assert grew < rows * 400, f"{grew / rows:.0f} bytes per bad row"
