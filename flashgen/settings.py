"""Configuration from the environment; explicit arguments always win over it.

    RUNCOMFY_API_TOKEN      the API token (kept as a SecretStr; never logged)
    FLASHGEN_TOKEN_FILE     a file holding the token (a mounted Kubernetes or Docker secret),
                            read when RUNCOMFY_API_TOKEN is unset; its trailing newline dropped
    FLASHGEN_TOKEN_BLOCK    the Prefect Secret block holding the token when the variable is
                            unset (default "runcomfy-api-token"; `flashgen provision` makes it)
    RUNCOMFY_BASE_URL       the API's base URL (default https://model-api.runcomfy.net)
    FLASHGEN_BUCKET         S3 bucket for images, metadata, ledger and manifests
    FLASHGEN_PREFIX         key prefix inside the bucket (default "flashgen")
    AWS_ENDPOINT_URL        an S3-compatible endpoint (moto, MinIO, …); unset for AWS
    FLASHGEN_INBOX_QUEUE    the SQS queue (name or URL) S3 tells of inbox uploads; `flashgen
                            listen` reads it, `flashgen provision` makes it (flashgen-inbox)
    FLASHGEN_S3_SSE         server-side encryption: "AES256" or "aws:kms" (default none)
    FLASHGEN_S3_KMS_KEY_ID  the KMS key when FLASHGEN_S3_SSE is "aws:kms"
    FLASHGEN_API_CONCURRENCY        jobs queued or running at the API at once (default 4)
    FLASHGEN_CONCURRENCY_LIMIT      the Prefect global concurrency limit that shares them
    FLASHGEN_SEND_LEASE     seconds a "sending" ledger entry is honoured (one submit request)
    FLASHGEN_STATE_DIR      this machine's journal of request_ids not yet in the ledger
    FLASHGEN_STATE_DIR_MOUNTED      "1": the state dir must be a mounted volume, refused
                            otherwise (flashgen's container image sets it)
    FLASHGEN_PRICE_PER_IMAGE        USD per image, over the API catalog's (plans, --max-cost)
    FLASHGEN_MAX_IMAGE_BYTES / FLASHGEN_MAX_VIDEO_BYTES   download caps (50 MB / 100 MB)
    FLASHGEN_JOB_DEADLINE   seconds a job may take from submit to finish (default 900)
    FLASHGEN_POLL_INITIAL / FLASHGEN_POLL_MAXIMUM   status polling interval bounds (s)
    FLASHGEN_JOB_TIME_PRIOR seconds a job is expected to run before this run has seen any
                            finish (default 5); polls are timed around the expected end
    FLASHGEN_OUTPUT_NETWORKS        networks (CIDR, comma-separated) outputs may also come
                            from, over http too: "127.0.0.0/8" for the local emulator;
                            default none (https from public addresses only)
    FLASHGEN_TASK_RETRY_DELAY       first delay between Prefect task retries (doubles; 2 s)
    FLASHGEN_TASK_GROUP_FROM / FLASHGEN_TASK_GROUP_SIZE   a batch with at least FROM items to
                            send (default 100) runs them SIZE (default 16) to a Prefect task
                            run; a smaller one, a task run per step of each item
    FLASHGEN_GALLERY_URL_TTL        seconds the gallery's presigned links work (default 7 days)
    FLASHGEN_STORAGE_BREAKER        S3 refusals in a row (403, no bucket) after which a run
                                    stops submitting (default 3)
    FLASHGEN_TESTING        "1" removes every sleep (tests only)

Entry points (the CLI, flows) read the environment once with ``get_settings()`` and pass
the ``Settings`` on; nothing else reads it::

    settings = get_settings()
    client = RunComfyClient.from_settings(settings, token=await resolve_token(settings))
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flashgen.errors import AuthenticationError, InputError
from flashgen.outputs import Network, parse_networks

DEFAULT_BASE_URL = "https://model-api.runcomfy.net"
TOKEN_ENV = "RUNCOMFY_API_TOKEN"
TOKEN_FILE_ENV = "FLASHGEN_TOKEN_FILE"
DEFAULT_TOKEN_BLOCK = "runcomfy-api-token"
DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_VIDEO_BYTES = 100 * 1024 * 1024


class Settings(BaseSettings):
    # populate_by_name: code and tests may say Settings(base_url=...), not only the aliases.
    model_config = SettingsConfigDict(env_prefix="FLASHGEN_", extra="ignore",
                                      populate_by_name=True)

    api_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("RUNCOMFY_API_TOKEN", "FLASHGEN_API_TOKEN")
    )
    token_file: Path | None = None
    token_block: str = DEFAULT_TOKEN_BLOCK
    base_url: str = Field(
        DEFAULT_BASE_URL, validation_alias=AliasChoices("RUNCOMFY_BASE_URL", "FLASHGEN_BASE_URL")
    )
    bucket: str | None = None
    prefix: str = "flashgen"
    aws_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL", "FLASHGEN_AWS_ENDPOINT_URL")
    )
    inbox_queue: str = "flashgen-inbox"
    s3_sse: Literal["AES256", "aws:kms"] | None = None
    s3_kms_key_id: str | None = None
    api_concurrency: int = Field(4, ge=1)
    # A batch with more items to run than this is split into shards (flashgen.shards);
    # None: never, unless a run asks with its shard_size parameter.
    shard_size: int | None = Field(None, ge=1)
    concurrency_limit: str = "runcomfy-api"
    # Covers one submit: the client's submit budget with its retries, plus margin.
    send_lease: float = Field(90.0, gt=0)
    state_dir: Path = Field(default_factory=lambda: Path(
        os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "flashgen")
    # In a container the root filesystem dies with it: there the journal must be on a volume.
    state_dir_mounted: bool = False
    price_per_image: float | None = Field(None, ge=0)
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, gt=0)
    max_video_bytes: int = Field(DEFAULT_MAX_VIDEO_BYTES, gt=0)
    job_deadline: float = Field(900.0, gt=0)
    # A cancelled batch waits this long for its running jobs to finish and be stored. A
    # process worker kills a cancelled run's process 30 s after its SIGTERM: keep it well
    # inside that, leaving time to store and to write the manifest.
    cancel_grace: float = Field(10.0, ge=0)
    poll_initial: float = Field(0.5, gt=0)
    poll_maximum: float = Field(5.0, gt=0)
    job_time_prior: float = Field(5.0, gt=0)
    task_retry_delay: float = Field(2.0, ge=0)
    # What a task run costs decides these: flashgen.tasks.generation, its docstring.
    task_group_from: int = Field(100, ge=1)
    task_group_size: int = Field(16, ge=1)
    # 7 days is also the longest a SigV4-presigned S3 URL may live.
    gallery_url_ttl: int = Field(7 * 24 * 3600, ge=1, le=7 * 24 * 3600)
    # Outputs come over https from public addresses; these networks are allowed too.
    output_networks: str = ""

    @field_validator("output_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)  # ValueError naming the entry
        return value

    @property
    def networks_for_outputs(self) -> tuple[Network, ...]:
        return parse_networks(self.output_networks)

    # Non-transient S3 refusals in a row (403, NoSuchBucket) after which a run stops
    # paying for jobs whose results it could not keep (flashgen.tasks.context.StorageBreaker).
    storage_breaker: int = Field(3, ge=1)

    @field_validator("base_url", "aws_endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host, e.g. https://host:port")
        return value


def env_name(field: str) -> str:
    """The environment variable that sets ``field``: what an error message should name.

    >>> env_name("base_url"), env_name("max_image_bytes")
    ('RUNCOMFY_BASE_URL', 'FLASHGEN_MAX_IMAGE_BYTES')
    """
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"FLASHGEN_{field.upper()}"


def settings_error(exc: ValidationError) -> InputError:
    """One line naming the setting (its environment variable), what is allowed and what was
    given; never the value of the token."""
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "settings"
        name = env_name(field) if field in Settings.model_fields else field
        given = "" if "token" in name.lower() else f" (got {error.get('input')!r:.80})"
        problems.append(f"{name}: {error['msg'].removeprefix('Value error, ')}{given}")
    return InputError("; ".join(problems), field=problems[0].split(":")[0] if problems else None)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once. Tests call ``get_settings.cache_clear()``.

    A setting out of its range (``FLASHGEN_MAX_IMAGE_BYTES=-1``, a TTL over 7 days, a base
    URL that is not http(s)) raises ``InputError`` naming its environment variable, so the
    CLI, the flows and the deployments all refuse it before the first paid request.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise settings_error(exc) from None


class Token(SecretStr):
    """An API token that knows where it came from, for error messages that say what to fix.

        >>> Token("abc", source="RUNCOMFY_API_TOKEN")
        Token('**********', source='RUNCOMFY_API_TOKEN')
    """

    def __init__(self, value: str, *, source: str) -> None:
        super().__init__(value)
        self.source = source

    def __repr__(self) -> str:
        return f"Token({str(self)!r}, source={self.source!r})"


def normalise_token(value: str | SecretStr | None, source: str) -> Token | None:
    """The token as ``source`` holds it, without surrounding whitespace; None when empty.

    A token read from a file or a Kubernetes secret often ends in a newline. Inside, a
    token is one word of visible ASCII: a space, a control character or anything beyond
    ASCII cannot go into an HTTP header (httpx would refuse it with the header, token
    included, in its error text), so it is refused here with an ``InputError`` that names
    ``source`` and the character's position, never the value::

        >>> normalise_token("abc123\\n", "RUNCOMFY_API_TOKEN").get_secret_value()
        'abc123'
        >>> normalise_token("abc 123", "RUNCOMFY_API_TOKEN")
        Traceback (most recent call last):
        ...
        flashgen.errors.InputError: RUNCOMFY_API_TOKEN: the API token has a space, control \
