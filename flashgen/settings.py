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
    FLASHGEN_CLAIM_TTL      seconds an unsubmitted claim is honoured before it is stale
    FLASHGEN_MAX_IMAGE_BYTES / FLASHGEN_MAX_VIDEO_BYTES   download caps (50 MB / 100 MB)
    FLASHGEN_JOB_DEADLINE   seconds a job may take from submit to finish (default 900)
    FLASHGEN_POLL_INITIAL / FLASHGEN_POLL_MAXIMUM   status polling interval bounds (s)
    FLASHGEN_TASK_RETRY_DELAY       first delay between Prefect task retries (doubles; 2 s)
    FLASHGEN_GALLERY_URL_TTL        seconds the gallery's presigned links work (default 7 days)
    FLASHGEN_TESTING        "1" removes every sleep (tests only)
"""

from __future__ import annotations

from functools import lru_cache

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
    # Longer than a submit can take with all its retries (the client's budget is 120 s).
    claim_ttl: float = Field(300.0, gt=0)
    max_image_bytes: int = 50 * 1024 * 1024
    max_video_bytes: int = 100 * 1024 * 1024
    job_deadline: float = Field(900.0, gt=0)
    poll_initial: float = Field(0.5, gt=0)
    poll_maximum: float = Field(5.0, gt=0)
    task_retry_delay: float = Field(2.0, ge=0)
    # 7 days is also the longest a SigV4-presigned S3 URL may live.
    gallery_url_ttl: int = Field(7 * 24 * 3600, ge=1, le=7 * 24 * 3600)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once. Tests call ``get_settings.cache_clear()``."""
    return Settings()
