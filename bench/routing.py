"""Routing between a small self model and a stronger reference: how much of the reference's accuracy each router keeps
at a given reference share, and whether the independence levels hold their self-share, all in one run (CPU).

The models (built here, deterministic, nothing downloaded): the reference is the embedded default model; the self
model is the default model shrunk by the evolution FFN operator (``--keep-ffn`` of the FFN neurons kept, importance
ranked on the suite's analysis split), with no recovery, so it is measurably weaker on the workload.

The workload: suite prompts (``make_split("routing", --suite-per-task)``) and harder ones just past the training
distribution (``stress_split(--stress, seed="routing")``: longer words, 3-digit sums, 6-entry tables, far years),
minus any prompt of the analysis split the self model was built on. Both models answer every prompt through
``run_traced`` (the step records the service emits); exact match against the task's answer labels both.

Each repetition (``--repeats``, seeds 0..R-1) splits the workload at random into four disjoint parts:
- train: the risk probe (``fit_probe``: logistic regression on a trace's pooled steps, as ``bench.risk_probe``), the
  prompt model (``fit_prompt_model`` on surface features + the MiniLM embedding; its L2 penalty chosen on a quarter of
  train held out from that choice) and the SW-ranking peer's battles are fitted here;
- choose (``--calibration``): every router's gate or threshold is set here for the self-share asked;
- certify (``--calibration``): the levels' evidence (Clopper-Pearson bound on the self-answered error rate);
- test (``--test``): every number reported; nothing was fitted or chosen on it.

Routers, each set on the choose split for a self-share of ``--share`` (0.85: at most 15% to the reference):
- prompt-only: the prompt model before generation (RouteLLM, FrugalGPT and Hybrid LLM all decide here), fitted on
  "the reference wins" (self wrong, reference right), as ``evostream route train`` fits it;
- prompt-only, P(self wrong): the same fitted on "the self answer is wrong";
- ours, as ``evostream route train`` builds it by default: the prompt model on "the self answer is wrong" before
  generation and the route's own gain probe mid-answer (the risk probe's model fitted on "the reference wins",
  ``wiring.route_train.fit_gain_probe_on``), on the steps so far, as ``TokenWatch`` reads them; the split of the
  reference's share between the two is chosen on the choose split (``calibrate_level``);
- prompt + risk probe: the prompt model on "the reference wins" and the risk probe (P(self wrong)) mid-answer, as
  ``route train --probe production`` builds it;
- prompt on the gain + gain probe: both on "the reference wins";
- prompt-only at ours' share: prompt-only set to send as many test requests as ours sent (the share target's "same
  share", read off the test split: generous to prompt-only, never to ours);
- mid-answer only, gain probe / risk probe: one probe alone, mid-answer;
- SW ranking: RouteLLM's similarity-weighted ranking router (``evostream.routing.peer``), before generation;
- random; mean token entropy: the running mean entropy of the steps so far, mid-answer (the simplest token score);
- oracle: the test labels themselves (requests the reference wins escalated, up to the share): the ceiling.
An escalated request is answered by the reference; the self model's partial tokens count in the cost (reference
tokens priced at ``--price-ratio`` times a self token; cost relative to always asking the reference).

Then each level of the ladder (self-share 0.2 / 0.5 / 0.8 / 0.95) is calibrated and certified (error bound
``--bound``, confidence ``--confidence``), with the gain probe mid-answer (ours) and with the risk probe, and its
realised self-share on the test split reported.

Run: python -m bench.routing [--suite-per-task 700] [--stress 2100] [--test 1200] [--calibration 1000]
     [--repeats 5] [--keep-ffn 0.55]     (``--quick``: a smoke test of a few hundred prompts)
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from evostream.consumers.evolution.recipe import Recipe, build
from evostream.models.loading import LoadedModel, load_model, wrap_model
from evostream.models.risk_probe import FeatureSums, RiskProbe, fit_probe
from evostream.models.suite.tasks import TASKS, Example, make_split, stress_split
from evostream.producers.embedding import PromptEmbedder
from evostream.producers.reference import run_traced
from evostream.producers.sketch import DEFAULT_DIM
from evostream.routing.calibrate import Labelled, Replay, calibrate_level, fit_prompt_model, replay
from evostream.routing.peer import SWRanking, random_scores, threshold_for_share
from evostream.routing.policy import LADDER, LevelGate, prompt_features
from evostream.stream_processors.risk.metrics import auroc
from evostream.wiring.route_train import fit_gain_probe_on

F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]
OURS = "ours (prompt + gain probe mid-answer)"
RISK = "prompt + risk probe mid-answer"
BOTH_GAIN = "prompt on the gain + gain probe"
SAME = "prompt-only at ours' share"
ROUTERS = (
    "prompt-only",
    "prompt-only, P(self wrong)",
    OURS,
    RISK,
    BOTH_GAIN,
    SAME,
    "mid-answer only, gain probe",
    "mid-answer only, risk probe",
    "SW ranking",
    "random",
    "mean entropy",
    "oracle",
)


def say(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


@dataclass
class Traces:
    """One model's answers to the workload: wrong or not, tokens, and (self model) the features after each step."""

    wrong: BOOL
    tokens: npt.NDArray[np.int64]
    prefix: list[F64]
    """Per prompt: the probe's features after step 1, 2, ... (one row per step)."""
    entropy: list[F64]
    """Per prompt: the running mean token entropy after each step."""
    num_layers: int


