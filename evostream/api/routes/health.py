"""``/health`` (the broker, the services by their consumer groups, the live view) and ``/overview`` (the last
minute's throughput)."""

from __future__ import annotations

from fastapi import APIRouter

from evostream.api.answers import Broker, Health, LiveView, Overview
from evostream.api.components import judge, needed
from evostream.api.deps import Reader, State
from evostream.api.errors import refusals
from evostream.core.bus.admin import cluster_metadata, group_lags, group_members
from evostream.core.clock import now_us
from evostream.core.errors import EvoError
from evostream.schemas.catalog import EVOLUTION_GROUP, INFERENCE_GROUP

router = APIRouter(tags=["reads"], responses=refusals(401))


@router.get("/health", response_model=Health, summary="Broker, services, active versions, consumer lags, live views")
def health(state: State, _: Reader) -> Health:
    cfg = state.cfg
    services = needed(cfg.settings)
    broker = Broker(bootstrap=cfg.bootstrap, reachable=False, brokers=None, topics=None)
    lags = members = active = error = None
    try:
        md = cluster_metadata(cfg.bootstrap, 3.0)
        broker = Broker(bootstrap=cfg.bootstrap, reachable=True, brokers=len(md.brokers), topics=len(md.topics))
        lags = group_lags(cfg.bootstrap, (INFERENCE_GROUP, EVOLUTION_GROUP, cfg.settings.processors_app_id))
        members = group_members(cfg.bootstrap, [s.group for s in services])
        gov = cfg.settings.governance_topic
        if gov not in md.topics:  # not read: a reader would wait its whole timeout for the topic
            error = f"there is no governance log yet: its topic {gov} does not exist (run `evostream governance init`)"
        else:
            active = {name: m["production"] for name, m in sorted(state.registry.get().models.items())}
    except EvoError as e:
        error = str(e)
    tail = state.tail
    live_error = None if tail is None or tail.error is None else str(tail.error)
    if tail is not None and not tail.alive:
        live_error = "the live view's reader stopped (see the API's log)"
    components = judge(services, members)
    return Health(
        status="ok" if broker.reachable and live_error is None and error is None else "degraded",
        broker=broker,
        error=error,
        consumer_lags=lags,
        active_versions=active,
        components=components,
        notices=[c.notice for c in components.values() if c.notice],
        live=LiveView(
            caught_up=bool(tail and tail.caught_up.is_set()),
            error=live_error,
            streams=state.streams,
            governance_followed=state.watching_governance,
            records=state.read(lambda r: dict(r.seen)),
        ),
    )


@router.get("/overview", response_model=Overview, summary="Throughput, answering versions and alert rate, last minute")
def overview(state: State, _: Reader) -> Overview:
    return Overview.model_validate(state.read(lambda r: r.overview(now_us())))
