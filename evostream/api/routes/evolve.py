"""``POST /evolve`` (an admin starts one evolution cycle now) and ``GET /evolve/{job_id}`` (its progress and
verdict); the runner is ``jobs.EvolveJobs``."""

from __future__ import annotations

from fastapi import APIRouter

from evostream.api.answers import EvolveJob
from evostream.api.bodies import EvolveBody
from evostream.api.deps import AdminActor, Reader, State
from evostream.api.errors import refusals

router = APIRouter(tags=["evolution"], responses=refusals(401, 404))


@router.post(
    "/evolve",
    response_model=EvolveJob,
    status_code=202,
    responses=refusals(400, 403, 409),
    summary="Start one evolution cycle now (admin key)",
)
def evolve(body: EvolveBody, state: State, actor: AdminActor) -> EvolveJob:
    return state.jobs.start(body, actor)


@router.get(
    "/evolve/{job_id}", response_model=EvolveJob, summary="An evolution cycle started here: progress and verdict"
)
def evolve_job(job_id: str, state: State, _: Reader) -> EvolveJob:
    return state.jobs.get(job_id)
