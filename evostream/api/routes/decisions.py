"""``/routes``: where routed requests went and what they cost (the live fold of evo.routes and the Completions its
decisions point at, ``views.routes``): one request's route, and the latest requests' cost against always the
reference (priced by ``Settings.route_prices``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from evostream.api.answers import RouteDoc, RouteSummary
from evostream.api.deps import Reader, State
from evostream.api.errors import refusals
from evostream.core.errors import NotFoundError
from evostream.routing.policy import RoutingError
from evostream.routing.prices import PriceTable
from evostream.views.routes import route_doc

router = APIRouter(tags=["reads"], responses=refusals(401))


def prices(state: State) -> PriceTable:
    """The price table of the settings (none: every answer costs 0)."""
    path = state.cfg.settings.route_prices
    if path is None:
        return PriceTable()
    try:
        return PriceTable.from_bytes(path.read_bytes())
    except OSError as e:
        raise RoutingError(f"the price table {path} cannot be read: {e}") from e


@router.get(
    "/routes",
    response_model=RouteSummary,
    summary="The latest routed requests: cost paid against always the reference, self-share, escalations",
)
def routes(state: State, _: Reader) -> dict[str, Any]:
    table = prices(state)
    return state.read(lambda r: r.routes.savings(table).doc())


@router.get(
    "/routes/{request_id}",
    response_model=RouteDoc,
    responses=refusals(404),
    summary="One request's route: each decision of the router, its partial and final traces",
)
def route(request_id: str, state: State, _: Reader) -> dict[str, Any]:
    doc = state.read(lambda r: None if (x := r.routes.request(request_id)) is None else route_doc(x))
    if doc is None:
        raise NotFoundError(f"no routing decision of request {request_id!r} among the latest routed requests")
    return doc
