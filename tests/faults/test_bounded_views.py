"""A real run's memory and gallery are bounded whatever the batch: 400,000 invalid rows and
one good one (a real `flashgen batch` peaked at 2.9 GB and wrote a 318 MB page once, when
the views read every manifest row back into memory). A row of the README's guarantees
table."""

from __future__ import annotations

import json

import pytest


pytestmark = pytest.mark.slow

INVALID_ROWS = 400_000


@pytest.mark.timeout(1800)  # planning 400,000 rows takes minutes on a busy 2-core machine
def test_a_real_run_over_400k_invalid_rows_stays_small(fault_stack):
    source = fault_stack.workdir / "mostly-bad.csv"
    with source.open("w") as out:
        out.write("prompt,aspect_ratio\n")
        out.writelines(f"a fox number {n},7:3\n" for n in range(INVALID_ROWS))
        out.write("one good fox,16:9\n")
    done, peak_mb = fault_stack.measured_batch(str(source), "--batch-id", "big",
                                               "--max-failure-ratio", "1", timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"peak RSS of `flashgen batch` over {INVALID_ROWS:,} invalid rows: {peak_mb:.0f} MB")
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"
    gallery = fault_stack.read(f"{fault_stack.prefix}/galleries/big.html")
    print(f"gallery page: {len(gallery):,} bytes")
    assert len(gallery) < 5_000_000, f"gallery of {len(gallery):,} bytes"
    assert b"<b>400,000</b> invalid" in gallery and b"manifests/big.jsonl" in gallery
    assert b"399,800 more rows not on this page" in gallery  # the first 200 are shown
    assert fault_stack.api.stats()["submissions"] == 1
    summary = json.loads(fault_stack.read(f"{fault_stack.prefix}/manifests/big.summary.json"))
    assert summary["counts"] == {"invalid": INVALID_ROWS, "stored": 1}
    assert fault_stack.keys("catalog/")
