"""Turn host-side step statistics into GenerationStep records and a request's outcome into a Completion."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

from producers.generate import TOPK, Generated, StepBatch
from producers.probe import AttentionSignal
from schemas.tensors import pack_f32


@dataclass(frozen=True)
class TraceMeta:
    """Who a batch row belongs to."""

    trace_id: str
    request_id: str
    reply_to: str
    tenant: str
    submitted_at_us: int


def now_us() -> int:
    return time.time_ns() // 1000


class TokenTexts:
    """Decodes single token ids, cached (a vocabulary is small, steps are many)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._decode = lru_cache(maxsize=65536)(lambda i: tokenizer.decode([i], skip_special_tokens=False))

    def __call__(self, token_id: int) -> str:
        text: str = self._decode(token_id)
        return text


def step_records(batch: StepBatch, metas: Sequence[TraceMeta], model_version: str, signal: AttentionSignal,
                 texts: TokenTexts) -> list[dict[str, Any]]:  # fmt: skip
    """One GenerationStep record per row still generating at this step."""
    emitted = now_us()
    n_layers = batch.hidden.shape[2]
    n_heads = batch.heads.shape[2] if batch.heads is not None else 0
    out = []
    for r, meta in enumerate(metas):
        if not batch.active[r]:
            continue
        lg = batch.logits[r]
        token = int(batch.token_ids[r])
        out.append({
            "trace_id": meta.trace_id,
            "request_id": meta.request_id,
            "model_version": model_version,
            "step": batch.step,
            "token_id": token,
            "token_text": texts(token),
            "logprob": float(lg[0]),
            "entropy_bits": float(lg[1]),
            "top1_top2_margin": float(lg[2]),
            "topk_mass": float(lg[3]),
            "topk_k": TOPK,
            "surprisal_bits": float(lg[4]),
            "num_layers": n_layers,
            "num_heads": n_heads,
            "layer_hidden_l2": pack_f32(batch.hidden[r, 0]),
            "layer_hidden_maxabs": pack_f32(batch.hidden[r, 1]),
            "layer_nonfinite": [int(x) for x in batch.hidden[r, 2]],
            "head_attention_entropy": pack_f32(batch.heads[r]) if batch.heads is not None else b"",
            "attention_signal": signal if batch.heads is not None else "NONE",
            "ffn_sparsity": pack_f32(batch.ffn[r]) if batch.ffn is not None else b"",
            "latency_us": batch.latency_us,
            "peak_memory_bytes": batch.peak_memory_bytes,
            "emitted_at_us": emitted,
        })  # fmt: skip
    return out


def completion_record(
    meta: TraceMeta,
    model_version: str,
    gen: Generated | None,
    text: str,
    embedding: Sequence[float],
    started_us: int,
    error: str | None = None,
) -> dict[str, Any]:
    """The Completion of one request: its text, or its error."""
    done = now_us()
    return {
        "trace_id": meta.trace_id,
        "request_id": meta.request_id,
        "reply_to": meta.reply_to,
        "tenant": meta.tenant,
        "model_version": model_version,
        "output_text": text if error is None else "",
        "token_count": len(gen.token_ids) if gen else 0,
        "prompt_token_count": gen.prompt_tokens if gen else 0,
        "prompt_surprisal_bits": gen.prompt_surprisal_bits if gen else None,
        "prompt_embedding": list(embedding),
        "finish_reason": "ERROR" if error is not None or gen is None else gen.finish_reason,
        "error": error,
        "timings": {
            "queue_us": max(0, started_us - meta.submitted_at_us),
            "prefill_us": gen.prefill_us if gen else 0,
            "decode_us": gen.decode_us if gen else 0,
            "total_us": done - started_us,
        },
        "completed_at_us": done,
    }
