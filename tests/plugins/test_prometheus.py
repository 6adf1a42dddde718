"""The Prometheus sink: the shared contract read back from its real /metrics endpoint, a real Prometheus server
scraping it and answering PromQL, and promtool on its exposition, the shipped alert rules and their unit tests."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from evostream.consumers.sinks.contract import Record, Status
from evostream.core.stack.ports import free_port
from evostream.plugins.api import Sink, SinkContext
from evostream.plugins.prometheus import PrometheusSink
from evostream.routing.prices import PriceTable
from evostream.schemas.catalog import COMPLETIONS, ROUTES
from evostream.schemas.samples import T0_US
from tests.plugins.contract import Kind, SinkContract
from tests.plugins.samples import records, sample_records
from tests.views.route_log import PRICES, REF, SELF, route_log

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:  # CI installs the Debian package: a skip would hide a broken set-up
        pytest.fail(
            f"{name} is not on PATH: install the Debian package (apt-get install --no-install-recommends "
            "prometheus), as .ci/run does"
        )
    return found


def scrape(sink: Sink) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The sink's /metrics over HTTP, parsed: sample name -> [(labels, value)]."""
    assert isinstance(sink, PrometheusSink)
    body = urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/metrics", timeout=10).read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


class TestPrometheusContract(SinkContract):
    sink_name = "prometheus"
    durable = False
    retryable = "its writes go to in-memory counters, which cannot fail for a while and then succeed"

    def options(self, tmp_path: Path) -> dict[str, str]:
        return {"port": "0"}

    def make_sink(self, ctx: SinkContext) -> Sink:
        return PrometheusSink(ctx)

    def stored(self, sink: Sink) -> Counter[str]:
        """Records counted, per topic, as served on /metrics."""
        return Counter({labels["topic"]: int(v) for labels, v in scrape(sink).get("evostream_sink_records_total", [])})

    def expected(self, records: Sequence[Record]) -> Counter[str]:
        return Counter(r.topic for r in records)

    @contextlib.contextmanager
    def failing(self, sink: Sink, kind: Kind, times: int) -> Iterator[None]:
        assert isinstance(sink, PrometheusSink) and kind == "permanent"
        before, sink.max_versions = sink.max_versions, len(sink.versions)  # no room for one more model version
        try:
            yield
        finally:
            sink.max_versions = before

    def bad_options(self, tmp_path: Path) -> dict[str, str] | None:
        return {"port": "70000"}


ROUTE = "routed"
ROUTED_PRICES = {"route-self": PRICES[SELF], "route-ref": PRICES[REF]}
ROUTED = route_log(ROUTE, T0_US, "route-self", "route-ref", PriceTable.from_json(ROUTED_PRICES))
"""A routed history after the samples (its own versions, so the samples' series are as they were)."""


