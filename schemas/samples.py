"""Deterministic example records of the right shape, for self-checks, benchmarks and tests.

They are marked with ``model_version="selfcheck"``: they exercise the transport and the codec, and must never be
mistaken for telemetry of a real model.
"""

from __future__ import annotations

from typing import Any

from schemas.tensors import pack_f32

SELFCHECK_VERSION = "selfcheck"


def generation_step(i: int, trace_id: str, layers: int = 4, heads: int = 4, t0_us: int = 0) -> dict[str, Any]:
    """The ``i``-th step of a synthetic trace: every field set, values a pure function of ``i``."""

    def f(k: int) -> float:
        # float32-exact values, so a decode compares equal to what was encoded
        return float(((i * 131 + k * 17) % 1000) / 1024.0)

    return {
        "trace_id": trace_id,
        "request_id": f"req-{trace_id}",
        "model_version": SELFCHECK_VERSION,
        "step": i,
        "token_id": (i * 7919) % 384,
        "token_text": chr(97 + i % 26),
        "logprob": -f(1),
        "entropy_bits": f(2) * 8.0,
        "top1_top2_margin": f(3),
        "topk_mass": f(4),
        "topk_k": 10,
        "surprisal_bits": f(5),
        "num_layers": layers,
        "num_heads": heads,
        "layer_hidden_l2": pack_f32([f(10 + j) * 32.0 for j in range(layers)]),
        "layer_hidden_maxabs": pack_f32([f(20 + j) * 4.0 for j in range(layers)]),
        "layer_nonfinite": [0] * layers,
        "head_attention_entropy": pack_f32(
            [[f(30 + j * heads + h) * 4.0 for h in range(heads)] for j in range(layers)]
        ),
        "attention_signal": "ENTROPY",
        "ffn_sparsity": pack_f32([f(60 + j) for j in range(layers)]),
        "latency_us": 1000 + i % 500,
        "peak_memory_bytes": 1 << 26,
        "emitted_at_us": t0_us + i * 1000,
    }