def trace(lm: LoadedModel, examples: Sequence[Example], sketch: int | None, label: str) -> Traces:
    """``lm``'s answers to ``examples``; with ``sketch`` not None, the probe's features after each step too."""
    t0 = time.perf_counter()
    wrong, tokens, prefix, entropy = [], [], [], []
    layers = 0
    for e, t in zip(examples, run_traced(lm, [e.prompt for e in examples]), strict=True):
        wrong.append(t.output.strip() != e.answer)
        tokens.append(len(t.steps))
        rows, ent = [], []
        if t.steps and sketch is not None:
            layers = int(t.steps[0]["num_layers"])
            sums = FeatureSums(layers, sketch_dim=sketch)
            for s in t.steps:
                sums.update(s)
                rows.append(sums.features())
                ent.append(float(s["entropy_bits"]))
        prefix.append(np.vstack(rows) if rows else np.zeros((0, 0)))
        entropy.append(np.cumsum(ent) / np.arange(1, len(ent) + 1) if ent else np.zeros(0))
    say(f"{label}: {len(wrong)} answers, {int(np.sum(wrong))} wrong, in {time.perf_counter() - t0:.0f} s")
    return Traces(np.array(wrong), np.array(tokens), prefix, entropy, layers)


def self_model(reference: LoadedModel, keep_ffn: float, analysis: Sequence[Example]) -> LoadedModel:
    torch.manual_seed(0)
    pairs = [(e.prompt, e.answer) for e in analysis]
    model = build(reference.model, reference.tokenizer, Recipe(keep_ffn=keep_ffn), pairs)
    return wrap_model(model, reference.tokenizer, f"self-ffn{keep_ffn}")


@dataclass
class Workload:
    examples: list[Example]
    tasks: npt.NDArray[np.str_]
    self_: Traces
    reference: Traces
    embeddings: F64
    prompt_x: F64
    harder: BOOL
    """Per prompt: one of the harder prompts (stress_split), not a suite prompt."""


def items_of(
    w: Workload, idx: npt.NDArray[np.intp], prompt_scores: F64, risks: list[F64], ref_tokens: bool = True
) -> list[Labelled]:
    return [
        Labelled(
            float(prompt_scores[i]),
            tuple(float(r) for r in risks[i]),
            bool(w.self_.wrong[i]),
            bool(w.reference.wrong[i]),
            int(w.reference.tokens[i]) if ref_tokens else 0,
        )
        for i in idx
    ]


def before_only(w: Workload, idx: npt.NDArray[np.intp], to_reference: BOOL) -> Replay:
    """A router that decides before generation only: who answered and what that gives."""
    answered = np.where(to_reference, "before", "self")
    wrong = np.where(to_reference, w.reference.wrong[idx], w.self_.wrong[idx])
    self_tokens = int(w.self_.tokens[idx][~to_reference].sum())
    return Replay(answered, wrong, self_tokens, 0, int(w.reference.tokens[idx][to_reference].sum()))