def routed_records() -> list[Record]:
    return records(ROUTES, list(ROUTED.decisions), first_offset=100) + records(
        COMPLETIONS, list(ROUTED.completions), first_offset=100
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusSink, str]]:
    """A sink that has written five reports of each kind and then a routed history (priced), and a real Prometheus
    server scraping it every second."""
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prices.json").write_text(json.dumps(ROUTED_PRICES))
    sink = PrometheusSink(SinkContext("prometheus", tmp, {"port": "0", "prices": str(tmp / "prices.json")}))
    assert sink.write(sample_records(per_topic=5)).status is Status.OK
    assert sink.write(routed_records()).status is Status.OK
    port = free_port()
    (tmp / "prom.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "evostream", "static_configs": [{"targets": [f"127.0.0.1:{sink.port}"]}]}
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={tmp / 'prom.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stderr=(tmp / "prometheus.log").open("wb"),
    )
    try:
        yield sink, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
        sink.close()


def query(url: str, promql: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The instant-query result once it is not empty (the first scrape takes about 6 s after start)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = json.loads(
                urllib.request.urlopen(f"{url}/api/v1/query?query={urllib.parse.quote(promql)}", timeout=5).read()
            )["data"]["result"]
        except OSError:
            got = []  # still starting
        if got or time.monotonic() > deadline:
            return list(got)
        time.sleep(0.2)


def test_a_real_prometheus_answers_promql_for_the_risk_series(served: tuple[PrometheusSink, str]) -> None:
    _, url = served
    got = query(url, 'evostream_risk_score_count{job="evostream",stage="FINAL"}')
    assert {r["metric"]["model_version"]: float(r["value"][1]) for r in got} == {"tiny-a": 3.0, "tiny-b": 2.0}
    total = query(url, 'sum by (model_version) (evostream_risk_score_sum{stage="FINAL"})')
    sums = {r["metric"]["model_version"]: float(r["value"][1]) for r in total}
    assert sums == pytest.approx({"tiny-a": 0.25 + 0.252 + 0.254, "tiny-b": 0.751 + 0.753})
    flags = query(url, "sum by (flag) (evostream_risk_flags_total)")
    assert {r["metric"]["flag"]: float(r["value"][1]) for r in flags} == {"high_entropy": 2.0, "low_margin": 2.0}


def test_a_real_prometheus_answers_the_routes_decisions_cost_and_saving(served: tuple[PrometheusSink, str]) -> None:
    _, url = served
    got = query(url, f'evostream_route_decisions_total{{route="{ROUTE}"}}')
    assert {(r["metric"]["stage"], r["metric"]["chosen"]): float(r["value"][1]) for r in got} == {
        ("PROMPT", "self"): 2.0,  # one answered by self, one escalated at step 5
        ("GENERATION", "reference"): 1.0,
        ("PROMPT", "reference"): 1.0,
        ("ADMISSION", "cache"): 1.0,
        ("ADMISSION", "refused"): 1.0,
    }
    [refused] = query(url, f'evostream_route_refusals_total{{route="{ROUTE}"}}')
    assert float(refused["value"][1]) == 1.0
    [hits] = query(url, "evostream_cache_hits_total")
    assert float(hits["value"][1]) == 2.0  # the routed cache hit, and sample 3 (marked cached)
    table = PriceTable.from_json(ROUTED_PRICES)
    one = table.cost("route-ref", 100, 20)
    paid = {
        r["metric"]["model_version"]: float(r["value"][1])
        for r in query(url, 'evostream_cost_usd_total{model_version=~"route-.*"}')
    }
    self_paid = table.cost("route-self", 100, 20) + table.cost("route-self", 100, 5)  # answered; a partial
    assert paid == pytest.approx({"route-self": self_paid, "route-ref": 2 * one})
    # the samples came before any decision named a reference: only the routed answers have a reference cost
    [reference] = query(url, "evostream_reference_cost_usd_total")
    assert float(reference["value"][1]) == pytest.approx(4 * one)  # self, escalated, reference, cached answers
    all_paid = sum(float(r.value["cost_usd"]) for r in sample_records((COMPLETIONS,), 5)) + sum(paid.values())
    [saved] = query(url, "evostream_cost_saved_usd")
    assert float(saved["value"][1]) == pytest.approx(4 * one - all_paid)


def test_a_real_prometheus_sees_which_version_serves(served: tuple[PrometheusSink, str]) -> None:
    _, url = served
    # samples: tiny-a registered, promoted, rolled back to; tiny-b registered, promoted to production
    got = query(url, 'evostream_model_active{model="tiny"}')
    assert {r["metric"]["model_version"]: float(r["value"][1]) for r in got} == {"tiny-a": 0.0, "tiny-b": 1.0}


def test_no_series_carries_a_trace_label(served: tuple[PrometheusSink, str]) -> None:
    sink, _ = served
    labels = {k for samples in scrape(sink).values() for labels, _ in samples for k in labels}
    assert labels == {
        "model_version",
        "finish_reason",
        "stage",
        "flag",
        "severity",
        "statistic",
        "fired",
        "model",
        "type",
        "topic",
        "le",
        "route",
        "chosen",
        "role",
    }


def test_answers_are_counted_by_version_and_role(served: tuple[PrometheusSink, str]) -> None:
    sink, _ = served
    got = {(labels["model_version"], labels["role"]): v for labels, v in scrape(sink)["evostream_answers_total"] if v}
    # samples 0..4 alternate tiny-a / tiny-b, and sample 4 is a shadow answer; then the routed history's answers:
    # route-self's answer and partial, route-ref's two answers and the cache hit of its answer
    assert got == {
        ("tiny-a", "ANSWER"): 2.0,
        ("tiny-a", "SHADOW"): 1.0,
        ("tiny-b", "ANSWER"): 2.0,
        ("route-self", "ANSWER"): 2.0,
        ("route-ref", "ANSWER"): 3.0,
    }


def test_the_latency_histograms_measure_what_they_say(served: tuple[PrometheusSink, str]) -> None:
    sink, _ = served
    m = scrape(sink)

    def total(name: str, version: str) -> float:
        return sum(v for labels, v in m[name] if labels["model_version"] == version)

    # tiny-b's completions are samples 1 and 3: queue 200 us, prefill 3000 + 100 i, decode 20000 + 1000 i us,
    # tokens 4 + i % 5
    ttft = total("evostream_time_to_first_token_seconds_sum", "tiny-b")
    assert ttft == pytest.approx((200 + 3100 + 200 + 3300) / 1e6)
    assert total("evostream_inter_token_latency_seconds_sum", "tiny-b") == pytest.approx(21e-3 / 4 + 23e-3 / 6)
    assert total("evostream_generated_tokens_total", "tiny-b") == 5 + 7


def test_promtool_accepts_the_exposition(served: tuple[PrometheusSink, str]) -> None:
    sink, _ = served
    done = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=sink.exposition(), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_shipped_rules_and_config_check_and_their_unit_tests_pass() -> None:
    promtool = tool("promtool")
    for args in (
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],
    ):
        done = subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "evostream")
    assert job["static_configs"][0]["targets"] == ["sinks:9464"]  # the compose service and the sink's default port


