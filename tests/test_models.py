"""The model's input: aspect-ratio spellings, validation messages, schema parity."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flashgen.emulator.inputs import VALIDATORS
from flashgen.errors import InputError
from flashgen.models import (
    ASPECT_RATIOS,
    DEFAULT_MODEL,
    JobResult,
    LongPromptWarning,
    WanFlashInput,
    fingerprint,
    normalise_aspect_ratio,
    validate_inputs,
)
from flashgen.schemas import input_schema, output_schema

VENDORED = Path(__file__).parents[1] / "flashgen" / "schemas"
# Where the published schemas live beside a development checkout (not in a plain clone).
PUBLISHED = Path(__file__).parents[1].parent / "shared" / "spec"
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


# --- parity with the published schema (vendored in flashgen/schemas) -----------------------


def test_schema_matches_the_published_input_schema() -> None:
    spec = input_schema()
    ours = WanFlashInput.json_schema()
    assert ours["title"] == spec["title"]
    assert ours.get("required") == spec["required"]
    assert list(ours["properties"]) == list(spec["properties"])  # same fields, same order
    for name, published in spec["properties"].items():
        mine = ours["properties"][name]
        for key in ("type", "title", "description", "default", "enum"):
            assert mine.get(key) == published.get(key), f"{name}.{key}"
    assert tuple(spec["properties"]["aspect_ratio"]["enum"]) == ASPECT_RATIOS


def test_the_emulator_validates_against_the_published_schema() -> None:
    assert VALIDATORS[DEFAULT_MODEL].schema == {**input_schema(), "additionalProperties": False}


@pytest.mark.parametrize("aspect_ratio", ["16:9", "9x16", "1:1", *ASPECT_RATIOS])
def test_what_the_client_sends_the_emulator_accepts(aspect_ratio: str) -> None:
    sent = valid(aspect_ratio=aspect_ratio, seed="7", negative_prompt="blur")
    assert list(VALIDATORS[DEFAULT_MODEL].iter_errors(sent)) == []


def test_friendly_input_the_client_normalises_is_refused_by_the_emulator() -> None:
    """The emulator is as strict as the published schema, so the client's normalising
    is what makes "16:9" work, and a test against the emulator proves it."""
    assert list(VALIDATORS[DEFAULT_MODEL].iter_errors({"prompt": "p", "aspect_ratio": "16:9"}))


def test_the_client_reads_every_output_the_published_schema_allows() -> None:
    published = output_schema()["output"]["properties"]
    output = {name: ["https://files.example/a.png"] if field["type"] == "array"
              else "https://files.example/b.png" for name, field in published.items()}
    result = JobResult(request_id="r", status="completed", output=output)
    assert {kind for _, kind in result.outputs} == {"image", "video"}
    assert len(result.uris) == len(published)  # no key of the schema goes unread


@pytest.mark.parametrize("name", ["input_schema.json", "output_schema.json"])
def test_the_vendored_schema_is_the_published_one(name: str) -> None:
    if not (PUBLISHED / name).exists():
        pytest.skip("shared/spec is not beside the repository (a plain clone)")
    assert json.loads((VENDORED / name).read_text()) == json.loads((PUBLISHED / name).read_text())


def test_a_model_without_a_known_schema_is_named_as_unchecked():
    from flashgen.models import DEFAULT_MODEL, unchecked_model_note

    assert unchecked_model_note(DEFAULT_MODEL) is None
    note = unchecked_model_note("acme/other-model")
    assert note and "'acme/other-model'" in note and DEFAULT_MODEL in note and "unchecked" in note
