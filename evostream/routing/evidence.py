"""What an independence level's evidence says, and when it is enough to move up to that level.

The calibration (``evostream.routing.calibrate``) writes one evidence object per level into the policy artifact's
``LevelGate.evidence``; governance (``consumers.governance.levels``) refuses a level whose evidence is missing,
malformed, from too small a held-out corpus or of too low an accuracy, or not certified: the calibration's own verdict
(``certified``), the error rate's upper bound (one minus ``accuracy_lower``) within the policy's ``level_max_error``,
stated at a confidence of at least ``level_min_confidence``, and measured at the level's self-share (``LADDER``,
within ``SHARE_TOLERANCE``). Both read the field names from here, so the writer and the judge cannot drift apart.
Pure: no I/O.

A registration written before these checks (evidence without ``certified``) is still well formed and still reads;
only a move to a level on it is refused, as never certified.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from evostream.routing.policy import LADDER

MIN_CORPUS_PER_LEVEL = 1000
"""Labelled held-out answers needed per level step: level L needs ``MIN_CORPUS_PER_LEVEL * (L + 1)``."""
MIN_ACCURACY = 0.85
"""The self-answered accuracy a level's evidence must reach."""
MAX_ERROR = 0.15
"""The highest self-answered error rate a level's certified upper bound (``1 - accuracy_lower``) may state."""
MIN_CONFIDENCE = 0.9
"""The lowest confidence that bound may be stated at."""
SHARE_TOLERANCE = 0.05
"""How far the certified self-share may be from the level's target share (``LADDER``): the issue's +/- 5 points."""
_EPS = 1e-9
"""Rounding slack of the comparisons (1 - 0.85 is 0.15000000000000002)."""

EVIDENCE_FIELDS: dict[str, type] = {
    "corpus": int,
    "accuracy": float,
    "accuracy_lower": float,
    "confidence": float,
    "self_share": float,
}
"""The fields every level's evidence holds (more may follow, and are kept):

- ``corpus``: labelled answers held out of the fit that the level was calibrated and certified on;
- ``accuracy``: the accuracy of the answers the self model kept at this level's gates, on the certifying split;
- ``accuracy_lower``: its lower confidence bound (one minus the Clopper-Pearson upper bound of the error rate);
- ``confidence``: the confidence of that bound (for example 0.95);
- ``self_share``: the share of the certifying split the self model answered (the level's target is ``LADDER``)."""


def min_corpus(level: int, per_level: int = MIN_CORPUS_PER_LEVEL) -> int:
    """The held-out corpus that moving to ``level`` needs."""
    return per_level * (level + 1)


def malformed(evidence: Any) -> str | None:
    """Why ``evidence`` is not a level's evidence (a field missing, of another type, out of its range), or None."""
    if not isinstance(evidence, Mapping) or not evidence:
        return f"no evidence: a level needs {', '.join(EVIDENCE_FIELDS)} from its calibration"
    for name, want in EVIDENCE_FIELDS.items():
        if name not in evidence:
            return f"the evidence has no {name!r} (it needs {', '.join(EVIDENCE_FIELDS)})"
        value = evidence[name]
        ok = isinstance(value, int) if want is int else isinstance(value, int | float)
        if not ok or isinstance(value, bool) or (want is float and not math.isfinite(value)):
            return f"the evidence's {name!r} must be a finite {want.__name__}, not {value!r}"
    if evidence["corpus"] < 0:
        return f"the evidence's corpus must be at least 0, not {evidence['corpus']}"
    for name in ("accuracy", "accuracy_lower", "self_share"):
        if not 0.0 <= evidence[name] <= 1.0:
            return f"the evidence's {name!r} must be within [0, 1], not {evidence[name]}"
    if not 0.0 < evidence["confidence"] < 1.0:
        return f"the evidence's confidence must be within (0, 1), not {evidence['confidence']}"
    if evidence["accuracy_lower"] > evidence["accuracy"]:
        return (
            f"the evidence's accuracy_lower {evidence['accuracy_lower']} is above its accuracy {evidence['accuracy']}"
        )
    return None


def insufficient(
    evidence: Mapping[str, Any],
    level: int,
    *,
    per_level: int = MIN_CORPUS_PER_LEVEL,
    min_accuracy: float = MIN_ACCURACY,
    max_error: float = MAX_ERROR,
    min_confidence: float = MIN_CONFIDENCE,
) -> str | None:
    """Why ``evidence`` does not earn ``level`` (malformed, too small a corpus, too low an accuracy, not certified,
    too loose a bound, too low a confidence, another self-share than the level's), or None."""
    why = malformed(evidence)
    if why is not None:
        return why
    if not 1 <= level < len(LADDER):
        return f"the ladder's levels are 1..{len(LADDER) - 1} (level 0 needs no evidence), not {level}"
    if evidence.get("certified") is not True:
        return (
            f"level {level}'s evidence is not certified (certified: {evidence.get('certified')!r}): its calibration "
            "did not bound the self-answered error rate as asked; calibrate again (`evostream route train`)"
        )
    need = min_corpus(level, per_level)
    if evidence["corpus"] < need:
        return (
            f"level {level} needs a held-out corpus of at least {need} labelled answers "
            f"({per_level} x (level + 1)); the evidence has {evidence['corpus']}"
        )
    if evidence["accuracy"] < min_accuracy - _EPS:
        return (
            f"level {level} needs a self-answered accuracy of at least {min_accuracy}; the evidence has "
            f"{evidence['accuracy']} (lower bound {evidence['accuracy_lower']} at confidence {evidence['confidence']})"
        )
    upper = 1.0 - evidence["accuracy_lower"]
    if upper > max_error + _EPS:
        return (
            f"level {level} needs the self-answered error rate bounded by {max_error}; the evidence bounds it by "
            f"{upper:.6g} (1 - accuracy_lower {evidence['accuracy_lower']})"
        )
    if evidence["confidence"] < min_confidence - _EPS:
        return (
            f"level {level} needs its bound stated at a confidence of at least {min_confidence}; the evidence's is "
            f"{evidence['confidence']}"
        )
    target = LADDER[level]
    if abs(evidence["self_share"] - target) > SHARE_TOLERANCE + _EPS:
        return (
            f"level {level} answers {target:.0%} on the self model; the evidence was measured at a self-share of "
            f"{evidence['self_share']} (within {SHARE_TOLERANCE} of {target} is needed)"
        )
    return None
