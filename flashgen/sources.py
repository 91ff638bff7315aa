"""Prompt sources: rows in, validated generation items out.

A source is inline prompts, or a CSV, JSONL, JSON or YAML file (local or ``s3://``).
Each row may set any input field. A row (or the defaults) with several ``seeds``,
``variations: N`` or several ``aspect_ratios`` expands into one item per combination.
Every row is validated before anything is sent; bad rows come back as ``InvalidRow``
with their line number and reason, and the good rows go on.

    >>> plan = plan_batch(rows_from_prompts(["a fox", "an owl"]),
    ...                   defaults={"aspect_ratios": ["16:9", "1:1"]})
    >>> len(plan.items), plan.items[0].inputs["aspect_ratio"]
    (4, '1440:810 (16:9)')
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from flashgen.errors import InputError
from flashgen.models import DEFAULT_MODEL, fingerprint, validate_inputs

# Row keys that expand into several items; they never reach the API.
EXPANDERS = ("seeds", "variations", "aspect_ratios")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "yaml",
           ".yaml": "yaml", ".yml": "yaml"}


class Row(BaseModel):
    """One row of a source, before validation. ``line`` is 1-based in the source file."""

    line: int
    fields: dict[str, Any]


class Item(BaseModel):
    """One generation: validated inputs with defaults applied, and its idempotency key."""

    line: int
    model_id: str
    inputs: dict[str, Any]
    key: str


class InvalidRow(BaseModel):
    line: int
    reason: str
    fields: dict[str, Any] | None = None


class BatchPlan(BaseModel):
    items: list[Item]
    invalid: list[InvalidRow]
    duplicates: list[tuple[Item, int]] = []  # (item, line of the first item with its key)
    warnings: list[str] = []


# --- reading ------------------------------------------------------------------------


def rows_from_prompts(prompts: Iterable[str]) -> list[Row]:
    return [Row(line=n, fields={"prompt": p}) for n, p in enumerate(prompts, start=1)]


def read_rows(source: str, read_s3: Callable[[str], str] | None = None) -> list[Row]:
    """Rows of a prompt file, by its extension. ``read_s3`` reads an ``s3://`` URI."""
    suffix = Path(source.split("?")[0]).suffix.lower()
    kind = FORMATS.get(suffix)
    if kind is None:
        raise InputError(
            f"source: {source!r} has an unknown extension; use one of {', '.join(FORMATS)}",
            field="source",
        )
    if source.startswith("s3://"):
        if read_s3 is None:
            raise InputError("source: an s3:// source needs S3 access", field="source")
        text = read_s3(source)
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"source: cannot read {source!r}: {exc.strerror}",
                             field="source") from None
    return {"csv": _csv_rows, "jsonl": _jsonl_rows, "yaml": _yaml_rows}[kind](text)


