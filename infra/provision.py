"""Provisioning as code: everything flashgen needs outside its own code, made idempotently.

    >>> config = ProvisionConfig.from_settings(get_settings(),
    ...                                        webhook_url="https://alerts.example/hook")
    >>> for change in asyncio.run(provision(config)):
    ...     print(change)
    created    bucket images-prod
    unchanged  concurrency limit runcomfy-api: limit 4
    …

Each step reads what exists, compares it with what is wanted, and writes only a
difference, so a second run reports every item unchanged and writes nothing:

- the bucket: versioning on, default encryption (AES256, or KMS with a bucket key), every
  public-access block on;
- the inbox queue: an SQS queue whose policy lets the bucket send to it, and the bucket's
  notification of every object created under ``<prefix>/inbox/`` to it, for ``flashgen
  listen`` (flows/listen.py); other notifications of the bucket are kept;
- the global concurrency limit that shares the API's slots (FLASHGEN_CONCURRENCY_LIMIT,
  limit FLASHGEN_API_CONCURRENCY) and, when a rate is given, the ``runcomfy-submit`` rate
  limit that paces submits;
- the work pools the deployments in prefect.yaml run on: the process pool and, when
  prefect-docker is installed (``flashgen[docker]``), the Docker pool for flashgen's image;
- notification blocks (Slack, a generic JSON webhook) and the Secret block with the token;
- the automations in ``deployments/automations.yaml``, sent to every flashgen alert block;
- the Prefect server's own settings that flashgen relies on (``SERVER_SETTINGS``, in
  infra/prefect_server.py), read from the server: they are its environment, which no API
  call can change, so one that differs is reported ``missing`` with the variable to set on
  the server (infra/PRODUCTION.md, section 1).

Nothing is deleted except duplicate automations of the same name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from uuid import UUID

import boto3
import prefect.settings
import yaml
from botocore.exceptions import BotoCoreError, ClientError
from prefect.automations import AutomationCore, EventTrigger, SendNotification
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
from prefect.blocks.system import Secret
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
)
from prefect.events.actions import ActionTypes
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, field_validator

from flashgen.settings import DEFAULT_TOKEN_BLOCK, TOKEN_ENV, Settings, normalise_token
from flashgen.storage import SSE_ALGORITHMS, Store, make_client
from flashgen.flows.generate import SUBMIT_RATE_LIMIT
from flashgen.infra.prefect_server import SERVER_SETTINGS

AUTOMATIONS_FILE = Path(__file__).resolve().parent.parent / "deployments" / "automations.yaml"
WORK_POOL = "flashgen-process"
DOCKER_WORK_POOL = "flashgen-docker"
SLACK_BLOCK = "flashgen-alerts-slack"
WEBHOOK_BLOCK = "flashgen-alerts-webhook"
# What the generic webhook receives: {"subject": …, "body": …, "source": "flashgen"}.
WEBHOOK_JSON = {"subject": "{{subject}}", "body": "{{body}}", "source": "flashgen"}
_ACTION: TypeAdapter[ActionTypes] = TypeAdapter(ActionTypes)
PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                       "BlockPublicPolicy": True, "RestrictPublicBuckets": True}


class ProvisionError(Exception):
    """A resource could not be read or written; the message names it and why."""


class ProvisionConfig(BaseModel):
    """What to provision. ``from_settings`` fills it from FLASHGEN_* / RUNCOMFY_* variables."""

    model_config = ConfigDict(frozen=True)

    bucket: str | None = Field(None, description="None leaves S3 alone (no admin rights)")
    prefix: str = "flashgen"
    inbox_queue: str | None = Field("flashgen-inbox",
                                    description="None: no queue, no bucket notification")
    endpoint_url: str | None = None
    sse: str = Field("AES256", description="default encryption: " + ", ".join(SSE_ALGORITHMS))
    kms_key_id: str | None = None
    api_concurrency: int = Field(4, ge=1)
    concurrency_limit: str = "runcomfy-api"
    submit_rate: float | None = Field(None, gt=0, description="submits per second")
    work_pool: str = WORK_POOL
    docker_work_pool: str | None = DOCKER_WORK_POOL
    slack_webhook: SecretStr | None = None
    webhook_url: str | None = None
    token: SecretStr | None = None
    token_block: str = DEFAULT_TOKEN_BLOCK  # the Secret block the flows read (FLASHGEN_TOKEN_BLOCK)
    automations_file: Path = AUTOMATIONS_FILE

    @field_validator("sse")
    @classmethod
    def _known_sse(cls, value: str) -> str:
        if value not in SSE_ALGORITHMS:
            raise ValueError(f"sse {value!r} is not one of {', '.join(SSE_ALGORITHMS)}")
        return value

    @classmethod
    def from_settings(cls, settings: Settings, **given: Any) -> ProvisionConfig:
        """Settings from the environment; every ``given`` value that is not None wins."""
        base: dict[str, Any] = {
            "bucket": settings.bucket, "endpoint_url": settings.aws_endpoint_url,
            "prefix": settings.prefix, "inbox_queue": settings.inbox_queue,
            "sse": settings.s3_sse or "AES256", "kms_key_id": settings.s3_kms_key_id,
            "api_concurrency": settings.api_concurrency,
            "concurrency_limit": settings.concurrency_limit,
            "token": normalise_token(settings.api_token, TOKEN_ENV),
            "token_block": settings.token_block,
        }
        return cls(**{**base, **{k: v for k, v in given.items() if v is not None}})


class Outcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    MISSING = "missing"  # only the operator can set it (the server's environment)


@dataclass(frozen=True)
class Change:
    action: Outcome
    kind: str
    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:<10} {self.kind} {self.name}" + (f": {self.detail}"
                                                              if self.detail else "")


async def provision(config: ProvisionConfig, *, s3: Any = None, sqs: Any = None
                    ) -> list[Change]:
    """Create or update everything in ``config``; returns what happened to each item.

    ``s3`` and ``sqs`` inject boto3 clients (tests); otherwise they are made for
    ``endpoint_url``. The Prefect API is the one PREFECT_API_URL names.
    """
    changes: list[Change] = []
    if config.bucket:
        s3 = s3 or make_client(endpoint_url=config.endpoint_url)
        changes += configure_bucket(config, s3)
        if config.inbox_queue:
            changes += configure_inbox_queue(config, s3, sqs or boto3.client(
                "sqs", endpoint_url=config.endpoint_url))
    else:
        changes.append(Change(Outcome.SKIPPED, "bucket", "-", "no bucket given (FLASHGEN_BUCKET)"))
    async with get_client() as client:
        changes.append(await ensure_limit(client, config.concurrency_limit,
                                          limit=config.api_concurrency))
        if config.submit_rate:
            changes.append(await ensure_limit(client, SUBMIT_RATE_LIMIT,
                                              limit=max(1, math.ceil(config.submit_rate)),
                                              decay=config.submit_rate))
        changes.append(await ensure_work_pool(client, config.work_pool))
        if config.docker_work_pool:
            changes.append(await ensure_docker_work_pool(client, config.docker_work_pool))
        if config.slack_webhook:
            changes.append(await ensure_block(SlackWebhook(url=config.slack_webhook),
                                              SLACK_BLOCK))
        if config.webhook_url:
            changes.append(await ensure_block(
                CustomWebhookNotificationBlock(name=WEBHOOK_BLOCK, url=config.webhook_url,
                                               json_data=WEBHOOK_JSON), WEBHOOK_BLOCK))
        if config.token and config.token.get_secret_value():
            changes.append(await ensure_block(Secret(value=config.token), config.token_block))
        targets = await alert_block_ids()
        for automation in await desired_automations(client, config.automations_file, targets):
            changes.append(await ensure_automation(client, automation))
        changes += await check_server_settings(client)
    return changes


async def check_server_settings(client: PrefectClient) -> list[Change]:
    """Each of ``SERVER_SETTINGS`` as the server reports it (``GET /admin/settings``):
    ``unchanged`` when it is as flashgen wants, else ``missing``, naming what to set."""
    response = await client.request("GET", "/admin/settings")
    if response.status_code != 200:
        return [Change(Outcome.SKIPPED, "server settings", "-",
                       f"the server does not show them (HTTP {response.status_code})")]
    current = response.json()
    changes = []
    for variable, wanted in SERVER_SETTINGS.items():
        value: Any = current
        for key in getattr(prefect.settings, variable).accessor.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        same = value is not None and float(value) == float(wanted)
        changes.append(Change(Outcome.UNCHANGED if same else Outcome.MISSING, "server setting",
                              variable, wanted if same else
                              f"is {value}; set {variable}={wanted} on the server"))
    return changes


# --- S3 ---------------------------------------------------------------------------------


def configure_bucket(config: ProvisionConfig, s3: Any) -> list[Change]:
    """The bucket exists, versioned, encrypted by default, closed to the public."""
    bucket = config.bucket
    assert bucket
    try:
        return [_ensure_bucket(bucket, s3), _ensure_versioning(bucket, s3),
                _ensure_encryption(bucket, s3, config.sse, config.kms_key_id),
                _ensure_public_access_block(bucket, s3)]
    except (ClientError, BotoCoreError) as exc:
        raise ProvisionError(f"bucket {bucket}: {exc}") from exc


def _ensure_bucket(bucket: str, s3: Any) -> Change:
    try:
        s3.head_bucket(Bucket=bucket)
        return Change(Outcome.UNCHANGED, "bucket", bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    Store(bucket, s3=s3).ensure_bucket()
    return Change(Outcome.CREATED, "bucket", bucket)


def _ensure_versioning(bucket: str, s3: Any) -> Change:
    status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    if status == "Enabled":
        return Change(Outcome.UNCHANGED, "bucket versioning", bucket, "Enabled")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return Change(Outcome.UPDATED, "bucket versioning", bucket, f"{status or 'off'} → Enabled")


def _ensure_encryption(bucket: str, s3: Any, sse: str, kms_key_id: str | None) -> Change:
    wanted: dict[str, Any] = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": sse}}
    if kms_key_id:
        wanted["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] = kms_key_id
    if sse == "aws:kms":
        wanted["BucketKeyEnabled"] = True  # one KMS call per bucket key, not per object
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)[
            "ServerSideEncryptionConfiguration"]["Rules"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != (
                "ServerSideEncryptionConfigurationNotFoundError"):
            raise
        rules = []
    current = rules[0] if rules else {}
    described = sse + (f" ({kms_key_id})" if kms_key_id else "")
    if {k: current.get(k) for k in wanted} == wanted:
        return Change(Outcome.UNCHANGED, "bucket encryption", bucket, described)
    s3.put_bucket_encryption(Bucket=bucket,
                             ServerSideEncryptionConfiguration={"Rules": [wanted]})
    was = current.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm", "none")
    return Change(Outcome.UPDATED if rules else Outcome.CREATED, "bucket encryption", bucket,
                  f"{was} → {described}" if rules else described)


def _ensure_public_access_block(bucket: str, s3: Any) -> Change:
    try:
        current = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchPublicAccessBlockConfiguration":
            raise
        current = None
    if current == PUBLIC_ACCESS_BLOCK:
        return Change(Outcome.UNCHANGED, "bucket public access block", bucket, "all on")
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)
    return Change(Outcome.CREATED if current is None else Outcome.UPDATED,
                  "bucket public access block", bucket, "all on")


# --- the inbox queue --------------------------------------------------------------------

INBOX_NOTIFICATION_ID = "flashgen-inbox"
# Redelivery of a message its listener took and never deleted (it died); a message is
# handled in well under a second, so this is only the wait after a crash.
INBOX_QUEUE_ATTRIBUTES = {"VisibilityTimeout": "60",
                          "MessageRetentionPeriod": "1209600",  # 14 days: a long outage
                          "ReceiveMessageWaitTimeSeconds": "20"}  # long polls by default


def configure_inbox_queue(config: ProvisionConfig, s3: Any, sqs: Any) -> list[Change]:
    """The queue, its policy (only this bucket may send) and the bucket's notification."""
    bucket, name = config.bucket, config.inbox_queue
    assert bucket and name
    try:
        url, created = _ensure_queue(sqs, name)
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        changes = [Change(Outcome.CREATED, "sqs queue", name, url) if created else
                   Change(Outcome.UNCHANGED, "sqs queue", name, url),
                   _ensure_queue_attributes(sqs, url, name, _queue_policy(arn, bucket))]
        inbox = Store(bucket, config.prefix, s3=s3).layout.below("inbox/")
        changes.append(_ensure_notification(s3, bucket, arn, inbox))
        return changes
    except (ClientError, BotoCoreError) as exc:
        raise ProvisionError(f"inbox queue {name} for bucket {bucket}: {exc}") from exc


