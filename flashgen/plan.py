"""The plan of a run before it pays: what the rows ask for, what the ledger already has.

``census`` finds the ledger entry of every planned item (``LedgerIndex``: a listing of the
ledger first, then a read of each entry that exists, a bounded number at a time) and
``RunPlan`` says what a run would do: skip what is stored, resume what is in flight,
leave ambiguous items alone, and send the rest — with the estimated cost at the model's
price (``flashgen.pricing``: the API's catalog, or ``FLASHGEN_PRICE_PER_IMAGE``), whose
source it names. A dry run prints it and stops; a real run logs it, puts it in an artifact
and checks it against ``--max-items`` / ``--max-cost``.

    >>> plan = RunPlan(rows=3, items=4, invalid=1, to_send=4, price_per_image=0.02)
    >>> plan.estimated_cost, plan.over_budget(max_items=3, max_cost=None)
    (0.08, 'plan: 4 new paid submission(s), over --max-items 3')
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import NamedTuple, TypeVar

from pydantic import BaseModel

from flashgen.records import LedgerState
from flashgen.sources import Item
from flashgen.storage import Store

LEDGER_READERS = 16  # ledger reads in flight at once (boto3's pool holds 32)
# A page of a listing (1,000 keys) costs this process about as much CPU as 70 reads of
# one entry (botocore parses its XML), yet it answers for up to 1,000 items; a census lists
# at most one page per this many items it expects, so listing costs under 0.1 read an item.
ITEMS_PER_LISTED_PAGE = 1000
LISTED_PAGE = 1000
T = TypeVar("T")


class Stored(NamedTuple):
    """Where an item an earlier run stored is (from its ledger entry)."""

    request_id: str | None
    record_uri: str | None
    image_uris: tuple[str, ...]


class RunPlan(BaseModel):
    rows: int = 0
    items: int = 0  # unique valid items after expansion
    invalid: int = 0
    duplicates: int = 0
    stored: int = 0  # already stored: skipped (unless --force)
    in_flight: int = 0  # a request_id is known: polled, not paid again
    ambiguous: int = 0  # maybe sent, or lost: not resent without --resubmit-ambiguous
    to_send: int = 0  # new paid submissions
    price_per_image: float | None = None  # USD
    price_source: str | None = None  # where the price comes from (flashgen.pricing)

    @property
    def estimated_cost(self) -> float | None:
        if self.price_per_image is None:
            return None
        return round(self.to_send * self.price_per_image, 6)

    def over_budget(self, *, max_items: int | None, max_cost: float | None) -> str | None:
        """Why this plan exceeds a cap, or None."""
        if max_items is not None and self.to_send > max_items:
            return f"plan: {self.to_send} new paid submission(s), over --max-items {max_items}"
        if max_cost is not None:
            cost = self.estimated_cost
            if cost is None:
                return ("plan: --max-cost needs a price per image, and there is none "
                        f"({self.price_source or 'unknown'})")
            if cost > max_cost:
                return (f"plan: {self.to_send} new paid submission(s) at "
                        f"{self.price_per_image:g} each = {cost:g}, over --max-cost {max_cost:g}")
        return None

    def submission_cap(self, *, max_items: int | None, max_cost: float | None) -> int | None:
        """The most paid submissions the run may send, counting resubmissions (None: no cap)."""
        caps = []
        if max_items is not None:
            caps.append(max_items)
        if max_cost is not None and self.price_per_image:
            caps.append(int(max_cost / self.price_per_image + 1e-9))
        return min(caps) if caps else None

    def lines(self) -> list[str]:
        """The plan for a person, one fact a line."""
        cost = self.estimated_cost
        return [
            f"rows read:              {self.rows}",
            f"items after expansion:  {self.items}",
            f"invalid rows:           {self.invalid}",
            f"duplicates:             {self.duplicates}",
            f"already stored (skip):  {self.stored}",
            f"in flight (resume):     {self.in_flight}",
            f"ambiguous (not resent): {self.ambiguous}",
            f"new paid submissions:   {self.to_send}",
            "price per image:        " + (
                "unknown" if self.price_per_image is None else f"{self.price_per_image:g} USD")
            + f" ({self.price_source or 'set FLASHGEN_PRICE_PER_IMAGE'})",
            "estimated cost:         " + ("unknown" if cost is None else f"{cost:g} USD"),
        ]


class LedgerIndex:
    """Which items have a ledger entry, from a listing of the ledger, so that an item
    without one costs no read at all: a new batch's census is then one LIST a thousand
    items, not one GET an item (the largest share of S3 calls per image, in the bench).

    The listing stops after ``pages`` pages of ``LISTED_PAGE`` keys (``for_items``: one a
    thousand items), so a ledger far larger than the batch costs no more than before: an
    item whose key comes after the last one listed is read as before. An entry written
    after the listing is not missed where it matters: a census only plans, and the claim
    before a submit is a conditional write that finds any entry (``flashgen.ledger``).

        index = LedgerIndex.for_items(store, items=2500)     # at most 3 pages listed
        index.has_entry(fingerprint)    # False: no entry, nothing to read
    """

    def __init__(self, store: Store, pages: int) -> None:
        self.store = store
        limit = pages * LISTED_PAGE
        listed = [o.s3_key for o in islice(store.list_keys("ledger/", page_size=LISTED_PAGE),
                                           limit)]
        self.present = frozenset(listed)
        # Listed to the end, or up to this key: past it, nothing is known.
        self.known_up_to = listed[-1] if len(listed) == limit else None

    @classmethod
    def for_items(cls, store: Store, items: int) -> LedgerIndex:
        return cls(store, pages=max(1, math.ceil(items / ITEMS_PER_LISTED_PAGE)))

    def has_entry(self, fingerprint: str) -> bool:
        """False only when the listing proves there is no entry to read."""
        key = self.store.layout.ledger(fingerprint)
        return key in self.present or (self.known_up_to is not None and key > self.known_up_to)


def census(store: Store, items: Iterable[Item], *, expected: int, force: bool = False,
           resubmit_ambiguous: bool = False,
           each: Callable[[Item, str], None] | None = None,
           ) -> tuple[Counter[str], dict[str, Stored]]:
    """Ledger states of ``items`` (counted) and where the already stored ones are.

    ``expected`` is about how many items come (it sizes the listing: ``LedgerIndex``).
    Reads at most ``LEDGER_READERS`` entries at a time, whatever the number of items.
    ``each(item, state)`` (a ``RunPlan`` field name: ``stored``, ``in_flight``,
    ``ambiguous``, ``to_send``) sees every item as it is counted: a sharded batch deals
    its items into shards in the same pass (``flashgen.shards``).
    """
    counts: Counter[str] = Counter()
    stored: dict[str, Stored] = {}
    index = LedgerIndex.for_items(store, expected)
    for item, found in _bounded_map(store.read_ledger, items, LEDGER_READERS,
                                    needed=index.has_entry):
        state = found[0].state if found else None
        if state == LedgerState.STORED and found and not force:
            kind = "stored"
            # A rerun's manifest row points at them too (its gallery shows the whole batch).
            entry = found[0]
            stored[item.fingerprint] = Stored(entry.request_id, entry.record_uri,
                                              tuple(entry.image_uris))
        elif state == LedgerState.SUBMITTED and found and found[0].request_id:
            kind = "in_flight"
        elif state in (LedgerState.AMBIGUOUS, LedgerState.LOST, LedgerState.SENDING,
                       LedgerState.CLAIMED) and not resubmit_ambiguous:
            kind = "ambiguous"
        else:
            kind = "to_send"
        counts[kind] += 1
        if each is not None:
            each(item, kind)
    return counts, stored


def _bounded_map(function: Callable[[str], T], items: Iterable[Item], width: int, *,
                 needed: Callable[[str], bool]) -> Iterator[tuple[Item, T | None]]:
    """``(item, function(item.fingerprint))`` in order, with at most ``width`` calls in
    flight; None, with no call, for an item ``needed`` says needs none."""
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="ledger-read") as pool:
        window: list[tuple[Item, Future[T | None]]] = []
        for item in items:
            if needed(item.fingerprint):
                window.append((item, pool.submit(function, item.fingerprint)))
            else:
                window.append((item, _NOTHING))
            if len(window) >= width * 2:
                first, future = window.pop(0)
                yield first, future.result()
        for item, future in window:
            yield item, future.result()


_NOTHING: Future[None] = Future()
_NOTHING.set_result(None)
