"""The sandbox measures a candidate against its parent and judges it: the parent itself, reloaded from its stored
artifact, passes every gate with full agreement; a candidate pruned without recovery is refused, gate by gate."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import T5ForConditionalGeneration

from evostream.consumers.evolution.measure import Speed, ms_per_token, parameter_count, weight_bytes
from evostream.consumers.evolution.sandbox import Gates, validate
from evostream.core.artifacts import ArtifactStore
from evostream.core.errors import EvolutionError
from evostream.models.default_model import WEIGHTS_DIR
from evostream.models.loading import load_model
from evostream.models.suite.evaluate import eval_set

HELD_OUT = eval_set(per_task=5)
LOGGED = ["reverse: kitten", "sort: banana", "add: 7+35", "upper: lamp", "date: 1999-12-31", "lookup: c; a=1 b=2 c=3"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[ArtifactStore, str]:
    store = ArtifactStore(tmp_path_factory.mktemp("store"))
    return store, store.put_dir(WEIGHTS_DIR).sha256


def test_the_parent_against_itself_from_its_stored_artifact_passes_every_gate(
    stored: tuple[ArtifactStore, str],
) -> None:
    store, sha = stored
    parent = load_model("default", device="cpu")
    path = store.open(sha)  # re-hashed: the candidate measured is the stored one
    cand = load_model(str(path), device="cpu")
    v = validate(
        (parent.model, parent.tokenizer, WEIGHTS_DIR),
        (cand.model, cand.tokenizer, path),
        HELD_OUT,
        LOGGED,
        speed_reps=2,
        new_tokens=4,
    )
    assert v.passed, v.gates
    assert v.agreement == 1.0 and v.replayed == len(LOGGED)
    assert v.parent.accuracy == v.candidate.accuracy and v.parent.accuracy["mean"] == 1.0
    assert set(v.gates) == {"max_task_drop", "mean_drop", "agreement", "loads_from_artifact"}
    assert v.parent.parameters == v.candidate.parameters == 1_427_840
    assert v.parent.bytes == v.candidate.bytes == (WEIGHTS_DIR / "model.safetensors").stat().st_size
    assert len(v.candidate.speed.runs) == 2 and min(v.candidate.speed.runs) > 0
    payload = v.payload()
    assert payload["max_task_drop"] == {"value": 0.0, "limit": 0.02, "passed": True}
    assert payload["measured"]["candidate"]["parameters"] == 1_427_840


def test_a_candidate_pruned_without_recovery_is_refused(tmp_path: Path) -> None:
    parent = load_model("default", device="cpu")
    broken = copy.deepcopy(parent.model)
    with torch.no_grad():  # half of every decoder FFN silenced: what pruning does before distillation
        for block in broken.decoder.block:
            block.layer[-1].DenseReluDense.wo.weight[:, ::2] = 0
    broken.save_pretrained(tmp_path / "c")
    cand = T5ForConditionalGeneration.from_pretrained(tmp_path / "c").eval()
    v = validate(
        (parent.model, parent.tokenizer, WEIGHTS_DIR),
        (cand, parent.tokenizer, tmp_path / "c"),
        HELD_OUT,
        LOGGED,
        gates=Gates(max_task_drop=0.02, max_mean_drop=0.01, min_agreement=0.9),
        speed_reps=1,
        new_tokens=2,
    )
    assert not v.passed
    assert not v.gates["max_task_drop"]["passed"] and v.gates["max_task_drop"]["value"] > 0.02
    assert not v.gates["mean_drop"]["passed"]
    assert v.candidate.accuracy["mean"] < v.parent.accuracy["mean"]


def test_measures_are_counted_not_estimated(tmp_path: Path) -> None:
    lm = load_model("default", device="cpu")
    assert parameter_count(lm.model) == sum(p.numel() for p in lm.model.parameters())
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_text("{}")
    assert weight_bytes(tmp_path) == 1000  # only weight files count
    with pytest.raises(EvolutionError, match="no weight file"):
        weight_bytes(tmp_path / "..")
    # a model six times deeper is slower per token, measured side by side
    config = copy.deepcopy(lm.model.config)
    config.num_layers *= 6  # T5 sizes its decoder's KV cache by num_layers: both grow
    config.num_decoder_layers *= 6
    deep = T5ForConditionalGeneration(config).eval()
    speed = ms_per_token({"deep": (deep, lm.tokenizer), "base": (lm.model, lm.tokenizer)}, LOGGED, 6, reps=3)
    assert all(isinstance(s, Speed) and len(s.runs) == 3 for s in speed.values())
    assert speed["deep"].median > 1.5 * speed["base"].median, speed
    with pytest.raises(EvolutionError):
        ms_per_token({"base": (lm.model, lm.tokenizer)}, [], 4)
