"""Structural operators build a smaller model that computes exactly what the original computes with the removed
heads, neurons or layers silenced; the result reloads through its family's own from_pretrained and still generates
with its KV cache. The sites map names the modules the analyzer gates."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)

from evostream.consumers.evolution.operators.structural import (
    drop_layers,
    parameter_count,
    plan_heads,
    prune_ffn,
    prune_heads,
    top_heads,
    top_neurons,
)
from evostream.consumers.evolution.sites import (
    AttentionSite,
    attention_sites,
    ffn_sites,
    layer_stacks,
    tied_attention_sites,
)
from evostream.core.errors import EvolutionError
from evostream.models.loading import load_model
from tests.producers.models import FAMILIES, tiny

IDS = torch.tensor([[5, 71, 200, 33, 9, 120, 64], [250, 18, 7, 99, 140, 3, 45]])


pytestmark = pytest.mark.usefixtures("one_thread")


def build(fam: str) -> PreTrainedModel:
    """A tiny model with varied weights; "t5-gated" is a gated-GELU T5 (wi_0 / wi_1), the others come from tiny()."""
    if fam != "t5-gated":
        return tiny(fam, varied=True).model
    torch.manual_seed(3)
    model = T5ForConditionalGeneration(
        T5Config(
            vocab_size=384,
            d_model=32,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 2.0 / min(p.shape) ** 0.5)
    return model.eval()


def logits(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            out = model(input_ids=IDS, decoder_input_ids=IDS[:, :5])
        else:
            out = model(input_ids=IDS)
    result: torch.Tensor = out.logits
    return result


def reloaded(model: PreTrainedModel, folder: Path) -> PreTrainedModel:
    """Save, then load through the family's own from_pretrained (Auto picks the class from the saved config)."""
    model.save_pretrained(folder)
    auto = AutoModelForSeq2SeqLM if model.config.is_encoder_decoder else AutoModelForCausalLM
    loaded: PreTrainedModel = auto.from_pretrained(folder).eval()
    if type(loaded) is not type(model):
        raise AssertionError(f"{type(loaded).__name__} reloaded, {type(model).__name__} saved")
    return loaded


