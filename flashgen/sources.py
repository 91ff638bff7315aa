"""Prompt sources: rows in, validated generation items out, in bounded memory.

A source is inline prompts, or a CSV, JSONL, JSON or YAML file (local or ``s3://``).
CSV and JSONL are streamed row by row; JSON and YAML are parsed whole, so they are
capped at ``MAX_WHOLE_FILE_BYTES`` (use CSV or JSONL for bigger sets). YAML anchors and
aliases are refused. Each row may set any input field. A row (or the defaults) with
several ``seeds``, ``variations: N``, ``aspect_ratios`` or list-valued ``vars`` expands
into one item per combination; ``{name}`` in a prompt is filled from ``vars``.

Planning is two passes over a re-iterable source. ``plan_batch`` validates every row
and keeps only counts, bad rows, duplicates and fingerprints; ``BatchPlan.iter_items``
streams the unique valid items again, in order. Bad rows never stop the good ones: a
line that is not UTF-8 or holds a control character, or a value (or key) with a lone
surrogate or NUL, is an invalid row with its line, in every format.

    >>> rows = rows_from_prompts(["a {animal} at dawn", "an owl at {time}"])
    >>> plan = plan_batch(rows, defaults={"vars": {"animal": ["fox", "hare"]},
    ...                                   "aspect_ratios": ["16:9", "1:1"]})
    >>> plan.rows, plan.items, [(bad.line, bad.reason) for bad in plan.invalid]
    (2, 4, [(2, 'prompt: {time} has no value; give it in vars')])
    >>> [(i.inputs["prompt"], i.inputs["aspect_ratio"]) for i in plan.iter_items()][1:3]
    [('a fox at dawn', '1024:1024 (1:1)'), ('a hare at dawn', '1440:810 (16:9)')]
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import os
import re
import sys
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar, overload

import yaml
from pydantic import BaseModel, PlainSerializer, PrivateAttr, SkipValidation

from flashgen.errors import InputError
from flashgen.models import DEFAULT_MODEL, fingerprint, validate_inputs

# Row keys that expand into several items; they never reach the API.
EXPANDERS = ("seeds", "variations", "aspect_ratios", "vars")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "yaml",
           ".yaml": "yaml", ".yml": "yaml"}

EXCERPT_CHARS = 120  # the most of any input value that an error message quotes
MAX_REASON_CHARS = 1000  # the most of any one reason a report carries
MAX_LINE_BYTES = 1 << 20  # one line of a CSV or JSONL file
# JSON and YAML are parsed whole, in pure Python (to refuse aliases and keep line numbers):
# 2 MB (~20k rows) takes ~70 MB and ~12 s of CPU to parse.
MAX_WHOLE_FILE_BYTES = 2_000_000
MAX_ITEMS_PER_ROW = 10_000  # product of one row's sweeps
MAX_WARNINGS = 100  # warnings kept word for word; the rest are counted


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, ending in "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Row(BaseModel):
    """One row of a source, before validation. ``line`` is 1-based in the source file.

    ``error`` is set when the row could not even be read (say, a JSONL line that is not
    JSON, or not UTF-8: then ``unreadable``); such a row is reported as invalid.
    """

    line: int
    fields: dict[str, Any]
    error: str | None = None
    unreadable: bool = False  # the error is that its line is not text (bytes, controls)


class Item(BaseModel):
    """One generation: validated inputs with defaults applied, and their fingerprint."""

    line: int
    model_id: str
    inputs: dict[str, Any]
    fingerprint: str


class InvalidRow(BaseModel):
    """A row that will not be sent. Holds only display-safe values, never raw input."""

    line: int
    reason: str
    prompt: str | None = None  # an excerpt of the row's prompt, when that is text


class Duplicate(BaseModel):
    """An item whose inputs (so whose fingerprint) an earlier item has; it is not sent."""

    line: int
    fingerprint: str
    first_line: int
    prompt: str | None
    seed: int | None
    aspect_ratio: str | None


# --- reading ------------------------------------------------------------------------


def rows_from_prompts(prompts: Iterable[str | dict[str, Any]]) -> list[Row]:
    """Inline rows: each a prompt, or an object of input fields (as a JSONL line would be).

    >>> [r.fields for r in rows_from_prompts(["a fox", {"prompt": "a cat", "seed": 7}])]
    [{'prompt': 'a fox'}, {'prompt': 'a cat', 'seed': 7}]
    """
    return [_row(n, value) for n, value in enumerate(prompts, start=1)]


class RowSource:
    """A prompt file's rows, re-readable: each iteration re-opens the file and streams.

    An ``s3://`` source is downloaded once to a local spool file, removed on ``close()``
    (or when the source is garbage-collected). A local file that changes between two
    iterations is an ``InputError``: the second pass must see what the first planned.
    JSON and YAML rows are parsed once and kept (their size is capped), since parsing
    them is slow and they cannot be streamed.
    """

    def __init__(self, source: str, kind: str, path: Path, spooled: bool = False) -> None:
        self.source, self.kind, self.path = source, kind, path
        self._stamp = _stamp(source, path)
        self._cleanup = weakref.finalize(self, _unlink, path) if spooled else None
        self._parsed: list[Row] | None = None
        if kind == "yaml" and self._stamp[0] > MAX_WHOLE_FILE_BYTES:
            self.close()
            raise InputError(
                f"source: {excerpt(source)} is {self._stamp[0]:,} bytes; JSON and YAML files "
                f"are read whole, so at most {MAX_WHOLE_FILE_BYTES:,}: use CSV or JSONL for "
                "bigger sets", field="source")

    def __iter__(self) -> Iterator[Row]:
        if _stamp(self.source, self.path) != self._stamp:
            raise InputError(f"source: {excerpt(self.source)} changed while being read",
                             field="source")
        if self.kind == "yaml":
            if self._parsed is None:
                self._parsed = list(_yaml_rows(self.path))
            return iter(self._parsed)
        return {"csv": _csv_rows, "jsonl": _jsonl_rows}[self.kind](self.path)

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> RowSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_rows(source: str, fetch_s3: Callable[[str, Path], None] | None = None) -> RowSource:
    """The rows of a prompt file, by its extension; a ``RowSource`` to iterate (twice).

    ``fetch_s3(uri, path)`` downloads an ``s3://`` object to a local path. Whole-file
    problems (unknown extension, unreadable, too big to parse whole) raise ``InputError``
    here; those found while reading (not UTF-8, a YAML alias) raise it on iteration.
    """
    suffix = Path(source.split("?")[0]).suffix.lower()
    kind = FORMATS.get(suffix)
    if kind is None:
        raise InputError(
            f"source: {excerpt(source)!r} has an unknown extension; use one of "
            f"{', '.join(FORMATS)}", field="source")
    if not source.startswith("s3://"):
        return RowSource(source, kind, Path(source))
    if fetch_s3 is None:
        raise InputError("source: an s3:// source needs S3 access", field="source")
    fd, spool = tempfile.mkstemp(prefix="flashgen-source-", suffix=suffix)
    os.close(fd)
    try:
        fetch_s3(source, Path(spool))
        return RowSource(source, kind, Path(spool), spooled=True)
    except BaseException:
        _unlink(Path(spool))
        raise


def _stamp(source: str, path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
        with path.open("rb"):  # readable, not just present
            pass
    except OSError as exc:
        raise InputError(f"source: cannot read {excerpt(source)!r}: {exc.strerror}",
                         field="source") from None
    return stat.st_size, stat.st_mtime_ns


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


# What a prompt file may not hold, even when it decodes: lone surrogates (JSON's "\ud800"
# decodes to one; UTF-8 cannot encode it, so it could never be hashed, stored or sent),
# and control characters other than tab and line ends (NUL among them).
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with every character ``_NOT_TEXT`` matches as U+FFFD: safe to write anywhere."""
    return _NOT_TEXT.sub("\ufffd", text)


