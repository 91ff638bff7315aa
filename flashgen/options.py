"""Everything a batch run is told, checked before anything is read or sent (no Prefect).

The CLI checks its options with ``BatchOptions.parse`` before Prefect even starts, and the
flow checks them again (a deployment's parameters come from elsewhere); the first problem
is an ``InputError`` naming the field:

    >>> BatchOptions.parse(batch_id="../../etc")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flashgen.errors.InputError: batch_id '../../etc' cannot name an S3 object: ...
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flashgen.errors import InputError
from flashgen.models import DEFAULT_MODEL
from flashgen.storage import safe_segment

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SHARD_DEPLOYMENT = re.compile(r"generate-shard/[^/\s]+")
_PREFIX = re.compile(r"[A-Za-z0-9!_.*'()/=-]*")


class BatchOptions(BaseModel):
    """Everything a batch run is told, checked before anything is read or sent."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = None
    prompts: list[str | dict[str, Any]] | None = None  # a prompt, or a row of input fields
    defaults: dict[str, Any] | None = None
    model_id: str = DEFAULT_MODEL
    bucket: str | None = None
    prefix: str | None = None
    concurrency: int | None = Field(None, ge=1, le=512)
    force: bool = False
    batch_id: str | None = None
    strict: bool = False
    max_failure_ratio: float = Field(0.0, ge=0, le=1)
    resubmit_ambiguous: bool = False
    run_date: date | None = None
    dry_run: bool = False
    max_items: int | None = Field(None, ge=0)
    max_cost: float | None = Field(None, ge=0)
    # Sharding (flashgen.shards): a batch with more items to run than shard_size is split,
    # each shard run by a child flow run, at most max_shards_running at once; on the
    # deployment shard_deployment ("generate-shard/<name>") or, without one, in-process.
    shard_size: int | None = Field(None, ge=1)
    max_shards_running: int = Field(4, ge=1, le=1000)
    shard_deployment: str | None = None

    @field_validator("shard_deployment")
    @classmethod
    def _shard_deployment(cls, value: str | None) -> str | None:
        if value is not None and not _SHARD_DEPLOYMENT.fullmatch(value):
            raise ValueError("name a deployment of the generate-shard flow, e.g. "
                             "generate-shard/process")
        return value

    @field_validator("batch_id")
    @classmethod
    def _batch_id(cls, value: str | None) -> str | None:
        return None if value is None else safe_segment(value, "batch_id")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and not _BUCKET_NAME.fullmatch(value):
            raise ValueError("not a valid S3 bucket name (3-63 lowercase letters, digits, "
                             "'.' or '-')")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and (not _PREFIX.fullmatch(value) or ".." in value.split("/")):
            raise ValueError("use letters, digits and !_.*'()/=- only, no '..' segments")
        return value

    @classmethod
    def parse(cls, **values: Any) -> BatchOptions:
        """Validate, turning the first problem into an InputError that names the field."""
        try:
            return cls(**values)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or "options"
            message = error["msg"].removeprefix("Value error, ")
            got = _excerpt(error.get("input"))
            if not message.startswith(field):
                message = f"{field}: {message}"
            if got not in message:
                message += f" (got {got})"
            raise InputError(message, field=field) from None


def _excerpt(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"
