"""What every task of one flow run shares: the API client, the S3 store and who we are.

Built once per flow run (one HTTP connection pool, one boto3 client) and handed to each
task, so tasks stay thin and testable.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from flashgen.client import RunComfyClient
from flashgen.errors import AuthenticationError
from flashgen.settings import Settings
from flashgen.storage import Store

TOKEN_BLOCK = "runcomfy-api-token"


@dataclass
class Runtime:
    client: RunComfyClient
    store: Store
    settings: Settings
    batch_id: str
    spool: Path  # where fetched files wait between the fetch and store tasks
    flow_run_id: str | None = None
    deployment: str | None = None
    deadline: float = 900.0  # seconds a job may take from submit to terminal state
    resubmit_ambiguous: bool = False
    force: bool = False
    # Unique per flow invocation: a claim by any other owner belongs to another run.
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:"
                                                f"{uuid.uuid4().hex[:8]}")


async def resolve_token(settings: Settings) -> SecretStr:
    """The API token: RUNCOMFY_API_TOKEN, else the Prefect Secret block ``runcomfy-api-token``."""
    if settings.api_token is not None and settings.api_token.get_secret_value():
        return settings.api_token
    try:
        from prefect.blocks.system import Secret

        secret = await Secret.aload(os.environ.get("FLASHGEN_TOKEN_BLOCK", TOKEN_BLOCK))
        return SecretStr(secret.get())
    except ValueError:
        raise AuthenticationError(
            "no API token: set RUNCOMFY_API_TOKEN or create the Prefect Secret block "
            f"'{TOKEN_BLOCK}' (flashgen provision does this)"
        ) from None
