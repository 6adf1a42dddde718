"""The validation sandbox: a candidate against its parent, in one run, and a verdict with every gate's value.

What it measures, side by side:
- per-task exact-match accuracy on the held-out suite (gate: no task drops more than ``max_task_drop``, and the mean
  no more than ``max_mean_drop``);
- agreement with the parent on replayed logged traffic (the fraction of logged prompts answered exactly as the
  parent answers them; gate ``min_agreement``);
- the risk rate, alerts per 100 generations on the same prompts (gate: at most ``max_risk_increase`` above the
  parent's), when the caller supplies how to compute it (the risk maths belongs to the processors; the CLI wires it);
- milliseconds per generated token and bytes on disk (reported; the search decides what is worth it);
- that the candidate loads from its stored artifact: the candidate measured here IS the one loaded from the store.

A candidate that fails any gate gets ``passed = False``; governance never lets it serve (no staging, no production
without a passed validation)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from evostream.consumers.evolution.measure import Speed, ms_per_token, parameter_count, weight_bytes
from evostream.core.errors import EvolutionError
from evostream.models.suite.evaluate import evaluate, predict
from evostream.models.suite.tasks import Example

RiskRate = Callable[[nn.Module, PreTrainedTokenizerBase, Sequence[str]], float]
"""Alerts per 100 generations of a model on prompts."""


@dataclass(frozen=True)
class Gates:
    max_task_drop: float = 0.02
    """The most any one task's accuracy may fall below the parent's (absolute, 0.02 = 2 points)."""
    max_mean_drop: float = 0.01
    """The most the mean task accuracy may fall below the parent's."""
    min_agreement: float = 0.9
    """The least fraction of replayed logged prompts answered exactly as the parent answers them."""
    max_risk_increase: float = 2.0
    """The most the alerts per 100 generations may rise above the parent's."""


@dataclass(frozen=True)
class Side:
    """One model as the sandbox saw it."""

    accuracy: dict[str, float]
    parameters: int
    bytes: int
    speed: Speed
    risk_rate: float | None


@dataclass
class Validation:
    passed: bool
    gates: dict[str, dict[str, Any]]
    """gate name -> {"value", "limit", "passed"}."""
    parent: Side
    candidate: Side
    agreement: float | None
    replayed: int
    notes: list[str] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        """The gates and measurements as a ValidationCompleted event carries them."""
        out: dict[str, Any] = {name: dict(g) for name, g in self.gates.items()}
        out["measured"] = {
            "parent": _side_json(self.parent),
            "candidate": _side_json(self.candidate),
            "agreement": self.agreement,
            "replayed_prompts": self.replayed,
        }
        return out


def _side_json(s: Side) -> dict[str, Any]:
    lo, hi = s.speed.spread
    return {
        "accuracy": s.accuracy,
        "parameters": s.parameters,
        "bytes": s.bytes,
        "ms_per_token": {
            "median": round(s.speed.median, 4),
            "min": round(lo, 4),
            "max": round(hi, 4),
            "runs": len(s.speed.runs),
        },
        "alerts_per_100": s.risk_rate,
    }


def _gate(value: float, limit: float, ok: bool) -> dict[str, Any]:
    return {"value": round(value, 6), "limit": limit, "passed": bool(ok)}


def validate(
    parent: tuple[nn.Module, PreTrainedTokenizerBase, Path],
    candidate: tuple[nn.Module, PreTrainedTokenizerBase, Path],
    held_out: Sequence[Example],
    replay_prompts: Sequence[str] = (),
    gates: Gates = Gates(),
    risk_rate: RiskRate | None = None,
    speed_prompts: Sequence[str] = (),
    speed_reps: int = 5,
    new_tokens: int = 16,
    progress: Callable[[str], None] = lambda _: None,
) -> Validation:
    """Measure ``candidate`` (model, tokenizer, the folder it was loaded from: its stored artifact) against
    ``parent`` (the same) and judge it by ``gates``."""
    if not held_out:
        raise EvolutionError("validation needs held-out examples")
    (pm, ptok, pdir), (cm, ctok, cdir) = parent, candidate
    progress(f"validation: held-out suite, {len(held_out)} examples, parent and candidate")
    acc = {"parent": evaluate(pm, ptok, held_out), "candidate": evaluate(cm, ctok, held_out)}
    agreement = None
    if replay_prompts:
        progress(f"validation: agreement on {len(replay_prompts)} replayed logged prompts")
        theirs = predict(pm, ptok, replay_prompts)
        ours = predict(cm, ctok, replay_prompts)
        agreement = sum(a == b for a, b in zip(theirs, ours, strict=True)) / len(replay_prompts)
    risk: dict[str, float | None] = {"parent": None, "candidate": None}
    if risk_rate is not None:
        prompts = list(replay_prompts) or [e.prompt for e in held_out]
        progress(f"validation: risk rate on {len(prompts)} prompts")
        risk = {"parent": risk_rate(pm, ptok, prompts), "candidate": risk_rate(cm, ctok, prompts)}
    progress(f"validation: speed, {speed_reps} repetitions side by side")
    timing = ms_per_token(
        {"parent": (pm, ptok), "candidate": (cm, ctok)},
        list(speed_prompts) or [e.prompt for e in held_out[:32]],
        new_tokens,
        speed_reps,
        progress=progress,
    )
    sides = {
        name: Side(acc[name], parameter_count(m), weight_bytes(d), timing[name], risk[name])
        for name, m, d in (("parent", pm, pdir), ("candidate", cm, cdir))
    }
    checks: dict[str, dict[str, Any]] = {}
    tasks = [t for t in acc["parent"] if t != "mean"]
    worst = max(acc["parent"][t] - acc["candidate"].get(t, 0.0) for t in tasks)
    checks["max_task_drop"] = _gate(worst, gates.max_task_drop, worst <= gates.max_task_drop + 1e-9)
    mean_drop = acc["parent"]["mean"] - acc["candidate"]["mean"]
    checks["mean_drop"] = _gate(mean_drop, gates.max_mean_drop, mean_drop <= gates.max_mean_drop + 1e-9)
    if agreement is not None:
        checks["agreement"] = _gate(agreement, gates.min_agreement, agreement >= gates.min_agreement)
    if risk["parent"] is not None and risk["candidate"] is not None:
        rise = risk["candidate"] - risk["parent"]
        checks["risk_increase"] = _gate(rise, gates.max_risk_increase, rise <= gates.max_risk_increase)
    checks["loads_from_artifact"] = {"value": str(cdir), "limit": None, "passed": True}
    return Validation(
        passed=all(g["passed"] for g in checks.values()),
        gates=checks,
        parent=sides["parent"],
        candidate=sides["candidate"],
        agreement=agreement,
        replayed=len(replay_prompts),
    )


def accuracy_table(v: Validation) -> list[str]:
    """Lines: per task, the parent's and the candidate's accuracy."""
    lines = []
    for task, a in v.parent.accuracy.items():
        lines.append(f"  {task:<8} parent {a:.3f}  candidate {v.candidate.accuracy.get(task, 0.0):.3f}")
    return lines


def ratios(v: Validation) -> Mapping[str, float]:
    """How much smaller and faster the candidate is (parent / candidate)."""
    return {
        "bytes": v.parent.bytes / v.candidate.bytes,
        "parameters": v.parent.parameters / v.candidate.parameters,
        "speed": v.parent.speed.median / v.candidate.speed.median,
    }
