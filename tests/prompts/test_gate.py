"""The gate: a held-out gain of at least min_gain, and never a variant without a protected marker."""

from __future__ import annotations

import pytest

from evostream.prompts.gate import MIN_GAIN, best, confirm, judge
from evostream.prompts.template import Template
from evostream.prompts.variants import Example, Variant, propose

CURRENT = Template("rev", "Please reverse: {input}", ("Please",), "reverse")


def _v(text: str) -> Variant:
    return Variant(CURRENT.with_text(text, "rev@1"), "test", "")


def test_a_gain_of_at_least_min_gain_is_accepted() -> None:
    v = judge(CURRENT, 0.10, _v("Please reverse: {input} "), 0.15, MIN_GAIN)  # exactly 0.05 (0.049999... in floats)
    assert v.accepted, v.reason
    assert v.gain == pytest.approx(0.05)
    assert "reaches 0.050" in v.reason


def test_a_smaller_gain_or_a_loss_is_refused_with_the_numbers() -> None:
    small = judge(CURRENT, 0.10, _v("Please reverse: {input} "), 0.14, MIN_GAIN)
    worse = judge(CURRENT, 0.10, _v("Please reverse: {input} Answer:"), 0.0, MIN_GAIN)
    assert not small.accepted and "held-out gain +0.040 is below 0.050" in small.reason
    assert not worse.accepted and "held-out gain -0.100 is below 0.050" in worse.reason


def test_a_variant_without_a_protected_marker_is_refused_whatever_it_gains() -> None:
    v = judge(CURRENT, 0.10, _v("reverse: {input}"), 1.0, MIN_GAIN)
    assert not v.accepted
    assert v.reason == "drops the protected marker 'Please' (never accepted)"
    assert v.gain == pytest.approx(0.9)


def test_min_gain_is_the_policys() -> None:
    assert not judge(CURRENT, 0.10, _v("Please reverse: {input} "), 0.15, 0.10).accepted
    assert judge(CURRENT, 0.10, _v("Please reverse: {input} "), 0.15, 0.0).accepted


def test_the_best_accepted_variant_wins_the_first_among_equals() -> None:
    verdicts = [
        judge(CURRENT, 0.1, _v("reverse: {input}"), 1.0, MIN_GAIN),  # refused: marker
        judge(CURRENT, 0.1, _v("Please reverse: {input} "), 0.5, MIN_GAIN),
        judge(CURRENT, 0.1, _v("Please  reverse: {input}"), 0.8, MIN_GAIN),
        judge(CURRENT, 0.1, _v("please Please reverse: {input}"), 0.8, MIN_GAIN),
    ]
    chosen = best(verdicts)
    assert chosen is not None and chosen.variant.template.text == "Please  reverse: {input}"
    assert best(verdicts[:1]) is None


def test_a_marker_kept_only_in_a_worked_example_is_dropped() -> None:
    """add-example copies the instruction (markers and all) into its example line; a later drop-word that cuts the
    marker from the instruction must not pass on the copy."""
    json_only = Template("fmt", "Answer in JSON only. {input}", ("in JSON only",), "upper")
    (shown,) = [v for v in propose(json_only, "fmt@1", [Example("abc", "ABC")]) if v.operator == "add-example"]
    assert judge(json_only, 0.1, shown, 0.9, MIN_GAIN).accepted  # the marker is still in the instruction
    dropped = {v.template.text: v for v in propose(shown.template, "fmt@2")}
    cut = dropped["Example: Answer in JSON only. abc -> ABC\nAnswer JSON only. {input}"]
    assert cut.operator == "drop-word"
    v = judge(shown.template, 0.1, cut, 1.0, MIN_GAIN)
    assert not v.accepted
    assert v.reason == "drops the protected marker 'in JSON only' (never accepted)"


def test_the_selected_variant_is_accepted_only_when_its_gain_is_confirmed() -> None:
    selected = judge(CURRENT, 0.10, _v("Please reverse: {input} "), 0.40, MIN_GAIN)
    assert selected.accepted
    held = confirm(selected, 0.20, 0.25, MIN_GAIN)  # exactly 0.05 again
    assert held.accepted and held.reason == "confirmation gain +0.050 reaches 0.050"
    lucky = confirm(selected, 0.20, 0.24, MIN_GAIN)
    assert not lucky.accepted
    assert lucky.reason == "confirmation gain +0.040 is below 0.050: the selection's gain is not confirmed"
    assert (lucky.current_score, lucky.score) == (0.20, 0.24) and lucky.gain == pytest.approx(0.04)