def test_the_dashboard_queries_only_metrics_the_sink_serves(served: tuple[PrometheusSink, str]) -> None:
    sink, _ = served
    names = set(scrape(sink))
    dashboard = json.loads((DEPLOY.parent / "grafana" / "dashboards" / "evostream.json").read_text())
    used = {t["expr"] for p in dashboard["panels"] for t in p["targets"]}
    metrics = {m for e in used for m in re.findall(r"\bevostream_[a-z_]+", e)}
    assert metrics and metrics <= names, metrics - names


def test_a_new_versions_event_series_start_at_zero_and_promotions_count_against_max_versions(tmp_path: Path) -> None:
    sink = PrometheusSink(SinkContext("prometheus", tmp_path, {"port": "0", "max_versions": "2"}))
    try:
        recs = sample_records(("evo.completions",), 1)  # one version seen, no drift window or alert of it yet
        assert sink.write(recs).status is Status.OK
        version = recs[0].value["model_version"]
        got = scrape(sink)
        windows = {(lb["model_version"], lb["fired"]): v for lb, v in got["evostream_drift_windows_total"]}
        assert windows == {(version, "true"): 0.0, (version, "false"): 0.0}
        alerts = {(lb["model_version"], lb["severity"]): v for lb, v in got["evostream_alerts_total"]}
        assert alerts == {(version, s): 0.0 for s in ("INFO", "WARNING", "CRITICAL")}
        # promotions name versions too: tiny-b fills max_versions=2, and a promotion of a third is poison
        gov = [r for r in sample_records(("evo.governance",), 6) if r.value["type"] == "Promoted"]
        assert (
            [json.loads(r.value["payload_json"])["version"] for r in gov] == ["tiny-a", "tiny-b"] == [version, "tiny-b"]
        )
        third = replace(
            gov[1],
            offset=99,
            value={
                **gov[1].value,
                "payload_json": json.dumps({"alias": None, "stage": "production", "version": "tiny-c"}),
            },
        )
        out = sink.write([*gov, third])
        assert out.status is Status.FAILED and [r.key for r in out.poison] == [third.key]
        active = {lb["model_version"]: v for lb, v in scrape(sink)["evostream_model_active"]}
        assert active == {"tiny-a": 0.0, "tiny-b": 1.0} and sink.versions == {"tiny-a", "tiny-b"}
    finally:
        sink.close()
