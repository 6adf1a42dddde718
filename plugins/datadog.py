"""The Datadog sink: metrics through the v2 series intake (``MetricsApi.submit_metrics``, gzip) and events through
v1 ``EventsApi.create_event``, with the official datadog-api-client.

Metrics (``evostream.*``, tagged ``model_version:``, ``finish_reason:``, ``stage:``, ``flag:``, ``severity:``,
``statistic:``, ``type:``, ``topic:`` and the option ``tags``; never a trace id): ``evostream.requests``,
``evostream.tokens.generated``, ``evostream.tokens.prompt`` (counts), ``evostream.time_to_first_token`` and
``evostream.request.duration`` (gauges, seconds), ``evostream.risk.score`` (gauge), ``evostream.risk.flags``,
``evostream.risk.alerts``, ``evostream.drift.windows`` (counts), ``evostream.drift.statistic`` (gauge),
``evostream.profile.dormant_neuron_fraction`` (gauge), ``evostream.governance.events`` and
``evostream.sink.records`` (one per record, by topic; counts). Each point carries the report's own time.
Events: every risk alert (alert type by severity), every drift window that fired, every promotion and rollback.

Limits of the intake, kept: a payload is at most 512,000 bytes compressed and 5,242,880 bytes uncompressed (series
are split across payloads); points more than 10 minutes in the future or 1 hour in the past are not accepted by
Datadog, so they are not sent: they are counted in ``dropped`` and said in the log (replaying an old log into
Datadog cannot backfill it); events older than 18 hours likewise.

Datadog keeps one value per series and second (a later payload's replaces it), so points go as the Datadog agent
sends them: summed per series and second (counts added, gauges last), each second once it is closed. A batch sends
the seconds before its newest; the newest waits for a later batch or the flush, which the runner calls every
``flush_interval_s`` (option, default 10 s, the agent's own interval) before it commits. A record of a second that
already went (late, or after a flush) moves its counts to the series' next free second (see ``aggregate``): once
per flush at most when reports arrive in order, so a count is never overwritten and its time moves by a second.

Answers: no connection, 401 and 403 (a wrong or revoked key: the reports wait, and the log says why), 408, 429
and 5xx are retryable; any other refusal of a series payload (400, 413) is permanent and dead-letters the records
of that payload. An event refused permanently is logged and not sent again (its record's metrics went). Within one
process a record key is sent once (Datadog adds counts up, so the sink is not durable across processes: a
redelivery after a restart counts again, and its counts may land on a second already used).

Options: ``api_key`` (from the environment, ``EVOSTREAM_SINK_DATADOG_API_KEY`` or ``DD_API_KEY``, or from the file
``api_key_file`` names; refused on the command line, where ``ps`` shows it), ``site`` (default ``datadoghq.com``)
or ``host`` (a base URL, which wins), ``tags`` (``k:v,k2:v2``), ``timeout_s`` (default 10), ``remember`` (record
keys remembered as sent, default 100,000), ``flush_interval_s`` (default 10)."""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from datadog_api_client import ApiClient, Configuration
from datadog_api_client.exceptions import ApiException
from datadog_api_client.v1.api.events_api import EventsApi
from datadog_api_client.v1.model.event_alert_type import EventAlertType
from datadog_api_client.v1.model.event_create_request import EventCreateRequest
from datadog_api_client.v2.api.metrics_api import MetricsApi
from datadog_api_client.v2.model.metric_content_encoding import MetricContentEncoding
from datadog_api_client.v2.model.metric_intake_type import MetricIntakeType
from datadog_api_client.v2.model.metric_payload import MetricPayload
from datadog_api_client.v2.model.metric_point import MetricPoint
from datadog_api_client.v2.model.metric_series import MetricSeries
from urllib3.exceptions import HTTPError as Urllib3Error

from evostream.core.errors import SinkConfigError
from evostream.plugins.api import Record, Result, Sink, SinkContext, Status
from evostream.schemas.catalog import ALERTS, COMPLETIONS, DRIFT, GOVERNANCE, PROFILES, RISK

log = logging.getLogger("evostream.sinks.datadog")
MAX_COMPRESSED = 512_000
MAX_RAW = 5_242_880
PAST_S, FUTURE_S, EVENT_PAST_S = 3600, 600, 18 * 3600
RETRYABLE = {0, 401, 403, 408, 429}
"""Besides 5xx: no answer, a wrong or revoked API key (the reports wait for a fixed key rather than being
dead-lettered), a timeout, rate limiting."""
COUNT, GAUGE = MetricIntakeType.COUNT, MetricIntakeType.GAUGE
ALERT_TYPE = {"INFO": EventAlertType.INFO, "WARNING": EventAlertType.WARNING, "CRITICAL": EventAlertType.ERROR}