def _csv_rows(text: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for record in reader:
        fields = {k.strip(): v.strip() for k, v in record.items() if k and v and v.strip()}
        if fields:
            rows.append(Row(line=reader.line_num, fields=fields))
    return rows


def _jsonl_rows(text: str) -> list[Row]:
    rows = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            value = _Unparsable(f"not valid JSON ({exc.msg})")
        rows.append(Row(line=n, fields=_as_fields(value)))
    return rows


class _YamlLoader(yaml.SafeLoader):
    """YAML without 1.1's base-60 numbers, which would read ``aspect_ratio: 9:16`` as 556."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(0|[1-9][0-9_]*)$"),
                                  list("-+0123456789"))
_YamlLoader.add_implicit_resolver(
    _FLOAT, re.compile(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"))


def _yaml_rows(text: str) -> list[Row]:
    """A list of rows, or ``{defaults: {...}, prompts: [...]}`` (defaults merge into rows)."""
    try:
        node = yaml.compose(text, Loader=_YamlLoader)
        data = yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        raise InputError(f"source: not valid YAML: {exc}", field="source") from None
    defaults: dict[str, Any] = {}
    if isinstance(data, dict):
        defaults = data.get("defaults") or {}
        seq_node = next((v for k, v in node.value if k.value in ("prompts", "rows")), None)
        data = data.get("prompts", data.get("rows"))
    else:
        seq_node = node
    if not isinstance(data, list) or seq_node is None:
        raise InputError("source: YAML must be a list of prompts or have a 'prompts' list",
                         field="source")
    return [
        Row(line=item_node.start_mark.line + 1, fields={**defaults, **_as_fields(value)})
        for item_node, value in zip(seq_node.value, data, strict=True)
    ]


class _Unparsable(str):
    pass


def _as_fields(value: Any) -> dict[str, Any]:
    if isinstance(value, _Unparsable):
        return {"__error__": str(value)}
    if isinstance(value, str):
        return {"prompt": value}
    if isinstance(value, dict):
        return value
    return {"__error__": f"a row must be a prompt string or an object, not {type(value).__name__}"}


# --- expanding and validating -------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def expand(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """One input dict per combination of ``seeds`` × ``aspect_ratios``.

    ``variations: N`` means N seeds counting up from the row's ``seed`` (or the
    model default), so re-running the same row gives the same N images.
    """
    fields = dict(fields)
    seeds = _as_list(fields.pop("seeds")) if "seeds" in fields else None
    variations = fields.pop("variations", None)
    ratios = _as_list(fields.pop("aspect_ratios")) if "aspect_ratios" in fields else None
    if variations is not None:
        try:
            count = int(variations)
        except (TypeError, ValueError):
            raise InputError(f"variations: {variations!r} is not a whole number",
                             field="variations") from None
        if not 1 <= count <= 1000:
            raise InputError(f"variations: {count} is outside 1..1000", field="variations")
        base = int((seeds or [fields.get("seed", 58583956)])[0])
        seeds = [base + i for i in range(count)]
    combos = itertools.product(seeds or [None], ratios or [None])
    out = []
    for seed, ratio in combos:
        one = dict(fields)
        if seed is not None:
            one["seed"] = seed
        if ratio is not None:
            one["aspect_ratio"] = ratio
        out.append(one)
    return out


def fill_template(fields: dict[str, Any], variables: dict[str, str]) -> dict[str, Any]:
    """Replace ``{name}`` placeholders in the text fields (only the names given)."""
    def fill(text: str) -> str:
        for name, value in variables.items():
            text = text.replace("{" + name + "}", value)
        return text

    return {k: fill(v) if isinstance(v, str) else v for k, v in fields.items()}


# A row's single value beats the defaults' list of the same field.
_OVERRIDES = {"aspect_ratio": "aspect_ratios", "seed": "seeds"}


def _merge(defaults: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    merged = {k: v for k, v in defaults.items()
              if not any(own in fields and k == plural for own, plural in _OVERRIDES.items())}
    return {**merged, **fields}


def plan_batch(
    rows: Iterable[Row],
    *,
    defaults: dict[str, Any] | None = None,
    model_id: str = DEFAULT_MODEL,
    variables: dict[str, str] | None = None,
) -> BatchPlan:
    """Validate every row and expand it into items; collect bad rows instead of raising."""
    items: list[Item] = []
    invalid: list[InvalidRow] = []
    duplicates: list[tuple[Item, int]] = []
    notes: list[str] = []
    first_line: dict[str, int] = {}
    for row in rows:
        if "__error__" in row.fields:
            invalid.append(InvalidRow(line=row.line, reason=row.fields["__error__"]))
            continue
        fields = fill_template(_merge(defaults or {}, row.fields), variables or {})
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                expanded = [validate_inputs(model_id, one) for one in expand(fields)]
        except InputError as exc:
            invalid.append(InvalidRow(line=row.line, reason=str(exc), fields=row.fields))
            continue
        notes += [f"line {row.line}: {w.message}" for w in caught]
        for inputs in expanded:
            item = Item(line=row.line, model_id=model_id, inputs=inputs,
                        key=fingerprint(model_id, inputs))
            if item.key in first_line:
                duplicates.append((item, first_line[item.key]))
                continue
            first_line[item.key] = row.line
            items.append(item)
    return BatchPlan(items=items, invalid=invalid, duplicates=duplicates,
                     warnings=sorted(set(notes)))
