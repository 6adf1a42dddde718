"""A level's evidence: the fields the calibration writes and governance judges, and when they earn a level."""

from __future__ import annotations

from typing import Any

import pytest

from evostream.routing.evidence import EVIDENCE_FIELDS, insufficient, malformed, min_corpus

GOOD = {
    "corpus": 2000,
    "accuracy": 0.9,
    "accuracy_lower": 0.88,
    "confidence": 0.95,
    "self_share": 0.21,
    "bound": 0.15,
    "certified": True,
}


def test_level_l_needs_a_thousand_labels_per_step_and_an_accuracy_of_085() -> None:
    assert [min_corpus(level) for level in range(5)] == [1000, 2000, 3000, 4000, 5000]
    assert insufficient(GOOD, 1) is None
    assert "at least 3000 labelled answers" in str(insufficient(GOOD, 2))
    assert "accuracy of at least 0.85" in str(insufficient({**GOOD, "accuracy": 0.849, "accuracy_lower": 0.8}, 1))
    assert insufficient({**GOOD, "corpus": 3000, "self_share": 0.5}, 2) is None  # the bound is inclusive
    assert insufficient({**GOOD, "self_share": 0.5}, 2, per_level=500, min_accuracy=0.9) is None  # the policy's


@pytest.mark.parametrize(
    ("change", "level", "why"),
    [
        ({"certified": False}, 1, "not certified (certified: False)"),
        ({"certified": None}, 1, "not certified (certified: None)"),
        ({"accuracy_lower": 0.8}, 1, "error rate bounded by 0.15; the evidence bounds it by 0.2"),
        ({"confidence": 0.01}, 1, "confidence of at least 0.9; the evidence's is 0.01"),
        ({"self_share": 0.5}, 1, "self-share of 0.5 (within 0.05 of 0.2 is needed)"),
        ({"self_share": 0.14}, 1, "self-share of 0.14"),
        ({}, 0, "the ladder's levels are 1..4"),
        ({}, 5, "the ladder's levels are 1..4"),
    ],
)
def test_a_level_needs_certified_evidence_at_its_share(change: dict[str, Any], level: int, why: str) -> None:
    assert why in str(insufficient({**GOOD, **change}, level))


def test_the_certification_edges_are_inclusive_and_the_policy_sets_them() -> None:
    edge = {**GOOD, "accuracy": 0.9, "accuracy_lower": 0.85, "confidence": 0.9, "self_share": 0.25}
    assert insufficient(edge, 1) is None  # 1 - 0.85 = 0.15, confidence 0.9, 0.05 from 0.2
    assert "bounds it by" in str(insufficient(edge, 1, max_error=0.1))
    assert "confidence of at least 0.95" in str(insufficient(edge, 1, min_confidence=0.95))
    assert (
        insufficient({**edge, "accuracy_lower": 0.7, "confidence": 0.5}, 1, max_error=0.3, min_confidence=0.5) is None
    )


def test_evidence_written_before_certification_reads_but_earns_no_level() -> None:
    old = {k: v for k, v in GOOD.items() if k not in ("bound", "certified")}
    assert malformed(old) is None  # an old registration still reads and replays
    assert "not certified" in str(insufficient(old, 1))


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
