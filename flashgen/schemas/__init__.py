"""RunComfy's published JSON Schemas for the default model, vendored byte for byte.

``input_schema.json`` and ``output_schema.json`` are copied from the model's API page so
that the parity tests (client model, emulator, published schema) run in any checkout and
the emulator validates submissions exactly as published:

    >>> input_schema()["properties"]["aspect_ratio"]["default"]
    '1440:810 (16:9)'
    >>> sorted(output_schema()["output"]["properties"])
    ['image', 'images', 'video', 'videos']
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any


def _load(name: str) -> dict[str, Any]:
    return json.loads(files(__name__).joinpath(name).read_text(encoding="utf-8"))


def input_schema() -> dict[str, Any]:
    """The default model's input schema (a fresh copy; callers may change it)."""
    return _load("input_schema.json")


def output_schema() -> dict[str, Any]:
    """The shape of a completed result's ``output`` (under the key ``output``)."""
    return _load("output_schema.json")
