"""One batch split into shards: planned once by a parent, each shard run by a child (no Prefect).

A batch with more items to run than ``shard_size`` is planned once, as any batch is (rows
read and checked, duplicates dropped, the ledger read, the budget held against the whole
plan); while the ledger is read, ``ShardWriter`` deals every item not already stored into
local shard files of ``shard_size`` items::

    writer = ShardWriter(workdir / "shards", size=2000)
    census(store, plan.iter_items(), expected=plan.items, each=writer.add)  # one pass, both
    shards = writer.close()                        # [ShardFile(index=0, items=2000, ...), ...]
    budgets = submission_budgets(shards, cap=200)  # paid submissions each shard may send

A shard file is JSONL, one ``Item`` per line (its line, model, inputs with the defaults
applied, fingerprint), uploaded to ``<prefix>/shards/<batch_id>/<index>.items.jsonl``.
A child reads it back with ``ShardPlan.read``, which checks every item again (a file in S3
is input like any other) and runs today's pipeline on it under the batch's id, so the
ledger is the batch's. The child writes its rows to ``<index>.manifest.jsonl`` and its
``ShardOutcome`` to ``<index>.outcome.json`` beside the items; the parent merges the rows
into the one manifest, gallery and catalog file of the batch.

**Budgets.** ``max_items`` / ``max_cost`` are checked against the whole plan before any
shard starts. Each shard then gets a slice of the batch's submission cap: the new paid
submissions the plan found in it, plus an even share of the cap's slack (the
resubmissions a batch may make). The slices sum to the cap, so all shards together never
send more than a single run could. A shard run again after its process crashed gets its
slice less what its first attempt sent (``rerun_budget``), read back from the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TypeVar

from pydantic import BaseModel, PrivateAttr

from flashgen.errors import InputError
from flashgen.models import fingerprint, validate_inputs
from flashgen.sources import BatchPlan, Compact, InvalidRow, Item

# The ledger states ``flashgen.plan.census`` names; only ``stored`` items stay out of shards
# (an in-flight or ambiguous item's child decides it from the ledger, as any run does).
STORED = "stored"
TO_SEND = "to_send"
T = TypeVar("T")


class ShardFile(BaseModel):
    """One shard as the parent planned it."""

    index: int
    path: Path  # the local JSONL of its items
    items: int = 0
    to_send: int = 0  # new paid submissions the plan found among them


class ShardWriter:
    """Deals the items a batch will run into files of ``size`` items, as the ledger is read."""

    def __init__(self, folder: Path, size: int) -> None:
        if size < 1:
            raise ValueError(f"shard size must be at least 1, not {size}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.shards: list[ShardFile] = []
        self._file: IO[str] | None = None
        # The already stored items, kept for their "already stored" rows in the manifest.
        self._stored_path = self.folder / "stored.items.jsonl"
        self._stored = open(self._stored_path, "w", encoding="utf-8")  # noqa: SIM115

    @property
    def items(self) -> int:
        """Items dealt into shards so far (every item not already stored)."""
        return sum(shard.items for shard in self.shards)

    def add(self, item: Item, state: str) -> None:
        """``census``'s callback: ``item`` with what the ledger says of it."""
        if state == STORED:
            self._stored.write(item.model_dump_json() + "\n")
            return
        if self._file is None or self.shards[-1].items >= self.size:
            self._open_next()
        assert self._file is not None
        self._file.write(item.model_dump_json() + "\n")
        shard = self.shards[-1]
        shard.items += 1
        shard.to_send += state == TO_SEND

    def close(self) -> list[ShardFile]:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._stored.close()
        return self.shards

    def stored_items(self, where: Mapping[str, T]) -> Iterator[tuple[Item, T]]:
        """Each already stored item, with ``where[fingerprint]`` (census's ``stored``)."""
        if not self._stored.closed:
            self._stored.flush()
        with open(self._stored_path, encoding="utf-8") as handle:
            for line in handle:
                item = Item.model_validate_json(line)
                yield item, where[item.fingerprint]

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        index = len(self.shards)
        path = self.folder / f"{index:05d}.items.jsonl"
        self.shards.append(ShardFile(index=index, path=path))
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close)


def submission_budgets(shards: list[ShardFile], cap: int | None) -> list[int | None]:
    """Paid submissions each shard may send: its own new ones plus an even share of the
    slack, summing to ``cap`` (None: no cap, for every shard).

    >>> shards = [ShardFile(index=i, path=Path("x"), items=3, to_send=n)
    ...           for i, n in enumerate([3, 1, 2])]
    >>> submission_budgets(shards, cap=8)
    [4, 2, 2]
    >>> submission_budgets(shards, cap=None)
    [None, None, None]
    """
    if cap is None:
        return [None] * len(shards)
    planned = sum(shard.to_send for shard in shards)
    slack = max(cap - planned, 0)
    budgets = []
    for position, shard in enumerate(shards):
        share = slack // len(shards) + (position < slack % len(shards))
        budgets.append(shard.to_send + share)
    return budgets


def rerun_budget(budget: int | None, planned_to_send: int, to_send_now: int) -> int | None:
    """A crashed shard's budget for its next attempt: what the first attempt sent (items
    the plan would have paid for that the ledger now knows) comes off.

    >>> rerun_budget(5, planned_to_send=4, to_send_now=1)
    2
    """
    if budget is None:
        return None
    return max(budget - max(planned_to_send - to_send_now, 0), 0)


def shard_concurrency(total: int, running: int, index: int) -> int:
    """The share of the batch's ``total`` concurrency shard ``index`` runs with, when
    ``running`` shards run at once: the shares of any ``running`` consecutive shards sum
    to ``total`` (each at least 1).

    >>> [shard_concurrency(10, 4, i) for i in range(4)]
    [3, 3, 2, 2]
    """
    running = max(running, 1)
    return max(1, total // running + (index % running < total % running))


class ShardPlan(BatchPlan):
    """A shard's items as a ``BatchPlan`` (read from its file, each one checked again)."""

    _path: Path | None = PrivateAttr(None)
    _model_id: str = PrivateAttr("")

    @classmethod
    def read(cls, path: Path, model_id: str) -> ShardPlan:
        """The plan of a shard file; an ``InputError`` for an item that is not what the
        parent wrote (inputs that do not validate, or whose fingerprint differs)."""
        count = sum(1 for item in _items(path, model_id))  # checks every item once
        plan = cls(rows=count, items=count, invalid=Compact(InvalidRow))
        plan._path, plan._model_id = Path(path), model_id
        return plan

    def iter_items(self) -> Iterator[Item]:
        assert self._path is not None, "build a ShardPlan with ShardPlan.read"
        return _items(self._path, self._model_id)


def _items(path: Path, model_id: str) -> Iterator[Item]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            item = Item.model_validate_json(line)
            inputs = validate_inputs(model_id, item.inputs)
            if item.model_id != model_id or fingerprint(model_id, inputs) != item.fingerprint:
                raise InputError(f"shard file {path.name} line {number}: item of line "
                                 f"{item.line} does not match its fingerprint", field="shard")
            yield item


class ShardOutcome(BaseModel):
    """What a child reports beside its shard's manifest: whose run wrote it and how it ended."""

    index: int
    flow_run_id: str | None = None
    rows: int = 0
    counts: dict[str, int] = {}
    halted: str | None = None  # the child stopped paying (S3 refusing writes)
    stopped: str | None = None  # the child was cancelled part-way
