"""A routing policy learned from the log, and a policy scored on the log's history before it serves.

The history of a route is what the log holds about past requests: the prompt (``evo.requests``), the self model's
completion and its steps (``evo.completions``, ``evo.steps``), the reference's completion where it answered too, and
the labels (``evo.outcomes``). ``read_history`` gathers it; ``assemble`` (pure) turns the records into ``Past``
requests: one per request whose self-model answer (a finished completion of the self family, not cached, not an
ESCALATED partial: the self model did not finish those, so their answer has no label) is labelled and has its steps.
The reference's label is read where the reference answered the same request and was labelled; elsewhere it is not
known and counts as right (the reference is the stronger model; ``trained_on`` says how many were assumed).

``train_policy`` splits the labelled requests by time: the oldest half fits the models, the next quarter chooses
each level's gates, the newest quarter certifies them (``evostream.routing.calibrate``). Mid-answer the policy reads
either a given risk probe or, by default, its own *gain probe*: the risk probe's model (``models/risk_probe.py``)
fitted on the oldest half on "the reference would have answered better" (the self answer wrong and the reference's
not known to be wrong), so that the token score answers the routing question rather than "is the self answer wrong"
(``fit_gain_probe``; ``store_probe`` keeps it in the artifact store, where ``RoutePolicy.probe_sha256`` names it and
``wiring.routing.register_route`` registers it as a version of ``risk/<family>-route``). The prompt model, before
generation, then scores "the self answer is wrong": what stays on the self model is what a level is certified on
(its self-answered accuracy), and the gain probe finds the requests worth escalating. Without a gain probe the prompt
model is fitted on the gain itself (escalating a request both models get wrong buys nothing). ``bench.routing``
measures each choice. ``evaluate_policy`` replays a policy at each of its levels on the history: the share, accuracy
and tokens it would have had. ``trained_on["self_versions"]`` names the self model versions whose answers certified
the levels: governance serves a level only to those (``wiring.routing``)."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evostream.core.artifacts import ArtifactStore
from evostream.core.bus.reader import TopicReader
from evostream.core.errors import EvoError
from evostream.models.risk_probe import FeatureSums, RiskProbe, fit_probe, sketch_dim_of
from evostream.routing.calibrate import Labelled, Replay, calibrate_level, fit_prompt_model, replay
from evostream.routing.policy import GAIN_LABEL, LADDER, LevelGate, PromptModel, RoutePolicy, prompt_features
from evostream.schemas.catalog import COMPLETIONS, OUTCOMES, REQUESTS, STEPS
from evostream.schemas.records import Completion, GenerationStep
from evostream.stream_processors.risk.metrics import auroc
from evostream.stream_processors.risk.outcomes import OutcomeBook
from evostream.stream_processors.risk.policy import family_of
from evostream.views.outcomes import read_outcomes
from evostream.views.traces import read_traces
from evostream.wiring.risk import ARTIFACT_FILE

FIT, CHOOSE = 0.5, 0.75
"""Time-ordered cut points: [0, FIT) fits the prompt model, [FIT, CHOOSE) chooses the gates, [CHOOSE, 1] certifies."""
MIN_PART = 20
"""Fewest labelled requests each of the three parts must hold."""
SELF_WRONG = "self wrong"
"""The prompt model's label when the policy reads a gain probe mid-answer: the self answer is wrong."""
GAIN_L2_CHOICES = (1.0, 10.0, 30.0, 100.0, 300.0)
"""The L2 penalties a gain probe's is chosen from (``fit_gain_probe_on``; its features are standardized)."""


@dataclass(frozen=True)
class Past:
    """One labelled past request of a route."""

    request_id: str
    prompt: str
    embedding: tuple[float, ...]
    at_us: int
    self_wrong: bool
    reference_wrong: bool | None
    """None: the reference did not answer it, or its answer has no label."""
    steps: Sequence[GenerationStep]
    reference_tokens: int = 0
    self_version: str = ""
    """The self model version that answered it."""


@dataclass
class History:
    """The labelled requests, oldest first, and how many of the others were left out and why."""

    requests: list[Past]
    skipped: dict[str, int] = field(default_factory=dict)
    labels_sha256: str = ""


def _finished(c: Completion) -> bool:
    return c["finish_reason"] in ("STOP", "LENGTH")


