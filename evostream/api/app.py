"""``evostream api``: the HTTP API and the live dashboard, one FastAPI app.

Every read answers from the same views the CLI prints: a ``Recent`` fold of the topics (kept live by a ``Tail``)
and the governance log replayed (``GovernanceView``). Nothing is recomputed here: risk, drift and profiles are what
the processors published. Server-sent events push each new record to the dashboard as the tail reads it.

The layout is FastAPI's full-stack template's: this module only builds the app (middleware, routers, the dashboard's
files). ``routes/`` holds one router per resource; ``deps`` the routes' dependencies (the app's ``state``, who calls,
checked by ``auth``); ``bodies`` and ``answers`` the JSON taken and given, ``records`` the contract's records as
answered (derived from the ``.avsc`` files); ``sse`` the event streams, ``jobs`` the evolution cycles run here,
``components`` which services are running; ``door`` the front door of every request to a model (tenant limits and
budgets, the response cache), ``openai_shapes`` the OpenAI-compatible endpoints' JSON; ``config``, ``errors`` and
``limits`` what their names say."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from evostream.api.config import ApiConfig
from evostream.api.errors import install
from evostream.api.limits import BodyLimit
from evostream.api.routes import ROUTERS
from evostream.api.state import ApiState
from evostream.api.trust import SameSiteWrites

STATIC = Path(__file__).parent / "static"
DESCRIPTION = (
    "Watch, profile, evolve and govern language models on Apache Kafka. Reads are open to this machine's clients; "
    "writes need an actor key (`Authorization: Bearer <token>`, from `evostream governance api-token --actor NAME`)."
)


def create_app(cfg: ApiConfig, tail: bool = True) -> FastAPI:
    """The app over ``cfg``'s broker; ``tail=False`` without live views (nothing read at start, no event streams)."""
    state = ApiState(cfg, tail)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(title="evostream", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.api = state
    install(app)
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    app.add_middleware(SameSiteWrites, allowed_origins=cfg.cors_origins)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=cfg.allowed_hosts)
    if cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    for router in ROUTERS:
        app.include_router(router)

    # the dashboard
    if STATIC.exists():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


__all__ = ["ApiConfig", "create_app"]
