"""The cycle's result into governance, signed by the evolution consumer's own key (a proposer).

The chosen candidate is registered with its lineage (parent, operator ``evolve``, the recipe, the distillation and
the trigger that started the cycle) and its measured metrics, then its ValidationCompleted with every gate's value
(a pass goes on to staging when the policy says so), then CandidateProposed with the evidence. When nothing
passes, the best failing candidate is registered with its failed validation, so the audit shows why: it stays a
candidate, and governance never lets it serve. A trigger already handled (a ModelRegistered naming it) is not
handled twice: a restarted consumer finds it in the log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evostream.consumers.evolution.cycle import Candidate, CycleConfig, CycleResult
from evostream.consumers.governance.service import Governance


def handled_triggers(gov: Governance, model: str) -> set[str]:
    """Triggers whose cycle already registered a candidate of ``model``."""
    found = gov.state().registry.models.get(model)
    versions = found["versions"] if found else {}
    return {
        str(v["operator_params"].get("trigger"))
        for v in versions.values()
        if v.get("operator") == "evolve" and v["operator_params"].get("trigger")
    }


def version_name(model: str, cand: Candidate) -> str:
    return f"{model}@{cand.sha256[:12]}"


def propose(
    gov: Governance,
    model: str,
    result: CycleResult,
    cfg: CycleConfig,
    trigger: str,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[str | None, bool]:
    """Register (and, if it passed, propose) the cycle's candidate: (its version, passed), or (None, False) when
    the cycle built nothing."""
    cand = result.chosen
    if cand is None:
        if not result.candidates:
            return None, False
        cand = max(result.candidates, key=lambda c: c.validation.candidate.accuracy["mean"])
    version = version_name(model, cand)
    found = gov.state().registry.models.get(model)
    known = found["versions"].get(version) if found else None
    if known is not None:  # the same bytes from an earlier cycle: registered once, judged then
        say(f"{version} is already registered ({known['stage']}): the cycle found the same candidate again")
        return version, bool(known["validation"] and known["validation"]["passed"])
    params: dict[str, Any] = {
        "recipe": cand.recipe.params(),
        "trigger": trigger,
        "distill": {k: v for k, v in cfg.distill.__dict__.items()},
        "candidates_tried": [c.recipe.name for c in result.candidates],
    }
    gov.register(
        model,
        version,
        artifact_uri=cand.uri,
        artifact_sha256=cand.sha256,
        parent=result.parent_version,
        operator="evolve",
        operator_params=params,
        metrics=cand.metrics(),
        reason=f"evolution cycle ({trigger}): {cand.recipe.name}",
    )
    gov.validated(
        model,
        version,
        cand.passed,
        cand.validation.payload(),
        reason="sandbox: held-out suite, replayed traffic, speed and size against the parent",
    )
    say(f"registered {version} ({cand.recipe.name}); validation {'PASS' if cand.passed else 'FAIL'}")
    if cand.passed:
        evidence = {"trigger": trigger, "front": [c.recipe.name for c in result.front], **cand.metrics()}
        gov.propose(model, version, evidence, reason=f"{cand.recipe.name}: smaller and faster, gates passed")
        say(f"proposed {version}")
    return version, cand.passed
