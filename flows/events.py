"""flashgen's own Prefect events: their names, and a send the server confirms.

    flashgen.prompts.uploaded   a prompt file landed in the inbox (flows/inbox.py);
                                the ``inbox`` deployment's trigger starts a batch on it
    flashgen.batch.completed    a batch ended within its failure ratio (flows/summary.py)
    flashgen.batch.failed       a batch ended with too many failed items; an automation alerts
    flashgen.batch.refused      a run refused its input (or token) before sending anything;
                                for whoever submitted it, never the on-call
    flashgen.batch.cancelled    a batch was cancelled part-way and stopped cleanly (its
                                manifest says what was done; `flashgen resume` finishes it)

A run's final state is named for what happened, so each alert fires once: a refused run
ends ``Refused`` and a batch with too many failed items ``BatchFailed`` (both of type
FAILED, so they still count as failed runs), and the server's state events
``prefect.flow-run.Refused`` / ``.BatchFailed`` match no run-failed alert, which pages on
``prefect.flow-run.Failed`` (an unexpected error) and ``.Crashed`` only.

``prefect.yaml`` and ``deployments/automations.yaml`` match on these same strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.events import Event
from prefect.events.related import related_resources_from_run_context

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

PROMPTS_UPLOADED = "flashgen.prompts.uploaded"
BATCH_COMPLETED = "flashgen.batch.completed"
BATCH_FAILED = "flashgen.batch.failed"
BATCH_REFUSED = "flashgen.batch.refused"
BATCH_CANCELLED = "flashgen.batch.cancelled"
REFUSED_STATE = "Refused"  # the state a refused run ends in (type FAILED)
BATCH_FAILED_STATE = "BatchFailed"  # the state of a run whose items failed past the ratio


async def send_event(client: PrefectClient, event: Event) -> None:
    """POST ``event`` to the server and return once it has accepted it.

    ``emit_event`` only queues an event in this process; a sensor must know the server has
    it before recording it as sent. Sending an event again with the same ``id`` is safe:
    the server stores an id once and its triggers skip ids they have already seen.
    The resources of the current flow run are attached, as ``emit_event`` would.
    """
    related = await related_resources_from_run_context(client)
    body = event.model_copy(update={"related": [*event.related, *related]})
    response = await client.request("POST", "/events", json=[body.model_dump(mode="json")])
    response.raise_for_status()
