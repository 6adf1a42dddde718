"""A compact sketch of the hidden state per step, for a risk probe to learn from: the newest position's hidden state
of a middle and the last generating layer, each through a fixed random projection to ``dim`` numbers, computed on the
model's device with the other statistics and sent as float16 (``GenerationStep.hidden_sketch``).

The projections are Gaussian with variance 1/dim, drawn from a generator seeded by ``SEED`` and the layer's index, so
every process and every run projects a model's states alike (a probe trained on one run's sketches reads another's).
Johnson-Lindenstrauss: a random projection keeps distances between states up to a small distortion, which is what a
linear probe needs; the full states (thousands of numbers per step) never leave the device."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

SEED = 20261207
DEFAULT_DIM = 32


def sketch_layers(num_layers: int) -> tuple[int, int]:
    """The two layers sketched: the middle one and the last."""
    return num_layers // 2, num_layers - 1


class HiddenSketch:
    """Projects [B, D] newest-position hidden states of two layers to [B, 2 * dim] float32 (non-finite values as 0)."""

    def __init__(self, num_layers: int, dim: int = DEFAULT_DIM) -> None:
        self.layers = sketch_layers(num_layers)
        self.dim = dim
        self._proj: dict[int, Tensor] = {}

    def _projection(self, layer: int, like: Tensor) -> Tensor:
        proj = self._proj.get(layer)
        if proj is None or proj.shape[0] != like.shape[-1] or proj.device != like.device:
            gen = torch.Generator().manual_seed(SEED * 1000 + layer)
            proj = torch.randn(like.shape[-1], self.dim, generator=gen) / math.sqrt(self.dim)
            proj = self._proj[layer] = proj.to(like.device)
        return proj

    def __call__(self, hidden: Sequence[Tensor] | Tensor) -> Tensor:
        """``hidden``: one [B, D] tensor per layer, or the stacked [B, L, D]."""
        rows = [hidden[:, i] if isinstance(hidden, Tensor) else hidden[i] for i in self.layers]
        out = [
            torch.nan_to_num(h.float(), nan=0.0, posinf=0.0, neginf=0.0) @ self._projection(i, h)
            for i, h in zip(self.layers, rows, strict=True)
        ]
        return torch.cat(out, dim=-1)