@dataclass
class Run:
    """One repetition: every router's replay on the test split and the levels' gates."""

    test: npt.NDArray[np.intp]
    routed: dict[str, Replay]
    levels: list[tuple[LevelGate, Replay]]
    levels_risk: list[tuple[LevelGate, Replay]]
    """The same with the risk probe mid-answer (``route train --probe production``)."""
    chosen: dict[str, LevelGate]
    probe_auroc: float
    prompt_auroc: float
    gain_auroc: float


def one_run(w: Workload, seed: int, n_test: int, n_cal: int, share: float, bound: float, confidence: float) -> Run:
    n = len(w.examples)
    order = np.random.default_rng(seed).permutation(n)
    test, choose, certify_ = order[:n_test], order[n_test : n_test + n_cal], order[n_test + n_cal : n_test + 2 * n_cal]
    train = np.sort(order[n_test + 2 * n_cal :])
    s = w.self_
    # what escalating a request gains: the self model is wrong and the reference right ("the reference wins")
    gain = s.wrong & ~w.reference.wrong
    final = np.vstack([s.prefix[i][-1] for i in train])

    def scored_by(probe: RiskProbe) -> list[F64]:
        return [probe.probability(p) if len(p) else np.zeros(0) for p in s.prefix]

    def prompt_on(label: BOOL) -> F64:
        # the penalty: chosen on every fourth train prompt, held out from that choice's fits
        val = np.arange(len(train)) % 4 == 3
        fit, held = train[~val], train[val]
        best = max(
            (1.0, 10.0, 100.0),
            key=lambda l2: auroc(
                fit_prompt_model(w.prompt_x[fit], label[fit], l2).probability(w.prompt_x[held]), label[held]
            ),
        )
        return fit_prompt_model(w.prompt_x[train], label[train], best).probability(w.prompt_x)

    risks = scored_by(fit_probe(final, s.wrong[train], "bench", s.num_layers, l2=1.0, sketch_dim=2 * DEFAULT_DIM))
    prefixes = [s.prefix[i] for i in train]
    risks_gain = scored_by(fit_gain_probe_on(prefixes, gain[train], "bench", s.num_layers, 2 * DEFAULT_DIM))
    pscore, pscore_wrong = prompt_on(gain), prompt_on(s.wrong)
    entropy = [e / (1.0 + e) for e in s.entropy]  # monotone into [0, 1): a gate of 1 then means "never"
    zeros = np.zeros(n)

    def cal(p: F64, r: list[F64], before: bool, mid: bool, level: int = 0, target: float = share) -> LevelGate:
        return calibrate_level(
            level,
            target,
            items_of(w, choose, p, r),
            items_of(w, certify_, p, r),
            bound,
            confidence,
            before=before,
            mid=mid,
        )

    scored = {
        "prompt-only": (pscore, risks, True, False),
        "prompt-only, P(self wrong)": (pscore_wrong, risks, True, False),
        OURS: (pscore_wrong, risks_gain, True, True),
        RISK: (pscore, risks, True, True),
        BOTH_GAIN: (pscore, risks_gain, True, True),
        "mid-answer only, gain probe": (zeros, risks_gain, False, True),
        "mid-answer only, risk probe": (zeros, risks, False, True),
        "mean entropy": (zeros, entropy, False, True),
    }
    chosen = {k: cal(p, r, b, m) for k, (p, r, b, m) in scored.items()}
    routed = {k: replay(items_of(w, test, p, r), chosen[k]) for k, (p, r, _, _) in scored.items()}
    sw = SWRanking.fit(w.embeddings[train], s.wrong[train], w.reference.wrong[train])
    rate = sw.win_rate(w.embeddings)
    sent = int(np.sum(routed[OURS].answered != "self"))
    top = np.argsort(-pscore[test], kind="stable")[:sent]  # prompt-only's score: its best at this share
    routed[SAME] = before_only(w, test, np.isin(np.arange(len(test)), top))
    routed["SW ranking"] = before_only(w, test, rate[test] > threshold_for_share(rate[choose], share))
    coin = random_scores(n, seed)
    routed["random"] = before_only(w, test, coin[test] > threshold_for_share(coin[choose], share))
    # the ceiling: the test labels' own choice, the requests the reference wins first (at most the share asked)
    wins = np.flatnonzero(gain[test])[: int((1 - share) * len(test))]
    routed["oracle"] = before_only(w, test, np.isin(np.arange(len(test)), wins))
    levels, levels_risk = [], []
    for level, target in enumerate(LADDER):
        if level:
            gate = cal(pscore_wrong, risks_gain, True, True, level, target)
            levels.append((gate, replay(items_of(w, test, pscore_wrong, risks_gain), gate)))
            gate = cal(pscore, risks, True, True, level, target)
            levels_risk.append((gate, replay(items_of(w, test, pscore, risks), gate)))
    final_risk = np.array([r[-1] if len(r) else 0.0 for r in risks])
    peak_gain = np.array([r.max() if len(r) else 0.0 for r in risks_gain])
    return Run(
        test,
        routed,
        levels,
        levels_risk,
        chosen,
        auroc(final_risk[test], s.wrong[test]),
        auroc(pscore[test], gain[test]),
        auroc(peak_gain[test], gain[test]),
    )


