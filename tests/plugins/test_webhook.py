"""The webhook sink against a real local HTTP receiver: the shared sink contract, Slack and JSON formats, routes by
severity and model, and nothing sent twice after a restart."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from evostream.consumers.sinks.contract import Record, Status
from evostream.core.errors import SinkConfigError
from evostream.plugins.api import Sink, SinkContext
from evostream.plugins.webhook import WebhookSink
from tests.plugins.contract import Kind, SinkContract
from tests.plugins.samples import sample_records
from tests.plugins.webhook_receiver import receiver

SEVERITY_ORDER = ("INFO", "WARNING", "CRITICAL")


class TestWebhookContract(SinkContract):
    sink_name = "webhook"
    per_topic = 6

    @pytest.fixture(autouse=True)
    def _receiver(self) -> Iterator[None]:
        with receiver() as r:
            self.rx = r
            yield

    def options(self, tmp_path: Path) -> dict[str, str]:
        return {"url": self.rx.url + "/hook", "min_severity": "WARNING"}

    def make_sink(self, ctx: SinkContext) -> Sink:
        return WebhookSink(ctx)

    def stored(self, sink: Sink) -> Counter[str]:
        return Counter(g.body["record"] for g in self.rx.got)

    def expected(self, records: Sequence[Record]) -> Counter[str]:
        routed = [r for r in records if SEVERITY_ORDER.index(r.value["severity"]) >= 1]
        return Counter(r.key for r in routed)

    @contextlib.contextmanager
    def failing(self, sink: Sink, kind: Kind, times: int) -> Iterator[None]:
        self.rx.fail_next[:] = [503 if kind == "retryable" else 400] * times
        try:
            yield
        finally:
            self.rx.fail_next.clear()

    def bad_options(self, tmp_path: Path) -> dict[str, str] | None:
        return {"routes": "LOUD=http://x"}


def alerts(n: int, first: int = 0) -> list[Record]:
    return sample_records(("evo.alerts",), n, first)


def test_the_samples_hold_every_severity() -> None:  # what the routing tests below rely on
    assert {r.value["severity"] for r in alerts(6)} == set(SEVERITY_ORDER)


def test_routes_by_severity_and_model_in_slack_and_json(tmp_path: Path) -> None:
    with receiver() as rx:
        recs = alerts(6)
        model = str(recs[0].value["model_version"])
        routes = f"CRITICAL={rx.url}/pager;INFO@{model}={rx.url}/team;WARNING@nomatch/*={rx.url}/never"
        ctx = SinkContext("webhook", tmp_path, {"routes": routes, "format": "slack"})
        sink = WebhookSink(ctx)
        try:
            assert sink.write(recs).status is Status.OK
        finally:
            sink.close()
        by_path = Counter(g.path for g in rx.got)
        critical = [r for r in recs if r.value["severity"] == "CRITICAL"]
        mine = [r for r in recs if r.value["model_version"] == model]
        assert by_path == Counter({"/pager": len(critical), "/team": len(mine)})
        texts = [g.body["text"] for g in rx.got if g.path == "/pager"]
        assert all(t.startswith("*CRITICAL* risk ") and "on trace `" in t for t in texts), texts
        assert all(g.headers["content-type"] == "application/json" and g.headers["idempotency-key"] for g in rx.got)


def test_nothing_is_sent_twice_after_a_restart_and_positions_resume(tmp_path: Path) -> None:
    with receiver() as rx:
        recs = alerts(6)
        ctx = SinkContext("webhook", tmp_path, {"url": rx.url, "min_severity": "INFO"})
        first = WebhookSink(ctx)
        rx.fail_next[:] = [200, 200, 503]  # the third send fails: the batch is retryable, two went
        try:
            assert first.write(recs).status is Status.RETRYABLE
            assert len(rx.got) == 2
        finally:
            first.close()
        second = WebhookSink(ctx)  # a restart: the runner hands it the whole batch again
        try:
            assert second.write(recs).status is Status.OK
            assert sorted(g.body["record"] for g in rx.got) == sorted(r.key for r in recs)
            assert second.positions() == {("evo.alerts", 0): max(r.offset for r in recs) + 1}
            body = rx.got[0].body
            assert body["schema"] == "RiskAlert" and body["alert"]["trace_id"] == recs[0].value["trace_id"]
        finally:
            second.close()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"url": "http://a", "routes": "INFO=http://b"},
        {"routes": "WARNING=ftp://x"},
        {"url": "http://a", "format": "xml"},
        {"url": "http://a", "min_severity": "LOUD"},
    ],
)
def test_bad_options_say_what_is_wrong(tmp_path: Path, options: dict[str, str]) -> None:
    with pytest.raises(SinkConfigError, match="webhook"):
        WebhookSink(SinkContext("webhook", tmp_path, options)).close()
