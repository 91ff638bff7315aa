"""A randomized fault campaign: seeded schedules of faults, each run through real `flashgen
batch` processes, with the README's invariants checked after each.

``Schedule.generate(seed)`` draws, from one ``random.Random(seed)``:

- the prompt file: a few good rows and hostile ones (markup, quotes, right-to-left and
  astral text, a prompt over the length limit, a ratio the model does not allow);
- faults at the API, per route (``flashgen.emulator.faults``): throttling, 5xx, dropped
  connections, malformed bodies, lost submit answers, expired or corrupt output files,
  failed, stalled and token-echoing jobs;
- faults at S3 (``tests.faults.s3proxy``): SlowDown bursts and short outages;
- a SIGKILL at a random step boundary and count (``flashgen.failpoints``);
- hostile settings: a setting out of its range first (the run must refuse it, exit 2, one
  line, nothing sent), then odd but valid ones (short leases, tiny poll intervals).

``run_schedule`` runs the faulty batch, then a healing rerun with every fault cleared, and
checks after each run: no paid job paid twice (a fingerprint sent again only after its job
failed or was never created); every input in the manifest with a final recorded state and a
reason; no ledger entry left mid-submit; every stored object decodes and matches its
SHA-256; the token in none of stdout, stderr, S3, the state directory or Prefect's
database. It returns how many invariants it checked. ``FaultSchedule.describe`` and the
seed are in every failure message, so ``FUZZ_SEED=<seed> FUZZ_SCHEDULES=1 make fuzz``
reproduces it.
"""

from __future__ import annotations

import csv
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from flashgen.failpoints import POINTS
from flashgen.records import ItemState, LedgerEntry, LedgerState

# Faults per emulator route, each drawn with a rate (the rates of one route add up to < 1).
API_FAULTS = {
    "submit": ["429", "500", "503", "drop", "malformed", "lost-answer"],
    "status": ["429", "500", "502", "drop", "malformed"],
    "result": ["429", "503", "drop", "malformed"],
    "file": ["500", "drop", "expired", "corrupt"],
    # Not "stall": a job that runs for ever holds an emulator worker for the whole campaign.
    "job": ["fail", "echo-auth"],
}
HOSTILE_PROMPTS = [
    'a <script>alert("x")</script> fox & "quotes", commas',
    "\u202eright-to-left fox\u202c with \U0001f98a and \u00e9\u0301",
    "a fox " + "very " * 400 + "long",
    "zero\u200bwidth \ufeffBOM-in-the-middle fox",
]
BAD_SETTINGS = [
    ("FLASHGEN_MAX_IMAGE_BYTES", "-1"), ("FLASHGEN_GALLERY_URL_TTL", "604801"),
    ("RUNCOMFY_BASE_URL", "file:///etc/passwd"), ("FLASHGEN_SEND_LEASE", "0"),
    ("FLASHGEN_STATE_DIR", "/proc/flashgen-campaign"), ("FLASHGEN_S3_SSE", "none-such"),
]
ODD_SETTINGS = [
    {"FLASHGEN_SEND_LEASE": "5"},
    {"FLASHGEN_POLL_INITIAL": "0.01", "FLASHGEN_POLL_MAXIMUM": "0.05"},
    {"FLASHGEN_JOB_TIME_PRIOR": "0.01"}, {"FLASHGEN_STORAGE_BREAKER": "1"},
]
# Each campaign test's figures, a property of its report, for the terminal summary
# (tests/conftest.py adds them up).
CAMPAIGN_PROPERTY = "fault_campaign"
FINAL = {LedgerState.STORED, LedgerState.FAILED, LedgerState.AMBIGUOUS, LedgerState.LOST}


