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
