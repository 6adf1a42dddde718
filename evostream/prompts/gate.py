"""The gate of a co-evolution cycle: a variant is accepted only when it keeps every protected marker of the template
in production and scores at least ``min_gain`` above it on the held-out split; of those accepted, the best wins.

The marker is checked first and whatever the scores say: a variant that drops one is refused even with the largest
gain (a marker is what the template's owner requires every version to say, which the held-out score knows nothing
of). ``min_gain`` is the governance policy's ``template_min_gain`` (``MIN_GAIN`` while the log never set it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evostream.prompts.template import Template, missing_markers, problems
from evostream.prompts.variants import Variant

MIN_GAIN = 0.05
"""The held-out gain (exact-match accuracy, absolute) a variant must add to the production version's."""
_EPS = 1e-9
"""Scores are shares of the same held-out examples: a gain of exactly ``min_gain`` counts as reaching it, whatever
the float subtraction leaves in the last digit."""


@dataclass(frozen=True)
class Verdict:
    """One variant judged: its held-out score, its gain over the current version, accepted or not, and why."""

    variant: Variant
    score: float
    gain: float
    accepted: bool
    reason: str


def judge(current: Template, current_score: float, variant: Variant, score: float, min_gain: float) -> Verdict:
    """The gate's verdict on ``variant`` (held-out ``score``) against ``current`` (``current_score``)."""
    gain = score - current_score
    lost = missing_markers(current.markers, variant.template.text)
    if lost:
        words = ", ".join(repr(m) for m in lost)
        return Verdict(variant, score, gain, False, f"drops the protected marker {words} (never accepted)")
    found = problems(variant.template)
    if found:
        return Verdict(variant, score, gain, False, "; ".join(found))
    if gain + _EPS < min_gain:
        return Verdict(variant, score, gain, False, f"held-out gain {gain:+.3f} is below {min_gain:.3f}")
    return Verdict(variant, score, gain, True, f"held-out gain {gain:+.3f} reaches {min_gain:.3f}, markers kept")


def best(verdicts: Sequence[Verdict]) -> Verdict | None:
    """The accepted verdict with the highest score (the first proposed among equals), or None."""
    accepted = [v for v in verdicts if v.accepted]
    return max(accepted, key=lambda v: v.score) if accepted else None
