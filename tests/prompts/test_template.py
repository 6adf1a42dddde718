"""The template record: its rules, rendering, artifact bytes and how requests name a version."""

from __future__ import annotations

import pytest

from evostream.prompts.template import (
    NoTemplates,
    Template,
    TemplateError,
    TemplateRef,
    check,
    parse_ref,
    problems,
    render,
    version_number,
)


def test_render_puts_the_prompt_in_the_slot_and_leaves_other_braces_alone() -> None:
    t = Template("rev", "Please {x} reverse: {input}!", ("reverse:",))
    assert render(t, "abc") == "Please {x} reverse: abc!"
    assert render(t, "{input}") == "Please {x} reverse: {input}!"  # a prompt is never interpreted


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        (Template("rev", "reverse: abc"), "exactly once, it holds it 0 times"),
        (Template("rev", "{input} and {input}"), "exactly once, it holds it 2 times"),
        (Template("Rev", "reverse: {input}"), "template name 'Rev'"),
        (Template("a@b", "reverse: {input}"), "template name 'a@b'"),
        (Template("rev", "reverse: {input}", ("sort:",)), "'sort:' is not in the text"),
        (Template("rev", "reverse: {input}", ("",)), "must not be empty"),
        (Template("rev", "reverse: {input}", ("reverse:", "reverse:")), "listed twice"),
        (Template("rev", "reverse: {input}", ("{input}",)), "must not contain the slot"),
    ],
)
def test_a_bad_template_is_refused_with_its_problem(template: Template, problem: str) -> None:
    assert any(problem in p for p in problems(template)), problems(template)
    with pytest.raises(TemplateError, match="template"):
        check(template)


def test_the_artifact_bytes_are_canonical_and_round_trip() -> None:
    t = Template("rev", "Please reverse: {input}", ("reverse:",), "reverse", parent="rev@1")
    raw = t.to_bytes()
    assert raw == Template("rev", "Please reverse: {input}", ("reverse:",), "reverse", parent="rev@1").to_bytes()
    back = Template.from_bytes(raw)
    assert back == t and back.parent == "rev@1"
    assert b" " not in raw.replace(b"Please reverse: ", b"")  # no layout spaces: the same content, the same hash
    with pytest.raises(TemplateError, match="not JSON"):
        Template.from_bytes(b"\xff")
    with pytest.raises(TemplateError, match="exactly once"):
        Template.from_bytes(raw.replace(b"{input}", b"{nothing}"))


def test_a_request_names_a_template_or_one_of_its_versions() -> None:
    assert parse_ref("rev") == TemplateRef("rev", None)
    assert parse_ref("rev@2") == TemplateRef("rev", "rev@2")
    assert parse_ref("rev@rev@2") == TemplateRef("rev", "rev@2")
    assert parse_ref("rev").model == "template/rev"
    with pytest.raises(TemplateError, match="a template version is a number"):
        parse_ref("rev@latest")
    with pytest.raises(TemplateError, match="names no template"):
        parse_ref("Bad Name")
    assert version_number("rev", "rev@12") == 12
    assert version_number("rev", "other@12") is None
    assert version_number("rev", "rev@x") is None


def test_a_service_without_templates_passes_prompts_and_refuses_a_named_template() -> None:
    assert NoTemplates().render(None, "reverse: abc") == ("reverse: abc", None)
    with pytest.raises(TemplateError, match="resolves no templates"):
        NoTemplates().render("rev", "abc")


def test_a_marker_only_in_a_worked_example_is_not_in_the_template() -> None:
    t = Template("fmt", "Example: Answer in JSON only. abc -> ABC\nAnswer JSON only. {input}", ("in JSON only",))
    assert problems(t) == ["the protected marker 'in JSON only' is not in the text"]
