"""How the emulator behaves: every option is also a ``FLASHGEN_EMULATOR_*`` variable.

    >>> EmulatorConfig(workers=1, job_time=0.1, faults=["status:429:0.5"]).workers
    1

Lists come from the environment as JSON or comma-separated:
``FLASHGEN_EMULATOR_FAULTS="submit:429:0.1,job:fail:0.05"``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from flashgen.emulator.faults import parse_faults


class EmulatorConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLASHGEN_EMULATOR_")

    workers: int = Field(4, ge=1, description="jobs run at once; the rest wait in the queue")
    job_time: float = Field(2.0, ge=0, description="mean seconds a job runs")
    job_time_spread: float = Field(
        0.25, ge=0, le=1, description="each job takes uniform job_time·(1±spread) seconds"
    )
    job_time_seed: int = Field(0, description="seed of the job-time draws")
    tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted Bearer tokens; empty accepts any token"
    )
    link_ttl: float | None = Field(
        None, gt=0, description="seconds a file link stays valid; unset: links never expire"
    )
    faults: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="fault specs ROUTE:KIND:RATE"
    )
    fault_seed: int | None = Field(None, description="seed that makes fault draws repeatable")
    retry_after: float = Field(1.0, ge=0, description="seconds sent in Retry-After with a 429")
    slow_seconds: float = Field(2.0, ge=0, description="how long a `slow` fault delays")
    price_usd: float = Field(
        0.025, ge=0, description="base_price_usd of every model in the catalog (per output)"
    )
    public_url: str | None = Field(
        None, description="base of absolute URLs; unset: the request's own base URL"
    )

    @field_validator("tokens", "faults", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("faults")
    @classmethod
    def _check_faults(cls, value: list[str]) -> list[str]:
        parse_faults(value)  # raises a ValueError that names the bad spec
        return value
