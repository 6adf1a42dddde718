"""Governed prompt templates, pure: the template record, its rendering, protected markers, the variants a
co-evolution cycle proposes and the gate that accepts one. No I/O: the wiring stores, registers and scores them."""

from evostream.prompts.gate import MIN_GAIN, Confirmation, Verdict, best, confirm, judge
from evostream.prompts.template import (
    SLOT,
    NoTemplates,
    Renderer,
    Template,
    TemplateError,
    TemplateRef,
    check,
    parse_ref,
    render,
)
from evostream.prompts.variants import Example, Variant, propose

__all__ = [
    "MIN_GAIN",
    "SLOT",
    "Confirmation",
    "Example",
    "NoTemplates",
    "Renderer",
    "Template",
    "TemplateError",
    "TemplateRef",
    "Variant",
    "Verdict",
    "best",
    "check",
    "confirm",
    "judge",
    "parse_ref",
    "propose",
    "render",
]
