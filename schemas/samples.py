"""Deterministic example records of the right shape, for self-checks, benchmarks and tests.

Generation steps are marked with ``model_version="selfcheck"``, the reports (completions, risk, alerts, drift,
profiles, governance) with the versions in ``VERSIONS``: they exercise the transport, the codec and the sinks, and
must never be mistaken for telemetry of a real model.
"""

from __future__ import annotations

import json

from evostream.schemas import records
from evostream.schemas.tensors import pack_f16, pack_f32

SELFCHECK_VERSION = "selfcheck"


def generation_step(i: int, trace_id: str, layers: int = 4, heads: int = 4, t0_us: int = 0) -> records.GenerationStep:
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
        "hidden_sketch": pack_f16([f(80 + j) - 0.5 for j in range(8)]),
        "latency_us": 1000 + i % 500,
        "peak_memory_bytes": 1 << 26,
        "emitted_at_us": t0_us + i * 1000,
    }


# -- the reports sinks read: every field set, values a pure function of the index --------------------------------

T0_US = 1_795_000_000_000_000
"""A fixed time (2026-11-18) for every sample; sinks that check a timestamp window get ``now_us`` instead."""
VERSIONS = ("tiny-a", "tiny-b")
"""The model versions the report samples alternate between."""


def completion(i: int, t_us: int = T0_US) -> records.Completion:
    return {
        "trace_id": f"trace-{i}",
        "request_id": f"req-{i}",
        "reply_to": "evo.replies",
        "tenant": "acme" if i % 2 else "default",
        "model_version": VERSIONS[i % 2],
        "output_text": f"answer number {i}",
        "token_count": 4 + i % 5,
        "output_token_ids": [10 + i, 11, 12, 1],
        "prompt_token_count": 7 + i % 3,
        "prompt_surprisal_bits": 3.5,
        "prompt_embedding": [0.25, -0.5, 0.125],
        "finish_reason": "LENGTH" if i % 3 == 2 else "STOP",
        "error": None,
        "timings": {"queue_us": 200, "prefill_us": 3000 + 100 * i, "decode_us": 20_000 + 1000 * i, "total_us": 25_000},
        "completed_at_us": t_us + i * 1000,
        "cached": i % 4 == 3,
        "cached_from": "trace-0" if i % 4 == 3 else None,
        "cost_usd": 0.0 if i % 4 == 3 else 0.0002 * (1 + i % 3),
        "role": "SHADOW" if i % 5 == 4 else "ANSWER",
        "rollout_id": "rollout-1" if i % 5 == 4 else None,
        "template_version": "qa@1" if i % 2 else None,
    }


def shadow_comparison(i: int, t_us: int = T0_US) -> records.ShadowComparison:
    """A mirrored request answered by both sample versions; every third one disagrees."""
    return {
        "request_id": f"req-{i}",
        "tenant": "acme" if i % 2 else "default",
        "rollout_id": "rollout-1" if i % 2 else None,
        "production_version": VERSIONS[0],
        "candidate_version": VERSIONS[1],
        "production_trace_id": f"trace-{i}",
        "candidate_trace_id": f"trace-{i}-shadow",
        "agree": i % 3 != 2,
        "production_tokens": 4 + i % 5,
        "candidate_tokens": 4 + i % 3,
        "production_us": 20_000 + 1000 * i,
        "candidate_us": 18_000 + 900 * i,
        "production_error": None,
        "candidate_error": "model error: sample" if i % 7 == 6 else None,
        "compared_at_us": t_us + i * 1000,
    }


def route_decision(i: int, t_us: int = T0_US) -> records.RouteDecision:
    """Decisions cycling through the stages: before generation, mid-answer, a refusal at the door."""
    stage: records.RouteStage = ("PROMPT", "GENERATION", "ADMISSION")[i % 3]
    chosen = ("self", "reference", "refused")[i % 3]
    return {
        "decision_id": f"decision-{i}",
        "request_id": f"req-{i}",
        "trace_id": "" if chosen == "refused" else f"trace-{i}",
        "tenant": "acme" if i % 2 else "default",
        "route": "default",
        "stage": stage,
        "candidates": [
            {"target": "self", "model_version": VERSIONS[0], "score": 0.1 * (i % 10), "cost_usd": 0.0001},
            {"target": "reference", "model_version": VERSIONS[1], "score": 0.0, "cost_usd": 0.002},
        ],
        "level": 3,
        "gate": 0.35,
        "chosen": chosen,
        "chosen_version": {"self": VERSIONS[0], "reference": VERSIONS[1]}.get(chosen, ""),
        "reason": f"sample decision {i}",
        "policy_version": "ab" * 32,
        "step": 5 if stage == "GENERATION" else None,
        "risk": 0.1 * (i % 10),
        "retry_after_s": 30.0 if chosen == "refused" else None,
        "decided_at_us": t_us + i * 1000,
    }


