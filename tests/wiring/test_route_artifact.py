"""The follower serves a level only when the evidence governance approved is what the policy artifact holds: a
registration that does not describe its artifact (signed and valid on the log, which cannot read files) is not
served. A real artifact store, a signed chain in memory; no broker."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from bench.replay import ADMIN, Chain
from evostream.consumers.governance.policy import DEFAULT_POLICY
from evostream.consumers.governance.projection import Registry, replay
from evostream.core.artifacts import ArtifactStore
from evostream.core.errors import GovernanceError
from evostream.routing.policy import LevelGate, RoutePolicy
from evostream.wiring.routing import ARTIFACT_FILE, LoadedPolicy, level_evidence, router_at

EVIDENCE = {"corpus": 2500, "accuracy": 0.93, "accuracy_lower": 0.91, "confidence": 0.95, "self_share": 0.2}


def _stored(store: ArtifactStore) -> tuple[RoutePolicy, str]:
    policy = RoutePolicy("default", None, "", (LevelGate(1, 0.2, 0.9, 2.0, evidence=EVIDENCE),))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ARTIFACT_FILE).write_bytes(policy.to_bytes())
        return policy, store.put_dir(Path(tmp)).sha256


def _approved(sha: str, levels: dict[str, Any]) -> Registry:
    c = Chain(seed=3)
    c.genesis()
    c.append("PolicyChanged", ADMIN, {"policy": dict(DEFAULT_POLICY)})
    c.enroll("ops", ["proposer"])
    c.enroll("alice", ["approver"])
    registered = {
        "version": "route/default@v",
        "artifact_uri": "evo-artifact://sha256/" + sha,
        "artifact_sha256": sha,
        "parent": None,
        "operator": "route-register",
        "operator_params": {"probe_sha256": ""},
        "metrics": {"levels": levels},
    }
    c.append("ModelRegistered", "ops", registered, "route/default")
    proposal = {"version": "route/default@v", "level": 1, "evidence": levels["1"]}
    c.append("LevelProposed", "ops", proposal, "route/default")
    c.append("LevelApproved", "alice", {"version": "route/default@v", "level": 1}, "route/default")
    reg, found = replay(c.log())
    assert found == []
    return reg


def test_the_router_serves_the_level_its_artifact_earned(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    policy, sha = _stored(store)
    reg = _approved(sha, level_evidence(policy))
    route = reg.route("default")
    assert route is not None
    router = router_at(LoadedPolicy(store, reg, "default", "route/default@v"), route)
    assert (router.level, router.policy_version, router.policy) == (1, sha, policy)
    assert router.watch() is None  # no probe: no mid-answer decision


def test_a_registration_that_does_not_describe_its_artifact_is_not_served(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    _, sha = _stored(store)
    reg = _approved(sha, {"1": {**EVIDENCE, "corpus": 9000}})  # claimed at registration, not what was calibrated
    route = reg.route("default")
    assert route is not None and route["level"] == 1  # the log alone cannot tell
    with pytest.raises(GovernanceError, match="is not what policy route/default@v's artifact holds"):
        router_at(LoadedPolicy(store, reg, "default", "route/default@v"), route)
