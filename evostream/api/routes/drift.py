"""``/drift``: the latest drift windows, as the processors published them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from evostream.api.deps import Reader, State
from evostream.api.errors import refusals
from evostream.api.record_models import DriftReport
from evostream.views.recent import plain

router = APIRouter(tags=["reads"], responses=refusals(401))


@router.get("/drift", response_model=list[DriftReport], summary="The latest drift windows, oldest first")
def drift(
    state: State, _: Reader, last: Annotated[int, Query(ge=1, le=1000)] = 50, model: str | None = None
) -> list[dict[str, Any]]:
    return [plain(w) for w in state.read(lambda r: r.drift(last, model))]
