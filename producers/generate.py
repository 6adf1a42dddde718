"""Instrumented generation: a KV-cached decoding loop that computes every step's statistics on the device.

Per step, the device reduces logits, hidden states, head outputs and FFN activations to a few numbers per sequence,
packs them into one small tensor, and a single copy brings them to the host; ``on_step`` receives them.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from transformers import StaticCache

from evostream.core.errors import EvoError
from evostream.models.anatomy import anatomy
from evostream.models.loading import LoadedModel
from evostream.producers.probe import Probe
from evostream.producers.sketch import DEFAULT_DIM, HiddenSketch
from evostream.producers.stats import LN2, attention_entropy, hidden_stats, logit_stats, step_stats
from evostream.producers.steps import TOPK, AttentionSignal, StepBatch


class GenerationError(EvoError):
    """Bad generation parameters or a failure inside the model."""


@dataclass(frozen=True)
class GenParams:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_at_eos: bool = True
    """False generates exactly max_new_tokens (benchmarks compare equal work)."""

    def check(self, limit: int) -> None:
        if not 1 <= self.max_new_tokens <= limit:
            raise GenerationError(f"max_new_tokens must be in 1..{limit}, got {self.max_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise GenerationError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class Generated:
    """The outcome of one prompt."""

    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "LENGTH"
    prompt_tokens: int = 0
    prompt_surprisal_bits: float | None = None
    prefill_us: int = 0
    decode_us: int = 0


StepCallback = Callable[[StepBatch], "Sequence[int] | None"]
"""Called with each step; it may return row indexes to stop now: those rows finish at once with finish reason
ESCALATED (the router moved their requests elsewhere mid-answer), as if they had produced EOS, and the batch goes
on."""
KVCache = Literal["dynamic", "static"]
MAX_PROMPT_TOKENS = 512
"""The longest prompt a generator accepts unless told otherwise (the service's limit too)."""
MAX_NEW_TOKENS_LIMIT = 1024
"""The most new tokens a request may ask for unless told otherwise (the service's limit too)."""


class InstrumentedGenerator:
    """Generates for a batch of prompts with a model, reporting every step's statistics."""

    def __init__(
        self,
        loaded: LoadedModel,
        signal: AttentionSignal | None = None,
        max_prompt_tokens: int = MAX_PROMPT_TOKENS,
        max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT,
        *,
        instrument: bool = True,
        kv_cache: KVCache = "dynamic",
        sketch_dim: int = DEFAULT_DIM,
    ) -> None:
        """``instrument=False`` builds the bare decoding loop: no hook is registered and no statistic is computed,
        only the tokens are chosen, so a benchmark can tell the loop's own cost from the instrumentation's. Such a
        generator refuses an ``on_step`` callback, since it has no step statistics to report.

        ``kv_cache="static"`` decodes a decoder-only model with a KV cache allocated once per batch for its whole
        length (prompt + max_new_tokens) and written in place, the shape a CUDA graph capture needs; a model it does
        not fit (encoder-decoder) decodes with the dynamic cache instead. ``decode_path`` says which one runs and
        ``decode_path_reason`` why."""
        self.loaded = loaded
        self.kv_cache: KVCache = kv_cache
        self.decode_path: KVCache = kv_cache
        self.decode_path_reason = "as asked"
        if kv_cache not in ("dynamic", "static"):
            raise GenerationError(f"kv_cache must be 'dynamic' or 'static', got {kv_cache!r}")
        if kv_cache == "static" and loaded.is_seq2seq:
            self.decode_path = "dynamic"
            self.decode_path_reason = (
                "the static KV cache path is for decoder-only models; encoder-decoder models "
                "decode with the dynamic cache"
            )
        self.anat = anatomy(loaded.model)
        self.instrument = instrument
        if not instrument:
            signal = "NONE"
        elif signal is None:
            signal = "ENTROPY" if loaded.attn_implementation == "eager" else "OUTPUT_NORM"
        if signal == "ENTROPY" and loaded.attn_implementation != "eager":
            raise GenerationError("attention ENTROPY needs the model loaded with attn_implementation='eager'")
        self.signal: AttentionSignal = signal
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens_limit = max_new_tokens_limit
        self.probe: Probe | None = Probe(self.anat, signal) if instrument else None
        self.sketch = HiddenSketch(self.anat.num_layers, sketch_dim) if instrument and sketch_dim > 0 else None
        """The per-step hidden-state sketch (``sketch.py``); None with ``sketch_dim=0``."""
        tok = loaded.tokenizer
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id

    @property
    def num_layers(self) -> int:
        return self.anat.num_layers

    @property
    def num_heads(self) -> int:
        return self.anat.num_heads

    def take_neuron_counts(self) -> tuple[npt.NDArray[np.int32], int] | None:
        """Per layer, per FFN neuron: on how many sequence-steps it fired since the last call, and how many
        sequence-steps that covers; None when the model's FFN output projections were not found."""
        taken = self.probe.take_neuron_counts() if self.probe is not None else None
        if taken is None:
            return None
        counts, rows = taken
        return counts.numpy().astype(np.int32), rows

    def close(self) -> None:
        if self.probe is not None:
            self.probe.remove()

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[str], params: GenParams, on_step: StepCallback | None = None
    ) -> list[Generated]:
        params.check(self.max_new_tokens_limit)
        if on_step is not None and self.probe is None:
            raise GenerationError("this generator was built with instrument=False: it has no step statistics to report")
        if not prompts:
            return []
        model = self.loaded.model
        probe = self.probe
        device = self.loaded.device
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        input_ids, mask, lengths = self.encode(prompts)
        b = input_ids.shape[0]
        results = [Generated(prompt_tokens=int(n)) for n in lengths]
        gen = torch.Generator(device=device)
        if params.seed is not None:
            gen.manual_seed(params.seed)
        else:
            gen.seed()
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        want_attn = self.signal == "ENTROPY"

        static = self.decode_path == "static"
        t0 = time.perf_counter()
        surprisal: list[float | None] = [None] * b
        if self.loaded.is_seq2seq:
            encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=mask)
            start = model.config.decoder_start_token_id
            next_input = torch.full((b, 1), start if start is not None else self.pad_id, device=device)
            past = None

            def forward(inp: Tensor, past_kv: object) -> object:
                return model(
                    encoder_outputs=encoder_outputs,
                    attention_mask=mask,
                    decoder_input_ids=inp,
                    past_key_values=past_kv,
                    use_cache=True,
                    output_attentions=want_attn,
                )
        else:
            if probe is not None:
                probe.row_mask = ~finished
            enc_mask = mask
            position = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = None
            if static:
                # the whole length allocated once, and a mask of that length from the start: every step's inputs
                # keep their shapes (positions past the newest are hidden by causality, not by the mask)
                cache = StaticCache(config=model.config, max_cache_len=input_ids.shape[1] + params.max_new_tokens)
                mask = torch.cat([enc_mask, enc_mask.new_ones((b, params.max_new_tokens))], dim=-1)
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position,
                past_key_values=cache,
                use_cache=True,
                output_attentions=want_attn,
            )
            if probe is not None:
                surprisal = prompt_surprisal(out.logits, input_ids, enc_mask)
            past = out.past_key_values
            next_pos = position[:, -1:] + 1

        prefill_us = 0
        for step in range(params.max_new_tokens):
            ts = time.perf_counter()
            if probe is not None:
                probe.row_mask = ~finished
            if self.loaded.is_seq2seq:
                out = forward(next_input, past)
            elif step > 0:
                if not static:
                    mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=device)], dim=-1)
                out = model(
                    input_ids=next_input,
                    attention_mask=mask,
                    position_ids=next_pos,
                    past_key_values=past,
                    use_cache=True,
                    output_attentions=want_attn,
                )
                next_pos = next_pos + 1
            past = out.past_key_values
            logits = out.logits[:, -1, :]
            chosen = self._choose(logits, params, gen)
            chosen = torch.where(finished, torch.full_like(chosen, self.pad_id), chosen)
            host, has_heads, has_ffn = self.step_host(out, logits, chosen, ~finished)
            if self.eos_id is not None and params.stop_at_eos:
                finished = finished | (chosen == self.eos_id)
            now = time.perf_counter()
            latency_us = int((now - (t0 if step == 0 else ts)) * 1e6)
            if step == 0:
                prefill_us = latency_us
            token_ids, was_active = host[:, 0].astype(np.int64), host[:, 1] > 0.5
            for r in range(b):
                if was_active[r]:
                    results[r].token_ids.append(int(token_ids[r]))
                    if params.stop_at_eos and self.eos_id is not None and token_ids[r] == self.eos_id:
                        results[r].finish_reason = "STOP"
            if on_step is not None:
                stop = on_step(self.unpack(host, step, latency_us, has_heads, has_ffn))
                if stop:
                    finished = self._stop_rows(finished, stop, was_active, results)
            if bool(finished.all()):
                break
            next_input = chosen.unsqueeze(-1)
        total_us = int((time.perf_counter() - t0) * 1e6)
        for r, res in enumerate(results):
            res.prompt_surprisal_bits = surprisal[r]
            res.prefill_us = prefill_us
            res.decode_us = total_us - prefill_us
        return results

    @staticmethod
    def _stop_rows(
        finished: Tensor, rows: Sequence[int], was_active: npt.NDArray[np.bool_], results: list[Generated]
    ) -> Tensor:
        """``rows`` finished now with ESCALATED (even one whose token this step was EOS: it was escalated on it);
        a row that had finished before this step keeps its reason."""
        finished = finished.clone()
        for r in rows:
            if not 0 <= r < len(results):
                raise GenerationError(f"on_step asked to stop row {r} of a batch of {len(results)}")
            if was_active[r]:
                results[r].finish_reason = "ESCALATED"
                finished[r] = True
        return finished

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor, list[int]]:
        """Token ids and attention mask of ``prompts`` on the model's device (padded on the left for decoder-only
        models, so every row's newest token is last), and each prompt's length; refuses an empty or oversize one."""
        tok = self.loaded.tokenizer
        if self.loaded.is_seq2seq:
            enc = tok(list(prompts), return_tensors="pt", padding=True)
        else:
            enc = tok(list(prompts), return_tensors="pt", padding=True, padding_side="left")
        lengths: list[int] = enc.attention_mask.sum(-1).tolist()
        too_long = [n for n in lengths if n > self.max_prompt_tokens]
        if too_long:
            raise GenerationError(f"prompt of {max(too_long)} tokens exceeds the limit of {self.max_prompt_tokens}")
        if 0 in lengths:
            raise GenerationError("a prompt encodes to no tokens: there is nothing to condition on")
        device = self.loaded.device
        return enc.input_ids.to(device), enc.attention_mask.to(device), lengths

    def step_host(
        self, out: object, logits: Tensor, chosen: Tensor, active: Tensor
    ) -> tuple[npt.NDArray[np.float32], bool, bool]:
        """One step's chosen tokens, active flags and (instrumented) statistics, packed on the device and brought
        to the host in one copy; whether head and FFN columns are in it."""
        probe = self.probe
        if probe is not None and self.signal != "ENTROPY" and (stacked := probe.take_stacked()) is not None:
            hidden, heads_in, ffn_in = stacked  # every layer alike: one function for every statistic
            mask = probe.row_mask if probe.row_mask is not None else active
            packed, fired = step_stats(
                logits, chosen, active, hidden, heads_in, ffn_in, mask, self.anat.num_heads, TOPK
            )
            if fired is not None:
                probe.fold_counts(fired, int(chosen.shape[0]))
            if self.sketch is not None:
                packed = torch.cat([packed, self.sketch(hidden)], dim=-1)
            fused: npt.NDArray[np.float32] = packed.cpu().numpy()  # the one copy to the host per step
            return fused, heads_in is not None, ffn_in is not None
        parts = [chosen.float().unsqueeze(-1), active.float().unsqueeze(-1)]
        heads = ffn = None
        if probe is not None:
            layers = probe.take_hidden()
            parts += [logit_stats(logits, chosen, TOPK), hidden_stats(layers).flatten(1)]
            heads, ffn = self._heads(out, probe), probe.take_ffn()
            parts += [t.flatten(1) for t in (heads, ffn) if t is not None]
            if self.sketch is not None:
                parts.append(self.sketch(layers))
        host: npt.NDArray[np.float32] = torch.cat(parts, dim=-1).cpu().numpy()  # the one copy to the host per step
        return host, heads is not None, ffn is not None

    def _choose(self, logits: Tensor, params: GenParams, gen: torch.Generator) -> Tensor:
        if not params.do_sample:
            return logits.argmax(-1)
        x = logits.float() / params.temperature
        if params.top_k > 0:
            kth = x.topk(min(params.top_k, x.shape[-1]), dim=-1).values[:, -1:]
            x = x.masked_fill(x < kth, -math.inf)
        if params.top_p < 1.0:
            sorted_x, idx = x.sort(dim=-1, descending=True)
            cum = sorted_x.softmax(-1).cumsum(-1)
            drop = cum - sorted_x.softmax(-1) > params.top_p  # keep the smallest prefix reaching top_p
            sorted_x = sorted_x.masked_fill(drop, -math.inf)
            x = torch.full_like(x, -math.inf).scatter(-1, idx, sorted_x)
        return torch.multinomial(x.softmax(-1), 1, generator=gen).squeeze(-1)

    def _heads(self, out: object, probe: Probe) -> Tensor | None:
        if self.signal == "ENTROPY":
            attn = (
                getattr(out, "decoder_attentions", None) if self.loaded.is_seq2seq else getattr(out, "attentions", None)
            )
            if not attn:
                return None
            return torch.stack([attention_entropy(a[:, :, -1, :]) for a in attn], dim=1)
        return probe.take_heads()

    def unpack(
        self, host: npt.NDArray[np.float32], step: int, latency_us: int, has_heads: bool, has_ffn: bool
    ) -> StepBatch:
        """The StepBatch of a ``step_host`` array."""
        device = self.loaded.device
        n_l, n_h = self.num_layers, self.num_heads
        b = host.shape[0]
        o = 7
        hidden = host[:, o : o + 3 * n_l].reshape(b, 3, n_l)
        o += 3 * n_l
        heads = None
        if has_heads:
            heads = host[:, o : o + n_l * n_h].reshape(b, n_l, n_h)
            o += n_l * n_h
        ffn = host[:, o : o + n_l] if has_ffn else None
        o += n_l if has_ffn else 0
        sketch = host[:, o : o + 2 * self.sketch.dim] if self.sketch is not None and self.probe is not None else None
        if device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(device))
        else:
            peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return StepBatch(
            step=step,
            token_ids=host[:, 0].astype(np.int64),
            active=host[:, 1] > 0.5,
            logits=host[:, 2:7],
            hidden=hidden,
            heads=heads,
            ffn=ffn,
            latency_us=latency_us,
            peak_memory_bytes=peak,
            sketch=sketch,
        )


def prompt_surprisal(logits: Tensor, input_ids: Tensor, mask: Tensor) -> list[float | None]:
    """Mean surprisal in bits of each prompt's tokens under the model (left-padded batch)."""
    if input_ids.shape[1] < 2:
        return [None] * input_ids.shape[0]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok_logp = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    m = (mask[:, 1:] * mask[:, :-1]).float()
    n = m.sum(-1)
    mean = -(tok_logp * m).sum(-1) / n.clamp(min=1) / LN2
    return [float(v) if c > 0 else None for v, c in zip(mean.tolist(), n.tolist(), strict=True)]