Point = tuple[str, MetricIntakeType, float, list[str]]
"""metric, type, value, tags (the time is the record's)."""


def retryable(status: int) -> bool:
    return status in RETRYABLE or status >= 500


def points(rec: Record) -> tuple[int, list[Point], list[EventCreateRequest]]:
    """The record's time (s), its metric points and its events."""
    v, topic = rec.value, rec.topic
    tags = [f"model_version:{v['model_version']}"] if "model_version" in v else []
    out: list[Point] = [("evostream.sink.records", COUNT, 1.0, [f"topic:{topic}"])]
    events: list[EventCreateRequest] = []
    if topic == COMPLETIONS:
        t, at = v["timings"], v["completed_at_us"]
        out += [
            ("evostream.requests", COUNT, 1.0, [*tags, f"finish_reason:{v['finish_reason']}"]),
            ("evostream.tokens.generated", COUNT, float(v["token_count"]), tags),
            ("evostream.tokens.prompt", COUNT, float(v["prompt_token_count"]), tags),
            ("evostream.request.duration", GAUGE, t["total_us"] / 1e6, tags),
        ]
        if v["error"] is None and v["token_count"] > 0:
            out.append(("evostream.time_to_first_token", GAUGE, (t["queue_us"] + t["prefill_us"]) / 1e6, tags))
    elif topic == RISK:
        at = v["produced_at_us"]
        out.append(("evostream.risk.score", GAUGE, float(v["score"]), [*tags, f"stage:{v['stage']}"]))
        out += [("evostream.risk.flags", COUNT, 1.0, [*tags, f"flag:{f}"]) for f in v["flags"]]
    elif topic == ALERTS:
        at = v["produced_at_us"]
        out.append(("evostream.risk.alerts", COUNT, 1.0, [*tags, f"severity:{v['severity']}"]))
        events.append(
            EventCreateRequest(
                title=f"evostream: {v['severity']} risk alert on {v['model_version']}",
                text=f"score {v['score']:.3f}, flags {', '.join(v['flags']) or 'none'}: {v['reason']}"[:4000],
                alert_type=ALERT_TYPE[v["severity"]],
                tags=[*tags, f"severity:{v['severity']}"],
                aggregation_key=f"evostream-risk-{v['model_version']}"[:100],
                source_type_name="evostream",
                date_happened=at // 1_000_000,
            )
        )
    elif topic == DRIFT:
        at = v["produced_at_us"]
        out.append(("evostream.drift.windows", COUNT, 1.0, [*tags, f"fired:{str(v['fired']).lower()}"]))
        out += [
            ("evostream.drift.statistic", GAUGE, float(s["value"]), [*tags, f"statistic:{s['name']}"])
            for s in v["statistics"]
        ]
        if v["fired"]:
            fired = ", ".join(s["name"] for s in v["statistics"] if s["fired"])
            events.append(
                EventCreateRequest(
                    title=f"evostream: drift on {v['model_version']}",
                    text=f"fired: {fired}; {v['sample_count']} samples",
                    alert_type=EventAlertType.WARNING,
                    tags=tags,
                    source_type_name="evostream",
                    aggregation_key=f"evostream-drift-{v['model_version']}"[:100],
                    date_happened=at // 1_000_000,
                )
            )
    elif topic == PROFILES:
        at = v["produced_at_us"]
        fractions = v["dormant_neuron_fraction"]
        if fractions:
            out.append(("evostream.profile.dormant_neuron_fraction", GAUGE, sum(fractions) / len(fractions), tags))
    elif topic == GOVERNANCE:
        at = v["occurred_at_us"]
        out.append(("evostream.governance.events", COUNT, 1.0, [f"type:{v['type']}", f"model:{v['model_name']}"]))
        if v["type"] in ("Promoted", "RolledBack"):
            payload = json.loads(v["payload_json"])
            events.append(
                EventCreateRequest(
                    title=f"evostream: {v['model_name']} {v['type'].lower()} to {payload.get('version')}",
                    text=f"by {v['actor']}: {v['reason']}"[:4000],
                    alert_type=EventAlertType.INFO,
                    tags=[f"model:{v['model_name']}", f"type:{v['type']}"],
                    source_type_name="evostream",
                    aggregation_key=f"evostream-governance-{v['model_name']}"[:100],
                    date_happened=at // 1_000_000,
                )
            )
    else:
        at = rec.timestamp_us
    return at // 1_000_000, out, events


