"""Structural operators: a model in, a NEW smaller model out (the input is deep-copied, never changed).

Each operator slices the inherited weights and updates every config the model holds, so that ``save_pretrained``
then the family's own ``from_pretrained`` gives back the same model. A pruned model computes exactly what the
original computes with the removed parts silenced (a head's slice of the output projection's input zeroed, a
neuron's activation zeroed, a layer skipped); the tests check this equality.

Hugging Face configs hold one head count and one FFN width for all layers, so a plan keeps the same number at
every site. Plans name every site (by ``sites`` name); indices are the ORIGINAL head / neuron / layer indices.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from evostream.consumers.evolution.measure import parameter_count
from evostream.consumers.evolution.sites import (
    AttentionSite,
    FfnSite,
    attention_sites,
    configs,
    family,
    ffn_sites,
    layer_stacks,
    stack_path,
    tied_attention_sites,
)
from evostream.core.errors import EvolutionError

__all__ = ["drop_layers", "parameter_count", "plan_heads", "prune_ffn", "prune_heads", "top_heads", "top_neurons"]

HEAD_FIELDS = {"t5": "num_heads", "gpt2": "n_head", "llama": "num_attention_heads"}
FFN_FIELDS = {"t5": "d_ff", "gpt2": "n_inner", "llama": "intermediate_size"}


# --- plans ------------------------------------------------------------------------------------------
def _plan(keep: Mapping[str, Sequence[int]], sizes: Mapping[str, int], what: str) -> dict[str, list[int]]:
    """Check a keep plan against the sites (all named, indices in range, unique, not empty); indices sorted."""
    unknown = sorted(set(keep) - set(sizes))
    if unknown:
        raise EvolutionError(
            f"the {what} plan names sites this model does not have: {unknown}; its sites: {list(sizes)}"
        )
    missing = [name for name in sizes if name not in keep]
    if missing:
        raise EvolutionError(
            f"a {what} plan names every site (list all indices to keep a site whole); missing: {missing}"
        )
    plan: dict[str, list[int]] = {}
    for name, size in sizes.items():
        kept = [int(i) for i in keep[name]]
        bad = [i for i in kept if not 0 <= i < size]
        if bad:
            raise EvolutionError(f"{name}: {what} indices {bad} are out of range (it has {size} {what}s)")
        if len(set(kept)) != len(kept):
            raise EvolutionError(f"{name}: the {what} plan repeats indices {sorted(kept)}")
        if not kept:
            raise EvolutionError(f"{name}: a {what} plan must keep at least one {what}")
        plan[name] = sorted(kept)
    return plan


def _uniform(plan: Mapping[str, list[int]], field: str, what: str) -> int:
    counts = {len(kept) for kept in plan.values()}
    if len(counts) != 1:
        per_site = {name: len(kept) for name, kept in plan.items()}
        raise EvolutionError(
            f"the config holds one {what} count for every layer ({field}), but this plan keeps {per_site}: "
            f"keep the same number at every site"
        )
    return counts.pop()


# --- slicing ----------------------------------------------------------------------------------------
def _features(starts: Iterable[int], width: int) -> list[int]:
    """The feature indices of the blocks that start at ``starts * width`` (a head's slice, a KV head's slice)."""
    return [s * width + j for s in starts for j in range(width)]


def _param(old: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.contiguous().clone(), requires_grad=old.requires_grad)


def _keep(module: nn.Module, idx: Sequence[int], side: Literal["in", "out"]) -> None:
    """Keep the input or output features ``idx`` of a Linear or a GPT-2 Conv1D (weight stored in x out), in place."""
    index = torch.tensor(list(idx), dtype=torch.long, device=module.get_parameter("weight").device)
    weight = module.get_parameter("weight")
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.Linear):
        axis = 1 if side == "in" else 0
        module.weight = _param(weight, weight.index_select(axis, index))
        if side == "in":
            module.in_features = len(idx)
        else:
            module.out_features = len(idx)
            if bias is not None:
                module.bias = _param(bias, bias.index_select(0, index))
    elif isinstance(module, Conv1D):
        axis = 0 if side == "in" else 1
        module.weight = _param(weight, weight.index_select(axis, index))
        if side == "in":
            module.nx = len(idx)
        else:
            module.nf = len(idx)
            module.bias = _param(module.bias, module.bias.index_select(0, index))
    else:
        raise EvolutionError(f"cannot slice a {type(module).__name__}: only Linear and Conv1D projections are known")


def _attrs(module: nn.Module, **values: int | bool) -> None:
    """Set plain (non-tensor) attributes a module's forward reads, such as its head count or layer index."""
    for key, value in values.items():
        setattr(module, key, value)


