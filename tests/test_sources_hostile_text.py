"""Any text the decoders accept is a valid row or an invalid row with its line (issue 17.5).

Generated cases: prompt files in every format, each line good or hostile (a lone
surrogate, a NUL, a line in another encoding, a byte-order mark), in any order. Planning
never raises for a row: every hostile line is an invalid row naming its line, every good
line is planned, and what an invalid row displays can be written anywhere (UTF-8, JSON).
"""

from __future__ import annotations

import codecs
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashgen.errors import InputError
from flashgen.models import DEFAULT_MODEL, fingerprint
from flashgen.sources import plan_batch, read_rows, rows_from_prompts

EXAMPLES = 300
FORMATS = ("csv", "jsonl", "json", "yaml")

# Prompts that are good in every format: letters, digits, spaces and a few marks, any
# script. (Control characters, quotes and backslashes are the hostile cases' business.)
good_text = st.text(
    st.characters(categories=["L", "N", "Zs"], exclude_characters="\x85\u2028\u2029"),
    min_size=1, max_size=30,
).filter(lambda s: s.strip() == s and s.strip())

# How a line can be hostile.
HOSTILE = ("surrogate", "nul", "latin1", "bom", "control")


def _escaped(kind: str) -> str:
    """Text (as a JSON/YAML escape) that the decoder accepts but is not a sendable prompt."""
    return {"surrogate": "\\ud800", "nul": "\\u0000", "control": "\\u001b"}[kind]


def _line(fmt: str, prompt: str, hostile: str | None) -> bytes:
    """One row of a file in ``fmt`` whose prompt is ``prompt`` spoiled by ``hostile``."""
    if fmt == "csv":
        body = f'"{prompt}"'
    elif fmt == "jsonl":
        body = json.dumps({"prompt": prompt}, ensure_ascii=False)
    elif fmt == "json":
        body = "  " + json.dumps({"prompt": prompt}, ensure_ascii=False) + ","
    else:
        body = "  - prompt: " + json.dumps(prompt, ensure_ascii=False)
    if hostile is None:
        return body.encode()
    # Where the prompt's text starts (JSON's rindex: the prompt may be "prompt" itself).
    cut = 1 if fmt == "csv" else body.rindex(json.dumps(prompt, ensure_ascii=False)) + 1
    if hostile in ("surrogate", "nul", "control") and fmt != "csv":
        # An escape inside the string: the decoder accepts it.
        return (body[:cut] + _escaped(hostile) + body[cut:]).encode()
    raw, cut = body.encode(), len(body[:cut].encode())
    spoil = {"surrogate": b"\xed\xa0\x80",  # U+D800 as UTF-8 would write it: not UTF-8
             "nul": b"\x00", "control": b"\x1b[2J",
             "latin1": "caf\u00e9".encode("latin-1"),
             "bom": codecs.BOM_UTF8}[hostile]
    return raw[:cut] + spoil + raw[cut:]


def _file(fmt: str, lines: list[bytes], leading_bom: bool) -> bytes:
    head = {"csv": [b"prompt"], "jsonl": [], "json": [b"["], "yaml": []}[fmt]
    tail = {"json": [b'  {"prompt": "the end"}', b"]"]}.get(fmt, [])
    text = b"\n".join(head + lines + tail) + b"\n"
    return codecs.BOM_UTF8 + text if leading_bom else text


# The line number of the i-th row in the file.
def _lineno(fmt: str, index: int) -> int:
    return index + (2 if fmt in ("csv", "json") else 1)


rows = st.lists(st.tuples(good_text, st.none() | st.sampled_from(HOSTILE)), min_size=1,
                max_size=8)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(FORMATS), lines=rows, leading_bom=st.booleans())
