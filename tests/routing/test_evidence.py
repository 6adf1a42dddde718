"""A level's evidence: the fields the calibration writes and governance judges, and when they earn a level."""

from __future__ import annotations

from typing import Any

import pytest

from evostream.routing.evidence import EVIDENCE_FIELDS, insufficient, malformed, min_corpus

GOOD = {"corpus": 2000, "accuracy": 0.9, "accuracy_lower": 0.88, "confidence": 0.95, "self_share": 0.21}


def test_level_l_needs_a_thousand_labels_per_step_and_an_accuracy_of_085() -> None:
    assert [min_corpus(level) for level in range(5)] == [1000, 2000, 3000, 4000, 5000]
    assert insufficient(GOOD, 1) is None
    assert "at least 3000 labelled answers" in str(insufficient(GOOD, 2))
    assert "accuracy of at least 0.85" in str(insufficient({**GOOD, "accuracy": 0.849, "accuracy_lower": 0.8}, 1))
    assert insufficient({**GOOD, "corpus": 3000}, 2) is None  # the bound is inclusive
    assert insufficient(GOOD, 2, per_level=500, min_accuracy=0.9) is None  # the policy's numbers


@pytest.mark.parametrize(
    ("evidence", "why"),
    [
        ({}, "no evidence"),
        (None, "no evidence"),
        ({k: v for k, v in GOOD.items() if k != "accuracy_lower"}, "no 'accuracy_lower'"),
        ({**GOOD, "corpus": 2000.0}, "'corpus' must be a finite int"),
        ({**GOOD, "corpus": True}, "'corpus' must be a finite int"),
        ({**GOOD, "accuracy": float("nan")}, "'accuracy' must be a finite float"),
        ({**GOOD, "self_share": 1.5}, "'self_share' must be within [0, 1]"),
        ({**GOOD, "confidence": 1.0}, "confidence must be within (0, 1)"),
        ({**GOOD, "accuracy_lower": 0.95}, "accuracy_lower 0.95 is above its accuracy 0.9"),
    ],
)
def test_malformed_evidence_is_named(evidence: Any, why: str) -> None:
    assert why in str(malformed(evidence))
    assert why in str(insufficient(evidence or {}, 1)) or evidence is None


def test_more_fields_are_kept_and_allowed() -> None:
    assert malformed({**GOOD, "split_seed": 7}) is None
    assert set(EVIDENCE_FIELDS) <= set(GOOD)
