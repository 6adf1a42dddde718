"""Continuous batching: requests join and leave a running batch between decoding steps.

``RunningBatch`` holds one KV cache for every request in flight. A newcomer is prefilled on its own (its first token
comes out of that forward pass) and merged into the running cache; a request that finishes is cut out of it at once,
so it neither waits for the slowest request of its batch nor holds a row the next request could use.

Rows sit at different decoding positions. The cache's slots are aligned on the right: a row's newest key is in the
last slot, and the slots left of its first key are padding, hidden by the attention mask. Decoder-only models get
each row's own position ids; T5's relative position bias depends only on the distance between slots, which the
alignment keeps equal to the distance between positions. Encoder-decoder rows keep their encoder outputs and
cross-attention keys padded on the right to the longest prompt in flight, hidden by the encoder mask. Columns that no
row uses any more are dropped when rows leave.

Greedy decoding only (a sampled request has its own seed and goes through ``InstrumentedGenerator.generate``).
Tokens equal those of each request decoded alone (``tests/producers/test_batching.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from evostream.producers.generate import Generated, GenerationError, InstrumentedGenerator, prompt_surprisal
from evostream.producers.steps import StepBatch


@dataclass
class Row:
    """One request in flight."""

    key: Any
    limit: int
    """The most new tokens it may have."""
    result: Generated = field(default_factory=Generated)
    step: int = 0
    """The step its next token will be."""
    admitted: float = field(default_factory=time.perf_counter)
    done: bool = False


RowStepCallback = Callable[[StepBatch, list[Row]], None]
"""Called once per forward pass with its StepBatch; row r of the batch is request ``rows[r]``."""


def _pad(t: Tensor, to: int, dim: int, left: bool) -> Tensor:
    n = to - t.shape[dim]
    if n <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    pad = t.new_zeros(shape)
    return torch.cat([pad, t] if left else [t, pad], dim=dim)


def _layers(cache: Any) -> tuple[list[Any], list[Any]]:
    """(self-attention layers, cross-attention layers) of a cache, each layer holding ``keys`` and ``values``."""
    if isinstance(cache, EncoderDecoderCache):
        return list(cache.self_attention_cache.layers), list(cache.cross_attention_cache.layers)
    return list(cache.layers), []


def unsupported(generator: InstrumentedGenerator) -> str | None:
    """Why ``generator``'s model cannot be batched continuously, or None: the cache surgery here knows plain
    dynamic layers only (no static cache, no sliding window)."""
    if generator.decode_path != "dynamic":
        return "continuous batching runs on the dynamic KV cache"
    config = generator.loaded.model.config.get_text_config(decoder=True)
    if getattr(config, "sliding_window", None) or "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return "continuous batching does not handle sliding-window attention caches"
    return None


class RunningBatch:
    """The requests in flight on one model, decoded together one step at a time."""

    def __init__(self, generator: InstrumentedGenerator, max_rows: int) -> None:
        problem = unsupported(generator)
        if problem is not None:
            raise GenerationError(problem)
        self.gen = generator
        self.max_rows = max_rows
        self.rows: list[Row] = []
        self.seq2seq = generator.loaded.is_seq2seq
        self._cache: Any = None
        self._mask: Tensor | None = None  # [B, L] self-attention slots in use
        self._next: Tensor | None = None  # [B, 1] next input token
        self._pos: Tensor | None = None  # [B, 1] next position (decoder-only)
        self._enc: Tensor | None = None  # [B, S, D] encoder outputs (encoder-decoder)
        self._enc_mask: Tensor | None = None  # [B, S]

    @property
    def free(self) -> int:
        return self.max_rows - len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def admit(self, prompts: Sequence[str], rows: Sequence[Row], on_step: RowStepCallback | None = None) -> list[Row]:
        """Prefill ``prompts`` (one per row) and add them to the batch; their first token comes out now. Returns the
        rows that finished at once (one token wanted, or EOS first)."""
        if len(prompts) != len(rows) or not rows:
            raise GenerationError("admit needs one prompt per row, and at least one")
        if len(rows) > self.free:
            raise GenerationError(f"{len(rows)} rows do not fit: {self.free} free of {self.max_rows}")
        gen, lm = self.gen, self.gen.loaded
        model, device = lm.model, lm.device
        t0 = time.perf_counter()
        ids, mask, lengths = gen.encode(prompts)
        b = ids.shape[0]
        want_attn = gen.signal == "ENTROPY"
        if gen.probe is not None:
            gen.probe.row_mask = torch.ones(b, dtype=torch.bool, device=device)
        surprisal: list[float | None] = [None] * b
        if self.seq2seq:
            hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            start = model.config.decoder_start_token_id
            first = torch.full((b, 1), start if start is not None else gen.pad_id, device=device)
            out = model(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                attention_mask=mask,
                decoder_input_ids=first,
                use_cache=True,
                output_attentions=want_attn,
            )
            slots = torch.ones((b, 1), dtype=mask.dtype, device=device)
            pos = None
        else:
            position = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(
                input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, output_attentions=want_attn
            )
            if gen.probe is not None:
                surprisal = prompt_surprisal(out.logits, ids, mask)
            slots, pos, hidden = mask, position[:, -1:] + 1, None
        logits = out.logits[:, -1, :]
        chosen = logits.argmax(-1)
        for r, row in enumerate(rows):
            row.result.prompt_tokens = int(lengths[r])
            row.result.prompt_surprisal_bits = surprisal[r]
        latency_us = self._emit(out, logits, chosen, list(rows), t0, on_step)
        for row in rows:
            row.result.prefill_us = latency_us
        self._merge(list(rows), out.past_key_values, slots, chosen.unsqueeze(-1), pos, hidden, mask)
        return self._evict()

    @torch.inference_mode()
    def step(self, on_step: RowStepCallback | None = None) -> list[Row]:
        """One decoding step for every row in flight; returns the rows that finished (and left the batch)."""
        if not self.rows:
            return []
        assert self._mask is not None and self._next is not None
        gen, model = self.gen, self.gen.loaded.model
        t0 = time.perf_counter()
        b = len(self.rows)
        if gen.probe is not None:
            gen.probe.row_mask = torch.ones(b, dtype=torch.bool, device=self._mask.device)
        mask = torch.cat([self._mask, self._mask.new_ones((b, 1))], dim=-1)
        want_attn = gen.signal == "ENTROPY"
        if self.seq2seq:
            out = model(
                encoder_outputs=BaseModelOutput(last_hidden_state=self._enc),
                attention_mask=self._enc_mask,
                decoder_input_ids=self._next,
                decoder_attention_mask=mask,
                past_key_values=self._cache,
                use_cache=True,
                output_attentions=want_attn,
            )
        else:
            out = model(
                input_ids=self._next,
                attention_mask=mask,
                position_ids=self._pos,
                past_key_values=self._cache,
                use_cache=True,
                output_attentions=want_attn,
            )
            assert self._pos is not None
            self._pos = self._pos + 1
        self._cache, self._mask = out.past_key_values, mask
        logits = out.logits[:, -1, :]
        chosen = logits.argmax(-1)
        self._emit(out, logits, chosen, self.rows, t0, on_step)
        self._next = chosen.unsqueeze(-1)
        return self._evict()

    def _emit(
        self, out: Any, logits: Tensor, chosen: Tensor, rows: list[Row], t0: float, on_step: RowStepCallback | None
    ) -> int:
        """The step's host copy: each row's token appended, EOS and limits noted, the StepBatch handed on; returns
        the step's latency, from ``t0`` to the host copy (which waits for the device)."""
        gen = self.gen
        active = torch.ones(len(rows), dtype=torch.bool, device=chosen.device)
        host, has_heads, has_ffn = gen.step_host(out, logits, chosen, active)
        latency_us = int((time.perf_counter() - t0) * 1e6)
        steps = np.array([row.step for row in rows], dtype=np.int64)
        for r, row in enumerate(rows):
            token = int(host[r, 0])
            row.result.token_ids.append(token)
            row.step += 1
            if gen.eos_id is not None and token == gen.eos_id:
                row.result.finish_reason, row.done = "STOP", True
            elif row.step >= row.limit:
                row.done = True
        if on_step is not None:
            sb = gen.unpack(host, int(steps.max()), latency_us, has_heads, has_ffn)
            sb.row_steps = steps
            on_step(sb, list(rows))
        return latency_us

    def _merge(
        self,
        rows: list[Row],
        cache: Any,
        slots: Tensor,
        nxt: Tensor,
        pos: Tensor | None,
        hidden: Tensor | None,
        enc_mask: Tensor,
    ) -> None:
        """Append newcomers (their cache, slot mask, next token, positions, encoder outputs) to the batch."""
        if not self.rows:
            self.rows, self._cache, self._mask, self._next, self._pos = list(rows), cache, slots, nxt, pos
            self._enc, self._enc_mask = hidden, enc_mask if self.seq2seq else None
            return
        assert self._mask is not None and self._next is not None
        width = max(self._mask.shape[1], slots.shape[1])
        old_self, old_cross = _layers(self._cache)
        new_self, new_cross = _layers(cache)
        for a, n in zip(old_self, new_self, strict=True):  # slots right-aligned: pad on the left
            a.keys = torch.cat([_pad(a.keys, width, 2, True), _pad(n.keys, width, 2, True)])
            a.values = torch.cat([_pad(a.values, width, 2, True), _pad(n.values, width, 2, True)])
        self._mask = torch.cat([_pad(self._mask, width, 1, True), _pad(slots, width, 1, True)])
        self._next = torch.cat([self._next, nxt])
        if pos is not None and self._pos is not None:
            self._pos = torch.cat([self._pos, pos])
        if self.seq2seq:
            assert self._enc is not None and self._enc_mask is not None and hidden is not None
            s = max(self._enc.shape[1], hidden.shape[1])
            for a, n in zip(old_cross, new_cross, strict=True):  # encoder positions left-aligned: pad on the right
                a.keys = torch.cat([_pad(a.keys, s, 2, False), _pad(n.keys, s, 2, False)])
                a.values = torch.cat([_pad(a.values, s, 2, False), _pad(n.values, s, 2, False)])
            self._enc = torch.cat([_pad(self._enc, s, 1, False), _pad(hidden, s, 1, False)])
            self._enc_mask = torch.cat([_pad(self._enc_mask, s, 1, False), _pad(enc_mask, s, 1, False)])
        self.rows += rows

    def _evict(self) -> list[Row]:
        """Cut finished rows out of every tensor; drop the slot and encoder columns no row uses any more."""
        done = [row for row in self.rows if row.done]
        if not done:
            return []
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._next = self._pos = self._enc = self._enc_mask = None
            return done
        assert self._mask is not None and self._next is not None
        idx = torch.tensor(keep, device=self._mask.device)
        self._mask, self._next = self._mask[idx], self._next[idx]
        self._pos = self._pos[idx] if self._pos is not None else None
        first = int(self._mask.any(0).nonzero()[0])  # slots left of every row's first key: padding for all
        self_layers, cross_layers = _layers(self._cache)
        for layer in self_layers:
            layer.keys, layer.values = layer.keys[idx, :, first:], layer.values[idx, :, first:]
        self._mask = self._mask[:, first:]
        if self.seq2seq:
            assert self._enc is not None and self._enc_mask is not None
            self._enc, self._enc_mask = self._enc[idx], self._enc_mask[idx]
            s = int(self._enc_mask.any(0).nonzero()[-1]) + 1
            for layer in cross_layers:
                layer.keys, layer.values = layer.keys[idx, :, :s], layer.values[idx, :, :s]
            self._enc, self._enc_mask = self._enc[:, :s], self._enc_mask[:, :s]
        return done
