"""A recipe says how strongly to compress; ``build`` turns a parent into a student by it, guided by the analysis.

Order: layers first (the most redundant layers of the generating stack, whose output most resembles its input),
then heads (the least important by gate gradient, the same count kept in every attention block since a config
holds one head count), then FFN neurons (the least important by Taylor score, else the least firing). Importance
is measured again after each step, on the model as it is then: what a removed layer did moves elsewhere."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evostream.consumers.evolution import importance as analyze
from evostream.consumers.evolution.operators import structural
from evostream.consumers.evolution.sites import attention_sites, ffn_sites, layer_stacks
from evostream.core.errors import EvolutionError

Pair = tuple[str, str]


@dataclass(frozen=True)
class Recipe:
    drop_layers: int = 0
    """Layers removed from the generating stack (the decoder of a seq2seq model)."""
    drop_encoder_layers: int = 0
    keep_heads: float = 1.0
    """Fraction of every attention block's heads kept (rounded to whole heads, or whole key/value groups)."""
    keep_ffn: float = 1.0
    """Fraction of every FFN's neurons kept."""
    adapter_rank: int = 0
    """After distillation, a low-rank adapter of this rank on every FFN output projection, trained alone on the same
    traffic (backbone frozen, alpha ramping in) and merged into the weights: more recovery, no extra parameters."""
    vocab: bool = False
    """Keep only the embedding and output-head rows of tokens the logged traffic and the suite use (a new tokenizer
    ships with the candidate; text with other bytes reads them as unknown)."""
    int8: bool = False
    """Store the recovered student's projections as weight-only int8 (smaller on disk; served dequantized)."""

    def __post_init__(self) -> None:
        if not (0 < self.keep_heads <= 1 and 0 < self.keep_ffn <= 1):
            raise EvolutionError(f"keep fractions must be in (0, 1], got heads {self.keep_heads}, ffn {self.keep_ffn}")
        if self.drop_layers < 0 or self.drop_encoder_layers < 0:
            raise EvolutionError("a recipe cannot drop a negative number of layers")
        if self.adapter_rank < 0:
            raise EvolutionError(f"an adapter's rank cannot be negative, got {self.adapter_rank}")

    @property
    def student_key(self) -> tuple[int, int, float, float, int]:
        """What the trained student depends on: recipes equal in it share one build and one distillation."""
        return (self.drop_layers, self.drop_encoder_layers, self.keep_heads, self.keep_ffn, self.adapter_rank)

    @property
    def name(self) -> str:
        parts = []
        if self.drop_layers:
            parts.append(f"drop{self.drop_layers}")
        if self.drop_encoder_layers:
            parts.append(f"enc-drop{self.drop_encoder_layers}")
        if self.keep_heads < 1:
            parts.append(f"heads{self.keep_heads:g}")
        if self.keep_ffn < 1:
            parts.append(f"ffn{self.keep_ffn:g}")
        if self.adapter_rank:
            parts.append(f"adapter{self.adapter_rank}")
        if self.vocab:
            parts.append("vocab")
        if self.int8:
            parts.append("int8")
        return "+".join(parts) or "identity"

    def params(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def parse(text: str) -> Recipe:
        """``drop=1,heads=0.5,ffn=0.5,enc-drop=0,adapter=8,vocab=1,int8=1`` -> a Recipe."""
        keys = {
            "drop": "drop_layers",
            "enc-drop": "drop_encoder_layers",
            "heads": "keep_heads",
            "ffn": "keep_ffn",
            "adapter": "adapter_rank",
            "vocab": "vocab",
            "int8": "int8",
        }
        ints = ("drop", "enc-drop", "adapter")
        values: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            k, _, v = item.partition("=")
            if k not in keys or not v:
                raise EvolutionError(f"recipe item {item!r}: expected one of {', '.join(k + '=N' for k in keys)}")
            try:
                values[keys[k]] = int(v) if k in ints else bool(int(v)) if k in ("int8", "vocab") else float(v)
            except ValueError as e:
                raise EvolutionError(f"recipe item {item!r}: {v!r} is not a number") from e
        return Recipe(**values)


def _generating_stack(model: PreTrainedModel) -> str:
    return "decoder" if getattr(model.config, "is_encoder_decoder", False) else next(iter(layer_stacks(model)))


def _drop(
    model: PreTrainedModel,
    stack: str,
    n: int,
    examples: Sequence[Pair],
    tok: PreTrainedTokenizerBase,
    say: Callable[[str], None],
) -> PreTrainedModel:
    if n == 0:
        return model
    depth = len(layer_stacks(model)[stack])
    if n >= depth:
        raise EvolutionError(f"cannot drop {n} of the {depth} layers of the {stack}: at least one must stay")
    redundancy = analyze.layer_redundancy(model, tok, examples)[stack]
    drop = sorted(int(i) for i in np.argsort(-np.asarray(redundancy))[:n])
    say(
        f"build: dropping {stack} layers {drop} (input/output similarity "
        f"{', '.join(f'{redundancy[i]:.3f}' for i in drop)})"
    )
    return structural.drop_layers(model, {stack: drop})


def build(
    parent: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    recipe: Recipe,
    examples: Sequence[Pair],
    progress: Callable[[str], None] = lambda _: None,
) -> PreTrainedModel:
    """A new model: ``parent`` compressed by ``recipe`` (``parent`` itself is untouched); ``examples`` are the
    (prompt, answer) pairs importance is measured on."""
    model = parent
    model = _drop(model, _generating_stack(model), recipe.drop_layers, examples, tok, progress)
    if recipe.drop_encoder_layers:
        model = _drop(model, "encoder", recipe.drop_encoder_layers, examples, tok, progress)
    if recipe.keep_heads < 1:
        sites = attention_sites(model)
        heads = sites[0].num_heads
        group = max(s.group_size for s in sites)
        n_keep = max(group, round(heads * recipe.keep_heads / group) * group)
        scores = {name: st.raw.tolist() for name, st in analyze.head_importance(model, tok, examples).items()}
        progress(f"build: keeping {n_keep} of {heads} heads in each of {len(sites)} attention blocks")
        model = structural.prune_heads(model, structural.plan_heads(model, scores, n_keep))
    if recipe.keep_ffn < 1:
        sites_f = ffn_sites(model)
        width = sites_f[0].width
        n_keep = max(1, math.floor(width * recipe.keep_ffn))
        stats = analyze.neuron_importance(model, tok, examples)
        scores_f = {n: (st.taylor if st.taylor is not None else st.firing_rate).tolist() for n, st in stats.items()}
        progress(f"build: keeping {n_keep} of {width} neurons in each of {len(sites_f)} FFNs")
        model = structural.prune_ffn(model, structural.top_neurons(scores_f, n_keep))
    return model
