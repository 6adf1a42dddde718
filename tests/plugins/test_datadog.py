"""The Datadog sink with the real datadog-api-client against a local endpoint (Datadog is a paid service) that checks
the exact requests the client sends: method, path, API key header, gzip, JSON shape, metric types, the timestamp
window and the payload limits, and answers as Datadog does (202), or 503 / 400 when told to."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from evostream.consumers.sinks.contract import Record, Status
from evostream.plugins.api import Sink, SinkContext
from evostream.plugins.datadog import MAX_COMPRESSED, MAX_RAW, DatadogSink
from tests.plugins.contract import Kind, SinkContract
from tests.plugins.datadog_intake import KEY, Intake
from tests.plugins.samples import sample_records


@pytest.fixture(scope="module")
def intake() -> Iterator[Intake]:
    i = Intake()
    yield i
    i.stop()


def recent(topics: Sequence[str], per_topic: int = 3, first: int = 0) -> list[Record]:
    """Samples stamped now: Datadog takes no point older than an hour."""
    return sample_records(topics, per_topic, first, t_us=(int(time.time()) - 60) * 1_000_000)  # on a whole second


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
        values[s["metric"], version] = values.get((s["metric"], version), 0) + sum(p["value"] for p in s["points"])
    assert values["evostream.tokens.generated", "model_version:tiny-a"] == 4 + 6
    assert values["evostream.tokens.generated", "model_version:tiny-b"] == 5
    # points aggregate per series and second, counts summed, gauges last (the samples are a millisecond apart)
    assert values["evostream.risk.flags", "model_version:tiny-b"] == 2  # high_entropy and low_margin, once each
    assert values["evostream.sink.records", ""] == 18
    assert values["evostream.risk.score", "model_version:tiny-a"] == pytest.approx(0.252)  # the later of 0 and 2
    assert {s["type"] for s in intake.series if s["metric"] == "evostream.risk.score"} == {3}  # GAUGE
    # events: three alerts, one fired drift window, a promotion and a rollback
    titles = sorted(e["title"] for e in intake.events)
    assert titles == [
        "evostream: CRITICAL risk alert on tiny-a",
        "evostream: INFO risk alert on tiny-a",
        "evostream: WARNING risk alert on tiny-b",
        "evostream: drift on tiny-b",
        "evostream: tiny promoted to tiny-a",
        "evostream: tiny rolledback to tiny-a",
    ]
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
        many = [replace(r, value={**r.value, "model_version": f"v{r.offset}"}) for r in many]  # 6000 series each
        assert sink.write(many).status is Status.OK
    finally:
        sink.close()
    assert not intake.violations, intake.violations
    assert len(intake.payloads) >= 2, intake.payloads
    assert all(c <= MAX_COMPRESSED and r <= MAX_RAW for c, r in intake.payloads)
    records = [p["value"] for s in intake.series if s["metric"] == "evostream.sink.records" for p in s["points"]]
    assert sum(records) == 6000


def test_a_missing_key_says_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evostream.core.errors import SinkConfigError

    monkeypatch.delenv("DD_API_KEY", raising=False)
    with pytest.raises(SinkConfigError, match="EVOSTREAM_SINK_DATADOG_API_KEY or DD_API_KEY"):
        DatadogSink(SinkContext("datadog", tmp_path, {}))


def test_a_second_waits_until_it_closes_and_a_late_count_moves_to_the_next(intake: Intake, tmp_path: Path) -> None:
    intake.reset()
    sink = DatadogSink(SinkContext("datadog", tmp_path, {"api_key": KEY, "host": intake.url}))
    try:
        recs = recent(("evo.completions",), per_topic=4)  # a millisecond apart: one second
        assert sink.write(recs[:2]).status is Status.OK
        assert intake.series == []  # their second may still get points: it waits
        assert sink.flush().status is Status.OK  # the runner's commit: the held second goes
        assert sink.write(recs[2:]).status is Status.OK  # the same series and second, after it went
        assert sink.flush().status is Status.OK
    finally:
        sink.close()
    assert not intake.violations, intake.violations  # the intake flags a count second used twice
    points = [
        (p["timestamp"], p["value"])
        for s in intake.series
        if s["metric"] == "evostream.sink.records"
        for p in s["points"]
    ]
    second = recs[0].value["completed_at_us"] // 1_000_000
    assert points == [(second, 2.0), (second + 1, 2.0)]


def test_a_refused_key_is_retried_not_dead_lettered(intake: Intake, tmp_path: Path) -> None:
    intake.reset()
    sink = DatadogSink(SinkContext("datadog", tmp_path, {"api_key": KEY, "host": intake.url}))
    try:
        assert sink.write(recent(("evo.completions",), per_topic=2)).status is Status.OK
        intake.fail = [403]
        out = sink.flush()
        assert out.status is Status.RETRYABLE and "403" in out.reason and not out.poison
        assert sink.flush().status is Status.OK and sink.refused == 0
    finally:
        sink.close()
    assert sum(p["value"] for s in intake.series if s["metric"] == "evostream.sink.records" for p in s["points"]) == 2


def test_a_key_comes_from_a_file_or_the_environment_never_the_command_line(intake: Intake, tmp_path: Path) -> None:
    from evostream.core.errors import SinkConfigError

    with pytest.raises(SinkConfigError, match="ps"):
        DatadogSink(SinkContext.from_env("datadog", tmp_path, {"api_key": KEY, "host": intake.url}))
    (tmp_path / "dd-key").write_text(KEY + "\n")
    sink = DatadogSink(
        SinkContext.from_env("datadog", tmp_path, {"api_key_file": str(tmp_path / "dd-key"), "host": intake.url})
    )
    try:
        assert sink.client.configuration.api_key["apiKeyAuth"] == KEY
    finally:
        sink.close()
