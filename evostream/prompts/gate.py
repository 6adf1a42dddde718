"""The gate of a co-evolution cycle: a variant passes only when it keeps every protected marker of the template in
production and scores at least ``min_gain`` above it on the selection split (held out); of those that pass, the best
is selected, and it is accepted only when its gain of at least ``min_gain`` is confirmed on a confirmation split (held
out too, disjoint from the selection split, never seen by the selection): the best of some twenty variants on one set
of examples is partly the luckiest, and only examples it was not picked on measure it without that luck.

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
    """One variant judged on the selection split: its score, its gain over the current version, passed or not, and
    why."""

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


@dataclass(frozen=True)
class Confirmation:
    """The selected variant measured again on the confirmation split: its score and the current version's there, the
    gain, accepted or not, and why."""

    selected: Verdict
    current_score: float
    score: float
    gain: float
    accepted: bool
    reason: str


def confirm(selected: Verdict, current_score: float, score: float, min_gain: float) -> Confirmation:
    """The gate's last word on ``selected`` (the best verdict of the selection split): accepted only when its
    confirmation ``score`` gains at least ``min_gain`` over the current version's (``current_score``) there too."""
    gain = score - current_score
    if gain + _EPS < min_gain:
        why = f"confirmation gain {gain:+.3f} is below {min_gain:.3f}: the selection's gain is not confirmed"
        return Confirmation(selected, current_score, score, gain, False, why)
    why = f"confirmation gain {gain:+.3f} reaches {min_gain:.3f}"
    return Confirmation(selected, current_score, score, gain, True, why)
