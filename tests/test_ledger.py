"""The ledger's decision table, without Prefect: every (state, lease, owner, force, resubmit)
case on moto's S3, plus recording a request_id through an S3 outage."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from flashgen.errors import InputError, StorageError
from flashgen.ledger import Action, ItemRef, Journal, Ledger, owner_process_gone, this_machine
from flashgen.records import LedgerEntry, LedgerState

NOW = 1_000_000.0
ITEM = ItemRef(fingerprint="f" * 64, model="m", inputs={"prompt": "a fox"}, batch_id="b")


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


LIVE_OTHER = f"{this_machine()}:1:otherrun"  # pid 1 always exists
DEAD_OTHER = f"{this_machine()}:{_dead_pid()}:deadrun"
REMOTE = "another-host:123:remote"


@pytest.fixture
def ledger(store, tmp_path):
    return Ledger(store, Journal(tmp_path, scope="s3://flashgen-test/fg"), owner="me:1:mine",
                  send_lease=60, clock=lambda: NOW)


def _put(store, state: LedgerState, **fields) -> None:
    store.write_ledger(LedgerEntry(fingerprint=ITEM.fingerprint, model="m", inputs={}, state=state,
                                   **fields))


# (found, put fields, journal request_id, force, resubmit_ambiguous) → action, request_id
CASES = {
    "new item": (None, {}, None, False, False, Action.SEND, None),
    "submitted": (LedgerState.SUBMITTED, {"request_id": "r1"}, None, False, False,
                  Action.RESUME, "r1"),
    "submitted, even with force": (LedgerState.SUBMITTED, {"request_id": "r1"}, None, True,
                                   False, Action.RESUME, "r1"),
    "stored": (LedgerState.STORED, {"request_id": "r1"}, None, False, False, Action.SKIP, "r1"),
    "stored with force": (LedgerState.STORED, {"request_id": "r1"}, None, True, False,
                          Action.SEND, None),
    "failed": (LedgerState.FAILED, {"error": "x"}, None, False, False, Action.SEND, None),
    "ambiguous": (LedgerState.AMBIGUOUS, {"error": "lost"}, None, False, False,
                  Action.AMBIGUOUS, None),
    "ambiguous, resubmit asked": (LedgerState.AMBIGUOUS, {"error": "lost"}, None, False, True,
                                  Action.SEND, None),
    "ambiguous, journal knows": (LedgerState.AMBIGUOUS, {}, "r9", False, True,
                                 Action.RESUME, "r9"),
    "sending, live owner, lease running": (
        LedgerState.SENDING, {"owner": LIVE_OTHER, "lease_until": NOW + 30}, None, False, False,
        Action.WAIT, None),
    "sending, remote owner, lease running": (
        LedgerState.SENDING, {"owner": REMOTE, "lease_until": NOW + 30}, None, False, False,
        Action.WAIT, None),
    "sending, lease ran out": (
        LedgerState.SENDING, {"owner": REMOTE, "lease_until": NOW - 1}, None, False, False,
        Action.AMBIGUOUS, None),
    "sending, owner process gone": (
        LedgerState.SENDING, {"owner": DEAD_OTHER, "lease_until": NOW + 30}, None, False, False,
        Action.AMBIGUOUS, None),
    "sending, owner gone, resubmit asked": (
        LedgerState.SENDING, {"owner": DEAD_OTHER, "lease_until": NOW + 30}, None, False, True,
        Action.SEND, None),
    "sending, journal knows": (
        LedgerState.SENDING, {"owner": LIVE_OTHER, "lease_until": NOW + 30}, "r7", False, False,
        Action.RESUME, "r7"),
    "lost": (LedgerState.LOST, {"request_id": "r1", "error": "404"}, None, False, False,
             Action.AMBIGUOUS, "r1"),
    "lost, resubmit asked": (LedgerState.LOST, {"request_id": "r1", "error": "404"}, None,
                             False, True, Action.SEND, None),
    "legacy claimed, expired": (
        LedgerState.CLAIMED, {"owner": REMOTE, "lease_until": NOW - 1}, None, False, False,
        Action.AMBIGUOUS, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_decision_table(ledger, store, case):
    found, fields, journaled, force, resubmit, action, request_id = CASES[case]
    if found is not None:
        _put(store, found, **fields)
    if journaled:
        ledger.journal.remember(ITEM.fingerprint, journaled)
    decision = ledger.decide(ITEM, force=force, resubmit_ambiguous=resubmit)
    assert (decision.action, decision.request_id) == (action, request_id)
    entry, _ = store.read_ledger(ITEM.fingerprint)
    if action == Action.SEND:  # we hold a fresh 'sending' entry with a lease of one request
        assert (entry.state, entry.owner, entry.lease_until) == (
            LedgerState.SENDING, "me:1:mine", NOW + 60)
    if action == Action.RESUME and journaled:  # adopted: in the ledger, out of the journal
        assert (entry.state, entry.request_id) == (LedgerState.SUBMITTED, journaled)
        assert ledger.journal.recall(ITEM.fingerprint) is None
    if action == Action.AMBIGUOUS and found in (LedgerState.SENDING, LedgerState.CLAIMED):
        assert entry.state == LedgerState.AMBIGUOUS and "may have reached" in entry.error


def test_a_finished_prefect_owner_is_gone_at_once(store, tmp_path):
    _put(store, LedgerState.SENDING, owner=REMOTE, owner_run="run-1", lease_until=NOW + 30)
    ledger = Ledger(store, Journal(tmp_path, scope="x"), owner="me:1:mine", clock=lambda: NOW,
                    owner_gone=lambda entry: entry.owner_run == "run-1")
    assert ledger.decide(ITEM).action == Action.AMBIGUOUS


def test_a_sender_in_another_pid_namespace_of_this_host_is_never_judged_gone():
    """Containers run with ``--network host`` share this host's name but not its process
    ids: a pid that is free here may be a live sender in a container beside us. Before,
    the owner named the host alone, so one container took another's live ``sending``
    claim for a dead one's and marked it ambiguous mid-submit. Only the lease (or the
    owner's flow run) may decide for another namespace."""
    dead = _dead_pid()
    host = socket.gethostname()
    assert owner_process_gone(f"{this_machine()}:{dead}:here")  # this namespace: checked
    assert not owner_process_gone(f"{host}+pidns1:{dead}:container")
    assert not owner_process_gone(f"{host}:{dead}:written-before-namespaces")


