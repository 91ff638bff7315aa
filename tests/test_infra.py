"""Provisioning, deployments and alert definitions, against moto and Prefect's test server."""

from __future__ import annotations

import importlib

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import prefect.settings
import pytest
import yaml
from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.events.schemas.events import Resource
from prefect.server.events.jinja_filters import all_filters
from prefect.server.utilities.user_templates import (
    register_user_template_filters,
    render_user_template,
    validate_user_template,
)
from pydantic import SecretStr

from flashgen.flows.events import BATCH_FAILED, PROMPTS_UPLOADED
from flashgen.flows.inbox import InboxFile
from flashgen.infra.iam import least_privilege_policy
from flashgen.infra.provision import (
    SLACK_BLOCK,
    WEBHOOK_BLOCK,
    Outcome,
    ProvisionConfig,
    build_automation,
    check_server_settings,
    load_automation_specs,
    provision,
)
from flashgen.infra.prefect_server import SERVER_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-" + uuid4().hex
SLACK = "https://hooks.slack.com/services/T000/B000/XXXXXXXX"


def config(**overrides) -> ProvisionConfig:
    base = {"bucket": "flashgen-infra-test", "api_concurrency": 3, "submit_rate": 2.0,
            "concurrency_limit": "runcomfy-api-" + uuid4().hex[:6],
            "webhook_url": "http://127.0.0.1:9/alerts", "slack_webhook": SLACK, "token": TOKEN}
    return ProvisionConfig(**{**base, **overrides})


def _made(changes: list) -> list:
    """What provisioning makes; the server's settings it can only check."""
    return [c for c in changes if c.kind != "server setting"]


async def test_provision_twice_changes_nothing_the_second_time(prefect_server, s3):
    wanted = config()
    first = _made(await provision(wanted, s3=s3))
    assert {c.action for c in first} <= {Outcome.CREATED, Outcome.UPDATED}, first
    kinds = {c.kind for c in first}
    assert {"bucket", "bucket versioning", "bucket encryption", "bucket public access block",
            "concurrency limit", "rate limit", "work pool", "automation", "sqs queue",
            "sqs queue policy", "bucket notification"} <= kinds

    second = _made(await provision(wanted, s3=s3))
    assert [c.action for c in second] == [Outcome.UNCHANGED] * len(first), second
    assert all(TOKEN not in str(c) and SLACK not in str(c) for c in first + second)

    bucket = wanted.bucket
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
               .values())
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(wanted.concurrency_limit)
        assert (limit.limit, limit.active) == (3, True)
        rate = await client.read_global_concurrency_limit_by_name("runcomfy-submit")
        assert rate.slot_decay_per_second == 2.0
        assert (await client.read_work_pool("flashgen-process")).type == "process"
        assert (await client.read_work_pool("flashgen-docker")).type == "docker"
        automations = {a.name: a for a in await client.read_automations()}
    assert (await Secret.aload("runcomfy-api-token")).get() == TOKEN
    assert (await SlackWebhook.aload(SLACK_BLOCK)).url.get_secret_value() == SLACK
    assert (await CustomWebhookNotificationBlock.aload(WEBHOOK_BLOCK)).url == wanted.webhook_url
    for name in ("flashgen-run-failed", "flashgen-batch-failed"):
        assert len(automations[name].actions) == 2  # Slack and the webhook
    assert automations["flashgen-crash-unresponsive-runs"].actions[0].type == (
        "change-flow-run-state")


async def test_a_kms_bucket_is_configured_once(prefect_server, s3):
    wanted = config(bucket="flashgen-infra-kms", sse="aws:kms", kms_key_id="alias/flashgen")
    first = {c.kind: c for c in await provision(wanted, s3=s3)}
    assert first["bucket encryption"].detail == "aws:kms (alias/flashgen)"
    second = {c.kind: c for c in await provision(wanted, s3=s3)}
    assert second["bucket encryption"].action == Outcome.UNCHANGED
    rule = s3.get_bucket_encryption(Bucket=wanted.bucket)[
        "ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms",
                                                          "KMSMasterKeyID": "alias/flashgen"}
    assert rule["BucketKeyEnabled"] is True


async def test_provision_updates_only_what_differs(prefect_server, s3):
    wanted = config()
    await provision(wanted, s3=s3)
    s3.put_bucket_versioning(Bucket=wanted.bucket, VersioningConfiguration={"Status": "Suspended"})
    changed = await provision(wanted.model_copy(update={"api_concurrency": 5,
                                                        "token": SecretStr("tok-2")}), s3=s3)
    updated = {(c.kind, c.name) for c in changed if c.action == Outcome.UPDATED}
    assert updated == {("bucket versioning", wanted.bucket),
                       ("concurrency limit", wanted.concurrency_limit),
                       ("Secret block", "runcomfy-api-token")}
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(wanted.concurrency_limit)
    assert limit.limit == 5


