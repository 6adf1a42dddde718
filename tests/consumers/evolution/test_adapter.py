"""The capacity adapter: it starts as the identity, grows the parameter count by exactly its size, trains alone
(the backbone stays bit-identical) with alpha ramping in, and its merged model reloads through the family's own
from_pretrained with the adapted model's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from evostream.consumers.evolution.operators.adapter import (
    LowRankAdapter,
    adapter_parameter_count,
    adapters,
    add_adapter,
    alpha_at,
    answer_loss,
    batch_for,
    merge_adapter,
    save_adapted,
    set_alpha,
    train_adapter,
)
from evostream.consumers.evolution.sites import features, ffn_sites
from evostream.core.errors import EvolutionError
from evostream.models.loading import LoadedModel, load_model
from tests.producers.models import tiny

PAIRS = [
    ("reverse: abc", "cba"),
    ("sort: dcba", "abcd"),
    ("upper: xy", "XY"),
    ("add: 1+2", "3"),
    ("reverse: xyz", "zyx"),
    ("upper: abc", "ABC"),
]
FAMILIES = ["t5", "gpt2", "llama"]


def logits(model: PreTrainedModel, lm: LoadedModel) -> torch.Tensor:
    """Logits over the training pairs' own inputs (prompt and answer), as the loss sees them."""
    batch = batch_for(lm.tokenizer, PAIRS, lm.is_seq2seq, torch.device("cpu"))
    with torch.no_grad():
        out: torch.Tensor = model(**batch).logits
    return out


def loss(model: PreTrainedModel, lm: LoadedModel) -> float:
    with torch.no_grad():
        return answer_loss(model, batch_for(lm.tokenizer, PAIRS, lm.is_seq2seq, torch.device("cpu"))).item()