@dataclass
class FaultSchedule:
    seed: int
    good: int  # good prompts
    hostile: list[str]
    ratio_invalid: int  # rows with a ratio the model refuses
    api_faults: list[str]
    s3_slowdowns: int  # 503 SlowDown answers to spread over PUTs and GETs
    s3_outage: float  # seconds of dropped connections from the first request_id write on
    kill: str | None  # FLASHGEN_FAILPOINT for the faulty run
    bad_setting: tuple[str, str] | None
    settings: dict[str, str] = field(default_factory=dict)
    concurrency: int = 2

    @classmethod
    def generate(cls, seed: int) -> FaultSchedule:
        rnd = random.Random(seed)
        faults = []
        for route, kinds in API_FAULTS.items():
            for kind in rnd.sample(kinds, rnd.randint(0, 2)):
                faults.append(f"{route}:{kind}:{rnd.choice((0.1, 0.2, 0.3))}")
        kill = None
        if rnd.random() < 0.4:
            kill = f"{rnd.choice(POINTS)}:{rnd.randint(1, 3)}"
        return cls(
            seed=seed, good=rnd.randint(2, 5),
            hostile=rnd.sample(HOSTILE_PROMPTS, rnd.randint(0, 2)),
            ratio_invalid=rnd.randint(0, 1), api_faults=faults,
            s3_slowdowns=rnd.choice((0, 0, 4, 10)),
            s3_outage=rnd.choice((0, 0, 0, 1.5, 4)),
            kill=kill,
            bad_setting=rnd.choice(BAD_SETTINGS) if rnd.random() < 0.5 else None,
            settings=rnd.choice([{}, *ODD_SETTINGS]),
            concurrency=rnd.randint(1, 3))

    def describe(self) -> str:
        return (f"seed={self.seed}: {self.good} good + {len(self.hostile)} hostile + "
                f"{self.ratio_invalid} bad-ratio rows; api faults {self.api_faults or 'none'}; "
                f"s3 {self.s3_slowdowns} SlowDowns, {self.s3_outage}s outage; kill "
                f"{self.kill or 'none'}; bad setting {self.bad_setting}; settings "
                f"{self.settings}; concurrency {self.concurrency}")

    def write_prompts(self, path: Path) -> int:
        """The prompt file (CSV, header on line 1); returns its number of rows."""
        rows = [(f"campaign {self.seed} fox {n}", "16:9", str(n)) for n in range(self.good)]
        rows += [(text, "1:1", "7") for text in self.hostile]
        rows += [(f"campaign {self.seed} bad ratio {n}", "7:3", "1")
                 for n in range(self.ratio_invalid)]
        random.Random(self.seed).shuffle(rows)
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["prompt", "aspect_ratio", "seed"])
            # Hostile prompts are made unique to this schedule so no two share a fingerprint.
            writer.writerows((p if p.startswith("campaign") else f"{p} #{self.seed}", r, s)
                             for p, r, s in rows)
        return len(rows)


@dataclass
class Tally:
    """What a campaign checked, for pytest's terminal summary."""

    base_seed: int = 0
    schedules: int = 0  # passed
    runs: int = 0
    invariants: int = 0  # checks passed
    failed: list[int] = field(default_factory=list)  # seeds

    @classmethod
    def total(cls, tallies: list[dict]) -> Tally:
        """One tally from each schedule's (``dataclasses.asdict``)."""
        total = cls(base_seed=min((t["base_seed"] for t in tallies), default=0))
        for t in tallies:
            total.schedules += t["schedules"]
            total.runs += t["runs"]
            total.invariants += t["invariants"]
            total.failed += t["failed"]
        return total

    def line(self) -> str:
        text = (f"{self.schedules} schedule(s) passed from FUZZ_SEED={self.base_seed}: "
                f"{self.runs} `flashgen batch` runs, {self.invariants} invariant checks")
        if self.failed:
            text += f"; FAILED seeds: {', '.join(map(str, self.failed))}"
        return text


def run_schedule(stack, schedule: FaultSchedule, tally: Tally) -> None:
    """Run one schedule on ``stack`` (a ``FaultStack``) and check every invariant.

    Raises AssertionError naming the schedule's seed and what broke.
    """
    prefix = f"campaign-{schedule.seed}-{int(time.time() * 1000) % 10**8}"
    env = {**stack.env, "FLASHGEN_PREFIX": prefix, "FLASHGEN_JOB_DEADLINE": "6",
           **schedule.settings}
    stack = dataclasses.replace(stack, prefix=prefix, env=env, outputs=[])
    stack.api.reset()
    stack.api.set_faults([], seed=schedule.seed)
    stack.proxy.clear()
    source = stack.workdir / f"campaign-{schedule.seed}.csv"
    inputs = schedule.write_prompts(source)
    check = _Checker(stack, schedule, tally)
    try:
        if schedule.bad_setting:
            name, value = schedule.bad_setting
            done = stack.batch(str(source), timeout=180, **{name: value})
            tally.runs += 1
            check.refused(done, name)
        stack.api.set_faults(schedule.api_faults, seed=schedule.seed)
        if schedule.s3_slowdowns:
            stack.proxy.slow_down(r"^(PUT|GET) ", times=schedule.s3_slowdowns, every=3)
        if schedule.s3_outage:
            stack.proxy.outage_after(r"^PUT .*/ledger/", b'"state":"submitted"',
                                     seconds=schedule.s3_outage)
        faulty = stack.batch(str(source), "--batch-id", "faulty", "--concurrency",
                             str(schedule.concurrency), failpoint=schedule.kill, timeout=400)
        tally.runs += 1
        killed = faulty.returncode == -9
        check.ended(faulty, killed=killed)
        if not killed:
            check.manifest("faulty", inputs, killed_claims=0)
        stack.api.set_faults([], seed=schedule.seed)
        stack.proxy.clear()
        healed = stack.batch(str(source), "--batch-id", "healed", "--concurrency",
                             str(schedule.concurrency), timeout=400,
                             FLASHGEN_STORAGE_BREAKER="3")
        tally.runs += 1
        check.ended(healed, killed=False)
        check.manifest("healed", inputs, killed_claims=2 * schedule.concurrency if killed else 0,
                       healed=True)
        check.ledger_final()
        check.stored_objects()
        check.no_duplicate_paid()
        check.token_nowhere()
    except AssertionError as exc:
        raise AssertionError(
            f"fault campaign schedule failed; reproduce with FUZZ_SEED={schedule.seed} "
            f"FUZZ_SCHEDULES=1 make fuzz\n  {schedule.describe()}\n  {exc}") from None
    tally.schedules += 1


