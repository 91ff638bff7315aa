"""Doctests: every module of flashgen/ runs its docstring examples with the tests
(``flashgen`` is in testpaths; ``pytest flashgen`` runs only them). Only flashgen/ is
collected this way: ``--doctest-modules`` would also import every conftest.py under tests/
as a module named ``conftest``, and two of them clash.

Left out:

- flashgen/emulator: tests/emulator/test_emulator_docs.py runs those, and fails a module
  that has none.

Examples that need a live bucket or API are written as plain code blocks (``::``), not
``>>>``, so every ``>>>`` in flashgen/ runs.
"""

from pathlib import Path

from _pytest.doctest import DoctestModule  # what --doctest-modules makes for each file

PACKAGE = Path(__file__).resolve().parent / "flashgen"
collect_ignore = ["flashgen/emulator"]


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix == ".py" and PACKAGE in file_path.parents:
        return DoctestModule.from_parent(parent, path=file_path)
    return None
