"""Where heads and neurons live: a structural map of the attention blocks, FFNs and layer stacks of a model.

Operators and analyzers name a part of a model by its module path (``decoder.block.1.layer.1.EncDecAttention``),
and find the projection whose input holds one feature per head slice or per neuron, so that a hook can scale
those features and a pruning can slice those columns. Supported families: T5 (encoder-decoder), GPT-2 and Llama.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn
from transformers import (
    GPT2LMHeadModel,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    T5ForConditionalGeneration,
)

from evostream.core.errors import EvolutionError

Family = Literal["t5", "gpt2", "llama"]
SUPPORTED = "T5ForConditionalGeneration, GPT2LMHeadModel, LlamaForCausalLM"


@dataclass(frozen=True)
class AttentionSite:
    """One attention block.

    ``out_proj`` is the module whose input is the concatenation of the heads' outputs, head ``h`` occupying input
    features ``[h * head_dim, (h + 1) * head_dim)`` (for GPT-2's Conv1D too: it stores its weight transposed, but
    its input is the same concatenation). ``bias_group`` names the sites that share one relative position bias
    table (T5 self-attention: layer 0 of a stack computes it for every layer); such sites must keep the same heads
    for a pruned model to compute what the original computes with the other heads silenced."""

    name: str
    stack: str
    layer: int
    kind: Literal["self", "cross"]
    num_heads: int
    head_dim: int
    num_kv_heads: int
    module: nn.Module
    out_proj: nn.Module
    bias_group: str | None = None

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class FfnSite:
    """One feed-forward block; ``out_proj``'s input is the FFN activation, one feature per neuron."""

    name: str
    stack: str
    layer: int
    width: int
    module: nn.Module
    out_proj: nn.Module


def family(model: nn.Module) -> Family:
    """The family of ``model``, or an EvolutionError naming its class."""
    if isinstance(model, T5ForConditionalGeneration):
        return "t5"
    if isinstance(model, GPT2LMHeadModel):
        return "gpt2"
    if isinstance(model, LlamaForCausalLM):
        return "llama"
    raise EvolutionError(f"{type(model).__name__} is not a family the evolution operators know; supported: {SUPPORTED}")


def layer_stacks(model: PreTrainedModel) -> dict[str, nn.ModuleList]:
    """The layer lists by stack: ``encoder`` and ``decoder`` for T5, ``decoder`` for causal models."""
    stacks = ("encoder", "decoder") if family(model) == "t5" else ("decoder",)
    return {stack: _module_list(model, stack_path(model, stack)) for stack in stacks}


def stack_path(model: PreTrainedModel, stack: str) -> str:
    """The module path of a stack's layer list (``decoder.block``, ``transformer.h``, ``model.layers``)."""
    fam = family(model)
    if fam == "t5":
        return f"{stack}.block"
    return "transformer.h" if fam == "gpt2" else "model.layers"


def _module_list(model: nn.Module, path: str) -> nn.ModuleList:
    found = model.get_submodule(path)
    if not isinstance(found, nn.ModuleList):
        raise EvolutionError(f"{type(model).__name__}.{path} is a {type(found).__name__}, not the layer list expected")
    return found


def _int(module: nn.Module, attr: str) -> int:
    return int(getattr(module, attr))


def features(module: nn.Module, side: Literal["in", "out"]) -> int:
    """Input or output features of a Linear, or of a GPT-2 Conv1D (whose weight is stored in x out)."""
    weight = module.get_parameter("weight")
    if isinstance(module, nn.Linear):
        return int(weight.shape[1] if side == "in" else weight.shape[0])
    return int(weight.shape[0] if side == "in" else weight.shape[1])


def attention_sites(model: PreTrainedModel) -> list[AttentionSite]:
    """Every attention block, stack by stack, layer by layer (T5 decoder: self then cross)."""
    fam = family(model)
    sites: list[AttentionSite] = []
    for stack, layers in layer_stacks(model).items():
        prefix = stack_path(model, stack)
        for i, layer in enumerate(layers):
            if fam == "t5":
                paths = ["layer.0.SelfAttention"] + (["layer.1.EncDecAttention"] if stack == "decoder" else [])
                for path in paths:
                    attn = layer.get_submodule(path)
                    head_dim = _int(attn, "key_value_proj_dim")
                    heads = features(attn.get_submodule("q"), "out") // head_dim
                    is_self = path.endswith("SelfAttention")
                    sites.append(
                        AttentionSite(
                            name=f"{prefix}.{i}.{path}",
                            stack=stack,
                            layer=i,
                            kind="self" if is_self else "cross",
                            num_heads=heads,
                            head_dim=head_dim,
                            num_kv_heads=heads,
                            module=attn,
                            out_proj=attn.get_submodule("o"),
                            bias_group=f"{stack}.self" if is_self else None,
                        )
                    )
            elif fam == "gpt2":
                for path in ("attn", "crossattention"):
                    if not hasattr(layer, path):
                        continue
                    attn = layer.get_submodule(path)
                    heads = _int(attn, "num_heads")
                    sites.append(
                        AttentionSite(
                            name=f"{prefix}.{i}.{path}",
                            stack=stack,
                            layer=i,
                            kind="self" if path == "attn" else "cross",
                            num_heads=heads,
                            head_dim=_int(attn, "head_dim"),
                            num_kv_heads=heads,
                            module=attn,
                            out_proj=attn.get_submodule("c_proj"),
                        )
                    )
            else:
                attn = layer.get_submodule("self_attn")
                head_dim = _int(attn, "head_dim")
                sites.append(
                    AttentionSite(
                        name=f"{prefix}.{i}.self_attn",
                        stack=stack,
                        layer=i,
                        kind="self",
                        num_heads=features(attn.get_submodule("q_proj"), "out") // head_dim,
                        head_dim=head_dim,
                        num_kv_heads=features(attn.get_submodule("k_proj"), "out") // head_dim,
                        module=attn,
                        out_proj=attn.get_submodule("o_proj"),
                    )
                )
    return sites


def ffn_sites(model: PreTrainedModel) -> list[FfnSite]:
    """Every feed-forward block, stack by stack, layer by layer."""
    fam = family(model)
    sites: list[FfnSite] = []
    for stack, layers in layer_stacks(model).items():
        prefix = stack_path(model, stack)
        for i, layer in enumerate(layers):
            if fam == "t5":
                path, out_name = f"layer.{len(_module_list(layer, 'layer')) - 1}.DenseReluDense", "wo"
            else:
                path, out_name = "mlp", ("c_proj" if fam == "gpt2" else "down_proj")
            ffn = layer.get_submodule(path)
            out_proj = ffn.get_submodule(out_name)
            sites.append(FfnSite(f"{prefix}.{i}.{path}", stack, i, features(out_proj, "in"), ffn, out_proj))
    return sites


def tied_attention_sites(sites: list[AttentionSite]) -> list[list[str]]:
    """The names of the sites that must keep the same heads, one list per shared position-bias table."""
    groups: dict[str, list[str]] = {}
    for site in sites:
        if site.bias_group is not None:
            groups.setdefault(site.bias_group, []).append(site.name)
    return [names for names in groups.values() if len(names) > 1]


def configs(model: PreTrainedModel) -> list[PretrainedConfig]:
    """Every distinct config object the model holds (T5 keeps a copy per stack, read by its attention modules): an
    operator that changes a shape updates them all."""
    found: dict[int, PretrainedConfig] = {id(model.config): model.config}
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if isinstance(cfg, PretrainedConfig):
            found.setdefault(id(cfg), cfg)
    return list(found.values())