def test_two_ledgers_racing_for_one_item_send_it_once(store, tmp_path):
    first = Ledger(store, Journal(tmp_path / "a", scope="x"), owner=LIVE_OTHER, clock=lambda: NOW)
    second = Ledger(store, Journal(tmp_path / "b", scope="x"), owner="me:1:mine",
                    clock=lambda: NOW)
    assert first.decide(ITEM).action == Action.SEND
    assert second.decide(ITEM).action == Action.WAIT
    first.record_submitted(ITEM, "r1", attempts=1)
    assert (second.decide(ITEM).action, second.decide(ITEM).request_id) == (Action.RESUME, "r1")


class FlakyWrites:
    """A Store whose ledger writes fail ``failures`` times (S3 refusing connections)."""

    def __init__(self, store, failures: int) -> None:
        self._store, self.failures, self.calls = store, failures, 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def write_ledger(self, entry):
        self.calls += 1
        if self.calls <= self.failures:
            raise StorageError("S3 PutObject failed: connection refused", transient=True)
        return self._store.write_ledger(entry)


def test_a_request_id_s3_refused_is_adopted_from_the_journal_never_resent(store, tmp_path):
    """S3 is down when the API answers: the request_id waits in the journal; the submit's
    retry (the same owner) and a rerun (another) both adopt it instead of sending again."""
    flaky = FlakyWrites(store, failures=1)
    ledger = Ledger(flaky, Journal(tmp_path, scope="x"), clock=lambda: NOW)
    assert ledger.decide(ITEM).action == Action.SEND
    with pytest.raises(StorageError):
        ledger.record_submitted(ITEM, "r1", attempts=1)
    assert flaky.calls == 1  # one PutObject here; botocore's attempts are inside it
    retried = ledger.decide(ITEM)  # what the submit task's Prefect retry does first
    assert (retried.action, retried.request_id) == (Action.RESUME, "r1")
    entry, _ = store.read_ledger(ITEM.fingerprint)
    assert (entry.state, entry.request_id) == (LedgerState.SUBMITTED, "r1")
    assert ledger.journal.recall(ITEM.fingerprint) is None


def test_a_rerun_on_the_machine_adopts_a_journaled_request_id(store, tmp_path):
    flaky = FlakyWrites(store, failures=10_000)
    ledger = Ledger(flaky, Journal(tmp_path, scope="x"), clock=lambda: NOW)
    assert ledger.decide(ITEM).action == Action.SEND
    with pytest.raises(StorageError):
        ledger.record_submitted(ITEM, "r1", attempts=1)
    # The rerun (another owner, S3 back) adopts the journaled request_id: no second POST.
    rerun = Ledger(store, Journal(tmp_path, scope="x"), owner="rerun:1:x", clock=lambda: NOW)
    decision = rerun.decide(ITEM)
    assert (decision.action, decision.request_id) == (Action.RESUME, "r1")


def test_resolve_adopts_a_request_or_releases_the_item(ledger, store):
    _put(store, LedgerState.AMBIGUOUS, error="lost")
    assert ledger.resolve(ITEM.fingerprint, request_id="dash-1").state == LedgerState.SUBMITTED
    assert ledger.decide(ITEM).request_id == "dash-1"
    _put(store, LedgerState.AMBIGUOUS, error="lost")
    assert ledger.resolve(ITEM.fingerprint, retry=True).state == LedgerState.FAILED
    assert ledger.decide(ITEM).action == Action.SEND
    with pytest.raises(InputError, match="not ambiguous"):
        _put(store, LedgerState.STORED)
        ledger.resolve(ITEM.fingerprint, retry=True)


