"""One router per resource; ``app.create_app`` mounts them in this order (the order of /docs)."""

from __future__ import annotations

from fastapi import APIRouter

from evostream.api.routes import (
    alerts,
    decisions,
    drift,
    evolve,
    feedback,
    governance,
    health,
    infer,
    openai,
    profiles,
    registry,
    traces,
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    traces.router,
    feedback.router,
    alerts.router,
    drift.router,
    profiles.router,
    registry.router,
    decisions.router,
    infer.router,
    openai.router,
    governance.router,
    evolve.router,
)
