"""What flashgen writes to S3: the ledger entry, the image record and the manifest row.

One pydantic model per object, so data teams can read them back with the same schema. An
item's ``fingerprint`` (a hash of model and inputs) was called ``key`` before 0.2; records
written then still read.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class LedgerState(StrEnum):
    """Life of one fingerprint in ``ledger/<fingerprint>.json`` (the rules: ``flashgen.ledger``).

    sending → submitted → stored, or → failed / ambiguous / lost. ``sending`` is written
    right before the POST, so it is the one state in which a paid job may exist unrecorded.
    """

    SENDING = "sending"  # the POST is under way; lease_until covers one submit request
    CLAIMED = "claimed"  # written by flashgen before 0.2; read as "sending"
    SUBMITTED = "submitted"  # request_id known: never submit again, only poll it
    STORED = "stored"  # image and record are in S3
    FAILED = "failed"  # the job failed or was cancelled: no paid output exists
    AMBIGUOUS = "ambiguous"  # the submit's answer was lost: a paid job may exist
    LOST = "lost"  # the API answers 404 for its request_id (expired, or mistyped by hand)


class LedgerEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    fingerprint: str = Field(validation_alias=AliasChoices("fingerprint", "key"))
    model: str
    inputs: dict[str, Any]
    state: LedgerState
    request_id: str | None = None
    owner: str | None = None  # host:pid:random of the run that wrote it last
    owner_run: str | None = None  # that run's Prefect flow run id, when it had one
    batch_id: str | None = None  # the batch that wrote it last
    lease_until: float | None = None  # epoch seconds; a SENDING entry past it is stale
    attempts: int = 0  # submits ever sent for this key
    error: str | None = None
    record_uri: str | None = None
    image_uris: list[str] = Field(default_factory=list)
    updated_at: datetime | None = None


class ItemState(StrEnum):
    """Final state of one input in a batch's manifest."""

    STORED = "stored"
    SKIPPED = "skipped"  # already stored by an earlier or concurrent run
    FAILED = "failed"
    INVALID = "invalid"  # rejected before anything was sent
    CANCELLED = "cancelled"  # the batch was cancelled first: not sent, cancelled at the API,
    #                          or left running with its request_id in the ledger


class Timings(BaseModel):
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    stored_at: datetime | None = None


class ImageRecord(BaseModel):
    """``metadata/YYYY/MM/DD/<fingerprint>.json``: everything known about one stored file."""

    fingerprint: str = Field(validation_alias=AliasChoices("fingerprint", "key"))
    model: str
    inputs: dict[str, Any]  # with defaults applied
    request_id: str
    image_uri: str
    content_type: str
    size: int
    sha256: str  # hex digest of the stored bytes
    width: int | None = None
    height: int | None = None
    output_index: int = 0
    source_host: str | None = None  # host of the file link; never the link (it may be signed)
    timings: Timings = Field(default_factory=Timings)
    polls: int = 0
    attempts: int = 0
    batch_id: str | None = None
    flow_run_id: str | None = None
    deployment: str | None = None
    # USD the API says the job cost (``include_cost``), on its first output's record only,
    # so that a sum over records counts each job once; None where the API did not say.
    cost: float | None = None


class ManifestRow(BaseModel):
    """One line of ``manifests/<batch_id>.jsonl``: one input of the batch and how it ended."""

    line: int | None = None  # line (or row) in the prompt source, 1-based
    fingerprint: str | None = Field(None, validation_alias=AliasChoices("fingerprint", "key"))
    prompt: str | None = None
    seed: int | None = None
    aspect_ratio: str | None = None
    state: ItemState
    reason: str | None = None
    request_id: str | None = None
    image_uris: list[str] = Field(default_factory=list)
    metadata_uri: str | None = None
    seconds: float | None = None
    cost: float | None = None  # USD this batch paid for the item's job, when the API said
