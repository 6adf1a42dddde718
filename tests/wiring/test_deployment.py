"""What ``serve --governed`` serves during progressive delivery, read from the governance log: production, a running
rollout's candidate at its weight with its plan's shadow share, or the staging version under the policy's
``shadow_share``; and on the real broker, an inference service following a rollout started, stepped, aborted and
completed through Governance: each weight applies at the next batch, an abort sends everything back to the incumbent
without loading a model, a completion makes the loaded candidate production."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.replay import ADMIN
from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import Governance, init
from evostream.core.artifacts import ArtifactStore
from evostream.core.clock import now_us
from evostream.core.settings import load_settings
from evostream.models.default_model import WEIGHTS_DIR
from evostream.models.loading import LoadedModel, load_model
from evostream.producers.client import InferenceClient
from evostream.producers.deployment import Deployment
from evostream.producers.service import InferenceService, ServeOptions
from evostream.rollout.plan import RolloutPlan
from evostream.rollout.split import assign
from evostream.schemas.catalog import SHADOW
from evostream.views.governance import anchor_file, checkpoints_path
from evostream.wiring.deployment import GovernedDeployment, Wanted, wanted
from tests.consumers.governance.test_rollouts import M, abort, complete, governed, start, state, step
from tests.producers.replies import collect, read

PROMPTS = ["upper: ab", "sort: cab", "reverse: abcdef", "add: 12+34", "upper: xyz", "copy: hello"]
GATES = {"accuracy:mean": {"value": 1.0, "threshold": 0.9, "passed": True}}
PLAN = RolloutPlan(steps=(20, 100)).to_json()  # the plan of tests.consumers.governance.test_rollouts


# --- what the log says is served (pure) ----------------------------------------------------------------------------
def test_a_rollout_serves_its_candidate_at_each_step_and_nothing_after_it_ends() -> None:
    c = governed()  # v1 in production, v2 in staging and approved
    assert wanted(state(c), M) == Wanted("v1")  # the policy's shadow_share is 0: no staging shadow
    start(c)
    assert wanted(state(c), M) == Wanted("v1", "v2", 0, PLAN["shadow_share"], "ro-1")  # the shadow phase
    step(c, 0)
    assert wanted(state(c), M) == Wanted("v1", "v2", 20, PLAN["shadow_share"], "ro-1")
    step(c, 1)
    assert wanted(state(c), M) == Wanted("v1", "v2", 100, 0.0, "ro-1")  # nothing left to mirror
    complete(c)
    assert wanted(state(c), M) == Wanted("v2")


def test_an_aborted_rollout_serves_the_incumbent_alone() -> None:
    c = governed()
    start(c)
    step(c, 0)
    abort(c)
    assert wanted(state(c), M) == Wanted("v1")


def test_outside_a_rollout_the_staging_version_is_shadowed_at_the_policys_share() -> None:
    c = governed()
    c.append("PolicyChanged", ADMIN, {"policy": {**state(c).policy, "shadow_share": 0.25}})
    assert wanted(state(c), M) == Wanted("v1", "v2", 0, 0.25, None)
    start(c)  # a rollout's own plan decides while it runs
    assert wanted(state(c), M) == Wanted("v1", "v2", 0, PLAN["shadow_share"], "ro-1")
    assert wanted(state(c), "no-such-model") is None


# --- a service following a rollout on the real broker --------------------------------------------------------------
def perturbed_copy(dst: Path) -> Path:
    """The default model with noise on its weights (its answers differ), saved at ``dst``."""
    lm = load_model(str(WEIGHTS_DIR), device="cpu")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if p.dim() == 2 and "shared" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.7 * p.std())
    lm.model.save_pretrained(dst)
    lm.tokenizer.save_pretrained(dst)
    return dst


def until(what: str, ok: Callable[[], bool], source: GovernedDeployment, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert source.error is None, source.error
        assert time.monotonic() < deadline, f"{what}: still {source.deployment().describe()}"
        time.sleep(0.05)


def replies(kafka: str, ids: list[str]) -> list[dict[str, Any]]:
    with InferenceClient(kafka) as client:
        sent = [
            client.submit(PROMPTS[i % len(PROMPTS)], max_new_tokens=12, request_id=rid) for i, rid in enumerate(ids)
        ]
        return [r.result(120) for r in sent]


def test_a_service_follows_a_rollout_through_governance(kafka: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    model = f"t5-rollout-{run}"
    settings = load_settings(
        bootstrap_servers=kafka,
        governance_dir=tmp_path / "gov",
        artifacts_dir=tmp_path / "art",
        governance_topic=f"test-deployment-{run}",
    )
    store = ArtifactStore(settings.artifacts_dir)
    r1, r2 = store.put_dir(WEIGHTS_DIR), store.put_dir(perturbed_copy(tmp_path / "v2"))
    v1, v2 = f"{model}@1", f"{model}@2"
    glog = GovernanceLog(kafka, topic=settings.governance_topic)
    keys = settings.governance_dir / "keys"
    admin, _ = init(glog, keys, "admin", checkpoints=checkpoints_path(settings), anchor=anchor_file(settings))
    alice_key, ctl_key = ActorKey.generate(), ActorKey.generate()
    admin.enroll("alice", alice_key.public_hex, alice_key.key_id, ["approver"], reason="test approver")
    admin.enroll("ctl", ctl_key.public_hex, ctl_key.key_id, ["controller"], reason="the rollout controller")
    alice, ctl = Governance(glog, alice_key, "alice"), Governance(glog, ctl_key, "ctl")
    for v, ref in ((v1, r1), (v2, r2)):
        admin.register(model, v, artifact_uri=ref.uri, artifact_sha256=ref.sha256, metrics={"parameters": 1})
        admin.validated(model, v, True, GATES)
        alice.approve(model, v, reason="looks fine")
    admin.promote(model, v1, stage="production", reason="first version")

    loads: Counter[str] = Counter()

    def load(path: Path, version: str) -> LoadedModel:
        loads[version] += 1
        return load_model(str(path), device="cpu")

    source = GovernedDeployment(kafka, settings, model, poll_s=0.1, load=load)
    service = InferenceService(
        kafka, source.current().loaded, None, ServeOptions(max_batch=8, max_wait_ms=20), deployments=source
    )
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()

    def fresh(what: str) -> list[str]:  # a request id answered before would find its old answer
        return [f"{what}-{run}-{i}" for i in range(len(PROMPTS))]

    plan = {"steps": [50, 100], "shadow_share": 1.0, "step_s": 1, "min_samples": 1, "shadow_s": 0}
    try:
        assert {r["model_version"] for r in replies(kafka, fresh("first"))} == {v1}

        # the shadow phase: production answers, the candidate answers every request in the shadow
        rid = admin.start_rollout(model, v2, plan, {}, reason="shadow, then a canary").payload["rollout_id"]
        until("the shadow phase", lambda: source.deployment().candidate is not None, source)
        assert (source.deployment().weight, source.deployment().shadow_share) == (0, 1.0)
        since, ids = now_us(), fresh("shadow")
        assert {(r["model_version"], r["role"]) for r in replies(kafka, ids)} == {(v1, "ANSWER")}
        shadows = [c for c in collect(kafka, set(ids), since) if c["role"] == "SHADOW"]
        assert sorted(c["request_id"] for c in shadows) == sorted(ids)
        assert {(c["model_version"], c["rollout_id"]) for c in shadows} == {(v2, rid)}
        assert len(read(kafka, SHADOW, "ShadowComparison", set(ids), since, len(ids))) >= len(ids)

        # step 0, 50%: from the next batch, the split's half is the candidate's (the rest is mirrored)
        ctl.step_rollout(model, rid, 0, {"verdict": "ADVANCE"}, reason="shadow window clean")
        until("step 0", lambda: source.deployment().weight == 50, source)
        ids = [f"canary-{run}-{i}" for i in range(2 * len(PROMPTS))]
        arms = {i: assign(i, rid, 50, 1.0) for i in ids}
        for r in replies(kafka, ids):
            mine = arms[r["request_id"]] == "CANDIDATE"
            assert (r["model_version"], r["rollout_id"]) == ((v2, rid) if mine else (v1, None))

        # an automatic abort: everything back to the incumbent at the next batch, no model loaded
        swaps, loaded_before = service.swaps, Counter(loads)
        ctl.abort_rollout(model, rid, {"verdict": "ABORT"}, automatic=True, reason="a gate broke")
        until("the abort", lambda: source.deployment().candidate is None, source)
        assert {(r["model_version"], r["rollout_id"]) for r in replies(kafka, fresh("aborted"))} == {(v1, None)}
        assert service.candidate is None and service.swaps == swaps and loads == loaded_before

        # a second rollout through to completion: the loaded candidate becomes production, its generator kept
        alice.approve(model, v2, reason="fixed, try again")
        rid2 = admin.start_rollout(model, v2, plan, {}, reason="again").payload["rollout_id"]
        ctl.step_rollout(model, rid2, 0, {"verdict": "ADVANCE"}, reason="clean")
        ctl.step_rollout(model, rid2, 1, {"verdict": "ADVANCE"}, reason="clean")
        until("step 1", lambda: source.deployment().weight == 100, source)
        assert {(r["model_version"], r["rollout_id"]) for r in replies(kafka, fresh("full"))} == {(v2, rid2)}
        candidate_generator = service._candidate.generator if service._candidate is not None else None
        ctl.complete_rollout(model, rid2, {"verdict": "ADVANCE"}, reason="clean at 100%")
        until("the completion", lambda: source.deployment() == Deployment(source.current()), source)
        assert source.current().version == v2
        assert {(r["model_version"], r["rollout_id"]) for r in replies(kafka, fresh("done"))} == {(v2, None)}
        assert service.generator is candidate_generator and service.candidate is None
    finally:
        service.stop_event.set()
        thread.join(60)
        source.close()
        glog.close()
    assert loads == Counter({v1: 1, v2: 2})  # v1 at start; v2 once per rollout, not again at completion
