"""``/profiles``: the latest profile of each model version, its token paths as the version's own text."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from evostream.api.deps import Reader, State
from evostream.api.errors import refusals
from evostream.api.record_models import ProfileSnapshot
from evostream.views.recent import plain

router = APIRouter(tags=["reads"], responses=refusals(401))


@router.get(
    "/profiles",
    response_model=list[ProfileSnapshot],
    summary="The latest profile of each model version, token paths as text",
)
def profiles(state: State, _: Reader, model: str | None = None) -> list[dict[str, Any]]:
    out = []
    for p in state.read(lambda r: r.profiles(model)):
        doc = plain(p)
        version = str(p["model_version"])
        doc["top_token_paths"] = [
            {
                **path,
                "text": state.tokens.path_text(version, path["token_ids"]),
                "pieces": state.tokens.pieces(version, path["token_ids"]),
            }
            for path in p["top_token_paths"]
        ]
        out.append(doc)
    return out
