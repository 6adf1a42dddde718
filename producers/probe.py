"""Forward hooks that keep, per generating layer, the newest position's small statistics on the device."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from evostream.core.errors import EvoError
from evostream.models.anatomy import Anatomy
from evostream.producers.stats import ffn_sparsity, head_output_norm
from evostream.producers.steps import AttentionSignal


class ProbeError(EvoError):
    """The hooks did not see what a generating step must produce (a layer that did not run)."""


def _newest(x: Any) -> Tensor:
    t: Tensor = x[0] if isinstance(x, tuple) else x
    return t[:, -1, :]


class Probe:
    """Hooks on the generating layers: hidden state (output), head outputs and FFN activations (inputs of the
    output projections). Each hook only keeps a view of its tensor's newest position; the statistics are computed at
    the step's end, over all layers at once where the layers are alike (``take_stacked`` and ``stats.step_stats``: on
    a small model each tensor op costs more in dispatch than in arithmetic), else layer by layer."""

    def __init__(self, anat: Anatomy, signal: AttentionSignal) -> None:
        self.anat = anat
        self.signal = signal
        n = anat.num_layers
        self.hidden: list[Tensor | None] = [None] * n
        self.heads_in: list[Tensor | None] = [None] * n
        self.ffn_in: list[Tensor | None] = [None] * n
        self.row_mask: Tensor | None = None
        """[B] bool: rows still generating (set by the generator before each step); only they count below."""
        self.neuron_counts: list[Tensor | None] = [None] * n
        """Per layer [d_ff] int32 on the device: steps on which each FFN neuron fired, since the last take (layers
        of different widths); ``stacked_counts`` holds them as one [L, d_ff] tensor when every layer is as wide."""
        self.stacked_counts: Tensor | None = None
        self.counted_rows: Tensor | None = None
        self._handles: list[RemovableHandle] = []
        for i, layer in enumerate(anat.layers):
            self._handles.append(layer.register_forward_hook(self._keep_output(self.hidden, i)))
            attn, ffn = anat.attn_out[i], anat.ffn_out[i]
            if signal == "OUTPUT_NORM" and attn is not None:
                self._handles.append(attn.register_forward_pre_hook(self._keep_input(self.heads_in, i)))
            if ffn is not None:
                self._handles.append(ffn.register_forward_pre_hook(self._keep_input(self.ffn_in, i)))

    @property
    def has_ffn(self) -> bool:
        return all(m is not None for m in self.anat.ffn_out)

    @property
    def has_head_norms(self) -> bool:
        return self.signal == "OUTPUT_NORM" and all(m is not None for m in self.anat.attn_out)

    @staticmethod
    def _keep_output(store: list[Tensor | None], i: int) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            store[i] = _newest(out)

        return hook

    @staticmethod
    def _keep_input(store: list[Tensor | None], i: int) -> Any:
        def hook(_m: nn.Module, inp: Any) -> None:
            store[i] = _newest(inp)

        return hook

    def take_neuron_counts(self) -> tuple[Tensor, int] | None:
        """([L, d_ff] int32 on the host, sequence-steps covered) since the last take, then reset; None if no FFN."""
        if not self.has_ffn or self.counted_rows is None:
            return None
        if self.stacked_counts is not None:
            counts = self.stacked_counts.cpu()
        else:
            per_layer = [c for c in self.neuron_counts if c is not None]
            # layers of different widths do not fit one NeuronCounts record ([L, d_ff]): none is reported
            if len(per_layer) != self.anat.num_layers or not _same_shape(per_layer):
                return None
            counts = torch.stack(per_layer).cpu()
        rows = int(self.counted_rows.item())
        self.neuron_counts = [None] * self.anat.num_layers
        self.stacked_counts = None
        self.counted_rows = None
        return counts, rows

    def take_hidden(self) -> list[Tensor]:
        out = [h for h in self.hidden if h is not None]
        if len(out) != self.anat.num_layers:
            raise ProbeError("a generating layer did not run its forward hook")
        return out

    def take_stacked(self) -> tuple[Tensor, Tensor | None, Tensor | None] | None:
        """This step's newest-position tensors stacked over layers, for ``stats.step_stats``: hidden [B, L, D], the
        attention output projections' inputs [B, L, H*Dh] (OUTPUT_NORM signal, else None) and the FFN output
        projections' inputs [B, L, F] (None without FFN hooks); None when some kind differs in shape across layers
        (a pruned model), which the layer-by-layer ``take_heads`` / ``take_ffn`` handle."""
        hidden = self.take_hidden()
        heads = self._kept(self.heads_in, "attention output projection") if self.has_head_norms else None
        ffn = self._kept(self.ffn_in, "FFN output projection") if self.has_ffn else None
        if not all(_same_shape(t) for t in (hidden, heads, ffn) if t is not None):
            return None
        return (
            torch.stack(hidden, dim=1),
            None if heads is None else torch.stack(heads, dim=1),
            None if ffn is None else torch.stack(ffn, dim=1),
        )

    def fold_counts(self, fired: Tensor, batch_rows: int) -> None:
        """Add one step's stacked FFN firing counts [L, F] (from ``stats.step_stats``) and the rows they cover."""
        mask = self.row_mask
        rows = mask.sum() if mask is not None else torch.tensor(batch_rows, device=fired.device)
        self.counted_rows = rows if self.counted_rows is None else self.counted_rows + rows
        self.stacked_counts = fired if self.stacked_counts is None else self.stacked_counts + fired

    def take_heads(self) -> Tensor | None:
        """[B, L, H] per-head output norms of this step, layer by layer, or None."""
        if not self.has_head_norms:
            return None
        kept = self._kept(self.heads_in, "attention output projection")
        return torch.stack([head_output_norm(x, self.anat.num_heads) for x in kept], dim=1)

    def take_ffn(self) -> Tensor | None:
        """[B, L] FFN sparsity of this step, layer by layer, or None; folds the step's neuron firing counts in (call
        once a step)."""
        if not self.has_ffn:
            return None
        kept = self._kept(self.ffn_in, "FFN output projection")
        mask = self.row_mask
        rows = mask.sum() if mask is not None else torch.tensor(kept[0].shape[0], device=kept[0].device)
        self.counted_rows = rows if self.counted_rows is None else self.counted_rows + rows
        sparsity = []
        for i, x in enumerate(kept):
            fired = x > 0
            if mask is not None:
                fired = fired & mask[:, None]
            add = fired.sum(0, dtype=torch.int32)
            prev = self.neuron_counts[i]
            self.neuron_counts[i] = add if prev is None else prev + add
            sparsity.append(ffn_sparsity(x))
        return torch.stack(sparsity, dim=1)

    def _kept(self, store: list[Tensor | None], what: str) -> list[Tensor]:
        kept = [t for t in store if t is not None]
        if len(kept) != self.anat.num_layers:
            raise ProbeError(f"a generating layer's {what} did not run its hook")
        return kept

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _same_shape(tensors: list[Tensor]) -> bool:
    return all(t.shape == tensors[0].shape for t in tensors)
