"""The plan's census (flashgen.plan): what the ledger says of each item, found with one
listing of the ledger instead of a read of every item, and the same answer either way."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashgen import plan as plan_module
from flashgen.plan import census
from flashgen.records import LedgerEntry, LedgerState
from flashgen.sources import plan_batch, rows_from_prompts

STATES = list(LedgerState)


def _items(n: int):
    rows = [{"prompt": f"heron {i}"} for i in range(n)]
    return list(plan_batch(rows_from_prompts(rows)).iter_items())


def _reads(store) -> list[str]:
    """Every GetObject the store's client makes from now on (its keys)."""
    keys: list[str] = []
    store.s3.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: keys.append(params["Key"]))
    return keys


def _reference(store, items):
    """The census as one read of every item's entry would take it."""
    counts, stored = {}, {}
    for item in items:
        found = store.read_ledger(item.fingerprint)
        state = found[0].state if found else None
        kind = {LedgerState.STORED: "stored", LedgerState.SUBMITTED: "in_flight",
                LedgerState.FAILED: "to_send", None: "to_send"}.get(state, "ambiguous")
        if state == LedgerState.SUBMITTED and not found[0].request_id:
            kind = "to_send"
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "stored":
            stored[item.fingerprint] = found[0].request_id
    return counts, stored


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ledger=st.lists(st.tuples(st.integers(0, 59), st.sampled_from(STATES)), max_size=40,
                       unique_by=lambda pair: pair[0]),
       batch=st.integers(1, 30), page=st.integers(1, 8), data=st.data())
def test_the_census_from_a_listing_matches_one_read_an_item(store, monkeypatch, ledger, batch,
                                                            page, data):
    """Any ledger (entries of other batches too), any batch, any listing cut short after
    a page of any size: the same counts and stored items as reading every item's entry,
    and a read only for an item that has an entry or lies past the listing's end."""
    for key in [o.s3_key for o in store.list_keys("ledger/")]:
        store.s3.delete_object(Bucket=store.bucket, Key=key)
    universe = _items(60)
    for index, state in ledger:
        item = universe[index]
        store.write_ledger(LedgerEntry(
            fingerprint=item.fingerprint, model=item.model_id, inputs=item.inputs,
            state=state, request_id=f"req-{index}" if index % 3 else None, owner="test"))
    items = data.draw(st.permutations(universe), label="order")[:batch]
    monkeypatch.setattr(plan_module, "LISTED_PAGE", page)
    monkeypatch.setattr(plan_module, "ITEMS_PER_LISTED_PAGE",
                        data.draw(st.sampled_from([1, 5, 1000]), label="items per page"))

    want_counts, want_stored = _reference(store, items)
    reads = _reads(store)
    counts, stored = census(store, items, expected=len(items))

    assert dict(counts) == want_counts
    assert {fp: s.request_id for fp, s in stored.items()} == want_stored
    with_entry = {store.layout.ledger(universe[i].fingerprint) for i, _ in ledger}
    assert with_entry & {store.layout.ledger(i.fingerprint) for i in items} <= set(reads)


def test_a_new_batch_in_a_small_ledger_reads_no_entry(store):
    """The common case, measured in the bench: a batch of new items costs one listing."""
    old, new = _items(30)[:10], _items(30)[10:]
    for item in old:
        store.write_ledger(LedgerEntry(fingerprint=item.fingerprint, model=item.model_id,
                                       inputs=item.inputs, state=LedgerState.STORED,
                                       request_id="r", owner="test"))
    reads = _reads(store)
    counts, stored = census(store, new, expected=len(new))
    assert counts == {"to_send": 20} and stored == {} and reads == []


def test_a_ledger_larger_than_the_listing_allows_is_read_item_by_item(store, monkeypatch):
    """A listing stops after one page a thousand items: a huge ledger costs what one read
    an item cost before, never a listing of the whole ledger."""
    monkeypatch.setattr(plan_module, "LISTED_PAGE", 2)
    pages: list[int] = []
    store.s3.meta.events.register("before-call.s3.ListObjectsV2",
                                  lambda **_: pages.append(1))
    items = _items(12)
    for item in items[:8]:
        store.write_ledger(LedgerEntry(fingerprint=item.fingerprint, model=item.model_id,
                                       inputs=item.inputs, state=LedgerState.FAILED,
                                       owner="test"))
    counts, _ = census(store, items[8:], expected=4)
    assert counts == {"to_send": 4} and len(pages) == 1


@pytest.mark.parametrize("expected, pages", [(1, 1), (1000, 1), (1001, 2), (25_000, 25)])
def test_a_census_lists_one_page_a_thousand_items(store, monkeypatch, expected, pages):
    listed: list[int] = []
    monkeypatch.setattr(plan_module, "LISTED_PAGE", 1)
    for item in _items(30):
        store.write_ledger(LedgerEntry(fingerprint=item.fingerprint, model=item.model_id,
                                       inputs=item.inputs, state=LedgerState.FAILED,
                                       owner="test"))
    store.s3.meta.events.register("before-call.s3.ListObjectsV2",
                                  lambda **_: listed.append(1))
    census(store, [], expected=expected)
    assert len(listed) == min(pages, 30)


def test_an_entry_written_after_the_listing_is_never_paid_again(store, tmp_path):
    """The census plans from a listing that is already old when the run sends: another
    run submits an item in between. The claim before this run's submit finds it, so the
    item is polled (its request_id adopted), never sent a second time."""
    from flashgen.ledger import Action, ItemRef, Journal, Ledger

    [item] = _items(1)
    counts, _ = census(store, [item], expected=1)
    assert counts == {"to_send": 1}  # nothing in the ledger when it listed
    ref = ItemRef(fingerprint=item.fingerprint, model=item.model_id, inputs=item.inputs,
                  batch_id="b")
    other = Ledger(store, Journal(tmp_path / "other", scope="x"), owner="other:1:run")
    assert other.decide(ref).action == Action.SEND
    other.record_submitted(ref, "req-paid-once", attempts=1)

    mine = Ledger(store, Journal(tmp_path / "mine", scope="x"), owner="me:2:run")
    decision = mine.decide(ref)
    assert decision.action == Action.RESUME and decision.request_id == "req-paid-once"
