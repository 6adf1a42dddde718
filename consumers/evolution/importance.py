"""What each part of a model contributes, measured on (prompt, answer) examples with the model's own loss.

One teacher-forced pass per batch measures, with hooks on the sites of ``sites.py``:

* head importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): every head's output is
  multiplied by a gate g = 1 (transformers 5 has no ``head_mask``, so a forward pre-hook on the site's output
  projection scales each head's slice), and ``I_h = E_x |dL_x/dg_h|``. The gate has one entry per example, so one
  backward pass gives each example's own gradient;
* FFN neurons: the fraction of tokens on which a neuron's activation is > 0, and the first-order Taylor score
  ``E_token |a * dL/da|`` (Molchanov et al. 2017), the loss change estimated for zeroing it there;
* layers: the mean cosine similarity of a layer's input and output hidden states (near 1: the layer adds little).

The loss of an example is the mean cross-entropy over its answer tokens (seq2seq: the labels; causal: the answer
after the prompt), so every example weighs the same whatever its length. Tokens counted for a site are the real
ones of its stack: the encoder's prompt tokens, the decoder's answer tokens, a causal model's prompt and answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as nnf
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evostream.consumers.evolution.batches import Pair, teacher_forcing
from evostream.consumers.evolution.sites import AttentionSite, FfnSite, attention_sites, ffn_sites, layer_stacks
from evostream.core.errors import EvolutionError

FloatArray = npt.NDArray[np.float64]
Progress = Callable[[str], None]
GENERATING_STACK = "decoder"
"""The stack whose FFN firing the producer counts (``sites.layer_stacks`` names a causal model's only stack so)."""


@dataclass(frozen=True)
class HeadStats:
    """Per head of one attention site: ``raw`` = E_x |dL_x/dg_h|, ``normalized`` = raw over its L2 norm across the
    site's heads (the paper's per-layer normalisation, which makes layers comparable for a global ranking), and
    ``grad_mean`` = the signed mean gradient (the first-order loss change per unit of gate)."""

    raw: FloatArray
    normalized: FloatArray
    grad_mean: FloatArray
    examples: int


@dataclass(frozen=True)
class NeuronStats:
    """Per neuron of one FFN site: the fraction of tokens on which it fired (activation > 0), and E|a * dL/da| over
    tokens when measured on examples (None when ranked from the producer's firing counts alone)."""

    firing_rate: FloatArray
    taylor: FloatArray | None
    tokens: int
    source: Literal["examples", "traffic"]

    def dormant(self, max_rate: float = 0.0) -> npt.NDArray[np.int64]:
        """Indices of the neurons that fired on at most ``max_rate`` of the tokens."""
        return np.flatnonzero(self.firing_rate <= max_rate).astype(np.int64)


@dataclass(frozen=True)
class Measurement:
    """Everything one pass over the examples measured; ``loss`` is the mean per-example loss with all gates at 1."""

    heads: dict[str, HeadStats]
    neurons: dict[str, NeuronStats]
    layers: dict[str, FloatArray]
    loss: float
    examples: int


@dataclass(frozen=True)
class EmbeddingUsage:
    """How often each vocabulary row was seen in ``tokens`` token ids."""

    counts: npt.NDArray[np.int64]
    tokens: int

    @property
    def unused(self) -> npt.NDArray[np.int64]:
        """The ids never seen, ascending."""
        return np.flatnonzero(self.counts == 0).astype(np.int64)

    @property
    def used(self) -> int:
        return int(np.count_nonzero(self.counts))


# --- batches and losses ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Batch:
    inputs: dict[str, Tensor]
    masks: dict[str, Tensor]
    """Per role ("encoder", "main"): [B, T] bool, the real tokens of the hidden states a hook on that role sees."""
    size: int


def _encode(tok: PreTrainedTokenizerBase, pairs: Sequence[Pair], seq2seq: bool, device: torch.device) -> _Batch:
    """Teacher forcing inputs. Seq2seq: prompt to the encoder, answer as labels. Causal: prompt, " " answer, EOS,
    with labels only on the answer part (the format the distillation trains on)."""
    inputs = teacher_forcing(tok, pairs, seq2seq, device)
    if seq2seq:
        masks = {"encoder": inputs["attention_mask"].bool(), "main": inputs["labels"] != -100}
    else:
        masks = {"main": inputs["attention_mask"].bool()}
    return _Batch(inputs, masks, len(pairs))


def _example_losses(logits: Tensor, labels: Tensor, seq2seq: bool) -> Tensor:
    """[B] mean cross-entropy over each example's answer tokens."""
    if not seq2seq:  # logits at position i predict token i+1
        logits, labels = logits[:, :-1], labels[:, 1:]
    if logits.dtype not in (torch.float32, torch.float64):  # half precision: the loss in float32
        logits = logits.float()
    token = nnf.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    counts = (labels != -100).sum(1)
    if bool((counts == 0).any()):
        raise EvolutionError("an example has no answer token to score: give every example a non-empty answer")
    return token.sum(1) / counts


def _batches(pairs: Sequence[Pair], batch_size: int) -> Iterator[Sequence[Pair]]:
    if batch_size < 1:
        raise EvolutionError(f"batch_size must be at least 1, got {batch_size}")
    for i in range(0, len(pairs), batch_size):
        yield pairs[i : i + batch_size]


def _pairs(examples: Sequence[Pair]) -> list[Pair]:
    pairs = [(str(p), str(a)) for p, a in examples]
    if not pairs:
        raise EvolutionError("no examples to measure on: give at least one (prompt, answer) pair")
    return pairs


# --- hooks ----------------------------------------------------------------------------------------------------------
def _first(x: Any) -> Tensor:
    t: Tensor = x[0] if isinstance(x, tuple) else x
    return t


def _role(model: PreTrainedModel, module: nn.Module) -> str:
    """Which token mask a module's hidden states follow: the encoder's, or the decoder's / causal stack's."""
    if not getattr(model.config, "is_encoder_decoder", False):
        return "main"
    return "encoder" if any(m is module for m in model.get_encoder().modules()) else "main"


class _Probe:
    """The hooks of one measurement, and what they accumulate over the batches."""

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        heads: bool,
        neurons: bool,
        layers: bool,
        gates: Mapping[str, FloatArray],
    ) -> None:
        self.model = model
        self.attn = attention_sites(model)
        self.ffn = ffn_sites(model)
        self.stacks = layer_stacks(model) if layers else {}
        known = {s.name: s.num_heads for s in self.attn} | {s.name: s.width for s in self.ffn}
        for name, g in gates.items():
            if name not in known:
                raise EvolutionError(f"gate for unknown site {name!r}; sites: {', '.join(sorted(known))}")
            if np.shape(g) != (known[name],):
                raise EvolutionError(f"gate for {name} has shape {np.shape(g)}, the site has {known[name]} units")
        device = next(model.parameters()).device
        self.fixed = {k: torch.as_tensor(np.asarray(v), dtype=torch.float64, device=device) for k, v in gates.items()}
        self.want_heads, self.want_neurons = heads, neurons
        self.batch: _Batch | None = None
        self.head_gates: dict[str, Tensor] = {}
        self.head_grads: dict[str, list[Tensor]] = {s.name: [] for s in self.attn}
        self.fired = {s.name: torch.zeros(s.width, dtype=torch.float64, device=device) for s in self.ffn}
        self.taylor = {s.name: torch.zeros(s.width, dtype=torch.float64, device=device) for s in self.ffn}
        self.tokens = {s.name: 0 for s in self.ffn}
        self.cos_sum = {(st, i): 0.0 for st, ls in self.stacks.items() for i in range(len(ls))}
        self.cos_n = dict.fromkeys(self.cos_sum, 0)
        self._handles: list[RemovableHandle] = []

    @property
    def grads(self) -> bool:
        return self.want_heads or self.want_neurons

    @contextmanager
    def attached(self) -> Iterator[_Probe]:
        try:
            for a in self.attn:
                self._handles.append(
                    a.out_proj.register_forward_pre_hook(self._head_hook(a, _role(self.model, a.module)))
                )
            if self.want_neurons or any(s.name in self.fixed for s in self.ffn):
                for f in self.ffn:
                    self._handles.append(
                        f.out_proj.register_forward_pre_hook(self._ffn_hook(f, _role(self.model, f.module)))
                    )
            for stack, ls in self.stacks.items():
                for i, layer in enumerate(ls):
                    hook = self._layer_hook(stack, i, _role(self.model, layer))
                    self._handles.append(layer.register_forward_hook(hook, with_kwargs=True))
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()

    def start(self, batch: _Batch) -> None:
        self.batch = batch
        device = next(self.model.parameters()).device
        if self.want_heads:
            self.head_gates = {
                a.name: torch.ones(batch.size, a.num_heads, device=device, requires_grad=True) for a in self.attn
            }

    def finish_batch(self) -> None:
        for name, g in self.head_gates.items():
            if g.grad is None:
                raise EvolutionError(f"no gradient reached the gate of {name}: the site did not run in the loss")
            self.head_grads[name].append(g.grad.detach().double().cpu())
        self.head_gates = {}

    def _mask(self, role: str, x: Tensor, where: str) -> Tensor:
        if self.batch is None:
            raise EvolutionError("a hook ran outside a measured batch")
        mask = self.batch.masks[role]
        if tuple(x.shape[:2]) != tuple(mask.shape):
            raise EvolutionError(
                f"{where}: hidden states of shape {tuple(x.shape)} do not match the batch's "
                f"{tuple(mask.shape)} tokens; this layout is not supported"
            )
        return mask

    def _head_hook(self, site: AttentionSite, role: str) -> Callable[[nn.Module, Any], Any]:
        def hook(_m: nn.Module, inp: Any) -> Any:
            x = _first(inp)
            b, t, feat = x.shape
            if feat != site.num_heads * site.head_dim:
                raise EvolutionError(
                    f"{site.name}: output projection input has {feat} features, expected "
                    f"{site.num_heads} heads x {site.head_dim}"
                )
            self._mask(role, x, site.name)
            scale = None
            if site.name in self.head_gates:
                scale = self.head_gates[site.name].to(x.dtype)[:, None, :, None]
            if site.name in self.fixed:
                fixed = self.fixed[site.name].to(x.dtype)[None, None, :, None]
                scale = fixed if scale is None else scale * fixed
            if scale is None:
                return None
            y = (x.view(b, t, site.num_heads, site.head_dim) * scale).reshape(b, t, feat)
            return (y, *inp[1:]) if isinstance(inp, tuple) else y

        return hook

    def _ffn_hook(self, site: FfnSite, role: str) -> Callable[[nn.Module, Any], Any]:
        def hook(_m: nn.Module, inp: Any) -> Any:
            a = _first(inp)
            if a.shape[-1] != site.width:
                raise EvolutionError(f"{site.name}: FFN activation has {a.shape[-1]} features, expected {site.width}")
            mask = self._mask(role, a, site.name)
            changed = False
            if site.name in self.fixed:
                a = a * self.fixed[site.name].to(a.dtype)
                changed = True
            if self.want_neurons:
                with torch.no_grad():
                    self.fired[site.name] += ((a > 0) & mask[..., None]).sum((0, 1)).double()
                    self.tokens[site.name] += int(mask.sum())
                if torch.is_grad_enabled():
                    if not a.requires_grad:
                        a = a.detach().requires_grad_(True)
                        changed = True
                    kept = a.detach()

                    def on_grad(g: Tensor) -> None:
                        score = (kept * g).abs() * mask[..., None]
                        self.taylor[site.name] += score.sum((0, 1)).double()

                    a.register_hook(on_grad)  # type: ignore[no-untyped-call]
            if not changed:
                return None
            return (a, *inp[1:]) if isinstance(inp, tuple) else a

        return hook

    def _layer_hook(self, stack: str, i: int, role: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            h_in = args[0] if args else kwargs.get("hidden_states")
            if not isinstance(h_in, Tensor):
                raise EvolutionError(f"{stack} layer {i}: cannot find its input hidden states")
            h_out = _first(out)
            mask = self._mask(role, h_in, f"{stack} layer {i}")
            with torch.no_grad():
                cos = nnf.cosine_similarity(h_in.detach().float(), h_out.detach().float(), dim=-1)
                self.cos_sum[(stack, i)] += float(cos[mask].double().sum())
                self.cos_n[(stack, i)] += int(mask.sum())

        return hook


@contextmanager
def _measuring(model: PreTrainedModel) -> Iterator[None]:
    """Eval mode, and no parameter gradients (only gates and activations need them); both restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _run(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Pair],
    probe: _Probe,
    batch_size: int,
    progress: Progress | None,
    what: str,
) -> tuple[float, int]:
    """Run every batch through the hooked model; returns (mean per-example loss, examples)."""
    pairs = _pairs(examples)
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    device = next(model.parameters()).device
    total, n = 0.0, 0
    batches = list(_batches(pairs, batch_size))
    with _measuring(model), probe.attached(), torch.set_grad_enabled(probe.grads):
        for k, chunk in enumerate(batches):
            batch = _encode(tokenizer, chunk, seq2seq, device)
            probe.start(batch)
            out = model(**batch.inputs, use_cache=False)
            losses = _example_losses(out.logits, batch.inputs["labels"], seq2seq)
            if probe.grads:
                losses.sum().backward()  # type: ignore[no-untyped-call]
                probe.finish_batch()
            total += float(losses.detach().double().sum())
            n += batch.size
            if progress is not None:
                progress(f"{what}: batch {k + 1}/{len(batches)} ({n} examples)")
    return total / n, n


# --- the public measurements ----------------------------------------------------------------------------------------
def measure(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Pair],
    *,
    heads: bool = True,
    neurons: bool = True,
    layers: bool = True,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Measurement:
    """Head importance, FFN neuron statistics and layer redundancy of ``model`` on ``examples``, in one pass (one
    forward and, for heads or neurons, one backward per batch). The model is left as it was (mode, grad flags)."""
    probe = _Probe(model, heads=heads, neurons=neurons, layers=layers, gates={})
    loss, n = _run(model, tokenizer, examples, probe, batch_size, progress, "structure")
    head_stats: dict[str, HeadStats] = {}
    if heads:
        for a in probe.attn:
            grads = torch.cat(probe.head_grads[a.name]).numpy()
            raw = np.abs(grads).mean(0)
            norm = float(np.linalg.norm(raw))
            head_stats[a.name] = HeadStats(raw, raw / norm if norm > 0 else np.zeros_like(raw), grads.mean(0), n)
    neuron_stats: dict[str, NeuronStats] = {}
    if neurons:
        for f in probe.ffn:
            tokens = max(probe.tokens[f.name], 1)
            neuron_stats[f.name] = NeuronStats(
                (probe.fired[f.name] / tokens).cpu().numpy(),
                (probe.taylor[f.name] / tokens).cpu().numpy(),
                probe.tokens[f.name],
                "examples",
            )
    redundancy = {
        stack: np.array([probe.cos_sum[(stack, i)] / max(probe.cos_n[(stack, i)], 1) for i in range(len(ls))])
        for stack, ls in probe.stacks.items()
    }
    return Measurement(head_stats, neuron_stats, redundancy, loss, n)


def head_importance(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Pair],
    batch_size: int = 32,
    progress: Progress | None = None,
) -> dict[str, HeadStats]:
    """Per attention site (by name), each head's E_x |dL_x/dg_h|, raw and L2-normalised over the site's heads."""
    return measure(
        model, tokenizer, examples, neurons=False, layers=False, batch_size=batch_size, progress=progress
    ).heads


def neuron_importance(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Pair],
    batch_size: int = 32,
    progress: Progress | None = None,
) -> dict[str, NeuronStats]:
    """Per FFN site (by name), each neuron's firing rate and Taylor score E|a * dL/da| on the examples' tokens."""
    return measure(
        model, tokenizer, examples, heads=False, layers=False, batch_size=batch_size, progress=progress
    ).neurons


def layer_redundancy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Pair],
    batch_size: int = 32,
    progress: Progress | None = None,
) -> dict[str, FloatArray]:
    """Per stack, each layer's mean cosine similarity of its input and output hidden states over real tokens."""
    return measure(
        model, tokenizer, examples, heads=False, neurons=False, batch_size=batch_size, progress=progress
    ).layers


def gated_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Pair],
    gates: Mapping[str, FloatArray] | None = None,
    batch_size: int = 32,
) -> float:
    """The mean per-example loss with some heads or neurons scaled: ``gates[site name]`` holds one factor per head
    (attention site) or per neuron (FFN site), 0 to silence it; sites not named keep factor 1."""
    probe = _Probe(model, heads=False, neurons=False, layers=False, gates=dict(gates or {}))
    loss, _ = _run(model, tokenizer, examples, probe, batch_size, None, "loss")
    return loss


