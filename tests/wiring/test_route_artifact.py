"""The follower serves a level only when the policy artifact is what governance approved and registered: the
evidence, the probe it reads (the registration's, a registered risk probe), the self model versions it was certified
on. A registration that does not describe its artifact (signed and valid on the log, which cannot read files) is not
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
from evostream.wiring.routing import ARTIFACT_FILE, LoadedPolicy, certified_for, level_evidence, router_at

EVIDENCE = {
    "corpus": 2500,
    "accuracy": 0.93,
    "accuracy_lower": 0.91,
    "confidence": 0.95,
    "self_share": 0.2,
    "bound": 0.15,
    "certified": True,
}
PROBE = "cd" * 32
SELF = "small@aaaa"


def _stored(store: ArtifactStore, probe: str = "", trained_on: dict[str, Any] | None = None) -> tuple[RoutePolicy, str]:
    on = {"self_versions": [SELF]} if trained_on is None else trained_on
    policy = RoutePolicy("default", None, probe, (LevelGate(1, 0.2, 0.9, 2.0, evidence=EVIDENCE),), on)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ARTIFACT_FILE).write_bytes(policy.to_bytes())
        return policy, store.put_dir(Path(tmp)).sha256


def _approved(sha: str, levels: dict[str, Any], params: dict[str, Any] | None = None) -> Registry:
    """A route's policy ``sha`` registered with ``params`` (no probe, certified on SELF unless given) and level 1
    approved; a risk probe ``PROBE`` registered before it."""
    c = Chain(seed=3)
    c.genesis()
    c.append("PolicyChanged", ADMIN, {"policy": dict(DEFAULT_POLICY)})
    c.enroll("ops", ["proposer"])
    c.enroll("alice", ["approver"])
    probe: dict[str, Any] = {
        "version": "risk/fam@cdcd",
        "artifact_uri": "evo-artifact://sha256/" + PROBE,
        "artifact_sha256": PROBE,
        "parent": None,
        "operator": "risk-train",
        "operator_params": {},
        "metrics": {},
    }
    c.append("ModelRegistered", "ops", probe, "risk/fam")
    registered = {
        "version": "route/default@v",
        "artifact_uri": "evo-artifact://sha256/" + sha,
        "artifact_sha256": sha,
        "parent": None,
        "operator": "route-register",
        "operator_params": {"probe_sha256": "", "self_versions": [SELF]} if params is None else params,
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
    loaded = LoadedPolicy(store, reg, "default", "route/default@v")
    router = router_at(loaded, route, reg)
    assert (router.level, router.policy_version, router.policy) == (1, sha, policy)
    assert router.watch() is None  # no probe: no mid-answer decision
    assert certified_for(loaded, SELF) and not certified_for(loaded, "small@bbbb")


def test_a_registration_that_does_not_describe_its_artifact_is_not_served(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    _, sha = _stored(store)
    reg = _approved(sha, {"1": {**EVIDENCE, "corpus": 9000}})  # claimed at registration, not what was calibrated
    route = reg.route("default")
    assert route is not None and route["level"] == 1  # the log alone cannot tell
    with pytest.raises(GovernanceError, match="is not what policy route/default@v's artifact holds"):
        router_at(LoadedPolicy(store, reg, "default", "route/default@v"), route, reg)


def test_a_policy_reading_another_probe_than_its_registration_names_is_not_served(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    _, sha = _stored(store, probe=PROBE)  # the artifact reads the registered probe; its registration names none
    reg = _approved(sha, {"1": EVIDENCE})
    with pytest.raises(GovernanceError, match=r"artifact reads probe cdcdcdcdcdcd, its registration names none"):
        LoadedPolicy(store, reg, "default", "route/default@v")


def test_a_policy_reading_a_probe_that_is_no_registered_risk_version_is_not_served(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    policy, sha = _stored(store)
    reg = _approved(sha, {"1": EVIDENCE})
    loaded = LoadedPolicy(store, reg, "default", "route/default@v")
    route = reg.route("default")
    assert route is not None
    # what a verified log cannot hold (registration refuses it), a registry read without verification might
    loaded.policy = RoutePolicy("default", None, "ef" * 32, policy.gates, policy.trained_on)
    loaded.registration = {**loaded.registration, "operator_params": {"probe_sha256": "ef" * 32}}
    with pytest.raises(GovernanceError, match=r"reads probe efefefefefef\.\.\., which is no registered risk/<family>"):
        router_at(loaded, route, reg)


def test_self_versions_the_registration_does_not_record_are_not_served(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    _, sha = _stored(store, trained_on={"self_versions": [SELF, "small@bbbb"]})
    reg = _approved(sha, {"1": EVIDENCE})  # the registration says SELF only
    route = reg.route("default")
    assert route is not None
    with pytest.raises(GovernanceError, match=r"certified on self versions \['small@aaaa', 'small@bbbb'\]"):
        router_at(LoadedPolicy(store, reg, "default", "route/default@v"), route, reg)


def test_a_policy_registered_before_self_versions_were_recorded_reads_but_is_certified_for_none(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(tmp_path)
    _, sha = _stored(store, trained_on={})
    reg = _approved(sha, {"1": EVIDENCE}, params={"probe_sha256": ""})
    route = reg.route("default")
    assert route is not None
    loaded = LoadedPolicy(store, reg, "default", "route/default@v")
    assert router_at(loaded, route, reg).level == 1 and not certified_for(loaded, SELF)