POINT_BYTES = 160
"""A generous estimate of one point's JSON with its series, to cut records into chunks well within the limits."""


Item = tuple[Record, int, list[Point]]
"""A record, its time (s) and its points."""


def chunks(fresh: list[Item]) -> Iterator[list[Item]]:
    """Consecutive runs of records whose points, unaggregated, stay within half the raw payload limit."""
    chunk: list[Item] = []
    size = 0
    for item in fresh:
        cost = len(item[2]) * POINT_BYTES
        if chunk and size + cost > MAX_RAW // 2:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += cost
    if chunk:
        yield chunk


SeriesKey = tuple[str, int, tuple[str, ...]]
"""metric, type, tags."""


def aggregate(chunk: list[Item], extra: list[str], counted: dict[SeriesKey, int] | None = None) -> list[dict[str, Any]]:
    """The chunk's points as series, one per metric and tags, one point per second: counts summed, gauges last.

    Datadog keeps one value per series and second (a later one replaces the earlier), so a count never goes to a
    second of its series that an earlier payload already used: ``counted`` holds each count series' last second
    sent, and a point at or before it moves to the second after (its sum is kept; its time moves by the distance
    to the series' last payload, a second when reports arrive in order)."""
    series: dict[SeriesKey, dict[int, float]] = {}
    for _, at, pts in chunk:
        for metric, kind, value, tags in pts:
            by_second = series.setdefault((metric, int(kind.value), (*tags, *extra)), {})
            by_second[at] = by_second.get(at, 0.0) + value if kind == COUNT else value
    out = []
    for key, by_second in series.items():
        if key[1] == int(COUNT.value) and counted is not None and key in counted:
            floor, moved = counted[key] + 1, dict[int, float]()
            for t in sorted(by_second):
                moved[max(t, floor)] = moved.get(max(t, floor), 0.0) + by_second[t]
            by_second = moved
        out.append(
            {
                "metric": key[0],
                "type": key[1],
                "tags": list(key[2]),
                "points": [{"timestamp": t, "value": v} for t, v in sorted(by_second.items())],
            }
        )
    return out


def last_counted(series: list[dict[str, Any]]) -> dict[SeriesKey, int]:
    """Each count series' last second in ``series``."""
    return {
        (s["metric"], s["type"], tuple(s["tags"])): max(p["timestamp"] for p in s["points"])
        for s in series
        if s["type"] == int(COUNT.value) and s["points"]
    }


