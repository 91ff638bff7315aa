"""Schemas: the default model's input, and the API's answers.

``WanFlashInput`` mirrors the published ``flashgen/schemas/input_schema.json`` field for
field (tests/test_models.py checks it). Friendly input is normalised before validation
(``"16:9"``, ``"16x9"`` and ``"1440:810"`` all become ``"1440:810 (16:9)"``); anything
still invalid becomes an ``InputError`` that names the field and what is allowed.

    >>> WanFlashInput(prompt="a red fox", aspect_ratio="9:16").aspect_ratio
    '810:1440 (9:16)'
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from enum import StrEnum
from math import gcd
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flashgen.errors import InputError

DEFAULT_MODEL = "wan-ai/wan-2-2/flash/text-to-image"
DEFAULT_PROMPT = (
    "Cyberpunk alley in heavy rain, neon signs reflecting on wet asphalt, dramatic rim light, "
    "crisp details, 16 by 9"
)
PROMPT_GUIDANCE_CHARS = 800

# The 15 strings the API accepts, in the schema's order.
AspectRatio = Literal[
    "1440:720 (2:1)",
    "1440:810 (16:9)",
    "1440:864 (5:3)",
    "1440:960 (3:2)",
    "1440:1024 (7:5)",
    "1360:1020 (4:3)",
    "1280:1024 (5:4)",
    "1024:1024 (1:1)",
    "1024:1280 (4:5)",
    "1024:1365 (3:4)",
    "1024:1434 (5:7)",
    "960:1440 (2:3)",
    "864:1440 (3:5)",
    "810:1440 (9:16)",
    "720:1440 (1:2)",
]
ASPECT_RATIOS: tuple[str, ...] = get_args(AspectRatio)

_FULL = re.compile(r"^(\d+):(\d+) \((\d+):(\d+)\)$")
_PAIR = re.compile(r"^\s*(\d+)\s*[:x×/]\s*(\d+)\s*$", re.IGNORECASE)


def _aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for full in ASPECT_RATIOS:
        w, h, rw, rh = (int(g) for g in _FULL.match(full).groups())  # type: ignore[union-attr]
        table[f"{w}:{h}"] = full
        table[f"{rw}:{rh}"] = full
        g = gcd(w, h)
        table.setdefault(f"{w // g}:{h // g}", full)
    return table


_ALIASES = _aliases()


def resolution(aspect_ratio: str) -> tuple[int, int]:
    """Width and height in pixels that an aspect-ratio string names."""
    match = _FULL.match(normalise_aspect_ratio(aspect_ratio))
    assert match  # normalise_aspect_ratio only returns schema strings
    return int(match[1]), int(match[2])


def normalise_aspect_ratio(value: str) -> str:
    """Map friendly spellings onto one of ``ASPECT_RATIOS``.

    Accepts the exact string, ``W:H`` resolutions, ``a:b`` ratios, and ``x``, ``×`` or
    ``/`` as the separator. Raises ``InputError`` naming the allowed values otherwise.
    """
    text = str(value).strip()
    if text in ASPECT_RATIOS:
        return text
    match = _PAIR.match(text)
    if match:
        a, b = int(match[1]), int(match[2])
        for key in (f"{a}:{b}", f"{a // gcd(a, b)}:{b // gcd(a, b)}" if a and b else ""):
            if key in _ALIASES:
                return _ALIASES[key]
    raise InputError(
        f"aspect_ratio: {value!r} is not allowed; use one of "
        + ", ".join(repr(r) for r in ASPECT_RATIOS)
        + " (or a short form such as '16:9', '16x9' or '1440:810')",
        field="aspect_ratio",
    )


class LongPromptWarning(UserWarning):
    """The model's page says prompts under 800 characters give better results."""


