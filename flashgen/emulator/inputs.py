"""Strict input checking, as the real API does it: the model's JSON schema, nothing friendlier.

    >>> checked_inputs(DEFAULT_MODEL, b'{"prompt": "a fox"}')["aspect_ratio"]
    '1440:810 (16:9)'
    >>> try:
    ...     checked_inputs(DEFAULT_MODEL, b'{"prompt": "a fox", "aspect_ratio": "16:9"}')
    ... except ApiProblem as problem:
    ...     print(problem.status, problem.error_code, problem.detail[0]["field"])
    422 422001 aspect_ratio

The schema is the published one (``flashgen/schemas/input_schema.json``), not the client's
model of it, so the emulator cannot share a mistake with the client. Unlike
``flashgen.models.WanFlashInput`` it does not normalise ``"16:9"``: the client must send
the exact enum string, and the emulator is where that is proven.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from flashgen.emulator.problems import ApiProblem
from flashgen.models import DEFAULT_MODEL
from flashgen.schemas import input_schema

# The models the emulator serves, each with the validator of its input schema. Unknown
# fields are refused, as a strict API would: a typo must not silently fall back to a default.
VALIDATORS: dict[str, Draft202012Validator] = {
    DEFAULT_MODEL: Draft202012Validator({**input_schema(), "additionalProperties": False}),
}


def checked_inputs(model_id: str, body: bytes) -> dict[str, Any]:
    """The submitted inputs with the schema's defaults applied, or an ``ApiProblem``."""
    validator = VALIDATORS.get(model_id)
    if validator is None:
        raise ApiProblem(404, 404001, f"unknown model {model_id!r}")
    try:
        inputs = json.loads(body)
    except ValueError as exc:
        raise ApiProblem(422, 422001, f"the body is not valid JSON: {exc}") from None
    errors = sorted(validator.iter_errors(inputs), key=lambda e: list(e.path))
    if errors:
        detail = [{"field": _field(e), "message": e.message} for e in errors]
        raise ApiProblem(
            422,
            422001,
            f"input does not match the schema of {model_id}: "
            + "; ".join(f"{d['field']}: {d['message']}" for d in detail),
            detail=detail,
        )
    properties = validator.schema["properties"]
    defaults = {k: p["default"] for k, p in properties.items() if "default" in p}
    return {**defaults, **inputs}


def _field(error: ValidationError) -> str:
    """The field an error is about; schema-level errors name the field in the instance."""
    if error.path:
        return ".".join(str(part) for part in error.path)
    if error.validator == "required":
        missing = [n for n in error.validator_value if n not in error.instance]
        return ",".join(missing) or "(body)"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        return ",".join(k for k in error.instance if k not in allowed) or "(body)"
    return "(body)"
