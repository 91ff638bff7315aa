"""A batch's record and what a resume or a retry sends again, on moto's S3 (no Prefect)."""

from __future__ import annotations

import pytest

from flashgen.errors import InputError
from flashgen.options import BatchOptions
from flashgen.records import ItemState, LedgerEntry, LedgerState, ManifestRow
from flashgen.reruns import Rerun, read_request, record_batch
from flashgen.sources import Item


def _item(line: int) -> Item:
    return Item(line=line, model_id="m", inputs={"prompt": f"p{line}"}, fingerprint=f"f{line}")


def _row(line: int, state: ItemState) -> ManifestRow:
    return ManifestRow(line=line, fingerprint=f"f{line}", state=state, reason=str(state))


def test_the_record_holds_options_run_date_and_a_copy_of_a_local_source(store, tmp_path):
    source = tmp_path / "prompts.csv"
    source.write_text("prompt\na fox\n")
    options = BatchOptions.parse(source=str(source), defaults={"aspect_ratio": "1:1"},
                                 concurrency=3, max_failure_ratio=0.2, force=True)
    record_batch(store, options, batch_id="b1", run_date="2025-03-01")
    source.unlink()

    request = read_request(store, "b1")
    again = request.rerun_options()
    assert again.source == "s3://flashgen-test/fg/batches/b1.source.csv"
    assert store.read_text(again.source) == "prompt\na fox\n"
    assert again.defaults == {"aspect_ratio": "1:1"} and again.concurrency == 3
    assert again.max_failure_ratio == 0.2 and str(again.run_date) == "2025-03-01"
    assert again.batch_id == "b1" and again.force is False  # a rerun never forces


def test_an_unknown_batch_is_an_input_error_naming_it(store):
    with pytest.raises(InputError, match="no record of batch 'nope'") as caught:
        read_request(store, "nope")
    assert caught.value.field == "batch_id"


def test_resume_sends_all_but_failed_items_and_retry_only_those(store):
    record_batch(store, BatchOptions.parse(prompts=["x"]), batch_id="b2",
                 run_date="2025-03-01")
    request = read_request(store, "b2")
    store.put_manifest("b2", [_row(1, ItemState.STORED), _row(2, ItemState.FAILED),
                              _row(3, ItemState.CANCELLED), _row(4, ItemState.FAILED)])
    store.write_ledger(LedgerEntry(fingerprint="f4", model="m", inputs={},
                                   state=LedgerState.AMBIGUOUS))
    items = [_item(n) for n in (1, 2, 3, 4, 5)]

    resume = Rerun.resume(store, request)
    assert [i.line for i in items if resume.sends(i)] == [1, 3, 5]
    assert resume.kept_row(items[1]).state == ItemState.FAILED

    retry = Rerun.retry(store, request)
    assert [i.line for i in items if retry.sends(i)] == [2, 4] and retry.to_send == 2
    assert retry.kept_row(items[0]).state == ItemState.STORED and not retry.resubmit_ambiguous

    ambiguous = Rerun.retry(store, request, ambiguous=True)
    assert [i.line for i in items if ambiguous.sends(i)] == [4]
    assert ambiguous.resubmit_ambiguous


def test_without_a_manifest_resume_sends_everything_and_retry_refuses(store):
    record_batch(store, BatchOptions.parse(prompts=["x"]), batch_id="b3",
                 run_date="2025-03-01")
    request = read_request(store, "b3")
    assert Rerun.resume(store, request).sends(_item(1))
    with pytest.raises(InputError, match="no manifest yet"):
        Rerun.retry(store, request)