def _not_text(fields: dict[str, Any]) -> str | None:
    """What makes a row's fields (keys and values, at any depth) not text, or None."""
    for key, value in fields.items():
        stack: list[Any] = [key, value]
        while stack:
            part = stack.pop()
            if isinstance(part, dict):
                stack += [*part.keys(), *part.values()]
            elif isinstance(part, list | tuple):
                stack += part
            elif isinstance(part, str) and (found := _NOT_TEXT.search(part)):
                code = ord(found[0])
                what = "a lone surrogate" if 0xD800 <= code <= 0xDFFF else "a control character"
                return (f"{excerpt(printable(key))}: contains U+{code:04X}, {what}, "
                        "which is not text")
    return None


def _line_text(raw: bytes) -> tuple[str, str | None]:
    """One line's bytes as text, and what makes them unreadable (None when nothing does).

    Bytes that are not UTF-8 and characters that are not text become U+FFFD, so the
    parser still finds the rows around them; the problem makes the row on that line
    invalid (the batch goes on with the others).
    """
    problem = None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", errors="replace")
        problem = f"not UTF-8 text (byte {exc.start + 1} of the line); prompt files must be UTF-8"
    found = _NOT_TEXT.search(text)
    if found:
        problem = problem or (f"control character U+{ord(found[0]):04X} (character "
                              f"{found.start() + 1} of the line) in a prompt file")
        text = printable(text)
    return text, problem