class DatadogSink(Sink):
    topics = (COMPLETIONS, RISK, ALERTS, DRIFT, PROFILES, GOVERNANCE)

    def __init__(self, ctx: SinkContext) -> None:
        super().__init__(ctx)
        key = ctx.secret("api_key", env="DD_API_KEY")  # never from the command line: `ps` would show it
        if not key:
            raise SinkConfigError(
                f"sink {self.name!r} needs a Datadog API key: set {ctx.env_name('api_key')} or "
                f"DD_API_KEY, or pass --option {self.name}.api_key_file=PATH"
            )
        host = ctx.option("host")
        site = ctx.option("site", "datadoghq.com") or "datadoghq.com"
        if host is not None and not host.startswith(("http://", "https://")):
            raise SinkConfigError(
                f"sink {self.name!r}: host is a base URL such as https://api.datadoghq.eu, got {host!r}"
            )
        timeout = ctx.number("timeout_s", 10.0)
        self.tags = [t.strip() for t in (ctx.option("tags", "") or "").split(",") if t.strip()]
        try:
            config = Configuration(
                host=host or f"https://api.{site}", api_key={"apiKeyAuth": key}, request_timeout=timeout
            )
        except ValueError as e:
            raise SinkConfigError(f"sink {self.name!r}: {e}") from e
        self.client = ApiClient(config)
        self.metrics, self.events = MetricsApi(self.client), EventsApi(self.client)
        self.dropped = 0
        self._series_sent: OrderedDict[str, None] = OrderedDict()
        self._events_sent: OrderedDict[str, None] = OrderedDict()
        self._counted: dict[SeriesKey, int] = {}
        self._held: list[Item] = []
        """Records whose points wait for their second to close (or for the flush)."""
        self.refused = 0
        self.flush_interval_s = ctx.number("flush_interval_s", 10.0)
        if self.flush_interval_s < 0:
            raise SinkConfigError(f"sink {self.name!r}: flush_interval_s must be >= 0")
        self.remember = int(ctx.number("remember", 100_000))

    def write(self, records: Sequence[Record]) -> Result:
        now = time.time()
        fresh: list[Item] = []
        events: list[tuple[Record, int, EventCreateRequest]] = []
        dropped: list[str] = []
        held = {rec.key for rec, _, _ in self._held}
        for rec in records:
            at, pts, evs = points(rec)
            if rec.key not in self._series_sent and rec.key not in held:
                if now - PAST_S <= at <= now + FUTURE_S:
                    fresh.append((rec, at, pts))
                    held.add(rec.key)
                else:
                    dropped.append(rec.key)
                    self._remember(self._series_sent, rec.key)
            recent = [(n, e) for n, e in enumerate(evs) if e.date_happened >= now - EVENT_PAST_S]
            events += [(rec, n, e) for n, e in recent if f"{rec.key}#{n}" not in self._events_sent]
        if dropped:
            self.dropped += len(dropped)
            log.warning(
                "%d records outside Datadog's window (1 h past, 10 min future) not sent, from %s (%d so far)",
                len(dropped),
                dropped[0],
                self.dropped,
            )
        # Points of the newest second wait (Datadog keeps one value per series and second): the seconds before it
        # are closed and go now, it goes with a later batch or at the flush. A retry sends only what did not go.
        self._held += fresh
        newest = max((at for _, at, _ in self._held), default=0)
        out = self._send([item for item in self._held if item[1] < newest])
        if out.status is Status.RETRYABLE:
            return out
        dead = {r.key for r in out.poison}
        for rec, n, event in events:
            if rec.key in dead:
                continue
            try:
                self.events.create_event(body=event)
            except ApiException as e:
                if retryable(e.status or 0):
                    return Result.retry(f"Datadog /api/v1/events answered {e.status} {e.reason}")
                log.warning("Datadog refused an event for %s (not sent again): %s %s", rec.key, e.status, e.reason)
            except (Urllib3Error, OSError) as e:
                return Result.retry(f"Datadog unreachable: {e}")
            self._remember(self._events_sent, f"{rec.key}#{n}")
        return out

    def _send(self, items: list[Item]) -> Result:
        """Send ``items`` in chunks, each aggregated per series and second; what went (or was refused for good)
        leaves ``_held``."""
        poison: list[Record] = []
        reasons: list[str] = []
        for chunk in chunks(items):
            series = aggregate(chunk, self.tags, self._counted)
            try:
                self._submit(series)
            except ApiException as e:
                status = e.status or 0
                why = f"Datadog /api/v2/series answered {status} {e.reason}: {str(e.body)[:300]}"
                if retryable(status):
                    return Result.retry(why)
                poison += [rec for rec, _, _ in chunk]
                reasons.append(why)
            except (Urllib3Error, OSError) as e:
                return Result.retry(f"Datadog unreachable: {e}")
            else:
                self._counted.update(last_counted(series))
                for rec, _, _ in chunk:
                    self._remember(self._series_sent, rec.key)
            done = {rec.key for rec, _, _ in chunk}
            self._held = [item for item in self._held if item[0].key not in done]
        if poison:
            return Result.failed("; ".join(sorted(set(reasons))), poison)
        return Result.ok()

    def flush(self) -> Result:
        """Send the points still held (the newest second's)."""
        out = self._send(list(self._held))
        if out.status is Status.FAILED:  # the records were handed over as applied: they can only be counted here
            self.refused += len(out.poison)
            log.error(
                "Datadog refused the held points of %d records for good: %s (%d so far)",
                len(out.poison),
                out.reason,
                self.refused,
            )
            return Result.ok()
        return out

    def _remember(self, seen: OrderedDict[str, None], key: str) -> None:
        seen[key] = None
        while len(seen) > self.remember:
            seen.popitem(last=False)

    def _submit(self, series: list[dict[str, Any]]) -> None:
        """One payload, or halves of it while it is over the intake's limits."""
        raw = json.dumps(series).encode()
        if (len(raw) > MAX_RAW // 2 or len(gzip.compress(raw)) > MAX_COMPRESSED) and len(series) > 1:
            half = len(series) // 2
            self._submit(series[:half])
            self._submit(series[half:])
            return
        body = MetricPayload(
            series=[
                MetricSeries(
                    metric=s["metric"],
                    type=MetricIntakeType(s["type"]),
                    tags=s["tags"],
                    points=[MetricPoint(timestamp=p["timestamp"], value=p["value"]) for p in s["points"]],
                )
                for s in series
            ]
        )
        self.metrics.submit_metrics(body=body, content_encoding=MetricContentEncoding.GZIP)

    def close(self) -> None:
        try:
            if self._held and self.flush().status is not Status.OK:
                log.error("Datadog: the points of %d records were not sent before close", len(self._held))
        finally:
            self.client.close()