def backbone(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer except the adapters' own."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith((".down", ".up"))}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_new_adapter_is_the_identity_and_adds_exactly_its_size(family: str) -> None:
    lm = tiny(family, varied=True, seed=2)
    parent_before = backbone(lm.model)
    rank = 4
    adapted = add_adapter(lm.model, rank=rank)
    sites = ffn_sites(lm.model)
    assert len(adapters(adapted)) == len(sites) == (4 if family == "t5" else 2)
    expected = sum(rank * (features(s.out_proj, "in") + features(s.out_proj, "out")) for s in sites)
    cfg = lm.model.config
    neurons = cfg.d_ff if family == "t5" else cfg.intermediate_size if family == "llama" else 4 * cfg.n_embd
    assert expected == len(sites) * rank * (neurons + 32)  # each FFN output maps its neurons to 32 features
    assert adapter_parameter_count(adapted) == expected
    parent_count = sum(p.numel() for p in lm.model.parameters())
    assert sum(p.numel() for p in adapted.parameters()) == parent_count + expected
    # alpha 0, and alpha 1 while ``up`` is still zero: the parent's outputs, bit for bit
    reference = logits(lm.model, lm)
    assert all(a.alpha == 0.0 for a in adapters(adapted).values())
    assert torch.equal(logits(adapted, lm), reference)
    set_alpha(adapted, 1.0)
    assert torch.equal(logits(adapted, lm), reference)
    # the parent is untouched: no adapter, same tensors, still trainable
    assert not adapters(lm.model)
    assert all(torch.equal(v, parent_before[k]) for k, v in backbone(lm.model).items())
    assert all(p.requires_grad for p in lm.model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_training_moves_only_the_adapter_and_lowers_the_loss(family: str, tmp_path: Path) -> None:
    lm = tiny(family, varied=True, seed=4)
    adapted = add_adapter(lm.model, rank=8)
    frozen = backbone(adapted)
    before = loss(adapted, lm)
    report = train_adapter(adapted, lm.tokenizer, PAIRS, steps=30, lr=1e-2, batch_size=6, ramp=0.5)
    after = loss(adapted, lm)
    assert after < 0.8 * before, (before, after)
    # the backbone is bit-identical and got no gradient; the adapters moved
    assert backbone(adapted).keys() == frozen.keys()
    assert all(torch.equal(v, frozen[k]) for k, v in backbone(adapted).items())
    for name, p in adapted.named_parameters():
        is_adapter = name.endswith((".down", ".up"))
        assert p.requires_grad == is_adapter, name
        assert is_adapter or p.grad is None, name
    assert all(a.up.abs().sum() > 0 for a in adapters(adapted).values())
    # the soft landing: alpha ramps over the first half, then stays at 1
    assert report.alphas[:15] == [(i + 1) / 15 for i in range(15)] and report.alphas[15:] == [1.0] * 15
    assert len(report.losses) == 30 and all(a.alpha == 1.0 for a in adapters(adapted).values())

    # saved merged: a plain model of the family, the parent's size, the adapted model's outputs
    folder = save_adapted(adapted, tmp_path / "merged", lm.tokenizer)
    reloaded = type(lm.model).from_pretrained(folder).eval()
    assert not adapters(reloaded)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in lm.model.parameters())
    torch.testing.assert_close(logits(reloaded, lm), logits(adapted, lm), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits(reloaded, lm), logits(lm.model, lm), atol=1e-3)  # it did change the model
    served = load_model(str(folder), device="cpu")
    torch.testing.assert_close(logits(served.model, lm), logits(adapted, lm), rtol=1e-4, atol=1e-4)


def test_sites_name_projections_or_blocks() -> None:
    lm = tiny("t5", varied=True)
    block = "decoder.block.1.layer.2.DenseReluDense"
    adapted = add_adapter(lm.model, sites=[block, "decoder.block.0.layer.0.SelfAttention.q"], rank=2)
    assert sorted(adapters(adapted)) == ["decoder.block.0.layer.0.SelfAttention.q", f"{block}.wo"]
    assert adapter_parameter_count(adapted) == 2 * (64 + 32) + 2 * (32 + 32)
    assert isinstance(adapted.get_submodule(f"{block}.wo"), LowRankAdapter)
    with pytest.raises(EvolutionError, match="no module"):
        add_adapter(lm.model, sites=["decoder.block.9"])
    with pytest.raises(EvolutionError, match="name a projection"):
        add_adapter(lm.model, sites=["decoder.block.1"])
    with pytest.raises(EvolutionError, match="second time"):
        add_adapter(lm.model, sites=[block, f"{block}.wo"])
    with pytest.raises(EvolutionError, match="tied to an embedding"):
        add_adapter(lm.model, sites=["lm_head"])
    with pytest.raises(EvolutionError, match="rank"):
        add_adapter(lm.model, rank=0)
    with pytest.raises(EvolutionError, match="already has adapters"):
        add_adapter(adapted)
    with pytest.raises(EvolutionError, match="no adapter to train"):
        train_adapter(lm.model, lm.tokenizer, PAIRS, steps=1, lr=1e-3)
    with pytest.raises(EvolutionError, match="no adapter to merge"):
        merge_adapter(lm.model)
    with pytest.raises(EvolutionError, match=r"\[0, 1\]"):
        set_alpha(adapted, 1.5)


def test_merge_takes_the_current_alpha() -> None:
    lm = tiny("gpt2", varied=True, seed=1)
    adapted = add_adapter(lm.model, rank=4)
    with torch.no_grad():
        for a in adapters(adapted).values():
            a.up.normal_(0, 0.1)
    set_alpha(adapted, 0.25)
    merged = merge_adapter(adapted)
    torch.testing.assert_close(logits(merged, lm), logits(adapted, lm), rtol=1e-4, atol=1e-4)
    set_alpha(adapted, 0.0)
    assert torch.equal(logits(adapted, lm), logits(lm.model, lm))
    assert [alpha_at(s, 10, 0.3) for s in range(5)] == [1 / 3, 2 / 3, 1.0, 1.0, 1.0]
