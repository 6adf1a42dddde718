"""A rollout's plan: the weighted steps a candidate goes through, each step's window and the gates that judge it.

A rollout (``consumers.governance.rollouts``) moves production of one model from the incumbent to a candidate: a
shadow phase (weight 0, requests mirrored to the candidate), then each of ``steps`` in turn (the percent of requests
the candidate answers), each held until its window passes every gate, and ``clean_cycles`` clean windows at 100%
before the candidate becomes production. A gate's tolerance is relative: the candidate may be worse than the
incumbent by that share of the incumbent's value before the gate breaks (the issue's 5-10% a regression, 10-30%
critical). The plan is written into ``RolloutStarted`` as ``to_json()``, so a replay reads the plan the person chose,
never this module's defaults of the day.

Pure: no I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GATE_METRICS = ("alert_rate", "accuracy", "p95_latency", "error_rate")
"""The metrics a gate may judge (``rollout.gates`` computes them per window)."""


@dataclass(frozen=True)
class Gate:
    """One metric's gate: how much worse than the incumbent (relative) the candidate may be before it breaks."""

    tolerance: float


DEFAULT_GATES: Mapping[str, Gate] = {
    "alert_rate": Gate(0.10),
    "accuracy": Gate(0.05),
    "p95_latency": Gate(0.20),
    "error_rate": Gate(0.02),
}
_FIELDS = (
    "steps",
    "step_s",
    "min_samples",
    "shadow_share",
    "shadow_s",
    "clean_cycles",
    "confidence",
    "gates",
    "max_window_s",
)
MAX_WINDOW_FACTOR = 10
"""The default ``max_window_s``: this many times the longer of ``step_s`` and ``shadow_s``."""


def _default_gates() -> dict[str, Gate]:
    return dict(DEFAULT_GATES)