async def test_provision_names_each_server_setting_only_the_operator_can_set(prefect_server):
    """The test server runs Prefect's defaults: each setting flashgen wants is reported
    missing, with the variable and value to set on the server."""
    async with get_client() as client:
        changes = await check_server_settings(client)
    assert {c.name for c in changes} == set(SERVER_SETTINGS)
    for change in changes:
        assert change.action == Outcome.MISSING, change
        assert f"{change.name}={SERVER_SETTINGS[change.name]}" in change.detail


async def test_without_alert_blocks_alerts_are_skipped_not_half_made(prefect_server):
    """A first provision with no alert target says so rather than making an automation
    that notifies nobody. (Alert blocks made by an earlier run are reused.)"""
    from flashgen.infra.provision import ensure_automation

    specs = {s["name"]: s for s in load_automation_specs()}
    async with get_client() as client:
        change = await ensure_automation(
            client, build_automation(specs["flashgen-batch-failed"], [], {}))
    assert change.action == Outcome.SKIPPED and "--webhook-url" in change.detail


# --- definitions --------------------------------------------------------------------------


def test_automation_definitions_alert_on_failed_and_crashed_flashgen_runs_and_batches():
    specs = {s["name"]: s for s in load_automation_specs()}
    flow_ids = {name: uuid4() for name in ("generate-images", "generate-image", "watch-inbox")}
    flashgen_runs = {"prefect.tag.flashgen", *(f"prefect.flow.{i}" for i in flow_ids.values())}
    blocks = [uuid4(), uuid4()]
    run = build_automation(specs["flashgen-run-failed"], blocks, flow_ids)
    assert run.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert run.trigger.posture == "Reactive" and run.trigger.threshold == 1
    assert set(run.trigger.match_related.model_dump()["prefect.resource.id"]) == flashgen_runs
    assert [a.type for a in run.actions] == ["send-notification"] * 2
    assert {a.block_document_id for a in run.actions} == set(blocks)

    batch = build_automation(specs["flashgen-batch-failed"], blocks, flow_ids)
    assert batch.trigger.expect == {BATCH_FAILED}
    assert batch.trigger.match.model_dump() == {"prefect.resource.id": "flashgen.batch.*"}
    for automation in (run, batch):
        for action in automation.actions:
            validate_user_template(action.subject)
            validate_user_template(action.body)
            assert "token" not in (action.subject + action.body).lower()


def test_unresponsive_runs_definition_crashes_a_run_after_three_missed_heartbeats():
    """The shape: no heartbeat for three periods → Crashed, with no alert of its own (the
    Crashed state is what flashgen-run-failed sends). tests/integration/test_operations.py
    shows it act on a real server."""
    specs = {s["name"]: s for s in load_automation_specs()}
    zombie = build_automation(specs["flashgen-crash-unresponsive-runs"], [uuid4()],
                              {name: uuid4() for name in specs["flashgen-run-failed"]["flows"]})
    trigger = zombie.trigger
    assert trigger.posture == "Proactive" and trigger.after == {"prefect.flow-run.heartbeat"}
    assert "prefect.flow-run.heartbeat" in trigger.expect and trigger.for_each == {
        "prefect.resource.id"}
    assert trigger.within.total_seconds() >= 3 * 180  # three default heartbeat periods
    [action] = zombie.actions  # no notification of its own: the Crashed state sends one
    assert (action.type, action.state) == ("change-flow-run-state", "CRASHED")
    assert "prefect.flow-run.Crashed" in build_automation(
        specs["flashgen-run-failed"], [uuid4()], {n: uuid4() for n in specs[
            "flashgen-run-failed"]["flows"]}).trigger.expect


async def test_batch_failed_alert_names_deployment_counts_errors_and_link():
    spec = next(s for s in load_automation_specs() if s["name"] == "flashgen-batch-failed")
    payload = {"batch_id": "b-1", "deployment": "on-demand", "flow_run_id": "r-1",
               "flow_run_url": "http://prefect.example/runs/flow-run/r-1",
               "counts": {"stored": 3, "skipped": 1, "failed": 2, "invalid": 0},
               "manifest_uri": "s3://b/fg/manifests/b-1.jsonl",
               "first_errors": ["line 2: JobFailed: boom", "line 4: AuthenticationError: 401"]}
    body = await render_user_template(spec["notify"]["body"], {"event": {"payload": payload}})
    assert "Deployment: on-demand" in body
    assert "3 stored, 1 skipped, 2 failed, 0 invalid" in body
    assert "- line 2: JobFailed: boom\n- line 4: AuthenticationError: 401\n" in body
    assert "Run: http://prefect.example/runs/flow-run/r-1" in body
    subject = await render_user_template(spec["notify"]["subject"],
                                         {"event": {"payload": payload}})
    assert subject == "flashgen: batch b-1 failed (on-demand)"


