"""Defects an attacker found in prompt sources: each test failed before its fix."""

from __future__ import annotations

import pytest

from flashgen.errors import InputError
from flashgen.sources import EXCERPT_CHARS, plan_batch, read_rows, rows_from_prompts

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
prompts:
  - prompt: *g
"""


def _write(tmp_path, name: str, data: str | bytes):
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return str(path)


def test_yaml_aliases_are_refused_naming_the_line(tmp_path):
    with pytest.raises(InputError) as caught:
        plan_batch(read_rows(_write(tmp_path, "laughs.yaml", BILLION_LAUGHS)))
    assert caught.value.field == "source"
    assert "line 1" in str(caught.value) and "anchor" in str(caught.value)
    assert len(str(caught.value)) < 400


def test_a_lone_alias_is_refused_too(tmp_path):
    text = "defaults: {negative_prompt: blurry}\nprompts:\n  - prompt: *nowhere\n"
    with pytest.raises(InputError, match="line 3"):
        plan_batch(read_rows(_write(tmp_path, "p.yaml", text)))


def test_errors_quote_only_an_excerpt_of_the_input(tmp_path):
    huge = "x" * 100_000
    rows = [f'{{"prompt": "ok", "aspect_ratio": "{huge}"}}',
            f'{{"prompt": {{"nested": "{huge}"}}}}',
            f'{{"prompt": "ok", "{huge}": 1}}',
            f'{{"prompt": "ok", "aspect_ratios": ["{huge}"]}}',
            f'{{"prompt": "ok", "variations": "{huge}"}}',
            f'{{"prompt": "{huge} {{{huge}}}"}}']
    plan = plan_batch(read_rows(_write(tmp_path, "p.jsonl", "\n".join(rows) + "\n")))
    assert [b.line for b in plan.invalid] == [1, 2, 3, 4, 5, 6]
    for bad in plan.invalid:
        assert len(bad.reason) <= 1000, bad.reason[:200]
        assert "x" * (EXCERPT_CHARS + 1) not in bad.reason
        assert "…" in bad.reason
        assert bad.prompt is None or len(bad.prompt) <= EXCERPT_CHARS


def test_a_huge_yaml_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    with path.open("w") as out:
        out.write("- " + "a" * 1000 + "\n")
        out.write(("- " + "b" * 1000 + "\n") * 2_100)
    with pytest.raises(InputError, match="CSV or JSONL") as caught:
        read_rows(str(path))
    assert caught.value.field == "source"


def test_reading_never_slurps_the_whole_file(tmp_path, monkeypatch):
    from pathlib import Path

    def no_slurp(*a, **k):
        raise AssertionError("read the whole file")

    monkeypatch.setattr(Path, "read_text", no_slurp)
    monkeypatch.setattr(Path, "read_bytes", no_slurp)
    source = read_rows(_write(tmp_path, "p.csv", "prompt\n" + "a fox\n" * 50))
    assert plan_batch(source).rows == 50


@pytest.mark.parametrize("name", ["p.csv", "p.jsonl", "p.yaml", "p.json"])
def test_binary_files_are_input_errors_naming_where(tmp_path, name):
    data = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"
    with pytest.raises(InputError) as caught:
        plan_batch(read_rows(_write(tmp_path, name, data)))
    assert caught.value.field == "source"
    assert "UTF-8" in str(caught.value) and "line 1" in str(caught.value)


@pytest.mark.parametrize("name,text", [("p.csv", b"prompt\nfine\n"),
                                       ("p.jsonl", b'"ok"\n"fine"\n')])
def test_binary_lines_beside_text_are_invalid_rows(tmp_path, name, text):
    """Issue 17.5: the batch goes on with the good rows (it once refused the whole file)."""
    data = text + b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"
    plan = plan_batch(read_rows(_write(tmp_path, name, data)))
    assert [item.inputs["prompt"] for item in plan.iter_items()][-1] == "fine"
    assert plan.invalid and all(row.line >= 3 for row in plan.invalid)
    assert "UTF-8" in plan.invalid[0].reason


def test_nul_bytes_make_their_line_an_invalid_row(tmp_path):
    plan = plan_batch(read_rows(_write(tmp_path, "p.jsonl", b'"a fox"\n\x00\x00\x00\n')))
    assert [(row.line, row.reason) for row in plan.invalid] == [
        (2, "control character U+0000 (character 1 of the line) in a prompt file")]
    assert plan.items == 1


def test_invalid_rows_carry_only_display_safe_values(tmp_path):
    plan = plan_batch(read_rows(_write(tmp_path, "p.jsonl",
                                       '{"prompt": 123}\n{"prompt": "a fox"}\n'
                                       '{"prompt": "an owl", "colour": {"deep": [1, 2]}}\n')))
    assert plan.items == 1
    assert [(b.line, b.prompt) for b in plan.invalid] == [(1, None), (3, "an owl")]
    assert "fields" not in type(plan.invalid[0]).model_fields


def test_defaults_must_be_an_object():
    with pytest.raises(InputError, match="must be an object") as caught:
        plan_batch(rows_from_prompts(["a fox"]), defaults=[1, 2])
    assert caught.value.field == "defaults"
    with pytest.raises(InputError) as caught:
        plan_batch(rows_from_prompts(["a fox"]), defaults={"vars": ["x"]})
    assert caught.value.field == "defaults"


def test_a_yaml_file_is_parsed_once_for_both_passes(tmp_path, monkeypatch):
    import flashgen.sources as sources

    parsed = []
    real = sources._yaml_rows
    monkeypatch.setattr(sources, "_yaml_rows", lambda path: parsed.append(path) or real(path))
    plan = plan_batch(read_rows(_write(tmp_path, "p.yaml", "- a fox\n- an owl\n")))
    assert [i.line for i in plan.iter_items()] == [1, 2]
    assert len(parsed) == 1