def risk_report(i: int, t_us: int = T0_US) -> records.RiskReport:
    flagged = i % 2 == 1
    return {
        "trace_id": f"trace-{i}",
        "request_id": f"req-{i}",
        "model_version": VERSIONS[i % 2],
        "stage": "FINAL",
        "step": None,
        "score": 0.25 + 0.5 * flagged + i / 1000,
        "flags": ["high_entropy", "low_margin"] if flagged else [],
        "blamed_layers": [1, 3] if flagged else [],
        "reason": "entropy above policy" if flagged else "",
        "steps": 4 + i % 5,
        "policy": "risk-default@1",
        "produced_at_us": t_us + i * 1000 + 500,
    }


def alert(i: int, t_us: int = T0_US) -> records.RiskAlert:
    return {
        "trace_id": f"trace-{i}",
        "request_id": f"req-{i}",
        "model_version": VERSIONS[i % 2],
        "severity": ("INFO", "WARNING", "CRITICAL")[i % 3],
        "stage": "FINAL",
        "score": 0.8 + i / 1000,
        "flags": ["high_entropy"],
        "blamed_layers": [2],
        "reason": "entropy above policy",
        "policy": "risk-default@1",
        "produced_at_us": t_us + i * 1000 + 600,
    }


def drift_report(i: int, t_us: int = T0_US) -> records.DriftReport:
    fired = i % 2 == 1
    return {
        "model_version": VERSIONS[i % 2],
        "reference_start_us": t_us - 10_000_000,
        "reference_end_us": t_us - 5_000_000,
        "window_start_us": t_us + i * 1_000_000,
        "window_end_us": t_us + (i + 1) * 1_000_000,
        "sample_count": 48,
        "statistics": [
            {"name": "embedding_mmd2", "value": 0.01 + 0.05 * fired, "threshold": 0.02, "p_value": 0.5, "fired": fired},
            {"name": "intent_psi", "value": 0.1, "threshold": 0.64, "p_value": None, "fired": False},
        ],
        "fired": fired,
        "produced_at_us": t_us + (i + 1) * 1_000_000,
    }


def profile(i: int, t_us: int = T0_US) -> records.ProfileSnapshot:
    return {
        "model_version": VERSIONS[i % 2],
        "window_start_us": t_us,
        "window_end_us": t_us + 60_000_000,
        "trace_count": 10 + i,
        "step_count": 100 + i,
        "head_utilization": [[0.5, 0.25], [0.75, 0.0]],
        "ffn_neuron_activation_counts": [[3, 0, 1], [0, 0, 2]],
        "dormant_neuron_fraction": [0.25, 0.5],
        "layer_frequency": [1.0, 0.5],
        "top_token_paths": [{"token_ids": [5, 6, 7], "count": 3 + i}],
        "produced_at_us": t_us + 60_000_000 + i,
    }


def governance(i: int, t_us: int = T0_US) -> records.GovernanceEvent:
    """Registered, then promoted to production, then rolled back, round and round (payloads as the service writes
    them; the chain's hashes and signatures are not valid: sinks record the log, they do not verify it)."""
    version = VERSIONS[(i // 3) % 2]
    type_, payload = [
        (
            "ModelRegistered",
            {
                "version": version,
                "artifact_uri": f"file:///a/{version}",
                "artifact_sha256": "0" * 64,
                "parent": None,
                "operator": None,
                "operator_params": {},
                "metrics": {},
            },
        ),
        ("Promoted", {"version": version, "stage": "production", "alias": None}),
        ("RolledBack", {"version": VERSIONS[0], "from_version": version}),
    ][i % 3]
    return {
        "event_id": f"event-{i}",
        "model_name": "tiny",
        "sequence": i,
        "type": type_,
        "type_version": 1,
        "actor": "admin",
        "reason": "sample",
        "payload_json": json.dumps(payload, sort_keys=True),
        "occurred_at_us": t_us + i,
        "prev_hash": f"{i - 1:064x}" if i else "",
        "key_id": "k1",
        "signature": "",
        "signature_alg": "ed25519",
        "hash": f"{i:064x}",
    }


def step(i: int, t_us: int = T0_US) -> records.GenerationStep:
    return generation_step(i, f"trace-{i // 4}", t0_us=t_us)
