"""``/routes`` on a real broker and a real HTTP server: one request's route (its decisions in order, its partial and
final traces), the latest requests' cost against always the reference, and the route in ``/provenance``."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from evostream.api.config import ApiConfig
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import init
from evostream.core.artifacts import ArtifactStore
from evostream.core.clock import now_us
from evostream.core.settings import load_settings
from evostream.views.governance import anchor_file, checkpoints_path
from tests.api.conftest import HOSTS, served
from tests.views.route_log import REF, TABLE, publish, route_log, write_prices

pytestmark = pytest.mark.integration


def until_found(url: str, path: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(url + path, timeout=30)
        if r.status_code == 200:
            return dict(r.json())
        assert r.status_code == 404 and time.monotonic() < deadline, r.text
        time.sleep(0.2)


def test_routes_answer_a_requests_decisions_its_traces_and_the_cost_against_the_reference(
    kafka: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    settings = load_settings(
        bootstrap_servers=kafka,
        governance_dir=tmp_path / "gov",
        artifacts_dir=tmp_path / "art",
        governance_topic=f"test-api-routes-{run}",
        route_prices=write_prices(tmp_path / "prices.json"),
    )
    glog = GovernanceLog(kafka, topic=settings.governance_topic)
    admin, _ = init(
        glog,
        settings.governance_dir / "keys",
        "admin",
        checkpoints=checkpoints_path(settings),
        anchor=anchor_file(settings),
    )
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "weights.bin").write_bytes(b"small")
    ref = ArtifactStore(settings.artifacts_dir).put_dir(tmp_path / "w")
    small = f"small-{run}@1"
    admin.register(f"small-{run}", small, artifact_uri=ref.uri, artifact_sha256=ref.sha256)
    log = route_log(f"api-{run}", now_us(), self_version=small)
    try:
        with served(ApiConfig(kafka, settings, allowed_hosts=HOSTS, trust_loopback=True)) as url:
            assert httpx.get(url + f"/routes/{log.rid(2)}", timeout=30).status_code == 404
            publish(kafka, log)
            doc = until_found(url, f"/routes/{log.rid(5)}")  # the last decision written: the others came before
            assert doc["chosen"] == "refused" and doc["completions"] == [] and doc["final_trace"] is None
            two = until_found(url, f"/routes/{log.rid(2)}")
            assert [d["stage"] for d in two["decisions"]] == ["PROMPT", "GENERATION"]
            assert two["decisions"][1]["step"] == 5 and two["decisions"][1]["reason"] == "token risk 0.620 > gate 0.400"
            assert two["escalated"] and two["chosen"] == "reference"
            assert two["partial_traces"] == [log.tid(2, "p")] and two["final_trace"] == log.tid(2)
            assert [c["finish_reason"] for c in two["completions"]] == ["ESCALATED", "STOP"]
            assert two["paid_usd"] == pytest.approx(TABLE.cost(small, 100, 5) + TABLE.cost(REF, 100, 20))

            deadline = time.monotonic() + 60
            # the broker is the session's: other tests' routes are in the summary too; this route's is its own
            while (total := httpx.get(url + "/routes", timeout=30).json()["by_route"].get(log.route, {})).get(
                "cache_hits", 0
            ) < 1:
                assert time.monotonic() < deadline, total
                time.sleep(0.2)
            assert (total["self_answered"], total["reference_answered"], total["escalated"], total["refusals"]) == (
                1,
                2,
                1,
                1,
            )
            assert total["self_share"] == pytest.approx(1 / 3)
            assert total["reference_usd"] == pytest.approx(4 * TABLE.cost(REF, 100, 20))

            prov = httpx.get(url + f"/provenance/{log.tid(1)}", timeout=30).json()
            assert prov["model_version"] == small and prov["route"]["request_id"] == log.rid(1), prov
            assert [d["chosen"] for d in prov["route"]["decisions"]] == ["self"]
    finally:
        glog.close()
