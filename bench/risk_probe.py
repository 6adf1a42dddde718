"""Does a probe learned from labelled traces tell wrong answers better than entropy? The default model in-process,
its steps as the service emits them, the probe of ``evostream.models.risk_probe`` against the simplest baselines,
all measured in one run on splits nothing was fitted on.

Splits (prompts generated here; every reported split is checked against every fitting split by prompt text, and
overlapping prompts are dropped with a count printed):
- train: ``stress_split(--train, seed="stress-train")`` plus ``make_split("probe-train", --train-per-task)``: the
  probe is fitted here, and so are the task-only score's error rates; nothing else is. The probe's form (an intercept
  per task while fitting or not, the L2 penalty) is chosen by within-task AUROC on every fourth train trace, held out
  from that choice's fits, then the chosen form is refitted on the whole train split;
- stress (reported): ``stress_split(--stress)`` (seed "stress"), the split ``bench.risk_quality`` reports;
- transfer (reported): for each task, a probe fitted on the train split without that task, scored on the task's
  stress traces: a task family the probe never saw.

Scores: the probe's P(wrong); mean and max token entropy; the negated minimum top-1/top-2 margin; the hand-set risk
policy's final score (the shipped policy, as the processors run it); the task-only score (each task's error rate on
the train split). Reported: AUROC pooled and within task (same-task pairs only), per task, recall at 0.8 and 0.9
precision (the best recall of any cut-off whose precision reaches it), and the expected calibration error of the
probe's probabilities (10 equal-width bins). 95% intervals from a bootstrap over traces.

Run: python -m bench.risk_probe [--train 3000] [--train-per-task 100] [--stress 1500] [--bootstrap 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bench.risk_quality import _boot, _ci, _disjoint, fold, within_task_auroc
from evostream.models.loading import LoadedModel, load_model
from evostream.models.risk_probe import fit_probe, trace_features
from evostream.models.suite.tasks import TASKS, Example, make_split, stress_split
from evostream.producers.reference import run_traced
from evostream.producers.sketch import DEFAULT_DIM
from evostream.stream_processors.risk.metrics import auroc, ece, recall_at_precision
from evostream.stream_processors.risk.policy import RiskPolicy, family_of, policy_path

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]


@dataclass
class Traces:
    """Labelled traces of one split: task, wrong, the probe's features and the baselines' raw scores."""

    tasks: npt.NDArray[np.str_]
    wrong: BOOL
    x: F64
    baselines: dict[str, F64]
    num_layers: int


def trace_split(
    lm: LoadedModel, policy: RiskPolicy, examples: Sequence[Example], label: str, sketch_dim: int
) -> Traces:
    t0 = time.perf_counter()
    tasks, wrong, rows = [], [], []
    base: dict[str, list[float]] = {"mean entropy": [], "max entropy": [], "-min margin": [], "hand-set risk": []}
    layers = 0
    for e, t in zip(examples, run_traced(lm, [e.prompt for e in examples]), strict=True):
        if not t.steps:
            continue
        layers = int(t.steps[0]["num_layers"])
        tasks.append(e.task)
        wrong.append(t.output.strip() != e.answer)
        rows.append(trace_features(t.steps, layers, sketch_dim))
        ent = np.array([s["entropy_bits"] for s in t.steps])
        base["mean entropy"].append(float(ent.mean()))
        base["max entropy"].append(float(ent.max()))
        base["-min margin"].append(-float(min(s["top1_top2_margin"] for s in t.steps)))
        base["hand-set risk"].append(fold(policy, t)[0].score)
    print(f"# {label}: {len(rows)} traces, {int(np.sum(wrong))} wrong, in {time.perf_counter() - t0:.0f} s")
    return Traces(np.array(tasks), np.array(wrong), np.vstack(rows), {k: np.array(v) for k, v in base.items()}, layers)


def _stat(fn: Callable[[npt.NDArray[np.intp]], float], boots: list[npt.NDArray[np.intp]], n: int) -> str:
    full = fn(np.arange(n))
    return "n/a" if not np.isfinite(full) else f"{full:.3f} {_ci([fn(i) for i in boots])}"


def report(label: str, split: Traces, scores: dict[str, F64], reps: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n, wrong, tasks = len(split.wrong), split.wrong, split.tasks
    print(f"\n{label}: {n} traces, {wrong.sum()} wrong ({wrong.mean():.1%})")
    boots, strat = _boot(n, reps, rng), _boot(n, reps, rng, tasks)
    width = 22
    print(f"  {'':34}" + "".join(f"{k:>{width}}" for k in scores))

    def row(name: str, fn: Callable[[F64, npt.NDArray[np.intp]], float], b: list[npt.NDArray[np.intp]]) -> None:
        print(f"  {name:34}" + "".join(f"{_stat(lambda i, s=s: fn(s, i), b, n):>{width}}" for s in scores.values()))

    row("AUROC within task", lambda s, i: within_task_auroc(s[i], wrong[i], tasks[i]), strat)
    row("AUROC pooled", lambda s, i: auroc(s[i], wrong[i]), boots)
    row("recall at 0.8 precision", lambda s, i: recall_at_precision(s[i], wrong[i], 0.8), boots)
    row("recall at 0.9 precision", lambda s, i: recall_at_precision(s[i], wrong[i], 0.9), boots)
    for t in [t.name for t in TASKS]:
        m = np.flatnonzero(tasks == t)
        if len(m):
            cells = [f"{auroc(s[m], wrong[m]):.3f}" for s in scores.values()]
            name = f"  {t} ({len(m)}, {wrong[m].sum()} wrong)"
            print(f"  {name:34}" + "".join(f"{c:>{width}}" for c in cells))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--train", type=int, default=3000, help="stress prompts the probe is fitted on")
    ap.add_argument("--train-per-task", type=int, default=100, help="in-distribution prompts per task it is fitted on")
    ap.add_argument("--stress", type=int, default=1500, help="prompts of the reported stress split")
    ap.add_argument("--bootstrap", type=int, default=500, help="resamples for the 95%% intervals")
    ap.add_argument(
        "--no-sketch", action="store_true", help="leave the hidden-state sketch out of the probe's features"
    )
    args = ap.parse_args(argv)
    lm = load_model(args.model)
    path = policy_path(family_of(lm.version))
    policy = RiskPolicy.from_json(path.read_text(encoding="utf-8"), str(path))
    print(f"# model {lm.version}; hand-set policy {policy.name} from {path}")
    train_examples = stress_split(args.train, seed="stress-train") + make_split("probe-train", args.train_per_task)
    fitted = {f"the train split ({len(train_examples)} prompts)": {e.prompt for e in train_examples}}
    stress_examples = _disjoint("stress split", stress_split(args.stress), fitted)
    # the sketch's numbers per step as the service emits them (0: the probe reads the pooled statistics alone)
    sketch = 0 if args.no_sketch else 2 * DEFAULT_DIM
    train = trace_split(lm, policy, train_examples, "train split", sketch)
    stress = trace_split(lm, policy, stress_examples, "stress split", sketch)
    num_layers = train.num_layers
    family = family_of(lm.version)
    # the probe's form is chosen on a quarter of the train split held out from fitting, never on a reported split
    val = np.arange(len(train.wrong)) % 4 == 3
    fit_rows = ~val
    best: tuple[float, bool, float] | None = None
    for by_task in (False, True):
        for l2 in (0.1, 1.0, 10.0):
            candidate = fit_probe(
                train.x[fit_rows],
                train.wrong[fit_rows],
                family,
                num_layers,
                l2=l2,
                groups=list(train.tasks[fit_rows]) if by_task else None,
                sketch_dim=sketch,
            )
            score = within_task_auroc(candidate.probability(train.x[val]), train.wrong[val], train.tasks[val])
            print(
                f"# validation (a quarter of train): task intercepts {by_task}, l2 {l2}: within-task AUROC {score:.3f}"
            )
            if best is None or score > best[0]:
                best = (score, by_task, l2)
    assert best is not None
    _, by_task, l2 = best
    print(f"# chosen: task intercepts {by_task}, l2 {l2}; refitted on the whole train split")
    groups = list(train.tasks) if by_task else None
    probe = fit_probe(train.x, train.wrong, family, num_layers, l2=l2, groups=groups, sketch_dim=sketch)
    task_error = {t: float(train.wrong[train.tasks == t].mean()) for t in np.unique(train.tasks)}

    def scored(split: Traces, p: F64) -> dict[str, F64]:
        return {
            "probe": p,
            **split.baselines,
            "task only": np.array([task_error.get(t, 0.0) for t in split.tasks]),
        }

    p_stress = probe.probability(stress.x)
    report("stress split (reported)", stress, scored(stress, p_stress), args.bootstrap)
    print(f"  probe expected calibration error (10 bins): {ece(p_stress, stress.wrong):.3f}")

    # transfer: each task's stress traces scored by a probe that never saw the task
    p_transfer = np.zeros(len(stress.wrong))
    for t in np.unique(stress.tasks):
        keep = train.tasks != t
        held = fit_probe(
            train.x[keep],
            train.wrong[keep],
            family,
            num_layers,
            l2=l2,
            groups=list(train.tasks[keep]) if by_task else None,
            sketch_dim=sketch,
        )
        m = stress.tasks == t
        p_transfer[m] = held.probability(stress.x[m])
    report("transfer (each task scored by a probe fitted without it)", stress, scored(stress, p_transfer), 0)
    print(f"  transfer probe expected calibration error (10 bins): {ece(p_transfer, stress.wrong):.3f}")
    print(
        f"# reproduce: python -m bench.risk_probe --train {args.train} --train-per-task {args.train_per_task} "
        f"--stress {args.stress} --bootstrap {args.bootstrap}" + (" --no-sketch" if args.no_sketch else ""),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
