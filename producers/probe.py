"""Forward hooks that keep, per generating layer, the newest position's small statistics on the device."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from evostream.errors import EvoError
from models.anatomy import Anatomy
from producers.stats import ffn_sparsity, head_output_norm
from producers.steps import AttentionSignal


class ProbeError(EvoError):
    """The hooks did not see what a generating step must produce (a layer that did not run)."""


def _newest(x: Any) -> Tensor:
    t: Tensor = x[0] if isinstance(x, tuple) else x
    return t[:, -1, :]


class Probe:
    """Hooks on the generating layers: hidden state (output), head outputs and FFN activations (inputs of the
    output projections). Each hook reduces its tensor to the newest position, on the device, and keeps the result."""

    def __init__(self, anat: Anatomy, signal: AttentionSignal) -> None:
        self.anat = anat
        self.signal = signal
        n = anat.num_layers
        self.hidden: list[Tensor | None] = [None] * n
        self.heads: list[Tensor | None] = [None] * n
        self.ffn: list[Tensor | None] = [None] * n
        self.row_mask: Tensor | None = None
        """[B] bool: rows still generating (set by the generator before each step); only they count below."""
        self.neuron_counts: list[Tensor | None] = [None] * n
        """Per layer [d_ff] int32 on the device: steps on which each FFN neuron fired, since the last take."""
        self.counted_rows: Tensor | None = None
        self._handles: list[RemovableHandle] = []
        for i, layer in enumerate(anat.layers):
            self._handles.append(layer.register_forward_hook(self._hidden_hook(i)))
            attn, ffn = anat.attn_out[i], anat.ffn_out[i]
            if signal == "OUTPUT_NORM" and attn is not None:
                self._handles.append(attn.register_forward_pre_hook(self._heads_hook(i)))
            if ffn is not None:
                self._handles.append(ffn.register_forward_pre_hook(self._ffn_hook(i)))

    @property
    def has_ffn(self) -> bool:
        return all(m is not None for m in self.anat.ffn_out)

    @property
    def has_head_norms(self) -> bool:
        return self.signal == "OUTPUT_NORM" and all(m is not None for m in self.anat.attn_out)

    def _hidden_hook(self, i: int) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            self.hidden[i] = _newest(out)

        return hook

    def _heads_hook(self, i: int) -> Any:
        heads = self.anat.num_heads

        def hook(_m: nn.Module, inp: Any) -> None:
            self.heads[i] = head_output_norm(_newest(inp), heads)

        return hook

    def _ffn_hook(self, i: int) -> Any:
        def hook(_m: nn.Module, inp: Any) -> None:
            x = _newest(inp)
            self.ffn[i] = ffn_sparsity(x)
            fired = x > 0
            if self.row_mask is not None:
                fired = fired & self.row_mask[:, None]
            add = fired.sum(0, dtype=torch.int32)
            prev = self.neuron_counts[i]
            self.neuron_counts[i] = add if prev is None else prev + add
            if i == 0:
                rows = self.row_mask.sum() if self.row_mask is not None else torch.tensor(x.shape[0], device=x.device)
                self.counted_rows = rows if self.counted_rows is None else self.counted_rows + rows

        return hook

    def take_neuron_counts(self) -> tuple[Tensor, int] | None:
        """([L, d_ff] int32 on the host, sequence-steps covered) since the last take, then reset; None if no FFN."""
        if not self.has_ffn or any(c is None for c in self.neuron_counts) or self.counted_rows is None:
            return None
        counts = torch.stack([c for c in self.neuron_counts if c is not None]).cpu()
        rows = int(self.counted_rows.item())
        self.neuron_counts = [None] * self.anat.num_layers
        self.counted_rows = None
        return counts, rows

    def take_hidden(self) -> list[Tensor]:
        out = [h for h in self.hidden if h is not None]
        if len(out) != self.anat.num_layers:
            raise ProbeError("a generating layer did not run its forward hook")
        return out

    def take_heads(self) -> Tensor | None:
        """[B, L, H] per-head output norms, or None."""
        if not self.has_head_norms:
            return None
        return torch.stack([h for h in self.heads if h is not None], dim=1)

    def take_ffn(self) -> Tensor | None:
        """[B, L] FFN sparsity, or None."""
        if not self.has_ffn:
            return None
        return torch.stack([f for f in self.ffn if f is not None], dim=1)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