def test_a_request_id_the_api_does_not_know_has_a_way_out(ledger, store):
    """Submitted with a request_id the API answers 404 for (expired, or mistyped by hand in
    ``resolve --request-id``): recorded lost with its reason, then released or re-adopted."""
    _put(store, LedgerState.AMBIGUOUS, error="answer lost")
    ledger.resolve(ITEM.fingerprint, request_id="typo-1")  # mistyped by hand
    assert ledger.decide(ITEM).request_id == "typo-1"  # the next run polls it: 404
    ledger.record_lost(ITEM, "typo-1", "the API does not know request_id typo-1", attempts=1)
    entry, _ = store.read_ledger(ITEM.fingerprint)
    assert (entry.state, entry.request_id) == (LedgerState.LOST, "typo-1")
    kept = ledger.decide(ITEM)  # a plain rerun reports it, never polls or pays for it again
    assert kept.action == Action.AMBIGUOUS and "lost" in kept.reason and "--retry" in kept.reason
    # A typo is corrected by adopting the right request; a lost job released to be sent.
    assert ledger.resolve(ITEM.fingerprint, request_id="right-1").state == LedgerState.SUBMITTED
    assert ledger.decide(ITEM).request_id == "right-1"
    assert ledger.resolve(ITEM.fingerprint, request_id="right-2").request_id == "right-2"
    with pytest.raises(InputError, match="in flight"):
        ledger.resolve(ITEM.fingerprint, retry=True)  # submitted: a rerun settles it first
    ledger.record_lost(ITEM, "right-2", "expired", attempts=1)
    assert ledger.resolve(ITEM.fingerprint, retry=True).state == LedgerState.FAILED
    assert ledger.decide(ITEM).action == Action.SEND


def test_a_request_id_reaches_durable_storage_when_the_journal_cannot_be_written(
        store, tmp_path):
    """The state dir failed after the preflight: the ledger in S3 still gets the request_id."""
    (tmp_path / "file").write_text("in the way")
    ledger = Ledger(store, Journal(tmp_path / "file" / "state", scope="x"), clock=lambda: NOW)
    assert ledger.decide(ITEM).action == Action.SEND
    ledger.record_submitted(ITEM, "r1", attempts=1)
    entry, _ = store.read_ledger(ITEM.fingerprint)
    assert (entry.state, entry.request_id) == (LedgerState.SUBMITTED, "r1")


def test_a_request_id_neither_journal_nor_s3_took_is_kept_in_memory_and_logged(
        store, tmp_path, caplog):
    (tmp_path / "file").write_text("in the way")
    flaky = FlakyWrites(store, failures=1)
    ledger = Ledger(flaky, Journal(tmp_path / "file" / "state", scope="x"), clock=lambda: NOW)
    assert ledger.decide(ITEM).action == Action.SEND
    with pytest.raises(StorageError):
        ledger.record_submitted(ITEM, "r1", attempts=1)
    assert "r1" in caplog.text and "--request-id r1" in caplog.text  # the log: last resort
    retried = ledger.decide(ITEM)  # the submit task's retry, S3 back: adopted, not resent
    assert (retried.action, retried.request_id) == (Action.RESUME, "r1")


def test_the_journal_probe_names_the_state_dir(tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(InputError, match="FLASHGEN_STATE_DIR") as caught:
        Journal(tmp_path / "file" / "state", scope="x").probe()
    assert caught.value.field == "FLASHGEN_STATE_DIR"
    Journal(tmp_path / "ok", scope="x").probe()
    assert list((tmp_path / "ok").rglob("*probe*")) == []  # the probe is removed


def test_entries_filter_by_state_and_batch(ledger, store):
    ledger.decide(ITEM)
    ledger.record_ambiguous(ITEM, "lost", attempts=1)
    other = ITEM.model_copy(update={"fingerprint": "e" * 64, "batch_id": "c"})
    ledger.decide(other)
    ledger.record_submitted(other, "r2", attempts=1)
    ambiguous = ledger.entries(state=LedgerState.AMBIGUOUS)
    assert [e.fingerprint for e in ambiguous] == [ITEM.fingerprint]
    assert [e.fingerprint for e in ledger.entries(batch_id="c")] == [other.fingerprint]


def test_entries_written_before_the_rename_still_read(store):
    """Ledger entries from before 0.2 call the fingerprint ``key``."""
    store.put_json(store.layout.ledger(ITEM.fingerprint), {
        "key": ITEM.fingerprint, "model": "m", "inputs": {}, "state": "claimed",
        "owner": REMOTE, "lease_until": NOW - 1})
    entry, _ = store.read_ledger(ITEM.fingerprint)
    assert entry.fingerprint == ITEM.fingerprint and entry.state == LedgerState.CLAIMED