class WanFlashInput(BaseModel):
    """Input of ``wan-ai/wan-2-2/flash/text-to-image``, 1:1 with its input schema."""

    model_config = ConfigDict(extra="forbid", title="Input")

    prompt: str = Field(
        title="Prompt",
        description="The prompt should be less than 800 characters to get better results.",
        json_schema_extra={"default": DEFAULT_PROMPT},
    )
    negative_prompt: str = Field("", title="Negative Prompt", description="")
    aspect_ratio: AspectRatio = Field("1440:810 (16:9)", title="Resolution (W:H)", description="")
    duration: Literal[5] = Field(5, title="Duration", description="")
    prompt_extend: bool = Field(True, title="Magic Prompt", description="")
    seed: int = Field(58583956, title="Seed", description="")

    @field_validator("aspect_ratio", mode="before")
    @classmethod
    def _normalise_aspect_ratio(cls, value: Any) -> Any:
        return normalise_aspect_ratio(value) if isinstance(value, str) else value

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if len(value) > PROMPT_GUIDANCE_CHARS:
            warnings.warn(
                f"prompt is {len(value)} characters; the model works best under "
                f"{PROMPT_GUIDANCE_CHARS}",
                LongPromptWarning,
                stacklevel=2,
            )
        return value

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The schema as the API publishes it (no pydantic-only keys)."""
        schema = cls.model_json_schema()
        schema.pop("description", None)  # the class docstring, not part of the API's schema
        schema.pop("additionalProperties", None)
        for prop in schema["properties"].values():
            if "const" in prop:  # pydantic writes Literal[5] as const; the API writes an enum
                prop["enum"] = [prop.pop("const")]
        return schema


# Models whose input schema flashgen knows; any other model id takes a free-form dict.
KNOWN_MODELS: dict[str, type[BaseModel]] = {DEFAULT_MODEL: WanFlashInput}


def unchecked_model_note(model_id: str) -> str | None:
    """What to say about ``model_id`` when flashgen does not know its input schema (None
    when it does): its inputs go to the API unchecked."""
    if model_id in KNOWN_MODELS:
        return None
    return (f"model {model_id!r}: flashgen knows the input schema of {', '.join(KNOWN_MODELS)}"
            " only; this model's inputs go to the API unchecked (a model the API does not "
            "know fails each item with a 404, which costs nothing)")


def _validation_message(error: dict[str, Any]) -> str:
    field = ".".join(str(p) for p in error["loc"]) or "input"
    ctx = error.get("ctx") or {}
    if error["type"] == "literal_error" and "expected" in ctx:
        return f"{field}: {error['input']!r} is not allowed; use one of {ctx['expected']}"
    if error["type"] == "extra_forbidden":
        return f"{field}: unknown field; allowed fields are {{allowed}}"
    if error["type"] == "missing":
        return f"{field}: required"
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith(f"{field}: "):  # our own validators already name the field
        return message
    return f"{field}: {message} (got {error.get('input')!r})"


def validate_inputs(model_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Validate and complete ``inputs`` for ``model_id``; return the dict to send.

    Known models get their defaults applied and friendly values normalised. Unknown
    models pass through as given (they must still be a JSON object).
    """
    if not isinstance(inputs, dict):
        raise InputError(f"inputs must be a JSON object, got {type(inputs).__name__}")
    schema = KNOWN_MODELS.get(model_id)
    if schema is None:
        try:
            json.dumps(inputs)
        except (TypeError, ValueError) as exc:
            raise InputError(f"inputs must be JSON-serialisable: {exc}") from None
        return dict(inputs)
    try:
        return schema.model_validate(inputs).model_dump()
    except InputError:
        raise
    except ValidationError as exc:
        allowed = ", ".join(schema.model_fields)
        errors = exc.errors()
        reasons = [_validation_message(e).replace("{allowed}", allowed) for e in errors]
        first = ".".join(str(p) for p in errors[0]["loc"]) or None
        raise InputError("; ".join(reasons), field=first) from None


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(model_id: str, inputs: dict[str, Any]) -> str:
    """Same model and inputs, same fingerprint: the key that makes a job idempotent."""
    digest = hashlib.sha256(canonical_json({"model": model_id, "inputs": inputs}).encode())
    return digest.hexdigest()[:32]


# --- what the API answers ------------------------------------------------------------


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class SubmitHandle(_Answer):
    """What a submit returns. Rebuildable from the id alone, since the URLs follow from it."""

    request_id: str
    status_url: str | None = None
    result_url: str | None = None
    cancel_url: str | None = None


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    UNKNOWN = "unknown"  # a state string we have never seen: treated as not finished

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED)


_STATES = {
    "in_queue": JobState.QUEUED,
    "queued": JobState.QUEUED,
    "in_progress": JobState.RUNNING,
    "running": JobState.RUNNING,
    "completed": JobState.COMPLETED,
    "succeeded": JobState.COMPLETED,
    "cancelled": JobState.CANCELLED,
    "canceled": JobState.CANCELLED,
    "failed": JobState.FAILED,
    "error": JobState.FAILED,
}


class JobStatus(_Answer):
    """A status answer. ``status`` is kept verbatim; ``state`` is what flashgen makes of it."""

    request_id: str
    status: str
    queue_position: int | None = None
    status_url: str | None = None
    result_url: str | None = None
    error: Any = None

    @property
    def state(self) -> JobState:
        return _STATES.get(self.status.strip().lower(), JobState.UNKNOWN)


class JobResult(JobStatus):
    """A result answer: a status plus ``output`` once completed."""

    output: dict[str, Any] | None = None
    created_at: str | None = None
    finished_at: str | None = None
    cost: float | None = None  # USD, when asked for (``include_cost=true``) and known

    @property
    def outputs(self) -> list[tuple[str, str]]:
        """Every output URI with its kind (``image`` or ``video``), in schema order."""
        found: list[tuple[str, str]] = []
        for key, kind in (("image", "image"), ("images", "image"), ("video", "video"),
                          ("videos", "video")):
            value = (self.output or {}).get(key)
            for uri in [value] if isinstance(value, str) else value or []:
                if isinstance(uri, str) and uri:
                    found.append((uri, kind))
        return found

    @property
    def uris(self) -> list[str]:
        return [uri for uri, _ in self.outputs]


class ModelInfo(_Answer):
    """A model's catalog entry (``GET /v1/models/{model_id}``): its price, per output image
    or per second of output."""

    model_id: str
    base_price_usd: float | None = None
    price_unit: str | None = None  # "output" or "second"
    pricing_note: str | None = None


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"  # it was queued and is now cancelled
    NOT_CANCELLABLE = "not_cancellable"  # it is running
    ALREADY_FINISHED = "already_finished"  # it had completed, failed or been cancelled
