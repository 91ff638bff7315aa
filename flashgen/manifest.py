"""A batch's manifest, written as it runs: one row per input, spooled to disk, not held.

``ManifestSpool`` appends each finished row to a local JSONL file and keeps only what a
summary needs (counts, the first failures, the first ``keep`` rows for a table), so a
batch of any size runs in bounded memory. ``Store.put_manifest_file`` uploads the spool.

    >>> import tempfile; from pathlib import Path
    >>> spool = ManifestSpool(Path(tempfile.mkdtemp()) / "m.jsonl")
    >>> spool.add(ManifestRow(line=1, state=ItemState.STORED))
    >>> spool.add(ManifestRow(line=2, state=ItemState.FAILED, reason="job failed"))
    >>> spool.counts[ItemState.STORED], spool.failures
    (1, ['line 2: job failed'])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from flashgen.records import ItemState, ManifestRow
from flashgen.spend import Spend

FIRST_FAILURES = 5


class ManifestSpool:
    def __init__(self, path: Path, *, keep: int = 1000) -> None:
        self.path = Path(path)
        self.keep = keep
        self.counts: Counter[ItemState] = Counter()
        self.failures: list[str] = []  # "line N: reason", the first few
        self.rows: list[ManifestRow] = []  # the first ``keep`` rows, for tables
        self.spend = Spend()  # the costs the API reported, summed as rows arrive
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, row: ManifestRow) -> None:
        self._file.write(row.model_dump_json() + "\n")
        self.counts[row.state] += 1
        self.spend.add_row(row)
        if row.state in (ItemState.FAILED, ItemState.INVALID) and (
                len(self.failures) < FIRST_FAILURES):
            self.failures.append(f"line {row.line}: {row.reason}")
        if len(self.rows) < self.keep:
            self.rows.append(row)

    def __iter__(self) -> Iterator[ManifestRow]:
        """Every row written so far, streamed back from the spool in the order written
        (each pass reads the file again: the views read it as many times as they need,
        never all of it into memory)."""
        if not self._file.closed:
            self._file.flush()
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield ManifestRow.model_validate_json(line)

    def close(self) -> Path:
        """Flush the file; returns its path (rows in completion order; ``line`` orders them)."""
        if not self._file.closed:
            self._file.close()
        return self.path
