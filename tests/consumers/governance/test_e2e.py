"""Governance end to end on the real broker: which model serves is decided only by events on the governance log.

Register v1 and promote it; register v2, have it approved and promote it: the running inference service answers with
v2; roll back: the next answers carry v1 again and equal v1's earlier outputs on the same prompts."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from evostream.consumers.governance.keys import ActorKey
from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.projection import replay
from evostream.consumers.governance.service import Governance, init
from evostream.core.artifacts import ArtifactStore
from evostream.core.settings import load_settings
from evostream.models.loading import LoadedModel, load_model
from evostream.producers.client import InferenceClient
from evostream.producers.service import InferenceService, ServeOptions
from evostream.views.governance import anchor_file, checkpoints_path
from evostream.wiring.governed import GovernedModel
from tests.producers.models import tiny

PROMPTS = ["reverse: hello", "sort: dcba", "upper: abc", "add: 2+2"]
GATES = {"accuracy:mean": {"value": 1.0, "threshold": 0.9, "passed": True}}


def saved(tmp: Path, name: str, seed: int) -> Path:
    lm = tiny("gpt2", seed=seed, varied=True)
    out = tmp / name
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    return out


def ask(client: InferenceClient, prompts: list[str]) -> list[dict[str, Any]]:
    sent = [client.publish(p, max_new_tokens=8) for p in prompts]
    return [client.await_reply(s, 60) for s in sent]


def wait_for(source: GovernedModel, version: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while source.current().version != version:
        assert source.error is None, source.error
        assert time.monotonic() < deadline, f"still serving {source.current().version}, not {version}"
        time.sleep(0.1)


def test_promotion_and_rollback_change_which_model_serves(kafka: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    model = f"tiny-gpt2-{run}"
    settings = load_settings(
        bootstrap_servers=kafka,
        governance_dir=tmp_path / "gov",
        artifacts_dir=tmp_path / "art",
        governance_topic=f"test-governance-e2e-{run}",
    )
    store = ArtifactStore(settings.artifacts_dir)
    r1, r2 = store.put_dir(saved(tmp_path, "v1", seed=1)), store.put_dir(saved(tmp_path, "v2", seed=2))
    assert r1.sha256 != r2.sha256
    v1, v2 = f"{model}@1", f"{model}@2"

    glog = GovernanceLog(kafka, topic=settings.governance_topic)
    admin, _ = init(
        glog,
        settings.governance_dir / "keys",
        "admin",
        checkpoints=checkpoints_path(settings),
        anchor=anchor_file(settings),
    )
    alice_key = ActorKey.generate()
    admin.enroll("alice", alice_key.public_hex, alice_key.key_id, ["approver"], reason="test approver")
    alice = Governance(glog, alice_key, "alice")
    admin.register(model, v1, artifact_uri=r1.uri, artifact_sha256=r1.sha256, metrics={"parameters": 1})
    admin.validated(model, v1, True, GATES)
    alice.approve(model, v1, reason="looks fine")
    admin.promote(model, v1, stage="production", reason="first version")

    loads: Counter[str] = Counter()

    def load(path: Path, version: str) -> LoadedModel:
        loads[version] += 1
        return load_model(str(path), device="cpu")

    source = GovernedModel(kafka, settings, model, poll_s=0.2, load=load)
    service = InferenceService(
        kafka, source.current().loaded, None, ServeOptions(max_batch=4, max_wait_ms=20), models=source
    )
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        client = InferenceClient(kafka, tenant=f"e2e-{run}")
        first = ask(client, PROMPTS)
        assert [r["model_version"] for r in first] == [v1] * len(PROMPTS)
        assert all(r["error"] is None for r in first)

        admin.register(
            model,
            v2,
            artifact_uri=r2.uri,
            artifact_sha256=r2.sha256,
            parent=v1,
            operator="test",
            metrics={"parameters": 1},
        )
        admin.validated(model, v2, True, GATES)
        alice.approve(model, v2)
        admin.promote(model, v2, stage="production", reason="better")
        wait_for(source, v2)
        second = ask(client, PROMPTS)
        assert [r["model_version"] for r in second] == [v2] * len(PROMPTS)
        assert [r["output_text"] for r in second] != [r["output_text"] for r in first]  # really another model

        back = admin.rollback(model, "previous", reason="v2 misbehaves")
        assert (back.payload["version"], back.payload["from_version"]) == (v1, v2)
        wait_for(source, v1)
        third = ask(client, PROMPTS)
        assert [r["model_version"] for r in third] == [v1] * len(PROMPTS)
        assert [r["output_text"] for r in third] == [r["output_text"] for r in first]  # v1's outputs, exactly
        # every step event names the version that produced it
        traces = {r["trace_id"]: r for r in third + second}
        steps = client.trace_steps(set(traces), sum(r["token_count"] for r in traces.values()), 60)
        assert Counter((s["trace_id"], s["model_version"]) for s in steps) == Counter(
            {(t, r["model_version"]): r["token_count"] for t, r in traces.items()}
        )
    finally:
        service.stop_event.set()
        thread.join(60)
        source.close()
    assert loads == Counter({v1: 2, v2: 1})  # loaded at start, for v2, and again on rollback
    registry, findings = replay(glog.read())
    glog.close()
    assert findings == []
    assert source.registry.to_json() == registry.to_json()  # the live service's projection is the full replay's
    assert registry.production(model) == v1
    assert registry.version(model, v2)["stage"] == "archived"
    assert registry.lineage(model, v2) == [v2, v1]