def _text_lines(path: Path) -> Iterator[tuple[str, str | None]]:
    """The file's lines as text (endings kept) with their problems, one at a time, each at
    most MAX_LINE_BYTES; a leading UTF-8 byte-order mark is dropped."""
    with path.open("rb") as stream:
        for line in itertools.count(1):
            raw = stream.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES:
                raise InputError(f"source: line {line} is longer than {MAX_LINE_BYTES:,} bytes; "
                                 "is this a prompt file?", field="source")
            yield _line_text(raw.removeprefix(codecs.BOM_UTF8) if line == 1 else raw)


def _csv_rows(path: Path) -> Iterator[Row]:
    problems: dict[int, str] = {}  # line -> what makes it unreadable

    def lines() -> Iterator[str]:
        for line, (text, problem) in enumerate(_text_lines(path), start=1):
            if problem:
                problems[line] = problem
                # A bare carriage return in binary junk is a CSV error for the whole file.
                text = text[:-2].replace("\r", "\ufffd") + text[-2:]
            yield text

    reader = csv.DictReader(lines())
    try:
        reader.fieldnames  # noqa: B018 -- reads the header, so line_num is where rows start
        last = reader.line_num
        if problems:  # the header is not text: no column of any row can be read
            line = min(problems)
            raise InputError(f"source: line {line}: {problems[line]} (the header)",
                             field="source")
        for record in reader:
            # A record may span lines (a quoted line break): any bad line spoils it.
            spoilt = [problems.pop(n) for n in range(last + 1, reader.line_num + 1)
                      if n in problems]
            last = reader.line_num
            fields = {k.strip(): v.strip() for k, v in record.items()
                      if isinstance(k, str) and k.strip() and isinstance(v, str) and v.strip()}
            if spoilt:
                yield Row(line=reader.line_num, fields={}, error=spoilt[0], unreadable=True)
            elif fields:
                yield _csv_row(reader.line_num, fields)
    except csv.Error as exc:
        raise InputError(f"source: not valid CSV at line {reader.line_num}: {exc}",
                         field="source") from None


def _csv_row(line: int, fields: dict[str, Any]) -> Row:
    """A CSV row; a ``vars`` column holds a JSON object."""
    if "vars" in fields:
        try:
            fields["vars"] = json.loads(fields["vars"])
        except (ValueError, RecursionError):
            return Row(line=line, fields={}, error="vars: must be a JSON object, e.g. "
                       '{"animal": ["fox", "owl"]}')
    return Row(line=line, fields=fields)


