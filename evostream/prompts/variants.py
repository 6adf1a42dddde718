"""The variants a co-evolution cycle proposes for a template: deterministic rewrites of its text, never of its slot.

Operators, in the order they are proposed (the same template and examples always give the same variants):

- ``drop-word``: one word of the instruction (the text around the slot) removed, for each of its first
  ``MAX_WORDS`` words (an instruction padded with words the model was not trained on loses them);
- ``lowercase``: the instruction in lower case; ``tidy``: runs of blanks as one space, no blanks at either end;
- ``remove-example``: the first worked example (a line ``Example: ...``) removed;
- ``add-example``: a worked example (the template rendered on an input, then ``-> answer``) put first, for each of the
  first ``MAX_EXAMPLES`` examples given (the caller draws them from the suite's train split, never the held-out one);
- ``format-hint``: a hint on the answer's format (``HINTS``) added.

A variant keeps the template's name, markers and task; whether it keeps its protected markers is the gate's to judge
(``gate.py``), not the operators' to avoid: a rewrite that drops one is proposed, scored and refused with that reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from evostream.prompts.template import EXAMPLE_PREFIX, SLOT, Template, render

MAX_WORDS = 12
MAX_EXAMPLES = 2
HINTS: tuple[tuple[str, str], ...] = (
    ("prefix", "Answer briefly. "),
    ("suffix", " Answer:"),
    ("suffix", "\nAnswer:"),
)
"""Format hints: (where, text)."""
_WORD = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class Example:
    """A worked example: the input that goes into the slot, and the expected answer."""

    input: str
    answer: str


@dataclass(frozen=True)
class Variant:
    """A proposed template, the operator that made it and what it changed."""

    template: Template
    operator: str
    detail: str


def _split(text: str) -> tuple[str, str]:
    before, after = text.split(SLOT, 1)
    return before, after


def drop_word(t: Template) -> Iterable[tuple[str, str]]:
    before, after = _split(t.text)
    spans = [("before", m) for m in _WORD.finditer(before)] + [("after", m) for m in _WORD.finditer(after)]
    for side, m in spans[:MAX_WORDS]:
        part = before if side == "before" else after
        cut = part[: m.start()] + part[m.end() :]
        text = cut + SLOT + after if side == "before" else before + SLOT + cut
        yield text, f"dropped {m.group().strip()!r}"


def lowercase(t: Template) -> Iterable[tuple[str, str]]:
    before, after = _split(t.text)
    yield before.lower() + SLOT + after.lower(), "instruction in lower case"


def tidy(t: Template) -> Iterable[tuple[str, str]]:
    before, after = _split(t.text)
    before = re.sub(r"[ \t]+", " ", before).lstrip()
    after = re.sub(r"[ \t]+", " ", after).rstrip()
    yield before + SLOT + after, "blanks tidied"


def remove_example(t: Template) -> Iterable[tuple[str, str]]:
    lines = t.text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(EXAMPLE_PREFIX) and SLOT not in line:
            yield "\n".join(lines[:i] + lines[i + 1 :]), f"removed {line!r}"
            return


def add_example(t: Template, examples: Sequence[Example]) -> Iterable[tuple[str, str]]:
    for ex in examples[:MAX_EXAMPLES]:
        line = f"{EXAMPLE_PREFIX}{render(t, ex.input)} -> {ex.answer}".replace("\n", " ")
        yield f"{line}\n{t.text}", f"added {line!r}"


def format_hint(t: Template) -> Iterable[tuple[str, str]]:
    for where, hint in HINTS:
        yield (hint + t.text if where == "prefix" else t.text + hint), f"{where} hint {hint!r}"


def propose(t: Template, parent: str | None, examples: Sequence[Example] = ()) -> list[Variant]:
    """Every variant of ``t`` the operators make, in order, each text once and none equal to ``t``'s own; each
    derives from version ``parent``."""
    operators: list[tuple[str, Callable[[], Iterable[tuple[str, str]]]]] = [
        ("drop-word", lambda: drop_word(t)),
        ("lowercase", lambda: lowercase(t)),
        ("tidy", lambda: tidy(t)),
        ("remove-example", lambda: remove_example(t)),
        ("add-example", lambda: add_example(t, examples)),
        ("format-hint", lambda: format_hint(t)),
    ]
    seen = {t.text}
    out = []
    for name, make in operators:
        for text, detail in make():
            if text in seen or text.count(SLOT) != 1 or not text.replace(SLOT, "").strip():
                continue  # no change, a slot lost to an example's text, or nothing but the slot left
            seen.add(text)
            out.append(Variant(t.with_text(text, parent), name, detail))
    return out