def _set(model: PreTrainedModel, **fields: int) -> None:
    for cfg in configs(model):
        for key, value in fields.items():
            setattr(cfg, key, value)


# --- heads ------------------------------------------------------------------------------------------
def prune_heads(model: PreTrainedModel, keep: Mapping[str, Sequence[int]]) -> PreTrainedModel:
    """A copy of ``model`` keeping, at each attention site (by name), the heads listed (original indices).

    Every site keeps the same number of heads. Llama (grouped-query attention) keeps whole KV groups only. T5's
    self-attention sites of one stack share layer 0's relative position bias, so they keep the same heads. GPT-2
    cannot be head-pruned: its config derives the head size from n_embd // n_head, so fewer heads of the same size
    cannot be expressed (only the identity plan is accepted)."""
    fam = family(model)
    sites = {s.name: s for s in attention_sites(model)}
    plan = _plan(keep, {name: s.num_heads for name, s in sites.items()}, "head")
    heads = _uniform(plan, HEAD_FIELDS[fam], "head")
    for name, kept in plan.items():
        _check_groups(sites[name], kept)
    for names in tied_attention_sites(list(sites.values())):
        chosen = {name: plan[name] for name in names}
        if len({tuple(kept) for kept in chosen.values()}) > 1:
            raise EvolutionError(
                f"these T5 self-attention sites share one relative position bias table (computed in the stack's "
                f"first layer, one column per head) and must keep the same heads: {chosen}"
            )
    removes = any(len(kept) < sites[name].num_heads for name, kept in plan.items())
    if fam == "gpt2" and removes:
        raise EvolutionError(
            "GPT-2 heads cannot be pruned: GPT2Config derives the head size as n_embd // n_head, so fewer heads of "
            "the same size is not a model its from_pretrained can build; prune FFN neurons or layers instead"
        )
    new = copy.deepcopy(model)
    for site in attention_sites(new):
        _slice_heads(fam, site, plan[site.name])
    if fam == "t5":
        _set(new, num_heads=heads)
    elif fam == "llama":
        first = next(iter(sites.values()))
        _set(new, num_attention_heads=heads, num_key_value_heads=heads // first.group_size, head_dim=first.head_dim)
    return new


def _check_groups(site: AttentionSite, kept: Sequence[int]) -> None:
    g = site.group_size
    if g == 1:
        return
    kept_set = set(kept)
    for group in range(site.num_kv_heads):
        members = set(range(group * g, (group + 1) * g))
        if kept_set & members and not members <= kept_set:
            raise EvolutionError(
                f"{site.name}: query heads {sorted(members)} share key/value head {group} (grouped-query attention); "
                f"keep all of them or none, the plan keeps {sorted(kept_set & members)}"
            )


def _slice_heads(fam: str, site: AttentionSite, kept: Sequence[int]) -> None:
    attn, hd = site.module, site.head_dim
    if len(kept) == site.num_heads and fam == "gpt2":
        return
    q_idx = _features(kept, hd)
    if fam == "t5":
        for proj in ("q", "k", "v"):
            _keep(attn.get_submodule(proj), q_idx, "out")
        _keep(attn.get_submodule("o"), q_idx, "in")
        if getattr(attn, "has_relative_attention_bias", False):
            table = attn.get_submodule("relative_attention_bias")
            if not isinstance(table, nn.Embedding):
                raise EvolutionError(
                    f"{site.name}.relative_attention_bias is a {type(table).__name__}, not an Embedding"
                )
            weight = table.get_parameter("weight")
            index = torch.tensor(list(kept), dtype=torch.long, device=weight.device)
            table.weight = _param(weight, weight.index_select(1, index))
            table.embedding_dim = len(kept)
        _attrs(attn, n_heads=len(kept), inner_dim=len(kept) * hd)
    else:
        kv_idx = _features(sorted({h // site.group_size for h in kept}), hd)
        _keep(attn.get_submodule("q_proj"), q_idx, "out")
        _keep(attn.get_submodule("k_proj"), kv_idx, "out")
        _keep(attn.get_submodule("v_proj"), kv_idx, "out")
        _keep(attn.get_submodule("o_proj"), q_idx, "in")


# --- FFN neurons ------------------------------------------------------------------------------------
def prune_ffn(model: PreTrainedModel, keep: Mapping[str, Sequence[int]]) -> PreTrainedModel:
    """A copy of ``model`` keeping, at each FFN site (by name), the neurons listed (original indices); every site
    keeps the same number (the config's one FFN width)."""
    fam = family(model)
    sites = {s.name: s for s in ffn_sites(model)}
    plan = _plan(keep, {name: s.width for name, s in sites.items()}, "neuron")
    width = _uniform(plan, FFN_FIELDS[fam], "FFN neuron")
    new = copy.deepcopy(model)
    for site in ffn_sites(new):
        _slice_ffn(site, plan[site.name])
    if any(s.width != width for s in sites.values()):  # an identity plan leaves the config as it was
        _set(new, **{FFN_FIELDS[fam]: width})
    return new


def _slice_ffn(site: FfnSite, kept: Sequence[int]) -> None:
    ffn = site.module
    inputs = [name for name in ("wi", "wi_0", "wi_1", "c_fc", "gate_proj", "up_proj") if hasattr(ffn, name)]
    for name in inputs:
        _keep(ffn.get_submodule(name), kept, "out")
    _keep(site.out_proj, kept, "in")
    if hasattr(ffn, "intermediate_size"):
        _attrs(ffn, intermediate_size=len(kept))


# --- layers -----------------------------------------------------------------------------------------
def drop_layers(model: PreTrainedModel, drop: Mapping[str, Sequence[int]]) -> PreTrainedModel:
    """A copy of ``model`` without the layers listed per stack (``encoder`` / ``decoder``); stacks not named keep
    every layer. The kept layers are renumbered (``layer_idx``, which the KV cache is indexed by), and a T5 stack
    whose first layer goes hands that layer's relative position bias table to its new first layer."""
    fam = family(model)
    stacks = layer_stacks(model)
    unknown = sorted(set(drop) - set(stacks))
    if unknown:
        raise EvolutionError(
            f"drop_layers names stacks this model does not have: {unknown}; its stacks: {list(stacks)}"
        )
    plan = _drop_plan(drop, {s: len(layers) for s, layers in stacks.items()})
    if fam == "gpt2" and getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        kept = [i for i in range(len(stacks["decoder"])) if i not in plan["decoder"]]
        if any(new != old for new, old in enumerate(kept)):
            raise EvolutionError(
                "this GPT-2 scales attention by 1 / (layer index + 1) (scale_attn_by_inverse_layer_idx): renumbering "
                "the layers after a dropped one would change what they compute; drop only trailing layers"
            )
    new = copy.deepcopy(model)
    counts: dict[str, int] = {}
    for stack, layers in layer_stacks(new).items():
        dropped = set(plan[stack])
        kept_layers = [layer for i, layer in enumerate(layers) if i not in dropped]
        if fam == "t5" and 0 in dropped:
            _hand_over_bias(layers[0], kept_layers[0])
        for j, layer in enumerate(kept_layers):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    _attrs(module, layer_idx=j)
        parent_path, _, attr = stack_path(new, stack).rpartition(".")
        setattr(new.get_submodule(parent_path), attr, nn.ModuleList(kept_layers))
        counts[stack] = len(kept_layers)
        if fam != "t5":
            _slice_layer_types(new, [i for i in range(len(layers)) if i not in dropped])
    _set_layer_counts(new, fam, counts)
    return new


def _drop_plan(drop: Mapping[str, Sequence[int]], sizes: Mapping[str, int]) -> dict[str, list[int]]:
    plan: dict[str, list[int]] = {}
    for stack, size in sizes.items():
        dropped = [int(i) for i in drop.get(stack, [])]
        bad = [i for i in dropped if not 0 <= i < size]
        if bad:
            raise EvolutionError(f"{stack}: layer indices {bad} are out of range (it has {size} layers)")
        if len(set(dropped)) != len(dropped):
            raise EvolutionError(f"{stack}: the drop plan repeats layer indices {sorted(dropped)}")
        if len(dropped) == size:
            raise EvolutionError(f"{stack}: dropping all {size} layers leaves no stack; keep at least one")
        plan[stack] = sorted(dropped)
    return plan


def _hand_over_bias(old_first: nn.Module, new_first: nn.Module) -> None:
    source = old_first.get_submodule("layer.0.SelfAttention")
    target = new_first.get_submodule("layer.0.SelfAttention")
    target.relative_attention_bias = source.get_submodule("relative_attention_bias")
    _attrs(target, has_relative_attention_bias=True)


def _slice_layer_types(model: PreTrainedModel, kept: Sequence[int]) -> None:
    """A causal model's per-layer config list (``layer_types``, which the cache reads) follows the kept layers."""
    for cfg in configs(model):
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, list) and len(types) > max(kept):
            cfg.layer_types = [types[i] for i in kept]


def _set_layer_counts(model: PreTrainedModel, fam: str, counts: Mapping[str, int]) -> None:
    if fam == "gpt2":
        _set(model, n_layer=counts["decoder"])
    elif fam == "llama":
        _set(model, num_hidden_layers=counts["decoder"])
    else:
        for cfg in configs(model):
            cfg.num_layers = counts["decoder"] if cfg.is_decoder else counts["encoder"]
            cfg.num_decoder_layers = counts["decoder"]


# --- plans from scores ------------------------------------------------------------------------------
def _top(values: Sequence[float], n_keep: int, group: int, where: str) -> list[int]:
    """The ``n_keep`` best indices (higher is better), chosen by whole groups of ``group`` consecutive indices."""
    if not all(math.isfinite(float(v)) for v in values):
        raise EvolutionError(f"{where}: scores must be finite numbers")
    size = len(values)
    if not 1 <= n_keep <= size:
        raise EvolutionError(f"{where}: cannot keep {n_keep} of {size}")
    if size % group or n_keep % group:
        raise EvolutionError(f"{where}: keeps whole groups of {group}; {n_keep} of {size} is not a number of groups")
    totals = [sum(float(v) for v in values[g * group : (g + 1) * group]) for g in range(size // group)]
    best = sorted(range(len(totals)), key=lambda g: (-totals[g], g))[: n_keep // group]
    return sorted(i for g in best for i in range(g * group, (g + 1) * group))


def top_heads(
    scores: Mapping[str, Sequence[float]],
    n_keep: int,
    group_size: Mapping[str, int] | None = None,
    tied: Sequence[Sequence[str]] | None = None,
) -> dict[str, list[int]]:
    """Per site, the ``n_keep`` best heads (higher score is better), as a plan for ``prune_heads``.

    ``group_size`` (site -> query heads per KV head) keeps whole GQA groups, ranked by their summed score; ``tied``
    lists sites that must keep the same heads (T5 self-attention of one stack), ranked by their summed scores."""
    sizes = group_size or {}
    plan: dict[str, list[int]] = {}
    for names in tied or []:
        missing = [n for n in names if n not in scores]
        if missing:
            raise EvolutionError(f"tied sites {missing} have no scores")
        if len({len(scores[n]) for n in names}) != 1 or len({sizes.get(n, 1) for n in names}) != 1:
            raise EvolutionError(f"tied sites {list(names)} differ in head count or group size")
        summed = [sum(float(scores[n][h]) for n in names) for h in range(len(scores[names[0]]))]
        chosen = _top(summed, n_keep, sizes.get(names[0], 1), f"tied sites {list(names)}")
        plan.update({n: list(chosen) for n in names})
    for name, values in scores.items():
        if name not in plan:
            plan[name] = _top(values, n_keep, sizes.get(name, 1), name)
    return plan


def plan_heads(model: PreTrainedModel, scores: Mapping[str, Sequence[float]], n_keep: int) -> dict[str, list[int]]:
    """``top_heads`` with the constraints ``model`` imposes (its GQA group sizes and its tied sites)."""
    sites = attention_sites(model)
    return top_heads(scores, n_keep, {s.name: s.group_size for s in sites}, tied_attention_sites(sites))


def top_neurons(scores: Mapping[str, Sequence[float]], n_keep: int) -> dict[str, list[int]]:
    """Per FFN site, the ``n_keep`` best neurons (higher score is better), as a plan for ``prune_ffn``."""
    return {name: _top(values, n_keep, 1, name) for name, values in scores.items()}
