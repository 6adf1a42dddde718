"""Where the service takes no part in a rollout: continuous batching serves production only (and says so once);
a routed service refuses a deployment source at construction."""

from __future__ import annotations

import logging
import threading

import pytest

from evostream.models.loading import load_model
from evostream.producers.client import InferenceClient
from evostream.producers.deployment import Deployment, DeploymentSlot
from evostream.producers.routing import Route
from evostream.producers.service import InferenceService, ServeOptions
from evostream.producers.swap import ServingModel
from evostream.producers.targets import GovernedTarget
from evostream.routing.policy import RoutingError
from evostream.routing.prices import PriceTable


def versions() -> tuple[ServingModel, ServingModel]:
    prod, cand = load_model("default", device="cpu"), load_model("default", device="cpu")
    return ServingModel("m@prod", prod), ServingModel("m@cand", cand)


def test_a_routed_service_refuses_to_follow_rollouts() -> None:
    prod, cand = versions()
    route = Route("default", lambda: None, GovernedTarget(cand.loaded), PriceTable())
    slot = DeploymentSlot(Deployment(prod))
    with pytest.raises(RoutingError, match="takes no part in rollouts"):
        InferenceService("127.0.0.1:1", prod.loaded, None, ServeOptions(8, 5), route=route, deployments=slot)


def test_continuous_batching_serves_production_only_and_says_why_once(
    kafka: str, caplog: pytest.LogCaptureFixture
) -> None:
    prod, cand = versions()
    slot = DeploymentSlot(Deployment(prod, cand, weight=100, rollout_id="r-cont"))
    options = ServeOptions(max_batch=4, max_wait_ms=5, batching="continuous")
    svc = InferenceService(kafka, prod.loaded, None, options, deployments=slot)
    ready = threading.Event()
    thread = threading.Thread(target=svc.run, kwargs={"on_ready": ready.set}, daemon=True)
    caplog.set_level(logging.WARNING, logger="evostream.serve")
    thread.start()
    try:
        assert ready.wait(60)
        with InferenceClient(kafka) as client:
            replies = [client.infer(p, max_new_tokens=8, timeout_s=120) for p in ("upper: ab", "sort: cab", "upper: c")]
    finally:
        svc.stop_event.set()
        thread.join(60)
    assert not thread.is_alive()
    assert {(r["model_version"], r["rollout_id"]) for r in replies} == {("m@prod", None)}
    assert svc.candidate is None
    said = [r.getMessage() for r in caplog.records if "serves production only" in r.getMessage()]
    assert len(said) == 1 and "m@cand" in said[0] and "--batching static" in said[0]
