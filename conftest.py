"""Doctests: every module of flashgen/ and bench/ runs its docstring examples with the
tests (both are in testpaths; ``pytest flashgen`` runs only flashgen's). Only these two are
collected this way: ``--doctest-modules`` would also import every conftest.py under tests/
as a module named ``conftest``, and two of them clash.

Left out:

- flashgen/emulator: tests/emulator/test_emulator_docs.py runs those, and fails a module
  that has none.
- bench/__main__.py, which would run the benchmark on import.

Examples that need a live bucket or API are written as plain code blocks (``::``), not
``>>>``, so every ``>>>`` in flashgen/ runs.
"""

from pathlib import Path

from _pytest.doctest import DoctestModule  # what --doctest-modules makes for each file

ROOT = Path(__file__).resolve().parent
PACKAGES = (ROOT / "flashgen", ROOT / "bench")
collect_ignore = ["flashgen/emulator", "bench/__main__.py"]


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix == ".py" and any(p in file_path.parents for p in PACKAGES):
        return DoctestModule.from_parent(parent, path=file_path)
    return None