async def test_run_failed_alert_names_flow_deployment_state_message_and_link():
    from prefect.server.schemas.core import FlowRun
    from prefect.server.schemas.states import State, StateType

    register_user_template_filters(all_filters)
    spec = next(s for s in load_automation_specs() if s["name"] == "flashgen-run-failed")
    run = FlowRun(id=uuid4(), name="brave-fox", flow_id=uuid4(),
                  state=State(type=StateType.CRASHED, name="Crashed",
                              message="Flow run infrastructure exited with non-zero status"))
    context = {"flow": SimpleNamespace(name="generate-images"), "flow_run": run,
               "deployment": SimpleNamespace(name="on-demand")}
    with prefect.settings.temporary_settings(
            updates={prefect.settings.PREFECT_UI_URL: "http://prefect.example"}):
        body = await render_user_template(spec["notify"]["body"], context)
    assert "Flow: generate-images" in body and "Deployment: on-demand" in body
    assert "State: Crashed" in body and "non-zero status" in body
    assert f"Run: http://prefect.example/runs/flow-run/{run.id}" in body
    no_deployment = await render_user_template(spec["notify"]["body"],
                                               {**context, "deployment": None})
    assert "Deployment: none" in no_deployment


# --- prefect.yaml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployments() -> dict[str, dict]:
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert project["name"] == "flashgen"
    return {d["name"]: d for d in project["deployments"]}


def test_every_deployment_names_pool_tags_and_a_concurrency_limit(deployments):
    assert set(deployments) == {"scheduled-content", "inbox", "on-demand", "inbox-sensor",
                                "resume", "retry", "on-demand-docker", "process", "docker"}
    for name, d in deployments.items():
        pool = "flashgen-docker" if "docker" in d["tags"] else "flashgen-process"
        assert d["work_pool"]["name"] == pool, name
        assert "flashgen" in d["tags"], name
        assert d["concurrency_limit"]["limit"] >= 1, name
        assert d["concurrency_limit"]["collision_strategy"] in ("ENQUEUE", "CANCEL_NEW"), name
        # A module path, not a file: a worker needs the installed package, not this checkout.
        module, _, function = d["entrypoint"].partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name
    cron = deployments["scheduled-content"]["schedules"][0]
    assert cron["cron"] and cron["timezone"] == "Europe/Berlin"
    assert "{date}" in (ROOT / deployments["scheduled-content"]["parameters"]["source"]).read_text()
    assert deployments["on-demand"]["parameters"]["source"] is None
    assert (ROOT / "deployments/prompts/on-demand.csv").is_file()  # the sample set it names
    assert deployments["inbox-sensor"]["schedules"][0]["interval"] <= 300


def test_an_on_demand_run_given_only_prompts_runs_only_those(deployments, tmp_path):
    from flashgen.options import BatchOptions
    from flashgen.flows.generate import _rows

    # What the server passes: the deployment's parameters, overridden by the run's.
    parameters = {**deployments["on-demand"]["parameters"], "prompts": ["a fox", "an owl"]}
    options = BatchOptions.parse(source=parameters["source"], prompts=parameters["prompts"])
    rows = _rows(options, store=None, workdir=tmp_path)
    assert [row.fields["prompt"] for row in rows] == ["a fox", "an owl"]


async def test_inbox_trigger_matches_the_sensors_event_and_takes_its_uri(deployments):
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    trigger = DeploymentEventTrigger(**deployments["inbox"]["triggers"][0])
    file = InboxFile("b", "fg/inbox/team/spring campaign.csv", "0f3a9c1b2d4e5f60", 120,
                     datetime.now(UTC))
    event = file.event(datetime.now(UTC))
    assert event.event in trigger.expect == {PROMPTS_UPLOADED}
    assert trigger.match.matches(Resource(root=dict(event.resource.root)))
    rendered = {k: await render_user_template(v, {"event": event})
                for k, v in trigger.parameters.items()}
    assert rendered["source"] == "s3://b/fg/inbox/team/spring campaign.csv"
    assert rendered["batch_id"] == "inbox-spring-campaign-0f3a9c1b2d4e"
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}", rendered["batch_id"])


# --- production notes ---------------------------------------------------------------------


def test_the_iam_policy_in_the_production_notes_is_the_generated_one():
    notes = (ROOT / "infra" / "PRODUCTION.md").read_text()
    shown = re.search(r"```json\n(.*?)```", notes, re.DOTALL)
    assert shown, "infra/PRODUCTION.md shows the policy as a json block"
    assert json.loads(shown.group(1)) == least_privilege_policy("images-prod", "flashgen")


def test_the_iam_policy_allows_no_delete_and_no_bucket_admin():
    policy = least_privilege_policy("images-prod", "flashgen")
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert not any("Delete" in a or "PutBucket" in a or a.endswith("*") for a in actions)
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= actions
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::images-prod", "arn:aws:s3:::images-prod/flashgen/*"}


def test_the_production_notes_start_the_server_with_flashgens_server_settings():
    notes = (ROOT / "infra" / "PRODUCTION.md").read_text()
    for variable, value in SERVER_SETTINGS.items():
        assert f"export {variable}={value}\n" in notes, variable
