"""Per-job API slots, shared fairly between runs through Prefect's global concurrency limit.

    async with ApiSlots("runcomfy-api", wanted=16) as slots:      # one per flow run
        async def job(item):
            async with slots.slot():        # from the claim until the job is terminal
                ...
        await asyncio.gather(*(job(item) for item in items))
    slots.counters   # Counters(acquired=..., handed_over=..., released=..., max_held=...)

What it guarantees
------------------
* The Prefect global concurrency limit (``runcomfy-api``) stays the one source of truth
  across runs, workers and machines, and the UI shows its real occupancy: every slot a
  job holds is one lease of one slot on the server. Leases last 60 s (the server's
  minimum, ``ge=60`` in ``server/api/concurrency_limits_v2.py``) and one renewer per run
  renews them every 20 s, so the slots of a killed run come back one lease plus one pass of
  the server's repossessor (15 s by default) later, with no one having to clean up.
* A run holds at most ``wanted`` slots, and never a slot without a job: a slot whose job
  ended goes to the run's next waiting job, or back to the server.
* Only ONE coroutine per run (the acquirer) asks the server for slots, one slot at a time,
  and only while the run has jobs waiting. A waiting job costs nothing but a future.

Why not the alternatives
------------------------
* **A share for the whole batch** (the former ``concurrency(occupy=share)``) starves other
  runs: a 2,000-image batch holding the whole limit keeps a 3-image on-demand run waiting
  for hours, and limit 3 with two runs asking 2 leaves one slot idle for the entire batch.
* **Prefect's per-job ``concurrency()``**: every blocked job polls on its own and sleeps the
  server's ``Retry-After`` (average occupancy × blocked/limit, up to 30 s, prefect #23183),
  and releases do not wake local waiters. With thousands of waiters the limit's slots sit
  idle for seconds after every job, and the server takes thousands of polls.
* **One acquirer per run** polls at a short fixed interval (``poll_interval``, 0.25 s by
  default, bounded to 0.05–2 s). One poller per *run* is cheap (a few requests a second,
  however many items), so it can ignore a long ``Retry-After``: a slot freed on the server
  is taken again within one interval (an eighth of a 2 s job; half that on average), and
  polling faster would only add server writes (each denial updates the limit's row). A
  job that ends inside a run hands its slot to the run's next waiting job with no server
  round trip at all, so a run that has the API to itself keeps it full at local speed.

Fairness
--------
A run must know whether giving a slot back would help anyone. ``denied_slots`` on the limit
cannot tell it: every denial of *this* run's own acquirer counts there too; it decays by
``floor(seconds since the row was last written / average occupancy)``
(``server/models/concurrency_limits_v2.py``), and every increment, release and denial
rewrites the row, so when the limit is written more often than once per average job it
never decays at all; and the client's ``GlobalConcurrencyLimitResponse`` does not carry
it. No v2 endpoint lists leases' holders either. So runs say it themselves, with three
companion limits that are themselves leased (a dead run's marks expire like its slots)
and visible in the UI:

* ``<limit>:runs`` — one slot per run that is using the limit: ``R`` runs share it;
* ``<limit>:starved`` — one slot per run that has jobs waiting and holds fewer than
  ``min(wanted, fair_share)`` slots, where ``fair_share = max(1, limit // R)``; and per
  run that has announced itself but is still planning (reading its prompt file and the
  ledger, for at most ``PLANNING_GRACE``), so that its first job need not wait for
  another run's jobs to end;
* ``<limit>:short`` — per *short* run (every job it has left fits in the limit at once:
  an on-demand run of a few images), as many slots as it has jobs waiting for one.

A sharded batch (``flashgen.shards``) is ONE run here, however many shards run at once:
its parent holds the batch's ``runs`` mark, and each shard run (``group=<batch id>``)
marks ``<limit>:group:<batch id>`` instead, one slot per shard running. A shard's fair
share is the batch's (``limit // runs``) divided among the shards running, so fifty shards
beside a 3-image run count as two runs, not fifty-one; a shard is never short (its batch
is not). The parent removes the group's limit when the batch ends (``forget_group``).

When a job ends and its run has another job waiting, the slot is handed over locally
unless another run needs it more, and then it goes back to the server, and this run's
acquirer stays out of the way so the other run's acquirer takes it within one poll
interval:

* a short run goes first (shortest work first: it is served in one round, and the
  others lose one job time of one slot per job it runs): a run that is not short gives
  back each slot whose job ends, up to the slots short runs wait for, and leaves free
  slots to them; a short run never gives a slot back while it has jobs waiting;
* otherwise, a slot goes back when another run is starved *and* this run holds more
  than its fair share. Asking for both (not either) keeps the API full without churn:
  limit 3 with two runs wanting 2 settles at 2 + 1 (the run with 1 has its fair share,
  so it is not starved) instead of passing a slot back and forth through the server
  after every job.

So a 4-image run arriving beside a 2,000-image batch gets all 4 slots as the batch's
jobs end and finishes in about two job times, and two batches started together split the
limit from their first jobs. Free slots are always taken (work-conserving): the fair
share is a floor for others, not a ceiling for a run alone. What this does not prevent:
short runs arriving without pause would keep a long batch waiting; each of them is
small, and the batch takes its slots back whenever none waits.

A missing or inactive limit means no sharing: the run limits itself to ``wanted`` and
warns, naming ``flashgen provision``, which creates the limit.

Limits worth knowing: expired leases are taken back by the server's repossessor, which
Prefect's ephemeral server (no ``PREFECT_API_URL``) does not run; on SQLite a busy server
answers some writes 503, and the Prefect client then pauses 2 s before giving up, so an
acquisition can stall that long (PostgreSQL does not do this).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

LEASE_SECONDS = 60.0  # the server's minimum lease: a dead run's slots return soonest
PLANNING_GRACE = 10.0  # how long an announced run, still planning, asks others to leave room
RENEW_EVERY = LEASE_SECONDS / 3  # two renewals may fail before a lease is at risk
POLL_BOUNDS = (0.05, 2.0)
WAITING_LOG_EVERY = 30.0  # repeat "waiting for a slot" at most this often
MARKER_LIMIT = 100_000  # companion limits count runs; they must never refuse one


@dataclass
class Counters:
    """What a run's slots did: for tests, the bench and the run's final log line."""

    acquired: int = 0  # slots taken from the server
    handed_over: int = 0  # slots passed from a finished job to a waiting one, locally
    released: int = 0  # slots given back to the server
    yielded: int = 0  # ... of them given back because another run was starved
    max_held: int = 0  # most slots this run held at once
    denied: int = 0  # acquisitions the server refused (limit full)


@dataclass
class _Slot:
    """One held slot: a lease on the server (None when the limit does not exist)."""

    lease_id: UUID | None
    lost: bool = False  # the lease expired before we could renew it


class _Mark:
    """This run's mark on a companion limit: ``count`` slots of it (0: none), set idempotently."""

    def __init__(self, client: PrefectClient, name: str) -> None:
        self.client, self.name = client, name
        self.lease_id: UUID | None = None
        self.count = 0

    async def set(self, count: int | bool) -> None:
        count = int(count)
        if count == self.count:
            return
        if self.lease_id is not None:
            lease_id, self.lease_id, self.count = self.lease_id, None, 0
            await self.client.release_concurrency_slots_with_lease(lease_id)
        if count > 0:
            answer = await self.client.increment_concurrency_slots_with_lease(
                names=[self.name], slots=count, mode="concurrency", lease_duration=LEASE_SECONDS)
            self.lease_id, self.count = UUID(answer.json()["lease_id"]), count


