"""A real run's memory and gallery are bounded whatever the batch: 400,000 invalid rows and
one good one (a real `flashgen batch` peaked at 2.9 GB and wrote a 318 MB page once, when
the views read every manifest row back into memory). A row of the README's guarantees
table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import FLASHGEN

pytestmark = pytest.mark.slow

INVALID_ROWS = 400_000
# Runs a command and prints its peak RSS (KiB): the child's alone, whatever ran before.
PEAK_RSS = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.exit(done.returncode)")


@pytest.mark.timeout(1800)  # planning 400,000 rows takes minutes on a busy 2-core machine
def test_a_real_run_over_400k_invalid_rows_stays_small(fault_stack):
    source = fault_stack.workdir / "mostly-bad.csv"
    with source.open("w") as out:
        out.write("prompt,aspect_ratio\n")
        out.writelines(f"a fox number {n},7:3\n" for n in range(INVALID_ROWS))
        out.write("one good fox,16:9\n")
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *FLASHGEN, "batch", str(source), "--batch-id", "big",
         "--max-failure-ratio", "1"],
        env=fault_stack.env, capture_output=True, text=True, timeout=1500,
        cwd=fault_stack.workdir)
    fault_stack.outputs += [done.stdout, done.stderr]
    assert done.returncode == 0, done.stderr[-3000:]
    peak_mb = int(done.stdout.strip().splitlines()[-1]) / 1024
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