def assemble(
    completions: Iterable[Completion],
    prompts: Mapping[str, str],
    book: OutcomeBook,
    steps: Mapping[str, Sequence[GenerationStep]],
    self_family: str,
    since_us: int | None = None,
    until_us: int | None = None,
) -> History:
    """The labelled past requests among ``completions`` (pure: the records in, the history out)."""
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    by_request: dict[str, list[Completion]] = {}
    for c in completions:
        if c.get("cached", False):
            skip("cache hit")  # answered from the response cache: no generation to learn from
        elif c.get("role") == "SHADOW":
            skip("shadow answer")  # a candidate's answer to a mirrored request: not the request's answer
        else:
            by_request.setdefault(c["request_id"], []).append(c)

    out: list[Past] = []
    for request_id, done in by_request.items():
        own = [c for c in done if family_of(c["model_version"]) == self_family]
        others = [c for c in done if family_of(c["model_version"]) != self_family and _finished(c)]
        mine = [c for c in own if _finished(c)]
        if not mine:
            skip("escalated mid-answer (no finished self answer)" if own else "answered by the reference only")
            continue
        c = mine[-1]
        at = int(c["completed_at_us"])
        if (since_us is not None and at < since_us) or (until_us is not None and at >= until_us):
            skip("outside the time range")
            continue
        score = book.score(c["trace_id"])
        if score is None:
            skip("self answer not labelled")
            continue
        if request_id not in prompts:
            skip("request not on evo.requests")
            continue
        trace = steps.get(c["trace_id"])
        if not trace:
            skip("self answer's steps not on evo.steps")
            continue
        ref_scores = [(book.score(o["trace_id"]), o) for o in others]
        labelled = [(s, o) for s, o in ref_scores if s is not None]
        out.append(
            Past(
                request_id,
                prompts[request_id],
                tuple(float(v) for v in (c.get("prompt_embedding") or [])),
                at,
                score < 0.5,
                labelled[-1][0] < 0.5 if labelled else None,
                list(trace),
                int(labelled[-1][1]["token_count"]) if labelled else (int(others[-1]["token_count"]) if others else 0),
                str(c["model_version"]),
            )
        )
    out.sort(key=lambda p: (p.at_us, p.request_id))
    return History(out, skipped, hashlib.sha256("\n".join(book.ids()).encode()).hexdigest())


def read_history(server: str, self_family: str, since_us: int | None = None, until_us: int | None = None) -> History:
    """The route's labelled history on the log (``assemble`` over evo.completions, evo.requests, evo.outcomes and
    the self answers' steps on evo.steps)."""
    book = read_outcomes(server)
    completions: list[Completion] = []
    with TopicReader(server, COMPLETIONS, "Completion", idle_s=3.0, name="route-history") as reader:
        completions.extend(rec for rec in reader)  # type: ignore[misc]  # the reader decodes Completion records
    wanted = {c["request_id"] for c in completions if family_of(c["model_version"]) == self_family}
    prompts: dict[str, str] = {}
    with TopicReader(server, REQUESTS, "InferenceRequest", idle_s=3.0, name="route-history") as reader:
        for rec in reader:
            if rec["request_id"] in wanted:
                prompts[str(rec["request_id"])] = str(rec["prompt"])
    labelled = {c["trace_id"] for c in completions if family_of(c["model_version"]) == self_family} & set(book.traces())
    steps = read_traces(server, lambda s: s["trace_id"] in labelled)
    return assemble(completions, prompts, book, steps, self_family, since_us, until_us)


def token_risks(probe: RiskProbe, steps: Sequence[GenerationStep]) -> tuple[float, ...]:
    """P(wrong | steps so far) after each step, as ``TokenWatch`` computes it in the service."""
    if not steps:
        return ()
    return tuple(float(p) for p in probe.probability(prefix_features(probe.num_layers, probe.sketch_dim, steps)))


def gains(history: Sequence[Past]) -> npt.NDArray[np.bool_]:
    """Per request: the reference would have answered better (the self answer wrong and the reference's not known to
    be wrong: where the reference did not answer, "the self answer is wrong")."""
    return np.array([p.self_wrong and not p.reference_wrong for p in history], dtype=np.bool_)


def prefix_features(num_layers: int, sketch_dim: int, steps: Sequence[GenerationStep]) -> npt.NDArray[np.float64]:
    """The probe's features after each step of a trace, one row per step (what ``TokenWatch`` scores)."""
    sums = FeatureSums(num_layers, sketch_dim=sketch_dim)
    rows = []
    for s in steps:
        sums.update(s)
        rows.append(sums.features())
    return np.vstack(rows)