def _ensure_queue(sqs: Any, name: str) -> tuple[str, bool]:
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"], False
    except ClientError as exc:
        if "NonExistentQueue" not in exc.response.get("Error", {}).get("Code", ""):
            raise
    return sqs.create_queue(QueueName=name)["QueueUrl"], True


def _queue_policy(queue_arn: str, bucket: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "flashgen-inbox-from-s3", "Effect": "Allow",
        "Principal": {"Service": "s3.amazonaws.com"}, "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}}}]}


def _ensure_queue_attributes(sqs: Any, url: str, name: str, policy: dict[str, Any]) -> Change:
    wanted = {**INBOX_QUEUE_ATTRIBUTES, "Policy": policy}
    current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    now = {**{k: current.get(k) for k in INBOX_QUEUE_ATTRIBUTES},
           "Policy": json.loads(current["Policy"]) if current.get("Policy") else None}
    described = (f"S3 bucket may send; visibility {INBOX_QUEUE_ATTRIBUTES['VisibilityTimeout']}"
                 " s, kept 14 days")
    if now == wanted:
        return Change(Outcome.UNCHANGED, "sqs queue policy", name, described)
    sqs.set_queue_attributes(QueueUrl=url, Attributes={**INBOX_QUEUE_ATTRIBUTES,
                                                       "Policy": json.dumps(policy)})
    return Change(Outcome.UPDATED, "sqs queue policy", name, described)


def _ensure_notification(s3: Any, bucket: str, queue_arn: str, inbox: str) -> Change:
    """Our entry (by its Id) among the bucket's notifications; every other entry is kept."""
    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    current.pop("ResponseMetadata", None)
    wanted = {"Id": INBOX_NOTIFICATION_ID, "QueueArn": queue_arn,
              "Events": ["s3:ObjectCreated:*"],
              "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": inbox}]}}}
    queues = current.get("QueueConfigurations") or []
    ours = [q for q in queues if q.get("Id") == INBOX_NOTIFICATION_ID]
    described = f"ObjectCreated under {inbox} → {queue_arn}"
    if len(ours) == 1 and _notification_shape(ours[0]) == _notification_shape(wanted):
        return Change(Outcome.UNCHANGED, "bucket notification", bucket, described)
    configuration = {**current, "QueueConfigurations": [
        *(q for q in queues if q.get("Id") != INBOX_NOTIFICATION_ID), wanted]}
    s3.put_bucket_notification_configuration(Bucket=bucket,
                                             NotificationConfiguration=configuration)
    return Change(Outcome.UPDATED if ours else Outcome.CREATED, "bucket notification", bucket,
                  described)