@dataclass(frozen=True)
class _View:
    """The shared limit as this run last read it."""

    limit: int = 0
    active: int = 0
    runs: int = 1
    others_starved: int = 0
    others_short: int = 0  # slots that short runs (see the module doc) are waiting for
    members: int = 1  # runs of this run's group (the shards of one batch), itself included

    def fair_share(self) -> int:
        """This run's fair share: the run's, or its group's divided among its members (which
        may be 0: a shard then gives a starved run every slot whose job ends)."""
        share = max(1, self.limit // max(self.runs, 1))
        return share if self.members <= 1 else share // self.members


class ApiSlots:
    """A run's slots of a Prefect global concurrency limit, one per job (see the module doc).

    ``wanted`` caps the slots this run holds; ``jobs`` is how many jobs it will run (None
    while it is still planning: see ``plan``); ``poll_interval`` is how often the run's one
    acquirer asks the server while jobs wait and the limit is full; ``group`` makes the run
    one shard of a sharded batch (see "A sharded batch" in the module doc). ``logger`` defaults to
    the Prefect run logger inside a run, else ``logging.getLogger("flashgen.slots")``.
    """

    def __init__(self, limit_name: str, wanted: int, *, jobs: int | None = None,
                 poll_interval: float = 0.25, group: str | None = None,
                 logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        if wanted < 1:
            raise ValueError(f"wanted must be at least 1, not {wanted}")
        self.limit_name = limit_name
        self.group = group  # a shard's batch id: its siblings and it count as one run
        self.wanted = wanted
        self.jobs = jobs
        self.started = 0  # jobs that have had a slot
        self.poll_interval = min(max(poll_interval, POLL_BOUNDS[0]), POLL_BOUNDS[1])
        self.counters = Counters()
        self.shared = False  # True once the limit was found and is active
        self._log = logger or _default_logger()
        self._waiters: deque[asyncio.Future[_Slot]] = deque()
        self._held: list[_Slot] = []
        self._view = _View()
        self._wake = asyncio.Event()
        self._client: PrefectClient | None = None
        self._marks: dict[str, _Mark] = {}
        self._background: list[asyncio.Task[None]] = []
        self._chores: set[asyncio.Future[Any]] = set()
        self._last_waiting_log = -WAITING_LOG_EVERY
        self._view_due = 0.0
        self._announced_at = time.monotonic()
        self._yielded_to_short = 0  # since the view was last read

    # -- the run's side -------------------------------------------------------------------

    async def __aenter__(self) -> ApiSlots:
        self._client = await get_client().__aenter__()
        found = await self._read_limit(self.limit_name)
        self.shared = found is not None and found.active
        if not self.shared:
            self._log.warning(
                "global concurrency limit %r %s: this run limits only itself (to %d at the "
                "API); `flashgen provision` creates it", self.limit_name,
                "does not exist" if found is None else "is inactive", self.wanted)
        else:
            self._view = _View(limit=found.limit, active=found.active_slots)
            for role in ("runs", "starved", "short"):
                self._marks[role] = _Mark(self._client, await self._companion(role))
            if self.group is None:
                await self._marks["runs"].set(True)
            else:  # the batch's parent holds its runs mark; a shard counts among its siblings
                self._marks["group"] = _Mark(self._client,
                                             await self._companion(group_role(self.group)))
                await self._marks["group"].set(True)
            await self._set_starved(self._planning())  # announced: leave room while we plan
            self._background.append(asyncio.create_task(self._renew_forever()))
        self._background.append(asyncio.create_task(self._acquire_forever()))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(Exception):  # the leases expire on their own anyway
            await asyncio.gather(*(self._give_back(slot) for slot in list(self._held)),
                                 *(mark.set(False) for mark in self._marks.values()))
        if self._client is not None:
            await self._client.__aexit__(None, None, None)

    def plan(self, jobs: int, wanted: int | None = None) -> None:
        """The run has planned: ``jobs`` jobs to run, at most ``wanted`` at once."""
        if wanted is not None:
            if wanted < 1:
                raise ValueError(f"wanted must be at least 1, not {wanted}")
            self.wanted = wanted
        self.jobs = jobs
        self._wake.set()  # the acquirer settles the marks

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one API slot for the body: waits for one, then passes it on or gives it back."""
        waiter: asyncio.Future[_Slot] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        try:
            held = await waiter
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        try:
            yield
        finally:
            await asyncio.shield(self._job_ended(held))

    @property
    def held(self) -> int:
        return len(self._held)

    # -- handing slots around -------------------------------------------------------------

    async def _job_ended(self, slot: _Slot) -> None:
        waiter = self._next_waiter()
        wanted_by = self._wanted_by() if waiter is not None else None
        if waiter is not None and wanted_by is None:
            self.counters.handed_over += 1
            self._start(waiter, slot)
            return
        if waiter is not None:
            self._waiters.appendleft(waiter)  # it waits for the acquirer instead
            self.counters.yielded += 1
            if wanted_by == "short":
                self._yielded_to_short += 1
        await self._give_back(slot)
        self._wake.set()

    def _wanted_by(self) -> str | None:
        """Who needs a slot more than this run's next job: a short run waiting for it (up to
        the slots it waits for, per reading of the view), or a starved run while we are
        rich; None if nobody. A short run yields to nobody: it goes first."""
        if self._short():
            return None
        if self._yielded_to_short < self._view.others_short:
            return "short"
        if self._view.others_starved > 0 and self.held > self._view.fair_share():
            return "starved"
        return None

    def _alone(self) -> bool:
        """The last full view saw no other run (a shard never is: its siblings are not
        among the runs)."""
        view = self._view
        return (self.group is None and view.runs <= 1 and not view.others_starved
                and not view.others_short)

    def _start(self, waiter: asyncio.Future[_Slot], slot: _Slot) -> None:
        self.started += 1
        waiter.set_result(slot)

    def _planning(self) -> bool:
        """Announced, not planned yet, and not for long: others leave this run its share."""
        return (self.jobs is None and self.started == 0
                and time.monotonic() - self._announced_at < PLANNING_GRACE)

    def _short(self) -> bool:
        """Every job this run has left fits in the limit at once (never a shard's: its
        batch is larger than the shard)."""
        return (self.group is None and self.jobs is not None and self._view.limit > 0
                and self.jobs - self.started <= self._view.limit)

    def _next_waiter(self) -> asyncio.Future[_Slot] | None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                return waiter
        return None

    def _abandon(self, waiter: asyncio.Future[_Slot]) -> None:
        """A waiting job was cancelled; if a slot reached it meanwhile, pass that on."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        if waiter.done() and not waiter.cancelled():
            self._spawn(self._job_ended(waiter.result()))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._chores.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._chores.discard)

    async def _give_back(self, slot: _Slot) -> None:
        self._held.remove(slot)
        self.counters.released += 1
        if slot.lease_id is None or slot.lost:
            return
        try:
            await self._client.release_concurrency_slots_with_lease(slot.lease_id)
        except (httpx.HTTPError, OSError) as exc:  # never fail a job over it: the lease expires
            self._log.warning("giving a slot of %s back failed (%s); its lease expires within "
                              "%.0f s", self.limit_name, exc, LEASE_SECONDS)

    # -- the one acquirer -----------------------------------------------------------------

    async def _acquire_forever(self) -> None:
        # On a 503 (SQLite's "database is locked" under load) the client sleeps 2, 4, 8 ...
        # s between retries; with retries off it sleeps once (2 s, prefect client/base.py)
        # and this loop tries again at its own pace. The setting lives in this task's
        # context only: releases and renewals keep the client's retries.
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
            while True:
                try:
                    if await self._acquire_once():
                        continue  # more may be waiting: ask again at once
                except (httpx.HTTPError, OSError) as exc:  # the server blinked: leases hold
                    busy = (isinstance(exc, httpx.HTTPStatusError)
                            and exc.response.status_code >= 500)
                    self._log.log(logging.DEBUG if busy else logging.WARNING,
                                  "asking %s for a slot failed (%s); trying again",
                                  self.limit_name, exc)
                await self._nap()

    async def _acquire_once(self) -> bool:
        """One round of the acquirer; True to go again at once, False to nap first."""
        if not self._waiting():
            # Cleared before the marks are set, not after: a job that asks for a slot while
            # they are on the wire wakes this round's wait instead of being forgotten (the
            # run would wait for ever with no slot asked for).
            self._wake.clear()
            planning = self._planning()
            await self._set_starved(planning)
            await self._set_short(0)
            with contextlib.suppress(TimeoutError):  # planning ends by itself after its grace
                await asyncio.wait_for(self._wake.wait(), PLANNING_GRACE if planning else None)
            return True
        wants_more = self.held < self.wanted
        if self.shared and time.monotonic() >= self._view_due:
            await self._refresh_view(wants_more)
        if not wants_more or self._should_hold_back():
            return False
        slot = await self._take_one()
        if slot is None:
            return False
        await self._deliver(slot)
        return True

    def _waiting(self) -> int:
        return sum(not w.done() for w in self._waiters)

    def _should_hold_back(self) -> bool:
        """Leave free slots to short runs waiting for them, and to a starved run while we
        already have our fair share. A short run takes every free slot it can use."""
        view = self._view
        if self._short():
            return False
        if view.others_short and view.limit - view.active <= view.others_short:
            return True
        return view.others_starved > 0 and self.held >= view.fair_share()

    async def _take_one(self) -> _Slot | None:
        if not self.shared:
            return self._hold(_Slot(lease_id=None))
        try:
            answer = await self._client.increment_concurrency_slots_with_lease(
                names=[self.limit_name], slots=1, mode="concurrency",
                lease_duration=LEASE_SECONDS)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:
                raise
            self.counters.denied += 1
            self._say_waiting()
            return None
        self.counters.acquired += 1
        return self._hold(_Slot(lease_id=UUID(answer.json()["lease_id"])))

    def _hold(self, slot: _Slot) -> _Slot:
        self._held.append(slot)
        self.counters.max_held = max(self.counters.max_held, self.held)
        return slot

    async def _deliver(self, slot: _Slot) -> None:
        waiter = self._next_waiter()
        if waiter is None:  # every waiter left meanwhile: nobody needs it
            await self._give_back(slot)
        else:
            self._start(waiter, slot)

    async def _nap(self) -> None:
        # Jitter keeps the acquirers of runs started together from polling in lockstep.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(),
                                   self.poll_interval * random.uniform(0.8, 1.2))
        self._wake.clear()

    async def _refresh_view(self, wants_more: bool) -> None:
        """Read the limit and its companions (four reads; five for a shard), once a poll
        interval while the run wants more slots; a run at its cap only needs the view for
        job-end decisions, so it reads it a quarter as often, and while it is alone only
        ``runs``: any other run marks that first (a sharded batch through its parent), so
        one read tells when the other three matter again. Each read costs the server about
        2 ms of CPU: for a run alone that was a fifth of its share per image in ``make
        bench``'s ``single``."""
        if not wants_more and self._alone():
            runs = await self._read_limit(self._marks["runs"].name)
            if runs is not None and runs.active_slots <= 1:
                self._view_due = time.monotonic() + self.poll_interval * 4
                await self._set_marks()
                return
        names = [self.limit_name] + [mark.name for mark in self._marks.values()]
        limit, runs, starved, short, *group = await asyncio.gather(
            *(self._read_limit(n) for n in names))
        if None in (limit, runs, starved, short, *group):
            return  # deleted under us: keep the last view; leases still bound us
        mine = {role: mark.count for role, mark in self._marks.items()}
        self._view = _View(limit=limit.limit, active=limit.active_slots,
                           runs=max(runs.active_slots, 1),
                           others_starved=max(starved.active_slots - mine["starved"], 0),
                           others_short=max(short.active_slots - mine["short"], 0),
                           members=max(group[0].active_slots, 1) if group else 1)
        self._yielded_to_short = 0
        self._view_due = time.monotonic() + self.poll_interval * (1 if wants_more else 4)
        await self._set_marks()

    async def _set_marks(self) -> None:
        """This run's starved and short marks, as the view and its jobs say now."""
        waiting = self._waiting()
        await self._set_starved(waiting > 0
                                and self.held < min(self.wanted, self._view.fair_share()))
        await self._set_short(min(waiting, self.wanted - self.held) if self._short() else 0)

    async def _set_starved(self, starved: bool) -> None:
        if "starved" in self._marks:
            await self._marks["starved"].set(starved)

    async def _set_short(self, waiting: int) -> None:
        if "short" in self._marks:
            await self._marks["short"].set(max(waiting, 0))

    def _say_waiting(self) -> None:
        now = time.monotonic()
        if now - self._last_waiting_log >= WAITING_LOG_EVERY:
            self._last_waiting_log = now
            self._log.info("waiting for a slot of %s: %d/%d in use (this run holds %d, wants %d)",
                           self.limit_name, self._view.active, self._view.limit, self.held,
                           self.wanted)

    # -- leases ---------------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            slots = [s for s in self._held if s.lease_id is not None and not s.lost]
            marks = [m.lease_id for m in self._marks.values() if m.lease_id is not None]
            renewed = await asyncio.gather(*(self._renew(s.lease_id) for s in slots))
            await asyncio.gather(*(self._renew(lease) for lease in marks))
            for slot, ok in zip(slots, renewed, strict=True):
                # A slot given back while its renewal was on the wire is gone, not lost.
                if not ok and any(held is slot for held in self._held):
                    slot.lost = True
                    self._log.warning("a lease on %s expired before it was renewed: the job "
                                      "goes on, but the limit no longer counts it",
                                      self.limit_name)

    async def _renew(self, lease_id: UUID) -> bool:
        try:
            await self._client.renew_concurrency_lease(lease_id, lease_duration=LEASE_SECONDS)
        except httpx.HTTPStatusError as exc:
            return exc.response.status_code != 410  # 410 Gone: expired or revoked
        except httpx.TransportError:
            return True  # next time; the lease outlives two missed renewals
        return True

    # -- the server -----------------------------------------------------------------------

    async def _read_limit(self, name: str) -> Any:
        try:
            return await self._client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None

    async def _companion(self, role: str) -> str:
        """The name of a companion limit (created on first use; any run may create it)."""
        name = f"{self.limit_name}:{role}"
        if await self._read_limit(name) is not None:
            return name
        try:
            await self._client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=MARKER_LIMIT))
        except (ObjectAlreadyExists, httpx.HTTPStatusError):
            # Two runs creating it at once: SQLite answers the loser with a 500, not a 409.
            if await self._read_limit(name) is None:
                raise
        return name


def group_role(group: str) -> str:
    """The companion limit's role that counts the running shards of batch ``group``."""
    return f"group:{group}"


async def forget_group(limit_name: str, group: str) -> None:
    """Remove a finished batch's group limit (``<limit>:group:<batch id>``), if it exists."""
    async with get_client() as client:
        with contextlib.suppress(ObjectNotFound):
            await client.delete_global_concurrency_limit_by_name(
                f"{limit_name}:{group_role(group)}")


def _default_logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("flashgen.slots")