def test_hostile_text_in_any_format_is_an_invalid_row_with_its_line(tmp_path, fmt, lines,
                                                                    leading_bom):
    path = tmp_path / f"prompts.{fmt}"
    path.write_bytes(_file(fmt, [_line(fmt, p, h) for p, h in lines], leading_bom))
    # Bytes that are not text spoil their line; when no row at all is text, the file is
    # not a prompt file (say, a PNG named .csv): refused whole, naming a line.
    spoilt = {"csv": {"surrogate", "nul", "control", "latin1"}}.get(fmt, {"latin1"})
    if fmt != "json" and all(h in spoilt for _, h in lines):
        with pytest.raises(InputError, match=r"^source: no row is text \(line \d+: "):
            plan_batch(read_rows(str(path)))
        return
    plan = plan_batch(read_rows(str(path)))  # never raises: bad rows are rows
    bad = {_lineno(fmt, i) for i, (_, h) in enumerate(lines) if h not in (None, "bom", "latin1")}
    # A BOM inside a prompt is a character (U+FEFF); Latin-1 text is not UTF-8: invalid.
    bad |= {_lineno(fmt, i) for i, (_, h) in enumerate(lines) if h == "latin1"}
    invalid = {row.line: row for row in plan.invalid}
    assert set(invalid) == bad
    for row in invalid.values():
        for text in (row.reason, row.prompt or ""):
            text.encode("utf-8")  # writable anywhere: no surrogates
            assert "\x00" not in text and "\x1b" not in text
        json.dumps(row.model_dump(), ensure_ascii=False).encode("utf-8")
    items = list(plan.iter_items())
    expected = len(lines) - len(bad) + (fmt == "json")
    assert plan.items + len(plan.duplicates) == expected
    assert len(items) == plan.items
    for item in items:
        assert item.fingerprint == fingerprint(DEFAULT_MODEL, item.inputs)


# Any character, surrogates and controls made common (argv's undecodable bytes are
# U+DC80..U+DCFF).
any_char = (st.characters(exclude_categories=()) | st.characters(min_codepoint=0xD800,
            max_codepoint=0xDFFF, categories=["Cs"]) | st.sampled_from("\x00\x1b\x7f\ufeff"))


@given(prompt=st.text(any_char, max_size=20))
@settings(max_examples=EXAMPLES, deadline=None)
def test_any_inline_prompt_is_planned_or_invalid_never_a_crash(prompt):
    """Inline prompts (``-p``) come from argv, where undecodable bytes are surrogates."""
    plan = plan_batch(rows_from_prompts([prompt, "a good one"]))
    assert plan.rows == 2
    planned = {item.line for item in plan.iter_items()} | {d.line for d in plan.duplicates}
    assert 2 in planned and (1 in planned) != any(row.line == 1 for row in plan.invalid)
    for row in plan.invalid:
        (row.reason + (row.prompt or "")).encode("utf-8")


def test_a_lone_surrogate_is_an_invalid_row_naming_what_is_wrong(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "bad \\ud800 one"}\n{"prompt": "fine"}\n')
    plan = plan_batch(read_rows(str(path)))
    assert [(row.line, row.reason) for row in plan.invalid] == [
        (2, "prompt: contains U+D800, a lone surrogate, which is not text")]
    assert [item.line for item in plan.iter_items()] == [1, 3]


def test_bytes_that_are_not_utf8_are_an_invalid_row_not_the_whole_file(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"prompt\nok\ncaf\xe9\nfine\n")
    plan = plan_batch(read_rows(str(path)))
    assert [(row.line, row.reason) for row in plan.invalid] == [
        (3, "not UTF-8 text (byte 4 of the line); prompt files must be UTF-8")]
    assert [item.line for item in plan.iter_items()] == [2, 4]


def test_defaults_with_a_lone_surrogate_are_refused_before_anything(tmp_path):
    with pytest.raises(InputError) as caught:
        plan_batch(rows_from_prompts(["a fox"]), defaults={"negative_prompt": "\ud800"})
    assert caught.value.field == "defaults"
    str(caught.value).encode("utf-8")