def fit_gain_probe_on(
    prefixes: Sequence[npt.NDArray[np.float64]],
    gain: npt.ArrayLike,
    family: str,
    num_layers: int,
    sketch_dim: int,
    trained_on: Mapping[str, Any] | None = None,
) -> RiskProbe:
    """A gain probe from each trace's ``prefix_features`` and its label (the reference wins): the risk probe's model
    fitted on the whole traces. Its L2 penalty is chosen among ``GAIN_L2_CHOICES`` on every fourth trace, held out
    from that choice's fits, by the AUROC of what the service acts on: a trace's highest risk over its steps."""
    y = np.asarray(gain, dtype=np.bool_)
    final = np.vstack([p[-1] for p in prefixes])
    held = np.arange(len(y)) % 4 == 3

    def judged(l2: float) -> float:
        if min(y[~held].sum(), (~y[~held]).sum(), y[held].sum(), (~y[held]).sum()) == 0:
            return -l2  # too few labels to judge: the smallest penalty
        probe = fit_probe(final[~held], y[~held], family, num_layers, l2=l2, sketch_dim=sketch_dim)
        peaks = [float(probe.probability(p).max()) for p, h in zip(prefixes, held, strict=True) if h]
        return auroc(np.array(peaks), y[held])

    l2 = max(GAIN_L2_CHOICES, key=judged)
    lineage = {**(trained_on or {}), "label": GAIN_LABEL, "traces": len(y), "gains": int(y.sum()), "l2": l2}
    return fit_probe(final, y, family, num_layers, l2=l2, trained_on=lineage, sketch_dim=sketch_dim)


def fit_gain_probe(
    history: Sequence[Past], family: str, trained_on: Mapping[str, Any] | None = None
) -> RiskProbe | None:
    """The route's own mid-answer probe (``fit_gain_probe_on``) from the self answers' steps in ``history``, on the
    label ``gains`` (None when the history holds one label only). The service reads it as it reads any risk probe."""
    rows = [p for p in history if p.steps]
    if not rows:
        return None
    layers, sketch = int(rows[0].steps[0]["num_layers"]), sketch_dim_of(rows[0].steps[0])
    rows = [p for p in rows if int(p.steps[0]["num_layers"]) == layers and sketch_dim_of(p.steps[0]) == sketch]
    y = gains(rows)
    if y.all() or not y.any():
        return None
    prefixes = [prefix_features(layers, sketch, p.steps) for p in rows]
    return fit_gain_probe_on(prefixes, y, family, layers, sketch, trained_on)


def store_probe(store: ArtifactStore, probe: RiskProbe) -> str:
    """Keep ``probe`` in the artifact store as ``evostream risk train`` keeps a risk probe; its sha256."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ARTIFACT_FILE).write_bytes(probe.to_bytes())
        return store.put_dir(Path(tmp)).sha256


def labelled_items(history: Sequence[Past], prompt: PromptModel | None, probe: RiskProbe | None) -> list[Labelled]:
    """The history as the calibration reads it (an unknown reference label counts as right)."""
    if prompt is not None and history:
        x = np.vstack([prompt_features(p.prompt, p.embedding) for p in history])
        scores = prompt.probability(x)
    else:
        scores = np.zeros(len(history))
    return [
        Labelled(
            float(s),
            token_risks(probe, p.steps) if probe is not None else (),
            p.self_wrong,
            bool(p.reference_wrong),
            p.reference_tokens,
        )
        for s, p in zip(scores, history, strict=True)
    ]


@dataclass(frozen=True)
class Trained:
    policy: RoutePolicy
    lines: list[str]
    """What the training measured, one line each: the parts, the prompt model, each level's evidence."""


