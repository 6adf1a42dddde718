"""The Datadog sink with the real datadog-api-client against a local endpoint (Datadog is a paid service) that checks
the exact requests the client sends: method, path, API key header, gzip, JSON shape, metric types, the timestamp
window and the payload limits, and answers as Datadog does (202), or 503 / 400 when told to."""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from consumers.sinks.contract import Record, Status
from plugins.api import Sink, SinkContext
from plugins.datadog import MAX_COMPRESSED, MAX_RAW, DatadogSink
from tests.plugins.contract import Kind, SinkContract
from tests.plugins.samples import sample_records

KEY = "test-api-key-0123456789"


class Intake:
    """A local stand-in for api.datadoghq.com that records what it accepted and fails what it checks."""

    def __init__(self) -> None:
        self.series: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.payloads: list[tuple[int, int]] = []
        """(compressed, raw) bytes of each series payload."""
        self.fail: list[int] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        self.series, self.events, self.violations, self.payloads, self.fail = [], [], [], [], []

    def _check(self, ok: bool, what: str) -> None:
        if not ok:
            self.violations.append(what)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        intake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                check = intake._check
                check(self.headers.get("DD-API-KEY") == KEY, f"{self.path}: DD-API-KEY header missing or wrong")
                check(self.headers.get("Content-Type") == "application/json", f"{self.path}: not JSON")
                if intake.fail:
                    status = intake.fail.pop()
                    return self._reply(status, {"errors": [f"test intake answers {status}"]})
                if self.path == "/api/v2/series":
                    check(self.headers.get("Content-Encoding") == "gzip", "series not gzip-encoded")
                    body = gzip.decompress(raw)
                    intake.payloads.append((len(raw), len(body)))
                    if len(raw) > MAX_COMPRESSED or len(body) > MAX_RAW:
                        return self._reply(413, {"errors": ["Payload too large"]})
                    series = json.loads(body)["series"]
                    now = time.time()
                    for s in series:
                        check(set(s) <= {"metric", "type", "points", "tags", "interval", "unit", "resources"}, str(s))
                        check(s["metric"].startswith("evostream."), f"metric name {s['metric']}")
                        check(s["type"] in (1, 3), f"{s['metric']}: type {s['type']} is not COUNT (1) or GAUGE (3)")
                        check(all(not t.startswith("trace") for t in s["tags"]), f"{s['metric']}: a per-trace tag")
                        for p in s["points"]:
                            check(isinstance(p["timestamp"], int), "timestamp is not an integer of seconds")
                            check(now - 3600 <= p["timestamp"] <= now + 600, f"{p['timestamp']} out of window")
                    intake.series += series
                    return self._reply(202, {"errors": []})
                if self.path == "/api/v1/events":
                    event = json.loads(raw)
                    check({"title", "text"} <= set(event) and len(event["text"]) <= 4000, f"event {event}")
                    check(event.get("source_type_name") == "evostream", "event source")
                    intake.events.append(event)
                    return self._reply(202, {"status": "ok", "event": {"id": len(intake.events)}})
                return self._reply(404, {"errors": ["no such path"]})

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def intake() -> Iterator[Intake]:
    i = Intake()
    yield i
    i.stop()


def recent(topics: Sequence[str], per_topic: int = 3, first: int = 0) -> list[Record]:
    """Samples stamped now: Datadog takes no point older than an hour."""
    return sample_records(topics, per_topic, first, t_us=int(time.time() * 1e6) - 60_000_000)


