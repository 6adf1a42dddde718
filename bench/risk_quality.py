"""How well the risk score tells wrong answers, against two baselines measured in the same run, how often a healthy
model is alerted on, and whether injected faults are caught: the default model in-process, through the same
TraceRisk fold the stream processor runs.

Splits (all prompts generated here; every reported split is checked against every split anything was fitted on,
by prompt text, and overlapping prompts are dropped with a count printed):
- the policy: the shipped one, fitted by `evostream calibrate` on the healthy calibration split (or fitted now on
  make_split("calibration", 100) when no policy file exists);
- calibration stress split (`stress_split(n, seed="stress-calibration")`): fits the baselines, never reported:
  the task-only score is each task's error rate here, and each baseline's alert cut-off is set here so that it
  alerts on the same share of traces as the risk policy does here;
- reported: the held-out suite, the stress split (`stress_split(n)`, seed "stress") and the fault prompts, each
  minus any prompt of the policy's calibration split and of the calibration stress split (which itself is kept
  clear of the policy's calibration split, so the alert share its cut-offs match is not in-sample).

Reported per split, for the risk score, mean token entropy and the task-only score:
- AUROC for "the answer is wrong": pooled, within each task, and within task over all same-task pairs (the
  task-only score is 0.5 there by construction); 95% intervals from a bootstrap over traces (within task for
  the per-task numbers);
- alerts (risk: an early or final severity; baselines: score above the cut-off): how many, precision and recall
  on wrong answers, with bootstrap intervals, and how many risk alerts came with no flag raised at any step (the
  entropy term alone: see the crossover in the header);
- for comparison at the same operating point: each baseline's precision and recall when it alerts on exactly as
  many traces of that split as the risk score does (its top-scoring ones);
- faults: a NaN in one decoder FFN weight, and a decoder forced to repeat (a logit bias cycling over 1 or 3
  tokens): share of traces flagged and the step of the first alert.

Run: python -m bench.risk_quality [--per-task 200] [--stress 1500] [--calibration-stress 1500]
     [--fault-prompts 60] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from evostream.cli.calibrate import calibrate_model
from evostream.models.loading import LoadedModel, load_model
from evostream.models.suite.evaluate import eval_set
from evostream.models.suite.tasks import TASKS, Example, make_split, stress_split
from evostream.producers.reference import Traced, run_traced
from evostream.stream_processors.risk.metrics import auroc
from evostream.stream_processors.risk.policy import RiskPolicy, family_of, policy_path
from evostream.stream_processors.risk.score import Assessment, TraceRisk

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]
SCORES = ("risk score", "mean entropy", "task only")
MIN_CLASS = 5
"""A task with fewer wrong (or right) answers than this gets its AUROC without a bootstrap interval: resamples
that lose the few would make the interval look far tighter than it is."""


def within_task_auroc(scores: F64, wrong: BOOL, tasks: npt.NDArray[np.str_]) -> float:
    """AUROC over (wrong, right) pairs of the same task only: what a score knows beyond which task it is."""
    num = den = 0.0
    for t in np.unique(tasks):
        m = tasks == t
        pairs = float(wrong[m].sum() * (~wrong[m]).sum())
        if pairs:
            num += auroc(scores[m], wrong[m]) * pairs
            den += pairs
    return num / den if den else float("nan")


@dataclass
class Outcome:
    """One reported trace: its task, whether the answer is wrong, its three scores and whether the risk alerted."""

    task: str
    wrong: bool
    risk: float
    entropy: float
    alerted: bool
    flagged: bool
    """Whether any flag was raised at any step (an alert without one is the entropy term alone)."""


def fold(policy: RiskPolicy, t: Traced) -> tuple[Assessment, int | None, bool]:
    """Final assessment, the step of the first alert (None if none), and whether any step raised a flag."""
    risk = TraceRisk(policy)
    first = None
    flagged = False
    a = risk.assess()
    for s in t.steps:
        a = risk.update(s)
        flagged = flagged or bool(a.flags)
        if first is None and a.severity(policy) is not None:
            first = int(s["step"])
    return a, first, flagged


def outcomes(lm: LoadedModel, policy: RiskPolicy, examples: Sequence[Example]) -> list[Outcome]:
    out = []
    for e, t in zip(examples, run_traced(lm, [e.prompt for e in examples]), strict=True):
        a, first, flagged = fold(policy, t)
        entropy = float(np.mean([s["entropy_bits"] for s in t.steps])) if t.steps else 0.0
        alerted = first is not None or a.severity(policy) is not None
        out.append(Outcome(e.task, t.output.strip() != e.answer, a.score, entropy, alerted, flagged))
    return out


@dataclass
class Baselines:
    """What the calibration stress split fixed: each task's error rate, and the baselines' alert cut-offs."""

    task_error: dict[str, float]
    cutoffs: dict[str, float]
    risk_alert_rate: float
    n: int

    def scores(self, rows: Sequence[Outcome]) -> dict[str, F64]:
        return {
            "risk score": np.array([r.risk for r in rows]),
            "mean entropy": np.array([r.entropy for r in rows]),
            "task only": np.array([self.task_error.get(r.task, 0.0) for r in rows]),
        }


def fit_baselines(rows: Sequence[Outcome]) -> Baselines:
    """Task error rates from ``rows``; a baseline alerts when its score is above the ``1 - rate`` quantile of its
    scores on ``rows`` (numpy "higher", so ties never push it over ``rate``), rate = the risk alert share here."""
    tasks = sorted({r.task for r in rows})
    task_error = {t: float(np.mean([r.wrong for r in rows if r.task == t])) for t in tasks}
    rate = float(np.mean([r.alerted for r in rows]))
    b = Baselines(task_error, {}, rate, len(rows))
    scores = b.scores(rows)
    b.cutoffs = {k: float(np.quantile(scores[k], 1 - rate, method="higher")) for k in SCORES[1:]}
    return b


def _ci(values: list[float]) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)])
    return f"[{np.quantile(v, 0.025):.3f}, {np.quantile(v, 0.975):.3f}]" if len(v) else "[-]"


def _boot(n: int, reps: int, rng: np.random.Generator, strata: npt.NDArray[np.str_] | None = None) -> list[Any]:
    """Index resamples of ``n`` traces (within each stratum when given)."""
    if strata is None:
        return [rng.integers(0, n, n) for _ in range(reps)]
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    return [np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups]) for _ in range(reps)]


def _stat(fn: Callable[[npt.NDArray[np.intp]], float], boots: list[Any], n: int, interval: bool = True) -> str:
    full = fn(np.arange(n))
    if not np.isfinite(full):
        return "n/a"
    return f"{full:.3f} {_ci([fn(i) for i in boots]) if interval else '(no interval)'}"


def report(label: str, rows: Sequence[Outcome], base: Baselines, reps: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = len(rows)
    wrong = np.array([r.wrong for r in rows])
    tasks = np.array([r.task for r in rows])
    scores = base.scores(rows)
    alerts = {"risk score": np.array([r.alerted for r in rows])}
    alerts |= {k: scores[k] > base.cutoffs[k] for k in SCORES[1:]}
    print(f"\n{label}: {n} prompts, {wrong.sum()} wrong answers ({wrong.mean():.1%})")
    boots = _boot(n, reps, rng)
    strat = _boot(n, reps, rng, tasks)
    width = 24
    print(f"  {'':36}" + "".join(f"{k:>{width}}" for k in SCORES))

    def row(name: str, fn: Callable[[str, npt.NDArray[np.intp]], float], b: list[Any]) -> None:
        print(f"  {name:36}" + "".join(f"{_stat(lambda i, k=k: fn(k, i), b, n):>{width}}" for k in SCORES))

    row("AUROC pooled", lambda k, i: auroc(scores[k][i], wrong[i]), boots)
    row("AUROC within task (same-task pairs)", lambda k, i: within_task_auroc(scores[k][i], wrong[i], tasks[i]), strat)
    for t in [t.name for t in TASKS]:
        m = np.flatnonzero(tasks == t)
        if len(m):
            tb = _boot(len(m), reps, rng)
            label_t = f"  {t} ({len(m)}, {wrong[m].sum()} wrong)"
            few = min(wrong[m].sum(), (~wrong[m]).sum()) < MIN_CLASS
            cells = [
                _stat(lambda i, s=scores[k][m], w=wrong[m]: auroc(s[i], w[i]), tb, len(m), not few) for k in SCORES
            ]
            print(f"  {label_t:36}" + "".join(f"{c:>{width}}" for c in cells))
    print(
        f"  {'alerts (share of traces)':36}"
        + "".join(f"{f'{alerts[k].sum()} ({alerts[k].mean():.1%})':>{width}}" for k in SCORES)
    )

    def precision(k: str, i: npt.NDArray[np.intp]) -> float:
        a = alerts[k][i]
        return float(wrong[i][a].mean()) if a.any() else float("nan")

    def recall(k: str, i: npt.NDArray[np.intp]) -> float:
        w = wrong[i]
        return float(alerts[k][i][w].mean()) if w.any() else float("nan")

    row("alert precision (wrong | alert)", precision, boots)
    row("alert recall (alert | wrong)", recall, boots)
    print(
        f"  {'false alerts (on right answers)':36}"
        + "".join(f"{f'{(alerts[k] & ~wrong).sum()} of {(~wrong).sum()}':>{width}}" for k in SCORES)
    )
    unflagged = sum(r.alerted and not r.flagged for r in rows)
    n_alerts = int(alerts["risk score"].sum())
    print(f"  risk alerts with no flag raised at any step (the entropy term alone): {unflagged} of {n_alerts}")

    # the baselines' cut-offs were matched to the risk alert share on the calibration stress split, so here their
    # alert counts differ; ranking each by its score and alerting on as many traces as the risk score does compares
    # the three at one operating point (ties broken by trace order)
    risk_alerts = alerts["risk score"]

    def top(k: str, i: npt.NDArray[np.intp]) -> BOOL:
        out = np.zeros(len(i), dtype=bool)
        out[np.argsort(-scores[k][i], kind="stable")[: int(risk_alerts[i].sum())]] = True
        return out

    def precision_eq(k: str, i: npt.NDArray[np.intp]) -> float:
        a = risk_alerts[i] if k == "risk score" else top(k, i)
        return float(wrong[i][a].mean()) if a.any() else float("nan")

    def recall_eq(k: str, i: npt.NDArray[np.intp]) -> float:
        a = risk_alerts[i] if k == "risk score" else top(k, i)
        w = wrong[i]
        return float(a[w].mean()) if w.any() else float("nan")

    print(
        f"  at equal alert count, for comparison: each score alerts on its top {risk_alerts.sum()} traces (the risk "
        "score's alert count here; ties in order of the traces, which matters for the task-only score)"
    )
    row("  precision at equal alert count", precision_eq, boots)
    row("  recall at equal alert count", recall_eq, boots)


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


def faults(lm: LoadedModel, policy: RiskPolicy, prompts: list[str]) -> None:
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
            cases.append(
                (
                    f"decoder forced to repeat a {len(cycle)}-token cycle",
                    "repetition_loop",
                    list(run_traced(lm, prompts, max_new_tokens=24)),
                )
            )
        finally:
            hook.remove()
    print()
    for label, flag, traced in cases:
        folded = [fold(policy, t) for t in traced]
        hit = [flag in a.flags for a, _, _ in folded]
        firsts = [f for _, f, _ in folded if f is not None]
        span = f"{min(firsts)}..{max(firsts)}" if firsts else "-"
        blamed = sorted({x for a, _, _ in folded for x in a.blamed_layers})
        print(
            f"fault: {label}: {flag} on {np.mean(hit):.0%} of {len(traced)} traces, alert on {len(firsts)}; "
            f"first alert at step {span}; blamed layers {blamed}"
        )


def _disjoint(name: str, rows: Sequence[Example], fitted_on: dict[str, set[str]]) -> list[Example]:
    """``rows`` minus any prompt of any split something was fitted on; how many each one cost is printed, zeros
    too, so the check is seen to have run."""
    kept = list(rows)
    for split, prompts in fitted_on.items():
        before = len(kept)
        kept = [e for e in kept if e.prompt not in prompts]
        print(f"# {name} vs {split}: {before - len(kept)} overlapping prompts dropped")
    if any({e.prompt for e in kept} & prompts for prompts in fitted_on.values()):
        raise RuntimeError(f"{name} still overlaps a fitting split")
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--per-task", type=int, default=200, help="held-out prompts per task")
    ap.add_argument("--stress", type=int, default=1500, help="prompts of the reported stress split")
    ap.add_argument("--calibration-stress", type=int, default=1500, help="prompts that fit the baselines")
    ap.add_argument("--fault-prompts", type=int, default=60)
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals")
    args = ap.parse_args()
    lm = load_model(args.model)
    path = policy_path(family_of(lm.version))
    if path.exists():
        policy = RiskPolicy.from_json(path.read_text(encoding="utf-8"), str(path))
        print(
            f"# policy {policy.name} from {path} (calibrated on {policy.calibration.get('model_version')}, "
            f"{policy.calibration.get('traces')} traces)"
        )
    else:
        policy = calibrate_model(lm, [e.prompt for e in make_split("calibration", 100)])
        policy.calibration.update(split="calibration", per_task=100)
        print(f"# policy calibrated now on {policy.calibration['steps']} steps (no {path})")
    print(f"# model {lm.version}, {lm.parameter_count():,} parameters")
    print(
        f"# policy numbers: entropy_bits {policy.entropy_bits}, collapse_z {policy.collapse_z}, blowup_z "
        f"{policy.blowup_z}, alert_score {policy.alert_score}, critical_score {policy.critical_score}, "
        f"entropy_weight {policy.entropy_weight}"
    )
    alone = policy.entropy_alone_alerts_at()
    print(
        "# computed from the loaded policy: with no flag raised, the entropy term alone "
        + (
            f"alerts when a trace's mean entropy >= {alone:.4g} bits (alert_score x entropy_bits / (entropy_weight "
            "- alert_score)): below the flags, the risk alert is a mean-entropy threshold"
            if alone is not None
            else "never alerts (alert_score >= entropy_weight)"
        )
    )
    per_task = int(policy.calibration.get("per_task", int(policy.calibration.get("traces", 600)) // len(TASKS)))
    reference = {e.prompt for e in make_split(str(policy.calibration.get("split", "calibration")), per_task)}
    policy_split = f"the policy's calibration split ({len(reference)} prompts)"
    cal = _disjoint(
        "calibration stress split",
        stress_split(args.calibration_stress, seed="stress-calibration"),
        {policy_split: reference},
    )
    fitted = {policy_split: reference, f"the calibration stress split ({len(cal)} prompts)": {e.prompt for e in cal}}
    held_out = _disjoint("held-out suite", list(eval_set(args.per_task)), fitted)
    stress = _disjoint("stress split", stress_split(args.stress), fitted)
    n_faults = args.fault_prompts
    fault_prompts = _disjoint("fault prompts", make_split("faults", max(1, n_faults // 6)), fitted)[:n_faults]

    base = fit_baselines(outcomes(lm, policy, cal))
    print(
        f"# calibration stress split ({base.n} prompts, seed 'stress-calibration'): risk alerts on "
        f"{base.risk_alert_rate:.1%}; task error rates "
        + ", ".join(f"{t} {r:.1%}" for t, r in base.task_error.items())
        + "; baseline alert cut-offs (alert when above) "
        + ", ".join(f"{k} {v:.4g}" for k, v in base.cutoffs.items())
    )
    report("held-out suite", outcomes(lm, policy, held_out), base, args.bootstrap)
    report("stress split (just past the training distribution)", outcomes(lm, policy, stress), base, args.bootstrap)
    faults(lm, policy, [e.prompt for e in fault_prompts])
    print(
        f"# 95% intervals: {args.bootstrap} bootstrap resamples of the traces (per task: within the task; none "
        f"where a task has fewer than {MIN_CLASS} wrong or right answers)"
    )
    print(
        f"# reproduce: python -m bench.risk_quality --per-task {args.per_task} --stress {args.stress} "
        f"--calibration-stress {args.calibration_stress} --fault-prompts {args.fault_prompts} "
        f"--bootstrap {args.bootstrap}"
    )


if __name__ == "__main__":
    main()