def _jsonl_rows(path: Path) -> Iterator[Row]:
    for n, (text, problem) in enumerate(_text_lines(path), start=1):
        text = text.lstrip("\ufeff")  # each of several concatenated files may have a BOM
        if problem:
            yield Row(line=n, fields={}, error=problem, unreadable=True)
            continue
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Row(line=n, fields={}, error=f"not valid JSON ({exc.msg})")
            continue
        except (ValueError, RecursionError) as exc:  # huge integers, deep nesting
            yield Row(line=n, fields={}, error=f"not valid JSON ({excerpt(str(exc))})")
            continue
        yield _row(n, value)


def _row(line: int, value: Any) -> Row:
    if isinstance(value, str):
        return Row(line=line, fields={"prompt": value})
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return Row(line=line, fields=value)
    if isinstance(value, dict):
        return Row(line=line, fields={}, error="field names must be text")
    return Row(line=line, fields={},
               error=f"a row must be a prompt string or an object, not {type(value).__name__}")


class _YamlLoader(yaml.SafeLoader):
    """YAML without anchors and aliases, and without 1.1's base-60 numbers.

    Aliases are refused because they let a few hundred bytes stand for gigabytes
    ("billion laughs"); base-60 would read ``aspect_ratio: 9:16`` as 556.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise InputError(f"source: YAML anchors and aliases (& and *) are not allowed "
                             f"(line {event.start_mark.line + 1})", field="source")
        return super().compose_node(parent, index)


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


def _yaml_text(path: Path) -> tuple[str, dict[int, str]]:
    """The whole file as text (the caller has capped its size), and line -> its problem."""
    with path.open("rb") as stream:
        raw = stream.read(MAX_WHOLE_FILE_BYTES + 1).removeprefix(codecs.BOM_UTF8)
    texts, problems = [], {}
    for line, part in enumerate(raw.splitlines(keepends=True), start=1):
        text, problem = _line_text(part)
        texts.append(text)
        if problem:
            problems[line] = problem
    return "".join(texts), problems


def _yaml_rows(path: Path) -> Iterator[Row]:
    """A list of rows, or ``{defaults: {...}, prompts: [...]}`` (defaults merge into rows).

    A row on a line that is not text is invalid; such a line outside every row (in the
    defaults, say) spoils the whole file.
    """
    text, problems = _yaml_text(path)

    def refuse(message: str) -> InputError:  # a line that is not text says more
        line = min(problems, default=None)
        return InputError(f"source: line {line}: {problems[line]}" if line else message,
                          field="source")

    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise refuse(f"source: not valid YAML: {excerpt(str(exc), MAX_REASON_CHARS)}"
                     ) from None
    finally:
        loader.dispose()
    defaults: dict[str, Any] = {}
    seq_node = node
    if isinstance(data, dict):
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise refuse("source: YAML 'defaults' must be a mapping")
        seq_node = next((v for k, v in node.value if k.value in ("prompts", "rows")), None)
        data = data.get("prompts", data.get("rows"))
    if not isinstance(data, list) or seq_node is None:
        raise refuse("source: YAML must be a list of prompts or have a 'prompts' list")
    rows = []
    for item_node, value in zip(seq_node.value, data, strict=True):
        first = item_node.start_mark.line + 1
        # A block mapping ends where the next row starts: nothing of it is on that line.
        end = item_node.end_mark
        ends_early = not text[text.rfind("\n", 0, end.index) + 1:end.index].strip()
        last = max(first, end.line if ends_early else end.line + 1)
        spoilt = [problems.pop(n) for n in range(first, last + 1) if n in problems]
        if spoilt:
            rows.append(Row(line=first, fields={}, error=spoilt[0], unreadable=True))
            continue
        row = _row(first, value)
        rows.append(row.model_copy(update={"fields": merge(defaults, row.fields)})
                    if defaults else row)
    if problems:
        raise refuse("")
    yield from rows


class ConcatRows:
    """Several row sources one after another, re-iterable.

    With ``renumber``, each source's line numbers continue after the largest line seen
    so far, so that rows of inline prompts follow a file's rows.
    """

    def __init__(self, *sources: Iterable[Row], renumber: bool = True) -> None:
        self.sources, self.renumber = sources, renumber

    def __iter__(self) -> Iterator[Row]:
        last = 0
        for source in self.sources:
            offset = last if self.renumber else 0
            for row in source:
                if offset:
                    row = row.model_copy(update={"line": row.line + offset})
                last = max(last, row.line)
                yield row


def concat_rows(*sources: Iterable[Row], renumber: bool = True) -> ConcatRows:
    return ConcatRows(*sources, renumber=renumber)


# --- expanding and validating -------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _seeds(fields: dict[str, Any]) -> list[Any] | None:
    """``seeds``, or ``variations: N`` seeds counting up from ``seed`` (or its default)."""
    seeds = _as_list(fields.pop("seeds")) if "seeds" in fields else None
    variations = fields.pop("variations", None)
    if variations is None:
        return seeds
    try:
        count = int(variations)
    except (TypeError, ValueError):
        raise InputError(f"variations: {excerpt(repr(variations))} is not a whole number",
                         field="variations") from None
    if not 1 <= count <= 1000:
        raise InputError(f"variations: {count} is outside 1..1000", field="variations")
    try:
        base = int((seeds or [fields.get("seed", 58583956)])[0])
    except (TypeError, ValueError):
        raise InputError("variations: needs a whole-number seed to count up from",
                         field="variations") from None
    return [base + i for i in range(count)]


def _var_values(raw: Any) -> dict[str, list[str]]:
    """``vars`` as name → list of values (a single value is a list of one)."""
    if not isinstance(raw, dict):
        raise InputError("vars: must be an object of name: value (or name: [values])",
                         field="vars")
    out: dict[str, list[str]] = {}
    for name, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, int, float)) for v in values):
            raise InputError(f"vars: {excerpt(str(name))!r} must be text or a number, or a "
                             "non-empty list of those", field="vars")
        out[str(name)] = [str(v) for v in values]
    return out


_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
TEMPLATED = ("prompt", "negative_prompt")


def fill_template(text: str, values: dict[str, str], field: str = "prompt") -> str:
    """Fill ``{name}`` from ``values``; ``{{`` and ``}}`` are literal braces.

    A placeholder without a value is an ``InputError``: it is never sent as written.
    """
    def fill(match: re.Match[str]) -> str:
        name = match[1]
        if name is None:
            return match[0][0]
        if name not in values:
            raise InputError(f"{field}: {{{excerpt(name)}}} has no value; give it in vars",
                             field=field)
        return values[name]

    return _PLACEHOLDER.sub(fill, text)


def expand(fields: dict[str, Any], variables: dict[str, str] | None = None,
           ) -> list[dict[str, Any]]:
    """One input dict per combination of list ``vars`` × ``seeds`` × ``aspect_ratios``.

    ``variations: N`` means N seeds counting up from the row's ``seed`` (or the model
    default), so re-running the same row gives the same N images. ``{name}`` in the
    prompt and negative prompt is filled from ``vars``, then from ``variables``.
    """
    fields = dict(fields)
    swept = _var_values(fields.pop("vars", {}))
    seeds = _seeds(fields)
    ratios = _as_list(fields.pop("aspect_ratios")) if "aspect_ratios" in fields else None
    count = len(seeds or [None]) * len(ratios or [None])
    for values in swept.values():
        count *= len(values)
    if count > MAX_ITEMS_PER_ROW:
        raise InputError(f"vars: this row expands into {count:,} items; at most "
                         f"{MAX_ITEMS_PER_ROW:,} per row", field="vars")
    out = []
    for chosen in itertools.product(*swept.values()):
        values = {**(variables or {}), **dict(zip(swept, chosen, strict=True))}
        filled = {k: fill_template(v, values, k) if k in TEMPLATED and isinstance(v, str) else v
                  for k, v in fields.items()}
        for seed, ratio in itertools.product(seeds or [None], ratios or [None]):
            one = dict(filled)
            if seed is not None:
                one["seed"] = seed
            if ratio is not None:
                one["aspect_ratio"] = ratio
            out.append(one)
    return out


# A row's single value beats the defaults' list of the same field.
_OVERRIDES = {"aspect_ratio": "aspect_ratios", "seed": "seeds"}


def merge(defaults: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` over ``defaults``; ``vars`` merge name by name (the row's win)."""
    merged = {k: v for k, v in defaults.items()
              if not any(own in fields and k == plural for own, plural in _OVERRIDES.items())}
    merged.update(fields)
    if isinstance(defaults.get("vars"), dict) and isinstance(fields.get("vars"), dict):
        merged["vars"] = {**defaults["vars"], **fields["vars"]}
    return merged