class TestDatadogContract(SinkContract):
    sink_name = "datadog"
    durable = False  # Datadog adds counts up: a redelivery after a restart counts again

    @pytest.fixture(autouse=True)
    def _intake(self, intake: Intake) -> Iterator[None]:
        intake.reset()
        self.intake = intake
        yield
        assert not intake.violations, intake.violations

    def options(self, tmp_path: Path) -> dict[str, str]:
        return {"api_key": KEY, "host": self.intake.url, "tags": "env:test"}

    def make_sink(self, ctx: SinkContext) -> Sink:
        return DatadogSink(ctx)

    def samples(self, sink: Sink, first: int = 0) -> list[Record]:
        return recent(sink.topics, self.per_topic, first)

    def stored(self, sink: Sink) -> Counter[str]:
        """Records the intake accepted, by topic: the one ``evostream.sink.records`` point each record carries."""
        out: Counter[str] = Counter()
        for s in self.intake.series:
            if s["metric"] == "evostream.sink.records":
                topic = next(t.split(":", 1)[1] for t in s["tags"] if t.startswith("topic:"))
                out[topic] += int(sum(p["value"] for p in s["points"]))
        return out

    def expected(self, records: Sequence[Record]) -> Counter[str]:
        return Counter(r.topic for r in records)

    @contextlib.contextmanager
    def failing(self, sink: Sink, kind: Kind, times: int) -> Iterator[None]:
        self.intake.fail = [503 if kind == "retryable" else 400] * times
        try:
            yield
        finally:
            self.intake.fail = []

    def bad_options(self, tmp_path: Path) -> dict[str, str] | None:
        return {"host": "api.datadoghq.com"}  # no key, and a host that is not a URL


def test_the_requests_carry_the_right_metrics_tags_and_events(intake: Intake, tmp_path: Path) -> None:
    intake.reset()
    sink = DatadogSink(SinkContext("datadog", tmp_path, {"api_key": KEY, "host": intake.url, "tags": "env:test"}))
    try:
        assert sink.write(recent(sink.topics, 3)).status is Status.OK
    finally:
        sink.close()
    assert not intake.violations, intake.violations
    by_metric: Counter[str] = Counter()
    values: dict[tuple[str, str], float] = {}
    for s in intake.series:
        by_metric[s["metric"]] += len(s["points"])
        assert "env:test" in s["tags"]
        version = next((t for t in s["tags"] if t.startswith("model_version:")), "")
        values[s["metric"], version] = values.get((s["metric"], version), 0) + s["points"][0]["value"]
    assert values["evostream.tokens.generated", "model_version:tiny-a"] == 4 + 6
    assert values["evostream.tokens.generated", "model_version:tiny-b"] == 5
    assert by_metric["evostream.risk.score"] == 3 and by_metric["evostream.risk.flags"] == 2
    assert by_metric["evostream.sink.records"] == 18
    assert {s["type"] for s in intake.series if s["metric"] == "evostream.risk.score"} == {3}  # GAUGE
    # events: three alerts, one fired drift window, a promotion and a rollback
    titles = sorted(e["title"] for e in intake.events)
    assert titles == ["evostream: CRITICAL risk alert on tiny-a", "evostream: INFO risk alert on tiny-a",
                      "evostream: WARNING risk alert on tiny-b", "evostream: drift on tiny-b",
                      "evostream: tiny promoted to tiny-a", "evostream: tiny rolledback to tiny-a"]  # fmt: skip
    assert {e["alert_type"] for e in intake.events if "CRITICAL" in e["title"]} == {"error"}


def test_points_outside_the_window_are_counted_not_sent(intake: Intake, tmp_path: Path) -> None:
    intake.reset()
    sink = DatadogSink(SinkContext("datadog", tmp_path, {"api_key": KEY, "host": intake.url}))
    try:
        old = sample_records(sink.topics, 2)  # stamped days ago
        assert sink.write(old).status is Status.OK
        assert sink.dropped == len(old) and intake.series == [] and intake.events == []
    finally:
        sink.close()


def test_a_large_batch_is_split_within_the_payload_limits(intake: Intake, tmp_path: Path) -> None:
    intake.reset()
    sink = DatadogSink(SinkContext("datadog", tmp_path, {"api_key": KEY, "host": intake.url}))
    try:
        many = recent(("evo.completions",), per_topic=6000)
        assert sink.write(many).status is Status.OK
    finally:
        sink.close()
    assert not intake.violations, intake.violations
    assert len(intake.payloads) >= 2, intake.payloads
    assert all(c <= MAX_COMPRESSED and r <= MAX_RAW for c, r in intake.payloads)
    assert sum(len(s["points"]) for s in intake.series if s["metric"] == "evostream.sink.records") == 6000


def test_a_missing_key_says_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evostream.errors import SinkConfigError

    monkeypatch.delenv("DD_API_KEY", raising=False)
    with pytest.raises(SinkConfigError, match="EVOSTREAM_SINK_DATADOG_API_KEY or DD_API_KEY"):
        DatadogSink(SinkContext("datadog", tmp_path, {}))