or non-ASCII character inside it (character 4); a token is one word of visible ASCII
    """
    if value is None:
        return None
    text = (value.get_secret_value() if isinstance(value, SecretStr) else value).strip()
    if not text:
        return None
    bad = next((i for i, c in enumerate(text) if not "!" <= c <= "~"), None)
    if bad is not None:
        raise InputError(f"{source}: the API token has a space, control or non-ASCII character "
                         f"inside it (character {bad + 1}); a token is one word of visible "
                         "ASCII", field="token")
    return Token(text, source=source)


def token_help(settings: Settings) -> str:
    """Where a token may come from, for any message about a missing or rejected one."""
    return (
        f"set {TOKEN_ENV}, or {TOKEN_FILE_ENV} to a file holding it, or store it in the "
        f"Prefect Secret block {settings.token_block!r} (`flashgen provision` creates it "
        f"from {TOKEN_ENV})"
    )


async def resolve_token(settings: Settings, token: str | SecretStr | None = None) -> Token:
    """The API token: ``token`` if given, else ``RUNCOMFY_API_TOKEN``, else the file
    ``FLASHGEN_TOKEN_FILE`` names, else the Prefect Secret block named by
    ``FLASHGEN_TOKEN_BLOCK`` (``settings.token_block``).

        client = RunComfyClient.from_settings(settings, token=await resolve_token(settings))

    The result is a ``Token`` (a ``SecretStr``) whose ``source`` names where it came from,
    normalised by ``normalise_token`` (which raises ``InputError`` for a malformed one).
    Raises ``AuthenticationError`` naming all the places when none has a token.
    """
    found = (
        normalise_token(token, getattr(token, "source", "the token= argument"))
        or normalise_token(settings.api_token, TOKEN_ENV)
        or _token_file(settings.token_file)
        or normalise_token(await _secret_block(settings.token_block),
                           f"the Prefect Secret block {settings.token_block!r}")
    )
    if found is None:
        raise AuthenticationError(f"no RunComfy API token: {token_help(settings)}")
    return found


def _token_file(path: Path | None) -> Token | None:
    """The token in ``path`` (``FLASHGEN_TOKEN_FILE``), or None when no file is named.

    A file that is named and cannot be read, or is empty, is an ``AuthenticationError``
    naming the variable and the path, never a silent fall-through to the Secret block: the
    operator who mounted a secret meant that one. The message never holds the content.

        >>> import tempfile
        >>> secret = Path(tempfile.mkdtemp()) / "token"
        >>> _ = secret.write_text("tok-123\\n")
        >>> token = _token_file(secret)
        >>> token.get_secret_value(), token.source == f"{TOKEN_FILE_ENV} ({secret})"
        ('tok-123', True)
    """
    if path is None:
        return None
    source = f"{TOKEN_FILE_ENV} ({path})"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise AuthenticationError(f"{source}: the token file cannot be read ({reason})") from None
    token = normalise_token(text, source)
    if token is None:
        raise AuthenticationError(f"{source}: the token file is empty")
    return token


async def _secret_block(name: str) -> str | None:
    """The block's value, or None when it does not exist (or Prefect is not installed)."""
    try:
        from prefect.blocks.system import Secret  # lazily: the core library needs no Prefect
    except ImportError:
        return None
    try:
        secret = await Secret.aload(name)
    except ValueError:  # Prefect's answer for a block that does not exist
        return None
    value = secret.get()
    return value if isinstance(value, str) else None
