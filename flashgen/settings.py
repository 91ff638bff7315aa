"""Configuration from the environment; explicit arguments always win over it.

    RUNCOMFY_API_TOKEN      the API token (kept as a SecretStr; never logged)
    RUNCOMFY_BASE_URL       the API's base URL (default https://model-api.runcomfy.net)
    FLASHGEN_BUCKET         S3 bucket for images, metadata, ledger and manifests
    FLASHGEN_PREFIX         key prefix inside the bucket (default "flashgen")
    AWS_ENDPOINT_URL        an S3-compatible endpoint (moto, MinIO, …); unset for AWS
    FLASHGEN_S3_SSE         server-side encryption: "AES256" or "aws:kms" (default none)
    FLASHGEN_S3_KMS_KEY_ID  the KMS key when FLASHGEN_S3_SSE is "aws:kms"
    FLASHGEN_API_CONCURRENCY        jobs queued or running at the API at once (default 4)
    FLASHGEN_CONCURRENCY_LIMIT      the Prefect global concurrency limit that shares them
    FLASHGEN_SEND_LEASE     seconds a "sending" ledger entry is honoured (one submit request)
    FLASHGEN_STATE_DIR      this machine's journal of request_ids not yet in the ledger
    FLASHGEN_PRICE_PER_IMAGE        your own price per image, for plans and --max-cost
    FLASHGEN_MAX_IMAGE_BYTES / FLASHGEN_MAX_VIDEO_BYTES   download caps (50 MB / 100 MB)
    FLASHGEN_JOB_DEADLINE   seconds a job may take from submit to finish (default 900)
    FLASHGEN_POLL_INITIAL / FLASHGEN_POLL_MAXIMUM   status polling interval bounds (s)
    FLASHGEN_TASK_RETRY_DELAY       first delay between Prefect task retries (doubles; 2 s)
    FLASHGEN_TESTING        "1" removes every sleep (tests only)
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLASHGEN_", extra="ignore")

    api_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RUNCOMFY_API_TOKEN", "FLASHGEN_API_TOKEN")
    )
    base_url: str = Field(
        DEFAULT_BASE_URL, validation_alias=AliasChoices("RUNCOMFY_BASE_URL", "FLASHGEN_BASE_URL")
    )
    bucket: str | None = None
    prefix: str = "flashgen"
    aws_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL", "FLASHGEN_AWS_ENDPOINT_URL")
    )
    s3_sse: str | None = None
    s3_kms_key_id: str | None = None
    api_concurrency: int = Field(4, ge=1)
    concurrency_limit: str = "runcomfy-api"
    # Covers one submit: the client's submit budget with its retries, plus margin.
    send_lease: float = Field(150.0, gt=0)
    state_dir: Path = Field(default_factory=lambda: Path(
        os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "flashgen")
    price_per_image: float | None = Field(None, ge=0)
    max_image_bytes: int = 50 * 1024 * 1024
    max_video_bytes: int = 100 * 1024 * 1024
    job_deadline: float = Field(900.0, gt=0)
    poll_initial: float = Field(0.5, gt=0)
    poll_maximum: float = Field(5.0, gt=0)
    task_retry_delay: float = Field(2.0, ge=0)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once. Tests call ``get_settings.cache_clear()``."""
    return Settings()


async def resolve_token(settings: Settings, token: SecretStr | str | None = None) -> SecretStr:
    """The API token: ``token``, else RUNCOMFY_API_TOKEN, else the Prefect Secret block."""
    if token:
        return token if isinstance(token, SecretStr) else SecretStr(token)
    if settings.api_token is not None and settings.api_token.get_secret_value():
        return settings.api_token
    from flashgen.errors import AuthenticationError

    block = os.environ.get("FLASHGEN_TOKEN_BLOCK", "runcomfy-api-token")
    try:
        from prefect.blocks.system import Secret

        secret = await Secret.aload(block)
        return SecretStr(secret.get())
    except ValueError:
        raise AuthenticationError(
            "no API token: set RUNCOMFY_API_TOKEN or create the Prefect Secret block "
            f"'{block}' (flashgen provision does this)") from None