@contextmanager
def silenced(modules: dict[nn.Module, list[int]]) -> Iterator[None]:
    """Zero the listed input features of each module (a head's slice, a neuron's activation) while inside."""

    def hook(idx: list[int]) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
        def pre(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0].clone()
            x[..., idx] = 0
            return (x, *args[1:])

        return pre

    handles = [m.register_forward_pre_hook(hook(idx)) for m, idx in modules.items() if idx]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def skipped(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Make each layer hand its input hidden states on unchanged (T5 blocks still pass their position biases)."""

    def post(_: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        return (args[0], *out[1:]) if isinstance(out, tuple) else args[0]

    handles = [layer.register_forward_hook(post) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def head_features(site: AttentionSite, heads: Sequence[int]) -> list[int]:
    return [h * site.head_dim + j for h in heads for j in range(site.head_dim)]


def snapshot(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model: PreTrainedModel, before: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].shape == value.shape and torch.equal(after[key], value), key
    assert model.config.to_dict() == config


# --- sites ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fam", FAMILIES)
def test_sites_name_their_modules_and_out_proj_input_is_the_concatenated_heads(fam: str) -> None:
    """Every site's name resolves to its module; silencing a head's slice at out_proj's input equals zeroing that
    head's value vectors (a whole KV group for Llama), so a gate on out_proj gates exactly one head."""
    model = build(fam)
    sites = attention_sites(model)
    kinds = [(s.stack, s.kind) for s in sites]
    expected = {"t5": [("encoder", "self")] * 2 + [("decoder", "self"), ("decoder", "cross")] * 2}.get(fam)
    assert kinds == (expected or [("decoder", "self")] * 2)
    for s in sites:
        assert model.get_submodule(s.name) is s.module
        assert (s.num_heads, s.head_dim, s.num_kv_heads) == ((4, 8, 2) if fam == "llama" else (4, 8, 4))
    ffns = ffn_sites(model)
    assert [model.get_submodule(f.name) is f.module for f in ffns] == [True] * (4 if fam == "t5" else 2)
    assert {f.width for f in ffns} == {128 if fam == "gpt2" else 64}
    assert {k: len(v) for k, v in layer_stacks(model).items()} == (
        {"encoder": 2, "decoder": 2} if fam == "t5" else {"decoder": 2}
    )

    site = sites[-1]  # the last layer's attention (T5: decoder cross-attention)
    heads = [2, 3] if fam == "llama" else [1]  # Llama: KV head 1 serves query heads 2 and 3
    with silenced({site.out_proj: head_features(site, heads)}):
        gated = logits(model)
    zeroed = copy.deepcopy(model)
    attn = zeroed.get_submodule(site.name)
    with torch.no_grad():
        if fam == "t5":
            attn.v.weight[head_features(site, heads)] = 0
        elif fam == "llama":
            attn.v_proj.weight[head_features(site, [1])] = 0
        else:  # GPT-2's c_attn is one Conv1D producing q | k | v along its output (second) weight axis
            embed = site.num_heads * site.head_dim
            v_cols = [2 * embed + f for f in head_features(site, heads)]
            attn.c_attn.weight[:, v_cols] = 0
            attn.c_attn.bias[v_cols] = 0
    torch.testing.assert_close(gated, logits(zeroed))
    assert not torch.allclose(gated, logits(model), atol=1e-3)


def test_unknown_family_is_refused_by_name() -> None:
    model = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    with pytest.raises(EvolutionError, match="GPT2Model"):
        attention_sites(model)


# --- heads ------------------------------------------------------------------------------------------
HEAD_PLANS: dict[str, Callable[[AttentionSite], list[int]]] = {
    # T5 self-attention sites of a stack share layer 0's bias table (same heads); cross-attention sites may differ
    "t5": lambda s: [0, 1, 3] if s.kind == "self" else ([0, 2, 3] if s.layer == 0 else [1, 2, 3]),
    "llama": lambda s: [2, 3] if s.layer == 0 else [0, 1],  # whole KV groups, a different group per layer
}


@pytest.mark.parametrize("fam", ["t5", "llama"])
def test_prune_heads_equals_silencing_them(fam: str, tmp_path: Path) -> None:
    model = build(fam)
    before, config = snapshot(model), model.config.to_dict()
    sites = attention_sites(model)
    plan = {s.name: HEAD_PLANS[fam](s) for s in sites}
    pruned = prune_heads(model, plan)

    removed = {s.name: [h for h in range(s.num_heads) if h not in plan[s.name]] for s in sites}
    with silenced({s.out_proj: head_features(s, removed[s.name]) for s in sites}):
        reference = logits(model)
    out = logits(pruned)
    torch.testing.assert_close(out, reference)
    assert not torch.allclose(out, logits(model), atol=1e-3)
    assert_untouched(model, before, config)

    d_model, hd = model.config.hidden_size, 8
    expected_removed = 0
    for s in sites:
        r = len(removed[s.name])
        kv_r = r // s.group_size
        expected_removed += (2 * r + 2 * kv_r) * hd * d_model  # q rows, o columns, k and v rows
        if getattr(s.module, "has_relative_attention_bias", False):
            expected_removed += model.config.relative_attention_num_buckets * r
    assert parameter_count(pruned) == parameter_count(model) - expected_removed

    for s in attention_sites(pruned):
        kept = len(plan[s.name])
        q, k, v, o = ("q", "k", "v", "o") if fam == "t5" else ("q_proj", "k_proj", "v_proj", "o_proj")
        assert s.module.get_submodule(q).weight.shape == (kept * hd, d_model)
        assert s.module.get_submodule(k).weight.shape == (kept // s.group_size * hd, d_model)
        assert s.module.get_submodule(v).weight.shape == (kept // s.group_size * hd, d_model)
        assert s.module.get_submodule(o).weight.shape == (d_model, kept * hd)
    if fam == "t5":
        assert pruned.config.num_heads == pruned.encoder.config.num_heads == pruned.decoder.config.num_heads == 3
        assert pruned.config.d_kv == hd
        bias = pruned.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        original = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        assert torch.equal(bias, original[:, [0, 1, 3]])
    else:
        cfg = pruned.config
        assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 8)
        # the kept KV head of layer 0 is the original's KV head 1
        kept_k, original_k = (m.model.layers[0].self_attn.k_proj.weight for m in (pruned, model))
        assert torch.equal(kept_k, original_k[8:])

    again = reloaded(pruned, tmp_path)
    torch.testing.assert_close(logits(again), out, rtol=0, atol=0)


def test_gpt2_head_pruning_is_refused_and_says_why() -> None:
    model = build("gpt2")
    sites = attention_sites(model)
    with pytest.raises(EvolutionError, match=r"GPT-2 heads cannot be pruned.*n_embd // n_head"):
        prune_heads(model, {s.name: [0, 1, 2] for s in sites})
    same = prune_heads(model, {s.name: [0, 1, 2, 3] for s in sites})
    assert same is not model
    assert torch.equal(logits(same), logits(model))


def test_head_plans_that_do_not_fit_are_refused() -> None:
    llama = build("llama")
    names = [s.name for s in attention_sites(llama)]
    with pytest.raises(EvolutionError, match=r"share key/value head 0.*keep all of them or none"):
        prune_heads(llama, {n: [0, 2, 3] for n in names})
    with pytest.raises(EvolutionError, match="one head count for every layer"):
        prune_heads(llama, {names[0]: [0, 1], names[1]: [0, 1, 2, 3]})
    with pytest.raises(EvolutionError, match="names every site"):
        prune_heads(llama, {names[0]: [0, 1]})
    with pytest.raises(EvolutionError, match="out of range"):
        prune_heads(llama, {n: [4, 5] for n in names})
    with pytest.raises(EvolutionError, match="does not have"):
        prune_heads(llama, {**{n: [0, 1] for n in names}, "model.layers.9.self_attn": [0, 1]})

    t5 = build("t5")
    plan = {s.name: [0, 1, 2] for s in attention_sites(t5)}
    plan["encoder.block.1.layer.0.SelfAttention"] = [1, 2, 3]
    with pytest.raises(EvolutionError, match="relative position bias"):
        prune_heads(t5, plan)


# --- FFN neurons ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fam", [*FAMILIES, "t5-gated"])
def test_prune_ffn_equals_silencing_the_neurons(fam: str, tmp_path: Path) -> None:
    model = build(fam)
    before, config = snapshot(model), model.config.to_dict()
    sites = ffn_sites(model)
    gen = torch.Generator().manual_seed(1)
    width = sites[0].width
    plan = {s.name: sorted(torch.randperm(width, generator=gen)[: width // 2].tolist()) for s in sites}
    assert len({tuple(v) for v in plan.values()}) == len(sites)  # every site keeps other neurons
    pruned = prune_ffn(model, plan)

    removed = {s.name: [i for i in range(width) if i not in plan[s.name]] for s in sites}
    with silenced({s.out_proj: removed[s.name] for s in sites}):
        reference = logits(model)
    out = logits(pruned)
    torch.testing.assert_close(out, reference)
    assert not torch.allclose(out, logits(model), atol=1e-3)
    assert_untouched(model, before, config)

    d_model, r = model.config.hidden_size, width - width // 2
    per_site = {
        "t5": 2 * r * d_model,
        "t5-gated": 3 * r * d_model,
        "llama": 3 * r * d_model,
        "gpt2": 2 * r * d_model + r,
    }[fam]  # GPT-2's c_fc has a bias per neuron
    assert parameter_count(pruned) == parameter_count(model) - per_site * len(sites)
    assert {s.width for s in ffn_sites(pruned)} == {width // 2}
    field = {"t5": "d_ff", "t5-gated": "d_ff", "gpt2": "n_inner", "llama": "intermediate_size"}[fam]
    assert getattr(pruned.config, field) == width // 2
    first: Any = ffn_sites(pruned)[0].module
    original: Any = sites[0].module
    if fam == "gpt2":
        assert first.c_fc.weight.shape == (d_model, width // 2) and first.c_proj.weight.shape == (width // 2, d_model)
        assert torch.equal(first.c_fc.bias, original.c_fc.bias[plan[sites[0].name]])
    elif fam == "llama":
        assert first.gate_proj.weight.shape == first.up_proj.weight.shape == (width // 2, d_model)
    elif fam == "t5-gated":
        assert first.wi_0.weight.shape == first.wi_1.weight.shape == (width // 2, d_model)
    else:
        assert first.wi.weight.shape == (width // 2, d_model)

    again = reloaded(pruned, tmp_path)
    torch.testing.assert_close(logits(again), out, rtol=0, atol=0)
    with pytest.raises(EvolutionError, match="one FFN neuron count"):
        prune_ffn(model, {s.name: list(range(width - i)) for i, s in enumerate(sites)})


# --- layers -----------------------------------------------------------------------------------------
DROPS = {"t5": {"encoder": [0], "decoder": [0]}, "gpt2": {"decoder": [0]}, "llama": {"decoder": [0]}}


@pytest.mark.parametrize("fam", FAMILIES)
def test_drop_layers_equals_skipping_them_and_generates_with_its_cache(fam: str, tmp_path: Path) -> None:
    """Layer 0 goes (the case that renumbers the kept layers and, in T5, moves the position-bias table)."""
    model = build(fam)
    before, config = snapshot(model), model.config.to_dict()
    stacks = layer_stacks(model)
    dropped = [stacks[stack][i] for stack, idx in DROPS[fam].items() for i in idx]
    pruned = drop_layers(model, DROPS[fam])

    with skipped(dropped):
        reference = logits(model)
    out = logits(pruned)
    torch.testing.assert_close(out, reference)
    assert not torch.allclose(out, logits(model), atol=1e-3)
    assert_untouched(model, before, config)

    moved = 0  # T5: the dropped layer 0's relative position bias table lives on in the new layer 0
    if fam == "t5":
        moved = 2 * model.config.relative_attention_num_buckets * model.config.num_heads
    removed = sum(p.numel() for layer in dropped for p in layer.parameters()) - moved
    assert parameter_count(pruned) == parameter_count(model) - removed
    assert {k: len(v) for k, v in layer_stacks(pruned).items()} == {k: 1 for k in stacks}
    for s in attention_sites(pruned):
        assert s.module.layer_idx == s.layer == 0
    if fam == "t5":
        assert (pruned.config.num_layers, pruned.config.num_decoder_layers) == (1, 1)
        assert pruned.encoder.config.num_layers == pruned.decoder.config.num_layers == 1
        for stack in ("encoder", "decoder"):
            attn: Any = layer_stacks(pruned)[stack][0].get_submodule("layer.0.SelfAttention")
            original: Any = layer_stacks(model)[stack][0].get_submodule("layer.0.SelfAttention")
            assert attn.has_relative_attention_bias
            assert torch.equal(attn.relative_attention_bias.weight, original.relative_attention_bias.weight)
    else:
        assert pruned.config.num_hidden_layers == 1

    again = reloaded(pruned, tmp_path)
    torch.testing.assert_close(logits(again), out, rtol=0, atol=0)
    mask = torch.ones_like(IDS)
    cached = again.generate(IDS, attention_mask=mask, max_new_tokens=8, do_sample=False, use_cache=True)
    plain = again.generate(IDS, attention_mask=mask, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)
    assert cached.shape[1] >= 8 and len(set(cached[0, -8:].tolist())) > 1


def test_layer_drops_that_do_not_fit_are_refused() -> None:
    model = build("t5")
    with pytest.raises(EvolutionError, match="dropping all 2 layers"):
        drop_layers(model, {"encoder": [0, 1]})
    with pytest.raises(EvolutionError, match="does not have"):
        drop_layers(build("llama"), {"encoder": [0]})
    with pytest.raises(EvolutionError, match="out of range"):
        drop_layers(model, {"decoder": [2]})

    torch.manual_seed(0)
    scaled = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, scale_attn_by_inverse_layer_idx=True)
    ).eval()
    with pytest.raises(EvolutionError, match="scale_attn_by_inverse_layer_idx"):
        drop_layers(scaled, {"decoder": [0]})
    assert drop_layers(scaled, {"decoder": [1]}).config.n_layer == 1


# --- identity plans ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fam", FAMILIES)
def test_identity_plans_give_bit_identical_logits_and_leave_the_input_alone(fam: str) -> None:
    model = build(fam)
    before, config = snapshot(model), model.config.to_dict()
    original = logits(model)
    heads = prune_heads(model, {s.name: list(range(s.num_heads)) for s in attention_sites(model)})
    ffn = prune_ffn(model, {s.name: list(range(s.width)) for s in ffn_sites(model)})
    layers = drop_layers(model, {})
    for candidate in (heads, ffn, layers):
        assert candidate is not model
        assert parameter_count(candidate) == parameter_count(model)
        torch.testing.assert_close(logits(candidate), original, rtol=0, atol=0)
        assert candidate.config.to_dict() == config
    assert_untouched(model, before, config)


# --- plans from scores ------------------------------------------------------------------------------
def test_top_heads_and_neurons_keep_the_best_by_group_and_tie() -> None:
    scores = {"a": [0.1, 0.9, 0.5, 0.2], "b": [0.3, 0.0, 0.4, 0.8]}
    assert top_heads(scores, 2) == {"a": [1, 2], "b": [2, 3]}
    # groups of 2: a's groups sum to 1.0 and 0.7, b's to 0.3 and 1.2
    assert top_heads(scores, 2, {"a": 2, "b": 2}) == {"a": [0, 1], "b": [2, 3]}
    # tied: summed per head 0.4, 0.9, 0.9, 1.0 -> heads 1, 3 (ties go to the lower index)
    assert top_heads(scores, 2, tied=[["a", "b"]]) == {"a": [1, 3], "b": [1, 3]}
    with pytest.raises(EvolutionError, match="whole groups of 2"):
        top_heads(scores, 3, {"a": 2, "b": 2})
    with pytest.raises(EvolutionError, match="cannot keep 5 of 4"):
        top_heads(scores, 5)
    with pytest.raises(EvolutionError, match="finite"):
        top_neurons({"a": [float("nan"), 1.0]}, 1)
    assert top_neurons({"x": [3.0, -1.0, 7.0, 0.0, 2.0]}, 3) == {"x": [0, 2, 4]}

    t5 = build("t5")
    sites = attention_sites(t5)
    assert tied_attention_sites(sites) == [
        [s.name for s in sites if s.stack == st and s.kind == "self"] for st in ("encoder", "decoder")
    ]
    gen = torch.Generator().manual_seed(0)
    plan = plan_heads(t5, {s.name: torch.rand(4, generator=gen).tolist() for s in sites}, 3)
    prune_heads(t5, plan)  # a plan made under the model's constraints is one prune_heads accepts
    llama = build("llama")
    plan = plan_heads(llama, {s.name: [0.0, 0.1, 0.9, 0.0] for s in attention_sites(llama)}, 2)
    assert set(map(tuple, plan.values())) == {(2, 3)}


# --- the embedded default model ---------------------------------------------------------------------
def test_default_model_answers_after_identity_and_runs_pruned() -> None:
    loaded = load_model("default", device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    assert (model.config.num_layers, model.config.num_heads, model.config.d_ff) == (3, 4, 512)
    batch = tok(["reverse: abc", "sort: dcba"], return_tensors="pt", padding=True)
    answer = model.generate(**batch, max_new_tokens=12, do_sample=False)

    sites = attention_sites(model)
    same = prune_ffn(
        prune_heads(model, {s.name: list(range(4)) for s in sites}),
        {s.name: list(range(s.width)) for s in ffn_sites(model)},
    )
    assert torch.equal(same.generate(**batch, max_new_tokens=12, do_sample=False), answer)

    heads = plan_heads(model, {s.name: [1.0, 0.5, 0.0, 2.0] for s in sites}, 3)
    small = prune_heads(model, heads)
    small = prune_ffn(small, {s.name: list(range(0, s.width, 2)) for s in ffn_sites(small)})
    assert (small.config.num_heads, small.config.d_ff) == (3, 256)
    assert parameter_count(small) < parameter_count(model)
    out = small.generate(**batch, max_new_tokens=12, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] > 1
    assert tok.batch_decode(out, skip_special_tokens=True) is not None
