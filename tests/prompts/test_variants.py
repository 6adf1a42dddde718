"""The variant operators: deterministic, never touching the slot, each text once."""

from __future__ import annotations

from evostream.prompts.template import SLOT, Template
from evostream.prompts.variants import Example, propose

POOR = Template("rev", "Please reverse: {input}", ("reverse:",), "reverse")


def test_variants_are_deterministic_and_keep_one_slot_name_markers_and_task() -> None:
    examples = [Example("abc", "cba"), Example("dog", "god"), Example("xyz", "zyx")]
    first = propose(POOR, "rev@1", examples)
    assert first == propose(POOR, "rev@1", examples)
    texts = [v.template.text for v in first]
    assert len(texts) == len(set(texts)) and POOR.text not in texts
    for v in first:
        assert v.template.text.count(SLOT) == 1
        assert (v.template.name, v.template.markers, v.template.task) == ("rev", ("reverse:",), "reverse")
        assert v.template.parent == "rev@1"


def test_dropping_a_word_restores_the_trained_format_or_drops_the_marker() -> None:
    by_text = {v.template.text: v for v in propose(POOR, "rev@1")}
    assert by_text["reverse: {input}"].operator == "drop-word"
    assert by_text["reverse: {input}"].detail == "dropped 'Please'"
    assert by_text["Please {input}"].operator == "drop-word"  # proposed: the gate refuses it, with its reason


def test_examples_come_in_first_and_go_out_again() -> None:
    with_one = [v for v in propose(POOR, "rev@1", [Example("abc", "cba")]) if v.operator == "add-example"]
    assert [v.template.text for v in with_one] == ["Example: Please reverse: abc -> cba\nPlease reverse: {input}"]
    again = propose(with_one[0].template, "rev@2")
    removed = [v.template.text for v in again if v.operator == "remove-example"]
    assert removed == [POOR.text]


def test_hints_tidying_and_case_are_proposed_once() -> None:
    t = Template("rev", "  Please   reverse: {input} ", ("reverse:",))
    ops = {v.operator: v.template.text for v in propose(t, None)}
    assert ops["tidy"] == "Please reverse: {input}"
    assert ops["lowercase"] == "  please   reverse: {input} "
    hints = [v.template.text for v in propose(t, None) if v.operator == "format-hint"]
    assert hints == ["Answer briefly. " + t.text, t.text + " Answer:", t.text + "\nAnswer:"]


def test_no_variant_is_the_slot_alone() -> None:
    t = Template("rev", "reverse: {input}")
    assert "{input}" not in [v.template.text for v in propose(t, None)]