class _Checker:
    """The invariants, each counted in the tally as it passes."""

    def __init__(self, stack, schedule: FaultSchedule, tally: Tally) -> None:
        self.stack, self.schedule, self.tally = stack, schedule, tally
        self.started = time.time()

    def _ok(self) -> None:
        self.tally.invariants += 1

    def refused(self, done, name: str) -> None:
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, f"bad {name}: exit {done.returncode}: {done.stderr[-1500:]}"
        self._ok()
        assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], \
            f"bad {name}: not one line naming it: {done.stderr[-1500:]}"
        self._ok()
        assert self.stack.api.stats()["submissions"] == 0, f"bad {name}: a job was sent"
        self._ok()

    def ended(self, done, *, killed: bool) -> None:
        if killed:
            assert done.returncode == -9
        else:
            assert done.returncode in (0, 1), \
                f"exit {done.returncode} (a crash, not a batch result): {done.stderr[-3000:]}"
            assert "Traceback" not in done.stderr, done.stderr[-3000:]
            self._ok()
        self._ok()

    def manifest(self, batch_id: str, inputs: int, *, killed_claims: int,
                 healed: bool = False) -> None:
        """Every input in the manifest, in a final state with a reason; "ambiguous" only if
        its POST arrived (or a killed run had claimed it). ``healed``: the run had no faults,
        so every valid input is stored, unless its earlier submit is ambiguous or lost."""
        stats = self.stack.api.stats()
        rows = self.stack.manifest(batch_id)
        assert sorted(r.line for r in rows) == list(range(2, inputs + 2)), \
            f"{batch_id}: an input is missing from the manifest"
        self._ok()
        sent = stats["submit_requests_by_fingerprint"]
        unsent_ambiguous = 0
        for row in rows:
            assert row.state in (ItemState.STORED, ItemState.SKIPPED, ItemState.FAILED,
                                 ItemState.INVALID), row
            if row.state in (ItemState.FAILED, ItemState.INVALID):
                assert row.reason, f"{batch_id}: line {row.line} failed without a reason"
            ambiguous = row.state == ItemState.FAILED and "mbiguous" in (row.reason or "")
            if ambiguous and not sent.get(row.fingerprint):
                unsent_ambiguous += 1
            if healed and row.state == ItemState.FAILED:
                assert ambiguous or "lost" in (row.reason or ""), \
                    f"line {row.line} not stored once every fault was gone: {row.reason}"
            self._ok()
        assert unsent_ambiguous <= killed_claims, \
            f"{batch_id}: {unsent_ambiguous} item(s) ambiguous but never sent"
        self._ok()

    def ledger_final(self) -> None:
        """After the healing run nothing is mid-submit: every entry is final, or submitted
        with its request_id (a job still running at the API, kept for a rerun)."""
        for key in self.stack.keys("ledger/"):
            entry = LedgerEntry.model_validate_json(self.stack.read(key))
            assert entry.state in FINAL or (
                entry.state == LedgerState.SUBMITTED and entry.request_id), \
                f"ledger entry {entry.fingerprint} left {entry.state}: {entry.error}"
            if entry.state in (LedgerState.FAILED, LedgerState.AMBIGUOUS, LedgerState.LOST):
                assert entry.error, f"ledger entry {entry.fingerprint} {entry.state}, no reason"
            self._ok()

    def stored_objects(self) -> None:
        before = self.tally.invariants
        self.stack.check_stored_objects()
        self.tally.invariants = before + max(1, len(self.stack.keys("metadata/")))

    def no_duplicate_paid(self) -> None:
        """A fingerprint is sent again only when its earlier job failed or was cancelled at
        the API (nothing usable was paid for): never while a paid job may exist."""
        stats = self.stack.api.stats()
        ended_unpaid = sum(1 for job in self.stack.api.job_times()
                           if job["status"] in ("failed", "cancelled")
                           and (job["submitted_at"] or 0) >= self.started - 1)
        assert stats["duplicate_submissions"] <= ended_unpaid, \
            (f"{stats['duplicate_submissions']} duplicate submission(s), only {ended_unpaid} "
             f"earlier job(s) failed: {stats['submissions_by_fingerprint']}")
        self._ok()

    def token_nowhere(self) -> None:
        self.stack.assert_token_nowhere()
        self._ok()
