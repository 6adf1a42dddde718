"""Per-step statistics as pure tensor functions, computed on the model's device; only small arrays leave it.

Every function takes a batch and returns one row per sequence. Entropies are in bits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LN2 = math.log(2.0)


def logit_stats(logits: Tensor, chosen: Tensor, k: int = 10) -> Tensor:
    """[B, V] raw logits and [B] chosen ids -> [B, 5]: logprob (nats), entropy_bits, top1-top2 margin,
    top-k mass, surprisal_bits. All from the raw distribution, so sampling settings do not distort them."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    # entr(p) = -p ln p, and 0 at p = 0: masked logits (-inf) contribute nothing (p * logp would be 0 * -inf = nan)
    entropy = torch.special.entr(p).sum(-1) / LN2
    top = p.topk(min(k, p.shape[-1]), dim=-1).values
    margin = top[:, 0] - top[:, 1] if top.shape[-1] > 1 else top[:, 0]
    mass = top.sum(-1)
    chosen_logp = logp.gather(-1, chosen.view(-1, 1)).squeeze(-1)
    return torch.stack([chosen_logp, entropy, margin, mass, -chosen_logp / LN2], dim=-1)


def hidden_stats(hidden: list[Tensor]) -> Tensor:
    """Newest-position hidden states, one [B, D] per layer -> [B, 3, L]: L2 norm, max |x|, count of NaN/Inf."""
    h = torch.stack(hidden, dim=1).float()  # [B, L, D]
    finite = torch.isfinite(h)
    clean = torch.where(finite, h, torch.zeros_like(h))
    l2 = clean.norm(dim=-1)
    maxabs = clean.abs().amax(dim=-1)
    nonfinite = (~finite).sum(-1).float()
    return torch.stack([l2, maxabs, nonfinite], dim=1)


def attention_entropy(weights: Tensor) -> Tensor:
    """Attention probabilities of the newest query, [B, H, T] -> [B, H] entropy in bits."""
    w = weights.float()
    logw = torch.where(w > 0, w.log(), torch.zeros_like(w))
    return -(w * logw).sum(-1) / LN2


def head_output_norm(head_outputs: Tensor, num_heads: int) -> Tensor:
    """Concatenated per-head attention outputs of the newest position, [B, H*Dh] -> [B, H] L2 norms.

    The utilization signal where the attention kernel (SDPA, flash) returns no weights.
    """
    b = head_outputs.shape[0]
    norms: Tensor = torch.linalg.vector_norm(head_outputs.float().reshape(b, num_heads, -1), dim=-1)
    return norms


def ffn_sparsity(activations: Tensor, eps: float = 1e-6) -> Tensor:
    """FFN activations of the newest position, [..., F] -> [...] fraction with |a| <= eps."""
    return (activations.abs() <= eps).float().mean(-1)


def step_stats(
    logits: Tensor,
    chosen: Tensor,
    active: Tensor,
    hidden: Tensor,
    heads_in: Tensor | None,
    ffn_in: Tensor | None,
    row_mask: Tensor,
    num_heads: int,
    k: int = 10,
) -> tuple[Tensor, Tensor | None]:
    """Every statistic of one step from tensors of layers alike, in one function (what ``torch.compile`` fuses):
    ``hidden`` [B, L, D], ``heads_in`` [B, L, H*Dh] (the attention output projections' inputs) or None, ``ffn_in``
    [B, L, F] (the FFN output projections' inputs) or None, ``row_mask`` [B] rows still generating.

    Returns the packed row [B, 2 + 5 + 3L (+ L*H) (+ L)]: chosen id, active flag, ``logit_stats``, ``hidden_stats``,
    per-head output norms, FFN sparsity; and the step's FFN firing counts [L, F] int32 over the masked rows (None
    without ``ffn_in``)."""
    b, n_layers = hidden.shape[0], hidden.shape[1]
    parts = [
        chosen.float().unsqueeze(-1),
        active.float().unsqueeze(-1),
        logit_stats(logits, chosen, k),
        hidden_stats(list(hidden.unbind(1))).flatten(1),
    ]
    if heads_in is not None:
        parts.append(torch.linalg.vector_norm(heads_in.float().reshape(b, n_layers, num_heads, -1), dim=-1).flatten(1))
    fired = None
    if ffn_in is not None:
        parts.append(ffn_sparsity(ffn_in))
        fired = ((ffn_in > 0) & row_mask[:, None, None]).sum(0, dtype=torch.int32)
    return torch.cat(parts, dim=-1), fired