def _notification_shape(entry: dict[str, Any]) -> tuple[Any, ...]:
    """Comparable across reads: S3 may spell filter rule names "prefix" or "Prefix"."""
    rules = entry.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return (entry.get("QueueArn"), sorted(entry.get("Events", [])),
            sorted((r["Name"].lower(), r["Value"]) for r in rules))


# --- Prefect ----------------------------------------------------------------------------


async def ensure_limit(client: PrefectClient, name: str, *, limit: int,
                       decay: float = 0.0) -> Change:
    """A global concurrency limit; ``decay`` slots per second make it a rate limit."""
    kind = "rate limit" if decay else "concurrency limit"
    described = f"limit {limit}" + (f", {decay:g} slot(s) freed per second" if decay else "")
    try:
        current = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
            name=name, limit=limit, active=True, slot_decay_per_second=decay))
        return Change(Outcome.CREATED, kind, name, described)
    was = (current.limit, bool(current.active), current.slot_decay_per_second or 0.0)
    if was == (limit, True, decay):
        return Change(Outcome.UNCHANGED, kind, name, described)
    await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(
        limit=limit, active=True, slot_decay_per_second=decay))
    return Change(Outcome.UPDATED, kind, name,
                  f"limit {was[0]} → {described}" + ("" if was[1] else ", activated"))


