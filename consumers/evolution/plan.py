"""The analysis of a model and what it suggests to prune: ranked entries, least important first, each explained.

Scores of different kinds are not on one scale (a head's normalised gate gradient, a neuron's Taylor score, a layer's
input/output cosine), so every entry carries its ``rank`` within its kind: the fraction of that kind's units that
are at most as important (0 for rows nothing used). The plan is ordered by that rank, so the top of the list holds
the bottom of every kind, and each line says what was measured and where it stands.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evostream.consumers.evolution.batches import Pair
from evostream.consumers.evolution.importance import (
    EmbeddingUsage,
    FloatArray,
    HeadStats,
    NeuronStats,
    Progress,
    embedding_usage,
    generating_ffn_sites,
    measure,
    neurons_from_counts,
)
from evostream.consumers.evolution.sites import attention_sites, ffn_sites, tied_attention_sites
from evostream.core.errors import EvolutionError

Kind = Literal["embedding_rows", "neurons", "head", "layer"]
KINDS: tuple[Kind, ...] = ("embedding_rows", "neurons", "head", "layer")
"""Also the order of entries of equal rank: the cheapest to remove first."""
SHOWN_IDS = 12


@dataclass(frozen=True)
class PlanEntry:
    """One thing the analysis suggests removing. ``site`` is the attention or FFN site's module path, the stack
    name for a layer, or ``"embeddings"``; ``units`` are head indices (one), neuron indices, the layer index (one)
    or token ids. ``score`` is the kind's own measure (head: normalised importance; neurons: the block's mean
    Taylor score, or firing rate from traffic alone; layer: input/output cosine; rows: 0 uses)."""

    kind: Kind
    site: str
    units: tuple[int, ...]
    score: float
    rank: float
    explanation: str

    def __str__(self) -> str:
        return self.explanation


@dataclass(frozen=True)
class Analysis:
    """What was measured on a model: per-site head and neuron statistics, layer redundancy per stack, the embedding
    rows logged traffic used; ``labels`` gives each site's human name (``decoder layer 2 cross-attention``)."""

    heads: dict[str, HeadStats]
    neurons: dict[str, NeuronStats]
    layers: dict[str, FloatArray]
    labels: dict[str, str]
    loss: float
    examples: int
    traffic: dict[str, NeuronStats] = field(default_factory=dict)
    embeddings: EmbeddingUsage | None = None
    protected_tokens: frozenset[int] = frozenset()
    """Token ids never offered for removal (special tokens: pad, EOS, the decoder start)."""
    group_sizes: dict[str, int] = field(default_factory=dict)
    """Query heads per KV head of each attention site (grouped-query attention prunes whole groups)."""
    tied_sites: tuple[tuple[str, ...], ...] = ()
    """Attention sites that must keep the same heads (T5 self-attention of a stack shares one position bias)."""

    def head_scores(self) -> dict[str, FloatArray]:
        """Per attention site, each head's normalised importance (higher = keep), for ``operators.plan_heads``."""
        return {name: s.normalized for name, s in self.heads.items()}

    def neuron_scores(self) -> dict[str, FloatArray]:
        """Per FFN site, each neuron's Taylor score, or its served firing rate when only traffic was given
        (higher = keep), for ``operators.top_neurons``."""
        return {name: _neuron_score(s) for name, s in (self.neurons or self.traffic).items()}

    def plan(
        self, kinds: Collection[Kind] = KINDS, neuron_block: int = 32, max_entries: int | None = None
    ) -> list[PlanEntry]:
        """Ranked entries of ``kinds``, least important first. FFN neurons come in blocks of ``neuron_block`` (each
        site's neurons in score order), since removing single neurons saves little."""
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise EvolutionError(f"unknown plan kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        if neuron_block < 1:
            raise EvolutionError(f"neuron_block must be at least 1, got {neuron_block}")
        entries: list[PlanEntry] = []
        if "embedding_rows" in kinds:
            entries += self._rows()
        if "neurons" in kinds:
            entries += self._neurons(neuron_block)
        if "head" in kinds:
            entries += self._heads()
        if "layer" in kinds:
            entries += self._layers()
        entries.sort(key=lambda e: (e.rank, KINDS.index(e.kind), e.score))
        return entries if max_entries is None else entries[:max_entries]

    def lines(
        self, kinds: Collection[Kind] = KINDS, neuron_block: int = 32, max_entries: int | None = None
    ) -> list[str]:
        """The plan as numbered text lines, with a header saying what it was measured on."""
        head = f"structure measured on {self.examples} examples (mean loss {self.loss:.4g})"
        if self.traffic:
            steps = next(iter(self.traffic.values())).tokens
            head += f", FFN firing of {steps:,} served steps"
        if self.embeddings is not None:
            head += f", {self.embeddings.tokens:,} logged tokens"
        plan = self.plan(kinds, neuron_block, max_entries)
        return [head, *(f"{i + 1:>3}. {e.explanation}" for i, e in enumerate(plan))]

    # --- entries per kind ---------------------------------------------------------------------------------------
    def _label(self, site: str) -> str:
        return self.labels.get(site, site)

    def _rows(self) -> list[PlanEntry]:
        if self.embeddings is None:
            return []
        unused = [int(i) for i in self.embeddings.unused if int(i) not in self.protected_tokens]
        if not unused:
            return []
        vocab = len(self.embeddings.counts)
        text = (
            f"embeddings: {len(unused)} of {vocab} rows never used in {self.embeddings.tokens:,} logged tokens "
            f"(ids {_ids(unused)}; special tokens kept)"
        )
        return [PlanEntry("embedding_rows", "embeddings", tuple(unused), 0.0, 0.0, text)]

    def _heads(self) -> list[PlanEntry]:
        flat = [(float(s.normalized[h]), name, h) for name, s in self.heads.items() for h in range(len(s.raw))]
        ranks = _ranks(np.array([v for v, _, _ in flat]))
        out = []
        for (value, name, h), rank in zip(flat, ranks, strict=True):
            raw = float(self.heads[name].raw[h])
            text = (
                f"{self._label(name)} head {h}: importance {value:.3g} normalised ({raw:.3g} raw E|dL/dg|), "
                f"{_standing(rank, len(flat), 'heads')}{self._head_note(name, h)}"
            )
            out.append(PlanEntry("head", name, (h,), value, rank, text))
        return out

    def _head_note(self, name: str, h: int) -> str:
        note = ""
        g = self.group_sizes.get(name, 1)
        if g > 1:
            mates = [str(i) for i in range(h // g * g, (h // g + 1) * g) if i != h]
            note += f"; shares KV head {h // g} with head{'s' if len(mates) > 1 else ''} {', '.join(mates)}"
        if any(name in tied for tied in self.tied_sites):
            note += "; tied across the stack (one shared position bias: its self-attention layers keep the same heads)"
        return note

    def _neurons(self, block: int) -> list[PlanEntry]:
        names = list(self.neurons) or list(self.traffic)
        if not names:
            return []
        by_taylor = bool(self.neurons)
        scores = {n: _neuron_score(self.neurons[n] if by_taylor else self.traffic[n]) for n in names}
        flat = np.concatenate([scores[n] for n in names])
        ranks = _ranks(flat)
        rank_of: dict[str, FloatArray] = {}
        start = 0
        for n in names:
            rank_of[n] = ranks[start : start + len(scores[n])]
            start += len(scores[n])
        out = []
        for n in names:
            order = np.argsort(scores[n], kind="stable")
            for i in range(0, len(order), block):
                ids = order[i : i + block]
                rank = float(rank_of[n][ids].max())
                score = float(scores[n][ids].mean())
                out.append(
                    PlanEntry(
                        "neurons",
                        n,
                        tuple(int(j) for j in ids),
                        score,
                        rank,
                        self._neuron_text(n, ids, score, rank, len(flat), by_taylor),
                    )
                )
        return out

    def _neuron_text(
        self, name: str, ids: npt.NDArray[np.int64], score: float, rank: float, total: int, by_taylor: bool
    ) -> str:
        measured = f"mean Taylor |a dL/da| {score:.3g}" if by_taylor else f"mean firing rate {score:.3%}"
        parts = [f"{self._label(name)}: {len(ids)} neurons, {measured}, {_standing(rank, total, 'neurons')}"]
        if name in self.neurons:
            rate = self.neurons[name].firing_rate[ids]
            parts.append(f"fire on {rate.mean():.1%} of example tokens ({int((rate == 0).sum())} never)")
        if name in self.traffic:
            rate = self.traffic[name].firing_rate[ids]
            parts.append(f"{rate.mean():.1%} of served steps ({int((rate == 0).sum())} never)")
        return "; ".join(parts)

    def _layers(self) -> list[PlanEntry]:
        flat = [(float(v), stack, i) for stack, cos in self.layers.items() for i, v in enumerate(cos)]
        ranks = _ranks(np.array([-v for v, _, _ in flat]))  # the more redundant, the less important
        out = []
        for (value, stack, i), rank in zip(flat, ranks, strict=True):
            text = (
                f"{stack} layer {i}: output/input cosine {value:.3f} (1 = passes its input through), "
                f"{_standing(rank, len(flat), 'layers', most='redundant')}"
            )
            out.append(PlanEntry("layer", stack, (i,), value, rank, text))
        return out


def _neuron_score(stats: NeuronStats) -> FloatArray:
    return stats.taylor if stats.taylor is not None else stats.firing_rate


def _ranks(values: FloatArray) -> FloatArray:
    """For each value, the fraction of values at most it (ties share the higher rank)."""
    if values.size == 0:
        return values.astype(np.float64)
    ordered = np.sort(values)
    return np.searchsorted(ordered, values, side="right").astype(np.float64) / values.size


def _standing(rank: float, total: int, what: str, most: str = "") -> str:
    count = round(rank * total)
    if most:
        return f"among the {count} most {most} of {total} {what}" if count > 1 else f"the most {most} of {total} {what}"
    return f"lowest {math.ceil(rank * 100 - 1e-9)}% of {total} {what}"


def _ids(ids: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:SHOWN_IDS])
    return shown + (f", ... {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def site_labels(model: PreTrainedModel) -> dict[str, str]:
    """Human names of the attention and FFN sites: ``decoder layer 2 cross-attention``, ``encoder layer 0 FFN``;
    with grouped-query attention the KV-head count is named too."""
    labels: dict[str, str] = {}
    for a in attention_sites(model):
        what = "cross-attention" if a.kind == "cross" else "attention"
        kv = f" ({a.num_kv_heads} KV heads)" if a.num_kv_heads != a.num_heads else ""
        labels[a.name] = f"{a.stack} layer {a.layer} {what}{kv}"
    for f in ffn_sites(model):
        labels[f.name] = f"{f.stack} layer {f.layer} FFN"
    return labels


def special_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids a model needs whatever the traffic: the tokenizer's special tokens and the config's pad/EOS/BOS/start."""
    ids = {int(i) for i in tokenizer.all_special_ids}
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id"):
        value = getattr(model.config, attr, None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def analyze(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Pair],
    counts: tuple[npt.ArrayLike, int] | None = None,
    token_ids: Iterable[Iterable[int]] | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Analysis:
    """Measure ``model`` on ``examples`` (heads, neurons, layers in one pass), and add what logged traffic shows:
    ``counts`` = (summed ``NeuronCounts`` of this model version [num_layers, width], their steps) and
    ``token_ids`` = the token id sequences of logged prompts and outputs."""
    m = measure(model, tokenizer, examples, batch_size=batch_size, progress=progress)
    traffic = neurons_from_counts(counts[0], counts[1], generating_ffn_sites(model)) if counts is not None else {}
    usage = None
    if token_ids is not None:
        usage = embedding_usage(token_ids, int(model.get_input_embeddings().weight.shape[0]))
        if progress is not None:
            progress(f"embedding usage: {usage.used} of {len(usage.counts)} rows in {usage.tokens} tokens")
    sites = attention_sites(model)
    return Analysis(
        heads=m.heads,
        neurons=m.neurons,
        layers=m.layers,
        labels=site_labels(model),
        loss=m.loss,
        examples=m.examples,
        traffic=traffic,
        embeddings=usage,
        protected_tokens=special_token_ids(model, tokenizer),
        group_sizes={a.name: a.group_size for a in sites},
        tied_sites=tuple(tuple(names) for names in tied_attention_sites(sites)),
    )
