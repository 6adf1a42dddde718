"""A small routed history, the same for every test of what reads evo.routes back (the ledger, provenance, savings,
the API, the metrics): five requests of one route, each a different way through the router, with the Completions the
service would have written. Prices: the self model ``tiny-a`` at 0.1 / 0.2 milli-dollars per thousand prompt / output
tokens, the reference ``tiny-b`` at 10 / 30."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from evostream.core.bus.producer import EventProducer
from evostream.routing.prices import PriceTable
from evostream.schemas import samples
from evostream.schemas.catalog import COMPLETIONS, ROUTES
from evostream.schemas.codec import RecordCodec
from evostream.schemas.records import Completion, RouteDecision

SELF, REF = samples.VERSIONS
PRICES = {SELF: {"prompt_per_1k": 0.0001, "output_per_1k": 0.0002}, REF: {"prompt_per_1k": 0.01, "output_per_1k": 0.03}}
TABLE = PriceTable.from_json(PRICES)


def write_prices(path: Path) -> Path:
    path.write_text(json.dumps(PRICES))
    return path


@dataclass
class RouteLog:
    route: str
    decisions: list[RouteDecision]
    completions: list[Completion]

    def rid(self, n: int) -> str:
        return f"{self.route}-req-{n}"

    def tid(self, n: int, part: str = "") -> str:
        return f"{self.route}-trace-{n}{part}"


def _decision(log_route: str, n: int, k: int, t_us: int, **over: Any) -> RouteDecision:
    mine = {
        "decision_id": f"{log_route}-d{n}-{k}",
        "request_id": f"{log_route}-req-{n}",
        "trace_id": f"{log_route}-trace-{n}",
        "route": log_route,
        "tenant": "acme" if n % 2 else "globex",
        "decided_at_us": t_us,
    }
    return cast(RouteDecision, {**samples.route_decision(k, t_us), **mine, **over})


def _completion(log_route: str, n: int, version: str, t_us: int, prices: PriceTable = TABLE, **over: Any) -> Completion:
    mine = {
        "trace_id": f"{log_route}-trace-{n}",
        "request_id": f"{log_route}-req-{n}",
        "tenant": "acme" if n % 2 else "globex",
        "model_version": version,
        "prompt_token_count": 100,
        "token_count": 20,
        "output_text": f"answer {n} of {version}",
        "finish_reason": "STOP",
        "cached": False,
        "cached_from": None,
        "completed_at_us": t_us,
    }
    c = cast(Completion, {**samples.completion(0, t_us), **mine, **over})
    c["cost_usd"] = 0.0 if c["cached"] else prices.cost(version, c["prompt_token_count"], c["token_count"])
    return c


def route_log(route: str, t0_us: int, self_version: str = SELF, ref: str = REF, prices: PriceTable = TABLE) -> RouteLog:
    """Requests 1..5 of ``route``: 1 answered by self; 2 started by self, escalated at step 5 (a partial of 5
    tokens, then the reference's answer); 3 sent to the reference before generation; 4 a cache hit; 5 refused.
    Tenants: odd requests acme, even ones globex. ``self_version`` and ``ref``: the two targets' versions, priced by
    ``prices``."""
    t, me = t0_us, self_version
    weighed = [
        {"target": "self", "model_version": me, "score": 0.1, "cost_usd": prices.cost(me, 100, 20)},
        {"target": "reference", "model_version": ref, "score": 0.0, "cost_usd": prices.cost(ref, 100, 20)},
    ]
    gen: dict[str, Any] = {
        "stage": "GENERATION",
        "chosen": "reference",
        "chosen_version": ref,
        "step": 5,
        "risk": 0.62,
        "gate": 0.4,
        "candidates": weighed,
    }
    prompt_self: dict[str, Any] = {
        "stage": "PROMPT",
        "chosen": "self",
        "chosen_version": me,
        "step": None,
        "risk": 0.1,
        "candidates": weighed,
    }
    prompt_ref: dict[str, Any] = {
        "stage": "PROMPT",
        "chosen": "reference",
        "chosen_version": ref,
        "step": None,
        "risk": 0.7,
        "candidates": weighed,
    }
    door: dict[str, Any] = {"stage": "ADMISSION", "step": None, "candidates": []}
    decisions = [
        _decision(route, 1, 0, t + 1000, **prompt_self, reason="0.100 < prompt gate 0.350"),
        _decision(route, 2, 0, t + 2000, **prompt_self, reason="0.100 < prompt gate 0.350"),
        _decision(route, 2, 1, t + 2500, **gen, trace_id=f"{route}-trace-2p", reason="token risk 0.620 > gate 0.400"),
        _decision(route, 3, 0, t + 3000, **prompt_ref, reason="0.700 >= prompt gate 0.350"),
        _decision(route, 4, 0, t + 4000, **door, chosen="cache", chosen_version=ref, risk=0.99, reason="similar 0.99"),
        _decision(route, 5, 0, t + 5000, **door, chosen="refused", chosen_version="", trace_id="", reason="budget"),
    ]
    completions = [
        _completion(route, 1, me, t + 1100, prices),
        _completion(
            route, 2, me, t + 2500, prices, trace_id=f"{route}-trace-2p", finish_reason="ESCALATED", token_count=5
        ),
        _completion(route, 2, ref, t + 2900, prices),
        _completion(route, 3, ref, t + 3100, prices),
        _completion(route, 4, ref, t + 4000, prices, cached=True, cached_from=f"{route}-trace-3"),
    ]
    return RouteLog(route, decisions, completions)


def publish(server: str, log: RouteLog, also: Sequence[Completion] = ()) -> None:
    """Write the log's decisions to evo.routes and its Completions to evo.completions, acknowledged."""
    producer = EventProducer(server)
    routes, done = RecordCodec.of(RouteDecision), RecordCodec.of(Completion)
    for d in log.decisions:
        producer.send(ROUTES, d["request_id"], routes.encode(d))
    for c in [*log.completions, *also]:
        producer.send(COMPLETIONS, c["trace_id"], done.encode(c))
    producer.flush(30.0)
