"""Candidate versions of the embedded default model for rollout benchmarks and tests: a healthy one (its weights
nudged by noise too small to change an answer, so it is a new version with the incumbent's behaviour) and a faulted
one (noise large enough that most answers go wrong: the injected regression a canary must catch).

Each is stored in the artifact store and registered, validated and approved for production in governance the way a
real candidate is. The validation recorded is a smoke test (the version loads and answers the held-out prompts
without an error), not the suite's accuracy gate: the suite accuracy is measured and kept in the registration's
metrics, but a team that canaries its releases gates them on real traffic, and that is how a regression reaches a
rollout here. What is measured is the canary, not the validation."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEALTHY_NOISE = 0.02
"""Relative noise on every weight matrix that leaves the suite's answers as they were."""
FAULTED_NOISE = 0.7
"""Relative noise on every weight matrix that breaks most answers on the suite."""


@dataclass(frozen=True)
class Variant:
    version: str
    path: Path
    accuracy: dict[str, float]


def build(dst: Path, noise: float, seed: int = 0) -> Variant:
    """A copy of the default model at ``dst`` with Gaussian noise of ``noise`` times each weight matrix's standard
    deviation added (embeddings untouched), its version named as the loader names it, and its suite accuracy."""
    import torch

    from evostream.models.default_model import MODEL_ID, WEIGHTS_DIR
    from evostream.models.loading import load_model, weights_digest
    from evostream.models.suite.evaluate import eval_set, evaluate

    lm = load_model(str(WEIGHTS_DIR), device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if p.dim() == 2 and "shared" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * noise * p.std())
    if dst.exists():
        shutil.rmtree(dst)
    lm.model.save_pretrained(dst)
    lm.tokenizer.save_pretrained(dst)
    for extra in ("training.json",):
        if (WEIGHTS_DIR / extra).exists():
            shutil.copy(WEIGHTS_DIR / extra, dst / extra)
    accuracy = evaluate(lm.model, lm.tokenizer, eval_set(20))
    return Variant(f"{MODEL_ID}@{weights_digest(dst)}", dst, accuracy)


def register(gov: Any, approver: Any, store: Any, variant: Variant, model: str) -> None:
    """Store ``variant``, register it (its suite accuracy in the metrics), record its smoke validation and have
    ``approver`` (another actor) approve it for production."""
    ref = store.put_dir(variant.path)
    gov.register(
        model,
        variant.version,
        artifact_uri=ref.uri,
        artifact_sha256=ref.sha256,
        metrics={"task_accuracy": variant.accuracy},
        reason="bench: a rollout candidate",
    )
    answered = bool(variant.accuracy)  # build() loaded it and answered every held-out prompt without an error
    gates = {"smoke:loads_and_answers": {"value": 1.0 if answered else 0.0, "threshold": 1.0, "passed": answered}}
    gov.validated(model, variant.version, answered, gates, reason="smoke test: it loads and answers")
    approver.approve(model, variant.version, "production", reason="bench: approved for a rollout")
