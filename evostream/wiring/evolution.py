"""The evolution consumer, wired (its signer, the artifact store, the risk rate of the processors' maths): what
``evostream evolve`` and the HTTP API's ``POST /evolve`` start. Here, above the services, because a cycle meets four
parts that never import each other: the governance log (which version serves, and where the proposal goes), the
artifact store, the log of served traffic, and the risk maths of the processors with the producer's reference runs
(the sandbox's risk rate)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from evostream.core.settings import Settings

if TYPE_CHECKING:
    from evostream.consumers.evolution.cycle import CycleConfig
    from evostream.consumers.governance.service import Governance


def evolution_actor(settings: Settings, server: str, say: Callable[[str], None]) -> Governance:
    """The evolution consumer's own signer (a proposer). On a machine that holds an admin key and none for the
    evolution actor yet, its key is made here and enrolled by that admin, once."""
    from evostream.wiring.governed import enrolled_signer

    me, keys = settings.evolution_actor, settings.governance_dir / "keys"
    no_admin = (
        f"no key for the evolution actor {me!r} in {keys}: run `evostream governance keygen "
        f"{me}` and have an admin enroll it with --roles proposer"
    )
    return enrolled_signer(settings, server, me, "proposer", "the evolution consumer's own key", no_admin, say)


def risk_rate(model: Any, tokenizer: Any, prompts: Sequence[str]) -> float:
    """Alerts per 100 generations of ``model`` on ``prompts``: the producer's reference run folded by the processors'
    risk maths under the embedded family's policy, exactly as a served trace would be."""
    from evostream.models.default_model import MODEL_ID
    from evostream.models.loading import wrap_model
    from evostream.producers.reference import run_traced
    from evostream.stream_processors.risk.policy import load_policies, policy_for
    from evostream.stream_processors.risk.score import TraceRisk

    lm = wrap_model(model, tokenizer, MODEL_ID)
    policy = policy_for(load_policies(), lm.version)
    alerted = 0
    for t in run_traced(lm, list(prompts)):
        risk = TraceRisk(policy)
        hit = False
        for s in t.steps:
            hit = hit or risk.update(s).severity(policy) is not None
        alerted += hit
    return 100.0 * alerted / max(1, len(prompts))


def cycle_config(recipes: list[str] | None, steps: int, held_out: int, reps: int) -> CycleConfig:
    from evostream.consumers.evolution.cycle import DEFAULT_RECIPES, CycleConfig
    from evostream.consumers.evolution.distill import DistillConfig
    from evostream.consumers.evolution.recipe import Recipe

    chosen = tuple(Recipe.parse(r) for r in recipes) if recipes else DEFAULT_RECIPES
    return CycleConfig(recipes=chosen, distill=DistillConfig(steps=steps), held_out_per_task=held_out, speed_reps=reps)


def consumer(settings: Settings, server: str, model: str, cfg: CycleConfig, say: Callable[[str], None]) -> Any:
    """The evolution consumer for ``model``, wired: its signer, the artifact store, the risk rate."""
    from evostream.consumers.evolution.service import EvolutionConsumer
    from evostream.core.artifacts import ArtifactStore

    gov = evolution_actor(settings, server, say)
    return EvolutionConsumer(
        server, gov, model, ArtifactStore(settings.artifacts_dir), settings.evolution_dir, cfg, risk_rate, say
    )


def cycle_line(c: Any) -> str:
    """One line per candidate: its recipe, verdict and what was measured against the parent."""
    from evostream.consumers.evolution.sandbox import ratios

    v = c.validation
    r = ratios(v)
    acc = " ".join(f"{t}={a:.3f}" for t, a in v.candidate.accuracy.items())
    failed = [name for name, g in v.gates.items() if not g["passed"]]
    return (
        f"{c.recipe.name}: {'PASS' if v.passed else 'FAIL ' + ','.join(failed)}  {v.parent.bytes:,} -> "
        f"{v.candidate.bytes:,} bytes ({r['bytes']:.2f}x), {v.parent.parameters:,} -> {v.candidate.parameters:,} "
        f"parameters, {v.parent.speed.median:.3f} -> {v.candidate.speed.median:.3f} ms/token ({r['speed']:.2f}x), "
        f"accuracy {acc}"
    )