async def ensure_work_pool(client: PrefectClient, name: str, kind: str = "process",
                           template: dict[str, Any] | None = None) -> Change:
    """The work pool ``name`` of type ``kind``, made with the worker's default base job
    template (``template``; the process worker's by default) when it does not exist."""
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        await client.create_work_pool(WorkPoolCreate(
            name=name, type=kind,
            base_job_template=template or ProcessWorker.get_default_base_job_template()))
        return Change(Outcome.CREATED, "work pool", name, f"type {kind}")
    if pool.type != kind:
        raise ProvisionError(f"work pool {name} exists with type {pool.type!r}; flashgen's "
                             f"deployments need a {kind} pool: delete it or pick another name")
    return Change(Outcome.UNCHANGED, "work pool", name, f"type {kind}")


async def ensure_docker_work_pool(client: PrefectClient, name: str) -> Change:
    """The Docker pool of prefect.yaml's ``*-docker`` deployments (flashgen's image). Its
    template comes from the installed prefect-docker, whose ``container_create_kwargs``
    carries the read-only root and the ``/tmp`` tmpfs; without it the pool is skipped."""
    try:
        from prefect_docker.worker import DockerWorker
    except ImportError:
        return Change(Outcome.SKIPPED, "work pool", name,
                      "type docker needs prefect-docker: pip install 'flashgen[docker]'")
    return await ensure_work_pool(client, name, "docker",
                                  DockerWorker.get_default_base_job_template())


