"""Where the per-token statistics come from in a Hugging Face model: its generating layers and their projections.

The generating stack is the decoder of a seq2seq model, or the whole stack of a causal one. For each layer we find
the self-attention output projection (its input holds every head's output for the newest position) and the FFN
output projection (its input holds the FFN activations), by the module names the main families use.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel

from evostream.core.errors import EvoError

ATTN_OUT = (
    "SelfAttention.o",
    "self_attn.o_proj",
    "self_attn.out_proj",
    "attn.c_proj",
    "attn.out_proj",
    "attention.dense",
    "self_attention.dense",
    "attn.o_proj",
)
FFN_OUT = (
    "DenseReluDense.wo",
    "mlp.down_proj",
    "mlp.c_proj",
    "mlp.fc2",
    "fc2",
    "mlp.dense_4h_to_h",
    "feed_forward.w2",
    "mlp.fc_out",
)
LAYER_LISTS = ("block", "layers", "h", "layer", "blocks")


class AnatomyError(EvoError):
    """The model's layers or projections could not be located."""


@dataclass(frozen=True)
class Anatomy:
    """The generating layers of a model and, per layer, its attention-output and FFN-output projections."""

    is_seq2seq: bool
    layers: tuple[nn.Module, ...]
    attn_out: tuple[nn.Module | None, ...]
    ffn_out: tuple[nn.Module | None, ...]
    num_heads: int

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def _find(layer: nn.Module, suffixes: tuple[str, ...]) -> nn.Module | None:
    modules: dict[str, nn.Module] = dict(layer.named_modules())
    for suffix in suffixes:
        for name, mod in modules.items():
            if name == suffix or name.endswith("." + suffix):
                return mod
    return None


def _layer_list(stack: nn.Module, expected: int | None) -> nn.ModuleList:
    for attr in LAYER_LISTS:
        cand = getattr(stack, attr, None)
        if isinstance(cand, nn.ModuleList) and (expected is None or len(cand) == expected):
            return cand
    lists = [m for m in stack.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if expected is not None:
        lists = [m for m in lists if len(m) == expected]
    if not lists:
        raise AnatomyError(f"cannot find the layer list of {type(stack).__name__}")
    return max(lists, key=len)


def anatomy(model: PreTrainedModel) -> Anatomy:
    """Locate the generating layers of ``model``."""
    cfg = model.config
    is_seq2seq = bool(getattr(cfg, "is_encoder_decoder", False))
    if is_seq2seq:
        stack = model.get_decoder()
        expected = getattr(cfg, "num_decoder_layers", None) or getattr(cfg, "decoder_layers", None)
        heads = getattr(cfg, "num_heads", None) or getattr(cfg, "decoder_attention_heads", None)
    else:
        stack = model.base_model
        expected = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
        heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    if heads is None:
        raise AnatomyError(f"{type(model).__name__}: cannot tell the number of attention heads from its config")
    layers = tuple(_layer_list(stack, expected))
    return Anatomy(
        is_seq2seq=is_seq2seq,
        layers=layers,
        attn_out=tuple(_find(layer, ATTN_OUT) for layer in layers),
        ffn_out=tuple(_find(layer, FFN_OUT) for layer in layers),
        num_heads=int(heads),
    )
