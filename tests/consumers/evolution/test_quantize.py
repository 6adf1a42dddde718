"""int8 weights: the artifact really is smaller, load_model serves it with the in-memory int8 model's outputs, the
answers stay those of fp32, and the input model is never changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from evostream.consumers.evolution.operators.quantize import (
    Int8Linear,
    int8_marker,
    int8_modules,
    quantize_int8,
    save_int8,
)
from evostream.core.artifacts import ArtifactStore
from evostream.core.errors import EvolutionError
from evostream.models.loading import INT8_MARKER, INT8_WEIGHTS, LoadedModel, ModelLoadError, load_model
from evostream.models.suite.evaluate import eval_set, evaluate
from tests.producers.models import tiny

PROMPTS = ["reverse: abcde", "add: 12+30", "date: 2001-02-03", "sort: zyx"]


def logits(model: PreTrainedModel, lm: LoadedModel) -> torch.Tensor:
    """Logits of a fixed padded batch (seq2seq: for a fixed decoder prefix)."""
    enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    extra = {"decoder_input_ids": torch.tensor([[0, 5, 9, 14]] * len(PROMPTS))} if lm.is_seq2seq else {}
    with torch.no_grad():
        out: torch.Tensor = model(**enc, **extra).logits
    return out


def greedy(model: PreTrainedModel, lm: LoadedModel) -> torch.Tensor:
    lm.tokenizer.padding_side = "right" if lm.is_seq2seq else "left"
    enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out: torch.Tensor = model.generate(**enc, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    return out


def tensors(file: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(file), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def default() -> LoadedModel:
    return load_model("default", device="cpu")


@pytest.mark.parametrize("family", ["t5", "gpt2", "llama"])
def test_reload_through_load_model_gives_the_int8_models_outputs(family: str, tmp_path: Path) -> None:
    lm = tiny(family, varied=True, seed=3)
    before = snapshot(lm.model)
    q = quantize_int8(lm.model)
    projections = [m for m in lm.model.modules() if isinstance(m, torch.nn.Linear | Conv1D)]
    tied_head = lm.model.get_output_embeddings().weight is lm.model.get_input_embeddings().weight
    assert len(int8_modules(q)) == len(projections) - int(tied_head)
    save_int8(q, tmp_path / "int8", lm.tokenizer)
    assert int8_marker(tmp_path / "int8") == {
        "method": "weight_only",
        "bits": 8,
        "weights": INT8_WEIGHTS,
        "scales": "float32, per output channel, symmetric",
        "modules": len(int8_modules(q)),
    }
    served = load_model(str(tmp_path / "int8"), device="cpu")
    assert type(served.model) is type(lm.model)
    assert not hasattr(served.model.config, INT8_MARKER)
    assert not int8_modules(served.model)
    torch.testing.assert_close(logits(served.model, lm), logits(q, lm), rtol=0, atol=0)
    assert torch.equal(greedy(served.model, lm), greedy(q, lm))
    # close to the float parent, not equal to it (the rounding is real; these random models amplify it: 2-10%)
    fp = logits(lm.model, lm)
    assert 0 < ((logits(q, lm) - fp).norm() / fp.norm()).item() < 0.15
    # the input model is untouched: same tensors, same module types
    after = snapshot(lm.model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not int8_modules(lm.model)


def test_the_artifact_is_four_times_smaller_for_the_projections(default: LoadedModel, tmp_path: Path) -> None:
    q = quantize_int8(default.model)
    default.model.save_pretrained(tmp_path / "fp32")
    save_int8(q, tmp_path / "int8", default.tokenizer)
    fp32, int8 = tensors(tmp_path / "fp32" / "model.safetensors"), tensors(tmp_path / "int8" / INT8_WEIGHTS)
    paths = int8_modules(q)
    assert len(paths) == 48  # 3+3 layers: (q, k, v, o) x self (+ cross in the decoder) + wi, wo; the head is tied
    fp32_bytes = sum(fp32[f"{p}.weight"].numel() * 4 for p in paths)
    int8_bytes = 0
    for p in paths:
        w, s = int8[f"{p}.weight"], int8[f"{p}.weight_scale"]
        assert w.dtype == torch.int8 and s.dtype == torch.float32
        assert w.shape == fp32[f"{p}.weight"].shape and s.shape == (w.shape[0], 1)
        assert torch.equal(w.abs().amax(dim=1), torch.full((w.shape[0],), 127, dtype=torch.int8))  # symmetric, full
        int8_bytes += w.numel() + s.numel() * 4
    assert fp32_bytes / int8_bytes > 3.8
    # the files: float embedding and norms kept, so the whole file shrinks a little less
    fp32_file = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    int8_file = (tmp_path / "int8" / INT8_WEIGHTS).stat().st_size
    assert fp32_file / int8_file > 3.3
    assert int8["shared.weight"].dtype == torch.float32 and "lm_head.weight" not in int8  # tied: stored once


def test_default_models_accuracy_stays(default: LoadedModel, tmp_path: Path) -> None:
    examples = list(eval_set(20))
    save_int8(quantize_int8(default.model), tmp_path / "int8", default.tokenizer)
    served = load_model(str(tmp_path / "int8"), device="cpu")
    base, int8 = (
        evaluate(default.model, default.tokenizer, examples),
        evaluate(served.model, served.tokenizer, examples),
    )
    assert base.keys() == int8.keys() and len(base) == 7  # six tasks and the mean
    assert base["mean"] > 0.9  # a test of closeness needs a parent that answers
    for task in base:
        assert int8[task] >= base[task] - 0.05, (task, base[task], int8[task])
    assert served.version.startswith(f"{tmp_path / 'int8'}@")  # versioned by the int8 file's digest


def test_dynamic_is_measured_not_saved(default: LoadedModel, tmp_path: Path) -> None:
    dynamic = quantize_int8(default.model, "dynamic")
    kinds = {type(m).__module__ + "." + type(m).__name__ for m in dynamic.modules()}
    assert "torch.ao.nn.quantized.dynamic.modules.linear.Linear" in kinds
    assert type(dynamic.lm_head) is torch.nn.Linear  # tied to the embedding: left float
    torch.testing.assert_close(logits(dynamic, default), logits(default.model, default), atol=0.5, rtol=0.1)
    with pytest.raises(EvolutionError, match="quantize_int8"):
        save_int8(dynamic, tmp_path / "x")
    with pytest.raises(EvolutionError, match="Conv1D"):
        quantize_int8(tiny("gpt2").model, "dynamic")
    with pytest.raises(EvolutionError, match="unknown int8 method"):
        quantize_int8(default.model, "int4")  # type: ignore[arg-type]
    with pytest.raises(EvolutionError, match="already int8"):
        quantize_int8(quantize_int8(default.model))


def test_a_broken_artifact_is_refused_with_a_reason(tmp_path: Path) -> None:
    lm = tiny("llama", varied=True)
    folder = save_int8(quantize_int8(lm.model), tmp_path / "a", lm.tokenizer)
    data = tensors(folder / INT8_WEIGHTS)
    name = next(k for k in data if k.endswith(".weight_scale"))
    save_file({k: v for k, v in data.items() if k != name}, str(folder / INT8_WEIGHTS))
    with pytest.raises(ModelLoadError, match="int8 weight needs one"):
        load_model(str(folder), device="cpu")
    (folder / INT8_WEIGHTS).unlink()
    with pytest.raises(ModelLoadError, match=r"weight file model\.int8\.safetensors is missing"):
        load_model(str(folder), device="cpu")
    config = json.loads((folder / "config.json").read_text())
    config[INT8_MARKER]["bits"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="only 8-bit"):
        load_model(str(folder), device="cpu")


@pytest.mark.parametrize("where", ["absolute", "parent", "subfolder", "link"])
def test_int8_weights_outside_the_artifact_are_refused(where: str, tmp_path: Path) -> None:
    """config.json is data: it may not point the loader at weights elsewhere on the host (on the old loader each of
    these loaded the outside file)."""
    lm = tiny("llama", varied=True)
    folder = save_int8(quantize_int8(lm.model), tmp_path / "a", lm.tokenizer)
    outside = tmp_path / "elsewhere" / INT8_WEIGHTS
    outside.parent.mkdir()
    (folder / INT8_WEIGHTS).rename(outside)
    name = {
        "absolute": str(outside),
        "parent": f"../elsewhere/{INT8_WEIGHTS}",
        "subfolder": f"sub/{INT8_WEIGHTS}",
        "link": "linked.safetensors",
    }[where]
    if where == "subfolder":
        (folder / "sub").mkdir()
        (folder / "sub" / INT8_WEIGHTS).symlink_to(outside)
    if where == "link":
        (folder / name).symlink_to(outside)
    config = json.loads((folder / "config.json").read_text())
    config[INT8_MARKER]["weights"] = name
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"plain file name|outside the artifact"):
        load_model(str(folder), device="cpu")


def test_int8_weights_in_the_store_must_be_in_the_manifest(tmp_path: Path) -> None:
    lm = tiny("llama", varied=True)
    folder = save_int8(quantize_int8(lm.model), tmp_path / "a", lm.tokenizer)
    ref = ArtifactStore(tmp_path / "store").put_dir(folder)
    assert load_model(str(ref.path), device="cpu").model is not None
    names = {"model.int8.safetensors": "extra.safetensors"}
    stored = tmp_path / "copy" / "sha256" / ref.sha256
    shutil.copytree(ref.path.parent, stored)  # a writable copy of the stored layout (manifest.json + files/)
    for old, new in names.items():
        (stored / "files" / old).chmod(0o644)
        shutil.copy(stored / "files" / old, stored / "files" / new)
        config_file = stored / "files" / "config.json"
        config_file.chmod(0o644)
        config = json.loads(config_file.read_text())
        config[INT8_MARKER]["weights"] = new
        config_file.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="not listed in the artifact's manifest"):
        load_model(str(stored / "files"), device="cpu")


def test_int8_linear_is_the_dequantized_product() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 10)
    conv = Conv1D(10, 24)
    x = torch.randn(3, 5, 24)
    for src in (lin, conv):
        q = Int8Linear(src)
        w = q.weight.float() * q.weight_scale
        assert torch.equal(q.dequantized(), w)
        ref = torch.nn.functional.linear(x, w.T if q.conv1d else w, src.bias)
        torch.testing.assert_close(q(x), ref)
        expected = src(x)
        assert (q(x) - expected).abs().max() < 0.05 * expected.abs().max()
