"""The Prometheus sink: a /metrics endpoint (prometheus-client, its own registry) that a Prometheus server scrapes.

Names follow Prometheus conventions: the ``evostream_`` prefix, base units (seconds), ``_total`` on counters.
Labels are bounded: ``model_version`` (at most ``max_versions`` distinct ones, option, default 100, counting the
versions that promotions and rollbacks name: a record of one more version is refused as poison, never a new
series; a version's ``evostream_drift_windows_total`` and ``evostream_alerts_total`` series start at 0 when it is
first seen, so that ``increase()`` catches their first event), ``finish_reason``, ``stage``, ``flag``, ``severity``,
``statistic``, ``fired``, ``type``, ``topic``, ``model``, ``role``. **No per-trace label anywhere**: trace ids are
unbounded.

What each metric measures (from the records the runner hands over):

- ``evostream_requests_total`` / ``evostream_generated_tokens_total`` / ``evostream_prompt_tokens_total``: per
  Completion, by version (and finish reason);
- ``evostream_answers_total``: per Completion, by version and ``role``: ANSWER (returned to its client; a rollout's
  canary answers included) or SHADOW (a rollout candidate's answer to a mirrored request, never returned);
- ``evostream_time_to_first_token_seconds``: per Completion, queue + prefill time: from the request's arrival at the
  service to its first token;
- ``evostream_inter_token_latency_seconds``: per Completion, its decode time over its tokens after the first (one
  observation per request: the mean gap of that request);
- ``evostream_request_duration_seconds``: per Completion, from arrival to the last token;
- ``evostream_risk_score``: per RiskReport, by stage; ``evostream_risk_flags_total``: flags raised, by flag;
- ``evostream_alerts_total``: per RiskAlert, by severity;
- ``evostream_drift_statistic`` / ``evostream_drift_threshold``: the latest drift window's statistics;
  ``evostream_drift_windows_total``: windows judged, by ``fired``;
- ``evostream_dormant_neuron_fraction``: the latest profile's mean over layers;
- ``evostream_model_active``: 1 for the version serving a model in production (Promoted to production, or the target
  of a RolledBack), 0 for the versions it replaced;
- ``evostream_governance_events_total`` by type, ``evostream_sink_records_total`` by topic;
- routing (from ``evo.routes`` and the Completions): ``evostream_route_decisions_total`` per RouteDecision by
  ``route``, ``stage`` and ``chosen`` (self, reference, cache, refused: a cache hit and a refusal are decisions at
  the door, so ``chosen="cache"`` and ``chosen="refused"`` count them); ``evostream_cache_hits_total`` (Completions
  marked cached) and ``evostream_route_refusals_total`` by route; ``evostream_cost_usd_total`` by version: the
  Completions' ``cost_usd`` (what was paid, escalated partials included); ``evostream_reference_cost_usd_total``:
  what each answer (a final Completion: not a partial, not an error) would have cost from the reference, its tokens
  at the reference's price in the price table; ``evostream_cost_saved_usd``: the reference's cost less what was paid,
  since the sink started (a gauge: an escalation costs more than the reference alone). The reference is the
  ``reference`` option, else the one the latest RouteDecision names; before either, answers get no reference cost.
  A self-share is ``chosen="self"`` over ``chosen=~"self|reference"`` at ``stage="PROMPT"``, less the escalations
  (``stage="GENERATION"``).

Prometheus counters restart at zero with the process, so the sink is not durable (a new instance starts from
nothing); within one, a record key seen among the last ``remember`` (option, default 100,000) is not counted twice.

Options: ``port`` (default 9464, 0 picks a free one), ``addr`` (default 127.0.0.1), ``max_versions``, ``remember``,
``prices`` (the price table's file; default ``EVOSTREAM_ROUTE_PRICES``), ``reference`` (the reference's version)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from evostream.core.errors import EvoError, SinkConfigError
from evostream.core.settings import load_settings
from evostream.plugins.api import Record, Result, Sink, SinkContext
from evostream.routing.prices import PriceTable
from evostream.schemas.catalog import ALERTS, COMPLETIONS, DRIFT, GOVERNANCE, PROFILES, RISK, ROUTES

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SEVERITIES = ("INFO", "WARNING", "CRITICAL")
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Metrics:
    """Every series the sink exposes, in one registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        v = ("model_version",)
        self.requests = Counter("evostream_requests", "Completed requests.", (*v, "finish_reason"), registry=r)
        self.answers = Counter("evostream_answers", "Completions by role (ANSWER or SHADOW).", (*v, "role"), registry=r)
        self.tokens = Counter("evostream_generated_tokens", "Tokens generated.", v, registry=r)
        self.prompt_tokens = Counter("evostream_prompt_tokens", "Prompt tokens read.", v, registry=r)
        self.ttft = Histogram(
            "evostream_time_to_first_token_seconds",
            "Queue + prefill time of a request.",
            v,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "evostream_inter_token_latency_seconds",
            "Mean gap between a request's tokens.",
            v,
            buckets=TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "evostream_request_duration_seconds",
            "From arrival to the last token.",
            v,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.risk = Histogram(
            "evostream_risk_score", "Risk scores of reports.", (*v, "stage"), buckets=SCORE_BUCKETS, registry=r
        )
        self.flags = Counter("evostream_risk_flags", "Risk flags raised.", (*v, "flag"), registry=r)
        self.alerts = Counter("evostream_alerts", "Risk alerts.", (*v, "severity"), registry=r)
        self.drift = Gauge(
            "evostream_drift_statistic", "The latest drift window's statistic.", (*v, "statistic"), registry=r
        )
        self.drift_cut = Gauge(
            "evostream_drift_threshold", "The latest drift window's threshold.", (*v, "statistic"), registry=r
        )
        self.windows = Counter("evostream_drift_windows", "Drift windows judged.", (*v, "fired"), registry=r)
        self.dormant = Gauge(
            "evostream_dormant_neuron_fraction",
            "Mean dormant FFN neuron fraction of the latest profile.",
            v,
            registry=r,
        )
        self.active = Gauge(
            "evostream_model_active",
            "1 for the version serving a model in production.",
            ("model", "model_version"),
            registry=r,
        )
        self.governance = Counter("evostream_governance_events", "Governance events.", ("type",), registry=r)
        self.records = Counter("evostream_sink_records", "Records applied by this sink.", ("topic",), registry=r)
        self.decisions = Counter(
            "evostream_route_decisions", "Routing decisions.", ("route", "stage", "chosen"), registry=r
        )
        self.cache_hits = Counter("evostream_cache_hits", "Answers served from the response cache.", registry=r)
        self.refusals = Counter("evostream_route_refusals", "Requests refused at the door.", ("route",), registry=r)
        self.cost = Counter("evostream_cost_usd", "What answers cost (US dollars).", v, registry=r)
        self.reference_cost = Counter(
            "evostream_reference_cost_usd", "What the answers would have cost from the reference.", registry=r
        )
        self.saved = Gauge("evostream_cost_saved_usd", "Reference cost less cost paid, since start.", registry=r)


def _prices(name: str, path: str | None) -> PriceTable:
    """The price table of the ``prices`` option, else of the settings; none: every answer costs 0."""
    try:
        where = Path(path) if path else load_settings().route_prices
        return PriceTable() if where is None else PriceTable.from_bytes(where.read_bytes())
    except (OSError, EvoError) as e:
        raise SinkConfigError(f"sink {name!r}: the price table: {e}") from e


class PrometheusSink(Sink):
    topics = (COMPLETIONS, RISK, ALERTS, DRIFT, PROFILES, GOVERNANCE, ROUTES)

    def __init__(self, ctx: SinkContext) -> None:
        super().__init__(ctx)
        port = ctx.number("port", 9464)
        self.max_versions = int(ctx.number("max_versions", 100))
        self.remember = int(ctx.number("remember", 100_000))
        if not (0 <= port <= 65535 and port == int(port)):
            raise SinkConfigError(f"sink {self.name!r}: port must be 0..65535, got {port:g}")
        if self.max_versions < 1 or self.remember < 1:
            raise SinkConfigError(f"sink {self.name!r}: max_versions and remember must be at least 1")
        self.prices = _prices(self.name, ctx.option("prices"))
        self.reference: str | None = ctx.option("reference") or None
        self._fixed_reference = self.reference is not None
        self._paid = self._reference_usd = 0.0
        self.metrics = Metrics()
        self.versions: set[str] = set()
        self._served: dict[str, set[str]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        addr = ctx.option("addr", "127.0.0.1") or "127.0.0.1"
        try:
            self._server, self._thread = start_http_server(int(port), addr=addr, registry=self.metrics.registry)
        except OSError as e:
            raise SinkConfigError(f"sink {self.name!r}: cannot listen on {addr}:{int(port)}: {e}") from e
        self.port: int = self._server.server_port

    # -- write ----------------------------------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> Result:
        poison: list[Record] = []
        with self._lock:
            for rec in records:
                if rec.key in self._seen:
                    continue
                version = self.version_of(rec)
                if version is not None and version not in self.versions:
                    if len(self.versions) >= self.max_versions:
                        poison.append(rec)
                        continue
                    self.versions.add(version)
                    self._first_seen(version)
                self._apply(rec)
                self._seen[rec.key] = None
                if len(self._seen) > self.remember:
                    self._seen.popitem(last=False)
        if poison:
            return Result.failed(
                f"more than max_versions={self.max_versions} model versions: a new label value would "
                "grow the series without bound",
                poison,
            )
        return Result.ok()

    @staticmethod
    def version_of(rec: Record) -> str | None:
        """The model version a record labels a series with: its own, or the one a promotion or rollback serves."""
        if rec.topic == GOVERNANCE:
            if rec.value["type"] not in ("Promoted", "RolledBack"):
                return None
            version = json.loads(rec.value["payload_json"]).get("version")
            return str(version) if version else None
        version = rec.value.get("model_version")
        return None if version is None else str(version)

    def _first_seen(self, version: str) -> None:
        """A new version's event counters exist at 0 from the first scrape on: ``increase()`` and ``rate()`` see
        nothing of a series' first sample, so a drift window that fires in a version's first scrape interval
        would otherwise never alert."""
        m = self.metrics
        for fired in ("true", "false"):
            m.windows.labels(version, fired)
        for severity in SEVERITIES:
            m.alerts.labels(version, severity)

    def _apply(self, rec: Record) -> None:
        m, v = self.metrics, rec.value
        if rec.topic == COMPLETIONS:
            self._completion(v)
        elif rec.topic == RISK:
            m.risk.labels(v["model_version"], v["stage"]).observe(v["score"])
            for flag in v["flags"]:
                m.flags.labels(v["model_version"], flag).inc()
        elif rec.topic == ALERTS:
            m.alerts.labels(v["model_version"], v["severity"]).inc()
        elif rec.topic == DRIFT:
            for s in v["statistics"]:
                m.drift.labels(v["model_version"], s["name"]).set(s["value"])
                m.drift_cut.labels(v["model_version"], s["name"]).set(s["threshold"])
            m.windows.labels(v["model_version"], str(v["fired"]).lower()).inc()
        elif rec.topic == PROFILES:
            fractions = v["dormant_neuron_fraction"]
            if fractions:
                m.dormant.labels(v["model_version"]).set(sum(fractions) / len(fractions))
        elif rec.topic == GOVERNANCE:
            m.governance.labels(v["type"]).inc()
            self._serving(v["model_name"], v["type"], json.loads(v["payload_json"]))
        elif rec.topic == ROUTES:
            self._decision(v)
        m.records.labels(rec.topic).inc()

    def _decision(self, v: Mapping[str, Any]) -> None:
        m = self.metrics
        m.decisions.labels(v["route"], v["stage"], v["chosen"]).inc()
        if v["chosen"] == "refused":
            m.refusals.labels(v["route"]).inc()
        if not self._fixed_reference:
            named = [c["model_version"] for c in v["candidates"] if c["target"] == "reference" and c["model_version"]]
            self.reference = named[-1] if named else self.reference

    def _cost(self, v: Mapping[str, Any]) -> None:
        m, paid = self.metrics, float(v.get("cost_usd") or 0.0)
        m.cost.labels(v["model_version"]).inc(paid)
        self._paid += paid
        if v.get("cached"):
            m.cache_hits.inc()
        answer = v["finish_reason"] not in ("ESCALATED", "ERROR") and v.get("role") != "SHADOW"
        if self.reference is not None and answer:
            ref = self.prices.cost(self.reference, int(v["prompt_token_count"]), int(v["token_count"]))
            m.reference_cost.inc(ref)
            self._reference_usd += ref
        m.saved.set(self._reference_usd - self._paid)

    def _completion(self, v: Mapping[str, Any]) -> None:
        m, version, t = self.metrics, v["model_version"], v["timings"]
        m.requests.labels(version, v["finish_reason"]).inc()
        m.answers.labels(version, v.get("role") or "ANSWER").inc()
        self._cost(v)
        m.tokens.labels(version).inc(v["token_count"])
        m.prompt_tokens.labels(version).inc(v["prompt_token_count"])
        if v["error"] is None and v["token_count"] > 0:
            m.ttft.labels(version).observe((t["queue_us"] + t["prefill_us"]) / 1e6)
            m.duration.labels(version).observe(t["total_us"] / 1e6)
            if v["token_count"] > 1:
                m.itl.labels(version).observe(t["decode_us"] / 1e6 / (v["token_count"] - 1))

    def _serving(self, model: str, type_: str, payload: Mapping[str, Any]) -> None:
        promoted = type_ == "Promoted" and payload.get("stage") == "production"
        if not (promoted or type_ == "RolledBack"):
            return
        serving = payload["version"]
        known = self._served.setdefault(model, set())
        for version in known - {serving}:
            self.metrics.active.labels(model, version).set(0)
        known.add(serving)
        self.metrics.active.labels(model, serving).set(1)

    # -- the rest -------------------------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """What /metrics serves now."""
        return generate_latest(self.metrics.registry)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
