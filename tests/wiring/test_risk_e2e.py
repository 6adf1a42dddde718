"""The log learns, end to end on the real broker: the real inference service answers suite prompts, their outcomes
are labelled on evo.outcomes, ``evostream risk train`` fits and registers a probe that passes its held-out
validation, it is approved and promoted, the running processors (``evostream process``) swap to it between batches,
and the FINAL reports of later traces name its version."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path

from evostream.consumers.governance.log import GovernanceLog
from evostream.consumers.governance.service import init
from evostream.core.clock import now_us
from evostream.models.loading import load_model
from evostream.models.suite.tasks import make_split, stress_split
from evostream.schemas.catalog import RISK
from evostream.stream_processors.risk.outcomes import outcome
from evostream.wiring.feedback import publish_outcomes
from tests.stream_processors.harness import CLI, Worker, read, serve


def test_a_probe_trained_from_the_log_is_governed_and_judges_later_traces(kafka: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "EVOSTREAM_GOVERNANCE_TOPIC": f"test-governance-risk-{run}",
        "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / "gov"),
        "EVOSTREAM_ARTIFACTS_DIR": str(tmp_path / "art"),
        "EVOSTREAM_GOVERNANCE_ACTOR": "admin",
    }
    glog = GovernanceLog(kafka, topic=env["EVOSTREAM_GOVERNANCE_TOPIC"])
    admin, _ = init(glog, tmp_path / "gov" / "keys", "admin")
    admin.set_policy({"four_eyes": False}, reason="one operator trains the probe and approves it")
    worker = Worker(kafka, tmp_path)
    worker.env.update({k: v for k, v in env.items() if k.startswith("EVOSTREAM_")})
    worker.start()
    try:
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        time.sleep(1.0)
        lm = load_model("default")
        # stress prompts (mostly wrong) mixed with suite prompts (mostly right), in an order of their own, so the
        # newest quarter that validates the probe holds both
        mixed = stress_split(540, seed=f"risk-e2e-{run}") + make_split(f"risk-e2e-{run}", 10)
        examples = sorted(mixed, key=lambda e: hashlib.sha256(e.prompt.encode()).hexdigest())
        answers = serve(kafka, lm, [e.prompt for e in examples], max_new_tokens=16)
        labels = [
            outcome(
                a["trace_id"],
                a["model_version"],
                "RIGHT" if a["output_text"].strip() == e.answer else "WRONG",
                source="SUITE",
                actor="suite",
                recorded_at_us=now_us(),
                outcome_id=f"suite-{a['trace_id']}",
            )
            for e, a in zip(examples, answers, strict=True)
        ]
        publish_outcomes(kafka, labels)
        trained = subprocess.run(
            [*CLI, "risk", "train", "--since", since], env=env, capture_output=True, text=True, timeout=600
        )
        assert trained.returncode == 0, trained.stderr[-3000:]
        version = trained.stdout.strip().splitlines()[-1]
        model = f"risk/{lm.version.split('@')[0]}"
        assert version.startswith(model + "@"), trained.stdout
        assert "validation passed" in trained.stderr, trained.stderr[-2000:]
        reg = admin.state().registry
        entry = reg.version(model, version)
        assert entry["stage"] == "staging" and entry["validation"] and entry["validation"]["passed"]
        assert entry["operator_params"]["labels"] == len(labels)  # its lineage: the labels it learned from
        assert entry["metrics"]["held_out_auroc"] >= entry["metrics"]["held_out_auroc_mean_entropy"]

        admin.approve(model, version, "production", reason="held-out AUROC above entropy")
        admin.promote(model, version, stage="production", reason="the log learns")
        deadline = time.monotonic() + 60
        while f"production probe is {version}".encode() not in worker.log.read_bytes():
            assert time.monotonic() < deadline, worker.log.read_text()[-3000:]
            time.sleep(0.2)

        later = serve(kafka, lm, [e.prompt for e in make_split(f"risk-e2e-later-{run}", 2)], max_new_tokens=16)
        ids = {a["trace_id"] for a in later}
        reports = read(
            kafka,
            RISK,
            "RiskReport",
            lambda rs: {r["trace_id"] for r in rs if r["trace_id"] in ids and r["stage"] == "FINAL"} == ids,
            timeout_s=120,
        )
        finals = [r for r in reports if r["trace_id"] in ids and r["stage"] == "FINAL"]
        assert {r["trace_id"] for r in finals} == ids, worker.log.read_text()[-3000:]
        assert {r["policy"] for r in finals} == {version}
        assert all(str(r["reason"]).startswith("learned probe: P(wrong)") for r in finals)

        # history through a policy: the same range twice gives the same bytes; the two policies disagree
        def rescore(policy: str) -> str:
            cmd = [*CLI, "rescore", "--policy", policy, "--since", since]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            return done.stdout

        hand, again, learned = rescore("hand-set"), rescore("hand-set"), rescore(version)
        assert hand == again
        assert hand.splitlines()[0].startswith("policy hand-set: ")
        assert learned.splitlines()[0].startswith(f"policy {version}: ")
        replayed = len(examples) + len(later)
        assert f"{replayed} traces replayed" in hand and f"{replayed} traces replayed" in learned, hand + learned
        assert "labelled" in learned  # the suite's outcomes score both
        assert hand.splitlines()[1:] != learned.splitlines()[1:]
    finally:
        worker.stop()
        glog.close()
