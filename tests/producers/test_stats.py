"""Per-step statistics against independent reference computations."""

from __future__ import annotations

import math

import numpy as np
import torch

from evostream.producers.stats import attention_entropy, ffn_sparsity, head_output_norm, hidden_stats, logit_stats


def test_uniform_distribution_has_log2_v_bits() -> None:
    v = 384
    stats = logit_stats(torch.zeros(1, v), torch.tensor([5]))
    logprob, entropy, margin, mass, surprisal = stats[0].tolist()
    assert math.isclose(entropy, math.log2(v), rel_tol=1e-5)
    assert math.isclose(logprob, -math.log(v), rel_tol=1e-5)
    assert math.isclose(surprisal, math.log2(v), rel_tol=1e-5)
    assert abs(margin) < 1e-7
    assert math.isclose(mass, 10 / v, rel_tol=1e-5)


def test_known_distribution_matches_numpy_reference() -> None:
    p = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625])
    logits = torch.tensor(np.log(p), dtype=torch.float32).unsqueeze(0) + 3.0  # softmax is shift-invariant
    logprob, entropy, margin, mass, surprisal = logit_stats(logits, torch.tensor([1]), k=2)[0].tolist()
    assert math.isclose(entropy, float(-(p * np.log2(p)).sum()), rel_tol=1e-5)  # 1.875 bits
    assert math.isclose(entropy, 1.875, rel_tol=1e-5)
    assert math.isclose(margin, 0.25, rel_tol=1e-5)
    assert math.isclose(mass, 0.75, rel_tol=1e-5)
    assert math.isclose(logprob, math.log(0.25), rel_tol=1e-5)
    assert math.isclose(surprisal, 2.0, rel_tol=1e-5)


def test_masked_logits_do_not_poison_entropy() -> None:
    logits = torch.tensor([[0.0, 0.0, -math.inf, -math.inf]])
    assert math.isclose(logit_stats(logits, torch.tensor([0]), k=2)[0, 1].item(), 1.0, rel_tol=1e-6)


def test_hidden_stats_count_nan_and_inf_and_ignore_them_in_norms() -> None:
    clean = torch.tensor([[3.0, 4.0, 0.0]])
    poisoned = torch.tensor([[3.0, float("nan"), float("inf")]])
    out = hidden_stats([clean, poisoned])  # two layers, batch of one
    l2, maxabs, nonfinite = out[0]
    assert l2.tolist() == [5.0, 3.0]
    assert maxabs.tolist() == [4.0, 3.0]
    assert nonfinite.tolist() == [0.0, 2.0]


def test_attention_entropy_on_hand_built_attention() -> None:
    t = 8
    uniform = torch.full((t,), 1 / t)
    one_hot = torch.zeros(t)
    one_hot[3] = 1.0
    half = torch.tensor([0.5, 0.5] + [0.0] * (t - 2))
    weights = torch.stack([uniform, one_hot, half]).unsqueeze(0)  # [B=1, H=3, T]
    assert torch.allclose(attention_entropy(weights)[0], torch.tensor([3.0, 0.0, 1.0]))


def test_head_output_norm_splits_heads() -> None:
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0, 1.0, 0.0]])  # 3 heads of 2 dims
    assert head_output_norm(x, 3)[0].tolist() == [5.0, 0.0, 1.0]


def test_ffn_sparsity_is_the_zero_fraction() -> None:
    assert ffn_sparsity(torch.tensor([[0.0, 1.0, 0.0, -2.0]]))[0].item() == 0.5
