"""``evostream calibrate``: fit a model family's risk policy from a reference run on the task suite.

A reference run is a producer's job and fitting is the processors'; this module wires the two together, which only
the CLI layer may do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from evostream.cli.common import friendly, say

if TYPE_CHECKING:
    from evostream.models.loading import LoadedModel
    from evostream.stream_processors.risk.policy import RiskPolicy


def calibrate_model(
    loaded: LoadedModel,
    prompts: Sequence[str],
    progress: Callable[[int, int], None] = lambda d, t: None,
    base: RiskPolicy | None = None,
) -> RiskPolicy:
    """A policy for ``loaded``'s family fitted on its steps on ``prompts`` (healthy traffic); hand-set fields come
    from ``base`` (default: the code's fallback)."""
    from evostream.producers.reference import run_traced
    from evostream.stream_processors.risk.calibrate import calibrate

    steps = [s for t in run_traced(loaded, prompts, progress=progress) for s in t.steps]
    return calibrate(steps, loaded.version, base)


@friendly
def calibrate(
    model: Annotated[str, typer.Option(help="'default', a local folder, or a cached HF id.")] = "default",
    per_task: Annotated[int, typer.Option(help="Reference prompts per task of the suite.")] = 100,
    out: Annotated[str | None, typer.Option(help="Policy file (default: the shipped policies folder).")] = None,
) -> None:
    """Calibrate the risk policy of a model family from a reference run on the task suite (healthy traffic).

    The hand-set numbers (target rates, margin, weights, loop rules) are kept from the policy file when it exists,
    so edit them there and calibrate again; the code's defaults are used otherwise."""
    from pathlib import Path

    from evostream.models.loading import load_model
    from evostream.models.suite.tasks import make_split
    from evostream.stream_processors.risk.policy import RiskPolicy, family_of, policy_path

    loaded = load_model(model)
    path = Path(out) if out else policy_path(family_of(loaded.version))
    base = RiskPolicy.from_json(path.read_text(encoding="utf-8")) if path.exists() else None
    say(f"hand-set numbers from {path if base else 'the code defaults'}")
    prompts = [e.prompt for e in make_split("calibration", per_task)]
    say(f"reference run of {loaded.version} on {len(prompts)} prompts")
    policy = calibrate_model(loaded, prompts, progress=lambda d, t: say(f"  {d}/{t}"), base=base)
    policy.calibration.update(split="calibration", per_task=per_task)  # so benchmarks can keep clear of it
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(policy.to_json() + "\n", encoding="utf-8")
    say(
        f"wrote {path} from {policy.calibration['steps']} steps of {policy.calibration['traces']} traces: "
        f"entropy threshold {policy.entropy_bits:.4f} bits, collapse z {policy.collapse_z}, blow-up z "
        f"{policy.blowup_z}, alert score {policy.alert_score}, critical score {policy.critical_score}"
    )