def _acc(wrong: BOOL) -> str:
    return f"{1 - wrong.mean():.3f}" if len(wrong) else "n/a"


def report(w: Workload, runs: list[Run], args: argparse.Namespace) -> None:
    r0 = runs[0]
    test = r0.test
    tasks = w.tasks[test]
    sw_, rw_ = w.self_.wrong[test], w.reference.wrong[test]
    stress = w.harder[test]
    print(
        f"\n## seed 0: test split of {len(test)} requests ({int(stress.sum())} harder), share asked "
        f"{args.share:.2f} (reference share <= {1 - args.share:.0%})"
    )
    print(
        f"test split AUROC: the risk probe (final step) on wrong self answers {r0.probe_auroc:.3f}; the prompt "
        f"model on requests the reference wins {r0.prompt_auroc:.3f}; the gain probe (highest over the steps) on "
        f"them {r0.gain_auroc:.3f}"
    )
    cols = ["self alone", "reference alone", *ROUTERS]
    print("| task (n) | " + " | ".join(cols) + " |")
    print("| --- " * (len(cols) + 1) + "|")
    groups = [(t.name, tasks == t.name) for t in TASKS] + [
        ("suite prompts", ~stress),
        ("harder prompts", stress),
        ("pooled", np.ones(len(test), bool)),
    ]
    for name, m in groups:
        cells = [_acc(sw_[m]), _acc(rw_[m])] + [_acc(r0.routed[k].wrong[m]) for k in ROUTERS]
        print(f"| {name} ({int(m.sum())}) | " + " | ".join(cells) + " |")
    shares = ["0.000", "1.000"] + [f"{r0.routed[k].reference_share:.3f}" for k in ROUTERS]
    print("| reference share | " + " | ".join(shares) + " |")
    ref_cost = float(w.reference.tokens[test].sum()) * args.price_ratio
    costs = [
        f"{w.self_.tokens[test].sum() / ref_cost:.3f}",
        "1.000",
        *(f"{r0.routed[k].cost(1.0, args.price_ratio) / ref_cost:.3f}" for k in ROUTERS),
    ]
    print(
        f"| cost vs always the reference (reference token = {args.price_ratio:g} self tokens) | "
        + " | ".join(costs)
        + " |"
    )
    print(
        "| of the reference's accuracy | "
        + " | ".join(
            f"{(1 - x.mean()) / (1 - rw_.mean()):.3f}" for x in [sw_, rw_, *(r0.routed[k].wrong for k in ROUTERS)]
        )
        + " |"
    )
    g = r0.chosen[OURS]
    ours = r0.routed[OURS]
    print(
        f"ours: prompt gate {g.prompt_gate:.4f}, token gate {g.token_gate:.4f}; on test "
        f"{ours.share('before'):.3f} sent before generation, {ours.share('mid'):.3f} mid-answer "
        f"({ours.wasted_tokens} self tokens in partial answers)"
    )

    print(f"\n## levels (seed 0; bound {args.bound}, confidence {args.confidence}; evidence from the certify split)")
    for title, levels in (("gain probe (ours)", r0.levels), ("risk probe", r0.levels_risk)):
        print(
            f"| level, {title} | target self-share | test self-share | test accuracy | self-answered accuracy "
            "(certify) | its lower bound | certified | before / mid |"
        )
        print("| --- " * 8 + "|")
        for gate, rep in levels:
            ev = gate.evidence
            print(
                f"| {gate.level} | {gate.self_share:.2f} | {rep.self_share:.3f} | {rep.accuracy:.3f} | "
                f"{ev['accuracy']:.3f} | {ev['accuracy_lower']:.3f} | {ev['certified']} | "
                f"{rep.share('before'):.3f} / {rep.share('mid'):.3f} |"
            )

    print(f"\n## spread over {len(runs)} repetitions (seeds 0..{len(runs) - 1}; each its own split): mean (min..max)")

    def spread(values: Sequence[float]) -> str:
        v = np.array(values)
        return f"{v.mean():.3f} ({v.min():.3f}..{v.max():.3f})"

    ref_acc = [1 - w.reference.wrong[r.test].mean() for r in runs]
    print("| | accuracy | of the reference's | reference share |\n| --- | --- | --- | --- |")
    print(
        f"| self alone | {spread([1 - w.self_.wrong[r.test].mean() for r in runs])} | "
        f"{spread([(1 - w.self_.wrong[r.test].mean()) / a for r, a in zip(runs, ref_acc, strict=True)])} | 0 |"
    )
    print(f"| reference alone | {spread(ref_acc)} | 1 | 1 |")
    for k in ROUTERS:
        print(
            f"| {k} | {spread([r.routed[k].accuracy for r in runs])} | "
            f"{spread([r.routed[k].accuracy / a for r, a in zip(runs, ref_acc, strict=True)])} | "
            f"{spread([r.routed[k].reference_share for r in runs])} |"
        )
    dev = [max(abs(rep.self_share - gate.self_share) for gate, rep in r.levels) for r in runs]
    print(f"largest |test self-share - target| over the levels: {spread(dev)}")
    for title, pick in (("gain probe", lambda r: r.levels), ("risk probe", lambda r: r.levels_risk)):
        certified = [[lv.evidence["certified"] for lv, _ in pick(r)] for r in runs]
        accs = np.array([[lv.evidence["accuracy"] for lv, _ in pick(r)] for r in runs])
        print(
            f"levels certified with the {title} (levels 1..4, per repetition): "
            + "; ".join("".join("y" if c else "n" for c in row) for row in certified)
            + "; self-answered accuracy (certify) per level "
            + ", ".join(spread(accs[:, k]) for k in range(accs.shape[1]))
        )
    mids = [r.routed[OURS].share("mid") for r in runs]
    print(f"ours: share sent mid-answer at this operating point {spread(mids)}")

    print("\n## targets (every repetition)")
    for name in (OURS, RISK):
        ratio = [r.routed[name].accuracy / a for r, a in zip(runs, ref_acc, strict=True)]
        share = [r.routed[name].reference_share for r in runs]
        both = sum(q >= 0.95 and h <= 1 - args.share + 1e-9 for q, h in zip(ratio, share, strict=True))
        print(
            f"- >= 95% of the reference's accuracy at <= {1 - args.share:.0%} reference share, {name}: {spread(ratio)} "
            f"of it at a realised reference share of {spread(share)}; both in {both} of {len(runs)} repetitions: "
            f"{'MET' if both == len(runs) else 'MISSED'}"
        )
    print(
        f"- self-share within +-5 points at every level: {'MET' if max(dev) <= 0.05 else 'MISSED'} "
        f"(largest deviation {max(dev):.3f}, test splits of {len(runs[0].test)})"
    )
    for name, base in ((OURS, "prompt-only"), (OURS, SAME), (RISK, "prompt-only")):
        gap = [r.routed[name].accuracy - r.routed[base].accuracy for r in runs]
        same = [r.routed[name].reference_share - r.routed[base].reference_share for r in runs]
        print(
            f"- mid-answer beats prompt-only at the same share, {name} against {base}: "
            f"{'MET' if min(gap) > 0 else 'MISSED'} (accuracy {spread(gap)} above, ahead in "
            f"{sum(g > 0 for g in gap)} of {len(gap)}; its reference share minus the other's {spread(same)})"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite-per-task", type=int, default=700)
    ap.add_argument("--stress", type=int, default=2100, help="harder prompts (stress_split, seed 'routing')")
    ap.add_argument("--test", type=int, default=1200, help="requests in the test split")
    ap.add_argument("--calibration", type=int, default=1000, help="requests in each of choose and certify")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--share", type=float, default=0.85, help="the self-share the routers are compared at")
    ap.add_argument("--keep-ffn", type=float, default=0.55, help="share of FFN neurons the self model keeps")
    ap.add_argument("--bound", type=float, default=0.15, help="a level's bound on the self-answered error rate")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--price-ratio", type=float, default=10.0, help="a reference token's price in self tokens")
    ap.add_argument("--quick", action="store_true", help="a smoke test: a few hundred prompts, one repetition")
    ap.add_argument(
        "--workload-cache",
        type=Path,
        help="keep the traced workload in this file and reuse it when its options match (the routers refit each run)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.suite_per_task, args.stress, args.test, args.calibration, args.repeats = 25, 150, 80, 60, 1
    t0 = time.perf_counter()
    reference = load_model("default", device="cpu")
    analysis = make_split("analysis", 16)
    say(f"self model: the default model with {args.keep_ffn:.0%} of its FFN neurons (no recovery)")
    small = self_model(reference, args.keep_ffn, analysis)
    stress = stress_split(args.stress, seed="routing")
    pool = make_split("routing", args.suite_per_task) + stress
    built_on = {e.prompt for e in analysis}
    seen: set[str] = set()
    examples = []
    for e in pool:
        if e.prompt not in seen and e.prompt not in built_on:
            seen.add(e.prompt)
            examples.append(e)
    say(f"workload: {len(examples)} prompts ({len(pool) - len(examples)} dropped: repeated or in the analysis split)")
    if len(examples) < args.test + 2 * args.calibration + 50:
        raise SystemExit("the workload is too small for the splits asked")
    key = (args.suite_per_task, args.stress, args.keep_ffn, small.version, reference.version)
    cache = args.workload_cache
    if cache is not None and cache.exists() and (cached := pickle.loads(cache.read_bytes()))[0] == key:
        w = cached[1]
        say(f"workload traced before, read from {cache}")
    else:
        self_traces = trace(small, examples, 2 * DEFAULT_DIM, "self model")
        ref_traces = trace(reference, examples, None, "reference")
        emb = np.array(PromptEmbedder().embed([e.prompt for e in examples]), dtype=np.float64)
        x = np.vstack([prompt_features(e.prompt, v) for e, v in zip(examples, emb, strict=True)])
        harder = {e.prompt for e in stress}
        tasks = np.array([e.task for e in examples])
        w = Workload(examples, tasks, self_traces, ref_traces, emb, x, np.array([e.prompt in harder for e in examples]))
        if cache is not None:
            cache.write_bytes(pickle.dumps((key, w)))
    runs = []
    for seed in range(args.repeats):
        runs.append(one_run(w, seed, args.test, args.calibration, args.share, args.bound, args.confidence))
        say(f"repetition {seed}: done")
    print(
        f"# self {small.version} (keep-ffn {args.keep_ffn}), reference {reference.version}; workload "
        f"{len(examples)} prompts; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    report(w, runs, args)
    print(
        f"# reproduce: python -m bench.routing --suite-per-task {args.suite_per_task} --stress {args.stress} "
        f"--test {args.test} --calibration {args.calibration} --repeats {args.repeats} --share {args.share} "
        f"--keep-ffn {args.keep_ffn} --bound {args.bound} --confidence {args.confidence}"
        + (" --quick" if args.quick else ""),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
