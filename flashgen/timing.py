"""The one place flashgen waits: ``sleep``, a clock, ``Backoff`` and ``retry``.

Every pause in the library goes through :func:`sleep`, so one switch removes them all in
tests (as ``stamina.set_testing`` does). In test mode the clock is fully virtual: a sleep
only yields to the event loop and records the seconds it was asked for, and :func:`now`
advances by exactly those seconds and nothing else. Deadlines, retry budgets and poll
times are then the same on a loaded machine as on an idle one::

    timing.set_testing()
    start = timing.now()
    await timing.sleep(3.0)              # returns at once
    assert timing.recorded_sleeps() == [3.0] and timing.now() - start == 3.0

Sleeps add up even when they overlap (two tasks sleeping 1 s each move the clock 2 s), so
a test that measures time on it runs one waiter at a time.

``FLASHGEN_TESTING=1`` in the environment turns test mode on as well. Pass ``timing.now``
as the emulator's clock (``create_app(config, clock=timing.now)``) and jobs run on the
same virtual time as the client that polls them.

Retrying is explicit about what it retries (``on=`` has no default)::

    handle = await retry(lambda: send_once(), on=is_transient, backoff=Backoff(attempts=4))

Why not ``stamina``: it does exponential backoff with jitter, a time budget and a
Retry-After hook just as well, but it waits with its own sleep and measures its budget on
the wall clock, and its test mode caps attempts rather than keeping them. ``retry`` waits
through :func:`sleep` and measures with :func:`now`, so under the virtual clock a test sees
the production number of attempts, the exact waits and budgets, and no wall time; and it
gives up *before* a wait that would overrun the budget (a Retry-After of 600 s against a
120 s budget raises at once instead of sleeping first).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("flashgen.timing")

_testing_override: bool | None = None
_recorded: list[float] = []
# The virtual clock: starts where the real one stood at import, moves only by sleeps.
_virtual_now = time.monotonic()


def set_testing(enabled: bool = True) -> None:
    """Turn test mode on (sleeps only yield and are recorded) or off (real sleeps)."""
    global _testing_override
    _testing_override = enabled


def is_testing() -> bool:
    """True when sleeps are skipped: ``set_testing()`` was called, or ``FLASHGEN_TESTING=1``."""
    if _testing_override is not None:
        return _testing_override
    return os.environ.get("FLASHGEN_TESTING", "").strip().lower() in ("1", "true", "yes", "on")


def recorded_sleeps() -> list[float]:
    """The seconds every skipped sleep asked for, oldest first (test mode only)."""
    return list(_recorded)


def clear_recorded() -> None:
    """Forget recorded sleeps (the virtual clock keeps its time: it must never go back)."""
    _recorded.clear()


def now() -> float:
    """Monotonic seconds; in test mode only the virtual time that sleeps have added."""
    return _virtual_now if is_testing() else time.monotonic()


async def sleep(seconds: float) -> None:
    """Wait ``seconds`` (negative counts as zero). In test mode: record, yield, return."""
    global _virtual_now
    seconds = max(0.0, float(seconds))
    if is_testing():
        _recorded.append(seconds)
        _virtual_now += seconds
        await asyncio.sleep(0)  # still a yield point, so other tasks (an emulator) progress
        return
    await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Backoff:
    """How a retry loop waits: exponential with jitter, a cap, an attempt limit and a budget.

    ``attempts`` counts every try, the first included. ``budget`` bounds the total time
    from the first try to the start of the last one (``None``: no bound).

        >>> Backoff(jitter=0).delay(3)
        2.0
        >>> Backoff().delay(1, retry_after=7)
        7.0
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.25
    attempts: int = 6
    budget: float | None = 120.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based).

        A server's Retry-After wins and is never shortened: asking earlier only earns
        another 429. Whether so long a wait fits is the budget's call (see ``retry``).
        Otherwise ``initial * multiplier ** (attempt - 1)``, capped at ``maximum``, minus up
        to ``jitter`` of itself so that many clients do not retry in lockstep.
        """
        if retry_after is not None:
            return max(0.0, float(retry_after))
        exponential = self.initial * self.multiplier ** max(0, attempt - 1)
        capped = min(self.maximum, exponential)
        return capped * (1.0 - self.jitter * random.random())


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    on: Callable[[BaseException], bool],
    backoff: Backoff,
    what: str = "call",
) -> T:
    """Await ``call()`` until it succeeds, retrying the exceptions that ``on`` accepts.

    An exception with a ``retry_after`` attribute (``RateLimitedError``) sets the wait.
    Gives up, re-raising the last exception, when ``backoff.attempts`` are spent or the
    next wait would end beyond ``backoff.budget``.
    """
    started = now()
    attempt = 1
    while True:
        try:
            return await call()
        except Exception as exc:
            if not on(exc) or attempt >= backoff.attempts:
                raise
            wait = backoff.delay(attempt, getattr(exc, "retry_after", None))
            if backoff.budget is not None and now() - started + wait > backoff.budget:
                raise
            log.info("%s failed (%s); try %d in %.2fs", what, exc, attempt + 1, wait)
            await sleep(wait)
            attempt += 1
