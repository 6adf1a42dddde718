"""End to end, every part real: the production version serves suite traffic and then a new task family through the
inference service; the processors worker (``evostream process``) turns its steps and completions into drift windows
and fires on the new family; the evolution consumer reads that DriftReport, runs one cycle on the traffic the log
holds, and proposes a candidate that passes validation and lands in staging; ``evostream audit`` shows each step.

The production version gets a name of its own in this test (the embedded weights registered again under a fresh
version id), so the only drift that can start its cycle is the one this test's traffic raised."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest

from evostream.consumers.evolution.cycle import CycleConfig
from evostream.consumers.evolution.distill import DistillConfig
from evostream.consumers.evolution.recipe import Recipe
from evostream.consumers.evolution.service import EvolutionConsumer
from evostream.core.artifacts import ArtifactStore
from evostream.models.default_model import MODEL_ID
from evostream.models.suite.tasks import make_split
from evostream.producers.embedding import PromptEmbedder
from evostream.schemas.catalog import DRIFT
from tests.consumers.evolution.test_evolve import cli, cycles_until_the_first, settings_of
from tests.stream_processors.harness import Worker, read, serve

pytestmark = pytest.mark.integration

NEW_FAMILY = [
    f"please {verb} the word {w} into french"
    for verb in ("translate", "turn")
    for w in (
        "house",
        "river",
        "light",
        "stone",
        "green",
        "table",
        "music",
        "paper",
        "cloud",
        "bread",
        "horse",
        "glass",
        "night",
        "apple",
        "chair",
        "water",
        "dream",
        "smile",
        "train",
        "storm",
        "ocean",
        "forest",
        "garden",
        "window",
    )
]


def own_production_version(env: dict[str, str], kafka: str) -> str:
    """Genesis, then the embedded weights registered, validated, approved and promoted again as a fresh version."""
    from evostream.consumers.governance.log import GovernanceLog
    from evostream.consumers.governance.service import load_actor
    from evostream.views.governance import checkpoints_path
    from evostream.wiring.governed import ensure_genesis

    settings = settings_of(env)
    genesis = ensure_genesis(settings, kafka, lambda _: None)
    admin = load_actor(
        GovernanceLog(kafka, topic=settings.governance_topic),
        settings.governance_dir / "keys",
        settings.governance_actor,
        checkpoints=checkpoints_path(settings),
    )
    known = admin.state().registry.version(MODEL_ID, genesis)
    version = f"{MODEL_ID}@e2e-{uuid.uuid4().hex[:8]}"
    admin.register(
        MODEL_ID,
        version,
        artifact_uri=known["artifact_uri"],
        artifact_sha256=known["artifact_sha256"],
        metrics=known["metrics"],
        reason="end-to-end test: the embedded model under a version of its own",
    )
    admin.validated(MODEL_ID, version, True, known["validation"]["gates"], reason="the genesis validation, same bytes")
    admin.set_policy({"four_eyes": False}, reason="end-to-end test: one operator registers and approves")
    admin.approve(MODEL_ID, version, "production", reason="end-to-end test")
    admin.promote(MODEL_ID, version, stage="production", reason="end-to-end test")
    return version


def test_drift_on_a_new_task_family_runs_a_cycle_whose_candidate_reaches_staging(kafka: str, tmp_path: Path) -> None:
    from evostream.cli.evolution import evolution_actor, risk_rate

    env = {
        "EVOSTREAM_GOVERNANCE_DIR": str(tmp_path / "gov"),
        "EVOSTREAM_GOVERNANCE_TOPIC": f"test-e2e-{uuid.uuid4().hex[:8]}",
        "EVOSTREAM_ARTIFACTS_DIR": str(tmp_path / "a"),
        "EVOSTREAM_EVOLUTION_DIR": str(tmp_path / "evo"),
        "EVOSTREAM_BOOTSTRAP_SERVERS": kafka,
        "HF_HUB_OFFLINE": "1",
    }
    production = own_production_version(env, kafka)
    settings = settings_of(env)
    said: list[str] = []
    # no distillation steps: a few AdamW steps move the parent's fragile answers to the new family's prompts, and
    # exact agreement on them then lands on either side of its 0.9 gate (0.86 in one run, above 0.9 in another)
    cfg = CycleConfig(
        recipes=(Recipe(keep_ffn=0.99),), distill=DistillConfig(steps=0), held_out_per_task=4, speed_reps=1
    )
    evo = EvolutionConsumer(
        kafka,
        evolution_actor(settings, kafka),
        MODEL_ID,
        ArtifactStore(settings.artifacts_dir),
        settings.evolution_dir,
        cfg,
        risk_rate,
        said.append,
    )
    parent, _ = evo.parent()
    assert parent.version == production

    # traffic: every suite task (the drift reference and a quiet window), then the new family (the second window)
    suite = [e.prompt for e in make_split("drift-e2e", 24)]
    random.Random(1).shuffle(suite)
    worker = Worker(kafka, tmp_path / "worker")
    (tmp_path / "worker").mkdir()
    worker.start()
    try:
        replies = serve(kafka, parent, suite + NEW_FAMILY, max_new_tokens=16, embedder=PromptEmbedder())
        assert [r["model_version"] for r in replies] == [production] * 192
        reports = read(
            kafka,
            DRIFT,
            "DriftReport",
            lambda got: sum(r["model_version"] == production for r in got) >= 2,
            timeout_s=120,
        )
    finally:
        worker.stop()
    mine = [r for r in reports if r["model_version"] == production]
    assert [r["fired"] for r in mine] == [False, True], [r["statistics"] for r in mine]

    outcomes = cycles_until_the_first(evo)
    assert [(o.trigger, o.skipped, o.passed) for o in outcomes] == [(f"drift:{production}", False, True)], [
        (c.recipe.name, c.validation.gates) for o in outcomes if o.result for c in o.result.candidates
    ]
    # the cycle learned from this traffic: all 192 answers of the production version, the new family's among them
    assert f"log: 192 answered requests of {production}" in "\n".join(said), said
    candidate = outcomes[0].version
    assert candidate is not None

    shown = json.loads(cli(env, "registry", "show", candidate).stdout)
    assert (shown["stage"], shown["parent"], shown["operator"]) == ("staging", production, "evolve")
    assert shown["operator_params"]["trigger"] == f"drift:{production}"
    assert shown["metrics"]["vs_parent"]["parameters"] > 1.0 and shown["validation"]["passed"] is True
    audit = cli(env, "audit").stdout
    expected = [
        f"promoted {production} to production",
        f"registered {candidate} (parent {production}",
        f"evolution cycle (drift:{production}): ffn0.99",
        f"validation of {candidate}: PASS",
        f"promoted {candidate} to staging",
        f"proposed {candidate}",
    ]
    at = [audit.find(line) for line in expected]
    assert -1 not in at and at == sorted(at), (expected, audit)  # each step there, in the order it happened
    assert cli(env, "registry").stdout.count(f"production {production}") == 1  # a proposal does not serve by itself