def train_policy(
    history: History,
    route: str,
    probe: RiskProbe | None,
    probe_sha256: str,
    *,
    levels: Sequence[int] = (1, 2, 3, 4),
    bound: float = 0.15,
    confidence: float = 0.95,
    l2: float = 10.0,
    keep_probe: Callable[[RiskProbe], str] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Trained:
    """A routing policy fitted and calibrated on ``history`` (EvoError when it holds too few labels). Mid-answer it
    reads ``probe`` (artifact ``probe_sha256``); with no probe and ``keep_probe`` given, its own gain probe, fitted on
    the fit part (``fit_gain_probe``) and kept by ``keep_probe``, which returns its artifact's sha256."""
    past = history.requests
    n = len(past)
    a, b = round(n * FIT), round(n * CHOOSE)
    fit, choose, certify_ = past[:a], past[a:b], past[b:]
    if min(len(fit), len(choose), len(certify_)) < MIN_PART:
        left_out = ", ".join(f"{k}: {v}" for k, v in history.skipped.items()) or "none"
        raise EvoError(
            f"{n} labelled requests of route {route!r}: each of fit, choose and certify (half, a quarter, a quarter by "
            f"time) needs at least {MIN_PART}; label more (left out: {left_out})"
        )
    dims = {len(p.embedding) for p in past}
    if len(dims) > 1:
        raise EvoError(
            f"the history's prompt embeddings differ in size ({sorted(dims)}): train on one embedder's range"
        )
    lines = [
        f"{n} labelled requests: {len(fit)} fit the prompt model, {len(choose)} choose gates, {len(certify_)} certify"
    ]
    if probe is None and keep_probe is not None:
        family = family_of(str(fit[0].steps[0]["model_version"]))
        lineage = {"route": route, "from_us": fit[0].at_us, "until_us": fit[-1].at_us, "requests": len(fit)}
        probe = fit_gain_probe(fit, family, trained_on=lineage)
        if probe is None:
            lines.append("the fit part holds one label only: no gain probe (no decision mid-answer)")
        else:
            probe_sha256 = keep_probe(probe)
            lines.append(
                f"gain probe: fitted on {probe.trained_on['traces']} traces ({probe.trained_on['gains']} the "
                f"reference wins), artifact {probe_sha256}"
            )
        progress(lines[-1])
    # with a gain probe mid-answer, the prompt model scores what the levels are certified on (the self answer is
    # wrong) and the probe finds where the reference wins; without one, the prompt model does both, on the gain
    gain_mid = probe is not None and probe.trained_on.get("label") == GAIN_LABEL
    prompt_label = SELF_WRONG if gain_mid else GAIN_LABEL
    wrong = np.array([p.self_wrong for p in fit]) if gain_mid else gains(fit)
    prompt: PromptModel | None = None
    if wrong.all() or not wrong.any():
        lines.append("the fit part holds one label only: no prompt model (decisions mid-answer only)")
    else:
        prompt = fit_prompt_model(np.vstack([prompt_features(p.prompt, p.embedding) for p in fit]), wrong, l2)
        lines.append(f"prompt model: {len(prompt.features)} features, L2 {l2:g}, on {prompt_label!r}")
    progress(lines[-1])
    if prompt is None and probe is None:
        raise EvoError(
            f"route {route!r}: no prompt model (one label only in the fit part) and no probe: nothing to route on"
        )
    chosen, certified = labelled_items(choose, prompt, probe), labelled_items(certify_, prompt, probe)
    gates: list[LevelGate] = []
    for level in levels:
        if not 1 <= level < len(LADDER):
            raise EvoError(f"levels are 1..{len(LADDER) - 1} (0: the reference answers everything), not {level}")
        g = calibrate_level(level, LADDER[level], chosen, certified, bound, confidence, mid=probe is not None)
        gates.append(g)
        ev = g.evidence
        lines.append(
            f"level {level} (self-share {LADDER[level]:.2f}): prompt gate {g.prompt_gate:.4f}, token gate "
            f"{g.token_gate:.4f}; certify: self-share {ev['self_share']:.3f}, accuracy {ev['accuracy']:.3f} "
            f"(>= {ev['accuracy_lower']:.3f} at {confidence:.0%}), corpus {ev['corpus']}, "
            f"{'certified' if ev['certified'] else 'NOT certified'} for error <= {bound}"
        )
        progress(lines[-1])
    unknown = sum(p.reference_wrong is None for p in past)
    trained_on: dict[str, Any] = {
        "topics": [REQUESTS, COMPLETIONS, STEPS, OUTCOMES],
        "requests": n,
        "from_us": past[0].at_us,
        "until_us": past[-1].at_us,
        "labels_sha256": history.labels_sha256,
        "parts": {"fit": len(fit), "choose": len(choose), "certify": len(certify_)},
        "reference_label_assumed_right": unknown,
        "prompt_label": prompt_label,
        "self_versions": sorted({p.self_version for p in certify_}),
        "skipped": dict(sorted(history.skipped.items())),
    }
    policy = RoutePolicy(route, prompt, probe_sha256 if probe is not None else "", tuple(gates), trained_on)
    return Trained(policy, lines)


def evaluate_policy(history: History, policy: RoutePolicy, probe: RiskProbe | None) -> list[tuple[LevelGate, Replay]]:
    """Each of the policy's levels replayed on ``history``: who would have answered, and what that would have given."""
    items = labelled_items(history.requests, policy.prompt, probe if policy.probe_sha256 else None)
    return [(g, replay(items, g)) for g in sorted(policy.gates, key=lambda g: g.level)]