@dataclass(frozen=True)
class RolloutPlan:
    """The steps, windows and gates of one rollout (weights in percent of requests)."""

    steps: tuple[int, ...] = (1, 5, 25, 50, 100)
    """percent of requests answered by the candidate at each step; ascending, the last 100"""
    step_s: float = 60.0
    """a window is judged once it is this old AND holds ``min_samples`` candidate answers"""
    min_samples: int = 30
    """candidate answers (canary + shadow) a window needs before it can pass (a window can fail with fewer)"""
    shadow_share: float = 0.1
    """the share of the requests the candidate does not answer that are mirrored to it"""
    shadow_s: float = 60.0
    """the shadow phase before step 0 (0: step 0 at once)"""
    clean_cycles: int = 3
    """clean windows at 100% before RolloutCompleted"""
    confidence: float = 0.99
    """each gate's one-sided test's confidence"""
    gates: Mapping[str, Gate] = field(default_factory=_default_gates)
    max_window_s: float | None = None
    """a window (or a cycle at 100%) this old without ``min_samples`` candidate answers aborts the rollout: the
    candidate gets no traffic (it failed to load, the mirror is off, too few requests); None: ``MAX_WINDOW_FACTOR``
    times the longer of ``step_s`` and ``shadow_s``"""

    def __post_init__(self) -> None:
        if self.max_window_s is None:  # the default, worked out: a plan holds the number it is written with
            object.__setattr__(self, "max_window_s", MAX_WINDOW_FACTOR * max(self.step_s, self.shadow_s))

    @property
    def window_limit_s(self) -> float:
        """``max_window_s`` (never None once the plan is made)."""
        return MAX_WINDOW_FACTOR * max(self.step_s, self.shadow_s) if self.max_window_s is None else self.max_window_s

    def to_json(self) -> dict[str, Any]:
        """The plan as plain JSON, every field written (what RolloutStarted carries)."""
        return {
            "steps": list(self.steps),
            "step_s": float(self.step_s),
            "min_samples": int(self.min_samples),
            "shadow_share": float(self.shadow_share),
            "shadow_s": float(self.shadow_s),
            "clean_cycles": int(self.clean_cycles),
            "confidence": float(self.confidence),
            "gates": {name: {"tolerance": float(g.tolerance)} for name, g in sorted(self.gates.items())},
            "max_window_s": float(self.window_limit_s),
        }

    @classmethod
    def from_json(cls, d: Any) -> RolloutPlan:
        """The plan of a JSON object; fields it omits take the defaults. ValueError names what is wrong: an unknown
        field, a value of the wrong type, or a plan with problems (``problems``)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a rollout plan is a JSON object, not {type(d).__name__}")
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown rollout plan field(s) {unknown} (known: {', '.join(_FIELDS)})")
        kw: dict[str, Any] = {}
        if "steps" in d:
            steps = d["steps"]
            if not isinstance(steps, (list, tuple)) or not all(_is_int(s) for s in steps):
                raise ValueError(f"plan steps must be a list of whole percents, got {steps!r}")
            kw["steps"] = tuple(int(s) for s in steps)
        for name in ("step_s", "shadow_share", "shadow_s", "confidence", "max_window_s"):
            if name in d:
                kw[name] = _number(name, d[name])
        for name in ("min_samples", "clean_cycles"):
            if name in d:
                if not _is_int(d[name]):
                    raise ValueError(f"plan {name} must be a whole number, got {d[name]!r}")
                kw[name] = int(d[name])
        if "gates" in d:
            kw["gates"] = _gates(d["gates"])
        plan = cls(**kw)
        found = problems(plan)
        if found:
            raise ValueError("; ".join(found))
        return plan


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(name: str, x: Any) -> float:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        raise ValueError(f"plan {name} must be a number, got {x!r}")
    return float(x)


def _gates(d: Any) -> dict[str, Gate]:
    if not isinstance(d, Mapping):
        raise ValueError(f"plan gates must be an object of metric -> {{'tolerance': x}}, got {d!r}")
    out: dict[str, Gate] = {}
    for name, g in d.items():
        if not isinstance(g, Mapping) or set(g) != {"tolerance"}:
            raise ValueError(f"plan gate {name!r} must be {{'tolerance': x}}, got {g!r}")
        out[str(name)] = Gate(_number(f"gate {name} tolerance", g["tolerance"]))
    return out


def problems(plan: RolloutPlan) -> list[str]:
    """What is wrong with a plan (empty when it may run): steps ascending within 1..100 and ending at 100, positive
    windows and sample counts, shares and confidence within their ranges, gates on known metrics with finite,
    non-negative tolerances."""
    out: list[str] = []
    steps = plan.steps
    if not steps:
        out.append("a plan needs at least one step (the last is 100)")
    else:
        if any(not _is_int(s) or not 1 <= s <= 100 for s in steps):
            out.append(f"steps are whole percents within 1..100, got {list(steps)}")
        elif any(a >= b for a, b in itertools.pairwise(steps)):
            out.append(f"steps must rise strictly, got {list(steps)}")
        if steps[-1] != 100:
            out.append(f"the last step must be 100 (the candidate answers every request), got {steps[-1]}")
    if not (math.isfinite(plan.step_s) and plan.step_s > 0):
        out.append(f"step_s must be a positive number of seconds, got {plan.step_s}")
    if not (math.isfinite(plan.shadow_s) and plan.shadow_s >= 0):
        out.append(f"shadow_s must be 0 or more seconds, got {plan.shadow_s}")
    if not _is_int(plan.min_samples) or plan.min_samples < 1:
        out.append(f"min_samples must be at least 1, got {plan.min_samples}")
    if not _is_int(plan.clean_cycles) or plan.clean_cycles < 1:
        out.append(f"clean_cycles must be at least 1, got {plan.clean_cycles}")
    if not 0.0 <= plan.shadow_share <= 1.0:
        out.append(f"shadow_share must be within [0, 1], got {plan.shadow_share}")
    elif plan.shadow_share == 0.0 and plan.shadow_s > 0:
        out.append(
            f"shadow_share 0 mirrors nothing, so a shadow phase of {plan.shadow_s:g} s would never get a sample: "
            "give shadow_share > 0, or shadow_s 0 (no shadow phase)"
        )
    limit = plan.window_limit_s
    if not (math.isfinite(limit) and limit >= max(plan.step_s, plan.shadow_s)):
        out.append(
            f"max_window_s must be a number of seconds at least step_s and shadow_s "
            f"({max(plan.step_s, plan.shadow_s):g}), got {limit}"
        )
    if not 0.0 < plan.confidence < 1.0:
        out.append(f"confidence must be within (0, 1), got {plan.confidence}")
    if not plan.gates:
        out.append(f"a plan needs at least one gate (metrics: {', '.join(GATE_METRICS)})")
    for name, gate in sorted(plan.gates.items()):
        if name not in GATE_METRICS:
            out.append(f"unknown gate {name!r} (metrics: {', '.join(GATE_METRICS)})")
        elif not (math.isfinite(gate.tolerance) and gate.tolerance >= 0):
            out.append(f"gate {name}: tolerance must be a finite number >= 0, got {gate.tolerance}")
    return out
