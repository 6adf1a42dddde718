"""The webhook sink: risk alerts posted where people look, to a Slack incoming webhook or any HTTP endpoint as JSON.

Routes pick where an alert goes by its severity and model: option ``routes`` is ``SEVERITY[@MODEL_GLOB]=URL``
entries separated by ``;`` (``CRITICAL=https://hooks.slack.com/...;WARNING@evostream/*=http://pager/hook``); an alert
goes to every route whose severity it reaches and whose glob matches its model version. ``url`` alone is one route
from ``min_severity`` (default WARNING) for every model. ``format`` is ``json`` (the RiskAlert as the log holds it,
with the record's place) or ``slack`` (a ``text`` message Slack's incoming webhooks take).

Nothing is sent twice after a restart: each (record, route) sent is kept in a SQLite file in the sink's folder,
with the next offset per partition in the same transaction, and the runner resumes from those positions; a batch
retried after a failure skips what already went. Every request carries ``Idempotency-Key: <topic:partition:offset>``
(and the route), so a receiver can drop the one duplicate a crash between its answer and that commit can cause.

Answers: 2xx is sent; a connection error, 408, 429 and 5xx are retryable (the runner backs off and tries the batch
again); any other refusal is permanent and dead-letters that record. Options: ``routes`` or ``url``,
``min_severity``, ``format`` (json), ``timeout_s`` (10)."""

from __future__ import annotations

import fnmatch
import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evostream.core.errors import SinkConfigError
from evostream.plugins.api import Positions, Record, Result, Sink, SinkContext
from evostream.schemas.catalog import ALERTS

SEVERITIES = ("INFO", "WARNING", "CRITICAL")
FORMATS = ("json", "slack")
RETRYABLE = {408, 429}


@dataclass(frozen=True)
class Route:
    """Where alerts of at least ``severity`` whose model version matches ``models`` go."""

    severity: str
    models: str
    url: str

    def takes(self, alert: Any) -> bool:
        reaches = SEVERITIES.index(str(alert["severity"])) >= SEVERITIES.index(self.severity)
        return reaches and fnmatch.fnmatchcase(str(alert["model_version"]), self.models)

    @property
    def name(self) -> str:
        return f"{self.severity}@{self.models}={self.url}"


def parse_routes(ctx: SinkContext) -> list[Route]:
    """The sink's routes from its options (SinkConfigError naming the option for a bad one)."""
    text, url = ctx.option("routes"), ctx.option("url")
    if bool(text) == bool(url):
        raise SinkConfigError(
            f"sink {ctx.name!r} needs exactly one of the options 'routes' ({ctx.env_name('routes')}) and 'url' "
            f"({ctx.env_name('url')})"
        )
    entries = [e.strip() for e in (text or "").split(";") if e.strip()]
    if url:
        entries = [f"{ctx.option('min_severity', 'WARNING')}={url}"]
    routes = []
    for entry in entries:
        head, sep, target = entry.partition("=")
        severity, _, models = head.partition("@")
        severity = severity.strip().upper()
        if not sep or severity not in SEVERITIES or not target.startswith(("http://", "https://")):
            raise SinkConfigError(
                f"sink {ctx.name!r}: route {entry!r} is not SEVERITY[@MODEL_GLOB]=http(s)://... "
                f"(severity one of {', '.join(SEVERITIES)})"
            )
        routes.append(Route(severity, models.strip() or "*", target.strip()))
    return routes


def slack_text(alert: Any) -> str:
    """The one message a person reads in Slack."""
    flags = ", ".join(alert["flags"]) or "no flag"
    return (
        f"*{alert['severity']}* risk {float(alert['score']):.2f} on trace `{alert['trace_id']}` "
        f"({alert['model_version']}, {alert['stage']}): {alert['reason'] or flags} [{flags}; policy {alert['policy']}]"
    )


class WebhookSink(Sink):
    """Risk alerts to webhooks, routed by severity and model, each sent once."""

    topics = (ALERTS,)

    def __init__(self, ctx: SinkContext) -> None:
        super().__init__(ctx)
        self.routes = parse_routes(ctx)
        self.format = (ctx.option("format", "json") or "json").lower()
        if self.format not in FORMATS:
            raise SinkConfigError(f"sink {ctx.name!r}: format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        self.timeout_s = ctx.number("timeout_s", 10.0)
        ctx.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(ctx.data_dir / "sent.db", isolation_level=None, check_same_thread=False)
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS sent (record TEXT, route TEXT, PRIMARY KEY (record, route));"
            "CREATE TABLE IF NOT EXISTS positions (topic TEXT, partition INTEGER, next INTEGER,"
            " PRIMARY KEY (topic, partition));"
        )

    def _sent(self, record: Record, route: Route) -> bool:
        row = self.db.execute("SELECT 1 FROM sent WHERE record = ? AND route = ?", (record.key, route.name)).fetchone()
        return row is not None

    def _mark(self, record: Record, route: Route | None) -> None:
        """The record sent on ``route`` (None: it needed no send), and its partition's next offset, in one commit."""
        with self.db:
            self.db.execute("BEGIN")
            if route is not None:
                self.db.execute("INSERT OR IGNORE INTO sent VALUES (?, ?)", (record.key, route.name))
            self.db.execute(
                "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE"
                " SET next = max(next, excluded.next)",
                (record.topic, record.partition, record.offset + 1),
            )

    def _body(self, record: Record) -> bytes:
        alert = record.value
        if self.format == "slack":
            return json.dumps({"text": slack_text(alert)}).encode()
        doc = {"record": record.key, "schema": record.schema, "alert": dict(alert)}
        return json.dumps(doc, sort_keys=True, default=str).encode()

    def _post(self, record: Record, route: Route) -> tuple[str, str] | None:
        """None once sent; else ("retry" or "failed", why)."""
        req = urllib.request.Request(
            route.url,
            data=self._body(record),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": f"{record.key}|{route.severity}@{route.models}",
                "User-Agent": "evostream-webhook-sink",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
            return None
        except urllib.error.HTTPError as e:
            why = f"{route.url} answered {e.code} {e.reason}"
            return ("retry" if e.code >= 500 or e.code in RETRYABLE else "failed"), why
        except (urllib.error.URLError, OSError) as e:  # no connection, a timeout, a reset
            return "retry", f"{route.url} unreachable: {getattr(e, 'reason', e)}"

    def write(self, records: Sequence[Record]) -> Result:
        poison: list[Record] = []
        reasons: list[str] = []
        for record in records:
            routes = [r for r in self.routes if r.takes(record.value)]
            if not routes:
                self._mark(record, None)  # nothing to send: its position still moves
                continue
            for route in routes:
                if self._sent(record, route):
                    continue
                problem = self._post(record, route)
                if problem is None:
                    self._mark(record, route)
                elif problem[0] == "retry":
                    return Result.retry(problem[1])  # what went is kept: the retried batch skips it
                else:
                    poison.append(record)
                    reasons.append(problem[1])
                    break
        if poison:
            return Result.failed("; ".join(reasons), poison)
        return Result.ok()

    def positions(self) -> Positions:
        return {(t, p): n for t, p, n in self.db.execute("SELECT topic, partition, next FROM positions")}

    def close(self) -> None:
        self.db.close()
