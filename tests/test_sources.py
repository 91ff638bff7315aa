"""Prompt sources: every format, line numbers of bad rows, expansion, templates, S3."""

from __future__ import annotations

import pytest

from flashgen.errors import InputError
from flashgen.models import DEFAULT_MODEL, fingerprint
from flashgen.sources import expand, plan_batch, read_rows, rows_from_prompts


def _plan(tmp_path, name: str, text: str, **kw):
    path = tmp_path / name
    path.write_text(text)
    return plan_batch(read_rows(str(path)), **kw)


def test_csv_rows_keep_their_file_line_numbers(tmp_path):
    plan = _plan(tmp_path, "p.csv", "prompt,aspect_ratio,seed\n"
                                   "a fox,16:9,1\n"
                                   "\"a multi\nline owl\",1:1,2\n"
                                   "a bear,7:3,3\n")
    assert [(i.line, i.inputs["seed"]) for i in plan.iter_items()] == [(2, 1), (4, 2)]
    assert [(b.line, "aspect_ratio" in b.reason) for b in plan.invalid] == [(5, True)]


def test_jsonl_reports_unparsable_and_invalid_lines(tmp_path):
    plan = _plan(tmp_path, "p.jsonl", '{"prompt": "a fox"}\n'
                                     '\n'
                                     '{"prompt": broken\n'
                                     '"just a prompt string"\n'
                                     '{"prompt": "x", "colour": "red"}\n'
                                     '[1, 2]\n')
    assert [i.line for i in plan.iter_items()] == [1, 4]
    reasons = {b.line: b.reason for b in plan.invalid}
    assert set(reasons) == {3, 5, 6}
    assert "not valid JSON" in reasons[3]
    assert "colour" in reasons[5] and "allowed fields" in reasons[5]


def test_yaml_with_defaults_and_line_numbers(tmp_path):
    plan = _plan(tmp_path, "p.yaml", "defaults:\n"
                                    "  negative_prompt: blurry\n"
                                    "  aspect_ratio: 9:16\n"
                                    "prompts:\n"
                                    "  - a fox at {date}\n"
                                    "  - prompt: an owl\n"
                                    "    aspect_ratio: 1:1\n"
                                    "  - prompt: a bear\n"
                                    "    duration: 10\n",
                 variables={"date": "2026-11-26"})
    items = list(plan.iter_items())
    assert [i.inputs["prompt"] for i in items] == ["a fox at 2026-11-26", "an owl"]
    assert items[0].inputs["aspect_ratio"] == "810:1440 (9:16)"
    assert items[1].inputs["aspect_ratio"] == "1024:1024 (1:1)"
    assert all(i.inputs["negative_prompt"] == "blurry" for i in items)
    assert [(b.line, "duration" in b.reason) for b in plan.invalid] == [(8, True)]


@pytest.mark.parametrize("fields, combos", [
    ({"prompt": "p"}, [(58583956, None)]),
    ({"prompt": "p", "seeds": [1, 2, 3]}, [(1, None), (2, None), (3, None)]),
    ({"prompt": "p", "seeds": "4, 5"}, [("4", None), ("5", None)]),
    ({"prompt": "p", "seed": 10, "variations": 3}, [(10, None), (11, None), (12, None)]),
    ({"prompt": "p", "variations": "2"}, [(58583956, None), (58583957, None)]),
    ({"prompt": "p", "seeds": [1, 2], "aspect_ratios": "16:9,1:1"},
     [(1, "16:9"), (1, "1:1"), (2, "16:9"), (2, "1:1")]),
])
def test_expansion_is_one_item_per_combination(fields, combos):
    got = [(one.get("seed", 58583956), one.get("aspect_ratio")) for one in expand(fields)]
    assert got == combos


@pytest.mark.parametrize("variations", ["many", 0, 5000])
def test_bad_variations_name_the_field(variations):
    with pytest.raises(InputError) as caught:
        expand({"prompt": "p", "variations": variations})
    assert caught.value.field == "variations"


