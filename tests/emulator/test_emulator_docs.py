"""Every emulator module shows its use in a docstring example, and the example runs as written."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import flashgen.emulator

MODULES = [f"flashgen.emulator.{m.name}" for m in pkgutil.iter_modules(flashgen.emulator.__path__)]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
