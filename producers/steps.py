"""One decoding step on the host, and the GenerationStep records made of it.

Nothing here imports torch: the step emitter's process works from these alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from evostream.core.clock import now_us
from evostream.schemas.tensors import pack_f16, pack_f32

TOPK = 10
"""Top-k mass is the probability of the k most likely tokens."""

AttentionSignal = Literal["ENTROPY", "OUTPUT_NORM", "NONE"]


@dataclass
class StepBatch:
    """One decoding step of a batch, on the host. Row r belongs to prompt r."""

    step: int
    token_ids: npt.NDArray[np.int64]  # [B]
    logits: npt.NDArray[np.float32]  # [B, 5]: logprob, entropy_bits, margin, topk_mass, surprisal_bits
    hidden: npt.NDArray[np.float32]  # [B, 3, L]: l2, maxabs, nonfinite count
    heads: npt.NDArray[np.float32] | None  # [B, L, H]
    ffn: npt.NDArray[np.float32] | None  # [B, L]
    active: npt.NDArray[np.bool_]  # [B]: False once a sequence has finished before this step
    latency_us: int
    peak_memory_bytes: int
    row_steps: npt.NDArray[np.int64] | None = None
    """[B] each row's own step index, where rows of one batch are at different steps (continuous batching);
    None: every row is at ``step``."""
    sketch: npt.NDArray[np.float32] | None = None
    """[B, 2 * dim]: the hidden-state sketch (``sketch.py``), None when off."""


@dataclass(frozen=True)
class TraceMeta:
    """Who a batch row belongs to."""

    trace_id: str
    request_id: str
    reply_to: str
    tenant: str
    submitted_at_us: int
    template_version: str | None = None
    """The governed prompt template the request's prompt was rendered with (its Completion says so)."""


def step_records(
    batch: StepBatch,
    metas: Sequence[TraceMeta],
    model_version: str,
    signal: AttentionSignal,
    token_texts: Sequence[str],
) -> list[dict[str, Any]]:
    """One GenerationStep record per row still generating at this step; ``token_texts[r]`` is row r's token."""
    emitted = now_us()
    n_layers = batch.hidden.shape[2]
    n_heads = batch.heads.shape[2] if batch.heads is not None else 0
    out = []
    for r, meta in enumerate(metas):
        if not batch.active[r]:
            continue
        lg = batch.logits[r]
        token = int(batch.token_ids[r])
        out.append(
            {
                "trace_id": meta.trace_id,
                "request_id": meta.request_id,
                "model_version": model_version,
                "step": batch.step if batch.row_steps is None else int(batch.row_steps[r]),
                "token_id": token,
                "token_text": token_texts[r],
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
                "hidden_sketch": pack_f16(batch.sketch[r]) if batch.sketch is not None else b"",
                "latency_us": batch.latency_us,
                "peak_memory_bytes": batch.peak_memory_bytes,
                "emitted_at_us": emitted,
            }
        )
    return out