def test_a_rows_own_value_beats_the_defaults_list():
    plan = plan_batch(rows_from_prompts(["a", "b"]) , defaults={"aspect_ratios": ["16:9", "1:1"]})
    assert plan.items == 4
    rows = read_rows_inline([{"prompt": "c", "aspect_ratio": "9:16"}])
    plan = plan_batch(rows, defaults={"aspect_ratios": ["16:9", "1:1"]})
    assert [i.inputs["aspect_ratio"] for i in plan.iter_items()] == ["810:1440 (9:16)"]


def test_duplicates_are_sent_once_and_reported():
    plan = plan_batch(rows_from_prompts(["same", "other", "same"]))
    items = list(plan.iter_items())
    assert [i.line for i in items] == [1, 2]
    assert [(d.line, d.first_line, d.fingerprint, d.prompt) for d in plan.duplicates] == [
        (3, 1, items[0].fingerprint, "same")]
    assert items[0].fingerprint == fingerprint(DEFAULT_MODEL, items[0].inputs)


def test_long_prompts_warn_but_are_sent():
    plan = plan_batch(rows_from_prompts(["x" * 900]))
    assert plan.items == 1 and "900 characters" in plan.warnings[0]


def test_other_models_take_free_form_inputs():
    plan = plan_batch(read_rows_inline([{"prompt": "p", "steps": 30}]), model_id="acme/other")
    assert [i.inputs for i in plan.iter_items()] == [{"prompt": "p", "steps": 30}]


def test_unknown_extension_and_missing_file_are_clear(tmp_path):
    with pytest.raises(InputError, match="unknown extension"):
        read_rows(str(tmp_path / "p.txt"))
    with pytest.raises(InputError, match="cannot read"):
        read_rows(str(tmp_path / "absent.csv"))


def test_s3_sources_are_read_through_the_store(store):
    store.s3.put_object(Bucket=store.bucket, Key="fg/inbox/today.csv",
                        Body=b"prompt,seed\na fox,1\nan owl,2\n")
    uri = f"s3://{store.bucket}/fg/inbox/today.csv"

    def fetch_s3(uri: str, path) -> None:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        store.s3.download_file(bucket, key, str(path))

    with read_rows(uri, fetch_s3=fetch_s3) as rows:
        spool = rows.path
        assert [r.fields["prompt"] for r in rows] == ["a fox", "an owl"]
        assert [r.line for r in rows] == [2, 3]  # re-iterable, from the local spool
    assert not spool.exists()


def read_rows_inline(records):
    from flashgen.sources import Row

    return [Row(line=n, fields=r) for n, r in enumerate(records, start=1)]


def test_a_plan_serialises_with_its_rows_as_plain_values():
    plan = plan_batch(rows_from_prompts(["a", "a", "{x}"]))
    dumped = plan.model_dump(mode="json")
    assert (dumped["rows"], dumped["items"]) == (3, 1)
    assert dumped["invalid"][0]["line"] == 3 and dumped["duplicates"][0]["first_line"] == 1


def test_csv_with_a_bom_and_crlf_endings(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,seed\r\na fox,1\r\nan owl,2\r\n")
    assert [(r.line, r.fields) for r in read_rows(str(path))] == [
        (2, {"prompt": "a fox", "seed": "1"}), (3, {"prompt": "an owl", "seed": "2"})]


def test_an_overlong_line_is_refused_naming_it(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('"a fox"\n"' + "x" * (2 << 20) + '"\n')
    with pytest.raises(InputError, match="line 2 is longer") as caught:
        list(read_rows(str(path)))
    assert caught.value.field == "source"


def test_a_file_changed_between_the_passes_is_refused(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt\na fox\n")
    plan = plan_batch(read_rows(str(path)))
    path.write_text("prompt\na fox\nan owl, paid for but never planned\n")
    with pytest.raises(InputError, match="changed"):
        list(plan.iter_items())


def test_a_one_shot_iterator_still_plans_and_streams():
    plan = plan_batch(iter(rows_from_prompts(["a", "b"])))
    assert [i.inputs["prompt"] for i in plan.iter_items()] == ["a", "b"]