async def ensure_block(block: Block, name: str) -> Change:
    """Save ``block`` as ``name`` unless a block of that name holds the same values.

    Values are compared with their secrets revealed, so a new token or webhook URL is
    noticed; the change line never shows them.
    """
    kind = f"{block.get_block_type_name()} block"
    try:
        current = await type(block).aload(name)
    except ValueError:  # no block of that name
        await block.asave(name)
        return Change(Outcome.CREATED, kind, name)
    if _revealed(current) == _revealed(block):
        return Change(Outcome.UNCHANGED, kind, name)
    await block.asave(name, overwrite=True)
    return Change(Outcome.UPDATED, kind, name)


def _revealed(block: Block) -> dict[str, Any]:
    """The block's field values, secrets included; not its document id or name."""
    values = block.model_dump(mode="json", context={"include_secrets": True})
    return {k: v for k, v in values.items() if not k.startswith("_")}


async def alert_block_ids() -> list[UUID]:
    """The flashgen alert blocks that exist now, whether made by this run or an earlier one."""
    ids = []
    for cls, name in ((SlackWebhook, SLACK_BLOCK),
                      (CustomWebhookNotificationBlock, WEBHOOK_BLOCK)):
        try:
            block = await cls.aload(name)
        except ValueError:
            continue
        assert block._block_document_id is not None
        ids.append(block._block_document_id)
    return ids


