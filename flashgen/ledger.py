"""The ledger: what has been paid for, per item fingerprint, so nothing is ever paid twice.

One JSON object per fingerprint, ``<prefix>/ledger/<fingerprint>.json``, moves through::

    (none) ──claim──▶ sending ──request_id──▶ submitted ──▶ stored
                         │                        ├──────▶ failed   (the job failed: nothing paid)
                         │                        └──────▶ lost     (the API answers 404 for it)
                         ├── refused / not sent ─▶ failed
                         └── answer lost, or the sender vanished ─▶ ambiguous

Every state has a way out. ``ambiguous`` and ``lost`` are not resent by themselves (a
paid job may exist, or did and expired): ``--resubmit-ambiguous`` on a rerun, or
``flashgen ledger resolve FP --retry``, releases them to be sent again, and
``ledger resolve FP --request-id ID`` adopts another request (also over a ``submitted``
entry whose request_id was mistyped: the next run that polls it marks it ``lost``).

The only window in which a paid job can exist without a known request_id is ``sending``:
it is written (a conditional put) immediately before the POST, with a lease that covers one
submit request, and the request_id is recorded immediately after. Everything else is safe
to decide from the ledger alone:

==============  ====================================  =======================================
found           condition                             decision
==============  ====================================  =======================================
nothing         –                                     SEND (we created ``sending``)
submitted       –                                     RESUME its request_id (never resend)
stored          not ``force``                         SKIP
stored          ``force``                             SEND (take over, costs money)
failed          –                                     SEND (no paid output exists)
ambiguous       request_id in the local journal       RESUME it (adopted)
ambiguous       ``resubmit_ambiguous``                SEND (may pay twice: asked for)
ambiguous       otherwise                             AMBIGUOUS (reported, not resent)
lost            ``resubmit_ambiguous``                SEND (its job is gone at the API)
lost            otherwise                             AMBIGUOUS (reported as lost, not resent)
sending         request_id in the local journal       RESUME it (adopted)
sending         owner alive and lease running         WAIT (then decide again)
sending         owner gone, or lease ran out          mark ambiguous, then as above
==============  ====================================  =======================================

The request_id the API returned reaches durable storage before anything can retry the
submit: it goes first to a local ``Journal`` (one fsync'ed file per item in the state
directory, which every run on the machine reads), then to the ledger (one PutObject, which
botocore tries ``storage.S3_ATTEMPTS`` times). Only once the ledger holds it is the journal
file removed. If S3 is down longer than that, the submit task fails and Prefect retries it
(``flashgen.tasks.policy``): the retry's ``decide`` finds the request_id in the journal and records
it again; it never resends the POST. A rerun after a crash does the same.

This module imports no Prefect: ``decide`` is one synchronous step over ``Store``'s
conditional puts, and the caller (``flashgen.tasks.generation``) loops on ``WAIT``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flashgen.errors import InputError, StorageError
from flashgen.preflight import writable_folder
from flashgen.records import LedgerEntry, LedgerState
from flashgen.storage import Store

log = logging.getLogger(__name__)

# How long to wait before re-reading an item another live run is sending right now.
WAIT_FOR_SENDER = 0.5


class Action(StrEnum):
    """What ``Ledger.decide`` tells the caller to do with an item."""

    SEND = "send"  # we hold a fresh 'sending' entry: POST it now
    RESUME = "resume"  # a request_id is known: poll it, never resend
    SKIP = "skip"  # already stored
    AMBIGUOUS = "ambiguous"  # maybe sent, answer lost: not resent unless asked
    WAIT = "wait"  # another live run is sending it right now: ask again shortly


@dataclass(frozen=True)
class Decision:
    action: Action
    entry: LedgerEntry | None = None  # what the ledger holds now (ours after SEND)
    request_id: str | None = None
    reason: str | None = None

    @property
    def attempts(self) -> int:
        """Submits sent for this fingerprint before this decision."""
        return self.entry.attempts if self.entry else 0


def this_machine() -> str:
    """Where a process id means one process: the host name and, when it can be read, the
    pid namespace. Containers started with ``--network host`` share the host's name but
    each has its own process ids, so a pid is only checked inside its own namespace.

    >>> this_machine().startswith(socket.gethostname())
    True
    """
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}+pidns{namespace}"


def new_owner() -> str:
    """Who holds a claim: ``machine:pid:random`` (``this_machine``), unique per run (a rerun
    is another owner)."""
    return f"{this_machine()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_process_gone(owner: str | None) -> bool:
    """True when ``owner`` names a process of this machine (this host and pid namespace)
    that no longer exists.

    >>> owner_process_gone(new_owner())
    False
    """
    machine, _, rest = (owner or "").partition(":")
    pid_text = rest.partition(":")[0]
    if machine != this_machine() or not pid_text.isdigit():
        return False  # another machine's run: only its lease or its flow run can tell
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Journal:
    """Request_ids not yet in the ledger, one fsync'ed file each, readable by any later run.

    It also remembers them in memory, so a retry in this process finds a request_id even
    when the state directory failed after the preflight (``probe``) passed.

    >>> import tempfile
    >>> journal = Journal(Path(tempfile.mkdtemp()), scope="bucket/prefix")
    >>> journal.remember("abc", "req-1"); journal.recall("abc")
    True
    'req-1'
    >>> journal.forget("abc"); journal.recall("abc") is None
    True
    """

    def __init__(self, directory: Path, scope: str) -> None:
        # One folder per bucket/prefix: the same fingerprint elsewhere is another item.
        self.folder = Path(directory) / "journal" / hashlib.sha256(scope.encode()).hexdigest()[:16]
        self._memory: dict[str, str] = {}

    def probe(self) -> None:
        """Before the first paid request: ``InputError`` naming FLASHGEN_STATE_DIR unless
        its journal folder can be created, written and fsync'ed."""
        writable_folder(self.folder, "FLASHGEN_STATE_DIR")

    def remember(self, fingerprint: str, request_id: str) -> bool:
        """Keep ``request_id``; True once it is on disk, False when only memory has it."""
        self._memory[fingerprint] = request_id
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._path(fingerprint)
            temporary = path.with_suffix(".tmp")
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump({"fingerprint": fingerprint, "request_id": request_id,
                           "at": time.time()}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            log.error("item %s: request_id %s not written to the journal in %s (%s)",
                      fingerprint, request_id, self.folder, exc)
            return False
        _fsync_folder(self.folder)
        return True

    def recall(self, fingerprint: str) -> str | None:
        if fingerprint in self._memory:
            return self._memory[fingerprint]
        try:
            return json.loads(self._path(fingerprint).read_text(encoding="utf-8"))["request_id"]
        except (OSError, ValueError, KeyError):
            return None

    def forget(self, fingerprint: str) -> None:
        self._memory.pop(fingerprint, None)
        try:
            self._path(fingerprint).unlink(missing_ok=True)
        except OSError as exc:  # a stale file is harmless: the ledger holds the request_id
            log.warning("journal file of %s not removed: %s", fingerprint, exc)

    def _path(self, fingerprint: str) -> Path:
        return self.folder / f"{fingerprint}.json"


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the file itself is synced
    finally:
        os.close(fd)


class ItemRef(BaseModel):
    """What the ledger needs to know about an item: its fingerprint and what it asks for."""

    fingerprint: str
    model: str
    inputs: dict[str, Any]
    batch_id: str | None = None


class Ledger:
    """The never-pay-twice state machine over one Store (see the module docstring).

    ``owner_gone(entry)`` may add knowledge the ledger cannot have (for example that the
    owner's Prefect flow run is over); by default only a dead process on this host counts.
    """

    def __init__(
        self,
        store: Store,
        journal: Journal,
        *,
        owner: str | None = None,
        owner_run: str | None = None,
        send_lease: float = 60.0,
        owner_gone: Callable[[LedgerEntry], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.journal = journal
        self.owner = owner or new_owner()
        self.owner_run = owner_run
        self.send_lease = send_lease
        self._owner_gone = owner_gone
        self._clock = clock

    # --- deciding -------------------------------------------------------------------------

    def decide(self, item: ItemRef, *, force: bool = False,
               resubmit_ambiguous: bool = False) -> Decision:
        """One step: read (or create) the entry and say what to do. Loops only on lost races."""
        while True:
            fresh = self._entry(item, LedgerState.SENDING, lease_until=self._lease())
            if self.store.claim(fresh):
                return Decision(Action.SEND, entry=fresh)
            found = self.store.read_ledger(item.fingerprint)
            if found is None:
                continue  # it vanished between our put and our read: try again
            entry, etag = found
            decision = self._decide(item, entry, etag, force, resubmit_ambiguous)
            if decision is not None:
                return decision

    def _decide(self, item: ItemRef, entry: LedgerEntry, etag: str, force: bool,
                resubmit_ambiguous: bool) -> Decision | None:
        state = entry.state
        if state == LedgerState.SUBMITTED and entry.request_id:
            return Decision(Action.RESUME, entry=entry, request_id=entry.request_id)
        if state == LedgerState.STORED and not force:
            return Decision(Action.SKIP, entry=entry, request_id=entry.request_id,
                            reason="already stored")
        if state in (LedgerState.SENDING, LedgerState.CLAIMED, LedgerState.AMBIGUOUS):
            journaled = self.journal.recall(item.fingerprint)
            if journaled:
                return self._adopt(item, entry, journaled, "found in the local journal")
        if state in (LedgerState.SENDING, LedgerState.CLAIMED):
            if not self._sender_gone(entry):
                return Decision(Action.WAIT, entry=entry,
                                reason=f"{entry.owner} is sending it right now")
            entry = entry.model_copy(update={
                "state": LedgerState.AMBIGUOUS,
                "error": f"{entry.owner} was sending it and is gone; the submit may have "
                         "reached the API"})
            if not self.store.replace_ledger(entry, etag):
                return None
            log.warning("item %s: %s", item.fingerprint, entry.error)
            found = self.store.read_ledger(item.fingerprint)
            if found is None:
                return None
            entry, etag = found
            state = entry.state
        if state == LedgerState.AMBIGUOUS and not resubmit_ambiguous:
            return Decision(Action.AMBIGUOUS, entry=entry,
                            reason=f"ambiguous submission, not resent: {entry.error}")
        if state == LedgerState.LOST and not resubmit_ambiguous:
            return Decision(Action.AMBIGUOUS, entry=entry, request_id=entry.request_id,
                            reason=f"lost, not resent: {entry.error}; `flashgen ledger "
                                   f"resolve {item.fingerprint} --retry` (or "
                                   "--resubmit-ambiguous) sends it again, --request-id "
                                   "adopts another request")
        if state == LedgerState.SUBMITTED:  # without a request_id: an unreadable write
            return None
        # stored with force, failed, or ambiguous or lost on request: take it over.
        fresh = self._entry(item, LedgerState.SENDING, lease_until=self._lease(),
                            attempts=entry.attempts)
        if not self.store.replace_ledger(fresh, etag):
            return None
        if state != LedgerState.FAILED:
            log.info("item %s: sending a %s item again, as asked", item.fingerprint, state)
        return Decision(Action.SEND, entry=fresh)

    def _adopt(self, item: ItemRef, entry: LedgerEntry, request_id: str,
               how: str) -> Decision:
        adopted = self._entry(item, LedgerState.SUBMITTED, request_id=request_id,
                              attempts=max(entry.attempts, 1))
        self._write(adopted)
        self.journal.forget(item.fingerprint)
        log.info("item %s: request_id %s %s; resuming it", item.fingerprint, request_id, how)
        return Decision(Action.RESUME, entry=adopted, request_id=request_id)

    def _sender_gone(self, entry: LedgerEntry) -> bool:
        if (entry.lease_until or 0) <= self._clock():
            return True
        if owner_process_gone(entry.owner):
            return True
        return bool(self._owner_gone and entry.owner != self.owner and self._owner_gone(entry))

    # --- recording outcomes ---------------------------------------------------------------

    def record_submitted(self, item: ItemRef, request_id: str, attempts: int) -> LedgerEntry:
        """The API returned ``request_id``: journal it, then put it in the ledger.

        It is never dropped: a StorageError leaves it in the journal (and this process's
        memory), so a retry or a rerun adopts it instead of resending; a journal that cannot
        be written leaves it to the ledger; when both fail it goes to the run's log at
        ERROR with the command that settles it, before the StorageError is raised.
        """
        journaled = self.journal.remember(item.fingerprint, request_id)
        entry = self._entry(item, LedgerState.SUBMITTED, request_id=request_id,
                            attempts=attempts)
        try:
            self._write(entry)
        except StorageError as exc:
            if not journaled:
                log.error("item %s: paid job %s is in neither the journal nor the ledger (%s); "
                          "once S3 works: flashgen ledger resolve %s --request-id %s",
                          item.fingerprint, request_id, exc, item.fingerprint, request_id)
            raise
        self.journal.forget(item.fingerprint)
        return entry

    def recall_sent(self, item: ItemRef) -> str | None:
        """A request_id this machine received for ``item`` but could not yet record."""
        return self.journal.recall(item.fingerprint)

    def record_unsent(self, item: ItemRef, reason: str, attempts: int) -> None:
        """The submit never created a job (refused, or not delivered): free to send again."""
        self._write(self._entry(item, LedgerState.FAILED, attempts=attempts, error=reason))

    def record_ambiguous(self, item: ItemRef, reason: str, attempts: int) -> None:
        self._write(self._entry(item, LedgerState.AMBIGUOUS, attempts=attempts, error=reason))

    def record_failed(self, item: ItemRef, request_id: str, reason: str, attempts: int) -> None:
        """The job ended failed or cancelled at the API: nothing usable was paid for."""
        self._write(self._entry(item, LedgerState.FAILED, request_id=request_id,
                                attempts=attempts, error=reason))

    def record_lost(self, item: ItemRef, request_id: str, reason: str, attempts: int) -> None:
        """The API does not know ``request_id`` (404): its job expired, or the id was
        mistyped. Kept with its reason until a rerun or ``resolve`` releases it."""
        self._write(self._entry(item, LedgerState.LOST, request_id=request_id,
                                attempts=attempts, error=reason))

    def record_stored(self, item: ItemRef, request_id: str, attempts: int, *,
                      record_uri: str | None, image_uris: list[str]) -> None:
        self._write(self._entry(item, LedgerState.STORED, request_id=request_id,
                                attempts=attempts, record_uri=record_uri,
                                image_uris=image_uris))

    # --- settling by hand (``flashgen ledger``) -----------------------------------------

    def entries(self, *, state: LedgerState | None = None,
                batch_id: str | None = None) -> Iterator[LedgerEntry]:
        """Every entry, optionally only those in ``state`` or last written by ``batch_id``."""
        for listed in self.store.list_keys("ledger/"):
            found = self.store.read_ledger(Path(listed.s3_key).stem)
            if found is None:
                continue
            entry = found[0]
            if (state is None or entry.state == state) and (
                    batch_id is None or entry.batch_id == batch_id):
                yield entry

    def show(self, fingerprint: str) -> LedgerEntry:
        found = self.store.read_ledger(fingerprint)
        if found is None:
            raise InputError(f"fingerprint: no ledger entry for {fingerprint!r}",
                             field="fingerprint")
        return found[0]

    def resolve(self, fingerprint: str, *, request_id: str | None = None,
                retry: bool = False) -> LedgerEntry:
        """Settle an ambiguous, lost (or stale sending) item by hand.

        ``request_id``: adopt a request found in RunComfy's dashboard; the next run polls
        and stores it (over a ``submitted`` entry too: a mistyped request_id is corrected
        this way). ``retry``: release it for resubmission (which may pay twice).
        """
        if (request_id is None) == (not retry):
            raise InputError("resolve: give exactly one of --request-id or --retry",
                             field="request_id")
        found = self.store.read_ledger(fingerprint)
        if found is None:
            raise InputError(f"fingerprint: no ledger entry for {fingerprint!r}",
                             field="fingerprint")
        entry, etag = found
        settles = {LedgerState.AMBIGUOUS, LedgerState.LOST, LedgerState.SENDING,
                   LedgerState.CLAIMED, LedgerState.FAILED}
        if request_id:
            settles.add(LedgerState.SUBMITTED)
        if entry.state not in settles:
            hint = ("its job is in flight: a rerun polls it, and marks it lost if the API "
                    "does not know it" if entry.state == LedgerState.SUBMITTED
                    else "nothing to resolve")
            raise InputError(f"fingerprint: {fingerprint} is {entry.state}, not ambiguous or "
                             f"lost; {hint}", field="fingerprint")
        if request_id:
            settled = entry.model_copy(update={
                "state": LedgerState.SUBMITTED, "request_id": request_id, "error": None,
                "attempts": max(entry.attempts, 1), "owner": self.owner, "lease_until": None})
        else:
            settled = entry.model_copy(update={
                "state": LedgerState.FAILED, "owner": self.owner, "lease_until": None,
                "error": f"released for resubmission by hand (was: {entry.error})"})
        if not self.store.replace_ledger(settled, etag):
            raise StorageError(f"ledger entry {fingerprint} changed while resolving it; "
                               "look again with `flashgen ledger show`")
        return settled

    # --- plumbing -------------------------------------------------------------------------

    def _lease(self) -> float:
        return self._clock() + self.send_lease

    def _entry(self, item: ItemRef, state: LedgerState, **fields: Any) -> LedgerEntry:
        return LedgerEntry(fingerprint=item.fingerprint, model=item.model, inputs=item.inputs,
                           state=state, owner=self.owner, owner_run=self.owner_run,
                           batch_id=item.batch_id, **fields)

    def _write(self, entry: LedgerEntry) -> None:
        """Write our own entry (over whatever is there: it is ours to write)."""
        self.store.write_ledger(entry)