def _bounded(message: str, *sources: dict[str, Any]) -> str:
    """``message`` with every long field name or value it quotes cut to an excerpt."""
    for fields in sources:
        for key, value in fields.items():
            for text in (str(key), repr(value)):
                if len(text) > EXCERPT_CHARS and text in message:
                    message = message.replace(text, excerpt(text))
    return excerpt(message, MAX_REASON_CHARS)


def _display(value: Any, kind: type) -> Any:
    if kind is int and isinstance(value, bool):
        return None
    if isinstance(value, str) and kind is str:
        return printable(excerpt(value))
    return value if isinstance(value, kind) else None


class _Planner:
    """Turns one row into its validated inputs (or why not); pure, so both passes agree."""

    def __init__(self, defaults: Any, model_id: str, variables: dict[str, str] | None) -> None:
        if defaults is not None and not isinstance(defaults, dict):
            raise InputError("defaults: must be an object of input fields, e.g. "
                             '{"aspect_ratios": ["16:9", "1:1"]}', field="defaults")
        if defaults and "vars" in defaults and not isinstance(defaults["vars"], dict):
            raise InputError("defaults: vars must be an object of name: value",
                             field="defaults")
        if defaults and (problem := _not_text(defaults)):
            raise InputError(f"defaults: {problem}", field="defaults")
        self.defaults, self.model_id = defaults or {}, model_id
        self.variables = variables or {}

    def plan(self, row: Row, notes: list[str] | None = None,
             ) -> list[tuple[dict[str, Any], str]] | InvalidRow:
        """(inputs, key) per item of ``row``, or the row as invalid; warnings go to notes."""
        fields = merge(self.defaults, row.fields)
        if row.error is not None:
            return self._invalid(row, row.error, fields)
        if problem := _not_text(row.fields):  # before anything hashes or sends it
            return self._invalid(row, problem, fields)
        one: dict[str, Any] = {}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = []
                for one in expand(fields, self.variables):
                    inputs = validate_inputs(self.model_id, one)
                    out.append((inputs, fingerprint(self.model_id, inputs)))
        except InputError as exc:
            return self._invalid(row, _bounded(str(exc), fields, one), fields)
        if notes is not None:
            notes += [f"line {row.line}: {w.message}" for w in caught]
        return out

    @staticmethod
    def _invalid(row: Row, reason: str, fields: dict[str, Any]) -> InvalidRow:
        return InvalidRow(line=row.line, reason=printable(excerpt(reason, MAX_REASON_CHARS)),
                          prompt=_display(fields.get("prompt"), str))


