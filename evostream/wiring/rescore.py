"""History through another policy: the logged steps of a range replayed through a risk policy without the model,
set against what alerted at the time and against the labelled outcomes of the range.

A policy is ``hand-set`` (the shipped policy files, as the processors run them without a probe) or a version of a
``risk/<family>`` model in the governance log (its artifact, re-hashed). Traces are replayed in the order they began
(then by id), at a fixed clock, so the same range gives the same report byte for byte."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evostream.core.artifacts import ArtifactStore
from evostream.core.bus.reader import TopicReader
from evostream.core.errors import NotFoundError
from evostream.schemas.catalog import ALERTS
from evostream.schemas.records import GenerationStep
from evostream.stream_processors.risk.policy import family_of, load_policies
from evostream.stream_processors.risk.tracker import SEVERITY_RANK, RiskTracker, ServedProbe
from evostream.views.outcomes import read_outcomes
from evostream.views.traces import read_traces
from evostream.wiring.risk import PREFIX, load_probe

HAND_SET = "hand-set"


@dataclass
class Verdict:
    """One trace: the worst severity the policy raises now, and the worst that was raised when it was served."""

    trace_id: str
    model_version: str
    began_us: int
    score: float
    now: str | None
    then: str | None
    wrong: bool | None = None


@dataclass
class Rescored:
    policy: str
    verdicts: list[Verdict] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report: a summary, precision and recall on the labelled traces, and each trace whose verdict changed."""
        v = self.verdicts
        now = sum(x.now is not None for x in v)
        then = sum(x.then is not None for x in v)
        out = [f"policy {self.policy}: {len(v)} traces replayed; would alert on {now}, alerted on {then}"]
        labelled = [x for x in v if x.wrong is not None]
        if labelled:
            wrong = np.array([bool(x.wrong) for x in labelled])
            for name, alerted in (
                ("would", np.array([x.now is not None for x in labelled])),
                ("did", np.array([x.then is not None for x in labelled])),
            ):
                precision = float(wrong[alerted].mean()) if alerted.any() else float("nan")
                recall = float(alerted[wrong].mean()) if wrong.any() else float("nan")
                out.append(
                    f"  {name:5} on {len(labelled)} labelled ({int(wrong.sum())} wrong): "
                    f"precision {_share(precision)}, recall {_share(recall)}"
                )
        changed = [x for x in v if (x.now is None) != (x.then is None) or x.now != x.then]
        out.append(f"  {len(changed)} traces whose verdict changed:")
        for x in changed:
            label = "" if x.wrong is None else (" (labelled wrong)" if x.wrong else " (labelled right)")
            out.append(
                f"    {x.trace_id} {x.model_version}: {x.then or '-'} -> {x.now or '-'} score {x.score:.4f}{label}"
            )
        return out


def _share(x: float) -> str:
    """A precision or recall, or n/a where it has no denominator (no alert, no wrong answer)."""
    return "n/a" if x != x else f"{x:.3f}"


def _tracker(store: ArtifactStore, registry: Any, policy: str) -> RiskTracker:
    tracker = RiskTracker(load_policies())
    if policy == HAND_SET:
        return tracker
    model = policy.split("@", 1)[0]
    if not model.startswith(PREFIX) or model not in registry.models or policy not in registry.models[model]["versions"]:
        raise NotFoundError(
            f"no risk probe {policy!r} in the governance log (give a risk/<family>@... version or hand-set)"
        )
    sha = registry.models[model]["versions"][policy]["artifact_sha256"]
    tracker.offer(model[len(PREFIX) :], ServedProbe(policy, load_probe(store, sha)))
    tracker.take_offers()
    return tracker


def _in(at: int, since_us: int | None, until_us: int | None) -> bool:
    return (since_us is None or at >= since_us) and (until_us is None or at < until_us)


def _steps(server: str, since_us: int | None, until_us: int | None) -> dict[str, list[GenerationStep]]:
    """Whole traces that began in the range."""
    return {t: s for t, s in read_traces(server).items() if _in(s[0]["emitted_at_us"], since_us, until_us)}


def _worst(severities: Iterable[str | None]) -> str | None:
    return max(severities, key=lambda s: SEVERITY_RANK[s], default=None)


def rescore(
    server: str, store: ArtifactStore, registry: Any, policy: str, since_us: int | None, until_us: int | None
) -> Rescored:
    """Replay the range's traces through ``policy``; compare with evo.alerts and the outcomes on evo.outcomes."""
    tracker = _tracker(store, registry, policy)
    traces = _steps(server, since_us, until_us)
    then: dict[str, list[str | None]] = {}
    with TopicReader(server, ALERTS, "RiskAlert", idle_s=3.0, name="rescore-alerts") as reader:
        for rec in reader:
            if rec["trace_id"] in traces:
                then.setdefault(str(rec["trace_id"]), []).append(str(rec["severity"]))
    book = read_outcomes(server, lambda rec: rec["trace_id"] in traces)
    out = Rescored(policy)
    for trace, steps in sorted(traces.items(), key=lambda kv: (int(kv[1][0]["emitted_at_us"]), kv[0])):
        if policy != HAND_SET and family_of(str(steps[0]["model_version"])) != policy.split("@", 1)[0][len(PREFIX) :]:
            continue
        folded = tracker.on_steps(None, [(s, i) for i, s in enumerate(steps)], 0)
        done = {"trace_id": trace, "request_id": steps[0]["request_id"], "model_version": steps[0]["model_version"]}
        final = tracker.on_completion(folded.state, {**done, "token_count": len(steps)}, 0, 0)
        reports = [r for r in final.reports if r["stage"] == "FINAL"]
        score = float(reports[0]["score"]) if reports else float("nan")
        label = book.score(trace)
        out.verdicts.append(
            Verdict(
                trace,
                str(steps[0]["model_version"]),
                int(steps[0]["emitted_at_us"]),
                score,
                _worst(str(a["severity"]) for a in [*folded.alerts, *final.alerts]),
                _worst(then.get(trace, [])),
                None if label is None else label < 0.5,
            )
        )
    return out
