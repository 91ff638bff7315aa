"""The contract suite runs RunComfyClient against the emulator, as the client tests do.

Its helpers (``emulated``, the fake token) live with the client's tests; sleeps are
recorded, not slept, and the emulator's jobs run on the same virtual clock.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flashgen import timing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "client"))


@pytest.fixture(autouse=True)
def no_sleeps() -> Iterator[None]:
    before = timing.is_testing()
    timing.set_testing(True)
    timing.clear_recorded()
    yield
    timing.clear_recorded()
    timing.set_testing(before)


@pytest.fixture(params=["in-process", "socket"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both ways the emulator runs: through ASGITransport, and behind a real socket."""
    return request.param
