"""Shard files (flashgen.shards): items dealt by the ledger's census, read back checked."""

from __future__ import annotations

import json

import pytest

from flashgen.errors import InputError
from flashgen.models import DEFAULT_MODEL
from flashgen.plan import census
from flashgen.shards import ShardPlan, ShardWriter
from flashgen.sources import plan_batch, rows_from_prompts


def _items(n: int):
    plan = plan_batch(rows_from_prompts([{"prompt": f"kite {i}", "aspect_ratio": "16:9"}
                                         for i in range(n)]))
    return list(plan.iter_items())


def test_census_deals_every_item_not_stored_into_shards_and_they_read_back(store, tmp_path):
    items = _items(7)
    writer = ShardWriter(tmp_path, size=3)
    counts, _ = census(store, items, expected=len(items), each=writer.add)
    shards = writer.close()
    assert counts["to_send"] == 7
    assert [(s.items, s.to_send) for s in shards] == [(3, 3), (3, 3), (1, 1)]
    read = [item for s in shards for item in ShardPlan.read(s.path, DEFAULT_MODEL).iter_items()]
    assert read == items  # every item once, in order, inputs as planned ("16:9" expanded)
    assert read[0].inputs["aspect_ratio"] == "1440:810 (16:9)"


def test_a_shard_file_whose_inputs_do_not_match_their_fingerprint_is_refused(tmp_path):
    [item] = _items(1)
    tampered = item.model_dump()
    tampered["inputs"]["prompt"] = "something else, at the same fingerprint"
    path = tmp_path / "00000.items.jsonl"
    path.write_text(json.dumps(tampered) + "\n")
    with pytest.raises(InputError, match="does not match its fingerprint"):
        ShardPlan.read(path, DEFAULT_MODEL)
