"""The price a run plans and budgets with: the API's own catalog, or the user's figure.

``GET /v1/models/{model_id}`` gives ``base_price_usd`` per ``price_unit``. That is the
price, per output image; ``FLASHGEN_PRICE_PER_IMAGE`` overrides it, and stands in where
the catalog does not answer. The source of the price is always said with it::

    price = await price_for(client, model_id, override=settings.price_per_image)
    price.per_image, price.source
    # → (0.025, 'catalog: base_price_usd of wan-ai/wan-2-2/flash/text-to-image, per output')

A model that the catalog does not know (404) is refused as bad input, before anything
is paid for.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

from flashgen.errors import ApiError, AuthenticationError, InputError, NotFoundError

log = logging.getLogger(__name__)

OVERRIDE = "FLASHGEN_PRICE_PER_IMAGE"


class Price(BaseModel):
    """USD per image (None: unknown) and where that figure comes from."""

    per_image: float | None = None
    source: str = f"unknown: set {OVERRIDE}"


async def price_for(client, model_id: str, *, override: float | None = None) -> Price:
    """The price of one image of ``model_id``; ``client`` is a ``RunComfyClient``.

    Raises ``InputError`` (field ``model_id``) when the catalog says the model does not
    exist. Any other failure (a refused token included: the run's token check says so
    next) falls back to ``override``.
    """
    try:
        info = await client.model(model_id)
    except NotFoundError as exc:
        raise InputError(f"model_id: {model_id!r} is not in the API's model catalog "
                         f"({exc.message})", field="model_id") from None
    except AuthenticationError:
        raise  # a bad token is refused as such, once (not a missing catalog)
    except ApiError as exc:  # no catalog here (an older API), or it is down: fall back
        log.warning("model catalog unavailable: %s", exc)
        if override is not None:
            return Price(per_image=override, source=f"{OVERRIDE} (the catalog did not answer)")
        return Price(source=f"unknown: the catalog did not answer; set {OVERRIDE}")
    unit = info.price_unit or "output"
    if override is not None:
        said = (f"{info.base_price_usd:g} per {unit}" if info.base_price_usd is not None
                else "no price")
        return Price(per_image=override, source=f"{OVERRIDE}, overriding the catalog's {said}")
    if info.base_price_usd is None or unit != "output":
        return Price(source=f"unknown: the catalog prices {model_id} per {unit}; set {OVERRIDE}")
    return Price(per_image=info.base_price_usd,
                 source=f"catalog: base_price_usd of {model_id}, per output")