M = TypeVar("M", bound=BaseModel)


class Compact(Sequence[M], Generic[M]):
    """A read-only list of models, kept as tuples and built on access.

    A file of 612k bad rows is a plausible mistake (one misspelt column); as models they
    took ~620 bytes each, as tuples of interned values ~200.
    """

    def __init__(self, model: type[M], rows: Iterable[tuple[Any, ...]] = ()) -> None:
        self._model, self._names = model, tuple(model.model_fields)
        self._rows = list(rows)

    def add(self, *values: Any) -> None:
        self._rows.append(tuple(sys.intern(v) if isinstance(v, str) else v for v in values))

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> M: ...
    @overload
    def __getitem__(self, index: slice) -> list[M]: ...
    def __getitem__(self, index: int | slice) -> M | list[M]:
        if isinstance(index, slice):
            return [self._build(row) for row in self._rows[index]]
        return self._build(self._rows[index])

    def _build(self, row: tuple[Any, ...]) -> M:
        return self._model.model_construct(**dict(zip(self._names, row, strict=True)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Compact({list(self)!r})"


def _as_dicts(rows: Sequence[BaseModel]) -> list[dict[str, Any]]:
    return [row.model_dump() for row in rows]


# A Compact list as it is: validating it would build every model at once.
_Listed = Annotated[Sequence[M], SkipValidation, PlainSerializer(_as_dicts)]


class BatchPlan(BaseModel):
    """What a batch will do: counts, bad rows and duplicates; ``iter_items`` streams it."""

    rows: int  # rows read
    items: int  # unique valid items after expansion
    invalid: _Listed[InvalidRow]
    duplicates: _Listed[Duplicate] = ()
    warnings: list[str] = []
    # (rows, planner, first): the re-iterable rows, and for each key its first item's
    # ordinal and line packed in one int (ordinal << 32 | line): a 612k-row file keeps
    # 612k of them, so they are kept small.
    _pass2: tuple[Iterable[Row], _Planner, dict[bytes, int]] | None = PrivateAttr(None)

    def iter_items(self) -> Iterator[Item]:
        """The unique valid items, in order, read again from the source."""
        if self._pass2 is None:
            raise RuntimeError("this plan has no source to read; build it with plan_batch")
        rows, planner, first = self._pass2
        ordinal = 0
        for row in rows:
            planned = planner.plan(row)
            if isinstance(planned, InvalidRow):
                continue
            for inputs, key in planned:
                ordinal += 1
                if first.get(bytes.fromhex(key), 0) >> 32 == ordinal:
                    yield Item(line=row.line, model_id=planner.model_id, inputs=inputs,
                               fingerprint=key)


def plan_batch(
    rows: Iterable[Row],
    *,
    defaults: dict[str, Any] | None = None,
    model_id: str = DEFAULT_MODEL,
    variables: dict[str, str] | None = None,
) -> BatchPlan:
    """Validate every row and expand it into items; collect bad rows instead of raising.

    ``rows`` should be re-iterable (a ``RowSource``, a list, ``concat_rows(...)``):
    ``iter_items`` reads it again. A one-shot iterator is copied into a list first.
    Raises ``InputError`` only for the whole batch: bad ``defaults``, a source that
    cannot be read, or one in which no row is text (a binary file).
    """
    planner = _Planner(defaults, model_id, variables)
    if isinstance(rows, Iterator):
        rows = list(rows)
    first: dict[bytes, int] = {}
    invalid = Compact(InvalidRow)
    duplicates = Compact(Duplicate)
    notes: list[str] = []
    count = ordinal = unreadable = 0
    for row in rows:
        count += 1
        unreadable += row.unreadable
        planned = planner.plan(row, notes)
        if isinstance(planned, InvalidRow):
            invalid.add(planned.line, planned.reason, planned.prompt)
            continue
        for inputs, key in planned:
            ordinal += 1
            digest = bytes.fromhex(key)
            if digest in first:
                duplicates.add(row.line, key, first[digest] & 0xFFFFFFFF,
                               _display(inputs.get("prompt"), str),
                               _display(inputs.get("seed"), int),
                               _display(inputs.get("aspect_ratio"), str))
            else:
                first[digest] = ordinal << 32 | row.line
        del notes[MAX_WARNINGS + 1:]
    if count and unreadable == count:  # not one row of text: not a prompt file at all
        raise InputError(f"source: no row is text (line {invalid[0].line}: "
                         f"{invalid[0].reason}); is this a prompt file?", field="source")
    plan = BatchPlan(rows=count, items=len(first), invalid=invalid, duplicates=duplicates,
                     warnings=_warnings(notes))
    plan._pass2 = (rows, planner, first)
    return plan


def _warnings(notes: list[str]) -> list[str]:
    kept = list(dict.fromkeys(notes[:MAX_WARNINGS]))
    if len(notes) > MAX_WARNINGS:
        kept.append(f"(more warnings not shown; only the first {MAX_WARNINGS} are kept)")
    return kept
