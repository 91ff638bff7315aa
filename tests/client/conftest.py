"""Fixtures for the client's tests: no real sleeps, a clean settings cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flashgen import timing
from flashgen.settings import get_settings


@pytest.fixture(autouse=True)
def no_sleeps() -> Iterator[None]:
    """Every sleep becomes a recorded yield; restored afterwards."""
    before = timing.is_testing()
    timing.set_testing(True)
    timing.clear_recorded()
    yield
    timing.clear_recorded()
    timing.set_testing(before)


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings re-read per test, and no token leaking in from the developer's shell."""
    monkeypatch.delenv("RUNCOMFY_API_TOKEN", raising=False)
    monkeypatch.delenv("FLASHGEN_API_TOKEN", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
