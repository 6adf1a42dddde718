"""The embedded default model: shipped weights load offline and pass the held-out task suite."""

from __future__ import annotations

import json

import pytest

from producers.default_model import MODEL_ID, WEIGHTS_DIR
from producers.loading import LoadedModel, load_model
from producers.suite import TASKS
from producers.suite.evaluate import evaluate, predict

THRESHOLD = 0.90


@pytest.fixture(scope="module")
def default() -> LoadedModel:
    return load_model("default", device="cpu")


@pytest.fixture(scope="module")
def accuracy(default: LoadedModel) -> dict[str, float]:
    return evaluate(default.model, default.tokenizer)


def test_default_model_is_shipped_as_safetensors_and_loads_offline(default: LoadedModel) -> None:
    assert (WEIGHTS_DIR / "model.safetensors").exists()
    assert not list(WEIGHTS_DIR.glob("*.bin"))
    assert default.is_seq2seq
    assert default.version.startswith(f"{MODEL_ID}@")
    report = json.loads((WEIGHTS_DIR / "training.json").read_text())
    assert report["parameters"] == default.parameter_count()


@pytest.mark.parametrize("task", [t.name for t in TASKS])
def test_held_out_accuracy_is_at_least_90_percent(task: str, accuracy: dict[str, float]) -> None:
    assert accuracy[task] >= THRESHOLD, f"{task}: {accuracy[task]:.3f}"


def test_the_readme_example(default: LoadedModel) -> None:
    assert predict(default.model, default.tokenizer, ["reverse: hello"]) == ["olleh"]
