"""How well the risk score tells wrong answers, how often a healthy model is alerted on, and whether injected faults
are caught: the default model on the task suite's held-out set, in-process, through the same TraceRisk fold the
stream processor runs.

- AUROC of the final risk score for "the answer is wrong", beside the AUROC of mean token entropy alone, on the
  held-out suite and on a stress split just past the training distribution (where the model does err);
- false-alert rate: traces of the healthy model that would raise an alert (early or final), all and correct ones;
- faults: a NaN in one decoder FFN weight, and a decoder forced to repeat (a logit bias cycling over 1 or 3
  tokens): share of traces flagged and the step of the first alert.

Run: python -m bench.risk_quality [--per-task 200] [--fault-prompts 60]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from producers.loading import LoadedModel, load_model
from producers.suite.evaluate import eval_set
from producers.suite.tasks import Example, make_split, stress_split
from stream_processors.reference import Traced, calibrate_model, policy_path, run_traced
from stream_processors.risk import Assessment, RiskPolicy, TraceRisk, family_of


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def fold(policy: RiskPolicy, t: Traced) -> tuple[Assessment, int | None]:
    """Final assessment and the step of the first alert (None if none)."""
    risk = TraceRisk(policy)
    first = None
    a = risk.assess()
    for s in t.steps:
        a = risk.update(s)
        if first is None and a.severity(policy) is not None:
            first = int(s["step"])
    return a, first


def healthy(lm: LoadedModel, policy: RiskPolicy, examples: list[Example], label: str) -> None:
    traced = list(run_traced(lm, [e.prompt for e in examples]))
    wrong, scores, entropy, alerted = [], [], [], []
    for e, t in zip(examples, traced, strict=True):
        a, first = fold(policy, t)
        wrong.append(t.output.strip() != e.answer)
        scores.append(a.score)
        entropy.append(float(np.mean([s["entropy_bits"] for s in t.steps])) if t.steps else 0.0)
        alerted.append(first is not None or a.severity(policy) is not None)
    w, al = np.array(wrong), np.array(alerted)
    print(f"{label}: {len(examples)} prompts, {w.sum()} wrong answers ({w.mean():.1%})")
    print(f"  AUROC risk score -> wrong answer: {auroc(scores, wrong):.3f}   "
          f"(mean token entropy alone: {auroc(entropy, wrong):.3f}; literature single-pass entropy ~0.69)")  # fmt: skip
    print(f"  false alerts: {al.mean():.2%} of all traces, {al[~w].mean():.2%} of correct answers "
          f"({al[~w].sum()} of {(~w).sum()}); alerts on wrong answers: {al[w].sum()} of {w.sum()}")  # fmt: skip


class RepeatBias:
    """A forward hook on the LM head that makes the decoder emit ``cycle`` over and over."""

    def __init__(self, cycle: Sequence[int]) -> None:
        self.cycle, self.calls = list(cycle), 0

    def __call__(self, module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
        tok = self.cycle[self.calls % len(self.cycle)]
        self.calls += 1
        out = out.clone()
        out[..., tok] += 1e4
        return out


def faults(lm: LoadedModel, policy: RiskPolicy, n: int) -> None:
    prompts = [e.prompt for e in make_split("faults", max(1, n // 6))][:n]
    model = lm.model
    dec = model.get_decoder() if hasattr(model, "get_decoder") else model
    ffn = next(m for name, m in dec.named_modules() if name.endswith("DenseReluDense.wo"))
    layer_name = next(name for name, m in dec.named_modules() if m is ffn)
    cases: list[tuple[str, str, Any]] = []
    saved = ffn.weight.data[0, 0].item()
    ffn.weight.data[0, 0] = float("nan")
    cases.append(("NaN weight in decoder " + layer_name, "nonfinite_hidden", list(run_traced(lm, prompts))))
    ffn.weight.data[0, 0] = saved
    head = model.get_output_embeddings()
    for cycle in ([ord("a") + 3], [ord("x") + 3, ord("y") + 3, ord("z") + 3]):
        hook = head.register_forward_hook(RepeatBias(cycle))
        try:
            cases.append((f"decoder forced to repeat a {len(cycle)}-token cycle", "repetition_loop",
                          list(run_traced(lm, prompts, max_new_tokens=24))))  # fmt: skip
        finally:
            hook.remove()
    for label, flag, traced in cases:
        folded = [fold(policy, t) for t in traced]
        hit = [flag in a.flags for a, _ in folded]
        firsts = [f for _, f in folded if f is not None]
        span = f"{min(firsts)}..{max(firsts)}" if firsts else "-"
        blamed = sorted({x for a, _ in folded for x in a.blamed_layers})
        print(f"fault: {label}: {flag} on {np.mean(hit):.0%} of {len(traced)} traces; first alert at step {span}; "
              f"blamed layers {blamed}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--per-task", type=int, default=200)
    ap.add_argument("--fault-prompts", type=int, default=60)
    ap.add_argument("--stress", type=int, default=1200, help="prompts of the stress split")
    args = ap.parse_args()
    lm = load_model(args.model)
    path = policy_path(family_of(lm.version))
    if path.exists():
        policy = RiskPolicy.from_json(path.read_text())
        print(f"# policy {policy.name} from {path} (calibrated on {policy.calibration.get('model_version')})")
    else:
        policy = calibrate_model(lm, [e.prompt for e in make_split("calibration", 100)])
        print(f"# policy calibrated now on {policy.calibration['steps']} steps (no {path})")
    print(f"# model {lm.version}, {lm.parameter_count():,} parameters")
    healthy(lm, policy, list(eval_set(args.per_task)), "held-out suite")
    healthy(lm, policy, stress_split(args.stress), "stress split (just past the training distribution)")
    faults(lm, policy, args.fault_prompts)
    print(f"# reproduce: python -m bench.risk_quality --per-task {args.per_task} --fault-prompts {args.fault_prompts} "
          f"--stress {args.stress}",
          file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
