"""What every task of one batch shares: the API client, the store, the ledger and the budget.

Built once per flow run (one HTTP connection pool, one boto3 client) and handed to each
task, so tasks stay thin and testable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from flashgen.client import RunComfyClient
from flashgen.errors import AccountError, BudgetError, StorageError
from flashgen.ledger import Ledger
from flashgen.records import LedgerEntry
from flashgen.settings import Settings
from flashgen.stopping import BatchStop
from flashgen.storage import Store

log = logging.getLogger(__name__)


@dataclass
class SubmitBudget:
    """Paid submissions this run may still send: ``max_items`` and ``max_cost`` as a count.

    Counted at the POST itself, so retries, resubmissions and ``--force`` all count. An
    ``AccountError`` halts it: nothing more is sent this run (an empty account refuses all).
    """

    limit: int | None = None  # None: no cap
    sent: int = 0
    halted: str | None = None  # why the account refuses every submit (an AccountError)

    def spend(self) -> None:
        if self.halted:
            raise AccountError(f"not sent: the API refused an earlier submit for the account "
                               f"({self.halted})")
        if self.limit is not None and self.sent >= self.limit:
            raise BudgetError(f"budget: {self.sent} paid submission(s) sent, the cap is "
                              f"{self.limit}; not sending more")
        self.sent += 1

    def halt(self, reason: str) -> None:
        """The account cannot pay (funds, model disabled): send nothing more this run."""
        self.halted = self.halted or reason

    def refund(self) -> None:
        """A submit that certainly created no job (refused, or never delivered)."""
        self.sent -= 1


@dataclass
class StorageBreaker:
    """Stops a run paying for jobs whose results it cannot keep.

    S3 refusing writes for good (403 after an expired role or a policy change, 404 for a
    bucket that is gone) fails every item after its job is paid. After ``limit`` such
    failures in a row (a stored item resets the count; transient errors, which botocore and
    the tasks retry, do not count) the run sends no new job: what is in flight ends with
    its request_id in the ledger or the journal, and the run ends Failed saying why.

        >>> breaker = StorageBreaker(limit=1)
        >>> breaker.record(StorageError("S3 PutObject: AccessDenied (403)"))
        >>> breaker.reason.split(" (")[0]
        'storage: 1 S3 request(s) refused in a row, not transient'
    """

    limit: int = 3
    failures: int = 0
    last: str | None = None

    def record(self, exc: BaseException | None) -> None:
        """One item's outcome: ``None`` stored (resets), a permanent StorageError counts."""
        if exc is None:
            self.failures = 0
        elif isinstance(exc, StorageError) and not exc.transient and self.reason is None:
            self.failures += 1
            self.last = str(exc)

    @property
    def reason(self) -> str | None:
        """Why the run stopped submitting, once it has; else None."""
        if self.failures < self.limit:
            return None
        return (f"storage: {self.failures} S3 request(s) refused in a row, not transient "
                f"(last: {self.last}); no new job sent")

    def check(self) -> None:
        """Before a submit: ``StorageError`` (permanent) once the breaker is open."""
        if self.reason:
            raise StorageError(f"not sent: {self.reason}")


@dataclass
class BatchContext:
    client: RunComfyClient
    store: Store
    ledger: Ledger
    settings: Settings
    batch_id: str
    spool: Path  # where fetched files wait between the fetch and store tasks
    flow_run_id: str | None = None
    deployment: str | None = None
    force: bool = False
    resubmit_ambiguous: bool = False
    budget: SubmitBudget = field(default_factory=SubmitBudget)
    stop: BatchStop = field(default_factory=lambda: BatchStop(grace=0))  # see flashgen.stopping
    breaker: StorageBreaker = field(default_factory=StorageBreaker)


def prefect_run_over(entry: LedgerEntry) -> bool:
    """True when the flow run that wrote ``entry`` has ended (so it is sending nothing)."""
    return bool(entry.owner_run) and _run_is_final(entry.owner_run)


_FINAL_RUNS: set[str] = set()  # a final state never changes back: remember only those


def _run_is_final(flow_run_id: str) -> bool:
    if flow_run_id in _FINAL_RUNS:
        return True
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except Exception as exc:  # unknown run, or no server: the lease decides instead
        log.debug("cannot read flow run %s: %s", flow_run_id, exc)
        return False
    if state is not None and state.is_final():
        _FINAL_RUNS.add(flow_run_id)
        return True
    return False
