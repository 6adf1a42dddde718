"""A governed route end to end on the real broker: a routing policy (reading a registered risk probe) is registered
with `evostream route register`, a level is proposed and approved by two actors through the CLI, and the follower the
inference service holds (``GovernedRoute``) hands over a Router at that level; a self-approval, a level without the
evidence and a caller's evidence that differs from the artifact's are refused; lowering takes effect at once; a self
model version the level was not certified on is routed at level 0."""

from __future__ import annotations

import logging
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import Governance, init, key_path, load_actor
from evostream.core.artifacts import ArtifactStore
from evostream.core.errors import GovernanceError, PolicyViolationError
from evostream.core.settings import Settings
from evostream.models.risk_probe import fit_probe, trace_features
from evostream.routing.policy import GAIN_LABEL, LevelGate, RoutePolicy, Router
from evostream.schemas.samples import generation_step
from evostream.views.governance import anchor_file, checkpoints_path
from evostream.wiring.risk import Trained, register_probe
from evostream.wiring.route_train import store_probe
from evostream.wiring.routing import GovernedRoute, lower_level, propose_level, register_route
from tests.stream_processors.harness import CLI

LAYERS = 4
SELF = "small@aaaa"


def _evidence(corpus: int, accuracy: float, share: float) -> dict[str, Any]:
    return {
        "corpus": corpus,
        "accuracy": accuracy,
        "accuracy_lower": accuracy - 0.03,
        "confidence": 0.95,
        "self_share": share,
        "bound": 0.15,
        "certified": True,
    }


def _probe_trained() -> Trained:
    calm = [generation_step(i, "calm", layers=LAYERS) for i in range(6)]
    noisy = [dict(s, entropy_bits=9.0 + i) for i, s in enumerate(calm)]
    x = np.array(
        [trace_features(calm[: k + 1], LAYERS) for k in range(6)]
        + [trace_features(noisy[: k + 1], LAYERS) for k in range(6)]
    )
    probe = fit_probe(x, np.array([False] * 6 + [True] * 6), "fam", LAYERS)
    return Trained(probe, {"held_out_auroc": 1.0}, True, {"held_out_auroc": {"passed": True}})


