"""Templates and sweeps (issue 9.5), concatenated sources, and the module's doctest."""

from __future__ import annotations

import doctest

import flashgen.sources
from flashgen.sources import Row, concat_rows, plan_batch, read_rows, rows_from_prompts


def _rows(*records):
    return [Row(line=n, fields=r) for n, r in enumerate(records, start=1)]


def test_the_module_docstring_runs():
    assert doctest.testmod(flashgen.sources).failed == 0


def test_a_sweep_is_one_item_per_combination_each_once():
    rows = _rows({"prompt": "a {animal} in {style}", "seeds": [1, 2],
                  "vars": {"animal": ["fox", "owl"], "style": ["ink", "oil", "chalk"]}})
    plan = plan_batch(rows)
    items = list(plan.iter_items())
    assert (plan.rows, plan.items, len(items), plan.invalid, plan.duplicates) == (1, 12, 12, [], [])
    got = [(i.inputs["prompt"], i.inputs["seed"]) for i in items]
    assert got == [(f"a {a} in {s}", seed) for a in ("fox", "owl")
                   for s in ("ink", "oil", "chalk") for seed in (1, 2)]
    assert len({i.fingerprint for i in items}) == 12
    assert all("vars" not in i.inputs and "seeds" not in i.inputs for i in items)


def test_row_vars_win_over_the_defaults_name_by_name():
    rows = _rows({"prompt": "{animal} {time} {date}", "vars": {"time": "dusk"}})
    plan = plan_batch(rows, defaults={"vars": {"animal": "fox", "time": "dawn"}},
                      variables={"date": "2026-11-30"})
    assert [i.inputs["prompt"] for i in plan.iter_items()] == ["fox dusk 2026-11-30"]


def test_an_unknown_placeholder_fails_its_row_only():
    rows = _rows({"prompt": "a {animal}", "vars": {"animal": "fox"}},
                 {"prompt": "a {colour} {animal}", "vars": {"animal": "owl"}},
                 {"prompt": "plain", "negative_prompt": "no {thing}"},
                 {"prompt": "on {date}"})
    plan = plan_batch(rows, variables={"date": "2026-11-30"})
    assert [i.inputs["prompt"] for i in plan.iter_items()] == ["a fox", "on 2026-11-30"]
    assert [(b.line, b.reason, b.prompt) for b in plan.invalid] == [
        (2, "prompt: {colour} has no value; give it in vars", "a {colour} {animal}"),
        (3, "negative_prompt: {thing} has no value; give it in vars", "plain")]


def test_double_braces_stay_literal():
    plan = plan_batch(_rows({"prompt": "{{not a var}} {x} }} {{", "vars": {"x": 1}}))
    assert [i.inputs["prompt"] for i in plan.iter_items()] == ["{not a var} 1 } {"]


def test_duplicates_across_sweeps_are_detected():
    rows = _rows({"prompt": "a {animal}", "vars": {"animal": ["fox", "owl"]}},
                 {"prompt": "a {animal}", "vars": {"animal": ["owl", "hare", "fox"]}},
                 {"prompt": "a fox", "vars": {"unused": ["x", "y"]}})
    plan = plan_batch(rows)
    assert [i.inputs["prompt"] for i in plan.iter_items()] == ["a fox", "a owl", "a hare"]
    assert [(d.line, d.first_line, d.prompt) for d in plan.duplicates] == [
        (2, 1, "a owl"), (2, 1, "a fox"), (3, 1, "a fox"), (3, 1, "a fox")]


def test_bad_vars_fail_the_row():
    rows = _rows({"prompt": "{a}", "vars": ["a"]}, {"prompt": "{a}", "vars": {"a": []}},
                 {"prompt": "{a}", "vars": {"a": {"b": 1}}},
                 {"prompt": "{a}{b}{c}", "vars": {"a": list(range(100)), "b": list(range(100)),
                                                 "c": list(range(2))}})
    plan = plan_batch(rows)
    assert plan.items == 0
    assert [(b.line, b.reason.split(":")[0]) for b in plan.invalid] == [
        (1, "vars"), (2, "vars"), (3, "vars"), (4, "vars")]
    assert "20,000 items" in plan.invalid[3].reason


def test_csv_vars_column_is_json(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,vars,seed\n'
                    '"a {animal}","{""animal"": [""fox"", ""owl""]}",1\n'
                    '"a {animal}",not json,2\n')
    plan = plan_batch(read_rows(str(path)))
    assert [i.inputs["prompt"] for i in plan.iter_items()] == ["a fox", "a owl"]
    assert [(b.line, "JSON object" in b.reason) for b in plan.invalid] == [(3, True)]


def test_yaml_defaults_vars_merge_with_rows(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("defaults:\n"
                    "  vars: {animal: fox, time: [dawn, dusk]}\n"
                    "  aspect_ratios: ['16:9', '1:1']\n"
                    "prompts:\n"
                    "  - a {animal} at {time}\n"
                    "  - prompt: an {animal} at {time}\n"
                    "    vars: {animal: owl}\n"
                    "    aspect_ratio: '9:16'\n")
    items = list(plan_batch(read_rows(str(path))).iter_items())
    assert [(i.line, i.inputs["prompt"], i.inputs["aspect_ratio"][-5:]) for i in items] == [
        (5, "a fox at dawn", "16:9)"), (5, "a fox at dawn", "(1:1)"),
        (5, "a fox at dusk", "16:9)"), (5, "a fox at dusk", "(1:1)"),
        (6, "an owl at dawn", "9:16)"), (6, "an owl at dusk", "9:16)")]


def test_concatenated_sources_continue_the_line_numbers(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt\na fox\nan owl\n")
    rows = concat_rows(read_rows(str(path)), rows_from_prompts(["a hare", "a fox"]))
    plan = plan_batch(rows)
    assert [(i.line, i.inputs["prompt"]) for i in plan.iter_items()] == [
        (2, "a fox"), (3, "an owl"), (4, "a hare")]
    assert [(d.line, d.first_line) for d in plan.duplicates] == [(5, 2)]
    assert [r.line for r in rows] == [2, 3, 4, 5]  # re-iterable


def test_escaped_braces_round_trip_for_any_text():
    from hypothesis import given
    from hypothesis import strategies as st

    from flashgen.sources import fill_template

    @given(st.text())
    def check(text):
        escaped = text.replace("{", "{{").replace("}", "}}")
        assert fill_template(escaped, {}) == text

    check()
