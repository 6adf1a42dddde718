"""Grow capacity with a soft landing: a low-rank residual update on chosen projections, trained alone.

Each adapted projection computes ``base(x) + alpha * up(down(x))`` (``down``: in -> rank, ``up``: rank -> out, no
bias). ``up`` starts at zero, so a fresh adapter computes exactly what the parent computes, at any alpha; ``alpha``
is 0 at the start of training and ramps linearly to 1 over its first part, so the update lands softly on a model
that keeps serving its old answers meanwhile. Only ``down`` and ``up`` train: every backbone parameter is frozen
(``requires_grad`` False), and the backbone runs in eval mode (no dropout) so that its activations are the ones it
serves with.

Saving: the update is linear in ``x``, so ``merge_adapter`` folds ``alpha * up @ down`` into the projection's own
weight. The result is a plain model of the family, with the parent's architecture and parameter count, which
``save_pretrained`` writes and the family's own ``from_pretrained`` (and ``models.loading.load_model``) reload: no
side file and no custom loader. The adapter's extra parameters live only while it trains.

Sites are module paths: a projection (``nn.Linear`` or GPT-2's ``Conv1D``), or a feed-forward or attention block
named as ``consumers.evolution.sites`` names them, which means its output projection. The default is every FFN's
output projection.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from evostream.consumers.evolution.batches import Pair, teacher_forcing
from evostream.consumers.evolution.sites import attention_sites, features, ffn_sites
from evostream.core.errors import EvolutionError
from evostream.models.suite.tasks import Example

"""(prompt, target answer)."""


class LowRankAdapter(nn.Module):
    """A projection plus ``alpha * up(down(x))``; ``up`` starts at zero (the identity update)."""

    def __init__(self, base: nn.Linear | Conv1D, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        w = base.weight
        n_in, n_out = features(base, "in"), features(base, "out")
        down = torch.randn(rank, n_in, generator=generator, dtype=torch.float32) / math.sqrt(n_in)
        self.down = nn.Parameter(down.to(device=w.device, dtype=w.dtype))
        self.up = nn.Parameter(torch.zeros(n_out, rank, device=w.device, dtype=w.dtype))
        self.alpha = 0.0

    @property
    def weight(self) -> Tensor:
        """The base projection's weight (the families' code reads ``.weight`` of their projections)."""
        weight: Tensor = self.base.weight
        return weight

    def delta(self) -> Tensor:
        """The update as a weight in the base's layout (``out x in`` for Linear, ``in x out`` for Conv1D)."""
        d = self.alpha * (self.up @ self.down)
        return d.T if isinstance(self.base, Conv1D) else d

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.base(x)
        if self.alpha == 0.0:
            return y
        return y + self.alpha * nnf.linear(nnf.linear(x, self.down), self.up)

    def extra_repr(self) -> str:
        return f"rank={self.down.shape[0]}, alpha={self.alpha}"


def adapters(model: nn.Module) -> dict[str, LowRankAdapter]:
    """The adapters of ``model`` by the path of the projection they wrap."""
    return {path: m for path, m in model.named_modules() if isinstance(m, LowRankAdapter)}


def adapter_parameter_count(model: nn.Module) -> int:
    """Elements of every adapter's ``down`` and ``up``: what ``add_adapter`` added."""
    return sum(a.down.numel() + a.up.numel() for a in adapters(model).values())


def set_alpha(model: nn.Module, alpha: float) -> None:
    """Blend every adapter of ``model`` at ``alpha`` (0: the parent's outputs; 1: the full update)."""
    if not 0.0 <= alpha <= 1.0:
        raise EvolutionError(f"alpha blends the adapter in and must be in [0, 1], got {alpha}")
    for a in adapters(model).values():
        a.alpha = float(alpha)


def _resolve(model: PreTrainedModel, sites: Sequence[str] | None) -> list[str]:
    """The projection paths the sites mean (a block means its output projection)."""
    ffns = ffn_sites(model)
    paths_of = {id(m): path for path, m in model.named_modules()}
    if sites is None:
        return [paths_of[id(s.out_proj)] for s in ffns]
    blocks = {s.name: s.out_proj for s in ffns} | {s.name: s.out_proj for s in attention_sites(model)}
    modules = dict(model.named_modules())
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    resolved: list[str] = []
    for site in sites:
        if site in blocks:
            path = paths_of[id(blocks[site])]
        elif site in modules and isinstance(modules[site], nn.Linear | Conv1D):
            path = site
        elif site in modules:
            raise EvolutionError(
                f"site {site!r} is a {type(modules[site]).__name__}: name a projection (Linear or "
                f"Conv1D) or an FFN/attention block, e.g. {next(iter(blocks))!r}"
            )
        else:
            raise EvolutionError(
                f"{type(model).__name__} has no module {site!r}; FFN blocks are e.g. "
                f"{', '.join(s.name for s in ffns[:2])}"
            )
        if id(modules[path].weight) in embeddings:
            raise EvolutionError(
                f"site {site!r}: {path}'s weight is tied to an embedding; merging an update into it "
                f"would change the embedding too"
            )
        if path in resolved:
            raise EvolutionError(f"site {site!r} names projection {path} a second time: each gets one adapter")
        resolved.append(path)
    if not resolved:
        raise EvolutionError("no sites given: pass None for every FFN's output projection, or name some")
    return resolved