def _wait(what: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "the follower did not catch up"
        time.sleep(0.1)


@pytest.fixture
def governed(kafka: str, tmp_path: Path) -> tuple[Settings, dict[str, str], dict[str, Governance]]:
    """A fresh governance log: admin, ops (proposer), alice (approver); their keys in the governance folder."""
    topic = f"test-governance-route-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        bootstrap_servers=kafka,
        governance_topic=topic,
        governance_dir=tmp_path / "gov",
        artifacts_dir=tmp_path / "art",
    )
    keys = settings.governance_dir / "keys"
    checkpoints, anchor = checkpoints_path(settings), anchor_file(settings)
    admin, _ = init(GovernanceLog(kafka, topic=topic), keys, "admin", checkpoints=checkpoints, anchor=anchor)
    actors = {"admin": admin}
    for name, roles in (("ops", ["proposer"]), ("alice", ["approver"]), ("dual", ["proposer", "approver"])):
        key = ActorKey.generate()
        key.save(key_path(keys, name))
        admin.enroll(name, key.public_hex, key.key_id, roles)
        actors[name] = load_actor(GovernanceLog(kafka, topic=topic), keys, name, checkpoints=checkpoints, anchor=anchor)
    env = {
        **os.environ,
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "EVOSTREAM_GOVERNANCE_TOPIC": topic,
        "EVOSTREAM_GOVERNANCE_DIR": str(settings.governance_dir),
        "EVOSTREAM_ARTIFACTS_DIR": str(settings.artifacts_dir),
    }
    return settings, env, actors


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_a_level_approved_by_another_actor_reaches_the_router(
    kafka: str,
    tmp_path: Path,
    governed: tuple[Settings, dict[str, str], dict[str, Governance]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings, env, actors = governed
    store = ArtifactStore(settings.artifacts_dir)
    probe_version = register_probe(actors["ops"], store, _probe_trained())
    probe_sha = actors["ops"].state().registry.version("risk/fam", probe_version)["artifact_sha256"]
    policy = RoutePolicy(
        "default",
        None,
        probe_sha,
        (
            LevelGate(1, 0.2, prompt_gate=0.9, token_gate=0.7, evidence=_evidence(2400, 0.95, 0.2)),
            LevelGate(3, 0.8, prompt_gate=0.5, token_gate=0.5, evidence=_evidence(2400, 0.90, 0.8)),  # 4000 needed
        ),
        {"outcomes": [0, 100], "self_versions": [SELF]},
    )
    (tmp_path / "policy.json").write_bytes(policy.to_bytes())
    with pytest.raises(GovernanceError, match="made for route 'default', not 'other'"):
        register_route(actors["ops"], store, policy, "other")
    with pytest.raises(GovernanceError, match="no registered risk/<family> version"):
        register_route(actors["ops"], store, replace(policy, probe_sha256="ef" * 32), "default")

    done = _cli(
        env, "route", "register", "--name", "default", "--policy", str(tmp_path / "policy.json"), "--actor", "ops"
    )
    assert done.returncode == 0, done.stderr
    version = done.stdout.strip()
    assert version.startswith("route/default@")
    entry = actors["ops"].state().registry.version("route/default", version)
    assert entry["operator_params"]["probe_version"] == probe_version
    assert entry["metrics"]["levels"] == {"1": _evidence(2400, 0.95, 0.2), "3": _evidence(2400, 0.90, 0.8)}
    assert entry["operator_params"]["self_versions"] == [SELF]

    route = GovernedRoute(kafka, settings, "default", poll_s=0.1)
    try:
        assert route(SELF) is None  # no level yet: no routing

        # not enough evidence for level 3; a self-approval; evidence that is not the artifact's
        done = _cli(env, "route", "level", "propose", "--route", "default", "--level", "3", "--actor", "ops")
        assert done.returncode == 1 and "level 3 needs a held-out corpus of at least 4000" in done.stderr, done.stderr
        with pytest.raises(GovernanceError, match="differs from"):
            propose_level(actors["ops"], store, "default", 1, evidence={**_evidence(2400, 0.95, 0.2), "corpus": 9000})
        done = _cli(env, "route", "level", "propose", "--route", "default", "--level", "1", "--actor", "dual")
        assert done.returncode == 0, done.stderr
        done = _cli(env, "route", "level", "approve", "--route", "default", "--level", "1", "--actor", "dual")
        assert done.returncode == 1 and "may not approve it too (four eyes)" in done.stderr, done.stderr
        time.sleep(0.5)
        assert route(SELF) is None  # proposed is not approved

        done = _cli(env, "route", "level", "approve", "--route", "default", "--level", "1", "--actor", "alice")
        assert done.returncode == 0, done.stderr
        _wait(lambda: route(SELF) is not None)
        router = route(SELF)
        assert isinstance(router, Router) and router.level == 1
        assert router.probe is not None and router.policy_version == entry["artifact_sha256"]
        assert router.before(None).target == "self" and router.watch() is not None

        # another self model (a new production version) was not certified: level 0 until a policy certified on it
        with caplog.at_level(logging.WARNING, logger="evostream.routing"):
            other = [route("small@bbbb") for _ in range(3)]
        assert all(r is not None and r.level == 0 for r in other)
        assert other[0] is not None and other[0].before(None).target == "reference"
        said = [r.getMessage() for r in caplog.records if "not on small@bbbb" in r.getMessage()]
        assert len(said) == 1 and "certified on self model versions small@aaaa" in said[0], said
        assert route(SELF) is router

        with pytest.raises(PolicyViolationError, match="needs a reason"):
            actors["ops"].lower_level("route/default", 0, reason="")
        lower_level(actors["ops"], "default", 0, "incident: wrong answers reported")
        _wait(lambda: (r := route(SELF)) is not None and r.level == 0)
        assert route.current(SELF).before(None).target == "reference"  # type: ignore[union-attr]

        shown = _cli(env, "route", "show", "default")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith(f"route default: level 0 on {version} (set by event #")
        history = [line for line in lines if "[route/default]" in line]
        assert [h.split("] ")[1].split(" ")[0] for h in history] == ["proposed", "approved", "lowered"]
        assert "incident: wrong answers reported" in history[-1]
        assert _cli(env, "route", "show").stdout.splitlines() == [lines[0]]

        # the thresholds are the governance policy's: with 600 labels per level step, level 3 needs 2400
        # and its error bound: 0.9 - 0.03 bounds the error by 0.13, above a maximum of 0.1
        rules = ["--level-corpus", "600", "--level-max-error", "0.1", "--level-confidence", "0.95"]
        done = _cli(env, "governance", "policy", *rules, "--actor", "admin", "--reason", "pilot")
        assert done.returncode == 0, done.stderr
        done = _cli(env, "route", "level", "propose", "--route", "default", "--level", "3", "--actor", "ops")
        assert done.returncode == 1 and "bounded by 0.1; the evidence bounds it by 0.13" in done.stderr, done.stderr
        done = _cli(env, "governance", "policy", "--level-max-error", "0.15", "--actor", "admin", "--reason", "pilot")
        assert done.returncode == 0, done.stderr
        done = _cli(env, "route", "level", "propose", "--route", "default", "--level", "3", "--actor", "ops")
        assert done.returncode == 0, done.stderr
        assert "pending: level 3" in _cli(env, "route", "show", "default").stdout
    finally:
        route.close()


def test_a_policy_reading_its_own_gain_probe_registers_it_as_a_route_probe(
    governed: tuple[Settings, dict[str, str], dict[str, Governance]],
) -> None:
    settings, _, actors = governed
    store = ArtifactStore(settings.artifacts_dir)
    probe = _probe_trained().probe
    gain = replace(probe, trained_on={"label": GAIN_LABEL, "route": "default", "traces": 12})
    gain_sha, plain_sha = store_probe(store, gain), store_probe(store, probe)
    gates = (LevelGate(1, 0.2, prompt_gate=0.9, token_gate=0.7, evidence=_evidence(2400, 0.95, 0.2)),)
    # a stored probe that is no gain probe and no registered risk probe: refused, as before
    with pytest.raises(GovernanceError, match="no registered risk/<family> version"):
        register_route(actors["ops"], store, RoutePolicy("default", None, plain_sha, gates), "default")
    version = register_route(actors["ops"], store, RoutePolicy("default", None, gain_sha, gates), "default")
    registry = actors["ops"].state().registry
    entry = registry.version("route/default", version)
    assert entry["operator_params"]["probe_version"] == f"risk/fam-route@{gain_sha[:12]}"
    probe_entry = registry.version("risk/fam-route", f"risk/fam-route@{gain_sha[:12]}")
    assert probe_entry["artifact_sha256"] == gain_sha and probe_entry["operator"] == "route-train"
    assert probe_entry["operator_params"]["label"] == GAIN_LABEL
    assert registry.models["risk/fam-route"]["production"] is None  # never served as the family's risk score
    # registered once: the same policy again is the same version, the probe not registered twice
    assert register_route(actors["ops"], store, RoutePolicy("default", None, gain_sha, gates), "default") == version
    assert len(actors["ops"].state().registry.models["risk/fam-route"]["versions"]) == 1
