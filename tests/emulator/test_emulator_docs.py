"""The examples in the emulator's docstrings run as written."""

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
    assert result.failed == 0