def add_adapter(
    model: PreTrainedModel, sites: Sequence[str] | None = None, rank: int = 16, seed: int = 0
) -> PreTrainedModel:
    """A new model: ``model`` frozen, with a rank-``rank`` adapter (alpha 0) on each site; ``model`` is untouched."""
    if rank < 1:
        raise EvolutionError(f"an adapter's rank must be at least 1, got {rank}")
    if adapters(model):
        raise EvolutionError("the model already has adapters: merge_adapter(model) first, then add new ones")
    new = copy.deepcopy(model).eval()
    paths = _resolve(new, sites)
    for p in new.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    for path in paths:
        parent_path, _, attr = path.rpartition(".")
        parent = new.get_submodule(parent_path)
        base = getattr(parent, attr)
        setattr(parent, attr, LowRankAdapter(base, rank, g))
    return new


def alpha_at(step: int, steps: int, ramp: float) -> float:
    """Alpha during step ``step`` (0-based) of ``steps``: linear from 1/n up to 1 over the first ``ramp`` share
    (n = that many steps; the first step already has a little, so ``up`` gets a gradient), then 1."""
    ramp_steps = max(1, round(ramp * steps))
    return min(1.0, (step + 1) / ramp_steps)


@dataclass
class AdapterReport:
    steps: int
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    """Loss of every step."""
    alphas: list[float] = field(default_factory=list)
    """Alpha of every step."""


def _pairs(examples: Sequence[Example] | Sequence[Pair]) -> list[Pair]:
    return [(e.prompt, e.answer) if isinstance(e, Example) else (e[0], e[1]) for e in examples]


batch_for = teacher_forcing
"""The teacher-forcing batch the adapter trains on (``consumers.evolution.batches``)."""


def answer_loss(model: PreTrainedModel, batch: dict[str, Tensor]) -> Tensor:
    """Mean cross-entropy over the answer tokens (the families' own loss: causal models shift the labels)."""
    loss: Tensor = model(**batch).loss
    return loss


def train_adapter(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example] | Sequence[Pair],
    steps: int,
    lr: float,
    progress: Callable[[str], None] | None = None,
    batch_size: int = 16,
    ramp: float = 0.3,
    seed: int = 0,
) -> AdapterReport:
    """Train the adapters of ``model`` in place on ``examples`` (cycled in shuffled batches) for ``steps`` AdamW
    steps at ``lr``, alpha ramping from near 0 to 1 over the first ``ramp`` share of the steps (see ``alpha_at``)
    and left at 1. The backbone is frozen here too (``requires_grad`` False) and never changes."""
    found = adapters(model)
    if not found:
        raise EvolutionError("the model has no adapter to train: add_adapter(model) first")
    if steps < 1 or lr <= 0 or batch_size < 1 or not 0.0 < ramp <= 1.0:
        raise EvolutionError(
            f"train_adapter needs steps >= 1, lr > 0, batch_size >= 1 and ramp in (0, 1]; got "
            f"steps={steps}, lr={lr}, batch_size={batch_size}, ramp={ramp}"
        )
    pairs = _pairs(examples)
    if not pairs:
        raise EvolutionError("train_adapter needs examples to train on")
    trainable = [p for a in found.values() for p in (a.down, a.up)]
    owned = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in owned)
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    report = AdapterReport(steps=steps)
    every = max(1, steps // 10)
    model.eval()
    t0 = time.perf_counter()
    with torch.enable_grad():
        for step in range(steps):
            while len(order) < batch_size:
                order.extend(torch.randperm(len(pairs), generator=g).tolist())
            chosen, order = order[:batch_size], order[batch_size:]
            alpha = alpha_at(step, steps, ramp)
            set_alpha(model, alpha)
            loss = answer_loss(model, batch_for(tokenizer, [pairs[i] for i in chosen], seq2seq, device))
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            opt.zero_grad(set_to_none=True)
            report.losses.append(loss.item())
            report.alphas.append(alpha)
            if progress is not None and ((step + 1) % every == 0 or step + 1 == steps):
                progress(
                    f"adapter: step {step + 1}/{steps} alpha {alpha:.2f} loss {report.losses[-1]:.4f} "
                    f"{time.perf_counter() - t0:.0f}s"
                )
    set_alpha(model, 1.0)
    report.seconds = time.perf_counter() - t0
    return report


def merge_adapter(model: PreTrainedModel) -> PreTrainedModel:
    """A new plain model of the family: each adapter's ``alpha * up @ down`` added to its projection's weight, the
    adapter modules gone, every parameter trainable again; ``model`` is untouched."""
    if not adapters(model):
        raise EvolutionError("the model has no adapter to merge")
    new = copy.deepcopy(model)
    with torch.no_grad():
        for path, adapter in adapters(new).items():
            adapter.base.weight.add_(adapter.delta())
            parent_path, _, attr = path.rpartition(".")
            setattr(new.get_submodule(parent_path), attr, adapter.base)
    for p in new.parameters():
        p.requires_grad_(True)
    return new


def save_adapted(model: PreTrainedModel, folder: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Merge the adapters and write the plain model with ``save_pretrained`` (and the tokenizer when given, which
    ``load_model`` needs in the folder)."""
    out = Path(folder)
    merge_adapter(model).save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