def load_automation_specs(path: Path = AUTOMATIONS_FILE) -> list[dict[str, Any]]:
    """The automation definitions: name, description, trigger, [flows], notify and/or actions."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))["automations"]


def build_automation(spec: dict[str, Any], block_ids: list[UUID],
                     flow_ids: dict[str, UUID]) -> AutomationCore:
    """One definition as an automation.

    ``notify: {subject, body}`` becomes a send-notification action for every block in
    ``block_ids``; ``actions`` are taken as Prefect writes them. ``flows`` widen the trigger
    to runs of those flows: their ids join the ``prefect.resource.id`` values of
    ``match_related`` (any one related resource may match).
    """
    trigger = dict(spec["trigger"])
    if spec.get("flows"):
        related = dict(trigger.get("match_related") or {})
        ids = related.get("prefect.resource.id") or []
        related["prefect.resource.id"] = ([ids] if isinstance(ids, str) else list(ids)) + [
            f"prefect.flow.{flow_ids[name]}" for name in spec["flows"]]
        trigger["match_related"] = related
    actions = [_ACTION.validate_python(action) for action in spec.get("actions", [])]
    if spec.get("notify"):
        actions += [SendNotification(block_document_id=block_id, **spec["notify"])
                    for block_id in block_ids]
    return AutomationCore(name=spec["name"], description=spec.get("description", ""),
                          enabled=True, trigger=EventTrigger(**trigger), actions=actions)


async def desired_automations(client: PrefectClient, path: Path,
                              block_ids: list[UUID]) -> list[AutomationCore]:
    specs = load_automation_specs(path)
    names = sorted({name for spec in specs for name in spec.get("flows", [])})
    # Flows are created by name before anything is deployed; their ids are per server.
    flow_ids = {name: await client.create_flow_from_name(name) for name in names}
    return [build_automation(spec, block_ids, flow_ids) for spec in specs]


async def ensure_automation(client: PrefectClient, wanted: AutomationCore) -> Change:
    """Create or update the automation named ``wanted.name``; extra copies are deleted.

    One with no action (an alert before any alert block exists) is not made.
    """
    if not wanted.actions:
        return Change(Outcome.SKIPPED, "automation", wanted.name,
                      "no alert block yet: give --slack-webhook or --webhook-url")
    found = await client.read_automations_by_name(wanted.name)
    if not found:
        await client.create_automation(wanted)
        return Change(Outcome.CREATED, "automation", wanted.name, _automation_summary(wanted))
    first, *extra = sorted(found, key=lambda a: str(a.id))
    for duplicate in extra:
        await client.delete_automation(duplicate.id)
    if _shape(first) == _shape(wanted) and not extra:
        return Change(Outcome.UNCHANGED, "automation", wanted.name, _automation_summary(wanted))
    await client.update_automation(first.id, wanted)
    removed = f" (removed {len(extra)} duplicate(s))" if extra else ""
    return Change(Outcome.UPDATED, "automation", wanted.name, _automation_summary(wanted) + removed)


def _shape(automation: AutomationCore) -> dict[str, Any]:
    """What an automation does, comparable across reads: sets (``expect``, ``for_each``)
    stay sets, since their order as JSON lists varies."""
    core = AutomationCore.model_validate(automation.model_dump(exclude={"id"}))
    return core.model_dump(exclude={"owner_resource"})


def _automation_summary(automation: AutomationCore) -> str:
    trigger = automation.trigger
    events = ", ".join(sorted(getattr(trigger, "expect", None) or []))
    if getattr(trigger, "posture", None) == "Proactive":
        events = f"no {events} within {trigger.within.total_seconds():g}s"  # type: ignore[attr-defined]
    notified = sum(a.type == "send-notification" for a in automation.actions)
    others = [a.type for a in automation.actions if a.type != "send-notification"]
    then = ([f"{notified} notification block(s)"] if notified else []) + others
    return f"on {events} → {', '.join(then)}"
