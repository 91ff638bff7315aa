"""Which fault, if any, a call meets: parsing ``ROUTE:KIND:RATE`` specs and drawing them.

    >>> plan = FaultPlan(["status:429:1", "*:500:0"], seed=7)
    >>> plan.draw("status"), plan.draw("submit")
    ('429', None)

Each route draws from its own ``random.Random`` seeded from ``seed``, so what one route
meets never depends on how often another was called. One draw per call: the rates of
the faults that apply to a route add up (at most 1), and the first spec whose share
the draw falls into wins.

The error shapes answer instead of the route (a submit makes no job): ``error-200`` is
HTTP 200 with ``{"error_code": 500001, "error_message": …}``, ``account-200`` the same
with code 10001 (insufficient balance), ``402`` an HTTP 402, ``400`` (submit) an HTTP 400
whose text is only in ``error_message``. ``extra-fields`` adds ``model_id`` and
``instance_id`` to a status or result. On cancel, ``legacy-409`` refuses a running or
finished job with the emulator's old 409 (``detail.status``) and ``no-status`` leaves
``status`` out of the answer, keeping only ``outcome``.

Job faults are drawn once, at submit: ``stall`` runs for ever, ``fail`` ends ``failed``,
and ``echo-auth`` ends ``failed`` with an ``error`` that quotes the submit's
``Authorization`` header (token and all), as an API that echoes requests might; a client
must never pass that on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

_HTTP_KINDS = ("429", "500", "502", "503", "504", "slow", "drop", "malformed")
# Error shapes RunComfy's own clients expect (docs/PROTOCOL-NOTES.md): HTTP 200 with a
# top-level error_code (a server error, or an account code), and 402 for an empty account.
_ERROR_SHAPES = ("error-200", "account-200", "402")

# The kinds each route can meet. `*` stands for every route where the kind makes sense.
ROUTE_KINDS: dict[str, tuple[str, ...]] = {
    "submit": (*_HTTP_KINDS, *_ERROR_SHAPES, "400", "lost-answer"),
    "status": (*_HTTP_KINDS, *_ERROR_SHAPES, "extra-fields"),
    "result": (*_HTTP_KINDS, *_ERROR_SHAPES, "extra-fields"),
    "cancel": (*_HTTP_KINDS, *_ERROR_SHAPES, "legacy-409", "no-status"),
    "models": (*_HTTP_KINDS, *_ERROR_SHAPES),
    "file": (*_HTTP_KINDS, "expired", "corrupt"),
    "job": ("stall", "fail", "echo-auth"),
}
ROUTES = tuple(ROUTE_KINDS)
KINDS = tuple(dict.fromkeys(kind for kinds in ROUTE_KINDS.values() for kind in kinds))


@dataclass(frozen=True)
class Fault:
    route: str  # one of ROUTES, or "*"
    kind: str
    rate: float

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``"submit:lost-answer:0.2"`` → ``Fault("submit", "lost-answer", 0.2)``."""
        usage = (
            f"bad fault spec {spec!r}: expected ROUTE:KIND:RATE with ROUTE one of "
            f"{', '.join((*ROUTES, '*'))}, KIND one of {', '.join(KINDS)}, RATE from 0 to 1"
        )
        parts = [part.strip() for part in str(spec).split(":")]
        if len(parts) != 3:
            raise ValueError(usage)
        route, kind, rate_text = parts
        try:
            rate = float(rate_text)
        except ValueError:
            raise ValueError(usage) from None
        if route not in (*ROUTES, "*") or kind not in KINDS or not 0 <= rate <= 1:
            raise ValueError(usage)
        if route != "*" and kind not in ROUTE_KINDS[route]:
            where = [r for r, kinds in ROUTE_KINDS.items() if kind in kinds]
            raise ValueError(
                f"bad fault spec {spec!r}: kind {kind!r} does not apply to route {route!r}; "
                f"it applies to {', '.join(where)}"
            )
        return cls(route, kind, rate)

    def applies_to(self, route: str) -> bool:
        return self.route in ("*", route) and self.kind in ROUTE_KINDS[route]


def parse_faults(specs: Iterable[str]) -> dict[str, list[Fault]]:
    """The faults per route, in spec order. Raises ``ValueError`` naming a bad spec."""
    faults = [Fault.parse(spec) for spec in specs]
    by_route = {route: [f for f in faults if f.applies_to(route)] for route in ROUTES}
    for route, route_faults in by_route.items():
        if sum(f.rate for f in route_faults) > 1 + 1e-9:
            raise ValueError(
                f"fault rates for route {route!r} add up to more than 1: "
                + ", ".join(f"{f.route}:{f.kind}:{f.rate:g}" for f in route_faults)
            )
    return by_route


class FaultPlan:
    """The faults in force and the seeded draws that pick them."""

    def __init__(self, specs: Iterable[str] = (), seed: int | None = None) -> None:
        self.specs = list(specs)
        self.seed = seed
        self._faults = parse_faults(self.specs)
        self._rngs = {
            route: random.Random(f"{seed}:{route}") if seed is not None else random.Random()
            for route in ROUTES
        }

    def draw(self, route: str) -> str | None:
        """The kind of fault this call to ``route`` meets, or None."""
        faults = self._faults[route]
        if not faults:
            return None
        point, edge = self._rngs[route].random(), 0.0
        for fault in faults:
            edge += fault.rate
            if point < edge:
                return fault.kind
        return None
