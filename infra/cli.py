"""``flashgen provision``: the command over infra/provision.py.

Prefect and boto3 are imported when the command runs, so ``flashgen --help`` stays quick.
"""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import typer


def provision_command(
    bucket: Annotated[str | None, typer.Option(
        help="S3 bucket to create or configure (env FLASHGEN_BUCKET).")] = None,
    skip_bucket: Annotated[bool, typer.Option(
        "--skip-bucket", help="Leave S3 alone (when these credentials cannot manage it).")
    ] = False,
    sse: Annotated[str | None, typer.Option(
        help="Default bucket encryption: AES256 or aws:kms (env FLASHGEN_S3_SSE).")] = None,
    kms_key_id: Annotated[str | None, typer.Option(
        help="KMS key for aws:kms (env FLASHGEN_S3_KMS_KEY_ID).")] = None,
    api_concurrency: Annotated[int | None, typer.Option(
        min=1, help="Jobs at the API at once, shared by every run and worker "
        "(env FLASHGEN_API_CONCURRENCY).")] = None,
    concurrency_limit: Annotated[str | None, typer.Option(
        help="Name of that global concurrency limit (env FLASHGEN_CONCURRENCY_LIMIT).")] = None,
    submit_rate: Annotated[float | None, typer.Option(
        min=0.001, help="Submits per second allowed (rate limit runcomfy-submit); "
        "unset leaves any existing rate limit alone.")] = None,
    inbox_queue: Annotated[bool, typer.Option(
        "--inbox-queue/--no-inbox-queue",
        help="Make the SQS queue FLASHGEN_INBOX_QUEUE and the bucket's notification of "
        "inbox uploads to it (for `flashgen listen`); --no-inbox-queue where the store has "
        "no notifications (use the inbox-sensor deployment instead).")] = True,
    work_pool: Annotated[str, typer.Option(help="Process work pool of the deployments.")
                         ] = "flashgen-process",
    docker_work_pool: Annotated[str, typer.Option(
        help="Docker work pool of the *-docker deployments (flashgen's image); made when "
        "prefect-docker is installed (flashgen[docker]).")] = "flashgen-docker",
    slack_webhook: Annotated[str | None, typer.Option(
        envvar="FLASHGEN_SLACK_WEBHOOK", show_envvar=False,
        help="Slack incoming-webhook URL for alerts (env FLASHGEN_SLACK_WEBHOOK).")] = None,
    webhook_url: Annotated[str | None, typer.Option(
        envvar="FLASHGEN_ALERT_WEBHOOK_URL", show_envvar=False,
        help="URL that receives alerts as JSON {subject, body} "
        "(env FLASHGEN_ALERT_WEBHOOK_URL).")] = None,
    token_from_env: Annotated[str, typer.Option(
        help="Environment variable holding the API token to store in the Prefect Secret "
        "block named by FLASHGEN_TOKEN_BLOCK (never printed).")] = "RUNCOMFY_API_TOKEN",
) -> None:
    """Create or update the bucket, inbox queue, concurrency limits, work pools, alert
    blocks, token secret and automations. Safe to run again: unchanged items are left alone."""
    import httpx
    from prefect.settings import get_current_settings
    from pydantic import ValidationError

    from flashgen.errors import FlashgenError
    from flashgen.settings import get_settings, normalise_token
    from flashgen.infra.provision import ProvisionConfig, ProvisionError, provision

    api_url = get_current_settings().api.url
    if not api_url:
        _fail("PREFECT_API_URL is not set: point it at the Prefect server to provision "
              "(e.g. http://prefect.internal:4200/api)")
    try:
        # Stored as read, less a file's newline; a malformed one is refused naming the variable.
        token = normalise_token(os.environ.get(token_from_env), token_from_env)
        config = ProvisionConfig.from_settings(
            get_settings(), bucket=bucket, sse=sse, kms_key_id=kms_key_id,
            api_concurrency=api_concurrency, concurrency_limit=concurrency_limit,
            submit_rate=submit_rate,
            work_pool=work_pool, docker_work_pool=docker_work_pool,
            slack_webhook=slack_webhook, webhook_url=webhook_url,
            token=token)
        if skip_bucket:
            config = config.model_copy(update={"bucket": None})
        if not inbox_queue:
            config = config.model_copy(update={"inbox_queue": None})
        changes = asyncio.run(provision(config))
    except (ValidationError, ProvisionError, FlashgenError) as exc:
        _fail(str(exc))
    except httpx.HTTPError as exc:
        _fail(f"Prefect API at {api_url}: {exc}")
    for change in changes:
        typer.echo(str(change))
    counts = {a: sum(c.action == a for c in changes) for a in
              ("created", "updated", "unchanged", "skipped")}
    typer.echo(", ".join(f"{n} {a}" for a, n in counts.items() if n))


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(1)