def neurons_from_counts(counts: npt.ArrayLike, steps: int, sites: Sequence[FfnSite]) -> dict[str, NeuronStats]:
    """Firing rates from the producer's counts: ``counts`` [num_layers, width] (steps on which each neuron of each
    layer of the generating stack fired, summed over ``NeuronCounts`` events) over ``steps`` sequence-steps.
    ``sites`` are the FFN sites of that stack, in layer order (``generating_ffn_sites``)."""
    arr = np.asarray(counts)
    if arr.ndim != 2 or arr.shape[0] != len(sites):
        raise EvolutionError(
            f"neuron counts of shape {arr.shape} do not fit the {len(sites)} FFN layers of the "
            "generating stack: give [num_layers, width] counts of the model that served"
        )
    if steps <= 0:
        raise EvolutionError(f"neuron counts cover {steps} steps: nothing was served to rank neurons by")
    if np.any(arr < 0) or np.any(arr > steps):
        raise EvolutionError(f"neuron counts must lie in [0, steps={steps}]; got {arr.min()}..{arr.max()}")
    out: dict[str, NeuronStats] = {}
    for row, site in zip(arr, sites, strict=True):
        if row.shape[0] != site.width:
            raise EvolutionError(
                f"{site.name} has {site.width} neurons but its counts row has {row.shape[0]}: "
                "the counts come from another model version"
            )
        out[site.name] = NeuronStats(row.astype(np.float64) / steps, None, int(steps), "traffic")
    return out


def generating_ffn_sites(model: PreTrainedModel) -> list[FfnSite]:
    """The FFN sites whose firing the producer counts (the generating stack), in layer order."""
    return sorted((s for s in ffn_sites(model) if s.stack == GENERATING_STACK), key=lambda s: s.layer)


def embedding_usage(token_ids: Iterable[Iterable[int]], vocab_size: int) -> EmbeddingUsage:
    """How often each of the ``vocab_size`` rows occurs in ``token_ids`` (sequences of ids: tokenized logged prompts
    and outputs, or ``Completion.output_token_ids``); every occurrence counts."""
    if vocab_size <= 0:
        raise EvolutionError(f"vocab_size must be positive, got {vocab_size}")
    counts = np.zeros(vocab_size, dtype=np.int64)
    total = 0
    for seq in token_ids:
        ids = np.asarray(list(seq), dtype=np.int64)
        if ids.size == 0:
            continue
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise EvolutionError(
                f"token id {int(ids.min() if ids.min() < 0 else ids.max())} is outside the "
                f"vocabulary of {vocab_size} rows: the ids come from another tokenizer"
            )
        counts += np.bincount(ids, minlength=vocab_size)
        total += int(ids.size)
    return EmbeddingUsage(counts, total)
