"""The model's input: aspect-ratio spellings, validation messages, schema parity."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashgen.errors import InputError
from flashgen.models import (
    ASPECT_RATIOS,
    DEFAULT_MODEL,
    LongPromptWarning,
    WanFlashInput,
    fingerprint,
    normalise_aspect_ratio,
    validate_inputs,
)

SPEC = Path(__file__).parents[1].parent / "shared/spec/input_schema.json"
SEPARATORS = (":", "x", "X", "×", "/")


def _parts(full: str) -> tuple[int, int, int, int]:
    w, h, rw, rh = re.match(r"^(\d+):(\d+) \((\d+):(\d+)\)$", full).groups()  # type: ignore[union-attr]
    return int(w), int(h), int(rw), int(rh)


def valid(**inputs: object) -> dict[str, object]:
    return validate_inputs(DEFAULT_MODEL, {"prompt": "a red fox", **inputs})


def rejected(**inputs: object) -> InputError:
    with pytest.raises(InputError) as caught:
        validate_inputs(DEFAULT_MODEL, inputs)
    return caught.value


# --- aspect ratio: table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("16:9", "1440:810 (16:9)"),
        ("16x9", "1440:810 (16:9)"),
        ("16/9", "1440:810 (16:9)"),
        ("16×9", "1440:810 (16:9)"),
        ("1440:810", "1440:810 (16:9)"),
        ("1440x810", "1440:810 (16:9)"),
        ("1440:810 (16:9)", "1440:810 (16:9)"),
        (" 9:16 ", "810:1440 (9:16)"),
        ("9 : 16", "810:1440 (9:16)"),
        ("1:1", "1024:1024 (1:1)"),
        ("4:3", "1360:1020 (4:3)"),
        ("1024x1365", "1024:1365 (3:4)"),
        ("32:18", "1440:810 (16:9)"),  # reduced before lookup
    ],
)
def test_friendly_aspect_ratios_normalise(spelling: str, expected: str) -> None:
    assert normalise_aspect_ratio(spelling) == expected
    assert valid(aspect_ratio=spelling)["aspect_ratio"] == expected


@pytest.mark.parametrize("exact", ASPECT_RATIOS)
def test_every_exact_string_round_trips(exact: str) -> None:
    assert normalise_aspect_ratio(exact) == exact
    assert WanFlashInput(prompt="p", aspect_ratio=exact).aspect_ratio == exact


@pytest.mark.parametrize("bad", ["7:3", "16:10", "wide", "", "0:0", "1440:811", 5])
def test_bad_aspect_ratio_names_field_and_allowed_values(bad: object) -> None:
    error = rejected(prompt="p", aspect_ratio=bad)
    assert error.field == "aspect_ratio"
    assert "aspect_ratio" in str(error)
    for allowed in ASPECT_RATIOS:
        assert allowed in str(error)


# --- the other fields ---------------------------------------------------------------------


def test_defaults_are_applied() -> None:
    assert valid() == {
        "prompt": "a red fox",
        "negative_prompt": "",
        "aspect_ratio": "1440:810 (16:9)",
        "duration": 5,
        "prompt_extend": True,
        "seed": 58583956,
    }


@pytest.mark.parametrize(
    ("inputs", "field", "says"),
    [
        ({"prompt": "p", "style": "noir"}, "style", ["unknown field", "prompt", "seed"]),
        ({"prompt": "p", "duration": 10}, "duration", ["10", "5"]),
        ({"prompt": "p", "seed": "not a number"}, "seed", ["seed"]),
        ({"prompt": ""}, "prompt", ["empty"]),
        ({"prompt": "   "}, "prompt", ["empty"]),
        ({}, "prompt", ["required"]),
    ],
)
def test_bad_inputs_name_the_field(inputs: dict, field: str, says: list[str]) -> None:
    error = rejected(**inputs)
    assert error.field == field
    for text in says:
        assert text in str(error)


def test_seed_from_string() -> None:
    assert valid(seed="123")["seed"] == 123


def test_long_prompt_warns_but_passes() -> None:
    with pytest.warns(LongPromptWarning):
        out = valid(prompt="x" * 801)
    assert len(out["prompt"]) == 801


def test_prompt_at_guidance_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        valid(prompt="x" * 800)


def test_unknown_model_passes_through_but_must_be_json() -> None:
    assert validate_inputs("someone/else", {"a": [1, 2]}) == {"a": [1, 2]}
    with pytest.raises(InputError):
        validate_inputs("someone/else", {"a": object()})
    with pytest.raises(InputError):
        validate_inputs(DEFAULT_MODEL, ["not", "a", "dict"])  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------


@st.composite
def spellings(draw: st.DrawFn) -> str:
    full = draw(st.sampled_from(ASPECT_RATIOS))
    w, h, rw, rh = _parts(full)
    a, b = draw(st.sampled_from([(w, h), (rw, rh)]))
    sep = draw(st.sampled_from(SEPARATORS))
    pad = st.text(alphabet=" \t", max_size=2)
    return draw(st.sampled_from([full, f"{draw(pad)}{a}{draw(pad)}{sep}{draw(pad)}{b}{draw(pad)}"]))


@given(spellings())
def test_valid_spellings_normalise_into_the_enum_idempotently(spelling: str) -> None:
    once = normalise_aspect_ratio(spelling)
    assert once in ASPECT_RATIOS
    assert normalise_aspect_ratio(once) == once


@given(spellings())
def test_spelling_keeps_the_ratio(spelling: str) -> None:
    w, h, _, _ = _parts(normalise_aspect_ratio(spelling))
    a, b = (int(n) for n in re.findall(r"\d+", spelling)[:2])
    assert abs(w / h - a / b) < 0.01


@given(st.text(max_size=30))
def test_arbitrary_text_normalises_or_names_the_field(text: str) -> None:
    try:
        assert normalise_aspect_ratio(text) in ASPECT_RATIOS
    except InputError as error:
        assert error.field == "aspect_ratio"


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(st.integers(), st.text(max_size=8), st.booleans(), st.none()),
        max_size=6,
    ),
    st.randoms(),
)
def test_fingerprint_ignores_key_order(inputs: dict, rng) -> None:
    keys = list(inputs)
    rng.shuffle(keys)
    shuffled = {k: inputs[k] for k in keys}
    assert fingerprint(DEFAULT_MODEL, shuffled) == fingerprint(DEFAULT_MODEL, inputs)


def test_fingerprint_changes_with_inputs_and_model() -> None:
    base = valid()
    assert fingerprint(DEFAULT_MODEL, base) != fingerprint(DEFAULT_MODEL, {**base, "seed": 1})
    assert fingerprint(DEFAULT_MODEL, base) != fingerprint("other/model", base)


# --- parity with the published schema -----------------------------------------------------


@pytest.mark.skipif(not SPEC.exists(), reason="shared/spec is not beside the repository")
def test_schema_matches_the_published_input_schema() -> None:
    spec = json.loads(SPEC.read_text())
    ours = WanFlashInput.json_schema()
    assert ours["title"] == spec["title"]
    assert ours.get("required") == spec["required"]
    assert list(ours["properties"]) == list(spec["properties"])  # same fields, same order
    for name, published in spec["properties"].items():
        mine = ours["properties"][name]
        for key in ("type", "title", "description", "default", "enum"):
            assert mine.get(key) == published.get(key), f"{name}.{key}"
